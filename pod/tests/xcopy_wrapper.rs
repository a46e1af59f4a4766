//! ferry's vmkfstools wrapper script (the SSH clone method) run as the restricted key's forced
//! command runs it, with `$SSH_ORIGINAL_COMMAND` set, against stand-ins for vmkfstools and
//! vsish that record what they were asked. Every answer must parse as the populator reads it
//! (esxcli-style XML around JSON), whatever the paths and error text hold. Each test runs
//! under dash and under BusyBox (its sh and its sed, awk, od, tr... as ESXi's shell has them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_pod::xcopy::ssh::{encode_arg, parse_answer, FORCED_COMMAND, WRAPPER, WRAPPER_VERSION};
use serde_json::Value;
use test_kit::tempdir;

struct Host {
    dir: tempfile::TempDir,
    script: PathBuf,
    /// The shell command and the PATH its tools come from.
    shell: Vec<String>,
    path: String,
}

/// The shells to run the wrapper under: dash with Debian's tools, and BusyBox's sh with
/// BusyBox's tools (ESXi's userland); `None` for BusyBox when it is missing (outside CI).
fn shells() -> Vec<&'static str> {
    let mut out = vec!["dash"];
    if test_kit::require_peer("busybox") {
        out.push("busybox");
    }
    out
}

/// /vmfs under a temporary directory, with a disk whose directory has blanks and a `%`, and
/// a vmkfstools that records its arguments, prints progress and exits with `$FAKE_EXIT`.
fn host(shell: &str) -> Host {
    let dir = tempdir();
    let vm = dir.path().join("vmfs/volumes/ds 1/my vm%");
    std::fs::create_dir_all(&vm).unwrap();
    std::fs::create_dir_all(dir.path().join("vmfs/devices/disks")).unwrap();
    std::fs::write(vm.join("my vm.vmdk"), "# Disk DescriptorFile\n").unwrap();
    let script = dir.path().join("secure-vmkfstools-wrapper");
    std::fs::write(&script, WRAPPER).unwrap();
    let vmk = dir.path().join("vmkfstools");
    std::fs::write(
        &vmk,
        format!(
            r#"#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done >"{args}"
printf 'Cloning disk...\nClone: 50%% done.\rClone: 100%% done.\n'
if [ "${{FAKE_EXIT:-0}}" != 0 ]; then
    printf 'Failed to clone disk: "bad" <sector> C:\\q\n\ttab\n' >&2
    exit "$FAKE_EXIT"
fi
d="$VMFS_ROOT$5"
printf 'RW 8 VMFSRDM "%s"\n' "${{d##*/}}-rdm.vmdk" >"$d"
: >"$d-rdm.vmdk"
"#,
            args = dir.path().join("args").display()
        ),
    )
    .unwrap();
    let vsish = dir.path().join("vsish");
    std::fs::write(
        &vsish,
        "#!/bin/sh\nprintf 'stats {\\n   cloneWriteOps:0x00000000000000a0\\n}\\n'\n",
    )
    .unwrap();
    for f in [&vmk, &vsish] {
        Command::new("chmod").arg("755").arg(f).status().unwrap();
    }
    let (shell, path) = if shell == "busybox" {
        let bb = dir.path().join("busybox-bin");
        std::fs::create_dir(&bb).unwrap();
        let list = Command::new("busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            std::os::unix::fs::symlink("/usr/bin/busybox", bb.join(applet)).unwrap();
        }
        (
            vec!["/usr/bin/busybox".to_owned(), "sh".to_owned()],
            bb.display().to_string(),
        )
    } else {
        (vec!["/usr/bin/dash".to_owned()], "/usr/bin:/bin".to_owned())
    };
    Host {
        dir,
        script,
        shell,
        path,
    }
}

impl Host {
    /// Runs the wrapper with `args` as the SSH command: exit code and answer.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let cmd = args
            .iter()
            .map(|a| encode_arg(a))
            .collect::<Vec<_>>()
            .join(" ");
        let out = Command::new(&self.shell[0])
            .args(&self.shell[1..])
            .arg(&self.script)
            .env_clear()
            .env("PATH", &self.path)
            .env("SSH_ORIGINAL_COMMAND", cmd)
            .env("VMFS_ROOT", self.dir.path())
            .env("VMKFSTOOLS", self.dir.path().join("vmkfstools"))
            .env("VSISH", self.dir.path().join("vsish"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let a = parse_answer(&text, "test").unwrap_or_else(|e| panic!("{e}: {text}"));
        (out.status.code().unwrap_or(-1), a.status, a.message)
    }

    fn path(&self, vmfs: &str) -> PathBuf {
        Path::new(self.dir.path()).join(vmfs.trim_start_matches('/'))
    }

    /// Polls the task until its exit code is set.
    fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, status, msg) = self.run(&["--task-get", "-i", id], &[]);
            assert_eq!((code, status.as_str()), (0, "0"), "{msg}");
            let v: Value = serde_json::from_str(&msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
            if v["exitCode"] != "" {
                return v;
            }
            assert!(Instant::now() < deadline, "the task never ended: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const SOURCE: &str = "/vmfs/volumes/ds 1/my vm%/my vm.vmdk";
const DEVICE: &str = "/vmfs/devices/disks/naa.600a0980aa";

#[test]
fn a_clone_with_blanks_in_its_paths_runs_and_its_task_is_reported_and_cleaned() {
    for shell in shells() {
        clone_with_blanks(shell);
    }
}

fn clone_with_blanks(shell: &str) {
    let h = host(shell);
    let (code, status, msg) = h.run(&["--version"], &[]);
    assert_eq!((code, status.as_str()), (0, "0"));
    assert_eq!(
        serde_json::from_str::<Value>(&msg).unwrap()["version"],
        WRAPPER_VERSION
    );

    let (code, status, msg) = h.run(&["--clone", "-s", SOURCE, "-t", DEVICE], &[]);
    assert_eq!((code, status.as_str()), (0, "0"), "{msg}");
    let started: Value = serde_json::from_str(&msg).unwrap();
    let id = started["taskId"].as_str().unwrap().to_owned();
    assert!(started["pid"].as_u64().unwrap() > 0, "{started}");
    let t = h.wait(&id);
    assert_eq!(t["exitCode"], "0", "{shell}: {t}");
    assert_eq!(t["lastLine"], "Clone: 100% done.", "{shell}: {t}");
    assert_eq!(t["xcopyUsed"], true, "{shell}: {t}");

    // vmkfstools got the paths whole.
    let args = std::fs::read_to_string(h.dir.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args[..4], ["-i", SOURCE, "-d", &format!("rdm:{DEVICE}")]);
    assert!(
        args[4].starts_with(&format!("{SOURCE}-rdmdisk-")),
        "{args:?}"
    );
    let rdm = h.path(args[4]);
    assert!(rdm.is_file());

    let (code, status, _) = h.run(&["--task-clean", "-i", &id], &[]);
    assert_eq!((code, status.as_str()), (0, "0"));
    assert!(!rdm.exists(), "the RDM descriptor is gone");
    assert!(!Path::new(&format!("{}-rdm.vmdk", rdm.display())).exists());
    assert!(!Path::new(&format!("/tmp/vmkfstools-wrapper-{id}")).exists());
    // A task cleaned is unknown.
    let (code, status, msg) = h.run(&["--task-get", "-i", &id], &[]);
    assert_eq!((code, status.as_str()), (1, "1"), "{msg}");
    assert!(msg.contains("no task"), "{msg}");
}

#[test]
fn a_failed_clone_reports_its_error_text_as_valid_json() {
    for shell in shells() {
        failed_clone(shell);
    }
}

fn failed_clone(shell: &str) {
    let h = host(shell);
    let (_, status, msg) = h.run(
        &["--clone", "-s", SOURCE, "-t", DEVICE],
        &[("FAKE_EXIT", "3")],
    );
    assert_eq!(status, "0", "{msg}");
    let id = serde_json::from_str::<Value>(&msg).unwrap()["taskId"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = h.wait(&id);
    assert_eq!(t["exitCode"], "3", "{shell}: {t}");
    assert_eq!(
        t["stdErr"], "Failed to clone disk: \"bad\" <sector> C:\\q\n tab",
        "{shell}: {t}"
    );
    h.run(&["--task-clean", "-i", &id], &[]);
}

#[test]
fn bad_paths_ids_and_commands_are_refused() {
    for shell in shells() {
        bad_input(shell);
    }
}

fn bad_input(shell: &str) {
    let h = host(shell);
    for (args, want) in [
        (
            vec![
                "--clone",
                "-s",
                "/vmfs/volumes/ds/../../etc/passwd.vmdk",
                "-t",
                DEVICE,
            ],
            "traversal",
        ),
        (
            vec!["--clone", "-s", "/etc/x.vmdk", "-t", DEVICE],
            "not under",
        ),
        (
            vec!["--clone", "-s", SOURCE, "-t", "/vmfs/volumes/ds 1/x"],
            "not a device",
        ),
        (
            vec![
                "--clone",
                "-s",
                "/vmfs/volumes/ds 1/none.vmdk",
                "-t",
                DEVICE,
            ],
            "no such disk",
        ),
        (vec!["--clone", "-s", SOURCE], "needs -s"),
        (vec!["--task-get", "-i", "../../etc"], "task id"),
        (vec!["--task-clean", "-i"], "needs a value"),
        (vec!["--rm", "-rf"], "unknown option"),
        (
            vec!["--task-get", "--task-clean", "-i", "ab"],
            "one command at a time",
        ),
        (vec!["--task-get", "-i", "ab", "-i", "cd"], "given twice"),
        (vec![], "no command"),
    ] {
        let (code, status, msg) = h.run(&args, &[]);
        assert_eq!((code, status.as_str()), (1, "1"), "{shell} {args:?}: {msg}");
        assert!(msg.contains(want), "{shell} {args:?}: {msg}");
    }
    assert!(!h.dir.path().join("args").exists(), "vmkfstools never ran");
}

#[test]
fn the_forced_command_answers_the_access_test_and_routes_by_datastore() {
    for shell in shells() {
        let h = host(shell);
        let root = h.dir.path().display().to_string();
        std::fs::copy(
            &h.script,
            h.path("/vmfs/volumes/ds 1/secure-vmkfstools-wrapper"),
        )
        .unwrap();
        // As sshd hands it to the shell: the authorized_keys quoting undone, /vmfs here.
        let forced = FORCED_COMMAND
            .replace("\\\"", "\"")
            .replace("/vmfs/volumes/", &format!("{root}/vmfs/volumes/"));
        let run = |ssh_command: &str| {
            let out = Command::new(&h.shell[0])
                .args(&h.shell[1..])
                .args(["-c", &forced])
                .env_clear()
                .env("PATH", &h.path)
                .env("SSH_ORIGINAL_COMMAND", ssh_command)
                .env("VMFS_ROOT", h.dir.path())
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )
        };
        assert_eq!(
            run("DS=;CMD=status test-task-id"),
            (Some(0), "SSH_OK".to_owned()),
            "{shell}"
        );
        let (code, out) = run("DS=ds 1;CMD=--version");
        assert_eq!(code, Some(0), "{shell}: {out}");
        assert!(out.contains(WRAPPER_VERSION), "{shell}: {out}");
        for bad in [
            "DS=../ds 1;CMD=--version",
            "DS=..;CMD=--version",
            "DS=.;CMD=--version",
            "--version",
            "DS=ds 1",
            "",
        ] {
            let (code, out) = run(bad);
            assert_eq!(code, Some(1), "{shell} {bad:?}: {out}");
            assert!(out.starts_with("refused"), "{shell} {bad:?}: {out}");
        }
    }
}

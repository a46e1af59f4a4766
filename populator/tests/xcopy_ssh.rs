//! `populator vsphere-xcopy` with `ESXI_CLONE_METHOD=ssh`, end to end: besides the peers of
//! the VIB tests (vcsim-ferry, the ONTAP and Kubernetes servers, a loop device as the LUN), a
//! real OpenSSH sshd stands in for the ESXi host's, with the restricted key line the populator
//! prints in root's authorized keys. The populator uploads its wrapper script to the datastore
//! through vCenter's /folder service, checks the key, and runs the clone through the wrapper,
//! which starts vmkfstools (vcsim-ferry under that name: it copies the disk's flat file onto
//! the device the LUN's entry stands for) and reads the XCOPY statistics with vsish (the same).
//! /vmfs is a directory of the test whose volumes/<datastore> are vcsim's datastore directories
//! and devices/disks the array's LUN entries.

mod xcopy_rig;

use std::path::{Path, PathBuf};

use base64::Engine;
use ferry_pod::xcopy::ssh::{authorized_keys_line, WRAPPER_NAME};
use test_kit::sshd::{keygen, KeyPair, Sshd};
use test_kit::vcsim::Vcsim;
use xcopy_rig::*;

/// The host's /vmfs (under `root`) and its tools, for the wrapper.
struct Esxi {
    root: PathBuf,
    datastore: PathBuf,
}

/// Lays out `<dir>/esxi`: vmfs/volumes/<datastore> and vmfs/devices/disks as links to vcsim's
/// datastore directory and the array's devices, bin/vmkfstools and bin/vsish as vcsim-ferry.
fn esxi(r: &Rig) -> Esxi {
    let root = r.dir.path().join("esxi");
    let volumes = root.join("vmfs/volumes");
    std::fs::create_dir_all(&volumes).unwrap();
    std::fs::create_dir_all(root.join("vmfs/devices")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let (ds, _) = r
        .vcsim
        .vm()
        .disk_file
        .trim_start_matches('[')
        .split_once("] ")
        .unwrap();
    let ds_dir = PathBuf::from(r.vcsim.ready()["datastores"][ds].as_str().unwrap());
    std::os::unix::fs::symlink(&ds_dir, volumes.join(ds)).unwrap();
    std::os::unix::fs::symlink(
        r.dir.path().join("devices"),
        root.join("vmfs/devices/disks"),
    )
    .unwrap();
    for tool in ["vmkfstools", "vsish"] {
        std::os::unix::fs::symlink(Vcsim::binary(), root.join("bin").join(tool)).unwrap();
    }
    Esxi {
        root,
        datastore: ds_dir,
    }
}

impl Esxi {
    /// The sessions' environment: where /vmfs and the tools are, and the fake vmkfstools'
    /// knobs.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("VMFS_ROOT".to_owned(), self.root.display().to_string()),
            (
                "VMKFSTOOLS".to_owned(),
                self.root.join("bin/vmkfstools").display().to_string(),
            ),
            (
                "VSISH".to_owned(),
                self.root.join("bin/vsish").display().to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// The populator's authorized_keys line for `public`, with /vmfs/volumes/ where this
    /// host has it.
    fn key_line(&self, public: &str) -> String {
        authorized_keys_line(public).replace(
            "/vmfs/volumes/",
            &format!("{}/vmfs/volumes/", self.root.display()),
        )
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The populator's environment for the SSH method with `keys`, sshd on `port`.
fn ssh_env(r: &Rig, keys: &KeyPair, port: u16) -> Vec<(String, String)> {
    let mut env = r.env();
    env.extend([
        ("ESXI_CLONE_METHOD".to_owned(), "ssh".to_owned()),
        ("SSH_PRIVATE_KEY".to_owned(), b64(&keys.private)),
        ("SSH_PUBLIC_KEY".to_owned(), b64(&keys.public)),
        ("FERRY_XCOPY_SSH_PORT".to_owned(), port.to_string()),
    ]);
    env
}

/// Files the clone left next to the source disk (the RDM descriptor and mapping file).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("-rdmdisk-") {
            out.push(name);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// One population's peers with the host's sshd: a key pair of `kind` whose restricted line
/// root's authorized keys hold, and `extra` for the sessions (the fake vmkfstools' knobs).
struct SshRig {
    r: Rig,
    host: Esxi,
    keys: KeyPair,
    sshd: Sshd,
}

fn ssh_rig(kind: &str, extra: &[(&str, &str)]) -> Option<SshRig> {
    let r = rig(&[])?;
    let host = esxi(&r);
    let keys = keygen(r.dir.path(), "offload-key", kind);
    let sshd = Sshd::start(r.dir.path(), &host.key_line(&keys.public), &host.env(extra))?;
    Some(SshRig {
        r,
        host,
        keys,
        sshd,
    })
}

#[test]
fn the_ssh_method_clones_through_the_restricted_key() {
    // An RSA key in PEM form, as Go's x509 package writes them.
    let Some(SshRig {
        r,
        host,
        keys,
        sshd,
    }) = ssh_rig("rsa", &[("FAKE_VMKFSTOOLS_RATE", "12582912")])
    else {
        return;
    };
    let before = r.mappings();
    // Another release's wrapper (Forklift's populator uploads its own under the same name).
    std::fs::write(
        host.datastore.join(WRAPPER_NAME),
        "echo '<output><structure typeName=\"result\"><field name=\"status\"><string>0</string></field><field name=\"message\"><string>{\"version\": \"0.3.0\"}</string></field></structure></output>'\n",
    )
    .unwrap();
    let mut env = ssh_env(&r, &keys, sshd.port);
    // The host key pinned (a ferry extension; Forklift takes any).
    env.push(("SSH_HOST_KEY_FINGERPRINT".into(), sshd.fingerprint.clone()));
    let (out, scrapes) = r.run_with(&env);
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(
        out.status.success(),
        "{err}\nsshd: {}\nvcsim: {}",
        sshd.log(),
        r.vcsim.log()
    );
    r.assert_cloned();
    assert_eq!(r.mappings(), before, "the LUN's mappings are as they were");

    // The wrapper is on the datastore, uploaded through vCenter in place of the other
    // release's; the task and its RDM files are gone.
    assert!(err.contains("is version 0.3.0: replacing it"), "{err}");
    let uploaded = std::fs::read_to_string(host.datastore.join(WRAPPER_NAME)).unwrap();
    assert_eq!(uploaded, ferry_pod::xcopy::ssh::WRAPPER);
    assert_eq!(leftovers(&host.datastore), Vec::<String>::new());
    let log = sshd.log();
    assert!(log.contains("Accepted publickey for root"), "{log}");
    // esxcli for the storage side, SSH for vmkfstools: the VIB was never asked.
    let vlog = r.vcsim.log();
    assert!(
        vlog.contains("storage core adapter rescan all=1 type=add"),
        "{vlog}"
    );
    assert!(!vlog.contains("vmkfstools"), "{vlog}");

    assert_progress(&scrapes);
    let last = scrapes.last().unwrap();
    let uid = format!("owner_uid=\"{UID}\"");
    assert_eq!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_xcopy_used",
            &[&uid, "clone_method=\"ssh\""]
        ),
        Some(1.0),
        "{last}"
    );
    assert!(sample(
        last,
        "vsphere_xcopy_volume_populator_copy_duration_seconds",
        &[&uid, "result=\"success\"", "clone_method=\"ssh\""]
    )
    .is_some());

    // The key never shows: not a line of it, nor its secret's form.
    let key_lines = keys
        .private
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 20)
        .map(str::to_owned);
    for secret in r
        .secrets()
        .into_iter()
        .chain(key_lines)
        .chain([b64(&keys.private)])
    {
        assert!(!err.contains(&secret), "a secret in the log: {err}");
        assert!(!scrapes.iter().any(|t| t.contains(&secret)));
        assert!(!vlog.contains(&secret));
    }
}

#[test]
fn a_key_the_host_does_not_hold_or_an_old_key_line_fails_before_the_array_is_touched() {
    let Some(r) = rig(&[]) else {
        return;
    };
    let host = esxi(&r);
    let keys = keygen(r.dir.path(), "offload-key", "ed25519");
    let other = keygen(r.dir.path(), "someone-else", "ed25519");
    let before = r.ontap.lock().unwrap().igroups.clone();

    // The host holds another key: the error says so, the log holds the line to install, made
    // from the key alone (a second line in SSH_PUBLIC_KEY does not reach it).
    {
        let Some(sshd) = Sshd::start(r.dir.path(), &host.key_line(&other.public), &host.env(&[]))
        else {
            return;
        };
        let mut env = ssh_env(&r, &keys, sshd.port);
        for (k, v) in env.iter_mut() {
            if k == "SSH_PUBLIC_KEY" {
                *v = b64(&format!("{}ssh-ed25519 AAAAinjected", keys.public));
            }
        }
        let (line, _, out) = r.run_failing(&env);
        assert!(line.contains("authorized_keys"), "{line}");
        let err = stderr(&out);
        assert!(!err.contains("injected"), "{err}");
        assert!(
            err.contains(&authorized_keys_line(&keys.public)),
            "the line to install is logged: {err}"
        );
        assert_eq!(r.ontap.lock().unwrap().igroups, before, "no group made");
    }
    // An older line that runs another wrapper file (Forklift's Python one): its version
    // differs from the one uploaded.
    {
        std::fs::write(
            host.datastore.join("secure-vmkfstools-wrapper.py"),
            "echo '<output><structure typeName=\"result\"><field name=\"status\"><string>0</string></field><field name=\"message\"><string>{\"version\": \"0.2.0\"}</string></field></structure></output>'\n",
        )
        .unwrap();
        let line = host.key_line(&keys.public).replace(
            "secure-vmkfstools-wrapper\\\"",
            "secure-vmkfstools-wrapper.py\\\"",
        );
        assert!(line.contains(".py"), "{line}");
        let Some(sshd) = Sshd::start(r.dir.path(), &line, &host.env(&[])) else {
            return;
        };
        let (line, _, _) = r.run_failing(&ssh_env(&r, &keys, sshd.port));
        assert!(line.contains("version 0.2.0"), "{line}");
        assert_eq!(r.ontap.lock().unwrap().igroups, before, "no group made");
    }
    // A pinned host key that is not the host's.
    {
        let Some(sshd) = Sshd::start(r.dir.path(), &host.key_line(&keys.public), &host.env(&[]))
        else {
            return;
        };
        let mut env = ssh_env(&r, &keys, sshd.port);
        env.push((
            "SSH_HOST_KEY_FINGERPRINT".into(),
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        ));
        let (line, _, _) = r.run_failing(&env);
        assert!(
            line.contains(&format!(
                "the host key {} is not SSH_HOST_KEY_FINGERPRINT",
                sshd.fingerprint
            )),
            "{line}"
        );
        assert_eq!(r.ontap.lock().unwrap().igroups, before, "no group made");
    }
}

#[test]
fn a_clone_that_fails_over_ssh_is_reported_and_the_mappings_come_back() {
    let Some(SshRig {
        r,
        host,
        keys,
        sshd,
    }) = ssh_rig(
        "ed25519",
        &[
            ("FAKE_VMKFSTOOLS_FAIL_AT", "40"),
            ("FAKE_VMKFSTOOLS_RATE", "12582912"),
        ],
    )
    else {
        return;
    };
    let before = r.mappings();
    let (line, _, _) = r.run_failing(&ssh_env(&r, &keys, sshd.port));
    assert!(
        line.contains("exit code 1") && line.contains("Input/output error"),
        "{line}"
    );
    assert_eq!(r.mappings(), before);
    assert!(!r.dir.path().join("devices").join(naa()).exists());
    assert_eq!(leftovers(&host.datastore), Vec::<String>::new());
}

#[test]
fn sigterm_mid_clone_over_ssh_cleans_up_and_the_next_run_completes() {
    let Some(SshRig {
        r,
        host,
        keys,
        sshd,
    }) = ssh_rig("ed25519", &[("FAKE_VMKFSTOOLS_RATE", "4194304")])
    else {
        return;
    };
    let before = r.mappings();
    let env = ssh_env(&r, &keys, sshd.port);
    let (child, _) = r.spawn(&r.args("ontap"), &env);
    // Under way once vmkfstools has written its first progress into the LUN's statistics.
    let ops = host
        .root
        .join(".vsish")
        .join(format!("{}.clonewriteops", naa()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ops.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the clone never started: {}",
            sshd.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    r.sigterm(child, &before);

    // A new pod does the whole job, over the same key, with the wrapper left in place.
    let out = r.run_to_completion(&env, &before);
    assert!(
        stderr(&out).contains("is this release's"),
        "{}",
        stderr(&out)
    );
}

//! `importer copy vddk://...` against ferry's fake VDDK (`vddk-sys/fake`): a library named and
//! loaded like VMware's, serving raw files, with a log of every call it received. VDDK itself
//! cannot be installed here (it is proprietary), so the fake follows VMware's documented API.

use std::path::{Path, PathBuf};

use serde_json::Value;
use test_kit::vddk::{FakeVddk, PASSWORD, TP};
use test_kit::{
    allocated_bytes, assert_file_holds, disk_bytes, s, spawn_importer_env, tempdir, Out,
};

const TP_UPPER: &str = "0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D";
const MIB: usize = 1 << 20;

fn url(fake: &FakeVddk) -> String {
    fake.url()
}

fn run(fake: &FakeVddk, args: &[&str]) -> Out {
    fake.run(args)
}

/// `importer copy URL TARGET --vddk file=DISK EXTRA...`
fn copy(fake: &FakeVddk, disk: &str, target: &Path, extra: &[&str]) -> Out {
    fake.copy(disk, target, extra)
}

/// `out` without the INFO lines on stderr: the VDDK source announces VDDK's version and the
/// transport it chose there when it opens the disk.
fn without_info(out: &Out) -> Out {
    let rest: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.contains(" INFO "))
        .collect();
    Out {
        status: out.status,
        stdout: out.stdout.clone(),
        stderr: rest.join("\n"),
    }
}

/// A successful copy's statistics (see `Out::copy_stats`); INFO lines are allowed.
fn stats(out: &Out) -> test_kit::Stats {
    without_info(out).copy_stats()
}

/// Asserts a clean failure (see `Out::assert_clean_failure`); INFO lines are allowed.
fn failure(out: &Out, phrases: &[&str]) {
    without_info(out).assert_clean_failure(phrases);
}

/// A disk on the fake (VM vm-42's) and a target path in a directory of its own.
struct Case {
    fake: FakeVddk,
    disk: String,
    _dir: tempfile::TempDir,
    target: PathBuf,
}

impl Case {
    fn new(fake: FakeVddk, bytes: &[u8]) -> Case {
        let disk = fake.add_disk("vm-42", bytes);
        let dir = tempdir();
        let target = dir.path().join("disk.img");
        Case {
            fake,
            disk,
            _dir: dir,
            target,
        }
    }

    /// `importer copy` of the disk into the target, with `extra` arguments.
    fn copy(&self, extra: &[&str]) -> Out {
        copy(&self.fake, &self.disk, &self.target, extra)
    }
}

/// Bytes the copy read with ReadAsync, by the fake's log.
fn bytes_read(log: &[Value]) -> u64 {
    calls(log, "ReadAsync")
        .iter()
        .map(|c| c["count"].as_u64().unwrap() * 512)
        .sum()
}

fn calls<'a>(log: &'a [Value], name: &str) -> Vec<&'a Value> {
    log.iter().filter(|c| c["call"] == name).collect()
}

fn names(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|c| c["call"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn copy_is_byte_identical_with_holes_where_vddk_reports_unallocated_chunks() {
    let fake = FakeVddk::new();
    let bytes = disk_bytes(8 * MIB, 11);
    let c = Case::new(fake, &bytes);

    let out = c.copy(&[]);

    let st = stats(&out);
    assert_file_holds(&c.target, &bytes);
    let zero_chunks = bytes
        .chunks(64 << 10)
        .filter(|c| c.iter().all(|&b| b == 0))
        .count();
    assert!(zero_chunks > 0, "the test disk has holes");
    assert!(st.bytes_zero >= (zero_chunks * (64 << 10)) as u64, "{st:?}");
    assert!(
        allocated_bytes(&c.target) <= st.bytes_data + (64 << 10),
        "holes stay holes in the target"
    );
    let log = c.fake.calls();
    let q = calls(&log, "QueryAllocatedBlocks");
    assert!(!q.is_empty(), "extents come from QueryAllocatedBlocks");
    assert!(q.iter().all(|c| c["chunk"] == 128), "{q:?}");
    let read: u64 = bytes_read(&log);
    assert_eq!(read, st.bytes_data, "only allocated chunks are read");
}

#[test]
fn calls_come_in_vddks_order_with_every_handle_call_on_one_thread() {
    let fake = FakeVddk::new();
    let disk = fake.add_disk("vm-42", &disk_bytes(4 * MIB, 12));
    let dir = tempdir();

    stats(&copy(&fake, &disk, &dir.path().join("disk.img"), &[]));

    let log = fake.calls();
    let order: Vec<String> = names(&log)
        .into_iter()
        .filter(|n| {
            [
                "InitEx",
                "ConnectEx",
                "Open",
                "GetInfo",
                "Close",
                "Disconnect",
                "Exit",
            ]
            .contains(&n.as_str())
        })
        .collect();
    assert_eq!(
        order,
        [
            "InitEx",
            "ConnectEx",
            "Open",
            "GetInfo",
            "Close",
            "Disconnect",
            "Exit"
        ],
        "{log:?}"
    );
    let handle_calls = [
        "ConnectEx",
        "Open",
        "GetInfo",
        "ReadAsync",
        "QueryAllocatedBlocks",
        "Close",
        "Disconnect",
    ];
    let threads: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|c| handle_calls.contains(&c["call"].as_str().unwrap_or("")))
        .map(|c| c["thread"].as_u64().unwrap())
        .collect();
    assert_eq!(
        threads.len(),
        1,
        "one thread makes every call on a handle: {threads:?}"
    );
    assert_eq!(
        calls(&log, "Close")[0]["pending"],
        0,
        "reads drained before Close"
    );
    let init = calls(&log, "InitEx")[0];
    let lib64 = fake.libdir().join("lib64");
    assert!(
        init["ld_library_path"]
            .as_str()
            .unwrap_or("")
            .split(':')
            .any(|p| Path::new(p) == lib64),
        "VDDK's lib64 is on LD_LIBRARY_PATH when it starts: {init}"
    );
    assert_eq!(init["libdir"], s(fake.libdir()));
}

#[test]
fn connection_parameters_reach_connectex_and_the_info_line_names_version_and_transport() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_THUMBPRINT", TP_UPPER);
    let disk = fake.add_disk("vm-42", &disk_bytes(MIB, 13));
    let dir = tempdir();
    let config = dir.path().join("vddk.conf");
    std::fs::write(&config, "vixDiskLib.nfcAio.Session.BufSizeIn64KB=16\n").unwrap();
    let config_arg = format!("config={}", s(&config));

    let out = copy(
        &fake,
        &disk,
        &dir.path().join("disk.img"),
        &[
            "--vddk",
            "transports=hotadd:nbdssl:nbd",
            "--vddk",
            "nfchostport=9020",
            "--vddk",
            &config_arg,
        ],
    );

    stats(&out);
    let log = fake.calls();
    let c = calls(&log, "ConnectEx")[0];
    assert_eq!(c["serverName"], "vcenter.example");
    assert_eq!(c["userName"], "administrator@vsphere.local");
    assert_eq!(c["vmxSpec"], "moref=vm-42");
    assert_eq!(c["thumbPrint"], TP_UPPER);
    assert_eq!(c["port"], 443);
    assert_eq!(c["nfcHostPort"], 9020);
    assert_eq!(c["credType"], 1);
    assert_eq!(c["readOnly"], 1);
    assert_eq!(c["transportModes"], "hotadd:nbdssl:nbd");
    assert_eq!(c["snapshotRef"], Value::Null);
    assert_eq!(c["password"], "ok");
    assert_eq!(calls(&log, "Open")[0]["path"], disk.as_str());
    assert_eq!(calls(&log, "InitEx")[0]["config"], s(&config));
    let info: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(" INFO "))
        .collect();
    assert_eq!(info.len(), 1, "{}", out.stderr);
    assert!(
        info[0].contains("VDDK 8.0.3") && info[0].contains("transport hotadd"),
        "{}",
        info[0]
    );
}

#[test]
fn a_snapshot_moref_reads_the_disk_as_of_that_snapshot() {
    let fake = FakeVddk::new();
    let disk = fake.add_disk("vm-42", &disk_bytes(2 * MIB, 14));
    let snap = disk_bytes(2 * MIB, 15);
    fake.add_snapshot(&disk, "snapshot-7", &snap);
    let dir = tempdir();
    let target = dir.path().join("disk.img");

    stats(&copy(
        &fake,
        &disk,
        &target,
        &["--vddk", "snapshot=snapshot-7"],
    ));

    assert_file_holds(&target, &snap);
    assert_eq!(
        calls(&fake.calls(), "ConnectEx")[0]["snapshotRef"],
        "snapshot-7"
    );
}

#[test]
fn the_password_never_appears_in_logs_output_argv_environment_or_what_vddk_is_given() {
    // Slow reads keep the importer running while its /proc entries are read.
    let fake = FakeVddk::new()
        .knob("FAKE_VDDK_PASSWORD", PASSWORD)
        .knob("FAKE_VDDK_LATENCY_US", "200000");
    let disk = fake.add_disk("vm-42", &disk_bytes(MIB, 16));
    let dir = tempdir();
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let url = url(&fake);
    let file = format!("file={disk}");
    let target = dir.path().join("disk.img");

    // Trace level: every log line of ferry and of VDDK, the per-call statistics included.
    let run = spawn_importer_env(
        &[
            "copy",
            &url,
            s(&target),
            "--vddk",
            &file,
            "--password-file",
            s(&pw),
            "--log-level",
            "trace",
        ],
        &fake.env(),
    );
    // What other processes of the pod could read while the copy runs.
    let proc_dir = PathBuf::from(format!("/proc/{}", run.pid()));
    let mut seen_proc = String::new();
    for _ in 0..20 {
        if let Ok(b) = std::fs::read(proc_dir.join("cmdline")) {
            seen_proc.push_str(&String::from_utf8_lossy(&b));
        }
        // The environment, less the fake's own knob that tells it which password to expect.
        if let Ok(b) = std::fs::read(proc_dir.join("environ")) {
            for var in String::from_utf8_lossy(&b).split('\0') {
                if !var.starts_with("FAKE_VDDK_PASSWORD=") {
                    seen_proc.push_str(var);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run.finish();

    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("VDDK call statistics"),
        "statistics at trace: {}",
        out.stderr
    );
    // The password reached VDDK in the one field meant for it.
    assert_eq!(calls(&fake.calls(), "ConnectEx")[0]["password"], "ok");
    // The fake records every other string ConnectEx got (server, user, vmxSpec, thumbprint) as
    // it got it: a password passed in any of them would show there. The user name shows that
    // the search reads what ferry passed.
    let vddk_got = fake.log_text();
    assert!(
        vddk_got.contains("administrator@vsphere.local"),
        "{vddk_got}"
    );
    assert!(
        seen_proc.contains("--password-file"),
        "the process was sampled while it ran"
    );
    for (what, text) in [
        ("stderr", &out.stderr),
        ("stdout", &out.stdout),
        ("argv or environment", &seen_proc),
        ("the strings VDDK was given", &vddk_got),
    ] {
        assert!(!text.contains(PASSWORD), "the password leaked into {what}");
    }
}

#[test]
fn a_refused_login_is_one_clear_line_without_the_password() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_PASSWORD", "another-one");
    let disk = fake.add_disk("vm-42", &disk_bytes(MIB, 17));
    let dir = tempdir();
    let target = dir.path().join("disk.img");

    let out = copy(&fake, &disk, &target, &[]);

    out.assert_clean_failure(&[
        "vcenter.example",
        "ConnectEx",
        "Authentication failure",
        "incorrect user name or password",
    ]);
    assert!(!out.stderr.contains(PASSWORD));
    assert!(!target.exists());
}

#[test]
fn a_wrong_thumbprint_fails_connectex_and_says_so() {
    let fake = FakeVddk::new().knob(
        "FAKE_VDDK_THUMBPRINT",
        "11:22:33:44:55:66:77:88:99:00:11:22:33:44:55:66:77:88:99:00",
    );
    let disk = fake.add_disk("vm-42", &disk_bytes(MIB, 18));
    let dir = tempdir();

    let out = copy(&fake, &disk, &dir.path().join("disk.img"), &[]);

    out.assert_clean_failure(&["ConnectEx", "thumbprint mismatch"]);
}

#[test]
fn a_missing_disk_fails_open_with_vddks_reason_and_leaves_no_target() {
    let fake = FakeVddk::new();
    let dir = tempdir();
    let target = dir.path().join("disk.img");

    let out = copy(&fake, "[datastore1] vm-9/vm-9.vmdk", &target, &[]);

    out.assert_clean_failure(&[
        "VixDiskLib_Open",
        "The file was not found",
        "[datastore1] vm-9/vm-9.vmdk",
    ]);
    assert!(!target.exists());
}

#[test]
fn a_failed_read_fails_the_copy_and_removes_the_target() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_FAIL_READ", "3");
    let bytes = disk_bytes(8 * MIB, 19);
    let c = Case::new(fake, &bytes);

    // Without retries (tests/faults.rs has the read retried on a reopened handle).
    let out = c.copy(&["--retries", "0"]);

    failure(&out, &["reading", "ReadAsync", "VIX error 1"]);
    test_kit::assert_no_complete_target(&c.target, &bytes);
    let log = c.fake.calls();
    assert_eq!(calls(&log, "Close").len(), 1, "the handle is still closed");
    assert_eq!(calls(&log, "Close")[0]["pending"], 0);
}

#[test]
fn a_directory_without_vddk_is_a_clear_error() {
    let fake = FakeVddk::new();
    let empty = tempdir();
    let dir = tempdir();
    let url = format!(
        "vddk://root@esx.example/?vm=vm-1&thumbprint={TP}&file=[ds] a/a.vmdk&libdir={}",
        s(empty.path())
    );

    let out = run(&fake, &["copy", &url, s(&dir.path().join("disk.img"))]);

    out.assert_clean_failure(&["cannot load VDDK from", s(empty.path()), "libvixDiskLib.so"]);
}

#[test]
fn missing_or_misplaced_parameters_are_refused_before_connecting() {
    let fake = FakeVddk::new();
    let dir = tempdir();
    let target = dir.path().join("disk.img");
    let lib = s(fake.libdir());
    let cases: [(String, &str); 3] = [
        (format!("vddk://root@esx.example/?vm=vm-1&file=[ds] a/a.vmdk&libdir={lib}"), "thumbprint"),
        (format!("vddk://root@esx.example/?thumbprint={TP}&file=[ds] a/a.vmdk&libdir={lib}"), "vm=moref=vm-N"),
        (format!("vddk://root:{PASSWORD}@esx.example/?vm=vm-1&thumbprint={TP}&file=[ds] a/a.vmdk&libdir={lib}"), "--password-file"),
    ];
    for (url, phrase) in cases {
        let out = run(&fake, &["copy", &url, s(&target)]);
        out.assert_clean_failure(&[phrase]);
        assert!(!out.stderr.contains(PASSWORD));
    }
    assert!(
        calls(&fake.calls(), "ConnectEx").is_empty(),
        "nothing connected"
    );
}

#[test]
fn vddk_65_without_query_allocated_blocks_reads_everything_and_finds_zeros() {
    let fake = FakeVddk::v65();
    let bytes = disk_bytes(4 * MIB, 20);
    let c = Case::new(fake, &bytes);

    let st = stats(&c.copy(&[]));

    assert_file_holds(&c.target, &bytes);
    let log = c.fake.calls();
    assert!(calls(&log, "QueryAllocatedBlocks").is_empty());
    assert!(calls(&log, "AllocateConnectParams").is_empty());
    let read: u64 = bytes_read(&log);
    assert_eq!(read, bytes.len() as u64, "every byte is read");
    assert!(st.bytes_zero > 0, "zero detection found the zero chunks");
}

#[test]
fn a_failing_query_falls_back_to_reading_every_range() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_FAIL", "QueryAllocatedBlocks");
    let bytes = disk_bytes(4 * MIB, 21);
    let c = Case::new(fake, &bytes);

    let out = c.copy(&[]);

    stats(&out);
    assert_file_holds(&c.target, &bytes);
    assert_eq!(
        calls(&c.fake.calls(), "QueryAllocatedBlocks").len(),
        1,
        "asked once, then given up"
    );
    assert!(out.stderr.contains("reading every range"), "{}", out.stderr);
}

#[test]
fn unallocated_chunks_read_as_zero_even_when_the_file_has_bytes_there() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_ALLOCATED", "0:1048576");
    let bytes = disk_bytes(4 * MIB, 22);
    let c = Case::new(fake, &bytes);

    stats(&c.copy(&[]));

    let mut expected = bytes.clone();
    expected[MIB..].fill(0);
    assert_file_holds(&c.target, &expected);
    let log = c.fake.calls();
    assert!(calls(&log, "ReadAsync")
        .iter()
        .all(|c| c["sector"].as_u64().unwrap() < 2048));
}

#[test]
fn many_reads_are_in_flight_on_one_handle() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_LATENCY_US", "20000");
    let bytes = disk_bytes(16 * MIB, 23)
        .iter()
        .map(|b| b | 1)
        .collect::<Vec<u8>>();
    let c = Case::new(fake, &bytes);

    stats(&c.copy(&[]));

    assert_file_holds(&c.target, &bytes);
    let (mut inflight, mut most) = (0i64, 0i64);
    for c in c.fake.calls() {
        match c["call"].as_str() {
            Some("ReadAsync") => inflight += 1,
            Some("ReadAsyncDone") => inflight -= 1,
            _ => {}
        }
        most = most.max(inflight);
    }
    assert!(most >= 4, "at most {most} reads were in flight");
    let opens = calls(&c.fake.calls(), "Open").len();
    assert_eq!(
        opens, 1,
        "one handle by default (each is an NFC connection)"
    );
}

#[test]
fn more_connections_open_more_handles_each_on_its_own_thread_with_one_initex() {
    let fake = FakeVddk::new();
    let bytes = disk_bytes(8 * MIB, 24);
    let c = Case::new(fake, &bytes);

    let st = stats(&c.copy(&["--vddk", "connections=2"]));

    assert_eq!(st.connections, 2);
    assert_file_holds(&c.target, &bytes);
    let log = c.fake.calls();
    assert_eq!(calls(&log, "InitEx").len(), 1);
    assert_eq!(calls(&log, "Exit").len(), 1);
    let threads: std::collections::BTreeSet<u64> = calls(&log, "Open")
        .iter()
        .map(|c| c["thread"].as_u64().unwrap())
        .collect();
    assert_eq!(threads.len(), 2);
}

#[test]
fn the_extents_command_prints_vddks_allocation() {
    let fake = FakeVddk::new().knob("FAKE_VDDK_ALLOCATED", "65536:131072,1048576:65536");
    let disk = fake.add_disk("vm-42", &vec![7u8; 2 * MIB]);
    let url = url(&fake);
    let file = format!("file={disk}");

    let out = run(&fake, &["extents", &url, "--vddk", &file]);

    assert!(out.status.success(), "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let got: Vec<(u64, u64, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 65536, "hole"),
            (65536, 131072, "data"),
            (196608, 851968, "hole"),
            (1048576, 65536, "data"),
            (1114112, 983040, "hole"),
        ]
    );
}

/// A copy of `bytes` from a fake with `knob` set: its output and wall time, and the case.
fn timed_copy(knob: (&str, &str), bytes: &[u8], extra: &[&str]) -> (Out, f64, Case) {
    let case = Case::new(FakeVddk::new().knob(knob.0, knob.1), bytes);
    let t = std::time::Instant::now();
    let out = case.copy(extra);
    (out, t.elapsed().as_secs_f64(), case)
}

#[test]
fn a_vddk_read_that_never_completes_is_given_up_and_retried_on_a_new_handle() {
    let bytes = disk_bytes(8 * MIB, 31);
    let extra = ["--idle-timeout", "1", "--retry-delay", "0.01"];

    let (out, secs, case) = timed_copy(("FAKE_VDDK_HANG_READ", "3"), &bytes, &extra);

    assert!(out.status.success(), "{}", out.stderr);
    assert_file_holds(&case.target, &bytes);
    let v: Value = serde_json::from_str(out.stdout.lines().last().unwrap_or("")).expect("summary");
    assert_eq!(v["retries"], 1, "one read retried: {}", out.stderr);
    assert!(
        out.stderr.contains("did not complete a read"),
        "{}",
        out.stderr
    );
    assert_eq!(
        case.fake.calls_of("Open").len(),
        2,
        "a fresh handle for the retry"
    );
    // The stuck handle (its Wait would never return) is abandoned: neither the copy nor the
    // process's end waits for it.
    assert!(secs < 15.0, "took {secs:.1} s");
}

#[test]
fn a_vddk_connect_that_never_returns_fails_in_one_line_within_the_timeout() {
    let knob = ("FAKE_VDDK_HANG", "ConnectEx");

    let (out, secs, case) = timed_copy(knob, &disk_bytes(MIB, 2), &["--idle-timeout", "1"]);

    failure(
        &out,
        &["VixDiskLib_ConnectEx has been running", "abandoned"],
    );
    assert!(secs < 15.0, "took {secs:.1} s");
    assert!(!case.target.exists());
    assert_eq!(
        case.fake.calls_of("Exit").len(),
        0,
        "no Exit while VDDK is inside ConnectEx"
    );
}

#[test]
fn a_vddk_disconnect_that_never_returns_keeps_neither_the_copy_nor_the_other_handle() {
    // Two handles: the first to close hangs in Disconnect under the process-wide open/close
    // lock; the second gives up waiting for that lock instead of hanging behind it.
    let bytes = disk_bytes(8 * MIB, 5);
    let extra = ["--idle-timeout", "1", "--vddk", "connections=2"];

    let (out, secs, case) = timed_copy(("FAKE_VDDK_HANG", "Disconnect"), &bytes, &extra);

    assert!(out.status.success(), "{}", out.stderr);
    assert_file_holds(&case.target, &bytes);
    assert_eq!(case.fake.calls_of("Open").len(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("VixDiskLib_Disconnect has not returned"),
        "the second handle says what it waited for: {}",
        out.stderr
    );
    assert!(secs < 15.0, "took {secs:.1} s");
}

#[test]
fn a_readasync_whose_callback_runs_before_it_returns_still_copies() {
    let bytes = disk_bytes(4 * MIB, 8);

    let (out, _, case) = timed_copy(("FAKE_VDDK_COMPLETE_INLINE", "1"), &bytes, &[]);

    assert!(out.status.success(), "{}", out.stderr);
    assert_file_holds(&case.target, &bytes);
    let log = case.fake.calls();
    let submitted = calls(&log, "ReadAsync");
    let done = calls(&log, "ReadAsyncDone");
    assert!(!submitted.is_empty() && submitted.len() == done.len());
    assert!(
        submitted
            .iter()
            .zip(&done)
            .all(|(a, b)| a["thread"] == b["thread"]),
        "every completion ran on the submitting thread, inside ReadAsync"
    );
}

//! `--progress` and `--log-format`: off a terminal, progress is reported as log lines, and a
//! successful copy always ends with a 100% report; JSON logs are one JSON object per line.

use std::process::Command;

fn importer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn json_progress_logs_are_json_lines_ending_at_100_percent() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let (ok, stdout, stderr) = importer(&[
        "--log-format",
        "json",
        "copy",
        "--progress",
        "synth://sparse-random?size=64M&percent=30&seed=2",
        target.to_str().unwrap(),
    ]);

    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect();
    let last = lines.last().expect("a progress line");
    assert_eq!(last["fields"]["message"], "progress");
    assert_eq!(last["fields"]["percent"], 100.0);
    assert_eq!(last["fields"]["bytes_done"], 64 << 20);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["bytes_total"], 64 << 20);
}

#[test]
fn text_progress_logs_end_at_100_percent() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let (ok, _, stderr) = importer(&[
        "copy",
        "--progress",
        "synth://pattern?size=8M",
        target.to_str().unwrap(),
    ]);

    assert!(ok, "{stderr}");
    let last = stderr.lines().last().expect("a progress line");
    assert!(
        last.contains("progress") && last.contains("percent=100.0"),
        "{last}"
    );
}

#[test]
fn copy_without_progress_writes_nothing_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let (ok, stdout, stderr) =
        importer(&["copy", "synth://zero?size=8M", target.to_str().unwrap()]);

    assert!(ok);
    assert_eq!(stderr, "");
    assert_eq!(stdout.lines().count(), 1);
}

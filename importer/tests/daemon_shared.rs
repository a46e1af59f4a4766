//! What the daemon's transfers share: one memory budget for every copy buffer, and connection
//! caps per source server, both visible in `/metrics` (against real nbdkit exports); a source
//! that dies fails only its own transfer; Keystone credentials in a request reach a Glance
//! image and are never shown nor kept (the in-test Keystone and Glance of `test_kit::keystone`).

use std::time::{Duration, Instant};

use test_kit::daemon::Daemon;
use test_kit::*;

/// The sample `name` of a metrics scrape (0 when absent).
fn sample(m: &[(String, f64)], name: &str) -> f64 {
    m.iter().find(|(k, _)| k == name).map_or(0.0, |(_, v)| *v)
}

/// The daemon's peak resident memory in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// Polls `/metrics` until every transfer of `ids` has finished; returns the largest value
/// each of `names` had while they ran.
fn watch(d: &Daemon, ids: &[String], names: &[&str]) -> Vec<f64> {
    let mut peaks = vec![0.0f64; names.len()];
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let m = d.metrics();
        for (p, n) in peaks.iter_mut().zip(names) {
            *p = p.max(sample(&m, n));
        }
        let open = ids.iter().any(|id| {
            let s = d.get(id)["state"].as_str().unwrap_or("").to_owned();
            s == "queued" || s == "running"
        });
        if !open {
            return peaks;
        }
        assert!(Instant::now() < deadline, "the transfers did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn eight_transfers_at_once_keep_within_one_memory_budget_and_end_identical() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    // Every byte is data: every request needs a buffer.
    let src = Peer::nbdkit(&["pattern", "size=64M"]);
    let reference = dir.path().join("reference.img");
    nbdcopy(&src.uri(), &reference);
    let budget = 16u64 << 20;
    let d = Daemon::start(
        dir.path(),
        &root,
        &[
            "--max-transfers",
            "8",
            "--memory",
            "16M",
            "--server-connections",
            "64",
        ],
    );

    let ids: Vec<String> = (0..8)
        .map(|i| {
            let (st, v) = d.post(&format!(
                r#"{{"source":"{}","target":"{}"}}"#,
                src.uri(),
                root.join(format!("d{i}.img")).display()
            ));
            assert_eq!(st, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let peaks = watch(&d, &ids, &["ferry_memory_in_flight_bytes"]);

    for (i, id) in ids.iter().enumerate() {
        let v = d.get(id);
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_same_files(&reference, &root.join(format!("d{i}.img")));
    }
    assert!(
        peaks[0] <= budget as f64,
        "in flight {} > budget {budget}",
        peaks[0]
    );
    let m = d.metrics();
    assert_eq!(sample(&m, "ferry_memory_budget_bytes"), budget as f64);
    assert_eq!(
        sample(&m, "ferry_bytes_copied_total"),
        ((8u64 * 64) << 20) as f64
    );
    // 8 transfers with their own 16 MiB each would be allowed 128 MiB of buffers.
    let rss = peak_rss(d.pid());
    assert!(rss < 64 << 20, "peak RSS {} MiB", rss >> 20);
}

#[test]
fn connections_to_one_server_are_capped_across_transfers_and_the_wait_is_logged() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    // Slow enough that the two transfers overlap.
    let src = Peer::nbdkit(&["--filter=delay", "pattern", "size=16M", "rdelay=20ms"]);
    let reference = dir.path().join("reference.img");
    nbdcopy(&src.uri(), &reference);
    let mut d = Daemon::start(
        dir.path(),
        &root,
        &["--max-transfers", "4", "--server-connections", "2"],
    );
    let server = src.uri().split("socket=").nth(1).unwrap().to_owned();
    let in_use = format!("ferry_server_connections{{server=\"{server}\"}}");
    let limit = format!("ferry_server_connections_limit{{server=\"{server}\"}}");

    let ids: Vec<String> = (0..2)
        .map(|i| {
            let (st, v) = d.post(&format!(
                r#"{{"source":"{}","target":"{}","options":{{"connections":2}}}}"#,
                src.uri(),
                root.join(format!("d{i}.img")).display()
            ));
            assert_eq!(st, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let peaks = watch(&d, &ids, &[&in_use, &limit]);

    for (i, id) in ids.iter().enumerate() {
        assert_eq!(d.get(id)["state"], "succeeded");
        assert_same_files(&reference, &root.join(format!("d{i}.img")));
    }
    assert_eq!(peaks[1], 2.0, "the cap is shown");
    assert_eq!(peaks[0], 2.0, "in use at most");
    let out = d.stop();
    assert!(
        out.stderr
            .contains("waiting for connection slots to the source's server"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_source_that_dies_fails_its_transfer_while_the_daemon_serves_the_others() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    let mut dying = Peer::nbdkit(&["--filter=delay", "pattern", "size=64M", "rdelay=50ms"]);
    let healthy = Peer::nbdkit(&["sparse-random", "size=32M", "seed=3", "percent=40"]);
    let reference = dir.path().join("reference.img");
    nbdcopy(&healthy.uri(), &reference);
    let d = Daemon::start(dir.path(), &root, &[]);
    let post = |uri: String, name: &str| {
        let (st, v) = d.post(&format!(
            r#"{{"source":"{uri}","target":"{}","options":{{"connections":1}}}}"#,
            root.join(name).display()
        ));
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let doomed = post(dying.uri(), "doomed.img");
    d.wait_for_bytes(&doomed, 1);
    dying.kill();
    let fine = post(healthy.uri(), "fine.img");

    let v = d.wait(&doomed);
    assert_eq!(v["state"], "failed", "{v}");
    let error = v["error"].as_str().unwrap_or("");
    assert!(!error.is_empty() && !error.contains('\n'), "one line: {v}");
    assert_eq!(d.wait(&fine)["state"], "succeeded");
    assert_same_files(&reference, &root.join("fine.img"));
    assert!(
        !root.join("doomed.img").exists(),
        "a failed new target is removed"
    );
    let (st, _) = test_kit::daemon::call(&d.sock, "GET", "/healthz", None);
    assert_eq!(st, 200);
}

#[test]
fn keystone_secrets_in_the_request_reach_glance_and_are_never_shown_nor_kept() {
    use test_kit::keystone::{serve, PASSWORD};
    let data = pattern_bytes(3 << 20);
    let ks = serve(data.clone());
    let dir = tempdir();
    let root = dir.path().join("volumes");
    let state = dir.path().join("state");
    std::fs::create_dir(&root).unwrap();
    let mut d = Daemon::start(dir.path(), &root, &["--state-dir", s(&state)]);
    let target = root.join("disk.img");
    let body = |pw: &str| {
        format!(
            r#"{{"source":"glance+{ks}?image=img-ok","target":"{}","keystone":{{"username":"demo","user_domain_name":"Default","project_name":"demo","project_domain_name":"Default","region":"RegionOne"}},"secrets":{{"password":"{pw}"}}}}"#,
            target.display()
        )
    };
    let (st, v) = d.post(&body("wrong-password"));
    assert_eq!(st, 201, "{v}");
    let v = d.wait(v["id"].as_str().unwrap());
    assert_eq!(v["state"], "failed", "{v}");
    let (st, v) = d.post(&body(PASSWORD));
    assert_eq!(st, 201, "{v}");
    let v = d.wait(v["id"].as_str().unwrap());
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_file_holds(&target, &data);

    let (_, listed) = test_kit::daemon::call(&d.sock, "GET", "/v1/transfers", None);
    let (_, metrics) = test_kit::daemon::call(&d.sock, "GET", "/metrics", None);
    let out = d.stop();
    let mut kept = String::new();
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        kept.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    assert!(kept.contains("withheld"), "{kept}");
    for (what, text) in [
        ("GET", &listed),
        ("metrics", &metrics),
        ("log", &out.stderr),
        ("state", &kept),
    ] {
        assert!(
            !text.contains(PASSWORD) && !text.contains("wrong-password"),
            "a secret in the {what}: {text}"
        );
    }
}

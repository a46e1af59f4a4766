//! `importer copy` from oVirt imageio tickets served by the real ovirt-imageio daemon: a
//! file-backed ticket over HTTP and over HTTPS (trusted through `--cacert`) copies byte for byte
//! and `importer verify` agrees; an NBD-backed ticket of a sparse qcow2 copies like
//! `qemu-img convert -O raw` and downloads only the allocated data; unknown and expired tickets
//! fail in one line naming the 403; the dirty extents of a ticket on a qcow2 with a bitmap
//! are exactly the ranges written after the bitmap was added (library and `importer extents
//! --dirty`); a daemon offering its local socket is read through it after the first OPTIONS,
//! unless `--imageio-transport tcp` says otherwise or the socket cannot be reached (then the copy
//! stays on HTTPS with one warning); `--read-gaps` reads short zero runs with the data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use test_kit::imageio::{
    qcow2_create, qcow2_to_raw, qcow2_write, require_imageio, Imageio, NbdExport, Ticket,
};
use test_kit::*;
use transfer_core::http::HttpOptions;
use transfer_core::source::imageio::ImageioSource;
use transfer_core::BlockSource;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// A disk of data, repeated-byte and zero regions, with a size that is no multiple of 4096.
const DISK_SIZE: usize = 6 * MIB as usize + 3 * 4096 + 517;

/// A daemon (TLS or not) with a file-backed ticket `file-ticket` on a disk of [`DISK_SIZE`].
fn file_ticket(tls: bool, dir: &Path) -> Option<(Imageio, Vec<u8>)> {
    if !require_imageio() {
        return None;
    }
    Some(with_file_ticket(Imageio::start(tls), dir))
}

/// `daemon` with a file-backed ticket `file-ticket` on a disk of [`DISK_SIZE`].
fn with_file_ticket(daemon: Imageio, dir: &Path) -> (Imageio, Vec<u8>) {
    let disk = disk_bytes(DISK_SIZE, 21);
    let path = dir.join("disk.raw");
    write_sparse(&path, &disk);
    daemon.add_ticket(&Ticket {
        id: "file-ticket",
        size: DISK_SIZE as u64,
        url: format!("file://{}", s(&path)),
        timeout: 300,
        dirty: false,
    });
    (daemon, disk)
}

/// `importer copy [OPTIONS...] imageio+URL DIR/target.img`, asserting success.
fn copy_ok(daemon: &Imageio, dir: &Path, url: &str, options: &[&str]) -> (PathBuf, Stats) {
    let target = dir.join("target.img");
    let source = format!("imageio+{url}");
    let mut args = vec!["copy"];
    args.extend_from_slice(options);
    args.extend([source.as_str(), s(&target)]);
    let out = importer(&args);
    assert!(
        out.status.success(),
        "importer {args:?} failed ({}): {}\nimageio log: {}",
        out.status,
        out.stderr,
        daemon.logs()
    );
    let stats = out.copy_stats();
    (target, stats)
}

#[test]
fn file_ticket_over_http_copies_the_file_and_verify_agrees() {
    let dir = tempdir();
    let Some((daemon, disk)) = file_ticket(false, dir.path()) else {
        return;
    };
    let url = daemon.url("file-ticket");

    let (target, stats) = copy_ok(&daemon, dir.path(), &url, &["--connections", "4"]);
    let verify = importer(&["verify", &format!("imageio+{url}"), s(&target)]);

    assert_file_holds(&target, &disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
    assert!(
        stats.connections > 1,
        "max_readers allows parallel readers: {stats:?}"
    );
    assert!(
        verify.status.success(),
        "{}{}",
        verify.stdout,
        verify.stderr
    );
    let v: serde_json::Value = serde_json::from_str(verify.stdout.trim())
        .unwrap_or_else(|e| panic!("verify prints JSON ({e}): {:?}", verify.stdout));
    assert_eq!(v["equal"], true, "{v}");
}

#[test]
fn file_ticket_over_https_with_cacert_copies_the_file() {
    let dir = tempdir();
    let Some((daemon, disk)) = file_ticket(true, dir.path()) else {
        return;
    };
    let ca = daemon.tls().ca_cert();

    let (target, stats) = copy_ok(
        &daemon,
        dir.path(),
        &daemon.url("file-ticket"),
        &["--cacert", s(&ca), "--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
}

#[test]
fn source_kind_imageio_reads_a_plain_https_ticket_url() {
    let dir = tempdir();
    let Some((daemon, disk)) = file_ticket(true, dir.path()) else {
        return;
    };
    let target = dir.path().join("plain.img");
    let ca = daemon.tls().ca_cert();

    let out = importer(&[
        "copy",
        "--source-kind",
        "imageio",
        "--cacert",
        s(&ca),
        &daemon.url("file-ticket"),
        s(&target),
    ]);

    out.copy_stats();
    assert_file_holds(&target, &disk);
}

#[test]
fn nbd_ticket_of_a_sparse_qcow2_downloads_only_the_data() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let size = 16 * MIB;
    qcow2_create(&image, size);
    // 1.5 MiB of data in three places, 1 MiB written as zeros (allocated zero clusters); the
    // rest is unallocated.
    qcow2_write(
        &image,
        &[
            (0, MIB, 0x11),
            (5 * MIB, 256 * KIB, 0x22),
            (9 * MIB + 256 * KIB, 256 * KIB, 0x33),
        ],
    );
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -z 12M 1M", s(&image)],
    );
    let data = MIB + 512 * KIB;
    let reference = dir.path().join("reference.raw");
    qcow2_to_raw(&image, &reference);
    let export = NbdExport::qcow2(&image, None);
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "nbd-ticket",
        size,
        url: export.ticket_url(),
        timeout: 300,
        dirty: false,
    });

    let (target, stats) = copy_ok(
        &daemon,
        dir.path(),
        &daemon.url("nbd-ticket"),
        &["--connections", "4"],
    );

    assert_same_files(&target, &reference);
    assert_eq!(stats.bytes_total, size);
    assert_eq!(
        stats.bytes_data, data,
        "only the allocated data is downloaded: {stats:?}"
    );
    assert_eq!(stats.bytes_zero, size - data, "{stats:?}");
}

#[test]
fn unknown_ticket_fails_with_a_403_line() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let daemon = Imageio::start(false);
    let target = dir.path().join("target.img");

    let out = importer(&[
        "copy",
        &format!("imageio+{}", daemon.url("no-such-ticket")),
        s(&target),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    out.assert_clean_failure(&["403", "ticket"]);
    // The ticket id is a bearer capability: neither our words nor the daemon's show it.
    assert!(!out.stderr.contains("no-such-ticket"), "{}", out.stderr);
    assert!(!target.exists(), "a failed open leaves no target");
}

#[test]
fn expired_ticket_fails_with_a_403_line() {
    let dir = tempdir();
    if !require_imageio() {
        return;
    }
    let daemon = Imageio::start(false);
    let path = dir.path().join("disk.raw");
    write_file(&path, &disk_bytes(MIB as usize, 3));
    daemon.add_ticket(&Ticket {
        id: "short-ticket",
        size: MIB,
        url: format!("file://{}", s(&path)),
        timeout: 1,
        dirty: false,
    });
    std::thread::sleep(Duration::from_millis(2500));
    let target = dir.path().join("target.img");

    let out = importer(&[
        "copy",
        &format!("imageio+{}", daemon.url("short-ticket")),
        s(&target),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    out.assert_clean_failure(&["403", "ticket"]);
    assert!(!out.stderr.contains("short-ticket"), "{}", out.stderr);
}

#[test]
fn dirty_extents_are_the_ranges_written_after_the_bitmap() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let size = 8 * MIB;
    qcow2_create(&image, size);
    qcow2_write(&image, &[(0, 2 * MIB, 0x44)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b1"]);
    // Two adjacent writes (merged), one on its own, one of zeros: all dirty; 64 KiB aligned,
    // the bitmap's granularity.
    qcow2_write(
        &image,
        &[
            (MIB, 64 * KIB, 0x55),
            (MIB + 64 * KIB, 128 * KIB, 0x56),
            (4 * MIB + 192 * KIB, 320 * KIB, 0x66),
        ],
    );
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -z 7M 64K", s(&image)],
    );
    let export = NbdExport::qcow2(&image, Some("b1"));
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "dirty-ticket",
        size,
        url: export.ticket_url(),
        timeout: 300,
        dirty: true,
    });
    let opts = HttpOptions::default();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");

    let (src_size, dirty) = rt.block_on(async {
        let src = ImageioSource::open_uri(&daemon.url("dirty-ticket"), &opts, 4)
            .await
            .unwrap_or_else(|e| panic!("opening the ticket: {e}\n{}", daemon.logs()));
        let dirty = src
            .dirty_extents()
            .await
            .unwrap_or_else(|e| panic!("dirty extents: {e}\n{}", daemon.logs()));
        (src.size(), dirty)
    });

    assert_eq!(src_size, size);
    assert_eq!(
        dirty,
        vec![
            (MIB, 192 * KIB),
            (4 * MIB + 192 * KIB, 320 * KIB),
            (7 * MIB, 64 * KIB),
        ]
    );
}

/// The clients of the connections the daemon opened (`127.0.0.1` for TCP), from its
/// `OPEN connection=N client=X` lines of the daemon's `log`.
fn connection_clients(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("] OPEN connection=").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once("client=").map(|(_, c)| c.trim().to_owned()))
        .collect()
}

#[test]
fn ticket_on_this_host_is_read_through_the_local_socket() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let (daemon, disk) = with_file_ticket(Imageio::start_local(true), dir.path());
    let ca = daemon.tls().ca_cert();

    let (target, stats) = copy_ok(
        &daemon,
        dir.path(),
        &daemon.url("file-ticket"),
        &["--cacert", s(&ca), "--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
    // The first OPTIONS comes over TCP (it tells of the socket); every connection after it
    // (OPTIONS again, extents, the reads) is local.
    let log = daemon.logs();
    let first = log
        .find("[127.0.0.1] OPTIONS transfer=")
        .unwrap_or_else(|| panic!("an OPTIONS over TCP: {log}"));
    let later = connection_clients(&log[first..]);
    assert!(!later.is_empty(), "reads open connections: {log}");
    assert!(
        later.iter().all(|c| c == "local"),
        "no connection after the first OPTIONS is TCP: {later:?}"
    );
}

#[test]
fn an_offered_socket_that_cannot_be_reached_leaves_the_copy_on_https_with_a_warning() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let (daemon, disk) = with_file_ticket(Imageio::start_local_path(true), dir.path());
    // The daemon keeps offering the socket it no longer has, as a host's socket looks to a pod
    // that cannot see it.
    std::fs::remove_file(daemon.local_socket_path()).expect("removing the daemon's socket");
    let ca = daemon.tls().ca_cert();
    let target = dir.path().join("target.img");

    let out = importer(&[
        "copy",
        "--cacert",
        s(&ca),
        &format!("imageio+{}", daemon.url("file-ticket")),
        s(&target),
    ]);

    assert!(out.status.success(), "{}", out.stderr);
    assert_file_holds(&target, &disk);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one warning: {lines:?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("staying on HTTP(S)"),
        "{lines:?}"
    );
    let clients = connection_clients(&daemon.logs());
    assert!(
        clients.iter().all(|c| c == "127.0.0.1"),
        "every connection is TCP: {clients:?}"
    );
}

#[test]
fn transport_tcp_keeps_reads_on_https_though_a_local_socket_is_offered() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let (daemon, disk) = with_file_ticket(Imageio::start_local(true), dir.path());
    let ca = daemon.tls().ca_cert();

    let (target, _) = copy_ok(
        &daemon,
        dir.path(),
        &daemon.url("file-ticket"),
        &["--cacert", s(&ca), "--imageio-transport", "tcp"],
    );

    assert_file_holds(&target, &disk);
    let clients = connection_clients(&daemon.logs());
    assert!(
        clients.len() >= 3 && clients.iter().all(|c| c == "127.0.0.1"),
        "every connection is TCP: {clients:?}"
    );
}

#[test]
fn extents_command_prints_the_zero_and_data_ranges_of_an_nbd_ticket() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    qcow2_create(&image, 4 * MIB);
    qcow2_write(&image, &[(MIB, MIB, 0x77)]);
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -z 3M 512K", s(&image)],
    );
    let export = NbdExport::qcow2(&image, None);
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "map-ticket",
        size: 4 * MIB,
        url: export.ticket_url(),
        timeout: 300,
        dirty: false,
    });

    let out = importer(&["extents", &format!("imageio+{}", daemon.url("map-ticket"))]);

    assert!(out.status.success(), "{}", out.stderr);
    let map: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("extents prints JSON ({e}): {:?}", out.stdout));
    // imageio 2.5's nbd backend reports unallocated and zero clusters alike as `zero` (no
    // `hole`); adjacent zero ranges are merged.
    assert_eq!(
        map,
        serde_json::json!([
            {"start": 0, "length": MIB, "kind": "zero"},
            {"start": MIB, "length": MIB, "kind": "data"},
            {"start": 2 * MIB, "length": 2 * MIB, "kind": "zero"},
        ])
    );
}

#[test]
fn extents_dirty_command_prints_the_changed_ranges() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    qcow2_create(&image, 4 * MIB);
    qcow2_write(&image, &[(0, 4 * MIB, 0x10)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b2"]);
    qcow2_write(&image, &[(MIB, 128 * KIB, 0x20), (3 * MIB, 64 * KIB, 0x30)]);
    let export = NbdExport::qcow2(&image, Some("b2"));
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "delta-ticket",
        size: 4 * MIB,
        url: export.ticket_url(),
        timeout: 300,
        dirty: true,
    });

    let out = importer(&[
        "extents",
        "--dirty",
        &format!("imageio+{}", daemon.url("delta-ticket")),
    ]);

    assert!(out.status.success(), "{}", out.stderr);
    let delta: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("extents --dirty prints JSON ({e}): {:?}", out.stdout));
    assert_eq!(
        delta,
        serde_json::json!([
            {"start": MIB, "length": 128 * KIB},
            {"start": 3 * MIB, "length": 64 * KIB},
        ])
    );
}

#[test]
fn extents_dirty_of_a_plain_http_url_is_a_clean_error() {
    let out = importer(&["extents", "--dirty", "http://127.0.0.1:9/disk.img"]);

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    out.assert_clean_failure(&["dirty", "imageio"]);
}

/// MiB the daemon read from its backend for clients, from the `[read N ops, T s, X MiB, ...]`
/// parts of its `CLOSE connection` log lines.
fn daemon_read_mib(log: &str) -> f64 {
    log.lines()
        .filter(|l| l.contains("] CLOSE connection="))
        .filter_map(|l| l.split_once("[read ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(", ").nth(2))
        .filter_map(|amount| {
            // The daemon writes the amount in the largest unit that keeps it at 1 or more.
            let (n, unit) = amount.split_once(' ')?;
            let scale = match unit {
                "bytes" => 1.0 / 1048576.0,
                "KiB" => 1.0 / 1024.0,
                "MiB" => 1.0,
                "GiB" => 1024.0,
                _ => return None,
            };
            Some(n.parse::<f64>().ok()? * scale)
        })
        .sum()
}

/// [`daemon_read_mib`] once the daemon has logged at least `at_least` MiB (it logs a connection
/// when the connection closes, which may be a moment after the client exited), or after 10 s.
fn settled_read_mib(daemon: &Imageio, at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon_read_mib(&daemon.logs()) < at_least - 0.01 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Anything more that is still on its way shows too.
    std::thread::sleep(Duration::from_millis(300));
    daemon_read_mib(&daemon.logs())
}

/// The raw reference of the qcow2 `image`, its NBD export, a daemon with a ticket `id` on it for
/// each of `ids`, and an empty output directory per ticket.
fn qcow2_on_two_tickets(
    dir: &Path,
    image: &Path,
    size: u64,
    ids: [&'static str; 2],
) -> (PathBuf, NbdExport, Imageio, [PathBuf; 2]) {
    let reference = dir.join("reference.raw");
    qcow2_to_raw(image, &reference);
    let export = NbdExport::qcow2(image, None);
    let daemon = Imageio::start(false);
    let outs = ids.map(|id| {
        daemon.add_ticket(&Ticket {
            id,
            size,
            url: export.ticket_url(),
            timeout: 300,
            dirty: false,
        });
        let out = dir.join(id);
        std::fs::create_dir_all(&out).expect("mkdir");
        out
    });
    (reference, export, daemon, outs)
}

#[test]
fn read_gaps_reads_short_zero_runs_with_the_data_and_keeps_the_target_sparse() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let size = 16 * MIB;
    qcow2_create(&image, size);
    // 1.5 MiB of data with gaps of 1 MiB and 4 MiB between, then 6 MiB of nothing.
    qcow2_write(
        &image,
        &[
            (0, MIB, 0x11),
            (2 * MIB, 256 * KIB, 0x22),
            (6 * MIB + 256 * KIB, 256 * KIB, 0x33),
        ],
    );
    let (reference, _export, daemon, [skipped_dir, bridged_dir]) =
        qcow2_on_two_tickets(dir.path(), &image, size, ["skip", "bridge"]);

    let (skipped, _) = copy_ok(&daemon, &skipped_dir, &daemon.url("skip"), &[]);
    let after_skip = settled_read_mib(&daemon, 1.5);
    let (bridged, stats) = copy_ok(
        &daemon,
        &bridged_dir,
        &daemon.url("bridge"),
        &["--read-gaps", "2M", "--connections", "1"],
    );
    let after_bridge = settled_read_mib(&daemon, after_skip + 2.5) - after_skip;

    assert_same_files(&skipped, &reference);
    assert_same_files(&bridged, &reference);
    let closes = || {
        daemon
            .logs()
            .lines()
            .filter(|l| l.contains("CLOSE connection="))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        (after_skip - 1.5).abs() < 0.01,
        "gaps of 1 MiB and more are never read by default: {after_skip} MiB; the daemon logged:\n{}",
        closes()
    );
    assert!(
        (after_bridge - 2.5).abs() < 0.01,
        "the 1 MiB gap is read with the data, the 4 MiB one is not: {after_bridge} MiB; the daemon logged:\n{}",
        closes()
    );
    assert_eq!(
        stats.bytes_data,
        MIB + 512 * KIB,
        "zeros read are not data: {stats:?}"
    );
    let allocated = allocated_bytes(&bridged);
    assert!(
        allocated <= 2 * MIB,
        "the zeros read are not written: {allocated} bytes allocated"
    );
}

/// With no flag, a fragmented work range (data runs shorter than a request on average) is read
/// with its gaps under 1 MiB, while a range of large extents reads no zeros at all; `--read-gaps
/// 0` reads only the data.
#[test]
fn gaps_are_bridged_by_themselves_only_where_the_extents_are_fragmented() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let size = 160 * MIB;
    qcow2_create(&image, size);
    // First 64 MiB work range: 32 runs of 64 KiB, 128 KiB apart. Second: 8 MiB of data, a
    // 512 KiB gap, 8 MiB of data.
    let mut writes: Vec<(u64, u64, u8)> = (0..32)
        .map(|i| (i * 192 * KIB, 64 * KIB, 0x40 + i as u8))
        .collect();
    writes.push((64 * MIB, 8 * MIB, 0x71));
    writes.push((72 * MIB + 512 * KIB, 8 * MIB, 0x72));
    qcow2_write(&image, &writes);
    let (reference, _export, daemon, [auto_dir, never_dir]) =
        qcow2_on_two_tickets(dir.path(), &image, size, ["auto", "never"]);

    // 2 MiB of data and 31 gaps of 128 KiB, then 16 MiB of data without its 512 KiB gap.
    let expected_auto = 2.0 + 31.0 * 0.125 + 16.0;
    let (auto, stats) = copy_ok(&daemon, &auto_dir, &daemon.url("auto"), &[]);
    let after_auto = settled_read_mib(&daemon, expected_auto);
    let (never, _) = copy_ok(
        &daemon,
        &never_dir,
        &daemon.url("never"),
        &["--read-gaps", "0"],
    );
    let after_never = settled_read_mib(&daemon, after_auto + 18.0) - after_auto;

    assert_same_files(&auto, &reference);
    assert_same_files(&never, &reference);
    assert!(
        // The daemon rounds each connection's figure to 0.01 of its unit.
        (after_auto - expected_auto).abs() < 0.05,
        "the fragmented range is read with its short gaps, the large extents without: {after_auto} MiB read, {expected_auto} expected"
    );
    assert!(
        (after_never - 18.0).abs() < 0.05,
        "--read-gaps 0 reads the data only: {after_never} MiB; the daemon logged:\n{}",
        daemon
            .logs()
            .lines()
            .filter(|l| l.contains("CLOSE connection="))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        stats.bytes_data,
        18 * MIB,
        "zeros read are not data: {stats:?}"
    );
}

/// The engine pauses a transfer whose ticket has been idle (the daemon's `idle_time`) longer
/// than its inactivity timeout; the oVirt importers' keep-alive touches the ticket while the
/// copy is busy elsewhere, and stops touching it once dropped.
#[test]
fn the_transfer_keep_alive_keeps_an_idle_ticket_fresh_until_dropped() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let file = dir.path().join("disk.raw");
    write_file(&file, &[0u8; 4096]);
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "idle",
        size: 4096,
        url: format!("file://{}", s(&file)),
        timeout: 300,
        dirty: false,
    });
    let idle = || daemon.ticket_info("idle")["idle_time"].as_f64().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let http = transfer_core::http::HttpClient::new(&HttpOptions::default()).unwrap();
    let url = url::Url::parse(&daemon.url("idle")).unwrap();

    let keep = ferry_pod::ovirt::KeepAlive::start(http, url, Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(3500));
    let kept = idle();
    drop(keep);
    std::thread::sleep(Duration::from_millis(3500));
    let left = idle();

    assert!(kept <= 1.0, "idle {kept} s while kept alive");
    assert!(left >= 2.0, "idle {left} s after the keep-alive stopped");
}

//! `vddk_sys`'s safe layer (`session`, `disk`) over the fake library: asynchronous reads
//! complete with the right bytes, a completion that panics does not take the other reads'
//! buffers down with it, synchronous reads and allocated blocks work, close reports per-call
//! statistics, and after `exit` no connection can start. One test: the session is per process.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use vddk_sys::disk::{Disk, DiskSpec, Password, ReadBuf, SECTOR};
use vddk_sys::session;

#[test]
fn the_safe_layer_reads_queries_survives_a_panicking_completion_and_exits_once() {
    let libdir = common::install("libvddk_fake.so", 8);
    let root = tempfile::tempdir().unwrap();
    let bytes = common::pattern(4 << 20, 7);
    let file = root.path().join("ds1/vm-3/vm-3.vmdk");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    // The fake reads its knobs at InitEx, just below.
    std::env::set_var("FAKE_VDDK_ROOT", root.path());
    std::env::set_var("FAKE_VDDK_LATENCY_US", "20000");
    let vddk = session::init(libdir.path(), None).expect("init");
    assert_eq!(vddk.version(), Some("8.0.3"), "parsed from VDDK's banner");
    let spec = DiskSpec {
        server: "esx.example".into(),
        port: 443,
        nfc_port: 902,
        user: "root".into(),
        password: Password::new(common::PASSWORD),
        thumbprint: None,
        vm: "moref=vm-3".into(),
        snapshot: None,
        transports: Some("nbd".into()),
        path: "[ds1] vm-3/vm-3.vmdk".into(),
        timeout: Duration::from_secs(60),
    };
    let disk = Disk::open(vddk, &spec).expect("open");
    assert_eq!(disk.info().capacity * SECTOR, bytes.len() as u64);
    assert_eq!(disk.info().transport, "nbd");

    // Four reads in flight; the first one's completion panics (while the others are still
    // being filled, given the latency).
    let (tx, rx) = mpsc::channel();
    disk.read_async(0, whole(1 << 20), |_| {
        panic!("a caller's completion panics")
    });
    for i in 1..4u64 {
        let tx = tx.clone();
        disk.read_async(i * 2048, whole(1 << 20), move |r| {
            let _ = tx.send((i, r));
        });
    }
    for _ in 1..4 {
        let (i, r) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a completion");
        let at = (i << 20) as usize;
        assert!(
            r.expect("read").bytes == bytes[at..at + (1 << 20)],
            "bytes of read {i}"
        );
    }

    let mut buf = vec![0u8; 64 << 10];
    disk.read(8, &mut buf).expect("synchronous read");
    assert_eq!(buf, bytes[4096..4096 + (64 << 10)]);
    let (qtx, qrx) = mpsc::channel();
    disk.query_allocated(0, 8192, 128, move |r| {
        let _ = qtx.send(r);
    });
    let blocks = qrx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(
        blocks,
        vec![(0, 8192)],
        "a dense file is allocated throughout"
    );
    let odd = unaligned_read_error(&disk);
    assert!(odd.contains("whole number of sectors"), "{odd}");

    let stats = disk.close();
    let read_async = stats
        .iter()
        .find(|(c, _)| *c == "ReadAsync")
        .expect("ReadAsync stats");
    assert_eq!(read_async.1.calls, 4);
    assert_eq!(read_async.1.bytes, 4 << 20);
    assert!(stats.iter().any(|(c, s)| *c == "Read" && s.calls == 1));
    assert!(stats.iter().any(|(c, _)| *c == "Disconnect"));

    session::exit(Duration::from_secs(5));
    let e = Disk::open(vddk, &spec)
        .err()
        .expect("no connection after Exit");
    assert!(e.to_string().contains("shut down"), "{e}");
    let e = session::init(libdir.path(), None)
        .err()
        .expect("no second session");
    assert!(e.to_string().contains("shut down"), "{e}");
}

/// The error of a read that is not whole sectors (delivered through the completion).
fn unaligned_read_error(disk: &Disk) -> String {
    let (tx, rx) = mpsc::channel();
    disk.read_async(0, whole(1000), move |r| {
        let _ = tx.send(r.map(|_| ()).unwrap_err().to_string());
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

/// A buffer of `len` bytes, all to be read into.
fn whole(len: usize) -> ReadBuf {
    ReadBuf {
        bytes: vec![0u8; len],
        range: 0..len,
    }
}

//! The fake VDDK through `vddk_sys::load`, as ferry loads the real one: its symbols, the
//! version line, connecting, opening, reading (sync and async), allocation queries and the call
//! log. Every test shares one session (knobs are read at InitEx) and uses its own disk,
//! server name or connection, so they run in parallel.

mod common;

use std::sync::OnceLock;

use common::{built, install, pattern, warnings, Completion, Session, INFO, PASSWORD};
use serde_json::json;
use vddk_sys::load::load;
use vddk_sys::{VixDiskLibBlockList, VixDiskLibInfo};

/// The server certificate's thumbprint the session expects.
const THUMBPRINT: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01";

fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        Session::start(&[
            ("FAKE_VDDK_PASSWORD", PASSWORD),
            ("FAKE_VDDK_THUMBPRINT", THUMBPRINT),
            ("FAKE_VDDK_LATENCY_US", "200"),
            ("FAKE_VDDK_BANDWIDTH", "1000000000"),
        ])
    })
}

/// The disk "[ds1] NAME/NAME.vmdk" holding `bytes`, opened through a connection of its own:
/// its path, the connection and the handle.
fn opened(
    name: &str,
    bytes: &[u8],
) -> (
    String,
    vddk_sys::VixDiskLibConnection,
    vddk_sys::VixDiskLibHandle,
) {
    let thumbprint = THUMBPRINT.to_lowercase();
    session().opened(name, bytes, Some(&thumbprint))
}

/// Connects to `server` with the right password and thumbprint.
fn connect(server: &str) -> vddk_sys::VixDiskLibConnection {
    let thumbprint = THUMBPRINT.to_lowercase();
    session()
        .connect(server, PASSWORD, Some(&thumbprint), None, None)
        .expect("ConnectEx")
}

#[test]
fn loads_as_vddk_8_with_every_optional_symbol() {
    let dir = install("libvddk_fake.so", 8);

    let vddk = load(dir.path()).expect("load");

    assert_eq!(vddk.major, 8);
    assert_eq!(vddk.missing_optional(), Vec::<&str>::new());
}

#[test]
fn the_65_fake_lacks_exactly_the_four_symbols_vddk_67_added() {
    let dir = install("libvddk_fake_65.so", 6);

    let vddk = load(dir.path()).expect("load");

    assert_eq!(vddk.major, 6);
    assert_eq!(
        vddk.missing_optional(),
        [
            "VixDiskLib_QueryAllocatedBlocks",
            "VixDiskLib_FreeBlockList",
            "VixDiskLib_AllocateConnectParams",
            "VixDiskLib_FreeConnectParams",
        ]
    );
    assert!(built("libvddk_fake.so") != built("libvddk_fake_65.so"));
}

#[test]
fn init_ex_logs_the_version_line_through_the_log_callback() {
    session();

    let info = INFO.lock().expect("lines").clone();

    assert!(
        info.contains(&"VMware VixDiskLib (8.0.3) Release build-24114575\n".to_owned()),
        "{info:?}"
    );
}

#[test]
fn a_wrong_password_fails_with_35_and_warns_without_the_password() {
    let s = session();

    let r = s.connect("pw.example", "not-it-123", Some(THUMBPRINT), None, None);

    assert_eq!(r.err(), Some(35));
    let w = warnings();
    assert!(
        w.contains(&"Cannot connect to host pw.example: incorrect user name or password\n".into()),
        "{w:?}"
    );
    assert!(!w.iter().any(|l| l.contains("not-it-123")), "{w:?}");
}

#[test]
fn a_thumbprint_mismatch_fails_and_names_both_thumbprints() {
    let s = session();

    let r = s.connect("tp.example", PASSWORD, Some("00:11"), None, None);

    assert_eq!(r.err(), Some(1));
    let expected =
        format!("SSL thumbprint mismatch for tp.example: expected {THUMBPRINT}, got 00:11\n");
    assert!(warnings().contains(&expected), "{:?}", warnings());
}

#[test]
fn open_maps_the_datastore_path_and_get_info_describes_the_disk() {
    let s = session();
    let (_, conn, handle) = opened("info", &pattern(1024 * 1024 + 100, 1));
    let mut info: *mut VixDiskLibInfo = std::ptr::null_mut();

    // SAFETY: `handle` is live and `info` a valid place for the result.
    let r = unsafe { s.vddk.lib.VixDiskLib_GetInfo(handle, &mut info) };

    assert_eq!(r, 0);
    // SAFETY: GetInfo succeeded, so `info` points to a description until FreeInfo.
    let i = unsafe { &*info };
    assert_eq!(i.capacity, 2049, "1 MiB + 100 bytes, rounded up to sectors");
    assert_eq!(
        (i.numLinks, i.logicalSectorSize, i.physicalSectorSize),
        (1, 512, 512)
    );
    assert!(i.parentFileNameHint.is_null());
    // SAFETY: the uuid is a NUL-terminated string owned by `info`.
    let uuid = unsafe { std::ffi::CStr::from_ptr(i.uuid) }
        .to_string_lossy()
        .into_owned();
    assert!(uuid.starts_with("60 00 c2 "), "{uuid}");
    // SAFETY: `info` came from GetInfo and is freed once.
    unsafe { s.vddk.lib.VixDiskLib_FreeInfo(info) };
    s.close(handle, conn);
}

#[test]
fn malformed_and_missing_paths_fail_with_3_and_4() {
    let s = session();
    let conn = connect("paths.example");

    let malformed = s.open(conn, "ds1/nothing.vmdk");
    let escaping = s.open(conn, "[ds1] ../../etc/passwd");
    let missing = s.open(conn, "[ds1] nothing/nothing.vmdk");

    assert_eq!(
        (malformed.err(), escaping.err(), missing.err()),
        (Some(3), Some(3), Some(4))
    );
    // SAFETY: `conn` is live and not used afterwards.
    assert_eq!(unsafe { s.vddk.lib.VixDiskLib_Disconnect(conn) }, 0);
}

#[test]
fn read_returns_the_file_bytes_and_zeros_past_its_end() {
    let s = session();
    let bytes = pattern(1024 * 1024 + 100, 2);
    let (_, conn, handle) = opened("sync", &bytes);

    let all = s.read(handle, 0, 2049).expect("Read");
    let past = s.read(handle, 2049, 1);

    let mut expected = bytes.clone();
    expected.resize(2049 * 512, 0);
    assert!(all == expected, "the bytes of the file, then zeros");
    assert_eq!(past.err(), Some(3));
    s.close(handle, conn);
}

#[test]
fn read_async_completes_on_the_completion_thread_with_the_file_bytes() {
    let s = session();
    let bytes = pattern(1024 * 1024, 3);
    let (_, conn, handle) = opened("async", &bytes);
    let mut bufs = vec![vec![0u8; 65536]; 16];
    let completions: Vec<Completion> = (0..16).map(|_| Completion::default()).collect();

    let submitted: Vec<u64> = bufs
        .iter_mut()
        .zip(&completions)
        .enumerate()
        // SAFETY: `buf` and `c` outlive the read: Wait returns after every callback.
        .map(|(i, (buf, c))| unsafe { s.read_async(handle, i as u64 * 128, buf, c) })
        .collect();
    // SAFETY: `handle` is live.
    let waited = unsafe { s.vddk.lib.VixDiskLib_Wait(handle) };

    assert_eq!(submitted, vec![25000; 16]);
    assert_eq!(waited, 0);
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    for c in &completions {
        let (result, tid) = c.done.lock().expect("completion").expect("called back");
        assert_eq!(result, 0);
        assert_ne!(tid, me, "the callback runs on the completion thread");
    }
    assert!(bufs.concat() == bytes, "the bytes of the file");
    s.close(handle, conn);
}

#[test]
fn read_async_past_the_end_fails_at_once_without_a_callback() {
    let s = session();
    let (_, conn, handle) = opened("asyncend", &pattern(65536, 4));
    let mut buf = vec![0u8; 65536];
    let c = Completion::default();

    // SAFETY: the range is refused before anything is queued; `buf` and `c` outlive the call.
    let r = unsafe { s.read_async(handle, 64, &mut buf, &c) };
    s.close(handle, conn);

    assert_eq!(r, 3);
    assert!(c.done.lock().expect("completion").is_none());
}

/// 1 MiB with data in its first and ninth 64 KiB.
fn holey_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; 1024 * 1024];
    bytes[..65536].copy_from_slice(&pattern(65536, 5));
    bytes[8 * 65536..9 * 65536].copy_from_slice(&pattern(65536, 6));
    bytes
}

/// QueryAllocatedBlocks' answer as (offset, length) sectors, or its error.
fn query(
    s: &Session,
    handle: vddk_sys::VixDiskLibHandle,
    start: u64,
    count: u64,
    chunk: u64,
) -> Result<Vec<(u64, u64)>, u64> {
    let mut list: *mut VixDiskLibBlockList = std::ptr::null_mut();
    // SAFETY: `handle` is live and `list` a valid place for the result.
    let r = unsafe {
        s.vddk
            .lib
            .VixDiskLib_QueryAllocatedBlocks(handle, start, count, chunk, &mut list)
    };
    if r != 0 {
        return Err(r);
    }
    // SAFETY: the list holds `numBlocks` blocks from `blocks` until FreeBlockList.
    let blocks = unsafe {
        let first = std::ptr::addr_of!((*list).blocks).cast::<vddk_sys::VixDiskLibBlock>();
        std::slice::from_raw_parts(first, (*list).numBlocks as usize)
            .iter()
            .map(|b| (b.offset, b.length))
            .collect()
    };
    // SAFETY: `list` came from QueryAllocatedBlocks and is freed once.
    assert_eq!(unsafe { s.vddk.lib.VixDiskLib_FreeBlockList(list) }, 0);
    Ok(blocks)
}

#[test]
fn query_allocated_blocks_reports_the_chunks_around_the_holes() {
    let s = session();
    let (_, conn, handle) = opened("holes", &holey_bytes());

    let fine = query(s, handle, 0, 2048, 128);
    let tail = query(s, handle, 1024, 1024, 128);
    let coarse = query(s, handle, 0, 2048, 1024);

    assert_eq!(fine, Ok(vec![(0, 128), (1024, 128)]));
    assert_eq!(tail, Ok(vec![(1024, 128)]));
    assert_eq!(coarse, Ok(vec![(0, 2048)]));
    s.close(handle, conn);
}

#[test]
fn query_allocated_blocks_rejects_what_vddk_rejects_with_3() {
    let s = session();
    let (_, conn, handle) = opened("rules", &holey_bytes());

    let refused = [
        query(s, handle, 64, 1024, 128),
        query(s, handle, 0, 1000, 128),
        query(s, handle, 0, 2048, 64),
        query(s, handle, 0, 1536, 192),
        query(s, handle, 1024, 2048, 128),
    ];

    assert_eq!(refused.map(|r| r.err()), [Some(3); 5]);
    s.close(handle, conn);
}

#[test]
fn a_snapshot_ref_serves_the_snapshot_file() {
    let s = session();
    let path = s.disk("snap/snap.vmdk", &pattern(65536, 7));
    let snapshot = pattern(65536, 8);
    std::fs::write(s.root.join("ds1/snap/snap.vmdk@snapshot-9"), &snapshot).expect("write");
    let tp = Some(THUMBPRINT);
    let conn = s
        .connect("snap.example", PASSWORD, tp, Some("snapshot-9"), None)
        .expect("ConnectEx");
    let handle = s.open(conn, &path).expect("Open");

    let read = s.read(handle, 0, 128).expect("Read");

    assert!(read == snapshot, "the snapshot's bytes");
    s.close(handle, conn);
}

#[test]
fn the_transport_mode_is_the_first_requested_one_the_host_offers() {
    let s = session();
    let path = s.disk("modes/modes.vmdk", &pattern(65536, 9));
    let tp = Some(THUMBPRINT);
    let conn = s
        .connect("modes.example", PASSWORD, tp, None, Some("rdma:nbdssl:nbd"))
        .expect("ConnectEx");
    let none = s
        .connect("modes.example", PASSWORD, tp, None, Some("rdma"))
        .expect("ConnectEx");
    let handle = s.open(conn, &path).expect("Open");

    // SAFETY: `handle` is live; the mode string is the handle's.
    let mode = unsafe { std::ffi::CStr::from_ptr(s.vddk.lib.VixDiskLib_GetTransportMode(handle)) };
    // SAFETY: the list is a static string of the library.
    let offered = unsafe { std::ffi::CStr::from_ptr(s.vddk.lib.VixDiskLib_ListTransportModes()) };
    let refused = s.open(none, &path);

    assert_eq!(mode.to_str(), Ok("nbdssl"));
    assert_eq!(offered.to_str(), Ok("file:san:hotadd:nbdssl:nbd"));
    assert_eq!(refused.err(), Some(1));
    let expected = "none of the requested transport modes (rdma) is available\n".to_owned();
    assert!(warnings().contains(&expected), "{:?}", warnings());
    s.close(handle, conn);
    // SAFETY: `none` is live and not used afterwards.
    assert_eq!(unsafe { s.vddk.lib.VixDiskLib_Disconnect(none) }, 0);
}

#[test]
fn error_texts_name_the_codes() {
    let s = session();
    let text = |code| {
        // SAFETY: the text is malloc'ed by the library, read, then freed once.
        unsafe {
            let p = s.vddk.lib.VixDiskLib_GetErrorText(code, std::ptr::null());
            let t = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
            s.vddk.lib.VixDiskLib_FreeErrorText(p);
            t
        }
    };

    let texts = [1, 3, 4, 6, 35, 99].map(text);

    assert_eq!(
        texts,
        [
            "Unknown error",
            "One of the parameters was invalid",
            "The file was not found",
            "The operation is not supported",
            "Authentication failure",
            "Unknown error",
        ]
    );
}

#[test]
fn allocate_connect_params_returns_zeroed_params() {
    let s = session();

    // SAFETY: the params are read, then freed once.
    let (vmx, cred) = unsafe {
        let p = s.vddk.lib.VixDiskLib_AllocateConnectParams();
        let fields = ((*p).vmxSpec.is_null(), (*p).credType);
        s.vddk.lib.VixDiskLib_FreeConnectParams(p);
        fields
    };

    assert_eq!((vmx, cred), (true, 0));
}

#[test]
fn close_waits_for_outstanding_reads() {
    let s = session();
    let (path, conn, handle) = opened("close", &pattern(1024 * 1024, 10));
    let mut bufs = vec![vec![0u8; 65536]; 16];
    let completions: Vec<Completion> = (0..16).map(|_| Completion::default()).collect();

    for (i, (buf, c)) in bufs.iter_mut().zip(&completions).enumerate() {
        // SAFETY: `buf` and `c` outlive the read: Close returns after every callback.
        let r = unsafe { s.read_async(handle, i as u64 * 128, buf, c) };
        assert_eq!(r, 25000);
    }
    s.close(handle, conn);

    let done = completions
        .iter()
        .filter(|c| c.done.lock().expect("c").is_some())
        .count();
    assert_eq!(done, 16);
    let close = s
        .calls()
        .into_iter()
        .find(|c| c["call"] == "Close" && c["disk"] == path.as_str());
    assert!(close.expect("a Close line")["pending"].is_u64());
}

#[test]
fn the_call_log_records_each_call_and_never_the_password() {
    let s = session();
    let good = connect("log.example");
    let bad = s.connect("log.example", "wrong-pw-789", Some(THUMBPRINT), None, None);

    let calls = s.calls();
    let text = std::fs::read_to_string(&s.log).expect("the call log");

    assert_eq!(bad.err(), Some(35));
    let logins: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c["call"] == "ConnectEx" && c["serverName"] == "log.example")
        .collect();
    let verdicts: Vec<&str> = logins
        .iter()
        .filter_map(|c| c["password"].as_str())
        .collect();
    assert_eq!(verdicts, ["ok", "wrong"]);
    let fields = [
        "userName",
        "credType",
        "port",
        "nfcHostPort",
        "readOnly",
        "result",
    ];
    assert_eq!(
        fields.map(|f| logins[0][f].clone()),
        [
            json!("admin"),
            json!(1),
            json!(443),
            json!(902),
            json!(1),
            json!(0)
        ]
    );
    let init = calls
        .iter()
        .find(|c| c["call"] == "InitEx")
        .expect("an InitEx line");
    assert_eq!(
        (init["major"].as_u64(), init["result"].as_u64()),
        (Some(8), Some(0))
    );
    assert!(init["thread"].is_i64());
    assert!(!text.contains(PASSWORD) && !text.contains("wrong-pw-789"));
    // SAFETY: `good` is live and not used afterwards.
    assert_eq!(unsafe { s.vddk.lib.VixDiskLib_Disconnect(good) }, 0);
}

//! Injected failures (`FAKE_VDDK_FAIL_READ`, `FAKE_VDDK_FAIL`), in their own test process: the
//! read counter is process-wide, so only one test here reads.

mod common;

use std::sync::OnceLock;

use common::{pattern, Completion, Session, PASSWORD};

fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        Session::start(&[
            ("FAKE_VDDK_PASSWORD", PASSWORD),
            ("FAKE_VDDK_FAIL_READ", "2:4"),
            ("FAKE_VDDK_FAIL", "Flush:6,GetInfo"),
        ])
    })
}

#[test]
fn the_nth_read_fails_with_its_code_and_async_failures_come_through_the_callback() {
    let s = session();
    let (_, conn, handle) = s.opened("reads", &pattern(65536, 1), None);
    let mut buf = vec![0u8; 65536];
    let c = Completion::default();

    let first = s.read(handle, 0, 128);
    // SAFETY: `buf` and `c` outlive the read: Wait returns after its callback.
    let second = unsafe { s.read_async(handle, 0, &mut buf, &c) };
    // SAFETY: `handle` is live.
    assert_eq!(unsafe { s.vddk.lib.VixDiskLib_Wait(handle) }, 0);
    let third = s.read(handle, 0, 128);

    assert!(first.is_ok());
    assert_eq!(second, 25000, "ReadAsync itself succeeds");
    assert_eq!(c.done.lock().expect("c").map(|(r, _)| r), Some(4));
    assert!(third.is_ok());
    let done: Vec<u64> = s
        .calls()
        .iter()
        .filter(|c| c["call"] == "ReadAsyncDone")
        .map(|c| c["result"].as_u64().expect("a result"))
        .collect();
    assert_eq!(done, [4]);
    s.close(handle, conn);
}

#[test]
fn named_calls_fail_with_their_codes() {
    let s = session();
    let (_, conn, handle) = s.opened("calls", &pattern(65536, 2), None);
    let mut info = std::ptr::null_mut();

    // SAFETY: `handle` is live, `info` a valid place for a result.
    let (flush, get_info) = unsafe {
        (
            s.vddk.lib.VixDiskLib_Flush(handle),
            s.vddk.lib.VixDiskLib_GetInfo(handle, &mut info),
        )
    };

    assert_eq!((flush, get_info), (6, 1));
    assert!(info.is_null());
    s.close(handle, conn);
}

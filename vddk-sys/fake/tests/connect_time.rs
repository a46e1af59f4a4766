//! `FAKE_VDDK_CONNECT_US`, in its own test process: every ConnectEx of the session takes that
//! long, so the other tests' connects stay fast.

mod common;

use std::time::{Duration, Instant};

use common::{Session, PASSWORD};

#[test]
fn every_connect_ex_takes_the_connect_time_whatever_its_outcome() {
    let s = Session::start(&[
        ("FAKE_VDDK_PASSWORD", PASSWORD),
        ("FAKE_VDDK_CONNECT_US", "200000"),
    ]);

    let start = Instant::now();
    let conn = s.connect("slow.example", PASSWORD, None, None, None);
    let connected = start.elapsed();
    let start = Instant::now();
    let refused = s.connect("slow.example", "wrong", None, None, None);
    let failed = start.elapsed();

    let conn = conn.expect("ConnectEx");
    assert_eq!(refused.err(), Some(35));
    // Lower bounds only: a loaded machine may take longer, never shorter.
    assert!(connected >= Duration::from_millis(200), "{connected:?}");
    assert!(failed >= Duration::from_millis(200), "{failed:?}");
    // SAFETY: `conn` is a live connection of this library, not used afterwards.
    assert_eq!(unsafe { s.vddk.lib.VixDiskLib_Disconnect(conn) }, 0);
}

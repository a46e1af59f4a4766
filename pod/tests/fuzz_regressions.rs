//! Inputs the `ovirt_engine` fuzz target once crashed on, kept as regressions (see fuzz/).

use std::time::Duration;

#[test]
fn ovirt_inactivity_timeout_near_2_64_ms_gives_a_quarter_of_it() {
    // ovirt_engine: {"id":"a","phase":"transferring","inactivity_timeout":18446744073709552}
    // overflowed `timeout * 1000` (a panic with overflow checks, a 250 ms period without).
    let t = ferry_pod::ovirt::parse_transfer(
        br#"{"id":"a","phase":"transferring","inactivity_timeout":18446744073709552}"#,
    )
    .unwrap();

    let every = ferry_pod::ovirt::keep_alive_period(t.inactivity_timeout);

    assert_eq!(every, Duration::from_secs(18446744073709552) / 4);
}

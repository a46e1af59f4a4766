//! The oVirt engine's JSON answers: the SSO token (`parse_token`) and an image transfer
//! (`parse_transfer`: id, phase, URL, the inactivity timeout granted), and the keep-alive
//! period derived from that timeout.
//!
//! Holds: no panic; a token is the answer's non-empty `access_token`; a transfer has a
//! non-empty id and phase, a non-empty URL (`transfer_url`, else `proxy_url`) when it has one,
//! and a granted timeout only when positive; the keep-alive period touches the ticket well
//! within the timeout granted, at least every 250 ms apart, and can be scheduled.

#![no_main]

use std::time::Duration;

use ferry_fuzz::debug;
use ferry_pod::ovirt::{keep_alive_period, parse_token, parse_transfer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    debug(|| {
        format!(
            "token {:?}, transfer {:?}",
            parse_token(data),
            parse_transfer(data)
        )
    });
    if let Ok(t) = parse_token(data) {
        let v: Value = serde_json::from_slice(data).expect("a token came from JSON");
        assert!(!t.is_empty());
        assert_eq!(v["access_token"].as_str(), Some(t.as_str()));
    }
    if let Ok(t) = parse_transfer(data) {
        assert!(!t.id.is_empty() && !t.phase.is_empty(), "{t:?}");
        assert!(t.url.as_deref().is_none_or(|u| !u.is_empty()), "{t:?}");
        assert!(t.inactivity_timeout.is_none_or(|s| s > 0), "{t:?}");
        let every = keep_alive_period(t.inactivity_timeout);
        let granted = Duration::from_secs(t.inactivity_timeout.unwrap_or(60));
        assert!(every >= Duration::from_millis(250), "{every:?}");
        assert!(
            every <= (granted / 2).max(Duration::from_millis(250)),
            "{every:?} for {granted:?}"
        );
        // KeepAlive::start schedules its first touch one period from now.
        assert!(
            tokio::time::Instant::now().checked_add(every).is_some(),
            "a period that cannot be scheduled: {every:?}"
        );
    }
});

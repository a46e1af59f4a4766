//! The copy-offload populator's peer answers: esxcli over the vSphere API (an ExecuteSoap
//! answer: rows, a value or the command's fault; the vmkfstools plugin's status and message;
//! the clone task's JSON and its progress line), the datastore and multipath trees that name
//! the host's initiators, the vmkfstools wrapper's answer over SSH, the host's management
//! address, and the Kubernetes Lease object and times. The first byte picks the parser (`e`
//! esxcli and vSphere trees, `t` JSON, anything else text); the rest is its input.
//!
//! Holds: no panic; a progress percentage is within 0-100; initiators come with one adapter
//! name each and are iSCSI or FC ids; a time that parses is formatted back to the same instant
//! (to the microsecond); a lease is free for its own holder.

#![no_main]

use ferry_fuzz::debug;
use ferry_pod::kube::{format_time, parse_time, LeaseState};
use ferry_pod::xcopy::esxcli::{parse_execute, plugin_message};
use ferry_pod::xcopy::paths::{active_initiators, vmfs_disk};
use ferry_pod::xcopy::populate::{adapter_initiators, parse_task, percent};
use ferry_pod::xcopy::ssh::parse_answer;
use ferry_pod::xcopy::vmkfstools::management_ip_of;
use libfuzzer_sys::fuzz_target;
use transfer_core::delta::vsphere::xml::{body, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which {
        b'e' => esxcli(rest),
        b't' => json(rest),
        _ => text(&String::from_utf8_lossy(rest)),
    }
});

fn esxcli(data: &[u8]) {
    let Ok(root) = parse(data, "fuzz") else {
        return;
    };
    let node = body(&root, "fuzz").unwrap_or(root);
    if let Ok(Ok(a)) = parse_execute(&node, "fuzz") {
        debug(|| format!("{a:?}"));
        let _ = plugin_message(&a);
        let (ids, names) = adapter_initiators(a.rows());
        assert_eq!(ids.len(), names.len());
        for id in &ids {
            assert!(
                id.starts_with("iqn.") || id.starts_with("eui.") || id.starts_with("fc."),
                "{id}"
            );
        }
    }
    if let Some(ip) = management_ip_of(&node) {
        assert!(!ip.is_empty());
    }
    if let Some(disk) = vmfs_disk(&node) {
        assert!(!disk.is_empty());
        let (ids, names) = active_initiators(&node, &disk);
        assert_eq!(ids.len(), names.len());
    }
}

fn json(data: &[u8]) {
    if let Ok(t) = parse_task(&String::from_utf8_lossy(data)) {
        if let Some(p) = percent(&t.last_line) {
            assert!((0.0..=100.0).contains(&p), "{p}");
        }
    }
    if let Ok(v) = serde_json::from_slice(data) {
        let l = LeaseState::parse(&v);
        if !l.holder.is_empty() {
            assert!(l.free_for(&l.holder, 0.0));
        }
    }
}

fn text(s: &str) {
    if let Ok(a) = parse_answer(s, "fuzz") {
        debug(|| format!("{a:?}"));
        assert_eq!(a.status, a.status.trim());
    }
    if let Some(p) = percent(s) {
        assert!((0.0..=100.0).contains(&p), "{p}");
    }
    if let Some(t) = parse_time(s) {
        // Years 0000-9999 and offsets keep every instant within ±400 000 days of the epoch.
        let back = parse_time(&format_time(t)).expect("a formatted time parses");
        assert!(
            (back - t).abs() < 1e-3,
            "{s}: {t} -> {} -> {back}",
            format_time(t)
        );
    }
}

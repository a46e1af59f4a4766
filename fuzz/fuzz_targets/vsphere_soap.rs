//! vSphere SOAP answers (`delta::vsphere::xml`): the bounded namespace-aware tree, the SOAP
//! body, faults, the service content, a returned moref, the virtual disks of a device list and
//! a page of changed disk areas, all fed the whole input. Also the other way: a value ferry
//! puts in a request (a user name, a UUID, a change id) is escaped so that the request reads
//! back with exactly that value.
//!
//! Holds: no panic; the tree respects its bounds (depth 64, 500 000 elements); a fault is a
//! `Fault` element; service content names and morefs are non-empty and trimmed; a disk is
//! backed by its own file; a page of changed areas that `Client::changed_areas` would accept
//! (its checks, for a first page of a disk as large as the page) makes a valid `DeltaSet`
//! covering every area; an escaped value parses back unchanged.

#![no_main]

use ferry_fuzz::{check_ranges, debug};
use libfuzzer_sys::fuzz_target;
use transfer_core::delta::vsphere::xml::{
    body, change_info, envelope, fault, moref, parse, returned_moref, service_content,
    virtual_disks, Node,
};
use transfer_core::delta::DeltaSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = parse(data, "fuzz") {
        let mut count = 0;
        check_tree(&root, 1, &mut count);
        check_answer(&root);
        if let Ok(b) = body(&root, "fuzz") {
            check_answer(&b);
        }
    }

    let value = String::from_utf8_lossy(data);
    let request = envelope(&moref("_this", "VirtualMachine", &value));
    let root = parse(request.as_bytes(), "request").expect("our own request parses");
    let this = body(&root, "request").expect("our own request has a body");
    assert_eq!(this.name, "_this");
    assert_eq!(this.mo_type.as_deref(), Some("VirtualMachine"));
    assert_eq!(this.text, value, "an escaped value reads back different");
});

fn check_tree(n: &Node, depth: usize, count: &mut usize) {
    assert!(depth <= 64, "a tree deeper than 64");
    *count += 1;
    assert!(*count <= 500_000, "a tree of more than 500000 elements");
    for c in &n.children {
        check_tree(c, depth + 1, count);
    }
}

fn check_answer(a: &Node) {
    debug(|| {
        format!(
            "{}: fault {:?}, service content {:?}, moref {:?}, disks {:?}, changes {:?}",
            a.name,
            fault(a),
            service_content(a),
            returned_moref(a),
            virtual_disks(a),
            change_info(a)
        )
    });
    if fault(a).is_some() {
        assert_eq!(a.name, "Fault");
    }
    if let Ok(sc) = service_content(a) {
        for v in [
            &sc.session_manager,
            &sc.search_index,
            &sc.property_collector,
        ] {
            assert!(!v.is_empty() && v.trim() == v, "{sc:?}");
        }
    }
    if let Some(m) = returned_moref(a) {
        assert!(!m.is_empty() && m.trim() == m, "{m:?}");
    }
    if let Ok(disks) = virtual_disks(a) {
        for d in &disks {
            assert!(d.is_backed_by(&d.file_name), "{d:?}");
        }
    }
    if let Ok(page) = change_info(a) {
        // What Client::changed_areas checks of the page at 0 of a disk of `capacity` bytes.
        let capacity = page.start.saturating_add(page.length);
        let end = page.start.checked_add(page.length);
        let page_ok = page.start == 0 && page.length > 0 && end.is_some_and(|e| e <= capacity);
        let areas_ok = page
            .areas
            .iter()
            .all(|&(a, l)| a.checked_add(l).is_some_and(|e| e <= capacity));
        if page_ok && areas_ok {
            let d = DeltaSet::new(capacity, page.areas.iter().copied())
                .expect("accepted areas make a delta");
            check_ranges("vSphere changed areas", d.ranges(), capacity);
            for &(a, l) in page.areas.iter().filter(|a| a.1 > 0) {
                let r = d.ranges().partition_point(|r| r.0 + r.1 <= a);
                let covered = d
                    .ranges()
                    .get(r)
                    .is_some_and(|r| r.0 <= a && a + l <= r.0 + r.1);
                assert!(covered, "area {a}+{l} not in the delta {d:?}");
            }
        }
    }
}

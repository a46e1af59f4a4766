//! The populator's Kubernetes client against an in-test API server (TLS, bearer token, the
//! PVC, PV and Lease endpoints and their status answers as the API server gives them): the
//! target PV through the PVC or its `prime-<uid>` claim, and Leases with two holders per host.

use ferry_pod::kube::{format_time, now, Kube};
use serde_json::json;
use test_kit::xcopy::{kube, KubeTable};
use transfer_core::ErrorKind;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_target_pv_is_found_through_the_pvc_or_its_prime_claim() {
    let dir = test_kit::tempdir();
    let mut t = KubeTable::default();
    t.add_bound_pvc(
        "ns1",
        "disk-0",
        "pvc-1",
        json!({"internalName": "trident_pvc_1"}),
    );
    t.add_prime_bound_pvc(
        "ns1",
        "disk-1",
        "uid-7",
        "pvc-2",
        json!({"internalName": "trident_pvc_2"}),
    );
    t.pvcs.push((
        "ns1".into(),
        "disk-2".into(),
        json!({"metadata": {"name": "disk-2", "uid": "uid-8"}, "spec": {}}),
    ));
    let (port, sa, table) = kube(dir.path(), t);
    let k = Kube::new(&format!("https://127.0.0.1:{port}/"), sa.clone()).unwrap();
    rt().block_on(async {
        let v = k.target_volume("ns1", "disk-0").await.unwrap();
        assert_eq!(
            (v.name.as_str(), v.attribute("internalName")),
            ("pvc-1", Some("trident_pvc_1"))
        );
        let v = k.target_volume("ns1", "disk-1").await.unwrap();
        assert_eq!(v.attribute("internalName"), Some("trident_pvc_2"));
        let e = k.target_volume("ns1", "disk-2").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("prime-uid-8"), "{e}");
        let e = k.target_volume("ns1", "nope").await.unwrap_err();
        assert!(e.to_string().contains("ns1/nope does not exist"), "{e}");
        assert!(k.target_volume("ns1", "../x").await.is_err());
    });
    assert!(table
        .lock()
        .unwrap()
        .log
        .contains(&"GET /api/v1/namespaces/ns1/persistentvolumeclaims/prime-uid-7".to_owned()));

    std::fs::write(sa.join("token"), "wrong-token").unwrap();
    let e = rt().block_on(k.target_volume("ns1", "disk-0")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert!(!e.to_string().contains("wrong-token"), "{e}");
}

#[test]
fn leases_take_turns_and_expire() {
    let dir = test_kit::tempdir();
    let mut t = KubeTable::default();
    t.absent_namespaces.push("gone".into());
    let (port, sa, table) = kube(dir.path(), t);
    let k = Kube::new(&format!("https://127.0.0.1:{port}/"), sa).unwrap();
    rt().block_on(async {
        assert!(k
            .try_lease("mtv", "esxi-lock-h-slot-0", "pod-a", 10)
            .await
            .unwrap());
        assert!(!k
            .try_lease("mtv", "esxi-lock-h-slot-0", "pod-b", 10)
            .await
            .unwrap());
        // Renewing one's own lease works; giving it up lets the next one in at once.
        assert!(k
            .try_lease("mtv", "esxi-lock-h-slot-0", "pod-a", 10)
            .await
            .unwrap());
        k.release_lease("mtv", "esxi-lock-h-slot-0", "pod-b")
            .await
            .unwrap();
        assert!(!k
            .try_lease("mtv", "esxi-lock-h-slot-0", "pod-b", 10)
            .await
            .unwrap());
        k.release_lease("mtv", "esxi-lock-h-slot-0", "pod-a")
            .await
            .unwrap();
        assert!(k
            .try_lease("mtv", "esxi-lock-h-slot-0", "pod-b", 10)
            .await
            .unwrap());
    });
    // A holder that stopped renewing: its lease is taken once renewTime + duration has passed.
    {
        let mut t = table.lock().unwrap();
        let l = t
            .leases
            .iter_mut()
            .find(|l| l.1 == "esxi-lock-h-slot-0")
            .unwrap();
        l.2["spec"]["renewTime"] = json!(format_time(now() - 11.0));
    }
    rt().block_on(async {
        assert!(k
            .try_lease("mtv", "esxi-lock-h-slot-0", "pod-c", 10)
            .await
            .unwrap());
    });
    let t = table.lock().unwrap();
    assert_eq!(
        t.lease_holder("mtv", "esxi-lock-h-slot-0").as_deref(),
        Some("pod-c")
    );
    let l = &t.leases[0].2["spec"];
    assert_eq!(l["leaseTransitions"], 2, "{l}");
    assert_eq!(l["leaseDurationSeconds"], 10);
}

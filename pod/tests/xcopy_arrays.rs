//! The storage side of the copy-offload populator against in-test REST servers of NetApp ONTAP
//! and Pure FlashArray (neither can be installed here), which follow the vendors' API
//! references: ONTAP's igroups, LUNs and LUN maps under `/api` with basic authentication and
//! `{"records"}` answers; FlashArray's `api_version`, `auth/apitoken`, `login` (`api-token` in,
//! `x-auth-token` out), hosts, volumes and connections with `{"items"}` answers. Their mapping
//! tables are what the tests compare.

use ferry_pod::xcopy::ontap::{naa, Ontap};
use ferry_pod::xcopy::pure::{self, Credentials, FlashArray};
use ferry_pod::xcopy::{release, restore, Initiators, StorageArray, Volume};
use test_kit::xcopy::{
    OntapTable, Pure, PureTable, ONTAP_PASSWORD, ONTAP_SVM, ONTAP_USER,
    PURE_API_TOKEN as API_TOKEN, PURE_PASSWORD, PURE_USER,
};
use transfer_core::http::HttpOptions;
use transfer_core::ErrorKind;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---- ONTAP ----

const USER: &str = ONTAP_USER;
const PASSWORD: &str = ONTAP_PASSWORD;
const SVM: &str = ONTAP_SVM;

/// An ONTAP REST server with one LUN (`/vol/trident_pvc_1/lun0`) mapped to the igroup
/// `other-host`; its URL and table.
fn ontap() -> (String, test_kit::xcopy::Ontap) {
    let (url, t) = test_kit::xcopy::ontap(OntapTable::with_lun("trident_pvc_1", "wCVg4]DhZs-V"));
    (url, t)
}

fn volume(internal: &str) -> Volume {
    Volume {
        name: "pvc-1".into(),
        handle: "pvc-1".into(),
        attributes: vec![("internalName".into(), internal.into())],
    }
}

#[test]
fn the_lun_is_mapped_to_the_hosts_igroup_and_its_mappings_restored() {
    let (url, table) = ontap();
    let array = Ontap::new(&url, USER, PASSWORD, SVM, &HttpOptions::default()).unwrap();
    let esxi = Initiators::from_esxi(&["fc.20000025b5aa0001:20000025b5aa0002".to_owned()]).unwrap();
    rt().block_on(async {
        let group = array.ensure_group("esx1.example", &esxi).await.unwrap();
        assert_eq!(group, "xcopy-esx1.example-fcp", "Forklift's name");
        // Again, with one more port: it is added, nothing doubled.
        let more = Initiators::from_esxi(&[
            "fc.20000025b5aa0001:20000025b5aa0002".to_owned(),
            "fc.20000025b5aa0003:20000025B5AA0004".to_owned(),
        ])
        .unwrap();
        assert_eq!(
            array.ensure_group("esx1.example", &more).await.unwrap(),
            group
        );
        let lun = array.lun(&volume("trident_pvc_1")).await.unwrap();
        assert_eq!(lun.naa, naa("wCVg4]DhZs-V"));
        let before = array.mappings(&lun).await.unwrap();
        assert_eq!(before, vec!["other-host"]);

        array.map(&lun, &group).await.unwrap();
        array.map(&lun, &group).await.unwrap();
        let mut now = array.mappings(&lun).await.unwrap();
        now.sort();
        assert_eq!(now, vec!["other-host", "xcopy-esx1.example-fcp"]);

        restore(&array, &lun, &before).await.unwrap();
        restore(&array, &lun, &before).await.unwrap();
        assert_eq!(array.mappings(&lun).await.unwrap(), before);
        array.unmap(&lun, &group).await.unwrap();
    });
    let t = table.lock().unwrap();
    assert_eq!(t.maps, vec![("lun-1".to_owned(), "ig-0".to_owned())]);
    let ours = t
        .igroups
        .iter()
        .find(|g| g.1 == "xcopy-esx1.example-fcp")
        .unwrap();
    assert_eq!(
        ours.2,
        vec!["20:00:00:25:b5:aa:00:02", "20:00:00:25:b5:aa:00:04"],
        "WWPNs in ONTAP's form"
    );
}

#[test]
fn release_removes_only_populator_mappings_and_brings_back_the_lost_ones() {
    let (url, table) = ontap();
    let array = Ontap::new(&url, USER, PASSWORD, SVM, &HttpOptions::default()).unwrap();
    let esxi = Initiators::from_esxi(&["iqn.1998-01.com.vmware:esx4".to_owned()]).unwrap();
    {
        let mut t = table.lock().unwrap();
        t.igroups.push((
            "ig-8".into(),
            "xcopy-hostsystem-host-8".into(),
            vec!["iqn.x".into()],
        ));
        t.igroups
            .push(("ig-9".into(), "csi-node-1".into(), vec!["iqn.node".into()]));
        t.maps.push(("lun-1".into(), "ig-8".into()));
    }
    rt().block_on(async {
        let group = array
            .ensure_group("hostsystem-host-4", &esxi)
            .await
            .unwrap();
        let lun = array.lun(&volume("trident_pvc_1")).await.unwrap();
        let before = vec!["other-host".to_owned()];
        array.map(&lun, &group).await.unwrap();
        // Meanwhile: the LUN's own mapping lost, and a mapping that is none of ours added.
        array.unmap(&lun, "other-host").await.unwrap();
        array.map(&lun, "csi-node-1").await.unwrap();
        release(&array, &lun, &group, &before).await.unwrap();
        release(&array, &lun, &group, &before).await.unwrap();
        let mut now = array.mappings(&lun).await.unwrap();
        now.sort();
        assert_eq!(now, vec!["csi-node-1", "other-host"]);
    });
}

#[test]
fn a_lost_mapping_is_mapped_again_and_failures_are_one_clear_line() {
    let (url, table) = ontap();
    let array = Ontap::new(&url, USER, PASSWORD, SVM, &HttpOptions::default()).unwrap();
    let esxi = Initiators::from_esxi(&["iqn.1998-01.com.vmware:esx2".to_owned()]).unwrap();
    rt().block_on(async {
        let lun = array.lun(&volume("trident_pvc_1")).await.unwrap();
        let before = array.mappings(&lun).await.unwrap();
        let group = array.ensure_group("esx2", &esxi).await.unwrap();
        // Something removed the LUN's own mapping meanwhile: restoring brings it back.
        array.unmap(&lun, "other-host").await.unwrap();
        array.unmap(&lun, "other-host").await.unwrap();
        restore(&array, &lun, &before).await.unwrap();
        assert_eq!(array.mappings(&lun).await.unwrap(), before);

        table.lock().unwrap().fail_map = true;
        let e = array.map(&lun, &group).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Server);
        let msg = e.to_string();
        assert!(
            msg.contains("could not be created") && !msg.contains('\n'),
            "{msg}"
        );

        let e = array.lun(&volume("trident_pvc_9")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let e = array.lun(&Volume::default()).await.unwrap_err();
        assert!(e.to_string().contains("internalName"), "{e}");

        let wrong = Ontap::new(&url, USER, "nope", SVM, &HttpOptions::default()).unwrap();
        let e = wrong.mappings(&lun).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
        assert!(!e.to_string().contains("nope") && !e.to_string().contains(PASSWORD));
    });
    // No ONTAP_SVM: the cluster's only SVM; with two, an error that names them.
    let any = Ontap::new(&url, USER, PASSWORD, "", &HttpOptions::default()).unwrap();
    rt().block_on(async {
        assert!(any.lun(&volume("trident_pvc_1")).await.is_ok());
    });
    table.lock().unwrap().other_svms.push("svm2".into());
    let any = Ontap::new(&url, USER, PASSWORD, "", &HttpOptions::default()).unwrap();
    let e = rt()
        .block_on(any.lun(&volume("trident_pvc_1")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ONTAP_SVM") && e.contains("svm1, svm2"), "{e}");
}

// ---- FlashArray ----

/// A FlashArray with the volume `px-pvc-7` connected to the host `other`.
fn flasharray() -> (String, Pure) {
    test_kit::xcopy::flasharray(PureTable::with_volume(
        "px-pvc-7",
        "F4252922ADE248CF000113E6",
    ))
}

/// A FlashArray client of the fake with the user's password (prefix `px`).
fn logged_in(url: &str) -> FlashArray {
    FlashArray::new(
        url,
        Credentials::Password(PURE_USER.into(), PURE_PASSWORD.into()),
        "px",
        &HttpOptions::default(),
    )
    .unwrap()
}

#[test]
fn a_flasharray_volume_is_connected_to_the_hosts_entry_and_its_connections_restored() {
    let (url, array) = flasharray();
    let fa = logged_in(&url);
    let esxi = Initiators::from_esxi(&[
        "iqn.1998-01.com.vmware:esx3".to_owned(),
        "fc.20000025b5aa0001:20000025b5aa0002".to_owned(),
    ])
    .unwrap();
    let pv = Volume {
        name: "pvc-7".into(),
        ..Volume::default()
    };
    rt().block_on(async {
        let host = fa.ensure_group("esx3.example", &esxi).await.unwrap();
        assert_eq!(host, "xcopy-esx3-example");
        fa.ensure_group("esx3.example", &esxi).await.unwrap();
        let lun = fa.lun(&pv).await.unwrap();
        assert_eq!(lun.naa, pure::naa("F4252922ADE248CF000113E6"));
        let before = fa.mappings(&lun).await.unwrap();
        assert_eq!(before, vec!["other"]);
        fa.map(&lun, &host).await.unwrap();
        fa.map(&lun, &host).await.unwrap();
        assert_eq!(fa.mappings(&lun).await.unwrap(), vec!["other", &host]);
        restore(&fa, &lun, &before).await.unwrap();
        restore(&fa, &lun, &before).await.unwrap();
        assert_eq!(fa.mappings(&lun).await.unwrap(), before);
        let missing = Volume {
            name: "pvc-9".into(),
            ..Volume::default()
        };
        assert_eq!(
            fa.lun(&missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // A CSI volume handle that is the volume's id finds it whatever the PV's name.
        let by_id = Volume {
            name: "pvc-other".into(),
            handle: array.lock().unwrap().volumes[0].2.clone(),
            ..Volume::default()
        };
        assert_eq!(fa.lun(&by_id).await.unwrap().name, "px-pvc-7");
    });
    let a = array.lock().unwrap();
    assert_eq!(
        a.connections,
        vec![("other".to_owned(), "px-pvc-7".to_owned())]
    );
    let ours = a
        .hosts
        .iter()
        .find(|h| h.0 == "xcopy-esx3-example")
        .unwrap();
    assert_eq!(ours.1, vec!["iqn.1998-01.com.vmware:esx3"]);
    assert_eq!(ours.2, vec!["20000025B5AA0002"], "WWPNs added once");
    assert_eq!(a.logins, 1, "one session for every call");
}

#[test]
fn an_esxi_host_the_flasharray_knows_already_is_used_as_it_is() {
    let (url, array) = flasharray();
    array
        .lock()
        .unwrap()
        .hosts
        .push(("esxi-01".into(), vec![], vec!["20000025B5AA0002".into()]));
    let fa = logged_in(&url);
    let esxi = Initiators::from_esxi(&["fc.20000025b5aa0001:20000025b5aa0002".to_owned()]).unwrap();
    let host = rt()
        .block_on(fa.ensure_group("hostsystem-host-1", &esxi))
        .unwrap();
    assert_eq!(
        host, "esxi-01",
        "an initiator belongs to one host object only"
    );
    assert!(array
        .lock()
        .unwrap()
        .hosts
        .iter()
        .all(|h| !h.0.starts_with("xcopy-")));
}

#[test]
fn flasharray_logins_fail_clearly_without_showing_secrets() {
    let (url, _) = flasharray();
    rt().block_on(async {
        for creds in [
            Credentials::Password(PURE_USER.into(), "wrong".into()),
            Credentials::Token("bad-token".into()),
        ] {
            let fa = FlashArray::new(&url, creds, "px", &HttpOptions::default()).unwrap();
            let e = fa
                .lun(&Volume {
                    name: "pvc-7".into(),
                    ..Volume::default()
                })
                .await
                .unwrap_err();
            let msg = e.to_string();
            assert!(
                !msg.contains('\n') && !msg.contains("wrong") && !msg.contains("bad-token"),
                "{msg}"
            );
        }
        // A token given as is works without the password exchange.
        let fa = FlashArray::new(
            &url,
            Credentials::Token(API_TOKEN.into()),
            "px",
            &HttpOptions::default(),
        )
        .unwrap();
        assert!(fa
            .lun(&Volume {
                name: "pvc-7".into(),
                ..Volume::default()
            })
            .await
            .is_ok());
    });
    assert!(FlashArray::new(
        &url,
        Credentials::Token(API_TOKEN.into()),
        "",
        &HttpOptions::default()
    )
    .is_err());
}

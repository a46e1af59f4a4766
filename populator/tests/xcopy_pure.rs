//! `populator vsphere-xcopy --storage-vendor-product=pureFlashArray` end to end: the same
//! population as `xcopy.rs` (vcsim-ferry's ESXi clones the VM disk's flat file onto the loop
//! device the array's volume stands for) against the in-test FlashArray REST 2.x server, which
//! shows the volume to the ESXi host exactly while it is connected to a host object holding one
//! of the host's IQNs or FC WWPNs. The loop device ends up holding the disk byte for byte and
//! the array's connections end as they began, whatever step fails.

mod xcopy_rig;

use test_kit::xcopy::PURE_API_TOKEN;
use xcopy_rig::*;

const VENDOR: &str = "pureFlashArray";

#[test]
fn a_flasharray_volume_is_connected_cloned_onto_and_its_connections_come_back() {
    let Some(r) = rig_for(VENDOR, &["-clone-rate", "12582912"]) else {
        return;
    };
    let before = r.mappings();
    assert_eq!(
        before,
        vec![(format!("{PURE_PREFIX}-pvc-1"), "other".to_owned())]
    );
    let (out, scrapes) = r.run();
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(out.status.success(), "{err}\nvcsim: {}", r.vcsim.log());
    r.assert_cloned();
    assert_eq!(
        r.mappings(),
        before,
        "the volume's connections are as they were"
    );

    // The host object the populator made for the ESXi host holds its initiators, as Purity
    // keeps them (IQNs as they are, WWPNs in 16 upper-case hex digits).
    let (name, initiators) = r.xcopy_group();
    let moref = name.trim_start_matches("xcopy-hostsystem-");
    let ready = r.vcsim.ready()["hosts"].as_array().unwrap().clone();
    let esxi = ready
        .iter()
        .find(|h| h["moref"].as_str() == Some(moref))
        .unwrap_or_else(|| panic!("no host {moref} in {ready:?}"));
    let mut want = vec![esxi["iqn"].as_str().unwrap().to_owned()];
    // The link-up FC ports' WWPNs.
    for fc in esxi["fc"].as_array().unwrap() {
        let (_, wwpn) = fc.as_str().unwrap().split_once(':').unwrap();
        want.push(wwpn.to_ascii_uppercase());
    }
    assert!(want.len() > 1);
    assert_eq!(initiators, want);
    let t = r.pure.lock().unwrap();
    assert!(
        t.log
            .iter()
            .any(|l| l.starts_with("POST /api/2.21/connections")),
        "{:?}",
        t.log
    );
    assert!(
        t.log
            .iter()
            .any(|l| l.starts_with("DELETE /api/2.21/connections")),
        "{:?}",
        t.log
    );
    assert_eq!(t.logins, 1, "one session for the whole population");
    drop(t);

    assert_progress(&scrapes);
    let last = scrapes.last().unwrap();
    let uid = format!("owner_uid=\"{UID}\"");
    let vendor = format!("storage_vendor=\"{VENDOR}\"");
    assert_eq!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_xcopy_used",
            &[&uid, &vendor]
        ),
        Some(1.0),
        "{last}"
    );
    assert_eq!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_storage_array_info",
            &[
                &vendor,
                "storage_array_vendor=\"Pure Storage\"",
                "storage_array_product=\"FlashArray\"",
                "storage_array_model=\"FA-X70R3\"",
                "storage_array_version=\"6.5.3\""
            ]
        ),
        Some(1.0),
        "{last}"
    );
    assert!(sample(
        last,
        "vsphere_xcopy_volume_populator_copy_duration_seconds",
        &[&uid, &vendor, "result=\"success\""]
    )
    .is_some_and(|s| s > 0.0));
    assert!(!r.dir.path().join("devices").join(r.naa()).exists());
    let log = r.vcsim.log();
    for cmd in ["vmkfstools clone", "storage core device detached remove"] {
        assert!(log.contains(cmd), "no esxcli {cmd} in: {log}");
    }
    assert!(
        log.contains(&r.naa()),
        "ESXi never asked for the volume: {log}"
    );
    r.assert_no_secret(&err, &scrapes);
}

#[test]
fn a_flasharray_that_refuses_the_connection_is_one_line_and_nothing_stays_connected() {
    // Hosts with the software iSCSI adapter only.
    let Some(r) = rig_for(VENDOR, &["-san", "iscsi"]) else {
        return;
    };
    let before = r.mappings();
    r.pure.lock().unwrap().fail_connect = true;
    let (line, scrapes, _) = r.run_failing(&r.env());
    assert!(line.contains("Could not connect the volume"), "{line}");
    assert_eq!(r.mappings(), before);
    let last = scrapes.last().unwrap();
    assert!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_copy_duration_seconds",
            &[
                "result=\"failure\"",
                "storage_vendor=\"pureFlashArray\"",
                "storage_protocol=\"iscsi\""
            ]
        )
        .is_some(),
        "{last}"
    );
    // The array answers again: the next pod does the whole job.
    r.pure.lock().unwrap().fail_connect = false;
    r.run_to_completion(&r.env(), &before);
}

#[test]
fn sigterm_mid_clone_on_a_flasharray_disconnects_and_a_token_run_completes() {
    let Some(r) = rig_for(VENDOR, &["-clone-rate", "4194304"]) else {
        return;
    };
    let before = r.mappings();
    let child = r.spawn_until_cloning();
    assert!(r.dir.path().join("devices").join(r.naa()).exists());
    r.sigterm(child, &before);

    // The next pod signs in with an API token (STORAGE_TOKEN) instead of the password.
    let env: Vec<(String, String)> = r
        .env()
        .into_iter()
        .filter(|(k, _)| k != "STORAGE_USERNAME" && k != "STORAGE_PASSWORD")
        .chain([("STORAGE_TOKEN".to_owned(), PURE_API_TOKEN.to_owned())])
        .collect();
    let out = r.run_to_completion(&env, &before);
    assert!(!stderr(&out).contains(PURE_API_TOKEN));
}

#[test]
fn a_session_that_ends_mid_clone_is_opened_again_for_the_cleanup() {
    let Some(r) = rig_for(VENDOR, &["-clone-rate", "6291456"]) else {
        return;
    };
    let before = r.mappings();
    let child = r.spawn_until_cloning();
    // Purity ends the idle session while ESXi copies.
    r.pure.lock().unwrap().expire_sessions();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    r.assert_cloned();
    assert_eq!(r.mappings(), before, "disconnected after the new login");
    assert!(err.contains("logging in again"), "{err}");
    assert_eq!(r.pure.lock().unwrap().logins, 2);
    r.assert_no_secret(&err, &[]);
}

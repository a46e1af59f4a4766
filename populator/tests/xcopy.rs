//! `populator vsphere-xcopy` (Forklift's copy-offload populator) end to end: the test vCenter
//! (vcsim-ferry, whose ESXi hosts answer esxcli `storage core` and Forklift's `vmkfstools`
//! plugin over the vSphere API, and whose clone copies the VM disk's flat file onto the device
//! the array's LUN stands for), the in-test ONTAP REST server (whose LUN is a loop device that
//! appears to ESXi while it is mapped to the host's initiators), and the in-test Kubernetes
//! API (PVC, PV, Leases over TLS with the service account's token). The loop device ends up
//! holding the disk byte for byte, and the array's mapping table ends as it began, whatever
//! step fails.

mod xcopy_rig;

use std::process::Command;

use serde_json::json;
use test_kit::{binary, tempdir};
use xcopy_rig::*;

#[test]
fn the_disk_is_cloned_onto_the_lun_and_the_mappings_come_back() {
    let Some(r) = rig(&["-clone-rate", "12582912"]) else {
        return;
    };
    let before = r.mappings();
    let (out, scrapes) = r.run();
    let err = stderr(&out);
    // The populator's log (shown with --nocapture).
    eprintln!("{err}");
    assert!(out.status.success(), "{err}\nvcsim: {}", r.vcsim.log());
    r.assert_cloned();
    assert_eq!(r.mappings(), before, "the LUN's mappings are as they were");

    // The host's own initiator group, named as Forklift names it, with the host's IQN.
    let (group, initiators) = r.xcopy_group();
    assert!(group.ends_with("-mixed"), "iSCSI and FC: {group}");
    assert!(
        initiators.iter().any(|i| i.starts_with("iqn.")),
        "{initiators:?}"
    );

    assert_progress(&scrapes);
    let last = scrapes.last().unwrap();
    // Typed as Forklift's Go client types them.
    for ty in [
        "# TYPE vsphere_xcopy_volume_populator_progress counter",
        "# TYPE vsphere_xcopy_volume_populator_xcopy_used gauge",
        "# TYPE vsphere_xcopy_volume_populator_copy_duration_seconds gauge",
    ] {
        assert!(last.contains(ty), "{last}");
    }
    let uid = format!("owner_uid=\"{UID}\"");
    assert_eq!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_xcopy_used",
            &[&uid, "storage_vendor=\"ontap\""]
        ),
        Some(1.0),
        "{last}"
    );
    assert_eq!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_source_disk_bytes",
            &[&uid, "type=\"provisioned\"", "storage_protocol=\"n/a\""]
        ),
        Some(DISK as f64),
        "{last}"
    );
    assert_eq!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_storage_array_info",
            &[
                "storage_vendor=\"ontap\"",
                "storage_array_vendor=\"NetApp\"",
                "storage_array_product=\"ONTAP\"",
                "storage_array_model=\"n/a\"",
                "storage_array_version=\"9.14.1\""
            ]
        ),
        Some(1.0),
        "{last}"
    );
    // A metric of the array, not of this disk: no owner label, as Forklift's.
    assert!(last
        .lines()
        .filter(|l| l.starts_with("vsphere_xcopy_volume_populator_storage_array_info{"))
        .all(|l| !l.contains("owner_uid")));
    let took = sample(
        last,
        "vsphere_xcopy_volume_populator_copy_duration_seconds",
        &[
            &uid,
            "result=\"success\"",
            "xcopy_used=\"1\"",
            "clone_method=\"vib\"",
            // The hosts have iSCSI and FC adapters up: no one protocol.
            "storage_protocol=\"n/a\"",
        ],
    )
    .unwrap_or_else(|| panic!("no duration: {last}"));
    assert!(took > 0.0);

    // ESXi: the device was found after a rescan, set off and detached after the clone, and
    // the clone task cleaned up; the device is gone from the host.
    let log = r.vcsim.log();
    for cmd in [
        "storage core adapter list",
        "storage core adapter rescan all=1 type=add",
        "storage core adapter rescan adapter=vmhba64 type=delete",
        "vmkfstools clone",
        "vmkfstools taskGet",
        "vmkfstools taskClean",
        "storage core device set",
        "storage core device detached remove",
    ] {
        assert!(log.contains(cmd), "no esxcli {cmd} in: {log}");
    }
    assert!(!r.dir.path().join("devices").join(naa()).exists());
    // The host Lease was given back.
    let k = r.kube.lock().unwrap();
    assert!(
        k.leases
            .iter()
            .any(|l| l.1.starts_with("esxi-lock-hostsystem-host-") && l.1.ends_with("-slot-0")),
        "{:?}",
        k.log
    );
    assert!(
        k.leases
            .iter()
            .all(|l| l.2["spec"]["holderIdentity"].is_null()),
        "{:?}",
        k.leases
    );
    drop(k);
    r.assert_no_secret(&err, &scrapes);
}

#[test]
fn a_host_copy_without_xcopy_over_fibre_channel_is_reported() {
    // Hosts with FC HBAs only: the igroup gets the link-up port's WWPN, in ONTAP's colon form.
    let Some(r) = rig(&["-no-xcopy", "-san", "fc"]) else {
        return;
    };
    let (out, scrapes) = r.run();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    r.assert_cloned();
    let (group, initiators) = r.xcopy_group();
    assert!(
        group.ends_with("-fcp"),
        "Forklift's name for an FC igroup: {group}"
    );
    assert!(
        !initiators.is_empty()
            && initiators
                .iter()
                .all(|i| i.len() == 23 && i.matches(':').count() == 7),
        "{initiators:?}"
    );
    assert!(
        err.contains("fell back to a copy through the host") && err.contains("MiB/s"),
        "{err}"
    );
    let last = scrapes.last().unwrap();
    let uid = format!("owner_uid=\"{UID}\"");
    assert_eq!(
        sample(last, "vsphere_xcopy_volume_populator_xcopy_used", &[&uid]),
        Some(0.0),
        "{last}"
    );
    assert!(
        sample(
            last,
            "vsphere_xcopy_volume_populator_copy_duration_seconds",
            &["xcopy_used=\"0\"", "storage_protocol=\"fc\""]
        )
        .is_some(),
        "{last}"
    );
}

#[test]
fn an_ontap_san_economy_lun_is_found_by_its_internal_id() {
    let Some(r) = rig(&[]) else {
        return;
    };
    // Trident's ontap-san-economy driver: many LUNs in one FlexVol, named by internalID.
    r.ontap.lock().unwrap().luns[0].1 = "/vol/trident_lun_pool_x/trident_pvc_1".into();
    for pv in &mut r.kube.lock().unwrap().pvs {
        pv.1["spec"]["csi"]["volumeAttributes"] = json!({
            "internalID": "/svm/svm1/flexvol/trident_lun_pool_x/lun/trident_pvc_1",
            "internalName": "trident_pvc_1",
        });
    }
    let before = r.mappings();
    r.run_to_completion(&r.env(), &before);
}

#[test]
fn an_older_vib_is_a_warning_and_no_vib_fails_before_the_array_is_touched() {
    // A VIB release without `vmkfstools version`: listed by `software vib get`, it clones.
    if let Some(r) = rig(&["-vib", "old"]) {
        let before = r.mappings();
        let out = r.run_to_completion(&r.env(), &before);
        let err = stderr(&out);
        assert!(
            err.contains("does not answer `vmkfstools version`") && err.contains("going on"),
            "{err}"
        );
    }
    // No VIB at all: one line before anything is mapped.
    if let Some(r) = rig(&["-vib", "none"]) {
        let before = r.mappings();
        let (line, _, _) = r.run_failing(&r.env());
        assert!(
            line.contains("VIB is not installed") && line.contains("ESXI_CLONE_METHOD=ssh"),
            "{line}"
        );
        assert_eq!(r.mappings(), before);
        let log = r.ontap.lock().unwrap().log.clone();
        assert!(
            !log.iter().any(|l| l.starts_with("POST")),
            "the array was changed: {log:?}"
        );
    }
}

#[test]
fn a_rescan_that_errs_is_a_warning_and_the_device_is_found_all_the_same() {
    // One faulty HBA makes every rescan of all adapters fail after scanning the others.
    let Some(r) = rig(&["-rescan-errs"]) else {
        return;
    };
    let before = r.mappings();
    let out = r.run_to_completion(&r.env(), &before);
    let err = stderr(&out);
    assert!(
        err.contains("rescan 1 failed") && err.contains("link is down"),
        "{err}"
    );
}

#[test]
fn a_vcenter_that_hiccups_is_asked_again() {
    // Every third esxcli call and every third property read is answered HTTP 503.
    let Some(r) = rig(&["-hiccup-every", "3", "-clone-rate", "12582912"]) else {
        return;
    };
    let before = r.mappings();
    let (out, _) = r.run();
    let err = stderr(&out);
    let log = r.vcsim.log();
    eprintln!("{err}");
    // The calls come in a fixed order: the clone (the only call not sent again after a
    // 503) is not one of the third ones.
    assert!(out.status.success(), "{err}\n{log}");
    r.assert_cloned();
    assert_eq!(r.mappings(), before);
    assert!(log.matches("esxcli hiccup").count() >= 3, "{log}");
    assert!(log.contains("property read hiccup"), "{log}");
    assert!(
        err.contains("esxcli") && err.contains("try 1 of 3"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("vSphere") && l.contains(" of ") && l.contains("try 1 of 3")),
        "a property read asked again: {err}"
    );
}

#[test]
fn a_failing_map_or_clone_or_a_device_that_never_shows_leaves_the_mappings_as_they_were() {
    // The array refuses the mapping.
    if let Some(r) = rig(&[]) {
        let before = r.mappings();
        r.ontap.lock().unwrap().fail_map = true;
        let (line, scrapes, out) = r.run_failing(&r.env());
        assert!(line.contains("could not be created"), "{}", stderr(&out));
        assert_eq!(r.mappings(), before);
        let last = scrapes.last().unwrap();
        assert!(
            sample(
                last,
                "vsphere_xcopy_volume_populator_copy_duration_seconds",
                &["result=\"failure\""]
            )
            .is_some(),
            "{last}"
        );
    }
    // ESXi never sees the device (a LUN number past Disk.MaxLUN, no path).
    if let Some(r) = rig(&["-rescans-needed", "0"]) {
        let before = r.mappings();
        let (line, _, _) = r.run_failing(&r.env());
        assert!(
            line.contains(&naa()) && line.contains("Disk.MaxLUN (1024)"),
            "{line}"
        );
        assert_eq!(r.mappings(), before);
        let adds = r
            .vcsim
            .log()
            .matches("storage core adapter rescan all=1 type=add")
            .count();
        assert_eq!(adds, 5, "{}", r.vcsim.log());
    }
    // vmkfstools fails half-way.
    if let Some(r) = rig(&["-clone-fail-at", "40", "-clone-rate", "12582912"]) {
        let before = r.mappings();
        let (line, scrapes, _) = r.run_failing(&r.env());
        assert!(line.contains("exit code"), "{line}");
        // The failure labelled with what the clone had reported.
        let last = scrapes.last().unwrap();
        assert!(
            sample(
                last,
                "vsphere_xcopy_volume_populator_copy_duration_seconds",
                &["result=\"failure\"", "xcopy_used=\"1\""]
            )
            .is_some(),
            "{last}"
        );
        assert_eq!(r.mappings(), before);
        assert!(!r.dir.path().join("devices").join(naa()).exists());
    }
}

#[test]
fn sigterm_mid_clone_cleans_up_and_the_next_run_completes() {
    let Some(r) = rig(&["-clone-rate", "4194304"]) else {
        return;
    };
    let before = r.mappings();
    r.sigterm(r.spawn_until_cloning(), &before);

    // A new pod does the whole job.
    r.run_to_completion(&r.env(), &before);
}

#[test]
fn a_killed_populators_mapping_is_cleaned_up_by_the_next_one() {
    let Some(r) = rig(&["-clone-rate", "4194304"]) else {
        return;
    };
    let before = r.mappings();
    let mut child = r.spawn_until_cloning();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        r.mappings().len() > before.len(),
        "a killed pod cleans nothing"
    );
    r.run_to_completion(&r.env(), &before);
}

#[test]
fn a_busy_host_is_waited_for_and_a_killed_runs_mapping_elsewhere_is_removed() {
    let Some(r) = rig(&[]) else {
        return;
    };
    let before = r.mappings();
    // A populator killed while it used another ESXi host left its group mapped.
    {
        let mut t = r.ontap.lock().unwrap();
        t.igroups.push((
            "ig-99".into(),
            "xcopy-hostsystem-host-99".into(),
            vec!["iqn.1998-01.com.vmware:gone".into()],
        ));
        t.maps.push(("lun-1".into(), "ig-99".into()));
    }
    // Both rescan slots of the host are held by other pods, for 2 more seconds.
    let host = r.vcsim.ready()["hosts"][0]["moref"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        let mut k = r.kube.lock().unwrap();
        for slot in 0..2 {
            let name = format!("esxi-lock-hostsystem-{host}-slot-{slot}");
            k.leases.push((
                "openshift-mtv".into(),
                name.clone(),
                json!({"metadata": {"name": name, "namespace": "openshift-mtv", "resourceVersion": "1"},
                       "spec": {"holderIdentity": format!("other-pod-{slot}"), "leaseDurationSeconds": 2,
                                "renewTime": ferry_pod::kube::format_time(ferry_pod::kube::now()),
                                "leaseTransitions": 0}}),
            ));
        }
    }
    let (out, _) = r.run();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rescan slot of hostsystem-host-"), "{err}");
    r.assert_cloned();
    assert_eq!(
        r.mappings(),
        before,
        "the leftover mapping is gone, the LUN's own is back"
    );
}

#[test]
fn missing_flags_exit_2_and_other_vendors_are_refused_at_start() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(binary("populator"))
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(&["vsphere-xcopy", "--source-vm-id=vm-1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    for f in [
        "--source-vmdk",
        "--owner-name",
        "--storage-vendor-product",
        "GOVMOMI_PASSWORD",
        "STORAGE_TOKEN",
    ] {
        assert!(e.contains(f), "{f} not named: {e}");
    }
    // Called by Forklift's binary names, with every flag and key but an unknown vendor.
    let dir = tempdir();
    for name in [
        "vsphere-copy-offload-populator",
        "vsphere-xcopy-volume-populator",
    ] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(binary("populator"), &link).unwrap();
        let out = Command::new(&link)
            .args([
                "--source-vm-id=vm-1",
                "--source-vmdk=[ds] vm/vm.vmdk",
                "--target-namespace=ns",
                "--cr-name=c",
                "--cr-namespace=ns",
                "--owner-name=p",
                "--secret-name=s",
                "--storage-vendor-product=vantara",
                "--storage-password=hunter2",
            ])
            .env_clear()
            .envs([
                ("STORAGE_HOSTNAME", "array"),
                ("STORAGE_TOKEN", "t"),
                ("GOVMOMI_HOSTNAME", "vc"),
                ("GOVMOMI_USERNAME", "u"),
                ("GOVMOMI_PASSWORD", "p"),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let e = stderr(&out);
        assert!(
            e.contains("vantara") && e.contains("ontap") && e.contains("pureFlashArray"),
            "{e}"
        );
        assert!(
            !e.contains("hunter2") && e.contains("--storage-password"),
            "{e}"
        );
    }
    // The SSH clone method without its key pair, or with a key that is not one.
    let args = [
        "vsphere-xcopy",
        "--source-vm-id=vm-1",
        "--source-vmdk=[ds] vm/vm.vmdk",
        "--target-namespace=ns",
        "--cr-name=c",
        "--cr-namespace=ns",
        "--owner-name=p",
        "--secret-name=s",
        "--storage-vendor-product=ontap",
    ];
    let base = [
        ("STORAGE_HOSTNAME", "array"),
        ("STORAGE_TOKEN", "t"),
        ("GOVMOMI_HOSTNAME", "vc"),
        ("GOVMOMI_USERNAME", "u"),
        ("GOVMOMI_PASSWORD", "p"),
    ];
    let secret = "LS0tLS1CRUdJTiBPUEVOU1NIIFBSSVZBVEUgS0VZLS0tLS0Kc2VjcmV0Cg==";
    for (extra, want) in [
        (
            vec![("ESXI_CLONE_METHOD", "ssh")],
            "needs SSH_PRIVATE_KEY and SSH_PUBLIC_KEY",
        ),
        (
            vec![
                ("ESXI_CLONE_METHOD", "ssh"),
                ("SSH_PRIVATE_KEY", secret),
                ("SSH_PUBLIC_KEY", "c3NoLWVkMjU1MTkgQUFBQQ=="),
            ],
            "SSH_PRIVATE_KEY is not an unencrypted OpenSSH or PEM private key",
        ),
        (vec![("ESXI_CLONE_METHOD", "telnet")], "'vib'"),
    ] {
        let env: Vec<_> = base.iter().copied().chain(extra).collect();
        let out = run(&args, &env);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let e = stderr(&out);
        assert!(e.contains(want), "{e}");
        assert!(!e.contains(secret), "{e}");
    }
}

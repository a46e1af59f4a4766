//! `populator vsphere-xcopy` (Forklift's copy-offload populator) end to end: the test vCenter
//! (vcsim-ferry, whose ESXi hosts answer esxcli `storage core` and Forklift's `vmkfstools`
//! plugin over the vSphere API, and whose clone copies the VM disk's flat file onto the device
//! the array's LUN stands for), the in-test ONTAP REST server (whose LUN is a loop device that
//! appears to ESXi while it is mapped to the host's initiators), and the in-test Kubernetes
//! API (PVC, PV, Leases over TLS with the service account's token). The loop device ends up
//! holding the disk byte for byte, and the array's mapping table ends as it began, whatever
//! step fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use test_kit::host::LoopDev;
use test_kit::metrics::scrape_until_exit;
use test_kit::vcsim::Vcsim;
use test_kit::xcopy::{
    kube, ontap, Kube, KubeTable, Ontap, OntapTable, San, ONTAP_PASSWORD, ONTAP_SVM, ONTAP_USER,
};
use test_kit::{binary, disk_bytes, s, tempdir, write_file};

const UID: &str = "2f7c1d9e-0000-4000-8000-00000000cafe";
const DISK: u64 = 24 << 20;
const SERIAL: &str = "wCVg4]DhZs-V";
const NS: &str = "vms";

/// Everything one population runs against.
struct Rig {
    vcsim: Vcsim,
    ontap: Ontap,
    ontap_url: String,
    kube: Kube,
    kube_port: u16,
    sa: PathBuf,
    lun: LoopDev,
    source: Vec<u8>,
    dir: tempfile::TempDir,
}

/// NetApp's NAA id of the fake LUN: its prefix and the serial number in hex.
fn naa() -> String {
    let hex: String = SERIAL.bytes().map(|b| format!("{b:02x}")).collect();
    format!("naa.600a0980{hex}")
}

/// Starts the peers; `None` when vcsim-ferry or loop devices are missing (outside CI).
fn rig(vcsim_args: &[&str]) -> Option<Rig> {
    let dir = tempdir();
    let devs = dir.path().join("devices");
    std::fs::create_dir(&devs).unwrap();
    let mut args = vec!["-esxcli-devices", s(&devs), "-areas", "0", "-capacity"];
    let cap = DISK.to_string();
    args.push(&cap);
    args.extend_from_slice(vcsim_args);
    let vcsim = Vcsim::start(&args)?;
    let lun = LoopDev::new(DISK, 0, false)?;

    // The VM's disk: its flat file in the datastore's directory.
    let vm = vcsim.vm().clone();
    let (ds, path) = vm
        .disk_file
        .trim_start_matches('[')
        .split_once("] ")
        .unwrap();
    let ds_dir = vcsim.ready()["datastores"][ds]
        .as_str()
        .unwrap_or_else(|| panic!("no directory for {ds}: {}", vcsim.ready()))
        .to_owned();
    let flat = Path::new(&ds_dir).join(path.replace(".vmdk", "-flat.vmdk"));
    std::fs::create_dir_all(flat.parent().unwrap()).unwrap();
    let source = disk_bytes(DISK as usize, 19);
    write_file(&flat, &source);

    let mut initiators = Vec::new();
    for h in vcsim.ready()["hosts"]
        .as_array()
        .expect("hosts in the ready line")
    {
        if let Some(i) = h["iqn"].as_str() {
            initiators.push(i.to_owned());
        }
    }
    let mut table = OntapTable::with_lun("trident_pvc_1", SERIAL);
    table.san = Some(San {
        dir: devs,
        initiators,
        devices: vec![("lun-1".into(), naa(), lun.path().to_owned())],
    });
    let (ontap_url, ontap) = ontap(table);
    let mut k = KubeTable::default();
    k.add_prime_bound_pvc(
        NS,
        "vm-disk-0",
        "pvc-uid-1",
        "pvc-1",
        json!({"internalName": "trident_pvc_1"}),
    );
    let (kube_port, sa, kube) = kube(dir.path(), k);
    Some(Rig {
        vcsim,
        ontap,
        ontap_url,
        kube,
        kube_port,
        sa,
        lun,
        source,
        dir,
    })
}

impl Rig {
    /// The populator's arguments, as Forklift's controller and the populator library pass them.
    fn args(&self, vendor: &str) -> Vec<String> {
        let vm = self.vcsim.vm();
        vec![
            format!("--source-vm-id={}", vm.moref),
            format!("--source-vmdk={}", vm.disk_file),
            format!("--target-namespace={NS}"),
            "--cr-name=vm-disk-0-xcopy".into(),
            format!("--cr-namespace={NS}"),
            "--owner-name=vm-disk-0".into(),
            "--secret-name=offload-secret".into(),
            format!("--storage-vendor-product={vendor}"),
            format!("--owner-uid={UID}"),
            format!("--pvc-size={DISK}"),
        ]
    }

    /// The pod's environment: the secret's keys, the service account's API server, and the
    /// short waits of the tests.
    fn env(&self) -> Vec<(String, String)> {
        let host = self
            .vcsim
            .url()
            .trim_start_matches("https://")
            .trim_end_matches("/sdk")
            .to_owned();
        [
            ("STORAGE_HOSTNAME", self.ontap_url.clone()),
            ("STORAGE_USERNAME", ONTAP_USER.into()),
            ("STORAGE_PASSWORD", ONTAP_PASSWORD.into()),
            ("ONTAP_SVM", ONTAP_SVM.into()),
            ("GOVMOMI_HOSTNAME", host),
            ("GOVMOMI_USERNAME", self.vcsim.user().into()),
            ("GOVMOMI_PASSWORD", self.vcsim.password().into()),
            ("thumbprint", self.vcsim.thumbprint().into()),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT", self.kube_port.to_string()),
            ("FERRY_SERVICE_ACCOUNT_DIR", s(&self.sa).into()),
            ("HOST_LEASE_NAMESPACE", "openshift-mtv".into()),
            ("HOSTNAME", "vm-disk-0-populator".into()),
            ("FERRY_XCOPY_POLL_MS", "200".into()),
            ("FERRY_XCOPY_RESCAN_WAIT_MS", "100".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn spawn(&self, args: &[String], env: &[(String, String)]) -> (Child, PathBuf) {
        let addr = self.dir.path().join(format!("metrics-{}", now_ns()));
        let child = Command::new(binary("populator"))
            .arg("vsphere-xcopy")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FERRY_METRICS_ADDR_FILE", &addr)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, addr)
    }

    /// Starts the populator and waits until its clone is under way (polled at least once).
    fn spawn_until_cloning(&self) -> Child {
        let (mut child, _) = self.spawn(&self.args("ontap"), &self.env());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.vcsim.log().contains("vmkfstools taskGet") {
            assert!(
                Instant::now() < deadline,
                "the clone never started: {}",
                self.vcsim.log()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the populator ended early"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Runs the populator to its end, scraping its metrics; its output and the scrapes.
    fn run(&self) -> (Output, Vec<String>) {
        let (child, addr) = self.spawn(&self.args("ontap"), &self.env());
        scrape_until_exit(child, &addr)
    }

    fn mappings(&self) -> Vec<(String, String)> {
        self.ontap.lock().unwrap().mapping_names()
    }

    /// The LUN holds the VM's disk.
    fn assert_cloned(&self) {
        let got = std::fs::read(self.lun.path()).unwrap();
        assert!(
            got[..DISK as usize] == self.source[..],
            "the LUN differs from the disk"
        );
    }

    /// What no output may contain.
    fn secrets(&self) -> Vec<String> {
        vec![
            ONTAP_PASSWORD.into(),
            self.vcsim.password().into(),
            test_kit::xcopy::KUBE_TOKEN.into(),
        ]
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `vsphere_xcopy_volume_populator_progress` as Forklift's controller reads it:
/// `vsphere_xcopy_volume_populator_progress\{[^}]*owner_uid="UID"[^}]*\} (\d+\.?\d*)`.
fn forklift_progress(text: &str, uid: &str) -> Option<f64> {
    let name = "vsphere_xcopy_volume_populator_progress{";
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = rest.split_once("} ")?;
        if !labels.contains(&format!("owner_uid=\"{uid}\"")) {
            return None;
        }
        let ok = value.chars().all(|c| c.is_ascii_digit() || c == '.')
            && value.matches('.').count() <= 1
            && value.starts_with(|c: char| c.is_ascii_digit());
        assert!(ok, "not what Forklift's regex takes: {l}");
        value.parse().ok()
    })
}

/// The value of the first sample of `name` whose labels hold every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (ls, v) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|x| ls.contains(x))
            .then(|| v.parse().ok())?
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last line of the output: the one-line error.
fn error_line(o: &Output) -> String {
    let e = stderr(o);
    let line = e
        .lines()
        .rev()
        .find(|l| l.starts_with("populator: error:"))
        .unwrap_or_else(|| panic!("no error line in: {e}"))
        .to_owned();
    eprintln!("{line}");
    line
}

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
    let t = r.ontap.lock().unwrap();
    let group = t
        .igroups
        .iter()
        .find(|g| g.1.starts_with("xcopy-hostsystem-host-"))
        .unwrap_or_else(|| panic!("no xcopy group: {:?}", t.igroups));
    assert!(
        group.2.iter().any(|i| i.starts_with("iqn.")),
        "{:?}",
        group.2
    );
    drop(t);

    // Progress rose through the clone to 100, as Forklift's controller reads it.
    let seen: Vec<f64> = scrapes
        .iter()
        .filter_map(|t| forklift_progress(t, UID))
        .collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    assert!(
        seen.iter().any(|p| *p > 0.0 && *p < 100.0),
        "no progress between: {seen:?}"
    );
    let last = scrapes.last().unwrap();
    assert_eq!(forklift_progress(last, UID), Some(100.0), "{last}");
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
    let took = sample(
        last,
        "vsphere_xcopy_volume_populator_copy_duration_seconds",
        &[
            &uid,
            "result=\"success\"",
            "xcopy_used=\"1\"",
            "clone_method=\"vib\"",
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
    for secret in r.secrets() {
        assert!(!err.contains(&secret), "a secret in the log: {err}");
        assert!(!scrapes.iter().any(|t| t.contains(&secret)));
        assert!(!log.contains(&secret), "a secret in vcsim's log: {log}");
    }
}

#[test]
fn a_host_copy_without_xcopy_is_reported() {
    let Some(r) = rig(&["-no-xcopy"]) else {
        return;
    };
    let (out, scrapes) = r.run();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    r.assert_cloned();
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
    assert!(sample(
        last,
        "vsphere_xcopy_volume_populator_copy_duration_seconds",
        &["xcopy_used=\"0\""]
    )
    .is_some());
}

#[test]
fn a_vcenter_that_hiccups_is_asked_again() {
    // Every third esxcli call is answered HTTP 503.
    let Some(r) = rig(&["-esxcli-hiccup-every", "3", "-clone-rate", "12582912"]) else {
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
    assert!(err.contains("try 1 of 3"), "{err}");
}

#[test]
fn a_failing_map_or_clone_or_a_device_that_never_shows_leaves_the_mappings_as_they_were() {
    // The array refuses the mapping.
    if let Some(r) = rig(&[]) {
        let before = r.mappings();
        r.ontap.lock().unwrap().fail_map = true;
        let (out, scrapes) = r.run();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            error_line(&out).contains("could not be created"),
            "{}",
            stderr(&out)
        );
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
        let (out, _) = r.run();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = error_line(&out);
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
        let (out, _) = r.run();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = error_line(&out);
        assert!(line.contains("exit code"), "{line}");
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
    let child = r.spawn_until_cloning();
    assert!(r.mappings().len() > before.len(), "mapped during the clone");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(error_line(&out).contains("SIGTERM"), "{}", stderr(&out));
    assert_eq!(r.mappings(), before, "SIGTERM leaves no mapping behind");

    // A new pod does the whole job.
    let (out, _) = r.run();
    assert!(out.status.success(), "{}", stderr(&out));
    r.assert_cloned();
    assert_eq!(r.mappings(), before);
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
    let (out, _) = r.run();
    assert!(out.status.success(), "{}", stderr(&out));
    r.assert_cloned();
    assert_eq!(r.mappings(), before);
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
}

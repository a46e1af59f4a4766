//! What the copy-offload populator's end-to-end tests share: the peers of one population
//! (vcsim-ferry, the in-test ONTAP or FlashArray and Kubernetes servers, a loop device as the
//! LUN), the populator's arguments and environment, and readers of its metrics and errors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use test_kit::host::LoopDev;
use test_kit::metrics::scrape_until_exit;
use test_kit::vcsim::Vcsim;
use test_kit::xcopy::{
    flasharray, kube, ontap, Kube, KubeTable, Ontap, OntapTable, Pure, PureTable, San,
    ONTAP_PASSWORD, ONTAP_SVM, ONTAP_USER, PURE_API_TOKEN, PURE_PASSWORD, PURE_SESSION, PURE_USER,
};
use test_kit::{binary, disk_bytes, s, tempdir, write_file};

pub const UID: &str = "2f7c1d9e-0000-4000-8000-00000000cafe";
pub const DISK: u64 = 24 << 20;
pub const SERIAL: &str = "wCVg4]DhZs-V";
pub const NS: &str = "vms";
/// The FlashArray volume's serial number.
pub const PURE_SERIAL: &str = "F4252922ADE248CF000113E6";
/// The volume name prefix of Pure's CSI driver in the tests.
pub const PURE_PREFIX: &str = "px";

/// Everything one population runs against.
pub struct Rig {
    pub vcsim: Vcsim,
    /// `ontap` or `pureFlashArray`: the array the populator is given.
    pub vendor: &'static str,
    /// The fake ONTAP (holding the LUN when `vendor` is `ontap`).
    pub ontap: Ontap,
    pub ontap_url: String,
    /// The fake FlashArray (holding the volume when `vendor` is `pureFlashArray`).
    pub pure: Pure,
    pub pure_url: String,
    pub kube: Kube,
    pub kube_port: u16,
    pub sa: PathBuf,
    pub lun: LoopDev,
    pub source: Vec<u8>,
    pub dir: tempfile::TempDir,
}

/// NetApp's NAA id of the fake LUN: its prefix and the serial number in hex.
pub fn naa() -> String {
    let hex: String = SERIAL.bytes().map(|b| format!("{b:02x}")).collect();
    format!("naa.600a0980{hex}")
}

/// Pure's NAA id of the fake volume: its prefix and the serial number.
pub fn pure_naa() -> String {
    format!("naa.624a9370{}", PURE_SERIAL.to_ascii_lowercase())
}

/// Starts the peers with the ONTAP array; `None` when vcsim-ferry or loop devices are missing
/// (outside CI).
pub fn rig(vcsim_args: &[&str]) -> Option<Rig> {
    rig_for("ontap", vcsim_args)
}

/// Starts the peers with the array `vendor` (`ontap` or `pureFlashArray`).
pub fn rig_for(vendor: &'static str, vcsim_args: &[&str]) -> Option<Rig> {
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

    // Every host's IQN and link-up FC ports: the SAN reaches them all.
    let mut initiators = Vec::new();
    for h in vcsim.ready()["hosts"]
        .as_array()
        .expect("hosts in the ready line")
    {
        initiators.extend(h["iqn"].as_str().map(str::to_owned));
        for fc in h["fc"].as_array().into_iter().flatten() {
            initiators.extend(fc.as_str().map(str::to_owned));
        }
    }
    let mut ontap_table = OntapTable::with_lun("trident_pvc_1", SERIAL);
    let mut pure_table = PureTable::with_volume(&format!("{PURE_PREFIX}-pvc-1"), PURE_SERIAL);
    match vendor {
        "ontap" => {
            ontap_table.san = Some(San {
                dir: devs,
                initiators,
                devices: vec![("lun-1".into(), naa(), lun.path().to_owned())],
            })
        }
        "pureFlashArray" => {
            pure_table.san = Some(San {
                dir: devs,
                initiators,
                devices: vec![(
                    format!("{PURE_PREFIX}-pvc-1"),
                    pure_naa(),
                    lun.path().to_owned(),
                )],
            })
        }
        _ => panic!("no fake array {vendor}"),
    }
    let (ontap_url, ontap) = ontap(ontap_table);
    let (pure_url, pure) = flasharray(pure_table);
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
        vendor,
        ontap,
        ontap_url,
        pure,
        pure_url,
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
    pub fn args(&self, vendor: &str) -> Vec<String> {
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
    pub fn env(&self) -> Vec<(String, String)> {
        let host = self
            .vcsim
            .url()
            .trim_start_matches("https://")
            .trim_end_matches("/sdk")
            .to_owned();
        let array = match self.vendor {
            "ontap" => [
                ("STORAGE_HOSTNAME", self.ontap_url.clone()),
                ("STORAGE_USERNAME", ONTAP_USER.into()),
                ("STORAGE_PASSWORD", ONTAP_PASSWORD.into()),
                ("ONTAP_SVM", ONTAP_SVM.into()),
            ],
            _ => [
                ("STORAGE_HOSTNAME", self.pure_url.clone()),
                ("STORAGE_USERNAME", PURE_USER.into()),
                ("STORAGE_PASSWORD", PURE_PASSWORD.into()),
                ("PURE_CLUSTER_PREFIX", PURE_PREFIX.into()),
            ],
        };
        array
            .into_iter()
            .chain([
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
            ])
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    pub fn spawn(&self, args: &[String], env: &[(String, String)]) -> (Child, PathBuf) {
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
    pub fn spawn_until_cloning(&self) -> Child {
        self.spawn_until_cloning_with(&self.env())
    }

    /// [`Rig::spawn_until_cloning`] with the environment `env`.
    pub fn spawn_until_cloning_with(&self, env: &[(String, String)]) -> Child {
        let (mut child, _) = self.spawn(&self.args(self.vendor), env);
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

    /// Sends SIGTERM to `child`, a populator cloning with the LUN mapped, and checks what a
    /// cancelled pod must leave: one SIGTERM error line, exit 1, the mappings as `before` and
    /// the device gone from the host.
    pub fn sigterm(&self, child: Child, before: &[(String, String)]) {
        assert!(
            self.mappings().len() > before.len(),
            "mapped during the clone"
        );
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(error_line(&out).contains("SIGTERM"), "{}", stderr(&out));
        assert_eq!(self.mappings(), before, "SIGTERM leaves no mapping behind");
        assert!(!self.dir.path().join("devices").join(self.naa()).exists());
    }

    /// Runs the populator to its end, scraping its metrics; its output and the scrapes.
    pub fn run(&self) -> (Output, Vec<String>) {
        self.run_with(&self.env())
    }

    /// [`Rig::run`] with the environment `env`.
    pub fn run_with(&self, env: &[(String, String)]) -> (Output, Vec<String>) {
        let (child, addr) = self.spawn(&self.args(self.vendor), env);
        scrape_until_exit(child, &addr)
    }

    /// Runs the populator with `env`, which must fail as a failed pod does: exit 1 with one
    /// `populator: error:` line. That line, the scrapes and the output.
    pub fn run_failing(&self, env: &[(String, String)]) -> (String, Vec<String>, Output) {
        let (out, scrapes) = self.run_with(env);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        (error_line(&out), scrapes, out)
    }

    /// Runs the populator with `env` after a failed or killed one: it must clone the whole
    /// disk and leave the mappings as `before`. Its output.
    pub fn run_to_completion(
        &self,
        env: &[(String, String)],
        before: &[(String, String)],
    ) -> Output {
        let (out, _) = self.run_with(env);
        assert!(out.status.success(), "{}", stderr(&out));
        self.assert_cloned();
        assert_eq!(self.mappings(), before);
        out
    }

    /// The array's mappings of its LUNs: (LUN, group), sorted.
    pub fn mappings(&self) -> Vec<(String, String)> {
        match self.vendor {
            "ontap" => self.ontap.lock().unwrap().mapping_names(),
            _ => self.pure.lock().unwrap().mapping_names(),
        }
    }

    /// The populator's group for the ESXi host on the array (ONTAP igroup, FlashArray host
    /// object): its name and initiators as the array holds them (FlashArray: IQNs, then WWNs).
    pub fn xcopy_group(&self) -> (String, Vec<String>) {
        let ours = |name: &str| name.starts_with("xcopy-hostsystem-host-");
        let found = match self.vendor {
            "ontap" => {
                let t = self.ontap.lock().unwrap();
                let g = t.igroups.iter().find(|g| ours(&g.1));
                g.map(|g| (g.1.clone(), g.2.clone()))
            }
            _ => {
                let t = self.pure.lock().unwrap();
                let h = t.hosts.iter().find(|h| ours(&h.0));
                h.map(|h| (h.0.clone(), h.1.iter().chain(&h.2).cloned().collect()))
            }
        };
        found.expect("no xcopy-hostsystem-* group on the array")
    }

    /// The NAA id ESXi sees the LUN by.
    pub fn naa(&self) -> String {
        match self.vendor {
            "ontap" => naa(),
            _ => pure_naa(),
        }
    }

    /// The LUN holds the VM's disk.
    pub fn assert_cloned(&self) {
        let got = std::fs::read(self.lun.path()).unwrap();
        assert!(
            got[..DISK as usize] == self.source[..],
            "the LUN differs from the disk"
        );
    }

    /// No secret in the populator's log `err`, its metrics or vcsim's log.
    pub fn assert_no_secret(&self, err: &str, scrapes: &[String]) {
        let log = self.vcsim.log();
        for secret in self.secrets() {
            assert!(!err.contains(&secret), "a secret in the log: {err}");
            assert!(!scrapes.iter().any(|t| t.contains(&secret)));
            assert!(!log.contains(&secret), "a secret in vcsim's log: {log}");
        }
    }

    /// What no output may contain.
    pub fn secrets(&self) -> Vec<String> {
        vec![
            ONTAP_PASSWORD.into(),
            PURE_PASSWORD.into(),
            PURE_API_TOKEN.into(),
            PURE_SESSION.into(),
            self.vcsim.password().into(),
            test_kit::xcopy::KUBE_TOKEN.into(),
        ]
    }
}

pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `vsphere_xcopy_volume_populator_progress` as Forklift's controller reads it:
/// `vsphere_xcopy_volume_populator_progress\{[^}]*owner_uid="UID"[^}]*\} (\d+\.?\d*)`.
pub fn forklift_progress(text: &str, uid: &str) -> Option<f64> {
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

/// Progress rose through the clone to 100, as Forklift's controller reads it.
pub fn assert_progress(scrapes: &[String]) {
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
}

/// The value of the first sample of `name` whose labels hold every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (ls, v) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|x| ls.contains(x))
            .then(|| v.parse().ok())?
    })
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last line of the output: the one-line error.
pub fn error_line(o: &Output) -> String {
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

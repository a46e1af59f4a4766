//! CDI importer mode with `IMPORTER_SOURCE=vddk`, as CDI's controller runs it: the VM found by
//! `IMPORTER_UUID` through the vCenter simulator (vcsim-ferry), the disk read through the fake
//! VDDK mounted where CDI mounts VDDK, cold and warm (`IMPORTER_CURRENT/PREVIOUS_CHECKPOINT`),
//! including a delta whose previous checkpoint is not the last one applied.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;
use test_kit::vcsim::Vcsim;
use test_kit::vddk::FakeVddk;
use test_kit::*;

const MIB: u64 = 1 << 20;
/// The ESXi host the fake VDDK says it opened the disk on.
const ESX_HOST: &str = "esx-7.example.test";

/// A pod root with CDI's VDDK mount pointing at the fake, and the simulator's VM.
struct Pod {
    root: TempDir,
    fake: FakeVddk,
    sim: Vcsim,
}

impl Pod {
    fn new(sim: Vcsim) -> Pod {
        let root = tempdir();
        for d in ["data", "dev", "opt"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        let fake = FakeVddk::new()
            .knob("FAKE_VDDK_PASSWORD", sim.password())
            .knob("FAKE_VDDK_ESX_HOST", ESX_HOST);
        std::os::unix::fs::symlink(
            fake.libdir(),
            root.path().join("opt/vmware-vix-disklib-distrib"),
        )
        .unwrap();
        Pod { root, fake, sim }
    }

    fn disk(&self) -> PathBuf {
        self.root.path().join("data/disk.img")
    }

    /// The fake's file for the VM's disk as the `nth` snapshot froze it (the base file for the
    /// first, then its children `vm-00000N.vmdk`, as ESXi names them), at `snapshot`; the base
    /// file with no snapshot.
    fn source_file(&self, snapshot: Option<(&str, usize)>) -> PathBuf {
        let base = &self.sim.vm().disk_file;
        let name = match snapshot {
            Some((_, n)) if n > 1 => {
                format!("{}-{:06}.vmdk", base.trim_end_matches(".vmdk"), n - 1)
            }
            _ => base.clone(),
        };
        let f = self.fake.file_of(&name);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        match snapshot {
            Some((s, _)) => PathBuf::from(format!("{}@{s}", f.display())),
            None => f,
        }
    }

    fn message(&self) -> String {
        std::fs::read_to_string(self.root.path().join("dev/termination-log")).unwrap()
    }

    fn run(&self, current: Option<&str>, previous: Option<&str>) -> Out {
        let out = self
            .command(current, previous)
            .output()
            .expect("running importer");
        Out::from(out)
    }

    /// The importer as CDI's pod runs it, at `current` after `previous` when given.
    fn command(&self, current: Option<&str>, previous: Option<&str>) -> Command {
        let vm = self.sim.vm();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_importer"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FERRY_CDI_ROOT", self.root.path())
            .envs(self.fake.env())
            .envs([
                ("IMPORTER_SOURCE", "vddk"),
                ("IMPORTER_ENDPOINT", self.sim.url()),
                ("IMPORTER_ACCESS_KEY_ID", self.sim.user()),
                ("IMPORTER_SECRET_KEY", self.sim.password()),
                ("IMPORTER_THUMBPRINT", self.sim.thumbprint()),
                ("IMPORTER_UUID", vm.uuid.as_str()),
                ("IMPORTER_BACKING_FILE", vm.disk_file.as_str()),
                ("IMPORTER_IMAGE_SIZE", "64Mi"),
                ("PREALLOCATION", "false"),
                ("OWNER_UID", "uid-7"),
            ])
            .stdin(Stdio::null());
        if let Some(c) = current {
            cmd.env("IMPORTER_CURRENT_CHECKPOINT", c);
            // As CDI sets it: the first copy is not final, a delta here is the cutover.
            let last = if previous.is_some() { "true" } else { "false" };
            cmd.env("IMPORTER_FINAL_CHECKPOINT", last);
        }
        if let Some(p) = previous {
            cmd.env("IMPORTER_PREVIOUS_CHECKPOINT", p);
        }
        cmd
    }
}

fn sim() -> Option<Vcsim> {
    Vcsim::start(&[
        "-areas",
        "200",
        "-page",
        "64",
        "-capacity",
        &(64 * MIB).to_string(),
    ])
}

fn assert_complete(pod: &Pod) {
    let v: serde_json::Value = serde_json::from_str(&pod.message()).expect("JSON");
    assert_eq!(v["message"], "Import Complete", "{v}");
    assert_eq!(v["vddkInfo"]["Version"], "8.0.3", "{v}");
    assert_eq!(v["vddkInfo"]["Host"], ESX_HOST, "{v}");
}

#[test]
fn a_cold_vddk_import_finds_the_vm_by_uuid_and_copies_the_disk() {
    let Some(sim) = sim() else { return };
    let pod = Pod::new(sim);
    let bytes = disk_bytes(64 * MIB as usize, 51);
    write_sparse(&pod.source_file(None), &bytes);

    let out = pod.run(None, None);

    assert!(out.status.success(), "{}\n{}", out.stderr, pod.message());
    assert_complete(&pod);
    assert_file_holds(&pod.disk(), &bytes);
    let connect = pod.fake.calls_of("ConnectEx");
    assert_eq!(
        connect[0]["vmxSpec"],
        format!("moref={}", pod.sim.vm().moref)
    );
}

#[test]
fn a_warm_vddk_import_applies_the_changed_areas_and_refuses_an_out_of_order_checkpoint() {
    let Some(sim) = sim() else { return };
    let pod = Pod::new(sim);
    let vm = pod.sim.vm().moref.clone();
    let s1 = pod.sim.create_snapshot(&vm);
    let base = disk_bytes(64 * MIB as usize, 52);
    write_sparse(&pod.source_file(Some((&s1, 1))), &base);
    let out = pod.run(Some(&s1), None);
    assert!(out.status.success(), "{}\n{}", out.stderr, pod.message());
    assert_file_holds(&pod.disk(), &base);

    let s2 = pod.sim.create_snapshot(&vm);
    let mut next = base.clone();
    for &(s, l) in &pod.sim.areas() {
        next[s as usize..(s + l) as usize].fill(0x6b);
    }
    write_sparse(&pod.source_file(Some((&s2, 2))), &next);
    let reads_before = pod.fake.calls_of("ReadAsync").len();
    let out = pod.run(Some(&s2), Some(&s1));

    assert!(out.status.success(), "{}\n{}", out.stderr, pod.message());
    assert_complete(&pod);
    assert_file_holds(&pod.disk(), &next);
    // IMPORTER_BACKING_FILE names the base file; s2 froze the VM's disk in its first child.
    let opened = pod.fake.calls_of("Open");
    assert!(
        opened.last().unwrap()["path"]
            .as_str()
            .unwrap()
            .ends_with("-000001.vmdk"),
        "{opened:?}"
    );
    let read: u64 = pod.fake.calls_of("ReadAsync")[reads_before..]
        .iter()
        .map(|c| c["count"].as_u64().unwrap() * 512)
        .sum();
    assert_eq!(
        read,
        pod.sim.areas().iter().map(|a| a.1).sum::<u64>(),
        "only the changes"
    );

    // A delta from s1 again, to a third snapshot: s2 was applied last, so it is refused and
    // the disk is left as it is.
    let s3 = pod.sim.create_snapshot(&vm);
    write_sparse(&pod.source_file(Some((&s3, 3))), &base);
    let out = pod.run(Some(&s3), Some(&s1));
    assert_eq!(out.status.code(), Some(1));
    assert!(pod.message().contains("out of order"), "{}", pod.message());
    assert_file_holds(&pod.disk(), &next);
}

/// A pod killed mid-import (an eviction, an OOM kill) and started again carries on from its
/// journal beside disk.img instead of copying the disk again.
#[test]
fn a_killed_import_pod_resumes_where_it_stopped() {
    let Some(sim) = sim() else { return };
    let mut pod = Pod::new(sim);
    // 256 MiB at 64 MiB/s: four work items, about 4 s.
    pod.fake = std::mem::take(&mut pod.fake).knob("FAKE_VDDK_BANDWIDTH", "67108864");
    let bytes = disk_bytes(256 * MIB as usize, 53);
    write_sparse(&pod.source_file(None), &bytes);
    let journal = pod.root.path().join("data/disk.img.ferry-journal");

    let mut child = pod.command(None, None).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !journal.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no journal was written"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let reads_before = pod.fake.calls_of("ReadAsync").len();
    let out = pod.run(None, None);

    assert!(out.status.success(), "{}\n{}", out.stderr, pod.message());
    assert!(out.stderr.contains("resuming"), "{}", out.stderr);
    assert_complete(&pod);
    assert_file_holds(&pod.disk(), &bytes);
    assert!(!journal.exists());
    let read: u64 = pod.fake.calls_of("ReadAsync")[reads_before..]
        .iter()
        .map(|c| c["count"].as_u64().unwrap() * 512)
        .sum();
    assert!(
        read < 256 * MIB,
        "the second pod read {read} bytes, not the whole disk"
    );
}

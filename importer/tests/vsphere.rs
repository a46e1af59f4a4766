//! vSphere changed-block tracking against govmomi's vCenter simulator, fronted by ferry's
//! launcher (`importer/tests/fixtures/vcsim`) that adds QueryChangedDiskAreas with ESXi's
//! paging, its faults and session expiry: changed areas read page by page to the capacity, a
//! snapshot moref as the previous checkpoint, faults and expired sessions, a refused login and
//! a wrong thumbprint, and a whole delta read through the fake VDDK.

use std::path::Path;

use serde_json::Value;
use test_kit::vcsim::Vcsim;
use test_kit::vddk::FakeVddk;
use test_kit::*;

const MIB: u64 = 1 << 20;

/// The vddk:// URL of the simulator's first VM and disk.
fn url(sim: &Vcsim, thumbprint: &str) -> String {
    url_with(sim, thumbprint, &format!("vm=moref={}", sim.vm().moref))
}

/// The vddk:// URL of the simulator naming the VM by `vm` (`vm=moref=...` or `uuid=...`).
fn url_with(sim: &Vcsim, thumbprint: &str, vm: &str) -> String {
    sim.vddk_url(thumbprint, vm, "&libdir=/nonexistent")
}

/// `importer extents URL --dirty --vddk file=DISK --previous-checkpoint PREV` with the password.
fn dirty(sim: &Vcsim, thumbprint: &str, previous: &str, password: &str) -> Out {
    let file = format!("file={}", sim.vm().disk_file);
    spawn_importer_env(
        &[
            "extents",
            &url(sim, thumbprint),
            "--dirty",
            "--vddk",
            &file,
            "--previous-checkpoint",
            previous,
        ],
        &[("VDDK_PASSWORD".into(), password.into())],
    )
    .finish()
}

fn ranges(out: &Out) -> Vec<(u64, u64)> {
    assert!(out.status.success(), "importer failed: {}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// The simulator's areas, merged as a delta set merges them.
fn merged(areas: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, l) in areas {
        match out.last_mut() {
            Some((o, n)) if *o + *n == s => *n += l,
            _ => out.push((s, l)),
        }
    }
    out
}

#[test]
fn changed_areas_are_read_page_by_page_up_to_the_capacity() {
    let Some(sim) = Vcsim::start(&["-areas", "5000", "-page", "2000"]) else {
        return;
    };

    let out = dirty(&sim, sim.thumbprint(), &sim.vm().change_id, sim.password());

    let got = ranges(&out);
    assert_eq!(got, merged(&sim.areas()), "all three pages, nothing more");
    assert_eq!(sim.areas().len(), 5000);
}

#[test]
fn a_snapshot_moref_as_the_previous_checkpoint_is_looked_up() {
    let Some(sim) = Vcsim::start(&["-areas", "300", "-page", "100"]) else {
        return;
    };
    let snap = sim.create_snapshot(&sim.vm().moref);

    let out = dirty(&sim, sim.thumbprint(), &snap, sim.password());
    assert_eq!(ranges(&out), merged(&sim.areas()));

    let out = dirty(&sim, sim.thumbprint(), "snapshot-999", sim.password());
    out.assert_clean_failure(&[
        "a full copy is needed",
        "snapshot-999",
        "ManagedObjectNotFound",
    ]);
}

#[test]
fn a_fault_means_a_full_copy_and_no_partial_delta() {
    let Some(sim) = Vcsim::start(&["-areas", "300", "-page", "100"]) else {
        return;
    };

    let reset = dirty(&sim, sim.thumbprint(), "reset", sim.password());
    let bad = dirty(&sim, sim.thumbprint(), "52 00/", sim.password());

    reset.assert_clean_failure(&["a full copy is needed", "FileFault", "CBT was reset"]);
    bad.assert_clean_failure(&["a full copy is needed", "InvalidArgument"]);
}

#[test]
fn an_expired_session_is_logged_in_again_and_the_pages_continue() {
    let Some(sim) = Vcsim::start(&["-areas", "5000", "-page", "1000", "-expire-after", "2"]) else {
        return;
    };

    let out = dirty(&sim, sim.thumbprint(), &sim.vm().change_id, sim.password());

    assert_eq!(ranges(&out), merged(&sim.areas()));
}

#[test]
fn a_vcenter_that_answers_503_is_asked_again_and_the_delta_stays_whole() {
    // Every second page query (and every second property read) is answered HTTP 503.
    let Some(sim) = Vcsim::start(&["-areas", "5000", "-page", "1000", "-hiccup-every", "2"]) else {
        return;
    };

    let out = dirty(&sim, sim.thumbprint(), &sim.vm().change_id, sim.password());

    assert_eq!(
        ranges(&out),
        merged(&sim.areas()),
        "every page, no full copy"
    );
    let log = sim.log();
    assert!(log.contains("changed areas hiccup"), "{log}");
    assert!(
        out.stderr.contains("asking again (try 1 of 3)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_refused_login_and_a_wrong_thumbprint_are_clear_errors() {
    let Some(sim) = Vcsim::start(&[]) else {
        return;
    };
    let other = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33";

    let login = dirty(&sim, sim.thumbprint(), "*", "not-the-password");
    let tls = dirty(&sim, other, "*", sim.password());

    login.assert_clean_failure(&["Login", "InvalidLogin"]);
    assert!(!login.stderr.contains("not-the-password"));
    tls.assert_clean_failure(&["thumbprint"]);
}

/// The simulator (with `areas` changed areas in pages of `page`, disks of `capacity` bytes) and
/// the fake VDDK serving its first VM's disk from a file.
struct VddkDisk {
    sim: Vcsim,
    fake: FakeVddk,
    /// The file behind the disk.
    file: std::path::PathBuf,
}

impl VddkDisk {
    fn start(areas: &str, page: &str, capacity: u64) -> Option<VddkDisk> {
        let sim = Vcsim::start(&[
            "-areas",
            areas,
            "-page",
            page,
            "-capacity",
            &capacity.to_string(),
        ])?;
        let fake = FakeVddk::new().knob("FAKE_VDDK_PASSWORD", sim.password());
        let file = fake.file_of(&sim.vm().disk_file);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        Some(VddkDisk { sim, fake, file })
    }

    /// `importer copy URL TARGET --vddk file=DISK --vddk libdir=FAKE EXTRA...`, the password
    /// in the environment.
    fn copy(&self, url: &str, target: &Path, extra: &[&str]) -> Out {
        let file_arg = format!("file={}", self.sim.vm().disk_file);
        let libdir_arg = format!("libdir={}", s(self.fake.libdir()));
        let mut env = self.fake.env();
        env.push(("VDDK_PASSWORD".into(), self.sim.password().into()));
        let mut args = vec![
            "copy",
            url,
            s(target),
            "--vddk",
            &file_arg,
            "--vddk",
            &libdir_arg,
        ];
        args.extend_from_slice(extra);
        spawn_importer_env(&args, &env).finish()
    }
}

#[test]
fn a_vmware_warm_migration_reads_only_the_changed_areas_through_vddk() {
    let capacity = 64 * MIB;
    let Some(d) = VddkDisk::start("300", "100", capacity) else {
        return;
    };
    let (sim, fake) = (&d.sim, &d.fake);
    let base = disk_bytes(capacity as usize, 31);
    write_sparse(&d.file, &base);
    let dir = tempdir();
    let target = dir.path().join("disk.img");
    let url = url(sim, sim.thumbprint());
    let run = |extra: &[&str]| d.copy(&url, &target, extra);
    // The base copy records the disk's change id as its checkpoint, the delta starts from it.
    let out = run(&["--checkpoint", &sim.vm().change_id]);
    assert!(out.status.success(), "base copy: {}", out.stderr);
    // The guest writes exactly the simulator's changed areas.
    let mut next = base.clone();
    for (i, &(s, l)) in sim.areas().iter().enumerate() {
        next[s as usize..(s + l) as usize].fill(0x80 | (i % 100) as u8);
    }
    write_sparse(&d.file, &next);
    let reads_before = fake.calls_of("ReadAsync").len();

    let out = run(&[
        "--delta",
        "--checkpoint",
        "cp2",
        "--previous-checkpoint",
        &sim.vm().change_id,
    ]);

    assert!(out.status.success(), "delta: {}", out.stderr);
    assert_file_holds(&target, &next);
    let line: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let changed: u64 = sim.areas().iter().map(|a| a.1).sum();
    assert_eq!(line["delta_bytes"], changed);
    let read: u64 = fake.calls_of("ReadAsync")[reads_before..]
        .iter()
        .map(|c| c["count"].as_u64().unwrap() * 512)
        .sum();
    assert_eq!(read, changed, "only the changed areas are read from VDDK");
    assert!(Path::new(&format!("{}.checkpoints.json", s(&target))).exists());
}

#[test]
fn a_vddk_delta_logs_in_to_vsphere_once() {
    let capacity = 16 * MIB;
    let Some(d) = VddkDisk::start("40", "10", capacity) else {
        return;
    };
    let sim = &d.sim;
    write_sparse(&d.file, &disk_bytes(capacity as usize, 5));
    let dir = tempdir();
    let target = dir.path().join("disk.img");
    // Named by UUID: the VM and its disk are looked up, then the changed areas are read.
    let url = url_with(sim, sim.thumbprint(), &format!("uuid={}", sim.vm().uuid));
    let run = |extra: &[&str]| d.copy(&url, &target, extra);
    let logins = || sim.log().matches("vcsim-ferry: Login").count();
    let out = run(&["--checkpoint", &sim.vm().change_id]);
    assert!(out.status.success(), "base copy: {}", out.stderr);
    let before = logins();

    let out = run(&[
        "--delta",
        "--checkpoint",
        "cp2",
        "--previous-checkpoint",
        &sim.vm().change_id,
    ]);

    assert!(out.status.success(), "delta: {}", out.stderr);
    assert_eq!(logins() - before, 1, "one vSphere login per delta");
}

#[test]
fn the_vm_is_found_by_its_instance_or_bios_uuid() {
    let Some(sim) = Vcsim::start(&["-areas", "300", "-page", "100"]) else {
        return;
    };
    let vm = sim.vm();
    let file = format!("file={}", vm.disk_file);
    let by = |uuid: &str| {
        let url = url_with(&sim, sim.thumbprint(), &format!("uuid={uuid}"));
        spawn_importer_env(
            &[
                "extents",
                &url,
                "--dirty",
                "--vddk",
                &file,
                "--previous-checkpoint",
                "*",
            ],
            &[("VDDK_PASSWORD".into(), sim.password().into())],
        )
        .finish()
    };

    assert_eq!(ranges(&by(&vm.instance_uuid)), merged(&sim.areas()));
    assert_eq!(ranges(&by(&vm.uuid)), merged(&sim.areas()));
    by("00000000-0000-0000-0000-000000000000").assert_clean_failure(&["no VM with UUID"]);
}

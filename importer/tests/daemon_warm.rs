//! A VMware warm migration through the daemon: a base copy and three deltas of one disk,
//! read through the fake VDDK with the changed areas from the vCenter simulator (vcsim-ferry).
//! The daemon keeps the vSphere login and the VDDK connection between checkpoints: the whole
//! migration makes one Login (counted in the simulator's log) and one ConnectEx (in the fake
//! VDDK's call log), and both are closed once idle.

use std::time::{Duration, Instant};

use test_kit::daemon::Daemon;
use test_kit::vcsim::Vcsim;
use test_kit::vddk::FakeVddk;
use test_kit::*;

const MIB: u64 = 1 << 20;

/// The change id of checkpoint `n` of the disk whose first change id is `first` (`.../1`).
fn change_id(first: &str, n: usize) -> String {
    let (stem, _) = first.rsplit_once('/').expect("a change id ends in /N");
    format!("{stem}/{n}")
}

#[test]
fn a_warm_migration_through_the_daemon_logs_in_and_connects_once() {
    let capacity = 16 * MIB;
    let Some(sim) = Vcsim::start(&[
        "-areas",
        "40",
        "-page",
        "10",
        "-capacity",
        &capacity.to_string(),
    ]) else {
        return;
    };
    let fake = FakeVddk::new().knob("FAKE_VDDK_PASSWORD", sim.password());
    let vm = sim.vm().clone();
    let file = fake.file_of(&vm.disk_file);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut disk = disk_bytes(capacity as usize, 7);
    write_sparse(&file, &disk);

    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, sim.password()).unwrap();
    let mut d = Daemon::start_env(dir.path(), &root, &["--session-idle", "3"], &fake.env());
    let source = sim.vddk_url(sim.thumbprint(), &format!("vm=moref={}", vm.moref), "");
    let target = root.join("disk.img");
    let submit = |extra: &str| {
        let (st, v) = d.post(&format!(
            r#"{{"source":"{source}","target":"{}","vddk":{{"file":"{}","libdir":"{}"}},"secrets":{{"password_file":"{}"}},"options":{{"connections":1}}{extra}}}"#,
            target.display(),
            vm.disk_file,
            fake.libdir().display(),
            password.display()
        ));
        assert_eq!(st, 201, "{v}");
        let v = d.wait(v["id"].as_str().unwrap());
        assert_eq!(v["state"], "succeeded", "{v}");
        v
    };

    submit(&format!(r#","checkpoint":"{}""#, vm.change_id));
    assert_file_holds(&target, &disk);
    for n in 2..=4 {
        // The guest writes exactly the simulator's changed areas.
        for (i, &(s, l)) in sim.areas().iter().enumerate() {
            disk[s as usize..(s + l) as usize].fill((n * 16 + i % 16) as u8);
        }
        write_sparse(&file, &disk);
        let v = submit(&format!(
            r#","delta":{{"changes":"source"}},"checkpoint":"{}","previous_checkpoint":"{}""#,
            change_id(&vm.change_id, n),
            change_id(&vm.change_id, n - 1)
        ));
        assert_file_holds(&target, &disk);
        let changed: u64 = sim.areas().iter().map(|a| a.1).sum();
        assert_eq!(v["summary"]["delta_bytes"], changed, "{v}");
        assert_eq!(v["bytes_done"], changed, "only the changes are copied: {v}");
    }

    let logins = sim.log().matches("vcsim-ferry: Login").count();
    assert_eq!(logins, 1, "one vSphere login for the three deltas");
    assert_eq!(fake.calls_of("ConnectEx").len(), 1, "one VDDK connection");
    assert_eq!(
        fake.calls_of("Open").len(),
        4,
        "one disk open per checkpoint"
    );
    let kept = |name: &str| {
        d.metrics()
            .into_iter()
            .find(|(k, _)| k == name)
            .map_or(-1.0, |(_, v)| v)
    };
    assert_eq!(kept("ferry_kept_vddk_connections"), 1.0);
    assert_eq!(kept("ferry_kept_vsphere_logins"), 1.0);

    // Idle for longer than --session-idle: disconnected and logged out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.calls_of("Disconnect").is_empty() || kept("ferry_kept_vsphere_logins") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the idle sessions were not closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(kept("ferry_kept_vddk_connections"), 0.0);
    let out = d.stop();
    assert!(
        !out.stderr.contains(sim.password()),
        "the password is never logged"
    );
    assert_eq!(fake.calls_of("ConnectEx").len(), 1);
}

//! The fake VDDK (`vddk-sys/fake`) installed for an importer run: a VDDK directory whose
//! `lib64/libvixDiskLib.so.N` links to the built fake library, a datastore root holding raw
//! disk files, the knobs (`FAKE_VDDK_*`) to pass in the importer's environment, and the call
//! log the fake writes, parsed. The knobs and the log format are documented in
//! `vddk-sys/fake/src/lib.rs`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::{s, spawn_importer_env, tempdir, Out};

/// The SHA-1 thumbprint the `vddk://` URLs of the tests carry.
pub const TP: &str = "0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9:0a:1b:2c:3d";
/// The password the tests give VDDK (in VDDK_PASSWORD).
pub const PASSWORD: &str = "s3cr3t-Pa55word";

/// The datastore `add_disk` writes to.
const DATASTORE: &str = "datastore1";

/// Bytes of the blocks `add_disk` leaves as holes when they are all zeros.
const HOLE_BLOCK: usize = 64 * 1024;

/// A fake VDDK installation with its datastores and call log (all removed when dropped).
pub struct FakeVddk {
    dir: TempDir,
    /// The VDDK directory, `dir`/vddk.
    libdir: PathBuf,
    knobs: Vec<(String, String)>,
}

impl FakeVddk {
    /// The vddk:// URL of the fake's vCenter for VM vm-42 (the disk goes in `--vddk file=`).
    pub fn url(&self) -> String {
        format!(
            "vddk://administrator%40vsphere.local@vcenter.example/?vm=moref=vm-42&thumbprint={TP}&libdir={}",
            s(self.libdir())
        )
    }

    /// `importer copy URL TARGET --vddk file=DISK EXTRA...` with the fake.
    pub fn copy(&self, disk: &str, target: &Path, extra: &[&str]) -> Out {
        let url = self.url();
        let file = format!("file={disk}");
        let mut args = vec!["copy", &url, s(target), "--vddk", &file];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Runs `importer ARGS` with the fake's environment and the password in VDDK_PASSWORD (the
    /// fake expects that password unless the test set another).
    pub fn run(&self, args: &[&str]) -> Out {
        let mut env = self.env();
        env.push(("VDDK_PASSWORD".into(), PASSWORD.into()));
        if !env.iter().any(|(k, _)| k == "FAKE_VDDK_PASSWORD") {
            env.push(("FAKE_VDDK_PASSWORD".into(), PASSWORD.into()));
        }
        spawn_importer_env(args, &env).finish()
    }

    /// A VDDK 8 directory: `lib64/libvixDiskLib.so.8` -> the built `libvddk_fake.so`.
    pub fn new() -> FakeVddk {
        FakeVddk::install("libvddk_fake.so", 8)
    }

    /// An old VDDK 6.5 directory: `lib64/libvixDiskLib.so.6` -> the built
    /// `libvddk_fake_65.so`, which lacks the calls VDDK 6.7 added.
    pub fn v65() -> FakeVddk {
        FakeVddk::install("libvddk_fake_65.so", 6)
    }

    fn install(file: &str, major: u32) -> FakeVddk {
        let dir = tempdir();
        let libdir = dir.path().join("vddk");
        let lib64 = libdir.join("lib64");
        std::fs::create_dir_all(&lib64).expect("creating the VDDK directory");
        std::fs::create_dir(dir.path().join("datastores")).expect("creating the datastores");
        std::os::unix::fs::symlink(built(file), lib64.join(format!("libvixDiskLib.so.{major}")))
            .expect("linking the fake VixDiskLib");
        FakeVddk {
            dir,
            libdir,
            knobs: Vec::new(),
        }
    }

    /// The VDDK directory (what `--vddk-libdir` or CDI's mount names).
    pub fn libdir(&self) -> &Path {
        &self.libdir
    }

    /// The datastore root (`FAKE_VDDK_ROOT`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("datastores")
    }

    /// The call log (`FAKE_VDDK_LOG`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// Writes `bytes` as the raw disk `"[datastore1] NAME/NAME.vmdk"`, leaving all-zero 64 KiB
    /// blocks as holes (so the default allocation map has them), and returns that path.
    pub fn add_disk(&self, name: &str, bytes: &[u8]) -> String {
        let path = format!("[{DATASTORE}] {name}/{name}.vmdk");
        write_holey(&self.file_of(&path), bytes);
        path
    }

    /// Writes the contents of the snapshot `snapshot` (a moref, "snapshot-N") of the disk at
    /// the datastore path `disk`.
    pub fn add_snapshot(&self, disk: &str, snapshot: &str, bytes: &[u8]) {
        let file = self.file_of(disk);
        write_holey(Path::new(&format!("{}@{snapshot}", s(&file))), bytes);
    }

    /// The local file behind the datastore path `"[DATASTORE] rel"`.
    pub fn file_of(&self, path: &str) -> PathBuf {
        let (datastore, rel) = path
            .strip_prefix('[')
            .and_then(|p| p.split_once("] "))
            .unwrap_or_else(|| panic!("{path:?} is no datastore path"));
        self.root().join(datastore).join(rel)
    }

    /// Sets the knob `key` (`FAKE_VDDK_LATENCY_US`, `FAKE_VDDK_FAIL`, ...) for the runs.
    pub fn knob(mut self, key: &str, value: &str) -> Self {
        assert!(
            key.starts_with("FAKE_VDDK_"),
            "{key} is no knob of the fake VDDK"
        );
        self.knobs.retain(|(k, _)| k != key);
        self.knobs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The environment of an importer run: the datastore root, the call log and the knobs.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("FAKE_VDDK_ROOT".to_owned(), s(&self.root()).to_owned()),
            ("FAKE_VDDK_LOG".to_owned(), s(&self.log_path()).to_owned()),
        ];
        env.extend(self.knobs.iter().cloned());
        env
    }

    /// The call log, one JSON object per call (empty before any call).
    pub fn calls(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("call log line {l:?}: {e}")))
            .collect()
    }

    /// The calls named `call` ("Read", "ReadAsync", "QueryAllocatedBlocks", ...).
    pub fn calls_of(&self, call: &str) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["call"] == call)
            .collect()
    }

    /// The call log's text (for "the password never appears" checks).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Default for FakeVddk {
    fn default() -> Self {
        FakeVddk::new()
    }
}

/// Writes `bytes` to a new file at `path` (creating its directory), skipping all-zero
/// `HOLE_BLOCK`s.
fn write_holey(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("creating the disk's dir");
    let f = File::create(path).expect("creating the disk");
    f.set_len(bytes.len() as u64).expect("sizing the disk");
    let data = bytes
        .chunks(HOLE_BLOCK)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0));
    for (i, block) in data {
        f.write_all_at(block, (i * HOLE_BLOCK) as u64)
            .expect("writing the disk");
    }
}

/// A fake library built in this workspace (target/<profile>/deps/, or target/<profile>/), or
/// a panic saying how to build it.
fn built(file: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    [deps.join(file), deps.parent().unwrap_or(deps).join(file)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{file} is not built in {}: run `cargo build --release -p vddk-fake -p vddk-fake-65` \
                 (`cargo test --workspace` builds it)",
                deps.display()
            )
        })
}

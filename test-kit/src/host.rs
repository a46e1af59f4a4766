//! What a test needs of the host besides the peers: a tmpfs of a given size and loop devices
//! (both need root). Unavailable, they skip the test through [`crate::unavailable`], which
//! fails it under CI.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{run_ok, s, tempdir, unavailable};

/// A tmpfs of a given size mounted on a directory (unmounted when dropped).
pub struct Tmpfs {
    dir: PathBuf,
    _made: Option<TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4M`, `1G`) on a new directory; `None` (a skip) without the
    /// privilege to mount.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let made = tempdir();
        let mut t = Tmpfs::mount_on(made.path(), size)?;
        t._made = Some(made);
        Some(t)
    }

    /// Mounts a tmpfs of `size` on the existing directory `dir` (a pod's volume).
    pub fn mount_on(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_owned(),
                _made: None,
            }),
            other => {
                unavailable(&format!("mounting a tmpfs (needs root): {other:?}"));
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Remounts it read-only.
    pub fn remount_read_only(&self) {
        run_ok("mount", &["-o", "remount,ro", s(self.path())]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A loop device over a temporary file (detached when dropped).
pub struct LoopDev {
    dev: PathBuf,
    _backing: tempfile::NamedTempFile,
}

impl LoopDev {
    /// A loop device of `size` bytes whose every byte is `fill`, read-only if asked; `None` (a
    /// skip) when loop devices cannot be used here.
    pub fn new(size: u64, fill: u8, read_only: bool) -> Option<LoopDev> {
        let backing = tempfile::NamedTempFile::new().unwrap();
        backing
            .as_file()
            .write_all_at(&vec![fill; size as usize], 0)
            .unwrap();
        let mut cmd = Command::new("losetup");
        if read_only {
            cmd.arg("-r");
        }
        match cmd.args(["--find", "--show"]).arg(backing.path()).output() {
            Ok(o) if o.status.success() => Some(LoopDev {
                dev: PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
                _backing: backing,
            }),
            other => {
                unavailable(&format!("loop devices (need root and losetup): {other:?}"));
                None
            }
        }
    }

    /// The device, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.dev
    }

    /// Makes a device node for it at `at` (as the kubelet makes a pod's block volume).
    pub fn node_at(&self, at: &Path) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        let (major, minor) = (libc_major(rdev), libc_minor(rdev));
        run_ok(
            "mknod",
            &[s(at), "b", &major.to_string(), &minor.to_string()],
        );
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

/// The minor number of a Linux `dev_t` (glibc's `gnu_dev_minor`).
fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

//! The vSphere peer: govmomi's vCenter simulator (vcsim) wrapped in ferry's launcher
//! (`importer/tests/fixtures/vcsim/main.go`, built by scripts/install-peers.sh into
//! `.peers/bin/vcsim-ferry`), which adds changed-block tracking: disk changeIds, snapshots that
//! carry the next one, `QueryChangedDiskAreas` and a session that can be made to expire.
//!
//! The launcher listens on a random 127.0.0.1 port with vcsim's self-signed certificate, checks
//! fixed credentials, and prints one JSON line describing itself when ready. It serves until its
//! stdin reaches EOF: dropping [`Vcsim`] closes stdin (and kills it should it linger).
//!
//! Launcher flags (for [`Vcsim::start`]):
//! - `-areas N` (5000): changed areas of 64 KiB at distinct aligned offsets, the same on every run;
//! - `-page P` (2000): areas per `QueryChangedDiskAreas` answer at the most;
//! - `-capacity BYTES` (1 GiB): the capacity of every VM disk;
//! - `-expire-after N` (0, never): the session is dropped once after N successful
//!   `QueryChangedDiskAreas` calls, so the next call fails with NotAuthenticated;
//! - `-login-delay DURATION` (0): every SOAP `Login` waits that long (a Go duration: `1.5s`,
//!   `300ms`) before it is answered, as a real vCenter's login takes its time;
//! - `-trace`: vcsim's SOAP traffic on the launcher's stderr ([`Vcsim::log`]);
//! - `-esxcli-devices DIR`: every host answers esxcli over the vSphere API (`storage core`
//!   adapters, devices and rescans, `system settings advanced list`, Forklift's `vmkfstools`
//!   plugin); the `naa.*` entries of DIR are the LUNs mapped to the hosts, and a clone copies
//!   the VM disk's flat file (in the datastore directory of the ready line) onto the entry's
//!   device; each call is logged as `vcsim-ferry: esxcli WORDS name=value ...`;
//! - `-rescans-needed N` (1; 0: never), `-clone-rate BYTES_PER_S` (0: unlimited),
//!   `-clone-fail-at PERCENT` (-1: never), `-no-xcopy` (clones report a host copy),
//!   `-hiccup-every N` (0: never; every N-th esxcli call, property read and
//!   QueryChangedDiskAreas, each counted on its own, answered HTTP 503).
//!
//! `QueryChangedDiskAreas` faults: an unknown deviceKey or a startOffset at or past the capacity
//! give InvalidArgument; changeId `reset` gives FileFault ("CBT was reset"); a snapshot that is not
//! one of the VM's gives ManagedObjectNotFound; a changeId that is neither `*` nor of the form
//! `"52 2d ... 7b/N"` gives InvalidArgument.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{peer_missing, s, tempdir};

/// How long the launcher may take to print its ready line.
const START: Duration = Duration::from_secs(60);
/// How long the launcher may take to exit once its stdin is closed.
const STOP: Duration = Duration::from_secs(10);

/// One VM of the simulator, with its first disk.
#[derive(Debug, Clone, PartialEq)]
pub struct VmInfo {
    /// The VM's name (`DC0_H0_VM0`).
    pub name: String,
    /// Its managed object reference value (`vm-27`).
    pub moref: String,
    /// Its BIOS UUID (`config.uuid`).
    pub uuid: String,
    /// Its instance UUID (`config.instanceUuid`).
    pub instance_uuid: String,
    /// The key of its first disk.
    pub disk_key: i32,
    /// That disk's backing file (`[LocalDS_0] DC0_H0_VM0/disk1.vmdk`).
    pub disk_file: String,
    /// That disk's capacity in bytes.
    pub capacity: u64,
    /// That disk's changeId before any snapshot (ends in `/1`; snapshot n carries `/n+1`).
    pub change_id: String,
}

/// A running vcsim-ferry.
pub struct Vcsim {
    child: Child,
    /// Closing it (EOF) tells the launcher to clean up and exit.
    stdin: Option<ChildStdin>,
    /// The dump file, stderr log, and `TMPDIR` of the launcher (vcsim's datastore directories).
    dir: TempDir,
    url: String,
    thumbprint: String,
    user: String,
    password: String,
    vms: Vec<VmInfo>,
    areas: Vec<(u64, u64)>,
    ready: serde_json::Value,
}

impl Vcsim {
    /// The launcher binary inside the repository's peer directory.
    pub fn binary() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/bin/vcsim-ferry")
    }

    /// Starts `.peers/bin/vcsim-ferry` with `args` (launcher flags, see the module docs; not
    /// `-dump`, which the harness sets) and waits for its ready line. `None` (after
    /// [`peer_missing`], which panics under CI) when the binary is missing.
    pub fn start(args: &[&str]) -> Option<Vcsim> {
        let bin = Vcsim::binary();
        if !bin.is_file() {
            peer_missing(&format!("vcsim-ferry ({})", bin.display()));
            return None;
        }
        let dir = tempdir();
        let dump = dir.path().join("areas.json");
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(&bin)
            .args(args)
            .args(["-dump", s(&dump)])
            .env("TMPDIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("creating the launcher's log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let ready = read_ready_line(&mut child, &log);
        let v: serde_json::Value = serde_json::from_str(&ready)
            .unwrap_or_else(|e| panic!("vcsim-ferry's ready line is not JSON ({e}): {ready}"));
        let vms = v["vms"]
            .as_array()
            .unwrap_or_else(|| panic!("no 'vms' in {v}"))
            .iter()
            .map(vm_info)
            .collect::<Vec<_>>();
        assert!(!vms.is_empty(), "vcsim-ferry has no VM: {v}");
        let areas = read_areas(&dump);
        Some(Vcsim {
            child,
            stdin,
            url: text(&v, "url"),
            thumbprint: text(&v, "thumbprint"),
            user: text(&v, "user"),
            password: text(&v, "password"),
            vms,
            areas,
            dir,
            ready: v,
        })
    }

    /// Creates a snapshot of `vm` through the simulator's SOAP API with curl; returns its moref.
    pub fn create_snapshot(&self, vm: &str) -> String {
        let sim = self;
        let dir = tempdir();
        let jar = dir.path().join("cookies");
        let post = |body: String| -> String {
            let env = format!(
                r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
            );
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "-b",
                    s(&jar),
                    "-c",
                    s(&jar),
                    "-H",
                    "Content-Type: text/xml",
                    "-d",
                    &env,
                    sim.url(),
                ])
                .output()
                .expect("running curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let between = |x: &str, a: &str, b: &str| -> String {
            let i = x.find(a).unwrap_or_else(|| panic!("no {a} in {x}")) + a.len();
            x[i..i + x[i..].find(b).unwrap()].to_owned()
        };
        post(format!(
            r#"<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>{}</userName><password>{}</password></Login>"#,
            sim.user(),
            sim.password()
        ));
        let task = post(format!(
            r#"<CreateSnapshot_Task xmlns="urn:vim25"><_this type="VirtualMachine">{vm}</_this><name>s</name><memory>false</memory><quiesce>false</quiesce></CreateSnapshot_Task>"#
        ));
        let task = between(&task, r#"<returnval type="Task">"#, "<");
        let info = post(format!(
            r#"<RetrieveProperties xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>Task</type><pathSet>info.result</pathSet></propSet><objectSet><obj type="Task">{task}</obj></objectSet></specSet></RetrieveProperties>"#
        ));
        between(&info, "VirtualMachineSnapshot\">", "<")
    }

    /// A `vddk://` URL of the simulator's user naming the VM by `vm` (`vm=moref=...` or
    /// `uuid=...`), with the certificate `thumbprint` and `extra` query parameters (`&k=v...`).
    pub fn vddk_url(&self, thumbprint: &str, vm: &str, extra: &str) -> String {
        let port = self
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches("/sdk");
        format!(
            "vddk://{}@127.0.0.1:{port}/?{vm}&thumbprint={thumbprint}{extra}",
            self.user().replace('@', "%40")
        )
    }

    /// The SOAP endpoint, `https://127.0.0.1:PORT/sdk`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// SHA-1 of the server certificate, `AA:BB:...` in upper case.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The only user name the simulator accepts.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The first VM (by name).
    pub fn vm(&self) -> &VmInfo {
        &self.vms[0]
    }

    /// Every VM, by name.
    pub fn vms(&self) -> &[VmInfo] {
        &self.vms
    }

    /// The changed areas the launcher serves, `(start, length)` sorted by offset, for every disk
    /// and changeId.
    pub fn areas(&self) -> Vec<(u64, u64)> {
        self.areas.clone()
    }

    /// The launcher's whole ready line (`datastores`: name -> local directory; `hosts`: name,
    /// moref, iSCSI IQN and FC adapter ids of each ESXi host).
    pub fn ready(&self) -> &serde_json::Value {
        &self.ready
    }

    /// The launcher's stderr so far (errors; the SOAP traffic with `-trace`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // EOF on stdin: the launcher removes vcsim's datastore directories and exits. The
        // directories are under our TMPDIR anyway, removed with it.
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the launcher's first stdout line, failing with its stderr if it exits or takes longer
/// than [`START`]. A thread reads (and then drains stdout until the launcher exits, so that it
/// never writes into a closed pipe).
fn read_ready_line(child: &mut Child, log: &Path) -> String {
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(out.read_line(&mut line).map(|_| line));
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    let fail = |child: &mut Child, why: &str| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        let _ = File::open(log).and_then(|mut f| f.read_to_string(&mut stderr));
        panic!("vcsim-ferry {why}: {stderr}");
    };
    match rx.recv_timeout(START) {
        Ok(Ok(line)) if !line.trim().is_empty() => line,
        Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            fail(child, "exited before it was ready")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => fail(child, "printed no ready line"),
    }
}

/// The area list the launcher dumped (`[{"start":N,"length":N}, ...]`).
fn read_areas(dump: &Path) -> Vec<(u64, u64)> {
    let data =
        std::fs::read_to_string(dump).unwrap_or_else(|e| panic!("reading {}: {e}", dump.display()));
    let v: serde_json::Value = serde_json::from_str(&data)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", dump.display()));
    v.as_array()
        .unwrap_or_else(|| panic!("{} is not a JSON array", dump.display()))
        .iter()
        .map(|a| (number(a, "start"), number(a, "length")))
        .collect()
}

fn vm_info(v: &serde_json::Value) -> VmInfo {
    VmInfo {
        name: text(v, "name"),
        moref: text(v, "moref"),
        uuid: text(v, "uuid"),
        instance_uuid: text(v, "instanceUuid"),
        disk_key: i32::try_from(
            v["diskKey"]
                .as_i64()
                .unwrap_or_else(|| panic!("'diskKey' missing or not an integer in {v}")),
        )
        .expect("a 32-bit disk key"),
        disk_file: text(v, "diskFile"),
        capacity: number(v, "capacity"),
        change_id: text(v, "changeId"),
    }
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("'{key}' missing or not a string in {v}"))
        .to_owned()
}

fn number(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("'{key}' missing or not an unsigned integer in {v}"))
}

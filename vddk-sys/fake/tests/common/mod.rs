//! Shared setup of the fake's tests: the built libraries installed as a VDDK directory, one
//! session per test process (the knobs are environment variables the library reads at
//! InitEx, and every test of a process shares the one loaded library), callbacks that record
//! what the library logs, and thin wrappers over the raw calls.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use tempfile::TempDir;
use vddk_sys::load::{load, Loaded};
use vddk_sys::{
    __va_list_tag, VixDiskLibConnectParams, VixDiskLibConnection, VixDiskLibHandle, VixError,
    VIXDISKLIB_CRED_UID,
};

/// The password the sessions expect.
pub const PASSWORD: &str = "s3cret-Pa55";

/// A shared library of this workspace's build: in target/<profile>/deps/ (where cargo puts it
/// also when it builds it as a dev-dependency; target/<profile>/ holds a link to the latest
/// one that was built as a root), or a panic saying how to build it.
pub fn built(file: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    let candidates = [deps.join(file), deps.parent().unwrap_or(deps).join(file)];
    let found = candidates.iter().find(|p| p.exists());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "{file} is missing from {}: run `cargo build --release -p vddk-fake -p vddk-fake-65`",
            deps.display()
        )
    })
}

/// A VDDK directory with `lib64/libvixDiskLib.so.<major>` linked to the built `file`.
pub fn install(file: &str, major: u32) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("lib64")).expect("mkdir lib64");
    let link = dir.path().join(format!("lib64/libvixDiskLib.so.{major}"));
    std::os::unix::fs::symlink(built(file), link).expect("symlink");
    dir
}

/// What the log callback was given.
pub static INFO: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// What the warn callback was given.
pub static WARN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn remember(lines: &Mutex<Vec<String>>, fmt: *const c_char) {
    // SAFETY: the library passes a NUL-terminated format string valid during the callback.
    let line = unsafe { CStr::from_ptr(fmt) }
        .to_string_lossy()
        .into_owned();
    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

unsafe extern "C" fn on_info(fmt: *const c_char, _args: *mut __va_list_tag) {
    remember(&INFO, fmt);
}

unsafe extern "C" fn on_warn(fmt: *const c_char, _args: *mut __va_list_tag) {
    remember(&WARN, fmt);
}

/// The lines the warn callback got so far.
pub fn warnings() -> Vec<String> {
    WARN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One test process's session of the fake: the loaded library after InitEx, and its files.
pub struct Session {
    pub vddk: Loaded,
    /// The datastore root (`FAKE_VDDK_ROOT`).
    pub root: PathBuf,
    /// The call log (`FAKE_VDDK_LOG`).
    pub log: PathBuf,
    _libdir: TempDir,
    _data: TempDir,
}

impl Session {
    /// Sets the knobs (`FAKE_VDDK_ROOT` and `FAKE_VDDK_LOG` pointing into a new directory, and
    /// `knobs`), loads the fake VDDK 8 and starts it. Called once per process, before any
    /// other test thread reads the environment through the library.
    pub fn start(knobs: &[(&str, &str)]) -> Session {
        let data = tempfile::tempdir().expect("tempdir");
        let root = data.path().join("datastores");
        let log = data.path().join("calls.log");
        std::fs::create_dir(&root).expect("mkdir datastores");
        std::env::set_var("FAKE_VDDK_ROOT", &root);
        std::env::set_var("FAKE_VDDK_LOG", &log);
        for (k, v) in knobs {
            std::env::set_var(k, v);
        }
        let libdir = install("libvddk_fake.so", 8);
        let vddk = load(libdir.path()).expect("loading the fake VDDK");
        let libdir_c = CString::new(libdir.path().to_str().expect("UTF-8")).expect("no NUL");
        // SAFETY: the callbacks are functions with the log callback's signature that only read
        // the format string; the strings live during the call.
        let r = unsafe {
            vddk.lib.VixDiskLib_InitEx(
                8,
                0,
                Some(on_info),
                Some(on_warn),
                None,
                libdir_c.as_ptr(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "InitEx");
        Session {
            vddk,
            root,
            log,
            _libdir: libdir,
            _data: data,
        }
    }

    /// Writes `bytes` as the raw file of the datastore path "[ds1] `rel`", leaving all-zero
    /// 64 KiB blocks as holes, and returns the path.
    pub fn disk(&self, rel: &str, bytes: &[u8]) -> String {
        let file = self.root.join("ds1").join(rel);
        std::fs::create_dir_all(file.parent().expect("a directory")).expect("mkdir");
        let f = File::create(&file).expect("create the disk");
        f.set_len(bytes.len() as u64).expect("size the disk");
        for (i, block) in bytes.chunks(65536).enumerate() {
            if block.iter().any(|&b| b != 0) {
                f.write_all_at(block, i as u64 * 65536)
                    .expect("write the disk");
            }
        }
        format!("[ds1] {rel}")
    }

    /// The call log's lines, parsed.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
            .collect()
    }

    /// Connects to `server` as "admin" with `password`.
    pub fn connect(
        &self,
        server: &str,
        password: &str,
        thumbprint: Option<&str>,
        snapshot: Option<&str>,
        transports: Option<&str>,
    ) -> Result<VixDiskLibConnection, VixError> {
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (vmx, server, user, password) = (c("moref=vm-42"), c(server), c("admin"), c(password));
        let thumbprint = thumbprint.map(c);
        let (snapshot, transports) = (snapshot.map(c), transports.map(c));
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let mut params = VixDiskLibConnectParams {
            vmxSpec: vmx.as_ptr().cast_mut(),
            serverName: server.as_ptr().cast_mut(),
            thumbPrint: ptr(&thumbprint).cast_mut(),
            credType: VIXDISKLIB_CRED_UID,
            port: 443,
            nfcHostPort: 902,
            ..VixDiskLibConnectParams::default()
        };
        params.creds.uid.userName = user.as_ptr().cast_mut();
        params.creds.uid.password = password.as_ptr().cast_mut();
        let mut conn = std::ptr::null_mut();
        // SAFETY: every string outlives the call, `conn` is a valid place for the result.
        let r = unsafe {
            self.vddk.lib.VixDiskLib_ConnectEx(
                &params,
                1,
                ptr(&snapshot),
                ptr(&transports),
                &mut conn,
            )
        };
        (r == 0).then_some(conn).ok_or(r)
    }

    /// Writes the disk "[ds1] NAME/NAME.vmdk" holding `bytes`, connects to "NAME.example" with
    /// the right password (and `thumbprint`) and opens the disk: its path, the connection
    /// and the handle.
    pub fn opened(
        &self,
        name: &str,
        bytes: &[u8],
        thumbprint: Option<&str>,
    ) -> (String, VixDiskLibConnection, VixDiskLibHandle) {
        let path = self.disk(&format!("{name}/{name}.vmdk"), bytes);
        let server = format!("{name}.example");
        let conn = self
            .connect(&server, PASSWORD, thumbprint, None, None)
            .expect("ConnectEx");
        let handle = self.open(conn, &path).expect("Open");
        (path, conn, handle)
    }

    /// Opens the datastore path `path` through `conn`.
    pub fn open(
        &self,
        conn: VixDiskLibConnection,
        path: &str,
    ) -> Result<VixDiskLibHandle, VixError> {
        let path = CString::new(path).expect("no NUL");
        let mut handle = std::ptr::null_mut();
        // SAFETY: `conn` is a live connection of this library, `path` outlives the call.
        let r = unsafe {
            self.vddk
                .lib
                .VixDiskLib_Open(conn, path.as_ptr(), 4, &mut handle)
        };
        (r == 0).then_some(handle).ok_or(r)
    }

    /// Reads `sectors` sectors from `start` synchronously.
    pub fn read(
        &self,
        handle: VixDiskLibHandle,
        start: u64,
        sectors: u64,
    ) -> Result<Vec<u8>, VixError> {
        let mut buf = vec![0xa5u8; sectors as usize * 512];
        // SAFETY: `handle` is live and `buf` holds `sectors` sectors.
        let r = unsafe {
            self.vddk
                .lib
                .VixDiskLib_Read(handle, start, sectors, buf.as_mut_ptr())
        };
        (r == 0).then_some(buf).ok_or(r)
    }

    /// Queues a read of `buf` (whole sectors) from `start` whose completion `c` records.
    ///
    /// # Safety
    /// `handle` is live; `buf` and `c` outlive the read (until Wait or Close returns).
    pub unsafe fn read_async(
        &self,
        handle: VixDiskLibHandle,
        start: u64,
        buf: &mut [u8],
        c: &Completion,
    ) -> VixError {
        let data = std::ptr::from_ref(c).cast_mut().cast();
        let sectors = buf.len() as u64 / 512;
        // SAFETY: forwarded contract; `buf` holds `sectors` sectors.
        unsafe {
            self.vddk.lib.VixDiskLib_ReadAsync(
                handle,
                start,
                sectors,
                buf.as_mut_ptr(),
                Some(on_complete),
                data,
            )
        }
    }

    /// Closes `handle` and disconnects `conn`.
    pub fn close(&self, handle: VixDiskLibHandle, conn: VixDiskLibConnection) {
        // SAFETY: both are live objects of this library, not used afterwards.
        unsafe {
            assert_eq!(self.vddk.lib.VixDiskLib_Close(handle), 0, "Close");
            assert_eq!(self.vddk.lib.VixDiskLib_Disconnect(conn), 0, "Disconnect");
        }
    }
}

/// One asynchronous read's completion, as its callback saw it.
#[derive(Debug, Default)]
pub struct Completion {
    /// The result and the OS thread the callback ran on, once called.
    pub done: Mutex<Option<(VixError, i32)>>,
}

/// The completion callback: records the result and the thread in the `Completion` at `data`.
unsafe extern "C" fn on_complete(data: *mut c_void, result: VixError) {
    // SAFETY: the tests pass a pointer to a `Completion` that outlives the read.
    let c = unsafe { &*data.cast::<Completion>() };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    *c.done.lock().unwrap_or_else(|e| e.into_inner()) = Some((result, tid));
}

/// Deterministic disk contents: every 8-byte word holds its offset plus `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len.div_ceil(8) as u64)
        .flat_map(|i| (i * 8 + seed).to_le_bytes())
        .take(len)
        .collect()
}

//! The process-wide VDDK session: the library loaded once, `VixDiskLib_InitEx` called once per
//! process and `VixDiskLib_Exit` once at its end, VDDK's log callbacks routed into `tracing`,
//! and error codes turned into messages with `VixDiskLib_GetErrorText`.
//!
//! VDDK is never unloaded: its own threads may outlive every handle, so the [`Vddk`] value is
//! leaked on purpose and lives as long as the process.
//!
//! Nothing waits on VDDK without a bound. ConnectEx, Open, Close and Disconnect run under one
//! process-wide lock; a call that never returns (a hung NFC connection) keeps it, and everyone
//! who wants it afterwards gives up after their timeout with an error naming the stuck call,
//! instead of hanging the process behind it.

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::load::{self, Loaded};
use crate::{__va_list_tag, VixError, VIX_OK};

/// The interface version ferry asks for in `InitEx` (what nbdkit asks for, too).
const INIT_MAJOR: u32 = 6;
const INIT_MINOR: u32 = 5;

/// A failed VixDiskLib call: the call, its error code and VDDK's text for it. One line, never
/// containing credentials (VDDK's texts do not carry them, and the detail is a VDDK warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VddkError {
    /// The function that failed, without the `VixDiskLib_` prefix (`ConnectEx`), or `load`.
    pub call: &'static str,
    /// The VixError code (0 for errors that are not VDDK's own, such as a failed load).
    pub code: VixError,
    /// What went wrong, in VDDK's words (`GetErrorText`) or ours.
    pub text: String,
    /// The last warning VDDK logged while the call ran, when there was one: VDDK often gives
    /// the real reason (a wrong thumbprint, a refused login) only there.
    pub detail: Option<String>,
    /// Whether VDDK did not answer in time (the call, or one holding the lock it needs, has
    /// not returned): the handle was given up, and a new one may work.
    pub timed_out: bool,
}

impl VddkError {
    pub(crate) fn ours(call: &'static str, text: impl Into<String>) -> Self {
        VddkError {
            call,
            code: 0,
            text: text.into(),
            detail: None,
            timed_out: false,
        }
    }

    pub(crate) fn stuck(call: &'static str, text: impl Into<String>) -> Self {
        VddkError {
            timed_out: true,
            ..VddkError::ours(call, text)
        }
    }

    /// The VixError number (the low 16 bits; the high bits carry VDDK-internal flags).
    pub fn number(&self) -> u64 {
        self.code & 0xffff
    }
}

impl fmt::Display for VddkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code == 0 {
            write!(f, "{}: {}", self.call, self.text)?;
        } else {
            write!(
                f,
                "VixDiskLib_{} failed: {} (VIX error {})",
                self.call,
                self.text,
                self.number()
            )?;
        }
        if let Some(d) = &self.detail {
            write!(f, "; VDDK said: {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for VddkError {}

/// The initialised library of this process.
pub struct Vddk {
    loaded: Loaded,
    libdir: PathBuf,
    /// Serialises ConnectEx/Open and Close/Disconnect: VMware documents Open and Close as not
    /// thread-safe, and nbdkit's VDDK plugin takes one lock around them for that reason.
    open_close: CallLock,
    /// Connections being made, open or being closed; `exit` waits for them.
    handles: Mutex<usize>,
    /// Set (under `open_close`) when Exit has been called: no connection may start after it.
    exited: AtomicBool,
    /// Connections given up on because VDDK did not answer (still counted in `handles`).
    abandoned: AtomicUsize,
    handles_done: Condvar,
}

enum State {
    Fresh,
    Ready(&'static Vddk),
    Exited,
}

static STATE: Mutex<State> = Mutex::new(State::Fresh);
/// The version VDDK announced in its first log line ("VMware VixDiskLib (8.0.3) Release ...").
static VERSION: OnceLock<String> = OnceLock::new();
/// The ESXi host of the last disk opened, from VDDK's "DISKLIB-LINK  : Opened" line.
static HOST: Mutex<Option<String>> = Mutex::new(None);
/// The last warning VDDK logged (cleared before the calls that report it).
static LAST_WARNING: Mutex<Option<String>> = Mutex::new(None);

/// Loads VDDK from `libdir` and initialises it (once per process; later calls with the same
/// `libdir` return the same session). `config` is VDDK's configuration file (NFC AIO buffer
/// settings and the like).
pub fn init(libdir: &Path, config: Option<&Path>) -> Result<&'static Vddk, VddkError> {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match &*state {
        State::Ready(v) if v.libdir == libdir => return Ok(v),
        State::Ready(v) => {
            return Err(VddkError::ours(
                "InitEx",
                format!(
                    "VDDK is already initialised from {} in this process, not {}",
                    v.libdir.display(),
                    libdir.display()
                ),
            ))
        }
        State::Exited => {
            return Err(VddkError::ours(
                "InitEx",
                "VDDK was already shut down in this process",
            ))
        }
        State::Fresh => {}
    }
    let loaded = load::load(libdir).map_err(|e| VddkError::ours("load", e.to_string()))?;
    let c_libdir = path_cstring(libdir)?;
    let c_config = config.map(path_cstring).transpose()?;
    let init = loaded
        .lib
        .VixDiskLib_InitEx
        .as_ref()
        .map_err(|e| VddkError::ours("InitEx", e.to_string()))?;
    // SAFETY: InitEx is called once per process (STATE is locked and Fresh). The callbacks are
    // `extern "C"` functions with the declared signature that live for the whole program; the
    // strings are NUL-terminated and outlive the call (VDDK copies what it keeps).
    let err = unsafe {
        init(
            INIT_MAJOR,
            INIT_MINOR,
            Some(log_info),
            Some(log_warn),
            Some(log_panic),
            c_libdir.as_ptr(),
            c_config.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        )
    };
    let vddk: &'static Vddk = Box::leak(Box::new(Vddk {
        loaded,
        libdir: libdir.to_owned(),
        open_close: CallLock::default(),
        handles: Mutex::new(0),
        exited: AtomicBool::new(false),
        abandoned: AtomicUsize::new(0),
        handles_done: Condvar::new(),
    }));
    if err != VIX_OK as VixError {
        return Err(vddk.error("InitEx", err));
    }
    tracing::debug!(
        library = %vddk.loaded.path.display(),
        version = vddk.version().unwrap_or("unknown"),
        "VDDK initialised"
    );
    *state = State::Ready(vddk);
    Ok(vddk)
}

/// Calls `VixDiskLib_Exit` if this process initialised VDDK, after its connections have closed
/// (waiting up to `timeout` for them). Connections started later, and [`init`], fail. When a
/// connection was abandoned (VDDK did not answer), Exit is not called: VDDK is still inside a
/// call, and the process ends without it.
pub fn exit(timeout: Duration) {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let State::Ready(v) = &*state else {
        return;
    };
    let deadline = Instant::now() + timeout;
    loop {
        {
            let open = v.handles.lock().unwrap_or_else(|e| e.into_inner());
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = v
                .handles_done
                .wait_timeout_while(open, left, |n| *n > v.abandoned.load(Ordering::SeqCst))
                .unwrap_or_else(|e| e.into_inner());
        }
        let abandoned = v.abandoned.load(Ordering::SeqCst);
        if abandoned > 0 {
            tracing::debug!(
                abandoned,
                "VDDK connections were abandoned; not calling Exit"
            );
            return;
        }
        // A connection counts itself before it takes this lock, so none is in flight or can
        // start once the count is 0 under it. A call stuck under the lock means a connection
        // is still open: Exit is not called then either.
        let left = deadline.saturating_duration_since(Instant::now());
        let _g = match v.lock_open_close("Exit", left) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("{e}; not calling VixDiskLib_Exit");
                return;
            }
        };
        let open = *v.handles.lock().unwrap_or_else(|e| e.into_inner());
        if open == 0 {
            v.exited.store(true, Ordering::SeqCst);
            if let Ok(f) = &v.loaded.lib.VixDiskLib_Exit {
                // SAFETY: InitEx succeeded in this process, Exit has not been called (the
                // state is Ready) and no connection exists or can start (`exited` is set
                // under the lock every connection takes first).
                unsafe { f() };
            }
            *state = State::Exited;
            return;
        }
        if Instant::now() >= deadline {
            tracing::debug!(
                connections = open,
                "VDDK connections still open; not calling Exit"
            );
            return;
        }
    }
}

/// The version of the VDDK this process initialised (announced or the library's major), if any.
pub fn current_version() -> Option<String> {
    match &*STATE.lock().unwrap_or_else(|e| e.into_inner()) {
        State::Ready(v) => Some(v.version_or_major()),
        _ => None,
    }
}

impl Vddk {
    /// The raw library.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The directory VDDK was loaded from.
    pub fn libdir(&self) -> &Path {
        &self.libdir
    }

    /// VDDK's version as it announced itself in its log, or the library's major version
    /// (`"8"`) when it did not.
    pub fn version(&self) -> Option<&str> {
        VERSION.get().map(String::as_str)
    }

    /// The version for messages: the announced one, else `libvixDiskLib.so.N`'s major.
    pub fn version_or_major(&self) -> String {
        self.version()
            .map(str::to_owned)
            .unwrap_or_else(|| self.loaded.major.to_string())
    }

    /// The transport modes this VDDK supports (`file:san:hotadd:nbdssl:nbd`).
    pub fn transport_modes(&self) -> Option<String> {
        let f = self
            .loaded
            .lib
            .VixDiskLib_ListTransportModes
            .as_ref()
            .ok()?;
        // SAFETY: InitEx succeeded; the returned string is static and owned by VDDK.
        let p = unsafe { f() };
        // SAFETY: a non-NULL result is a NUL-terminated string owned by VDDK.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// The error for `code` returned by `call`, with VDDK's text and its last warning.
    pub(crate) fn error(&self, call: &'static str, code: VixError) -> VddkError {
        VddkError {
            call,
            code,
            text: self.error_text(code),
            detail: take_warning(),
            timed_out: false,
        }
    }

    /// VDDK's text for `code` (`GetErrorText`), or a generic one.
    pub fn error_text(&self, code: VixError) -> String {
        let lib = &self.loaded.lib;
        let (Ok(get), Ok(free)) = (&lib.VixDiskLib_GetErrorText, &lib.VixDiskLib_FreeErrorText)
        else {
            return format!("error {}", code & 0xffff);
        };
        // SAFETY: GetErrorText takes any code and a NULL locale (the default one).
        let p = unsafe { get(code, std::ptr::null()) };
        if p.is_null() {
            return format!("error {}", code & 0xffff);
        }
        // SAFETY: a non-NULL result is a NUL-terminated string that we own until FreeErrorText.
        let text = unsafe { CStr::from_ptr(p) }
            .to_string_lossy()
            .trim()
            .to_owned();
        // SAFETY: `p` came from GetErrorText and is freed exactly once.
        unsafe { free(p) };
        text
    }

    /// Held around ConnectEx/Open and Close/Disconnect, by `call`. Waits at most `timeout` for
    /// it; the error then names the call that has held it, and for how long.
    pub(crate) fn lock_open_close(
        &self,
        call: &'static str,
        timeout: Duration,
    ) -> Result<CallGuard<'_>, VddkError> {
        self.open_close.acquire(call, timeout)
    }

    /// The call holding the open/close lock and for how long it has, if one does.
    pub fn busy(&self) -> Option<(&'static str, Duration)> {
        let holder = *self
            .open_close
            .holder
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        holder.map(|(call, since)| (call, since.elapsed()))
    }

    /// Whether Exit has been called (read under [`Vddk::lock_open_close`]).
    pub(crate) fn exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    pub(crate) fn handle_opened(&self) {
        *self.handles.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// A connection VDDK did not answer for is given up (its thread may never end).
    pub(crate) fn handle_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::SeqCst);
        self.handles_done.notify_all();
    }

    pub(crate) fn handle_closed(&self) {
        let mut n = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.handles_done.notify_all();
        }
    }
}

/// A lock whose waiters give up after a timeout, and that knows which call holds it. A
/// `std::sync::Mutex` can only be waited for without end, and a VDDK call may never return.
#[derive(Default)]
pub(crate) struct CallLock {
    /// The call holding the lock and since when; `None` when it is free.
    holder: Mutex<Option<(&'static str, Instant)>>,
    free: Condvar,
}

impl CallLock {
    fn acquire(&self, call: &'static str, timeout: Duration) -> Result<CallGuard<'_>, VddkError> {
        let deadline = Instant::now() + timeout;
        let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((held_by, since)) = *holder {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VddkError::stuck(
                    call,
                    format!(
                        "VDDK is stuck: VixDiskLib_{held_by} has not returned for {} s, and \
                         every ConnectEx, Open, Close and Disconnect waits for it",
                        since.elapsed().as_secs()
                    ),
                ));
            }
            holder = self
                .free
                .wait_timeout(holder, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *holder = Some((call, Instant::now()));
        Ok(CallGuard { lock: self })
    }
}

/// The open/close lock, held.
pub(crate) struct CallGuard<'a> {
    lock: &'a CallLock,
}

impl CallGuard<'_> {
    /// Names the call about to be made under the lock (for the errors of those who wait).
    pub(crate) fn calling(&self, call: &'static str) {
        *self.lock.holder.lock().unwrap_or_else(|e| e.into_inner()) = Some((call, Instant::now()));
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        *self.lock.holder.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.lock.free.notify_one();
    }
}

/// Forgets the last warning VDDK logged (before a call whose failure should carry it).
pub(crate) fn clear_warning() {
    *LAST_WARNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn take_warning() -> Option<String> {
    LAST_WARNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
}

fn path_cstring(p: &Path) -> Result<CString, VddkError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| VddkError::ours("InitEx", format!("{} contains a NUL byte", p.display())))
}

extern "C" {
    /// C's `vsnprintf`; the `libc` crate does not declare it because Rust has no stable
    /// `va_list`. On x86_64 a `va_list` parameter is a pointer to its one `__va_list_tag`.
    fn vsnprintf(s: *mut c_char, n: usize, format: *const c_char, ap: *mut __va_list_tag) -> c_int;
}

/// Formats one VDDK log message.
///
/// # Safety
/// `fmt` and `args` are what VDDK passed to a log callback: a printf format and its arguments.
unsafe fn format_message(fmt: *const c_char, args: *mut __va_list_tag) -> String {
    if fmt.is_null() {
        return String::new();
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: the caller guarantees `fmt`/`args` match; vsnprintf writes at most buf.len()
    // bytes including the terminating NUL (longer messages are cut, which is fine for logs).
    let n = unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), fmt, args) };
    if n < 0 {
        return String::new();
    }
    let len = (n as usize).min(buf.len() - 1);
    String::from_utf8_lossy(&buf[..len]).trim_end().to_owned()
}

/// Remembers the version from VDDK's banner ("VMware VixDiskLib (8.0.3) Release build-...").
fn note_version(msg: &str) {
    if VERSION.get().is_some() {
        return;
    }
    if let Some(v) = parse_version(msg) {
        let _ = VERSION.set(v);
    }
}

/// The host VDDK opened a disk on, from its log line
/// `"DISKLIB-LINK  : Opened 'vpxa-nfcssl://[ds] vm/vm.vmdk@esx1.example.com:902' (0xa): ..."`.
pub fn parse_host(msg: &str) -> Option<String> {
    let rest = &msg[msg.find("DISKLIB-LINK")?..];
    let rest = &rest[rest.find("Opened '")? + "Opened '".len()..];
    let target = &rest[..rest.find("' (0x")?];
    let at = &target[target.rfind('@')? + 1..];
    let host = at.rsplit_once(':').map_or(at, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_owned())
}

/// The ESXi host VDDK last opened a disk on, as its log named it (CDI reports it as
/// `vddkInfo.Host`).
pub fn connected_host() -> Option<String> {
    HOST.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The version in VDDK's banner line, if `msg` is one.
pub fn parse_version(msg: &str) -> Option<String> {
    let rest = &msg[msg.find("VixDiskLib (")? + "VixDiskLib (".len()..];
    let v = &rest[..rest.find(')')?];
    let ok = !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.');
    ok.then(|| v.to_owned())
}

unsafe extern "C" fn log_info(fmt: *const c_char, args: *mut __va_list_tag) {
    // SAFETY: VDDK calls this with a printf format and its matching arguments.
    let msg = unsafe { format_message(fmt, args) };
    note_version(&msg);
    if let Some(host) = parse_host(&msg) {
        *HOST.lock().unwrap_or_else(|e| e.into_inner()) = Some(host);
    }
    tracing::debug!(target: "vddk", "{msg}");
}

unsafe extern "C" fn log_warn(fmt: *const c_char, args: *mut __va_list_tag) {
    // SAFETY: as for log_info.
    let msg = unsafe { format_message(fmt, args) };
    note_version(&msg);
    // VDDK's warnings are chatty on healthy runs too (nbdkit keeps them at debug level); the
    // last one is kept so that a failing call can say what VDDK saw.
    tracing::debug!(target: "vddk", "warning: {msg}");
    *LAST_WARNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
}

unsafe extern "C" fn log_panic(fmt: *const c_char, args: *mut __va_list_tag) {
    // SAFETY: as for log_info.
    let msg = unsafe { format_message(fmt, args) };
    tracing::error!(target: "vddk", "VDDK panic: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_from_the_opened_line() {
        let line = "DISKLIB-LINK  : Opened 'vpxa-nfcssl://[iSCSI_Datastore] test/test.vmdk@esx15.test.lan:902' (0xa): custom, 50331648 sectors / 24 GB.";
        assert_eq!(parse_host(line).as_deref(), Some("esx15.test.lan"));
        let short = "DISKLIB-LINK  : Opened 'http://disk@esx:1234' (0xa): custom";
        assert_eq!(parse_host(short).as_deref(), Some("esx"));
        assert_eq!(
            parse_host("DISKLIB-LINK  : Opened 'vpxa-nfcssl://esx' (0xa)"),
            None
        );
        assert_eq!(
            parse_host("DISKLIB-LIB   : Opened \"x@y:1\" (flags 0xa)"),
            None
        );
    }

    #[test]
    fn version_comes_from_the_banner() {
        assert_eq!(
            parse_version("VMware VixDiskLib (8.0.3) Release build-24114575").as_deref(),
            Some("8.0.3")
        );
        assert_eq!(parse_version("VixDiskLib: TLS enabled"), None);
        assert_eq!(parse_version("VMware VixDiskLib (x) Release"), None);
        assert_eq!(parse_version("VMware VixDiskLib ("), None);
    }

    #[test]
    fn errors_are_one_line_with_the_code() {
        let e = VddkError {
            call: "ConnectEx",
            code: 35,
            text: "Authentication failure".into(),
            detail: Some("Cannot connect to host h".into()),
            timed_out: false,
        };
        assert_eq!(
            e.to_string(),
            "VixDiskLib_ConnectEx failed: Authentication failure (VIX error 35); VDDK said: Cannot connect to host h"
        );
        assert_eq!(
            VddkError::ours("load", "no library").to_string(),
            "load: no library"
        );
    }
}

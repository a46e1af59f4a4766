//! The library's session: the knobs read at `VixDiskLib_InitEx`, the caller's log callbacks, the
//! call log and the process-wide read counter of `FAKE_VDDK_FAIL_READ`.
//!
//! A session is never freed: connections, handles and the strings handed to the caller keep
//! pointing at it after `VixDiskLib_Exit`, and a test process starts only a few.

use std::ffi::{c_char, CString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};
use vddk_sys::{__va_list_tag, VixDiskLibGenericLogFunc, VixError};

use crate::ffi::OK;
use crate::knobs::Knobs;

/// One session of the library.
pub struct Session {
    /// Its knobs.
    pub knobs: Knobs,
    /// The call log (`FAKE_VDDK_LOG`), opened for appending.
    log: Option<File>,
    /// The caller's `log` callback.
    info: VixDiskLibGenericLogFunc,
    /// The caller's `warn` callback.
    warn: VixDiskLibGenericLogFunc,
    /// Reads (Read and ReadAsync) started in this session.
    reads: AtomicU64,
    /// `knobs.transports` for ListTransportModes.
    transports: CString,
}

/// The current session and whether InitEx started it (rather than a call made before InitEx).
struct Current {
    session: Option<&'static Session>,
    initialized: bool,
}

static CURRENT: Mutex<Current> = Mutex::new(Current {
    session: None,
    initialized: false,
});

/// Locks `m`, also after a panic elsewhere (the data stays consistent: every critical section
/// of the fake is a few assignments).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `VixDiskLib_InitEx` did.
pub enum Started {
    /// A new session, or the reason it could not start (a malformed knob, an injected failure).
    New(&'static Session, Result<(), (VixError, Vec<String>)>),
    /// A session was running already (InitEx twice without Exit); it goes on.
    Again(&'static Session),
}

/// Starts a session with the knobs of the environment and the caller's callbacks, unless one
/// is running.
pub fn start(info: VixDiskLibGenericLogFunc, warn: VixDiskLibGenericLogFunc) -> Started {
    let mut current = lock(&CURRENT);
    if let (Some(s), true) = (current.session, current.initialized) {
        return Started::Again(s);
    }
    let (knobs, mut errors) = Knobs::from_env();
    let session = Session::new(knobs, info, warn, &mut errors);
    current.session = Some(session);
    let started = match session.knobs.failure("InitEx") {
        _ if !errors.is_empty() => Err((crate::ffi::FAIL, errors)),
        Some(code) => Err((code, Vec::new())),
        None => Ok(()),
    };
    current.initialized = started.is_ok();
    Started::New(session, started)
}

/// Ends the running session (its objects stay valid); returns it for logging.
pub fn stop() -> &'static Session {
    let session = current();
    lock(&CURRENT).initialized = false;
    session
}

/// The current session; a call made before any InitEx starts one without callbacks.
pub fn current() -> &'static Session {
    let mut current = lock(&CURRENT);
    current.session.get_or_insert_with(|| {
        let (knobs, mut errors) = Knobs::from_env();
        Session::new(knobs, None, None, &mut errors)
    })
}

impl Session {
    fn new(
        knobs: Knobs,
        info: VixDiskLibGenericLogFunc,
        warn: VixDiskLibGenericLogFunc,
        errors: &mut Vec<String>,
    ) -> &'static Session {
        let log = knobs.log.as_ref().and_then(|path| {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| errors.push(format!("FAKE_VDDK_LOG={}: {e}", path.display())))
                .ok()
        });
        let transports = CString::new(knobs.transports.replace('\0', "")).unwrap_or_default();
        Box::leak(Box::new(Session {
            knobs,
            log,
            info,
            warn,
            reads: AtomicU64::new(0),
            transports,
        }))
    }

    /// Whether calls are logged: build a log line only then (benchmarks run without a log).
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// Appends `fields` plus `"call"` and `"thread"` to the call log as one line (one write, so
    /// lines of concurrent calls do not mix).
    pub fn record(&self, call: &str, mut fields: Map<String, Value>) {
        let Some(mut log) = self.log.as_ref() else {
            return;
        };
        fields.insert("call".into(), call.into());
        fields.insert("thread".into(), crate::ffi::thread_id().into());
        let Ok(mut line) = serde_json::to_vec(&fields) else {
            return;
        };
        line.push(b'\n');
        // A test reads the log afterwards; a failed write shows there as a missing line.
        let _ = log.write_all(&line);
    }

    /// Passes `msg` to the caller's `log` callback.
    pub fn info(&self, msg: &str) {
        say(self.info, msg);
    }

    /// Passes `msg` and a newline to the caller's `warn` callback, as VDDK's own warnings end.
    pub fn warn(&self, msg: &str) {
        say(self.warn, &format!("{msg}\n"));
    }

    /// The result of the next read: counts it, then applies `FAKE_VDDK_HANG_READ` (the
    /// result is [`HANG`]), `FAKE_VDDK_FAIL_READ` and `FAKE_VDDK_FAIL=Read`.
    pub fn next_read(&self) -> VixError {
        let n = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        if self.knobs.hang_read == Some(n) {
            return HANG;
        }
        match self.knobs.fail_read {
            Some((nth, code)) if nth == n => code,
            _ => self.knobs.failure("Read").unwrap_or(OK),
        }
    }

    /// Never returns when `FAKE_VDDK_HANG` names `call` (logged first).
    pub fn maybe_hang(&self, call: &str) {
        if self.knobs.hangs(call) {
            self.warn(&format!("{call} hangs (FAKE_VDDK_HANG)"));
            hang();
        }
    }

    /// The offered transport modes as a C string that lives as long as the process.
    pub fn transports(&self) -> *const c_char {
        self.transports.as_ptr()
    }
}

/// The result [`Session::next_read`] gives a read that never completes.
pub const HANG: VixError = VixError::MAX;

/// Blocks the calling thread for good: a VDDK call that never returns.
pub fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

/// Calls a VDDK log callback with `msg` as its format: `%` is escaped and there are no
/// conversions, so the empty `va_list` passed along is never read.
fn say(f: VixDiskLibGenericLogFunc, msg: &str) {
    let Some(f) = f else { return };
    let Ok(fmt) = CString::new(msg.replace('%', "%%").replace('\0', "")) else {
        return;
    };
    let mut args = __va_list_tag::default();
    // SAFETY: `f` is the caller's log callback, given to InitEx to be called with a printf
    // format and a va_list. `fmt` is a NUL-terminated string without conversion specifiers,
    // so the callback reads no argument from `args`, a zeroed va_list that lives until the
    // callback returns.
    unsafe { f(fmt.as_ptr(), &mut args) };
}

/// Appends a line for `$call` to the session's call log with the given fields; the fields are
/// evaluated only when there is a log.
macro_rules! record {
    ($session:expr, $call:expr $(, $key:literal => $value:expr)* $(,)?) => {{
        let session: &$crate::global::Session = $session;
        if session.logging() {
            #[allow(unused_mut)]
            let mut fields = ::serde_json::Map::new();
            $( fields.insert($key.into(), ::serde_json::json!($value)); )*
            session.record($call, fields);
        }
    }};
}

pub(crate) use record;

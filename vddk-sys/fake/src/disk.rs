//! An open disk: what `VixDiskLibHandle` points to. The datastore path names a local raw file
//! (or its snapshot file); reads go through a per-handle "wire" that models VDDK's latency and
//! bandwidth, and asynchronous reads complete on the handle's own completion thread, in the
//! order of their completion times, as VDDK's NFC AIO delivers them.

use std::collections::VecDeque;
use std::ffi::{c_void, CString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vddk_sys::{VixDiskLibCompletionCB, VixError};

use crate::connection::Connection;
use crate::ffi::{guard, FAIL, FILE_NOT_FOUND, INVALID_ARG, OK, SECTOR};
use crate::global::{hang, lock, record, Session, HANG};

/// The local file behind the datastore path `path` ("[DATASTORE] dir/file.vmdk"): its snapshot
/// file `<file>@<snapshot>` when the connection names a snapshot that has one.
pub fn locate(conn: &Connection, path: &str) -> Result<PathBuf, VixError> {
    let (datastore, rel) = path
        .strip_prefix('[')
        .and_then(|p| p.split_once("] "))
        .ok_or(INVALID_ARG)?;
    let rel = Path::new(rel);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if datastore.is_empty() || datastore.contains('/') || !plain || rel.as_os_str().is_empty() {
        return Err(INVALID_ARG);
    }
    let Some(root) = &conn.session.knobs.root else {
        conn.session
            .warn("FAKE_VDDK_ROOT is not set: no datastore to open disks from");
        return Err(FAIL);
    };
    let file = root.join(datastore).join(rel);
    let snapshot = conn.snapshot.as_ref().map(|s| {
        let mut name = file.clone().into_os_string();
        name.push(format!("@{s}"));
        PathBuf::from(name)
    });
    Ok(snapshot.filter(|s| s.is_file()).unwrap_or(file))
}

/// An open disk.
pub struct Disk {
    /// What the completion thread shares.
    shared: Arc<Shared>,
    /// Size in sectors (the file's size rounded up).
    pub capacity: u64,
    /// The transport mode, for GetTransportMode.
    pub mode: CString,
    /// When the wire is free again (bandwidth model).
    wire: Mutex<Instant>,
    /// The completion thread.
    worker: Option<JoinHandle<()>>,
}

/// What a disk's completion thread shares with the disk.
struct Shared {
    session: &'static Session,
    /// The datastore path, for the log.
    name: String,
    file: File,
    queue: Mutex<Queue>,
    /// Signalled when a request is queued or the disk closes.
    work: Condvar,
    /// Signalled when the last outstanding request has completed.
    idle: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Queued requests, in completion-time order.
    pending: VecDeque<Request>,
    /// Requests queued or being completed.
    outstanding: usize,
    closing: bool,
}

/// A queued asynchronous read.
struct Request {
    start: u64,
    count: u64,
    buf: *mut u8,
    callback: VixDiskLibCompletionCB,
    data: *mut c_void,
    /// When it completes.
    due: Instant,
    /// Its result, decided at submission (injected failures).
    result: VixError,
}

// SAFETY: the pointers of a request are the caller's read buffer and callback data, which VDDK's
// contract keeps valid and untouched by the caller until the completion callback has run; only
// the completion thread uses them, once.
unsafe impl Send for Request {}

impl Disk {
    /// Opens `file` for the datastore path `name` through `conn`.
    pub fn open(conn: &Connection, name: &str, file: &Path) -> Result<Disk, VixError> {
        let session = conn.session;
        if let Some(code) = session.knobs.failure("Open") {
            return Err(code);
        }
        let f = File::open(file).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FILE_NOT_FOUND,
            _ => FAIL,
        })?;
        let meta = f.metadata().map_err(|_| FAIL)?;
        if !meta.is_file() {
            return Err(FILE_NOT_FOUND);
        }
        let size = meta.len();
        let mode = conn.mode()?;
        // Real VDDK names the ESXi host serving the disk in this line; callers (CDI's vddkInfo)
        // read the host from it.
        let host = session.knobs.esx_host.as_deref().unwrap_or(&conn.server);
        session.info(&format!(
            "DISKLIB-LINK  : Opened '{}://{name}@{host}:902' (0xa): custom, {} sectors / {} MB.\n",
            if mode.ends_with("ssl") {
                "vpxa-nfcssl"
            } else {
                "vpxa-nfc"
            },
            size.div_ceil(SECTOR),
            size >> 20
        ));
        let mode = CString::new(mode).map_err(|_| FAIL)?;
        let shared = Arc::new(Shared {
            session,
            name: name.to_owned(),
            file: f,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("vddk-fake-aio".into())
                .spawn(move || shared.complete_all())
                .map_err(|_| FAIL)?
        };
        Ok(Disk {
            shared,
            capacity: size.div_ceil(SECTOR),
            mode,
            wire: Mutex::new(Instant::now()),
            worker: Some(worker),
        })
    }

    /// The session the disk belongs to.
    pub fn session(&self) -> &'static Session {
        self.shared.session
    }

    /// The datastore path it was opened by.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The file it reads.
    pub fn file(&self) -> &File {
        &self.shared.file
    }

    /// Whether a read of `count` sectors from `start` into `buf` is valid: within the disk,
    /// into a buffer.
    pub fn check(&self, start: u64, count: u64, buf: *mut u8) -> VixError {
        let within = start
            .checked_add(count)
            .is_some_and(|end| end <= self.capacity);
        match within && (count == 0 || !buf.is_null()) {
            true => OK,
            false => INVALID_ARG,
        }
    }

    /// When a request of `bytes` made now completes: it occupies the wire for `bytes /
    /// bandwidth` once the wire is free, then its answer takes the latency to arrive (so
    /// requests in flight together overlap their latencies but share the bandwidth).
    fn schedule(&self, bytes: u64) -> Instant {
        let knobs = &self.shared.session.knobs;
        let now = Instant::now();
        if knobs.bandwidth == 0 {
            return now + knobs.latency;
        }
        let transfer = u128::from(bytes) * 1_000_000_000 / u128::from(knobs.bandwidth);
        let transfer = Duration::from_nanos(u64::try_from(transfer).unwrap_or(u64::MAX));
        let mut free = lock(&self.wire);
        *free = (*free).max(now) + transfer;
        *free + knobs.latency
    }

    /// Reads `count` sectors from `start` into `buf` (VixDiskLib_Read).
    ///
    /// # Safety
    /// `buf` is NULL or valid for writes of `count` sectors during the call.
    pub unsafe fn read(&self, start: u64, count: u64, buf: *mut u8) -> VixError {
        let checked = self.check(start, count, buf);
        if checked != OK {
            return checked;
        }
        let result = self.shared.session.next_read();
        if result == HANG {
            hang();
        }
        sleep_until(self.schedule(count * SECTOR));
        if result != OK {
            return result;
        }
        // SAFETY: `buf` is valid for `count` sectors (this function's contract).
        unsafe { self.shared.read_at(start, count, buf) }
    }

    /// Queues a read of `count` sectors from `start` into `buf` whose result goes to
    /// `callback(data, result)` on the completion thread (VixDiskLib_ReadAsync).
    ///
    /// # Safety
    /// `buf` is valid for writes of `count` sectors, and `data` for whatever `callback` does
    /// with it, until the callback has been called.
    pub unsafe fn read_async(
        &self,
        start: u64,
        count: u64,
        buf: *mut u8,
        callback: VixDiskLibCompletionCB,
        data: *mut c_void,
    ) -> VixError {
        let checked = self.check(start, count, buf);
        if checked != OK {
            return checked;
        }
        let request = Request {
            start,
            count,
            buf,
            callback,
            data,
            result: self.shared.session.next_read(),
            due: self.schedule(count * SECTOR),
        };
        if request.result == HANG {
            // Accepted and never completed: Wait (and so Close) on this handle never returns.
            lock(&self.shared.queue).outstanding += 1;
            return crate::ffi::ASYNC;
        }
        if self.shared.session.knobs.complete_inline {
            // Done, callback included, before ReadAsync returns (VDDK does not promise
            // otherwise).
            sleep_until(request.due);
            self.shared.complete(request);
            return crate::ffi::ASYNC;
        }
        let mut queue = lock(&self.shared.queue);
        queue.pending.push_back(request);
        queue.outstanding += 1;
        self.shared.work.notify_one();
        crate::ffi::ASYNC
    }

    /// The number of asynchronous reads not completed yet.
    pub fn pending(&self) -> usize {
        lock(&self.shared.queue).outstanding
    }

    /// Blocks until every asynchronous read has completed (its callback returned).
    pub fn wait(&self) {
        let mut queue = lock(&self.shared.queue);
        while queue.outstanding > 0 {
            queue = self
                .shared
                .idle
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Disk {
    /// Completes the outstanding reads and stops the completion thread.
    fn drop(&mut self) {
        lock(&self.shared.queue).closing = true;
        self.shared.work.notify_one();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Shared {
    /// Reads `count` sectors from `start` into `buf`: zeros past the end of the file.
    ///
    /// # Safety
    /// `buf` is valid for writes of `count` sectors.
    unsafe fn read_at(&self, start: u64, count: u64, buf: *mut u8) -> VixError {
        let Ok(len) = usize::try_from(count * SECTOR) else {
            return INVALID_ARG;
        };
        if len == 0 {
            return OK;
        }
        // SAFETY: `buf` is valid for `len` bytes (this function's contract) and nothing else
        // accesses it until the read returns (the caller waits, or waits for the callback).
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        match read_exact_or_zeros(&self.file, buf, start * SECTOR) {
            Ok(()) => OK,
            Err(_) => FAIL,
        }
    }

    /// The completion thread: completes each queued request at its time, until the disk closes
    /// with nothing queued.
    fn complete_all(&self) {
        let mut queue = lock(&self.queue);
        loop {
            let Some(due) = queue.pending.front().map(|r| r.due) else {
                if queue.closing {
                    return;
                }
                queue = self.work.wait(queue).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let now = Instant::now();
            if due > now {
                queue = self
                    .work
                    .wait_timeout(queue, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let Some(request) = queue.pending.pop_front() else {
                continue;
            };
            drop(queue);
            guard((), || self.complete(request));
            queue = lock(&self.queue);
            queue.outstanding -= 1;
            if queue.outstanding == 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Reads the data of `r` and calls its callback.
    fn complete(&self, r: Request) {
        let result = match r.result {
            // SAFETY: the caller of ReadAsync keeps `r.buf` valid for `r.count` sectors until
            // the callback below has run, and the range was checked at submission.
            OK => unsafe { self.read_at(r.start, r.count, r.buf) },
            failed => failed,
        };
        record!(self.session, "ReadAsyncDone",
            "disk" => self.name, "sector" => r.start, "count" => r.count, "result" => result);
        if let Some(callback) = r.callback {
            // SAFETY: `callback` and `data` are the pair the caller gave ReadAsync for this
            // request; it is called exactly once, after the buffer was filled.
            unsafe { callback(r.data, result) };
        }
    }
}

/// Fills `buf` from `file` at `offset`, looping over short reads; what lies past the end of the
/// file reads as zeros.
fn read_exact_or_zeros(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sleeps until `t` (returns at once when `t` has passed).
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

//! The thread side of a [`Disk`](super::Disk): the connection and disk handle, and every
//! VixDiskLib call made on them.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::time::{Duration, Instant};

use super::{closed, record, Block, DiskInfo, DiskSpec, Stats, SECTOR};
use crate::session::{clear_warning, Vddk, VddkError};
use crate::{
    VixDiskLibBlockList, VixDiskLibConnectParams, VixDiskLibConnection, VixDiskLibHandle,
    VixDiskLibInfo, VixError, VIXDISKLIB_CRED_UID, VIXDISKLIB_FLAG_OPEN_READ_ONLY, VIX_ASYNC,
    VIX_OK,
};

pub(super) type Completion = Box<dyn FnOnce(Result<(), VddkError>) + Send>;

/// A pointer into a caller's buffer, moved to the handle thread. The buffer is owned by the
/// request's completion closure (boxed, so its bytes never move) until VDDK has finished
/// with the pointer.
pub(super) struct BufPtr(pub(super) *mut u8);

// SAFETY: the pointer is only dereferenced by VDDK, between the ReadAsync/Read call that gets
// it and the completion that gives the buffer back; its owner is never touched in between.
unsafe impl Send for BufPtr {}

pub(super) enum Cmd {
    Read {
        sector: u64,
        buf: BufPtr,
        len: usize,
        done: Completion,
    },
    ReadSync {
        sector: u64,
        buf: BufPtr,
        len: usize,
        reply: SyncSender<Result<(), VddkError>>,
    },
    Query {
        start: u64,
        count: u64,
        chunk: u64,
        done: Box<dyn FnOnce(Result<Vec<Block>, VddkError>) + Send>,
    },
    Completed {
        id: u64,
        code: VixError,
    },
    Close {
        reply: Option<SyncSender<Stats>>,
    },
    /// Close the disk handle and keep the connection for [`Cmd::OpenDisk`].
    Park {
        reply: SyncSender<Stats>,
    },
    /// Open a disk on a parked connection.
    OpenDisk {
        path: String,
        reply: SyncSender<Result<DiskInfo, VddkError>>,
    },
}

/// Hands `value` to a caller's completion. A panicking completion must not unwind through the
/// handle thread: that would drop the buffers of reads VDDK is still filling.
fn deliver<T>(done: impl FnOnce(T), value: T) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(value))).is_err() {
        tracing::error!(target: "vddk", "a VDDK read completion panicked");
    }
}

/// What a completion callback receives: the request it belongs to and where to post it.
struct CallbackData {
    id: u64,
    tx: Sender<Cmd>,
}

/// VDDK's completion callback: posts the result to the handle thread and returns at once (no
/// VDDK call is made from VDDK's own callback thread).
unsafe extern "C" fn read_done(data: *mut c_void, code: VixError) {
    // SAFETY: `data` is the `Box<CallbackData>` leaked for exactly this request by
    // `submit_read`; VDDK calls the callback once per accepted request, so it is reclaimed once.
    let cb = unsafe { Box::from_raw(data.cast::<CallbackData>()) };
    let _ = cb.tx.send(Cmd::Completed { id: cb.id, code });
}

/// Owned C strings of a connection, kept alive while VDDK may read them.
#[derive(Default)]
struct CParams {
    vm: CString,
    server: CString,
    thumbprint: Option<CString>,
    user: CString,
    password: CString,
}

fn cstring(call: &'static str, what: &str, s: &str) -> Result<CString, VddkError> {
    CString::new(s).map_err(|_| VddkError::ours(call, format!("{what} contains a NUL byte")))
}

/// The reads VDDK has accepted and not yet completed, by request id: their completions own the
/// buffers VDDK is writing into.
#[derive(Default)]
struct Pending(HashMap<u64, (Completion, Instant, usize)>);

impl Drop for Pending {
    fn drop(&mut self) {
        // Only a panic on the handle thread drops reads still in flight (the serving loop
        // drains them before it ends). Freeing their buffers would let VDDK write into freed
        // memory: stop the process instead.
        if !self.0.is_empty() && std::thread::panicking() {
            eprintln!(
                "vddk: the VDDK handle thread panicked with {} reads in flight; aborting \
                 rather than freeing buffers VDDK is still filling",
                self.0.len()
            );
            std::process::abort();
        }
    }
}

/// Why the serving loop of a disk ended.
enum End {
    /// Close everything; answer with the statistics, if asked.
    Close(Option<SyncSender<Stats>>),
    /// Close the disk, keep the connection; answer with the disk's statistics.
    Park(SyncSender<Stats>),
}

/// The state of the handle thread.
pub(super) struct Handle {
    vddk: &'static Vddk,
    conn: VixDiskLibConnection,
    handle: VixDiskLibHandle,
    params: *mut VixDiskLibConnectParams,
    /// Whether `params` came from AllocateConnectParams (else from a Box).
    params_allocated: bool,
    _strings: CParams,
    pub(super) info: DiskInfo,
    stats: Stats,
    /// Whether a ReadAsync was ever accepted (then Close waits for VDDK with Wait).
    async_used: bool,
    /// How long to wait for the open/close lock.
    timeout: Duration,
    /// Set when closing gave up: the connection stays open and its memory is never freed.
    left_open: bool,
}

impl Handle {
    pub(super) fn open(vddk: &'static Vddk, spec: &DiskSpec) -> Result<Handle, VddkError> {
        let lib = &vddk.loaded().lib;
        let strings = CParams {
            vm: cstring("ConnectEx", "the VM", &spec.vm)?,
            server: cstring("ConnectEx", "the server", &spec.server)?,
            thumbprint: spec
                .thumbprint
                .as_deref()
                .map(|t| cstring("ConnectEx", "the thumbprint", t))
                .transpose()?,
            user: cstring("ConnectEx", "the user", &spec.user)?,
            password: cstring("ConnectEx", "the password", spec.password.expose())?,
        };
        let snapshot = spec
            .snapshot
            .as_deref()
            .map(|s| cstring("ConnectEx", "the snapshot", s))
            .transpose()?;
        let transports = spec
            .transports
            .as_deref()
            .map(|s| cstring("ConnectEx", "the transports", s))
            .transpose()?;
        let path = cstring("Open", "the disk path", &spec.path)?;

        let (params, params_allocated) = match (
            &lib.VixDiskLib_AllocateConnectParams,
            &lib.VixDiskLib_FreeConnectParams,
        ) {
            (Ok(alloc), Ok(_)) => {
                // SAFETY: AllocateConnectParams takes no arguments and returns a zeroed
                // structure that we free with FreeConnectParams (in Drop).
                let p = unsafe { alloc() };
                if p.is_null() {
                    return Err(VddkError::ours("AllocateConnectParams", "returned NULL"));
                }
                (p, true)
            }
            _ => (
                Box::into_raw(Box::<VixDiskLibConnectParams>::default()),
                false,
            ),
        };
        // Counted from here until Drop (after Disconnect), so that Exit waits for it.
        vddk.handle_opened();
        let mut h = Handle {
            vddk,
            conn: std::ptr::null_mut(),
            handle: std::ptr::null_mut(),
            params,
            params_allocated,
            _strings: strings,
            info: DiskInfo {
                capacity: 0,
                transport: String::new(),
            },
            stats: Stats::new(),
            async_used: false,
            timeout: spec.timeout,
            left_open: false,
        };
        {
            let s = &h._strings;
            // SAFETY: `params` is a valid, exclusively owned structure (allocated above); the
            // strings it points to live in `h._strings` for as long as `params` does.
            let p = unsafe { &mut *h.params };
            p.vmxSpec = s.vm.as_ptr().cast_mut();
            p.serverName = s.server.as_ptr().cast_mut();
            p.thumbPrint = s
                .thumbprint
                .as_ref()
                .map_or(std::ptr::null_mut(), |t| t.as_ptr().cast_mut());
            p.credType = VIXDISKLIB_CRED_UID;
            p.creds.uid.userName = s.user.as_ptr().cast_mut();
            p.creds.uid.password = s.password.as_ptr().cast_mut();
            p.port = spec.port;
            p.nfcHostPort = spec.nfc_port;
        }

        let connect = lib
            .VixDiskLib_ConnectEx
            .as_ref()
            .map_err(|e| VddkError::ours("ConnectEx", e.to_string()))?;
        {
            let _g = vddk.lock_open_close("ConnectEx", spec.timeout)?;
            if vddk.exited() {
                return Err(VddkError::ours(
                    "ConnectEx",
                    "VDDK was already shut down in this process",
                ));
            }
            clear_warning();
            let t = Instant::now();
            // SAFETY: `params` and its strings are valid; snapshot and transports are
            // NUL-terminated or NULL; `h.conn` receives the connection on success.
            let err = unsafe {
                connect(
                    h.params,
                    1,
                    snapshot.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                    transports.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                    &mut h.conn,
                )
            };
            record(&mut h.stats, "ConnectEx", t.elapsed(), 0);
            if err != VIX_OK as VixError {
                h.conn = std::ptr::null_mut();
                return Err(vddk.error("ConnectEx", err));
            }
        }
        h.open_disk(&path)?;
        Ok(h)
    }

    /// Opens `path` read-only on the connection and reads its facts into `self.info`.
    fn open_disk(&mut self, path: &CStr) -> Result<(), VddkError> {
        let vddk = self.vddk;
        let open = vddk
            .loaded()
            .lib
            .VixDiskLib_Open
            .as_ref()
            .map_err(|e| VddkError::ours("Open", e.to_string()))?;
        {
            let g = vddk.lock_open_close("Open", self.timeout)?;
            clear_warning();
            g.calling("Open");
            let t = Instant::now();
            // SAFETY: `self.conn` is connected and has no disk open; `path` is NUL-terminated;
            // `self.handle` receives the disk handle on success.
            let err = unsafe {
                open(
                    self.conn,
                    path.as_ptr(),
                    VIXDISKLIB_FLAG_OPEN_READ_ONLY,
                    &mut self.handle,
                )
            };
            record(&mut self.stats, "Open", t.elapsed(), 0);
            if err != VIX_OK as VixError {
                self.handle = std::ptr::null_mut();
                return Err(vddk.error("Open", err));
            }
        }
        self.info = self.get_info()?;
        Ok(())
    }

    fn get_info(&mut self) -> Result<DiskInfo, VddkError> {
        let lib = &self.vddk.loaded().lib;
        let get = lib
            .VixDiskLib_GetInfo
            .as_ref()
            .map_err(|e| VddkError::ours("GetInfo", e.to_string()))?;
        let free = lib
            .VixDiskLib_FreeInfo
            .as_ref()
            .map_err(|e| VddkError::ours("FreeInfo", e.to_string()))?;
        let mut info: *mut VixDiskLibInfo = std::ptr::null_mut();
        let t = Instant::now();
        // SAFETY: `self.handle` is open; `info` receives a structure VDDK allocated.
        let err = unsafe { get(self.handle, &mut info) };
        record(&mut self.stats, "GetInfo", t.elapsed(), 0);
        if err != VIX_OK as VixError {
            return Err(self.vddk.error("GetInfo", err));
        }
        if info.is_null() {
            return Err(VddkError::ours("GetInfo", "returned no information"));
        }
        // SAFETY: GetInfo succeeded, so `info` points to a valid VixDiskLibInfo until FreeInfo.
        let capacity = unsafe { (*info).capacity };
        // SAFETY: `info` came from GetInfo and is freed exactly once.
        unsafe { free(info) };
        let transport = match &lib.VixDiskLib_GetTransportMode {
            Ok(f) => {
                // SAFETY: `self.handle` is open; the result is a string owned by VDDK.
                let p = unsafe { f(self.handle) };
                if p.is_null() {
                    "unknown".to_owned()
                } else {
                    // SAFETY: a non-NULL result is NUL-terminated and valid while the handle is.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            }
            Err(_) => "unknown".to_owned(),
        };
        Ok(DiskInfo {
            capacity,
            transport,
        })
    }

    /// Serves requests until Close (or every `Disk` is gone), then drains and closes. A Park
    /// closes only the disk and waits, connected, for a disk to open on the connection.
    pub(super) fn run(mut self, rx: Receiver<Cmd>, tx: Sender<Cmd>) {
        loop {
            let (end, mut pending) = self.serve(&rx, &tx);
            self.drain(&rx, &mut pending);
            let reply = match end {
                End::Park(reply) if !self.close_disk() => {
                    // Not parked: the caller hears the thread hang up.
                    drop(reply);
                    None
                }
                End::Park(reply) => {
                    let _ = reply.send(std::mem::take(&mut self.stats));
                    match self.parked(&rx) {
                        Ok(()) => continue,
                        Err(reply) => reply,
                    }
                }
                End::Close(reply) => reply,
            };
            let stats = self.shutdown();
            if let Some(r) = reply {
                let _ = r.send(stats);
            }
            return;
        }
    }

    /// Serves the disk's requests until Close, Park or every sender is gone.
    fn serve(&mut self, rx: &Receiver<Cmd>, tx: &Sender<Cmd>) -> (End, Pending) {
        let mut pending = Pending::default();
        let mut next_id = 0u64;
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::Read {
                    sector,
                    buf,
                    len,
                    done,
                } => {
                    next_id += 1;
                    if let Some(done) = self.submit_read(next_id, sector, buf, len, done, tx) {
                        pending.0.insert(next_id, (done, Instant::now(), len));
                    }
                }
                Cmd::Completed { id, code } => {
                    if let Some((done, started, len)) = pending.0.remove(&id) {
                        self.complete(done, started, len, code);
                    }
                }
                Cmd::ReadSync {
                    sector,
                    buf,
                    len,
                    reply,
                } => {
                    let _ = reply.send(self.read_sync(sector, buf, len));
                }
                Cmd::Query {
                    start,
                    count,
                    chunk,
                    done,
                } => {
                    let r = self.query(start, count, chunk);
                    deliver(done, r);
                }
                Cmd::Close { reply } => return (End::Close(reply), pending),
                Cmd::Park { reply } => return (End::Park(reply), pending),
                Cmd::OpenDisk { reply, .. } => {
                    let _ = reply.send(Err(VddkError::ours("Open", "a disk is open already")));
                }
            }
        }
        (End::Close(None), pending)
    }

    /// Waits, connected and without a disk, for a disk to open: `Ok` once one is open, `Err`
    /// with Close's reply when the connection is to close.
    fn parked(&mut self, rx: &Receiver<Cmd>) -> Result<(), Option<SyncSender<Stats>>> {
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::OpenDisk { path, reply } => {
                    let opened = CString::new(path)
                        .map_err(|_| VddkError::ours("Open", "the disk path has a NUL byte"))
                        .and_then(|p| self.open_disk(&p));
                    let ok = opened.is_ok();
                    let _ = reply.send(opened.map(|()| self.info.clone()));
                    if ok {
                        return Ok(());
                    }
                }
                Cmd::Close { reply } => return Err(reply),
                Cmd::Read { done, .. } => deliver(done, Err(closed("ReadAsync"))),
                Cmd::ReadSync { reply, .. } => {
                    let _ = reply.send(Err(closed("Read")));
                }
                Cmd::Query { done, .. } => deliver(done, Err(closed("QueryAllocatedBlocks"))),
                Cmd::Park { reply } => {
                    let _ = reply.send(Stats::new());
                }
                Cmd::Completed { .. } => {}
            }
        }
        Err(None)
    }

    /// Starts one read. Returns its completion when VDDK accepted it (it is then pending),
    /// `None` when it was answered at once (synchronous fallback or an error).
    fn submit_read(
        &mut self,
        id: u64,
        sector: u64,
        buf: BufPtr,
        len: usize,
        done: Completion,
        tx: &Sender<Cmd>,
    ) -> Option<Completion> {
        let count = len as u64 / SECTOR;
        let lib = &self.vddk.loaded().lib;
        // ReadAsync only with Wait: without Wait nothing tells when VDDK is done with the
        // buffers of a handle about to close.
        let (Ok(read_async), true) = (&lib.VixDiskLib_ReadAsync, self.vddk.loaded().async_reads())
        else {
            // VDDK before 6.0: one synchronous read at a time.
            let r = self.read_sync(sector, buf, len);
            deliver(done, r);
            return None;
        };
        let data = Box::into_raw(Box::new(CallbackData { id, tx: tx.clone() }));
        // SAFETY: `self.handle` is open. `buf.0` points to `len` writable bytes owned by
        // `done`'s boxed buffer, which is kept in `pending` untouched until the completion for
        // `id` arrives. `data` is reclaimed by `read_done` exactly once if VDDK accepts the
        // request (VIX_ASYNC), or below if it does not.
        let err = unsafe {
            read_async(
                self.handle,
                sector,
                count,
                buf.0,
                Some(read_done),
                data.cast(),
            )
        };
        if err == VIX_ASYNC as VixError {
            self.async_used = true;
            return Some(done);
        }
        let e = if err == VIX_OK as VixError {
            // Undocumented: VDDK may have called `read_done` already, so `data` is left alone
            // (a few bytes leaked) rather than risk freeing it twice.
            VddkError::ours("ReadAsync", "returned VIX_OK instead of VIX_ASYNC")
        } else {
            // SAFETY: VDDK refused the request, so it will never call `read_done` with `data`.
            drop(unsafe { Box::from_raw(data) });
            self.vddk.error("ReadAsync", err)
        };
        deliver(done, Err(e));
        None
    }

    fn complete(&mut self, done: Completion, started: Instant, len: usize, code: VixError) {
        if code == VIX_OK as VixError {
            record(&mut self.stats, "ReadAsync", started.elapsed(), len as u64);
            deliver(done, Ok(()));
        } else {
            record(&mut self.stats, "ReadAsync", started.elapsed(), 0);
            let e = self.vddk.error("ReadAsync", code);
            deliver(done, Err(e));
        }
    }

    fn read_sync(&mut self, sector: u64, buf: BufPtr, len: usize) -> Result<(), VddkError> {
        let read = self
            .vddk
            .loaded()
            .lib
            .VixDiskLib_Read
            .as_ref()
            .map_err(|e| VddkError::ours("Read", e.to_string()))?;
        let t = Instant::now();
        // SAFETY: `self.handle` is open; `buf.0` points to `len` writable bytes that the
        // requester keeps alive and untouched until this call has returned.
        let err = unsafe { read(self.handle, sector, len as u64 / SECTOR, buf.0) };
        let ok = err == VIX_OK as VixError;
        record(
            &mut self.stats,
            "Read",
            t.elapsed(),
            if ok { len as u64 } else { 0 },
        );
        if ok {
            Ok(())
        } else {
            Err(self.vddk.error("Read", err))
        }
    }

    fn query(&mut self, start: u64, count: u64, chunk: u64) -> Result<Vec<Block>, VddkError> {
        let lib = &self.vddk.loaded().lib;
        let (Ok(query), Ok(free)) = (
            &lib.VixDiskLib_QueryAllocatedBlocks,
            &lib.VixDiskLib_FreeBlockList,
        ) else {
            return Err(VddkError::ours(
                "QueryAllocatedBlocks",
                "not available in this VDDK (added in 6.7)",
            ));
        };
        let mut list: *mut VixDiskLibBlockList = std::ptr::null_mut();
        let t = Instant::now();
        // SAFETY: `self.handle` is open; `list` receives a list VDDK allocated.
        let err = unsafe { query(self.handle, start, count, chunk, &mut list) };
        record(&mut self.stats, "QueryAllocatedBlocks", t.elapsed(), 0);
        if err != VIX_OK as VixError {
            return Err(self.vddk.error("QueryAllocatedBlocks", err));
        }
        if list.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: QueryAllocatedBlocks succeeded: `list` holds `numBlocks` blocks laid out
        // from `blocks` (a C flexible array), valid until FreeBlockList.
        let blocks = unsafe {
            let n = (*list).numBlocks as usize;
            let first = std::ptr::addr_of!((*list).blocks).cast::<crate::VixDiskLibBlock>();
            std::slice::from_raw_parts(first, n)
                .iter()
                .map(|b| (b.offset, b.length))
                .collect()
        };
        // SAFETY: `list` came from QueryAllocatedBlocks and is freed exactly once.
        unsafe { free(list) };
        Ok(blocks)
    }

    /// Lets every accepted read finish: VixDiskLib_Wait, then their completions (already
    /// posted) are handed out. Buffers must not be released while VDDK may still write them.
    fn drain(&mut self, rx: &Receiver<Cmd>, pending: &mut Pending) {
        // Wait even when every completion has been posted: VDDK may still be inside our
        // callback (after it posted), and closing the handle under it would be a use after free.
        // Wait returns once the callbacks have returned.
        if !self.async_used {
            return;
        }
        if let Ok(wait) = &self.vddk.loaded().lib.VixDiskLib_Wait {
            let t = Instant::now();
            // SAFETY: `self.handle` is open; Wait returns once its async requests completed.
            unsafe { wait(self.handle) };
            record(&mut self.stats, "Wait", t.elapsed(), 0);
        }
        while !pending.0.is_empty() {
            // Every accepted request posts exactly one completion; after Wait they are queued.
            match rx.recv() {
                Ok(Cmd::Completed { id, code }) => {
                    if let Some((done, started, len)) = pending.0.remove(&id) {
                        self.complete(done, started, len, code);
                    }
                }
                Ok(Cmd::Read { done, .. }) => deliver(done, Err(closed("ReadAsync"))),
                Ok(Cmd::ReadSync { reply, .. }) => {
                    let _ = reply.send(Err(closed("Read")));
                }
                Ok(Cmd::Query { done, .. }) => deliver(done, Err(closed("QueryAllocatedBlocks"))),
                Ok(Cmd::Close { reply }) => drop(reply),
                Ok(Cmd::Park { reply }) => drop(reply),
                Ok(Cmd::OpenDisk { reply, .. }) => {
                    let _ = reply.send(Err(closed("Open")));
                }
                Err(_) => break,
            }
        }
    }

    /// Closes the disk handle and the connection, whichever are open, timing the calls.
    /// Returns false when they could not be closed because another connection's call is stuck
    /// under the open/close lock: they are then left open (and must not be freed).
    fn release(&mut self) -> bool {
        if self.handle.is_null() && self.conn.is_null() {
            return true;
        }
        let lib = &self.vddk.loaded().lib;
        let g = match self.vddk.lock_open_close("Close", self.timeout) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(target: "vddk", "{e}; this connection is left open");
                return false;
            }
        };
        self.close_handle();
        if !self.conn.is_null() {
            if let Ok(disconnect) = &lib.VixDiskLib_Disconnect {
                g.calling("Disconnect");
                let t = Instant::now();
                // SAFETY: `self.conn` is connected and its disk handle, if any, was closed
                // just above.
                unsafe { disconnect(self.conn) };
                record(&mut self.stats, "Disconnect", t.elapsed(), 0);
            }
            self.conn = std::ptr::null_mut();
        }
        true
    }

    /// Closes the disk handle, if one is open (the caller holds the open/close lock).
    fn close_handle(&mut self) {
        if self.handle.is_null() {
            return;
        }
        if let Ok(close) = &self.vddk.loaded().lib.VixDiskLib_Close {
            let t = Instant::now();
            // SAFETY: `self.handle` is open and no request on it is outstanding: the serving
            // loop drains before it ends, and a handle that failed in `open` never had one.
            unsafe { close(self.handle) };
            record(&mut self.stats, "Close", t.elapsed(), 0);
        }
        self.handle = std::ptr::null_mut();
    }

    /// Closes the disk and keeps the connection. False when the open/close lock could not be
    /// had (another connection's call is stuck): the disk is still open.
    fn close_disk(&mut self) -> bool {
        match self.vddk.lock_open_close("Close", self.timeout) {
            Ok(_g) => {
                self.close_handle();
                true
            }
            Err(e) => {
                tracing::warn!(target: "vddk", "{e}; the connection is not kept");
                false
            }
        }
    }

    fn shutdown(mut self) -> Stats {
        self.left_open = !self.release();
        std::mem::take(&mut self.stats)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A Handle that failed half-way through `open` still has its handle or connection.
        if self.left_open || !self.release() {
            // Still open: VDDK may use the parameters and their strings, which are leaked, and
            // Exit must not be called while the connection counts.
            std::mem::forget(std::mem::take(&mut self._strings));
            return;
        }
        self.vddk.handle_closed();
        let lib = &self.vddk.loaded().lib;
        if self.params_allocated {
            if let Ok(free) = &lib.VixDiskLib_FreeConnectParams {
                // SAFETY: `params` came from AllocateConnectParams and is freed once; the
                // strings it points to are ours and are not freed by VDDK.
                unsafe { free(self.params) };
            }
        } else {
            // SAFETY: `params` came from Box::into_raw in `open` and is reclaimed once.
            drop(unsafe { Box::from_raw(self.params) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run as a child of the test below: a thread that panics holding a pending read.
    const CHILD: &str = "VDDK_SYS_PANIC_WITH_PENDING_READS";

    #[test]
    fn a_panic_with_reads_in_flight_aborts_the_process() {
        if std::env::var_os(CHILD).is_some() {
            let mut pending = Pending::default();
            let done: Completion = Box::new(|_| {});
            pending.0.insert(1, (done, Instant::now(), 512));
            panic!("a bug on the handle thread");
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "disk::handle::tests::a_panic_with_reads_in_flight_aborts_the_process",
                "--test-threads",
                "1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc_sigabrt()),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("1 reads in flight; aborting"));

        // Without reads in flight a panic unwinds as usual.
        let empty = std::thread::spawn(|| {
            let _pending = Pending::default();
            panic!("nothing in flight");
        });
        assert!(empty.join().is_err());
    }

    /// SIGABRT (6 on Linux; vddk-sys does not depend on libc).
    fn libc_sigabrt() -> i32 {
        6
    }
}

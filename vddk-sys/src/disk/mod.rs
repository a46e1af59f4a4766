//! One open VDDK disk: a connection (`ConnectEx`) and a disk handle (`Open`) owned by one
//! dedicated thread, which makes every call on them (VDDK handles are not to be shared between
//! threads). Callers send it requests; reads go out with `ReadAsync`, many in flight at once,
//! and VDDK's completion callbacks only post the result back to the thread, which hands the
//! filled buffer to the caller. Every call is timed into per-call statistics.

mod handle;

use std::fmt;
use std::ops::DerefMut;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::session::{Vddk, VddkError};
use crate::VIXDISKLIB_SECTOR_SIZE;
use handle::{BufPtr, Cmd, Completion, Handle};

/// Bytes per sector.
pub const SECTOR: u64 = VIXDISKLIB_SECTOR_SIZE as u64;

/// A password: never printed, not even by `{:?}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What to connect to and which disk to open.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// vCenter or ESXi host name.
    pub server: String,
    /// Its HTTPS port (443).
    pub port: u32,
    /// Its NFC port (902).
    pub nfc_port: u32,
    /// User name.
    pub user: String,
    /// The user's password.
    pub password: Password,
    /// The SHA-1 thumbprint of the server's certificate (`01:23:...`).
    pub thumbprint: Option<String>,
    /// The VM, as VDDK's vmxSpec: `moref=vm-42`.
    pub vm: String,
    /// A snapshot moref (`snapshot-7`): read the disk as of that snapshot.
    pub snapshot: Option<String>,
    /// Transport modes to try, in order (`nbdssl:nbd`); `None` lets VDDK choose.
    pub transports: Option<String>,
    /// The disk: `[datastore1] vm/vm.vmdk`.
    pub path: String,
}

/// Facts about an open disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Size in sectors.
    pub capacity: u64,
    /// The transport mode VDDK chose (`nbdssl`, `hotadd`, ...).
    pub transport: String,
}

/// Time, count and bytes of one VixDiskLib call on a handle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    /// Calls made.
    pub calls: u64,
    /// Time spent, summed (for asynchronous reads: from submission to completion).
    pub time: Duration,
    /// Bytes moved.
    pub bytes: u64,
}

/// Per-call statistics of a handle, by call name, in the order the calls were first made.
pub type Stats = Vec<(&'static str, CallStats)>;

fn record(stats: &mut Stats, call: &'static str, time: Duration, bytes: u64) {
    let i = match stats.iter().position(|(c, _)| *c == call) {
        Some(i) => i,
        None => {
            stats.push((call, CallStats::default()));
            stats.len() - 1
        }
    };
    let s = &mut stats[i].1;
    s.calls += 1;
    s.time += time;
    s.bytes += bytes;
}

/// An allocated range in sectors, as `QueryAllocatedBlocks` reports it.
pub type Block = (u64, u64);

/// An open disk. Dropping it closes the handle in the background; [`Disk::close`] waits.
pub struct Disk {
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    info: DiskInfo,
}

impl Disk {
    /// Connects and opens `spec.path` read-only, on a new thread that owns the handle. Blocks
    /// until VDDK has answered (ConnectEx can take seconds).
    pub fn open(vddk: &'static Vddk, spec: &DiskSpec) -> Result<Disk, VddkError> {
        Disk::open_holding(vddk, spec, Box::new(()))
    }

    /// [`Disk::open`], keeping `held` (e.g. a slot under a per-host connection cap) until the
    /// connection is gone: it is dropped on the handle thread after Disconnect, or when the
    /// open fails.
    pub fn open_holding(
        vddk: &'static Vddk,
        spec: &DiskSpec,
        held: Box<dyn Send>,
    ) -> Result<Disk, VddkError> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let spec = spec.clone();
        let cb_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name("vddk-handle".into())
            .spawn(move || {
                match Handle::open(vddk, &spec) {
                    Ok(h) => {
                        let _ = ready_tx.send(Ok(h.info.clone()));
                        h.run(rx, cb_tx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                drop(held);
            })
            .map_err(|e| VddkError::ours("Open", format!("cannot start a thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(info)) => Ok(Disk {
                tx,
                thread: Some(thread),
                info,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(VddkError::ours("Open", "the VDDK handle thread ended"))
            }
        }
    }

    /// Size and transport mode.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// Reads `buf.len()` bytes (a multiple of 512) at `sector` with `ReadAsync`; `done` gets
    /// the filled buffer back (or the error) on the handle thread.
    pub fn read_async<B, F>(&self, sector: u64, buf: B, done: F)
    where
        B: DerefMut<Target = [u8]> + Send + 'static,
        F: FnOnce(Result<B, VddkError>) + Send + 'static,
    {
        let mut boxed = Box::new(buf);
        let slice: &mut [u8] = &mut boxed;
        let (ptr, len) = (BufPtr(slice.as_mut_ptr()), slice.len());
        if !(len as u64).is_multiple_of(SECTOR) {
            done(Err(VddkError::ours(
                "ReadAsync",
                format!("read of {len} bytes is not a whole number of sectors"),
            )));
            return;
        }
        let done: Completion = Box::new(move |r| done(r.map(|()| *boxed)));
        if let Err(mpsc::SendError(Cmd::Read { done, .. })) = self.tx.send(Cmd::Read {
            sector,
            buf: ptr,
            len,
            done,
        }) {
            done(Err(closed("ReadAsync")));
        }
    }

    /// Reads into `buf` (a multiple of 512 bytes) at `sector` with the synchronous
    /// `VixDiskLib_Read`, blocking until it is done.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), VddkError> {
        if !(buf.len() as u64).is_multiple_of(SECTOR) {
            return Err(VddkError::ours(
                "Read",
                format!(
                    "read of {} bytes is not a whole number of sectors",
                    buf.len()
                ),
            ));
        }
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Cmd::ReadSync {
                sector,
                buf: BufPtr(buf.as_mut_ptr()),
                len: buf.len(),
                reply,
            })
            .map_err(|_| closed("Read"))?;
        // Waiting here keeps `buf` borrowed until the handle thread has finished with it: it
        // replies only after the Read call returned (or drops `reply` without calling).
        rx.recv().map_err(|_| closed("Read"))?
    }

    /// The allocated blocks (in sectors) of `[start, start+count)` with `QueryAllocatedBlocks`
    /// (`start` and `count` multiples of `chunk`); `done` gets them on the handle thread.
    pub fn query_allocated<F>(&self, start: u64, count: u64, chunk: u64, done: F)
    where
        F: FnOnce(Result<Vec<Block>, VddkError>) + Send + 'static,
    {
        let done: Box<dyn FnOnce(Result<Vec<Block>, VddkError>) + Send> = Box::new(done);
        if let Err(mpsc::SendError(Cmd::Query { done, .. })) = self.tx.send(Cmd::Query {
            start,
            count,
            chunk,
            done,
        }) {
            done(Err(closed("QueryAllocatedBlocks")));
        }
    }

    /// Waits for the reads in flight, closes the handle and the connection, and returns the
    /// per-call statistics.
    pub fn close(mut self) -> Stats {
        let (reply, rx) = mpsc::sync_channel(1);
        let stats = match self.tx.send(Cmd::Close { reply: Some(reply) }) {
            Ok(()) => rx.recv().unwrap_or_default(),
            Err(_) => Stats::new(),
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        stats
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.tx.send(Cmd::Close { reply: None });
        }
    }
}

fn closed(call: &'static str) -> VddkError {
    VddkError::ours(call, "the VDDK handle is closed")
}

//! One open VDDK disk: a connection (`ConnectEx`) and a disk handle (`Open`) owned by one
//! dedicated thread, which makes every call on them (VDDK handles are not to be shared between
//! threads). Callers send it requests; reads go out with `ReadAsync`, many in flight at once,
//! and VDDK's completion callbacks only post the result back to the thread, which hands the
//! filled buffer to the caller. Every call is timed into per-call statistics. A disk can be
//! closed with its connection kept ([`Disk::park`]) and another disk opened on that connection
//! later ([`Parked::open`]): the next checkpoint of a warm migration needs no new `ConnectEx`.
//!
//! A VDDK call may never return (a hung NFC connection, a host that froze). The caller never
//! waits for one without a bound: opening and closing give up after the spec's `timeout` and
//! abandon the handle thread, which keeps the connection, the buffers VDDK may still write and
//! itself (leaked, never freed under VDDK). Reads hand over owned buffers ([`ReadBuf`]), so a
//! caller may stop waiting for one at any time.

mod handle;

use std::fmt;
use std::ops::Range;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
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
    /// How long opening (ConnectEx, Open, GetInfo, and the wait for another connection's) and
    /// closing (Wait, Close, Disconnect) may take before the handle is given up.
    pub timeout: Duration,
}

/// The buffer of an asynchronous read: `bytes[range]` is filled. It is owned heap memory, so
/// it stays where VDDK writes it however the value moves, and nobody else can reach it until
/// the read's completion gives it back.
#[derive(Debug)]
pub struct ReadBuf {
    /// The allocation.
    pub bytes: Vec<u8>,
    /// The bytes to read into.
    pub range: Range<usize>,
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
    vddk: &'static Vddk,
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    info: DiskInfo,
    timeout: Duration,
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
        let timeout = spec.timeout;
        let cb_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name("vddk-handle".into())
            .spawn(move || {
                match Handle::open(vddk, &spec) {
                    // Nobody waits any more when the open took too long: the handle is closed
                    // again at once (dropping it closes it).
                    Ok(h) => match ready_tx.send(Ok(h.info.clone())) {
                        Ok(()) => h.run(rx, cb_tx),
                        Err(_) => drop(h),
                    },
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                drop(held);
            })
            .map_err(|e| VddkError::ours("Open", format!("cannot start a thread: {e}")))?;
        match ready_rx.recv_timeout(timeout) {
            Ok(Ok(info)) => Ok(Disk {
                vddk,
                tx,
                thread: Some(thread),
                info,
                timeout,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => {
                // The thread is left to itself (never joined): it closes the handle if VDDK
                // ever answers.
                vddk.handle_abandoned();
                let stuck = match vddk.busy() {
                    Some((call, held)) => format!(
                        "VixDiskLib_{call} has been running for {} s",
                        held.as_secs()
                    ),
                    None => "VDDK has not answered".to_owned(),
                };
                Err(VddkError::stuck(
                    "Open",
                    format!(
                        "the disk was not open after {} s ({stuck}); the connection is abandoned",
                        timeout.as_secs_f64()
                    ),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Err(VddkError::ours("Open", "the VDDK handle thread ended"))
            }
        }
    }

    /// Size and transport mode.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// Reads `buf.range` (a multiple of 512 bytes) at `sector` with `ReadAsync` (or `Read` on
    /// the handle thread, when VDDK lacks ReadAsync or Wait); `done` gets the filled buffer
    /// back (or the error) on the handle thread. The buffer stays with the handle until then,
    /// so the caller may stop waiting at any time.
    pub fn read_async<F>(&self, sector: u64, mut buf: ReadBuf, done: F)
    where
        F: FnOnce(Result<ReadBuf, VddkError>) + Send + 'static,
    {
        let Some(slice) = buf.bytes.get_mut(buf.range.clone()) else {
            let e = format!(
                "read range {:?} is outside its buffer of {} bytes",
                buf.range,
                buf.bytes.len()
            );
            done(Err(VddkError::ours("ReadAsync", e)));
            return;
        };
        let (ptr, len) = (BufPtr(slice.as_mut_ptr()), slice.len());
        if !(len as u64).is_multiple_of(SECTOR) {
            done(Err(VddkError::ours(
                "ReadAsync",
                format!("read of {len} bytes is not a whole number of sectors"),
            )));
            return;
        }
        // `buf` moves into the completion; its heap bytes (where `ptr` points) do not move.
        let done: Completion = Box::new(move |r| done(r.map(|()| buf)));
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
    /// `VixDiskLib_Read`, blocking until it is done: without a bound, since `buf` is borrowed
    /// and VDDK writes it until the call returns. Use [`Disk::read_async`] where a read must
    /// be given up.
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
    /// per-call statistics. When that takes longer than the spec's timeout (a Wait or Close
    /// that does not return), the handle thread is abandoned and no statistics come back.
    pub fn close(mut self) -> Stats {
        let (reply, rx) = mpsc::sync_channel(1);
        if self.tx.send(Cmd::Close { reply: Some(reply) }).is_err() {
            return Stats::new();
        }
        match rx.recv_timeout(closing_wait(self.timeout)) {
            Ok(stats) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                stats
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    target: "vddk",
                    "the VDDK handle did not close within {} s; it is abandoned",
                    closing_wait(self.timeout).as_secs_f64()
                );
                // Dropped unjoined: the thread ends by itself if VDDK ever returns.
                self.thread.take();
                self.vddk.handle_abandoned();
                Stats::new()
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                Stats::new()
            }
        }
    }
}

impl Disk {
    /// Waits for the reads in flight and closes the disk but not the connection, which is
    /// kept for opening another disk on it ([`Parked::open`]): the next checkpoint of a warm
    /// migration needs no new `ConnectEx`. `None` when the disk could not be closed in time
    /// (the handle is then abandoned, as [`Disk::close`] does).
    pub fn park(mut self) -> Option<Parked> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(Cmd::Park { reply }).ok()?;
        match rx.recv_timeout(closing_wait(self.timeout)) {
            Ok(_stats) => Some(Parked {
                vddk: self.vddk,
                tx: self.tx.clone(),
                thread: self.thread.take(),
                timeout: self.timeout,
                transport: self.info.transport.clone(),
            }),
            Err(RecvTimeoutError::Timeout) => {
                self.thread.take();
                self.vddk.handle_abandoned();
                None
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                None
            }
        }
    }

    /// Gives the handle up without waiting: a call on it has not returned. It is closed in
    /// the background if VDDK ever answers, and [`session::exit`](crate::session::exit) does
    /// not wait for it.
    pub fn abandon(mut self) {
        let _ = self.tx.send(Cmd::Close { reply: None });
        self.thread.take();
        self.vddk.handle_abandoned();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.tx.send(Cmd::Close { reply: None });
        }
    }
}

/// A VDDK connection without an open disk, kept by its handle thread for the next disk.
/// Dropping it disconnects in the background.
pub struct Parked {
    vddk: &'static Vddk,
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
    transport: String,
}

impl Parked {
    /// The transport mode the connection's last disk used.
    pub fn transport(&self) -> &str {
        &self.transport
    }

    /// Opens `path` read-only on this connection. On failure the connection is closed.
    pub fn open(mut self, path: &str) -> Result<Disk, VddkError> {
        let (reply, rx) = mpsc::sync_channel(1);
        let cmd = Cmd::OpenDisk {
            path: path.to_owned(),
            reply,
        };
        if self.tx.send(cmd).is_err() {
            return Err(closed("Open"));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(info)) => Ok(Disk {
                vddk: self.vddk,
                tx: self.tx.clone(),
                thread: self.thread.take(),
                info,
                timeout: self.timeout,
            }),
            Ok(Err(e)) => {
                self.close();
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => {
                self.thread.take();
                self.vddk.handle_abandoned();
                Err(VddkError::stuck(
                    "Open",
                    format!(
                        "the disk was not open after {} s; the connection is abandoned",
                        self.timeout.as_secs_f64()
                    ),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => Err(closed("Open")),
        }
    }

    /// Disconnects, waiting at most the timeout.
    pub fn close(mut self) {
        let (reply, rx) = mpsc::sync_channel(1);
        if self.tx.send(Cmd::Close { reply: Some(reply) }).is_err() {
            return;
        }
        match rx.recv_timeout(closing_wait(self.timeout)) {
            Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                self.thread.take();
                self.vddk.handle_abandoned();
            }
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.tx.send(Cmd::Close { reply: None });
        }
    }
}

/// How long a caller waits for a handle to close: the handle's own bounded waits (for VDDK's
/// Wait, and for the open/close lock another connection may hold) come first, so that the
/// handle thread reports what it gave up on before the caller gives up on the thread.
fn closing_wait(timeout: Duration) -> Duration {
    timeout + (timeout / 2).min(Duration::from_secs(2))
}

fn closed(call: &'static str) -> VddkError {
    VddkError::ours(call, "the VDDK handle is closed")
}

//! `vddk://` source: a VMware virtual disk read through VMware's VDDK (VixDiskLib), loaded at
//! run time from the directory the user gives (see `vddk-sys`).
//!
//! Each handle is one VDDK connection and disk handle, owned by a thread of its own
//! (`vddk_sys::disk`); reads go out with `ReadAsync`, as many in flight as the engine sends.
//! Extents come from `QueryAllocatedBlocks` for the range a worker asks about (64 KiB chunks,
//! at most 32 GiB per call); without it, or when it fails, every range is data and the
//! engine's zero detection finds the zeros. ESXi hosts allow few NFC connections, so the
//! connections a process opens to one server can be capped ([`set_host_connection_limit`]).

pub mod params;
pub mod sessions;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use vddk_sys::disk::{Disk, DiskSpec, Password, ReadBuf, SECTOR};
use vddk_sys::session::{self, Vddk, VddkError};
use vddk_sys::{VIXDISKLIB_MAX_CHUNK_NUMBER, VIXDISKLIB_MIN_CHUNK_SIZE};

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{clip, Extent, ExtentKind};
use crate::source::{BlockSource, SourceCaps};

pub use params::{Secret, VddkParams};
pub use sessions::Sessions;

/// The chunk QueryAllocatedBlocks is asked with: VDDK's smallest, 128 sectors (64 KiB).
const CHUNK_SECTORS: u64 = VIXDISKLIB_MIN_CHUNK_SIZE as u64;
const CHUNK: u64 = CHUNK_SECTORS * SECTOR;
/// At most this many bytes per QueryAllocatedBlocks call (VDDK's chunk-count limit: 32 GiB).
const MAX_QUERY: u64 = VIXDISKLIB_MAX_CHUNK_NUMBER as u64 * CHUNK;
/// Reads one handle keeps in flight at most.
const MAX_REQUESTS: usize = 16;

/// Per-server connection caps, and the cap for servers without one of their own.
struct Limits {
    default: Option<usize>,
    hosts: HashMap<String, (usize, Arc<Semaphore>)>,
}

static LIMITS: Mutex<Option<Limits>> = Mutex::new(None);

/// Caps the VDDK connections this process holds open to `server` at once (ESXi allows 10 NFC
/// connections by default, shared by everything that reads from the host). Opening one more
/// waits until another closes. Applies to connections opened afterwards.
pub fn set_host_connection_limit(server: &str, limit: usize) {
    let mut g = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let l = g.get_or_insert_with(|| Limits {
        default: None,
        hosts: HashMap::new(),
    });
    let limit = limit.max(1);
    l.hosts.insert(
        server.to_ascii_lowercase(),
        (limit, Arc::new(Semaphore::new(limit))),
    );
}

/// Caps the connections to every server that has no limit of its own (`None`: no cap, the
/// default).
pub fn set_default_host_connection_limit(limit: Option<usize>) {
    let mut g = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let l = g.get_or_insert_with(|| Limits {
        default: None,
        hosts: HashMap::new(),
    });
    l.default = limit.map(|n| n.max(1));
}

/// The semaphore that caps connections to `server`, if any.
fn host_semaphore(server: &str) -> Option<Arc<Semaphore>> {
    let mut g = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let l = g.as_mut()?;
    let key = server.to_ascii_lowercase();
    if let Some((_, s)) = l.hosts.get(&key) {
        return Some(s.clone());
    }
    let n = l.default?;
    let s = Arc::new(Semaphore::new(n));
    l.hosts.insert(key, (n, s.clone()));
    Some(s)
}

async fn host_permit(server: &str) -> Option<OwnedSemaphorePermit> {
    let sem = host_semaphore(server)?;
    if sem.available_permits() == 0 {
        tracing::debug!(server, "waiting for a free VDDK connection slot");
    }
    sem.acquire_owned().await.ok()
}

/// The `LD_LIBRARY_PATH` a process loading VDDK from `libdir` needs, when the current one
/// lacks VDDK's `lib64` directory (VDDK's own libraries are found only through it, and the
/// dynamic loader reads it once, at program start: the program must re-execute itself).
pub fn library_path_for(libdir: &Path) -> Option<OsString> {
    let lib64 = vddk_sys::load::lib64_dir(libdir);
    if !lib64.is_dir() {
        return None;
    }
    let current = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    if std::env::split_paths(&current).any(|p| p == lib64) {
        return None;
    }
    let mut dirs = vec![lib64];
    dirs.extend(std::env::split_paths(&current).filter(|p| !p.as_os_str().is_empty()));
    std::env::join_paths(dirs).ok()
}

/// The version of the VDDK this process loaded, once a `vddk://` source has been opened.
pub fn loaded_version() -> Option<String> {
    session::current_version()
}

/// The ESXi host VDDK last opened a disk on, as VDDK's log named it.
pub fn connected_host() -> Option<String> {
    session::connected_host()
}

/// Ends this process's VDDK session (`VixDiskLib_Exit`) if it has one, once its handles have
/// closed. Call it before the process exits; VDDK cannot be used afterwards.
pub fn shutdown() {
    session::exit(Duration::from_secs(10));
}

/// A VMware disk read through VDDK.
pub struct VddkSource {
    params: Arc<VddkParams>,
    vddk: &'static Vddk,
    disk: RwLock<Option<Disk>>,
    size: u64,
    transport: String,
    /// Whether QueryAllocatedBlocks may still be asked (it is given up after a failure).
    query: Arc<AtomicBool>,
    /// The changed areas read from vSphere when the disk was opened for a delta.
    changes: Option<Arc<crate::source::KnownChanges>>,
    /// Where the connection goes when the source closes, for the next checkpoint.
    sessions: Option<Sessions>,
    /// False once a call on the handle failed: its connection is not kept.
    healthy: AtomicBool,
}

fn to_error(params: &VddkParams, e: VddkError) -> Error {
    let kind = match (e.call, e.number()) {
        _ if e.timed_out => ErrorKind::TimedOut,
        ("load" | "InitEx", _) => ErrorKind::Unsupported,
        ("ConnectEx", _) => ErrorKind::Connect,
        ("Open", 4) => ErrorKind::NotFound,
        ("Open" | "GetInfo", _) => ErrorKind::Server,
        // A failed read may leave the handle unusable: a retry reopens it.
        ("Read" | "ReadAsync" | "Wait", _) => ErrorKind::Io,
        _ => ErrorKind::Server,
    };
    Error::new(kind, format!("{}: {e}", describe(params)))
}

fn describe(p: &VddkParams) -> String {
    format!(
        "vddk {}@{} {} {}",
        p.user,
        p.server,
        p.vm.strip_prefix("moref=").unwrap_or(&p.vm),
        p.file
    )
}

impl VddkSource {
    /// Loads and initialises VDDK (once per process), connects and opens the disk.
    pub async fn open(params: VddkParams) -> Result<Self> {
        Self::open_with(params, None).await
    }

    /// [`VddkSource::open`], taking a connection `sessions` kept (no `ConnectEx`) when one
    /// fits, and giving the connection back to it when the source closes.
    pub async fn open_with(params: VddkParams, sessions: Option<Sessions>) -> Result<Self> {
        params.check()?;
        Self::open_handle(Arc::new(params), true, sessions).await
    }

    /// A connection `sessions` kept, with `params`' disk open on it.
    async fn reuse(params: &Arc<VddkParams>, sessions: &Sessions) -> Option<(&'static Vddk, Disk)> {
        let parked = sessions.connection(params)?;
        let p = params.clone();
        let r = tokio::task::spawn_blocking(move || {
            let vddk = session::init(&p.libdir, p.config.as_deref())?;
            parked.open(&p.file).map(|d| (vddk, d))
        })
        .await
        .ok()?;
        match r {
            Ok(x) => {
                tracing::debug!("{}: reusing a kept VDDK connection", describe(params));
                Some(x)
            }
            Err(e) => {
                tracing::info!(
                    "{}: a kept VDDK connection could not open the disk ({e}); connecting again",
                    describe(params)
                );
                None
            }
        }
    }

    async fn open_handle(
        params: Arc<VddkParams>,
        first: bool,
        sessions: Option<Sessions>,
    ) -> Result<Self> {
        let reused = match &sessions {
            Some(s) => Self::reuse(&params, s).await,
            None => None,
        };
        let (vddk, disk) = match reused {
            Some(x) => x,
            None => Self::connect(&params, first, sessions.as_ref()).await?,
        };
        let info = disk.info().clone();
        let query = vddk.loaded().has("VixDiskLib_QueryAllocatedBlocks")
            && vddk.loaded().has("VixDiskLib_FreeBlockList");
        if first {
            tracing::info!(
                vddk = %vddk.version_or_major(),
                transport = %info.transport,
                library = %vddk.loaded().path.display(),
                "{}: VDDK {} chose transport {}",
                describe(&params),
                vddk.version_or_major(),
                info.transport
            );
            let missing = vddk.loaded().missing_optional();
            if !missing.is_empty() {
                tracing::debug!(?missing, "VDDK lacks optional calls");
            }
        } else {
            tracing::debug!(transport = %info.transport, "another VDDK handle");
        }
        Ok(VddkSource {
            size: info.capacity.saturating_mul(SECTOR),
            transport: info.transport,
            params,
            vddk,
            disk: RwLock::new(Some(disk)),
            query: Arc::new(AtomicBool::new(query)),
            changes: None,
            sessions,
            healthy: AtomicBool::new(true),
        })
    }

    /// A new connection (`ConnectEx`) with the disk open on it.
    async fn connect(
        params: &Arc<VddkParams>,
        first: bool,
        sessions: Option<&Sessions>,
    ) -> Result<(&'static Vddk, Disk)> {
        // An idle kept connection to the server gives its slot up for this one.
        if let (Some(s), Some(sem)) = (sessions, host_semaphore(&params.server)) {
            if sem.available_permits() == 0 {
                s.close_one_to(&params.server).await;
            }
        }
        // The first handle waits for a slot under the host's cap; another one is only worth
        // having when a slot is free now (waiting could deadlock copies that each hold one).
        let permit = if first {
            host_permit(&params.server).await
        } else {
            match host_semaphore(&params.server) {
                None => None,
                Some(sem) => Some(sem.try_acquire_owned().map_err(|_| {
                    Error::new(
                        ErrorKind::Busy,
                        format!(
                            "{}: no free VDDK connection slot for {}",
                            describe(params),
                            params.server
                        ),
                    )
                })?),
            }
        };
        let p = params.clone();
        let (vddk, disk) = tokio::task::spawn_blocking(move || {
            let vddk = session::init(&p.libdir, p.config.as_deref())?;
            let spec = DiskSpec {
                server: p.server.clone(),
                port: p.port,
                nfc_port: p.nfc_port,
                user: p.user.clone(),
                password: Password::new(p.password.as_ref().map_or("", |s| s.expose())),
                thumbprint: p.thumbprint.clone(),
                vm: p.vm.clone(),
                snapshot: p.snapshot.clone(),
                transports: p.transports.clone(),
                path: p.file.clone(),
                timeout: p.timeout,
            };
            Disk::open_holding(vddk, &spec, Box::new(permit)).map(|d| (vddk, d))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("VDDK open task failed: {e}")))?
        .map_err(|e| to_error(params, e))?;
        Ok((vddk, disk))
    }

    /// The same source, reporting `ranges` as its changes (see [`BlockSource::changes`]).
    pub fn with_changes(mut self, ranges: Vec<(u64, u64)>) -> Self {
        self.changes = Some(Arc::new(crate::source::KnownChanges(ranges)));
        self
    }

    /// The transport mode VDDK chose for this handle.
    pub fn transport(&self) -> &str {
        &self.transport
    }

    /// VDDK's version (announced in its log) or the library's major version.
    pub fn vddk_version(&self) -> String {
        self.vddk.version_or_major()
    }

    fn closed(&self) -> Error {
        Error::new(
            ErrorKind::Disconnected,
            format!("{}: the VDDK handle is closed", describe(&self.params)),
        )
    }

    /// The error for `what` taking too long. The handle is given up: later requests on this
    /// source fail as disconnected and are retried on a new one.
    fn timed_out(&self, what: String) -> Error {
        if let Some(disk) = self.disk.write().unwrap_or_else(|e| e.into_inner()).take() {
            disk.abandon();
        }
        Error::new(
            ErrorKind::TimedOut,
            format!(
                "{}: VDDK did not complete {what} in {} s",
                describe(&self.params),
                self.params.timeout.as_secs_f64()
            ),
        )
    }

    async fn allocated(&self, start: u64, count: u64) -> Result<Vec<(u64, u64)>> {
        let (tx, rx) = oneshot::channel();
        {
            let g = self.disk.read().unwrap_or_else(|e| e.into_inner());
            let disk = g.as_ref().ok_or_else(|| self.closed())?;
            disk.query_allocated(start, count, CHUNK_SECTORS, move |r| {
                let _ = tx.send(r);
            });
        }
        tokio::time::timeout(self.params.timeout, rx)
            .await
            .map_err(|_| self.timed_out("QueryAllocatedBlocks".into()))?
            .map_err(|_| self.closed())?
            .map_err(|e| to_error(&self.params, e))
    }
}

/// The extents of `[start, end)` (chunk-aligned, in bytes) from VDDK's allocated blocks (in
/// sectors): allocated is data, the rest is a hole. Blocks outside the range are clipped.
pub fn extents_from_blocks(start: u64, end: u64, blocks: &[(u64, u64)]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = start;
    let mut sorted: Vec<(u64, u64)> = blocks
        .iter()
        .map(|&(o, l)| {
            let a = o.saturating_mul(SECTOR).max(start);
            let b = o.saturating_add(l).saturating_mul(SECTOR).min(end);
            (a, b)
        })
        .filter(|(a, b)| a < b)
        .collect();
    sorted.sort_unstable();
    for (a, b) in sorted {
        if b <= pos {
            continue;
        }
        let a = a.max(pos);
        if a > pos {
            out.push(Extent::new(pos, a - pos, ExtentKind::Hole));
        }
        match out.last_mut() {
            Some(e) if e.kind == ExtentKind::Data && e.offset + e.len == a => e.len += b - a,
            _ => out.push(Extent::new(a, b - a, ExtentKind::Data)),
        }
        pos = b;
    }
    if pos < end {
        out.push(Extent::new(pos, end - pos, ExtentKind::Hole));
    }
    out
}

#[async_trait]
impl BlockSource for VddkSource {
    fn describe(&self) -> String {
        describe(&self.params)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps {
            preferred_request: self.params.max_request,
            max_request: self.params.max_request,
            can_extents: self.query.load(Ordering::Relaxed),
            max_connections: self.params.connections,
            max_requests: MAX_REQUESTS,
            sequential: false,
            size_known: true,
            costly_requests: false,
        }
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        let len = buf.len() as u64;
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) || offset + len > self.size
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: read of {len} bytes at {offset} is not whole sectors inside the disk",
                    describe(&self.params)
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        {
            let g = self.disk.read().unwrap_or_else(|e| e.into_inner());
            let disk = g.as_ref().ok_or_else(|| self.closed())?;
            let (bytes, range, cap) = buf.into_vec();
            disk.read_async(offset / SECTOR, ReadBuf { bytes, range }, move |r| {
                let _ = tx.send(r.map(|b| Buffer::from_vec(b.bytes, b.range, cap)));
            });
        }
        // A read VDDK never completes keeps its buffer on the handle thread; the retry opens a
        // new handle.
        let r = tokio::time::timeout(self.params.timeout, rx)
            .await
            .map_err(|_| self.timed_out(format!("a read of {len} bytes at {offset}")))?;
        r.map_err(|_| self.closed())?.map_err(|e| {
            self.healthy.store(false, Ordering::Relaxed);
            to_error(&self.params, e).context_prefix(format!("reading {len} bytes at {offset}"))
        })
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        if offset >= self.size || len == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: extents asked for {len} bytes at {offset}, outside the disk ({} bytes)",
                    describe(&self.params),
                    self.size
                ),
            ));
        }
        let end = offset.saturating_add(len).min(self.size);
        // Only whole chunks can be asked about; a tail shorter than one chunk is data.
        let last_chunk_end = self.size / CHUNK * CHUNK;
        if !self.query.load(Ordering::Relaxed) || offset >= last_chunk_end {
            return Ok(vec![Extent::new(offset, end - offset, ExtentKind::Data)]);
        }
        let a = offset / CHUNK * CHUNK;
        let b = end
            .div_ceil(CHUNK)
            .saturating_mul(CHUNK)
            .min(last_chunk_end)
            .min(a + MAX_QUERY);
        match self.allocated(a / SECTOR, (b - a) / SECTOR).await {
            Ok(blocks) => {
                let ext = extents_from_blocks(a, b, &blocks);
                Ok(clip(&ext, offset, end.min(b) - offset))
            }
            Err(e) => {
                if self.query.swap(false, Ordering::Relaxed) {
                    tracing::info!("{e}; reading every range and detecting zeros instead");
                }
                Ok(vec![Extent::new(offset, end - offset, ExtentKind::Data)])
            }
        }
    }

    /// The snapshot read (a snapshot's disk does not change), when there is one.
    fn fingerprint(&self) -> Option<String> {
        self.params
            .snapshot
            .as_ref()
            .map(|s| format!("snapshot {s}"))
    }

    fn changes(&self) -> Option<Arc<dyn crate::source::ChangeTracking>> {
        self.changes
            .clone()
            .map(|c| c as Arc<dyn crate::source::ChangeTracking>)
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        let s = Self::open_handle(self.params.clone(), false, self.sessions.clone()).await?;
        // One handle giving up on QueryAllocatedBlocks makes the others give up too.
        let s = VddkSource {
            query: self.query.clone(),
            ..s
        };
        Ok(Arc::new(s))
    }

    async fn close(&self) -> Result<()> {
        let disk = self.disk.write().unwrap_or_else(|e| e.into_inner()).take();
        let Some(disk) = disk else {
            return Ok(());
        };
        if let (Some(sessions), true) = (&self.sessions, self.healthy.load(Ordering::Relaxed)) {
            // Kept for the next checkpoint of the disk, connected.
            if let Ok(Some(parked)) = tokio::task::spawn_blocking(move || disk.park()).await {
                sessions.keep_connection(&self.params, parked);
            }
            return Ok(());
        }
        let stats = tokio::task::spawn_blocking(move || disk.close())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("VDDK close task failed: {e}")))?;
        for (call, s) in stats {
            tracing::debug!(
                call,
                calls = s.calls,
                seconds = s.time.as_secs_f64(),
                bytes = s.bytes,
                "VDDK call statistics"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[Extent]) -> Vec<(u64, u64, ExtentKind)> {
        v.iter().map(|e| (e.offset, e.len, e.kind)).collect()
    }

    #[test]
    fn blocks_become_data_and_the_gaps_holes() {
        let c = CHUNK;
        let blocks = [(128, 128), (512, 256), (640, 128)];
        let e = extents_from_blocks(0, 8 * c, &blocks);
        assert_eq!(
            kinds(&e),
            vec![
                (0, c, ExtentKind::Hole),
                (c, c, ExtentKind::Data),
                (2 * c, 2 * c, ExtentKind::Hole),
                (4 * c, 2 * c, ExtentKind::Data),
                (6 * c, 2 * c, ExtentKind::Hole),
            ]
        );
    }

    #[test]
    fn blocks_outside_the_range_are_clipped() {
        let c = CHUNK;
        let e = extents_from_blocks(2 * c, 4 * c, &[(0, 384), (1000, 5)]);
        assert_eq!(
            kinds(&e),
            vec![(2 * c, c, ExtentKind::Data), (3 * c, c, ExtentKind::Hole)]
        );
        assert_eq!(
            kinds(&extents_from_blocks(0, c, &[])),
            vec![(0, c, ExtentKind::Hole)]
        );
    }

    #[test]
    fn the_library_path_puts_lib64_first_once() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(library_path_for(d.path()), None, "no lib64: nothing to add");
        std::fs::create_dir(d.path().join("lib64")).unwrap();
        let p = library_path_for(d.path()).unwrap();
        let first = std::env::split_paths(&p).next().unwrap();
        assert_eq!(first, d.path().join("lib64"));
    }

    #[test]
    fn host_limits_are_per_server() {
        set_host_connection_limit("ESX-1.example", 2);
        let s = host_semaphore("esx-1.example").unwrap();
        assert_eq!(s.available_permits(), 2);
        assert!(host_semaphore("esx-2.example").is_none());
    }
}

//! The copy engine. The disk is split into work ranges; one worker per source handle takes
//! ranges in turn, asks the source for the extents of that range only, zeroes coalesced zero runs
//! (or skips them on a target that reads as zero), and reads data in requests with many in
//! flight. Each read buffer is checked for zero blocks before it is written. Requests in flight
//! are bounded per handle and in total (the memory budget); buffers are reused, so memory does
//! not grow with the disk. Success is reported only after the target is flushed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::buffer::{Buffer, BufferPool};
use crate::delta::DeltaSet;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{create_engine, IoEngine, IoEngineKind};
use crate::source::{BlockSource, SourceCaps};
use crate::target::BlockTarget;
use items::Items;

mod budget;
pub mod checksum;
mod items;
pub mod journal;
pub mod progress;
pub mod verify;
mod worker;
pub mod zero;

pub use budget::MemoryBudget;
pub use journal::Journal;
pub use progress::{Progress, ProgressObserver};

/// Tuning of a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Source handles (connections) to use; capped by what the source allows.
    pub connections: usize,
    /// Requests in flight per handle.
    pub requests: usize,
    /// Bytes per read request (256 KiB-4 MiB; capped by the source's maximum).
    pub request_size: usize,
    /// In-flight byte budget (all buffers together).
    pub memory: usize,
    /// Size of a work range.
    pub range_size: u64,
    /// I/O engine for target writes.
    pub io_engine: IoEngineKind,
    /// Writer threads of the pwrite engine.
    pub writer_threads: usize,
    /// Whether the target was opened with O_DIRECT (steers `auto`).
    pub direct: bool,
    /// Progress counter to update.
    pub progress: Option<Arc<dyn ProgressObserver>>,
    /// Zero runs shorter than this between two data runs are read with them (0: never). For
    /// sources whose every request costs much (imageio), fewer larger requests beat skipping
    /// short gaps; the zeros read are found in the buffers and not written to a zero target.
    /// `None` chooses per work range for sources with [`SourceCaps::costly_requests`]
    /// ([`crate::extent::auto_gap`]) and never reads zeros from the others.
    pub read_gaps: Option<u64>,
    /// Copy only these changed ranges, in place (a warm migration's delta). Within them the
    /// source's extents still apply: changed ranges that are now zero become zero writes.
    pub delta: Option<Arc<DeltaSet>>,
    /// The resume journal: work items it marks done are skipped, and items finished by this
    /// copy are marked in it once a flush covers them (not for sequential sources).
    pub journal: Option<Arc<Journal>>,
    /// How often the journal is brought up to date (each time after a flush of the target).
    pub journal_interval: std::time::Duration,
    /// For a source whose size is known only at its end (a compressed stream): the most
    /// bytes the target takes. A stream that expands past it fails ([`ErrorKind::NoSpace`])
    /// instead of filling the volume. Never more than [`crate::MAX_DISK_SIZE`].
    pub stream_limit: Option<u64>,
    /// A memory budget shared with other copies (a daemon's): each buffer needs a share of it
    /// as well as of [`CopyOptions::memory`].
    pub shared_memory: Option<MemoryBudget>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            connections: 4,
            requests: 16,
            request_size: 1 << 20,
            memory: 16 << 20,
            range_size: 64 << 20,
            io_engine: IoEngineKind::Auto,
            writer_threads: 2,
            direct: false,
            progress: None,
            read_gaps: None,
            delta: None,
            journal: None,
            journal_interval: std::time::Duration::from_secs(1),
            stream_limit: None,
            shared_memory: None,
        }
    }
}

/// Smallest and largest request size.
pub const MIN_REQUEST: usize = 256 * 1024;
/// Largest request size.
pub const MAX_REQUEST: usize = 4 << 20;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyStats {
    /// Source size.
    pub bytes_total: u64,
    /// Bytes written as data.
    pub bytes_data: u64,
    /// Bytes handled as zeros (skipped or zeroed).
    pub bytes_zero: u64,
    /// Bytes not copied again because the resume journal had them on the target.
    pub bytes_resumed: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Source handles used.
    pub connections: usize,
    /// I/O engine used.
    pub io_engine: &'static str,
}

impl CopyStats {
    /// Throughput over the whole disk, MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.bytes_total as f64 / (1u64 << 20) as f64 / self.seconds
    }
}

struct Shared {
    size: u64,
    /// False for a stream that learns its size at its end.
    size_known: bool,
    /// Bytes read so far by the sequential reader.
    streamed: AtomicU64,
    /// The most bytes a stream of unknown size may bring.
    stream_limit: u64,
    /// The work items, taken in turn by the workers.
    plan: Items,
    request_size: usize,
    read_gaps: Option<u64>,
    /// Whether the source's requests are costly (automatic gap bridging applies).
    costly_requests: bool,
    next_range: AtomicU64,
    failed: AtomicBool,
    first_error: Mutex<Option<Error>>,
    budget: Arc<Semaphore>,
    pool: BufferPool,
    shared_memory: Option<MemoryBudget>,
    io: Arc<dyn IoEngine>,
    target_zero: bool,
    bytes_data: AtomicU64,
    bytes_zero: AtomicU64,
    progress: Option<Arc<dyn ProgressObserver>>,
    /// Work items the journal has on the target already.
    skip: Vec<bool>,
    /// Bytes of each work item not yet written; an item at zero is complete.
    remaining: Vec<AtomicU64>,
    journal: Option<Arc<Journal>>,
}

impl Shared {
    /// The state of a copy of `size` bytes (`caps`: the source's) through `io`.
    fn new(
        size: u64,
        caps: &SourceCaps,
        target: &dyn BlockTarget,
        opts: &CopyOptions,
        sizes: &Sizes,
        io: Arc<dyn IoEngine>,
        layout: Layout,
    ) -> Shared {
        Shared {
            size,
            plan: layout.items,
            size_known: caps.size_known,
            streamed: AtomicU64::new(0),
            stream_limit: opts
                .stream_limit
                .unwrap_or(crate::MAX_DISK_SIZE)
                .min(crate::MAX_DISK_SIZE),
            request_size: sizes.request_size,
            read_gaps: opts.read_gaps,
            costly_requests: caps.costly_requests,
            next_range: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            first_error: Mutex::new(None),
            budget: Arc::new(Semaphore::new(sizes.max_buffers)),
            pool: BufferPool::new(sizes.request_size),
            shared_memory: opts.shared_memory.clone(),
            io,
            target_zero: target.reads_as_zero(),
            bytes_data: AtomicU64::new(0),
            bytes_zero: AtomicU64::new(0),
            progress: opts.progress.clone(),
            skip: layout.skip,
            remaining: layout.item_bytes.into_iter().map(AtomicU64::new).collect(),
            journal: layout.journal,
        }
    }

    /// A buffer of `len` bytes for a read, from the shared budget's pool when there is one
    /// (the caller holds a share of it) or from the copy's own.
    fn buffer(&self, len: usize) -> crate::buffer::Buffer {
        match &self.shared_memory {
            Some(b) => b.buffer(self.request_size, len),
            None => self.pool.get(len),
        }
    }

    /// Takes back a buffer (before the caller's share of the budget is given back).
    fn put(&self, buf: crate::buffer::Buffer) {
        match &self.shared_memory {
            Some(b) => b.put(buf),
            None => self.pool.put(buf),
        }
    }

    fn fail(&self, e: Error) {
        let mut g = self.first_error.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Counts bytes of work item `item` (None: a stream's) as written.
    fn done(&self, item: Option<usize>, data: u64, zero: u64) {
        self.bytes_data.fetch_add(data, Ordering::Relaxed);
        self.bytes_zero.fetch_add(zero, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.add(data + zero);
        }
        if let (Some(i), Some(j)) = (item, &self.journal) {
            let left = self.remaining[i].fetch_sub(data + zero, Ordering::AcqRel);
            if left == data + zero {
                j.complete(i);
            }
        }
    }

    async fn zero(&self, item: usize, offset: u64, len: u64) -> Result<()> {
        if !self.target_zero {
            self.io.zero(offset, len).await?;
        }
        self.done(Some(item), 0, len);
        Ok(())
    }
}

/// Opens up to `n` handles on `source` (the first is `source` itself).
pub async fn open_handles(
    source: &Arc<dyn BlockSource>,
    n: usize,
) -> Result<Vec<Arc<dyn BlockSource>>> {
    let caps = source.caps();
    let n = n.clamp(1, caps.max_connections.max(1));
    let mut handles = vec![source.clone()];
    let mut set = JoinSet::new();
    for _ in 1..n {
        let s = source.clone();
        set.spawn(async move { s.open_another().await });
    }
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| Error::new(ErrorKind::Io, format!("opening a handle: {e}")))? {
            Ok(h) => handles.push(h),
            // A source at its connection limit: copy with the handles it gave.
            Err(e) if e.kind() == ErrorKind::Busy => tracing::debug!("{e}; using fewer handles"),
            Err(e) => return Err(e),
        }
    }
    Ok(handles)
}

/// Copies `source` to `target`. On success every byte is on the target and flushed.
pub async fn copy(
    source: Arc<dyn BlockSource>,
    target: Arc<dyn BlockTarget>,
    opts: &CopyOptions,
) -> Result<CopyStats> {
    let started = Instant::now();
    let run = plan(&source, &target, opts).await?;
    execute(&run, opts).await;
    finish(run, &target, opts, started).await
}

/// A copy, planned: the handles, the shared state of the workers and what the plan covers.
struct Planned {
    shared: Arc<Shared>,
    handles: Vec<Arc<dyn BlockSource>>,
    caps: SourceCaps,
    requests: usize,
    journal: Option<Arc<Journal>>,
    /// Bytes the plan covers.
    planned: u64,
    /// Bytes the journal has on the target already.
    resumed: u64,
    io_name: &'static str,
}

/// Checks the sizes, sizes the requests and the memory, opens the handles and the I/O engine,
/// and lays out the work items (the delta's, or the whole disk), less those a journal has.
async fn plan(
    source: &Arc<dyn BlockSource>,
    target: &Arc<dyn BlockTarget>,
    opts: &CopyOptions,
) -> Result<Planned> {
    let size = source.size();
    let caps = source.caps();
    crate::check_disk_size(&source.describe(), size)?;
    if caps.size_known && target.size() < size {
        return Err(Error::new(
            ErrorKind::TargetTooSmall,
            format!(
                "{} is {} bytes, smaller than the source ({size} bytes)",
                target.describe(),
                target.size()
            ),
        ));
    }
    let sizes = Sizes::new(opts, &caps);
    let items = work_items(source, opts, sizes.request_size)?;
    let handles = open_handles(source, opts.connections).await?;
    let io = create_engine(
        opts.io_engine,
        target.clone(),
        opts.writer_threads,
        (sizes.max_buffers * 4).next_power_of_two() as u32,
        opts.direct,
    )?;
    let io_name = io.name();
    tracing::debug!(
        connections = handles.len(),
        requests = sizes.requests,
        request_size = sizes.request_size,
        max_buffers = sizes.max_buffers,
        io = io_name,
        "copy plan"
    );
    let mut layout = Layout::new(items, opts, &caps);
    if layout.resumed > 0 {
        if let Some(at) = spot_check(source, target, &layout).await? {
            tracing::warn!(
                "{} differs from the source at byte {at}, where the resume journal has it \
                 copied: copying everything again",
                target.describe()
            );
            layout.start_over();
        }
    }
    if let Some(p) = &opts.progress {
        p.set_total(if caps.size_known {
            layout.planned
        } else {
            size
        });
        p.add(layout.resumed);
    }
    let (planned, resumed, journal) = (layout.planned, layout.resumed, layout.journal.clone());
    let shared = Shared::new(size, &caps, &**target, opts, &sizes, io, layout);
    Ok(Planned {
        shared: Arc::new(shared),
        handles,
        caps,
        requests: sizes.requests,
        journal,
        planned,
        resumed,
        io_name,
    })
}

/// The sizes of a copy's requests and of its in-flight budget.
struct Sizes {
    /// Bytes per read request: the option within 256 KiB-4 MiB, capped by the source, in
    /// whole 4 KiB blocks.
    request_size: usize,
    /// Buffers in flight at most, all handles together (the memory budget).
    max_buffers: usize,
    /// Requests in flight per handle.
    requests: usize,
}

impl Sizes {
    fn new(opts: &CopyOptions, caps: &SourceCaps) -> Sizes {
        let request_size = opts
            .request_size
            .clamp(MIN_REQUEST, MAX_REQUEST)
            .min(caps.max_request)
            .max(4096)
            / 4096
            * 4096;
        Sizes {
            request_size,
            max_buffers: (opts.memory / request_size).max(2),
            requests: opts.requests.clamp(1, caps.max_requests.max(1)),
        }
    }
}

/// The work items of a copy, bound to the resume journal.
struct Layout {
    items: Items,
    /// Bytes of each work item.
    item_bytes: Vec<u64>,
    /// Work items the journal has on the target already.
    skip: Vec<bool>,
    /// The journal (none for a sequential source).
    journal: Option<Arc<Journal>>,
    /// Bytes the work items cover.
    planned: u64,
    /// Bytes of the items the journal has on the target already.
    resumed: u64,
}

impl Layout {
    /// Copies every item again, and makes the journal forget its marks.
    fn start_over(&mut self) {
        self.skip.iter_mut().for_each(|s| *s = false);
        self.resumed = 0;
        if let Some(j) = &self.journal {
            j.start_over();
        }
    }

    /// Binds the journal of `opts` (unless the source is sequential) to `items`.
    fn new(items: Items, opts: &CopyOptions, caps: &SourceCaps) -> Layout {
        let planned = items.total();
        let item_bytes: Vec<u64> = (0..items.len()).map(|i| items.bytes(i)).collect();
        let journal = opts.journal.clone().filter(|_| !caps.sequential);
        let skip = match &journal {
            Some(j) => j.bind(items.len()),
            None => vec![false; items.len()],
        };
        let resumed = resumed_bytes(&item_bytes, &skip);
        Layout {
            items,
            item_bytes,
            skip,
            journal,
            planned,
            resumed,
        }
    }
}

/// Work items a resumed copy reads back before it skips the journal's: the first, the middle
/// and the last of those done.
const SPOT_CHECKS: usize = 3;
/// Bytes compared at the start of each.
const SPOT_BYTES: u64 = 64 << 10;

/// Reads the start of a few of the work items the journal has as done from the target and
/// from the source; returns where the first difference starts. A name, a size and a version
/// can all match while the bytes do not (a disk rewritten in place, an export re-pointed).
async fn spot_check(
    source: &Arc<dyn BlockSource>,
    target: &Arc<dyn BlockTarget>,
    layout: &Layout,
) -> Result<Option<u64>> {
    let done: Vec<usize> = (0..layout.skip.len()).filter(|&i| layout.skip[i]).collect();
    let mut picks: Vec<usize> = (0..SPOT_CHECKS)
        .map(|k| done[k * (done.len() - 1) / (SPOT_CHECKS - 1).max(1)])
        .collect();
    picks.dedup();
    for i in picks {
        let Some((offset, len)) = layout.items.get(i).and_then(|p| p.first().copied()) else {
            continue;
        };
        let n = len.min(SPOT_BYTES) as usize;
        let mut written = vec![0u8; n];
        if !target.read_back(offset, &mut written)? {
            return Ok(None);
        }
        let wanted = source.read_at(offset, Buffer::new(n)).await?;
        if let Some(d) = wanted.iter().zip(&written).position(|(a, b)| a != b) {
            return Ok(Some(offset + d as u64));
        }
    }
    Ok(None)
}

/// The work items of a copy: the delta's changed ranges, or the whole disk, grouped per range.
fn work_items(
    source: &Arc<dyn BlockSource>,
    opts: &CopyOptions,
    request_size: usize,
) -> Result<Items> {
    let size = source.size();
    let range_size = opts.range_size.max(request_size as u64);
    match &opts.delta {
        Some(_) if source.caps().sequential => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} can only be read front to back: a delta needs random access",
                source.describe()
            ),
        )),
        Some(d) if d.size() > size => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the delta covers {} bytes but {} has {size}",
                d.size(),
                source.describe()
            ),
        )),
        Some(d) => Ok(Items::grouped(d.pieces(range_size), range_size)),
        None => Ok(Items::whole(size, range_size)),
    }
}

/// The bytes of the work items marked `skip` (on the target already), logged when there are any.
fn resumed_bytes(item_bytes: &[u64], skip: &[bool]) -> u64 {
    let resumed: u64 = item_bytes
        .iter()
        .zip(skip)
        .filter(|(_, s)| **s)
        .map(|(b, _)| b)
        .sum();
    if resumed > 0 {
        tracing::info!(
            bytes = resumed,
            "resuming: {} of {} work items are on the target already",
            skip.iter().filter(|s| **s).count(),
            skip.len()
        );
    }
    resumed
}

/// Runs one worker per handle to the end (a failure is kept in the shared state), keeping the
/// journal up to date meanwhile, and closes the handles.
async fn execute(run: &Planned, opts: &CopyOptions) {
    let shared = &run.shared;
    // Brings the journal up to date now and then: marks taken before a flush are persisted
    // after it, so the file never claims what a crash could lose.
    let keeper = run.journal.clone().map(|j| {
        let (io, every) = (shared.io.clone(), opts.journal_interval);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = persist(&j, &*io).await {
                    tracing::warn!("{e}; an interrupted copy may redo more");
                }
            }
        })
    });
    let mut workers = JoinSet::new();
    for h in &run.handles {
        let (h, sh, caps, requests) = (h.clone(), shared.clone(), run.caps.clone(), run.requests);
        workers.spawn(async move {
            let r = if caps.sequential {
                worker::sequential(h, sh.clone()).await
            } else {
                worker::positional(h, sh.clone(), requests, caps.can_extents).await
            };
            if let Err(e) = r {
                sh.fail(e);
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        if let Err(e) = r {
            shared.fail(Error::new(
                ErrorKind::Io,
                format!("copy worker failed: {e}"),
            ));
        }
    }
    for h in &run.handles {
        let _ = h.close().await;
    }
    if let Some(k) = keeper {
        k.abort();
    }
}

/// Ends a copy: after a failure, persists what the journal can keep and returns the first
/// error; otherwise sizes a streamed target, flushes, checks the byte count, removes the
/// journal and says what was done.
async fn finish(
    run: Planned,
    target: &Arc<dyn BlockTarget>,
    opts: &CopyOptions,
    started: Instant,
) -> Result<CopyStats> {
    let shared = &run.shared;
    let failed = shared.first_error.lock().unwrap().take();
    if let Some(e) = failed {
        // What is on the target is kept for a resume.
        if let Some(j) = &run.journal {
            if let Err(pe) = persist(j, &*shared.io).await {
                tracing::warn!("{pe}");
            }
        }
        return Err(e);
    }
    let size = if shared.size_known {
        shared.size
    } else {
        let total = shared.streamed.load(Ordering::Relaxed);
        let t = target.clone();
        tokio::task::spawn_blocking(move || t.set_final_size(total))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("sizing task failed: {e}")))??;
        total
    };
    shared.io.flush().await?;
    let (d, z) = (
        shared.bytes_data.load(Ordering::Relaxed),
        shared.bytes_zero.load(Ordering::Relaxed),
    );
    let expected = if shared.size_known {
        run.planned - run.resumed
    } else {
        size
    };
    if d + z != expected {
        return Err(Error::new(
            ErrorKind::Io,
            format!("internal error: copied {d}+{z} bytes of {expected}"),
        ));
    }
    // (A stream's journal is never bound, but a stale file of an earlier copy goes too.)
    if let Some(j) = &opts.journal {
        j.finish()?;
    }
    Ok(CopyStats {
        bytes_total: size,
        bytes_data: d,
        bytes_zero: z,
        bytes_resumed: run.resumed,
        seconds: started.elapsed().as_secs_f64(),
        connections: run.handles.len(),
        io_engine: run.io_name,
    })
}

/// Flushes the target and persists the journal marks taken before the flush.
async fn persist(j: &Journal, io: &dyn IoEngine) -> Result<()> {
    if let Some(marks) = j.snapshot() {
        io.flush().await?;
        j.persist(marks)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_are_grouped_per_range_size_and_large_ones_stand_alone() {
        let pieces = vec![
            (0, 10),
            (20, 10),
            (95, 5),
            (100, 10),
            (300, 100),
            (400, 100),
        ];
        let Items::Grouped(g) = Items::grouped(pieces, 100) else {
            unreachable!("pieces are grouped")
        };
        assert_eq!(
            g,
            vec![
                vec![(0, 10), (20, 10), (95, 5)],
                vec![(100, 10)],
                vec![(300, 100)],
                vec![(400, 100)],
            ]
        );
    }
}

//! One transfer, one place. A [`TransferSpec`] says what to copy where (a whole disk or a
//! delta, with where its changed ranges come from, the checkpoints, resume and verify policy
//! and engine options); [`Transfer::run`] does it under a [`CancelToken`] the caller holds,
//! telling a [`ProgressObserver`] how far it has come, and returns a [`Summary`].
//!
//! The job owns everything between "open" and "recorded": opening the source, planning the
//! delta and checking the checkpoint chain, placing the resume journal, opening the target in
//! place or new, the copy, the cleanup after a failure, verification and recording the
//! checkpoint. Front ends (`importer copy`, CDI's importer mode, the populators, the daemon)
//! only translate their input into a spec.
//!
//! # Block volumes
//!
//! A block device has no room beside it for ferry's small files. Its checkpoint chain and
//! resume journal are kept in the state file the spec names ([`TransferSpec::state_file`]);
//! without one a block target keeps neither: deltas are applied in the order the caller gives
//! them (CDI's controller keeps that order), which is logged, and a copy does not resume
//! ([`Resume::IfPossible`]) or is refused before anything is written ([`Resume::Required`]).
//! A file target keeps both beside itself (`TARGET.checkpoints.json`,
//! `TARGET.ferry-journal`) unless a state file is named.

mod plan;
mod slots;

pub use slots::{server_of, ServerSlots, Slots};

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use tokio_util::sync::CancellationToken as CancelToken;

use crate::delta::DeltaSet;
use crate::engine::journal::{self, identity};
use crate::engine::verify::{verify, VerifyOptions, VerifyResult};
use crate::engine::{copy, CopyOptions, CopyStats, Journal, MemoryBudget, ProgressObserver};
use crate::error::{Error, ErrorKind, Hint, Result};
use crate::io::IoEngineKind;
use crate::open::{open_source, SourceOptions};
use crate::source::BlockSource;
use crate::target::{open_target, TargetOptions};

/// Where a transfer's bytes come from.
// One spec is built per transfer: the size of the URI variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum SourceSpec {
    /// A source URI (see [`crate::open`]) opened with these options.
    Uri {
        /// The URI: `nbd://`, `vddk://`, `https://`, a path, ...
        uri: String,
        /// How to open it.
        options: SourceOptions,
    },
    /// A source the caller has opened already (a Glance image, a test double). Verification
    /// reads it again through [`BlockSource::open_another`].
    Opened(Arc<dyn BlockSource>),
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Uri { uri, .. } => f.debug_tuple("Uri").field(uri).finish(),
            SourceSpec::Opened(s) => f.debug_tuple("Opened").field(&s.describe()).finish(),
        }
    }
}

/// Where the bytes go and how the target is opened.
#[derive(Debug, Clone, Default)]
pub struct TargetSpec {
    /// A regular file (created if missing) or a block device.
    pub path: PathBuf,
    /// Allocate the whole file up front (not for a block device).
    pub preallocate: bool,
    /// Write with O_DIRECT.
    pub direct: bool,
    /// The target already reads as zeros: never zero it.
    pub target_is_zero: bool,
    /// The file target sits on a Kubernetes filesystem volume whose room is checked before a
    /// full copy (not for a block device, nor for a delta, which writes into what is there).
    pub volume: Option<Volume>,
    /// Permission bits for the target file (CDI's `0660`), when set.
    pub file_mode: Option<u32>,
}

/// The room rules of a filesystem volume, as KubeVirt's CDI applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Volume {
    /// The fraction of the volume kept free for the filesystem (CDI's default is 0.06).
    pub overhead: f64,
    /// The disk size asked for: the image grows to it (within the volume), never shrinks.
    pub requested: Option<u64>,
}

/// A whole disk or a delta.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// Copy the whole disk; whatever checkpoint chain the target had ends.
    #[default]
    Full,
    /// Write only the changed ranges, in place, into the target the previous checkpoint left.
    Delta(Changes),
}

/// Where a delta's changed ranges come from.
#[derive(Debug, Clone)]
pub enum Changes {
    /// The opened source tells them ([`BlockSource::changes`]): an NBD dirty bitmap, an
    /// imageio ticket's dirty extents, vSphere's changed areas since the previous checkpoint.
    FromSource,
    /// The caller knows them: `(offset, length)`.
    Ranges(Vec<(u64, u64)>),
    /// A JSON file of `[{"start": N, "length": N}, ...]`.
    File(PathBuf),
}

/// Whether a transfer keeps a resume journal and carries on from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    /// No journal.
    #[default]
    Off,
    /// Keep one where there is room for it (not beside a block device without a state file).
    IfPossible,
    /// Keep one, or refuse the transfer before writing when there is no place for it.
    Required,
}

/// The engine's tuning for one transfer.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Source connections (capped by what the source allows).
    pub connections: usize,
    /// Requests in flight per connection.
    pub requests: usize,
    /// Bytes per read request; `None` takes the source's preferred size.
    pub request_size: Option<usize>,
    /// In-flight byte budget.
    pub memory: usize,
    /// I/O engine for target writes.
    pub io_engine: IoEngineKind,
    /// Writer threads of the pwrite engine.
    pub writer_threads: usize,
    /// Zero runs shorter than this between data are read with it (0: never; `None`: chosen
    /// per work range for sources whose requests are costly, see [`crate::extent::auto_gap`]).
    pub read_gaps: Option<u64>,
    /// A memory budget shared with the other transfers of the process (see
    /// [`MemoryBudget`]); the transfer's own [`EngineOptions::memory`] applies as well.
    pub shared_memory: Option<MemoryBudget>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let c = CopyOptions::default();
        EngineOptions {
            connections: c.connections,
            requests: c.requests,
            request_size: None,
            memory: c.memory,
            io_engine: c.io_engine,
            writer_threads: c.writer_threads,
            read_gaps: c.read_gaps,
            shared_memory: None,
        }
    }
}

/// Everything one transfer needs.
#[derive(Debug, Clone, Default)]
pub struct TransferSpec {
    /// What to read.
    pub source: Option<SourceSpec>,
    /// Where to write.
    pub target: TargetSpec,
    /// Whole disk or delta.
    pub mode: Mode,
    /// The checkpoint this transfer brings the target to; recorded in its chain on success.
    pub checkpoint: Option<String>,
    /// The checkpoint a delta starts from: it must be the last one applied to the target. For
    /// vSphere it is also where changes are counted from (a disk change id or a snapshot).
    pub previous_checkpoint: Option<String>,
    /// Where the checkpoint chain and the resume journal are kept instead of beside the target
    /// (the journal as `STATE.ferry-journal`); see the module docs for block volumes.
    pub state_file: Option<PathBuf>,
    /// Resume policy.
    pub resume: Resume,
    /// A steadier name for the source than its description, for matching a resume journal (an
    /// oVirt disk id rather than a ticket URL that changes each time).
    pub source_name: Option<String>,
    /// After the copy, read source and target again and compare them.
    pub verify: bool,
    /// Engine tuning.
    pub engine: EngineOptions,
    /// Connection caps per source server shared with other transfers: the transfer waits for
    /// slots for its connections before it opens the source.
    pub server_slots: Option<ServerSlots>,
}

/// What a finished transfer did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The engine's counts.
    pub stats: CopyStats,
    /// Reads retried on fresh handles.
    pub retries: u64,
    /// Bytes read again by those retries.
    pub bytes_reread: u64,
    /// The changed bytes of a delta.
    pub delta_bytes: Option<u64>,
    /// Whether the target was read back and found equal to the source.
    pub verified: bool,
    /// The checkpoint recorded in the target's chain.
    pub checkpoint: Option<String>,
}

/// One transfer, ready to run.
#[derive(Debug)]
pub struct Transfer {
    spec: TransferSpec,
}

impl Transfer {
    /// A transfer of `spec`; nothing is opened until [`Transfer::run`].
    pub fn new(spec: TransferSpec) -> Transfer {
        Transfer { spec }
    }

    /// The spec.
    pub fn spec(&self) -> &TransferSpec {
        &self.spec
    }

    /// Runs the transfer. It succeeds only when every byte is on the target and flushed (and,
    /// if asked, verified) and the checkpoint is recorded. When `cancel` fires the copy stops
    /// with [`ErrorKind::Cancelled`] and is cleaned up like any failure: a target this run
    /// created is removed unless its journal keeps it for a resume.
    pub async fn run(
        &self,
        cancel: &CancelToken,
        progress: Option<Arc<dyn ProgressObserver>>,
    ) -> Result<Summary> {
        plan::check_spec(&self.spec)?;
        let (_slots, capped) = until(cancel, take_slots(&self.spec)).await?;
        let spec = capped.as_ref().unwrap_or(&self.spec);
        // Each phase stops where it is when `cancel` fires; only the copy has a target to
        // clean up after.
        let (source, retry_stats) = until(cancel, open(spec)).await?;
        let target_path = spec.target.path.clone();
        let is_block = is_block_device(&target_path);
        let mut planned = until(cancel, plan::Plan::new(spec, &source, is_block)).await?;
        let size = target_size(spec, &*source, is_block, planned.delta.is_some())?;
        let created = std::fs::symlink_metadata(&target_path).is_err();
        let journal = open_journal(spec, &*source, is_block, created, planned.delta.as_ref())?;
        let resuming = journal.as_ref().is_some_and(|(_, r)| *r);
        let topts = TargetOptions {
            preallocate: spec.target.preallocate && !is_block,
            direct: spec.target.direct,
            target_is_zero: spec.target.target_is_zero,
            in_place: planned.delta.is_some() || resuming,
        };
        let target = open_target(&target_path, size, &topts)?;
        if let (Some(mode), false) = (spec.target.file_mode, is_block) {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&target_path, std::fs::Permissions::from_mode(mode));
        }
        let delta_bytes = planned.delta.as_ref().map(DeltaSet::bytes);
        let stream_limit = stream_limit(spec, &*source, is_block, &*target)?;
        let e = &spec.engine;
        let opts = CopyOptions {
            connections: e.connections,
            requests: e.requests,
            request_size: e
                .request_size
                .unwrap_or_else(|| source.caps().preferred_request),
            memory: e.memory,
            io_engine: e.io_engine,
            writer_threads: e.writer_threads,
            direct: spec.target.direct,
            progress,
            read_gaps: e.read_gaps,
            delta: planned.delta.take().map(Arc::new),
            journal: journal.as_ref().map(|(j, _)| j.clone()),
            stream_limit,
            shared_memory: e.shared_memory.clone(),
            ..CopyOptions::default()
        };
        let copied = tokio::select! {
            r = copy(source.clone(), target, &opts) => r,
            () = cancel.cancelled() => Err(cancelled()),
        };
        let stats = match copied {
            Ok(s) => s,
            Err(e) => {
                let e = match (e.kind(), spec.target.volume) {
                    (ErrorKind::NoSpace, Some(_)) if stream_limit.is_some() => Error::new(
                        ErrorKind::NoSpace,
                        format!("{}. A larger PVC is required.", e.context()),
                    ),
                    _ => e,
                };
                let kept = journal::after_failure(
                    &target_path,
                    created,
                    journal.as_ref().map(|(j, _)| &**j),
                );
                return Err(if kept { e.with_hint(Hint::Resume) } else { e });
            }
        };
        if spec.verify {
            until(cancel, check_copy(spec, &source, &target_path)).await?;
        }
        planned.record(stats.bytes_total)?;
        Ok(Summary {
            retries: retry_stats
                .as_ref()
                .map_or(0, |r| r.retries.load(Ordering::Relaxed)),
            bytes_reread: retry_stats
                .as_ref()
                .map_or(0, |r| r.bytes_reread.load(Ordering::Relaxed)),
            stats,
            delta_bytes,
            verified: spec.verify,
            checkpoint: planned.recorded().map(str::to_owned),
        })
    }
}

/// The slots for the spec's connections on its source's server, when the server is capped;
/// with fewer slots than connections, the spec with as many connections as slots.
async fn take_slots(spec: &TransferSpec) -> Result<(Option<Slots>, Option<TransferSpec>)> {
    let (Some(slots), Some(SourceSpec::Uri { uri, options })) = (&spec.server_slots, &spec.source)
    else {
        return Ok((None, None));
    };
    let Some(server) = server_of(uri, options.kind) else {
        return Ok((None, None));
    };
    let want = spec.engine.connections.max(1);
    let Some(held) = slots.take(&server, want).await else {
        return Ok((None, None));
    };
    if held.granted >= want {
        return Ok((Some(held), None));
    }
    let mut capped = spec.clone();
    capped.engine.connections = held.granted;
    if let Some(SourceSpec::Uri { options, .. }) = &mut capped.source {
        options.connections = options.connections.min(held.granted);
    }
    Ok((Some(held), Some(capped)))
}

/// `work`, unless `cancel` fires first.
async fn until<T>(
    cancel: &CancelToken,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = work => r,
        () = cancel.cancelled() => Err(cancelled()),
    }
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "the transfer was cancelled")
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Opens the spec's source (a delta reads the raw bytes the source serves: its changed ranges
/// are offsets into them, not into a disk inside an image file).
async fn open(
    spec: &TransferSpec,
) -> Result<(
    Arc<dyn BlockSource>,
    Option<Arc<crate::source::retry::RetryStats>>,
)> {
    match spec.source.as_ref() {
        None => Err(Error::new(
            ErrorKind::InvalidInput,
            "a transfer needs a source",
        )),
        Some(SourceSpec::Opened(s)) => Ok((s.clone(), None)),
        Some(SourceSpec::Uri { uri, options }) => {
            let o = plan::source_options(spec, options);
            let src = open_source(uri, &o).await?;
            Ok((src, Some(o.retry_stats.clone())))
        }
    }
}

/// The size to open the target with: the source's, or (for a full copy onto a filesystem
/// volume) grown to the requested size within the room the volume has.
fn target_size(
    spec: &TransferSpec,
    source: &dyn BlockSource,
    is_block: bool,
    delta: bool,
) -> Result<u64> {
    let size = source.size();
    let Some(v) = spec.target.volume.filter(|_| !is_block && !delta) else {
        return Ok(size);
    };
    let usable = usable_bytes(&spec.target.path, v.overhead)?;
    if size > usable {
        return Err(Error::new(
            ErrorKind::TargetTooSmall,
            format!(
                "Virtual image size {size} is larger than the reported available storage {usable}. A larger PVC is required."
            ),
        ));
    }
    Ok(v.requested.map_or(size, |r| size.max(r.min(usable))))
}

/// The most bytes a source of unknown size (a compressed stream) may bring: a block device's
/// size, or a filesystem volume's usable space. Elsewhere the filesystem's own limit
/// (ENOSPC) stops it.
fn stream_limit(
    spec: &TransferSpec,
    source: &dyn BlockSource,
    is_block: bool,
    target: &dyn crate::target::BlockTarget,
) -> Result<Option<u64>> {
    if source.caps().size_known {
        return Ok(None);
    }
    if is_block {
        return Ok(Some(target.size()));
    }
    match spec.target.volume {
        Some(v) => Ok(Some(usable_bytes(&spec.target.path, v.overhead)?)),
        None => Ok(None),
    }
}

/// Bytes of a filesystem volume a disk image may use: what is available, less the
/// filesystem overhead, rounded down to 1 MiB (CDI's rule).
pub fn usable_space(available: u64, overhead: f64) -> u64 {
    let usable = (available as f64 / (1.0 + overhead)).floor() as u64;
    usable / (1 << 20) * (1 << 20)
}

/// The usable bytes of the filesystem volume that holds `target`.
fn usable_bytes(target: &Path, overhead: f64) -> Result<u64> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let d = std::fs::File::open(&dir)
        .map_err(|e| Error::io(format!("opening the volume {}", dir.display()), e))?;
    let avail = crate::sys::available_bytes(&d)
        .map_err(|e| Error::io(format!("reading the free space of {}", dir.display()), e))?;
    Ok(usable_space(avail, overhead))
}

/// The resume journal the spec asks for, and whether it resumes an earlier run.
fn open_journal(
    spec: &TransferSpec,
    source: &dyn BlockSource,
    is_block: bool,
    created: bool,
    delta: Option<&DeltaSet>,
) -> Result<Option<(Arc<Journal>, bool)>> {
    if spec.resume == Resume::Off {
        return Ok(None);
    }
    let uri = match &spec.source {
        Some(SourceSpec::Uri { uri, .. }) => Some(uri.as_str()),
        _ => None,
    };
    let id = identity(source, uri, spec.source_name.as_deref(), delta);
    tracing::debug!(identity = %id, "resume journal identity");
    let path = match (&spec.state_file, is_block) {
        (Some(state), _) => {
            let mut p = state.clone().into_os_string();
            p.push(".ferry-journal");
            PathBuf::from(p)
        }
        (None, false) => {
            return Ok(journal::beside(&spec.target.path, &id)?.map(|(j, r)| (Arc::new(j), r)))
        }
        (None, true) if spec.resume == Resume::IfPossible => return Ok(None),
        (None, true) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a block device: its resume journal needs a state file",
                    spec.target.path.display()
                ),
            )
            .with_hint(Hint::StateFile))
        }
    };
    if created {
        // A journal without its target describes nothing.
        let _ = std::fs::remove_file(&path);
    }
    let (j, resuming) = Journal::open(&path, &id)?;
    Ok(Some((Arc::new(j), resuming)))
}

/// Verification: the target read back equals the source read again (of a delta, only the
/// changed ranges are the copy's doing, but the whole disk must still match the source).
async fn check_copy(
    spec: &TransferSpec,
    source: &Arc<dyn BlockSource>,
    target: &Path,
) -> Result<()> {
    let again = match spec.source.as_ref() {
        Some(SourceSpec::Uri { uri, options }) => {
            // The bytes again, not the changes: no dirty bitmap, no changed areas to read.
            let mut o = plan::source_options(spec, options);
            o.nbd.dirty_bitmap = None;
            #[cfg(feature = "vddk")]
            {
                o.vddk.changed_since = None;
            }
            open_source(uri, &o).await?
        }
        _ => source.open_another().await?,
    };
    let written = open_source(&target.display().to_string(), &SourceOptions::default()).await?;
    let vopts = VerifyOptions {
        connections: spec.engine.connections,
        requests: spec.engine.requests.min(8),
        ..VerifyOptions::default()
    };
    let mismatch = |what: String| Error::new(ErrorKind::Mismatch, format!("verify: {what}"));
    match verify(again, written, &vopts).await? {
        VerifyResult::Equal => Ok(()),
        VerifyResult::SizeDiffers(p, q) => Err(mismatch(format!(
            "the source has {p} bytes but the target {q}"
        ))),
        VerifyResult::DiffersAt(off) => Err(mismatch(format!(
            "the target differs from the source at offset {off}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_space_leaves_the_overhead_and_rounds_to_a_mebibyte() {
        assert_eq!(usable_space(106 << 20, 0.06), 100 << 20);
        assert_eq!(usable_space((100 << 20) + 5, 0.0), 100 << 20);
        assert_eq!(usable_space(0, 0.06), 0);
    }
}

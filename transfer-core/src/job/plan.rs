//! The warm-migration side of a transfer, settled before the target is touched: the spec's
//! checkpoints are checked against the target's chain, and a delta's changed ranges are found.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Changes, Mode, SourceSpec, TransferSpec};
use crate::delta::chain::{default_state_path, forget, Chain};
use crate::delta::DeltaSet;
use crate::error::{invalid, Error, ErrorKind, Hint, Result};
use crate::format::Format;
use crate::open::SourceOptions;
use crate::source::BlockSource;

/// Refuses specs that contradict themselves, before anything is opened.
pub(super) fn check_spec(spec: &TransferSpec) -> Result<()> {
    let delta = matches!(spec.mode, Mode::Delta(_));
    if spec.previous_checkpoint.is_some() && !delta {
        return Err(invalid(
            "a previous checkpoint belongs to a delta, and this transfer copies the whole disk",
        )
        .with_hint(Hint::DeltaCheckpoints));
    }
    if !delta {
        return Ok(());
    }
    if spec.checkpoint.is_none() || spec.previous_checkpoint.is_none() {
        return Err(invalid(
            "a delta needs the checkpoint it reaches and the one it starts from: the target's checkpoint chain makes sure deltas are applied in order",
        )
        .with_hint(Hint::DeltaCheckpoints));
    }
    if let Some(SourceSpec::Uri { options, .. }) = &spec.source {
        if !matches!(options.format, Format::Auto | Format::Raw) || options.disk.is_some() {
            // Changed ranges are offsets of the bytes the source serves, not of a disk inside
            // an image file.
            return Err(invalid(
                "a delta applies to a raw disk: an image format or a disk of an OVA cannot be combined with it",
            ));
        }
    }
    Ok(())
}

/// The options the spec's source is opened with: a delta reads raw bytes, and vSphere counts
/// its changes from the previous checkpoint unless told otherwise.
pub(super) fn source_options(spec: &TransferSpec, options: &SourceOptions) -> SourceOptions {
    let mut o = options.clone();
    if let Mode::Delta(changes) = &spec.mode {
        o.format = Format::Raw;
        #[cfg(feature = "vddk")]
        if matches!(changes, Changes::FromSource) && o.vddk.changed_since.is_none() {
            o.vddk.changed_since = spec.previous_checkpoint.clone();
        }
        #[cfg(not(feature = "vddk"))]
        let _ = changes;
    }
    o
}

/// What a transfer does about deltas and checkpoints.
pub(super) struct Plan {
    /// The delta to apply in place, if this is one.
    pub(super) delta: Option<DeltaSet>,
    chain: Option<Chain>,
    checkpoint: Option<String>,
    previous: Option<String>,
    recorded: bool,
}

impl Plan {
    /// Checks the chain of the spec's target and finds the delta of `source`.
    pub(super) async fn new(
        spec: &TransferSpec,
        source: &Arc<dyn BlockSource>,
        is_block: bool,
    ) -> Result<Plan> {
        let state = state_path(spec, is_block);
        let changes = match &spec.mode {
            Mode::Full => {
                // A full copy replaces the whole disk: whatever chain the target had no longer
                // describes it, and must not let a later delta through. It is dropped before
                // the target is touched (and a new one starts if this copy names a checkpoint).
                if let Some(s) = &state {
                    forget(s)?;
                }
                None
            }
            Mode::Delta(c) => Some(c),
        };
        let chain = match (&spec.checkpoint, &state) {
            (Some(id), Some(path)) => {
                let chain = Chain::load(path)?;
                chain.check(id, spec.previous_checkpoint.as_deref())?;
                Some(chain)
            }
            (Some(id), None) => {
                tracing::info!(
                    checkpoint = %id,
                    "{} is a block device without a state file: no checkpoint chain is kept, deltas are applied in the order given",
                    spec.target.path.display()
                );
                None
            }
            (None, _) => None,
        };
        let delta = match changes {
            None => None,
            Some(c) => Some(changed(c, source).await?),
        };
        Ok(Plan {
            delta,
            chain,
            checkpoint: spec.checkpoint.clone(),
            previous: spec.previous_checkpoint.clone(),
            recorded: false,
        })
    }

    /// Records the checkpoint after a successful, flushed copy of a source of `size` bytes.
    pub(super) fn record(&mut self, size: u64) -> Result<()> {
        if let (Some(chain), Some(id)) = (&mut self.chain, &self.checkpoint) {
            chain.record(id, self.previous.as_deref(), size)?;
            self.recorded = true;
        }
        Ok(())
    }

    /// The checkpoint recorded, once it is.
    pub(super) fn recorded(&self) -> Option<&str> {
        self.checkpoint.as_deref().filter(|_| self.recorded)
    }
}

/// Where the target's checkpoint chain is kept: the state file, or beside a file target; a
/// block device without a state file has none.
fn state_path(spec: &TransferSpec, is_block: bool) -> Option<PathBuf> {
    match (&spec.state_file, is_block) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(default_state_path(&spec.target.path)),
        (None, true) => None,
    }
}

/// The changed ranges of a delta, merged and checked against the source's size.
async fn changed(changes: &Changes, source: &Arc<dyn BlockSource>) -> Result<DeltaSet> {
    let size = source.size();
    match changes {
        Changes::Ranges(r) => DeltaSet::new(size, r.iter().copied()),
        Changes::File(file) => {
            let body = crate::sys::read_small_file(file, crate::engine::journal::MAX_STATE_FILE)
                .map_err(|e| Error::io(format!("reading changed areas {}", file.display()), e))?;
            DeltaSet::from_json(&body, size).map_err(|e| e.context_prefix(file.display()))
        }
        Changes::FromSource => {
            let tracker = source.changes().ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} cannot tell which ranges changed: changed ranges come from oVirt imageio tickets, NBD exports with a qemu dirty bitmap and vSphere disks",
                        source.describe()
                    ),
                )
                .with_hint(Hint::ChangedAreasFile)
            })?;
            DeltaSet::new(size, tracker.changed_ranges().await?)
        }
    }
}

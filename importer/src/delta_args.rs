//! The warm-migration side of `importer copy`: `--delta` with where the changed ranges come
//! from, and the checkpoint chain (`--checkpoint`, `--previous-checkpoint`, `--state-file`).

use std::path::{Path, PathBuf};

use clap::Args;
use transfer_core::delta::chain::{default_state_path, forget, Chain};
use transfer_core::delta::DeltaSet;
use transfer_core::open::{dirty_ranges, SourceOptions};
use transfer_core::{Error, ErrorKind, Result};

#[derive(Args, Default)]
pub struct DeltaArgs {
    /// Apply a delta in place: read only the changed ranges (from --changed-areas, an NBD
    /// export's --dirty-bitmap, an imageio ticket's dirty extents, or vSphere's changed areas
    /// since --previous-checkpoint for vddk://) into the existing TARGET.
    #[arg(long)]
    delta: bool,
    /// The changed ranges: a JSON list of {"start","length"} (implies --delta).
    #[arg(long, value_name = "FILE")]
    changed_areas: Option<PathBuf>,
    /// The qemu dirty bitmap of an NBD source (qemu-nbd -B NAME) holding the changed ranges
    /// (implies --delta for copy).
    #[arg(long, value_name = "NAME")]
    dirty_bitmap: Option<String>,
    /// The checkpoint this copy brings the target to (a snapshot, a changeId, ...); recorded in
    /// the target's checkpoint chain.
    #[arg(long, value_name = "ID")]
    checkpoint: Option<String>,
    /// The checkpoint a delta starts from: it must be the last one applied to the target. For
    /// vddk:// it is also where vSphere counts changes from: a disk change id
    /// ("52 2d ... 7b/81") or a snapshot moref.
    #[arg(long, value_name = "ID")]
    previous_checkpoint: Option<String>,
    /// Where the target's checkpoint chain is kept (default: TARGET.checkpoints.json; needed
    /// for a block device).
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
}

/// What a copy does about deltas and checkpoints, checked before the target is touched.
pub struct Plan {
    /// The delta to apply in place, if this is one.
    pub delta: Option<DeltaSet>,
    chain: Option<Chain>,
    checkpoint: Option<String>,
    previous: Option<String>,
}

impl DeltaArgs {
    /// Whether this copy applies a delta.
    pub fn is_delta(&self) -> bool {
        self.delta || self.changed_areas.is_some() || self.dirty_bitmap.is_some()
    }

    /// The NBD dirty bitmap to read changed ranges from.
    pub fn dirty_bitmap(&self) -> Option<String> {
        self.dirty_bitmap.clone()
    }

    /// Finds the delta of `source` (of `size` bytes) and checks the chain of `target`.
    pub async fn plan(
        &self,
        source: &str,
        size: u64,
        target: &Path,
        sopts: &SourceOptions,
    ) -> Result<Plan> {
        let invalid = |m: &str| Error::new(ErrorKind::InvalidInput, m.to_owned());
        if self.previous_checkpoint.is_some() && !self.is_delta() {
            return Err(invalid(
                "--previous-checkpoint belongs to a delta (--delta, --changed-areas or --dirty-bitmap)",
            ));
        }
        if self.changed_areas.is_some() && self.dirty_bitmap.is_some() {
            return Err(invalid(
                "--changed-areas and --dirty-bitmap both name the changed ranges: give one",
            ));
        }
        if self.is_delta() && (self.checkpoint.is_none() || self.previous_checkpoint.is_none()) {
            return Err(invalid(
                "a delta needs --checkpoint ID and --previous-checkpoint ID: the target's checkpoint chain makes sure deltas are applied in order",
            ));
        }
        if !self.is_delta() {
            // A full copy replaces the whole disk: whatever chain the target had no longer
            // describes it, and must not let a later delta through. It is dropped before the
            // target is touched (and a new one starts if this copy names a checkpoint).
            self.drop_chain(target)?;
        }
        let chain = match &self.checkpoint {
            None => None,
            Some(id) => {
                let path = self.state_path(target)?;
                let chain = Chain::load(&path)?;
                chain.check(id, self.previous_checkpoint.as_deref())?;
                Some(chain)
            }
        };
        let delta = if !self.is_delta() {
            None
        } else if let Some(file) = &self.changed_areas {
            let body = std::fs::read(file)
                .map_err(|e| Error::io(format!("reading changed areas {}", file.display()), e))?;
            Some(DeltaSet::from_json(&body, size).map_err(|e| e.context_prefix(file.display()))?)
        } else {
            let mut sopts = sopts.clone();
            sopts.changed_since = self.previous_checkpoint.clone();
            Some(DeltaSet::new(size, dirty_ranges(source, &sopts).await?)?)
        };
        Ok(Plan {
            delta,
            chain,
            checkpoint: self.checkpoint.clone(),
            previous: self.previous_checkpoint.clone(),
        })
    }

    /// Removes the target's checkpoint chain, if it has one that can be found.
    fn drop_chain(&self, target: &Path) -> Result<()> {
        let Ok(path) = self.state_path(target) else {
            // A block device without --state-file: no chain of ours to find.
            return Ok(());
        };
        forget(&path)
    }

    /// Where the resume journal of a copy into `target` is kept: next to the state file when
    /// one is named, else next to the target (`TARGET.ferry-journal`; a block device needs
    /// --state-file).
    pub fn journal_path(&self, target: &Path) -> Result<PathBuf> {
        let base = match &self.state_file {
            Some(p) => p.clone(),
            None => {
                self.state_path(target)?;
                target.to_owned()
            }
        };
        let mut p = base.into_os_string();
        p.push(".ferry-journal");
        Ok(PathBuf::from(p))
    }

    fn state_path(&self, target: &Path) -> Result<PathBuf> {
        if let Some(p) = &self.state_file {
            return Ok(p.clone());
        }
        let is_block = std::fs::metadata(target).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        if is_block {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a block device: name a file for its checkpoint chain (--state-file PATH)",
                    target.display()
                ),
            ));
        }
        Ok(default_state_path(target))
    }
}

impl Plan {
    /// Records the checkpoint after a successful, flushed copy of a source of `size` bytes.
    pub fn record(&mut self, size: u64) -> Result<()> {
        match (&mut self.chain, &self.checkpoint) {
            (Some(chain), Some(id)) => chain.record(id, self.previous.as_deref(), size),
            _ => Ok(()),
        }
    }
}

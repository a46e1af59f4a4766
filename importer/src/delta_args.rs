//! The warm-migration flags of `importer copy`: `--delta` with where the changed ranges come
//! from, and the checkpoint chain (`--checkpoint`, `--previous-checkpoint`, `--state-file`),
//! translated into a transfer spec (the job plans the delta and keeps the chain).

use std::path::PathBuf;

use clap::Args;
use transfer_core::job::{Changes, Mode, TransferSpec};
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
    /// Where the target's checkpoint chain (and the --resume journal) is kept (default:
    /// beside a file target; a block device keeps neither without one).
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
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

    /// Checks how the flags combine (in the words of the command line) and puts them into
    /// `spec`.
    pub fn apply(&self, spec: &mut TransferSpec) -> Result<()> {
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
        spec.mode = match (&self.changed_areas, self.is_delta()) {
            (_, false) => Mode::Full,
            (Some(file), true) => Mode::Delta(Changes::File(file.clone())),
            (None, true) => Mode::Delta(Changes::FromSource),
        };
        spec.checkpoint = self.checkpoint.clone();
        spec.previous_checkpoint = self.previous_checkpoint.clone();
        spec.state_file = self.state_file.clone();
        Ok(())
    }
}

//! transfer-core: ferry's library, the data plane of VM disk migration to KubeVirt.
//!
//! - [`source`]: where bytes come from, all behind [`BlockSource`] (NBD, files and block
//!   devices, synthetic disks; with the `http` feature HTTP(S) image files, oVirt imageio and
//!   OpenStack Glance; with `vddk` VMware disks through VDDK). [`open::open_source`] opens one
//!   from a URI. A source that can tell a warm migration's changed ranges says so through
//!   [`BlockSource::changes`].
//! - [`format`](mod@format): qcow2, VMDK, OVA and gzip/xz read as raw disks on the fly, over any source.
//! - [`target`]: files and block devices, with a zeroing fallback chain.
//! - [`engine`]: the copy engine (work ranges, extents, zero detection, a bounded in-flight
//!   budget, pwrite or io_uring writes), verify and checksums, the resume journal.
//! - [`delta`]: changed-range sets and the checkpoint chain of a target.
//! - [`job`]: **the entrance**. A [`job::TransferSpec`] describes one transfer (source, target,
//!   whole disk or delta, checkpoints, resume, verify, tuning); [`job::Transfer::run`] does it
//!   under a cancel token the caller holds and reports to a progress observer. ferry's own
//!   front ends (`importer copy`, CDI's importer pod, Forklift's populators) are thin
//!   translators into a spec; an embedder is one more.
//!
//! Cargo features: `http`, `vddk` (needs `http`) and `uring` (the io_uring engine), all on by
//! default. Without them the crate still copies NBD exports, files and synthetic disks, in any
//! image format, to files and block devices.
//!
//! # Embedding
//!
//! Copy a disk with a cancel token and a progress observer (here a synthetic 64 MiB disk, half
//! of it data, into a new sparse file):
//!
//! ```
//! use std::sync::Arc;
//!
//! use transfer_core::engine::{Progress, ProgressObserver};
//! use transfer_core::job::{CancelToken, SourceSpec, TargetSpec, Transfer, TransferSpec};
//! use transfer_core::open::SourceOptions;
//!
//! # fn main() -> transfer_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let target = dir.path().join("disk.img");
//! let spec = TransferSpec {
//!     source: Some(SourceSpec::Uri {
//!         uri: "synth://sparse-random?size=64M&percent=50&seed=7".into(),
//!         options: SourceOptions::default(),
//!     }),
//!     target: TargetSpec {
//!         path: target.clone(),
//!         ..TargetSpec::default()
//!     },
//!     verify: true,
//!     ..TransferSpec::default()
//! };
//! let progress = Arc::new(Progress::new());
//! let cancel = CancelToken::new(); // cancel.cancel() from anywhere stops the copy
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! let summary = runtime.block_on(
//!     Transfer::new(spec).run(&cancel, Some(progress.clone() as Arc<dyn ProgressObserver>)),
//! )?;
//! assert_eq!(summary.stats.bytes_total, 64 << 20);
//! assert!(summary.verified);
//! assert_eq!(progress.get(), (64 << 20, 64 << 20));
//! assert_eq!(std::fs::metadata(&target).unwrap().len(), 64 << 20);
//! # Ok(())
//! # }
//! ```
//!
//! A source already opened (a test double, a source of your own) goes in as
//! [`job::SourceSpec::Opened`]; a delta is [`job::Mode::Delta`] with where its changed ranges
//! come from, and checkpoint ids that the target's chain checks.

#![warn(missing_docs)]

pub mod buffer;
pub mod delta;
#[cfg(feature = "http")]
pub mod digest;
pub mod engine;
pub mod error;
pub mod extent;
pub mod format;
#[doc(hidden)]
#[cfg(feature = "http")]
pub mod fuzzing;
#[cfg(feature = "http")]
pub mod http;
pub mod io;
pub mod job;
pub mod open;
pub mod size;
pub mod source;
pub mod sys;
pub mod target;

pub use engine::{copy, CopyOptions, CopyStats};
pub use error::{Error, ErrorKind, Result};
pub use extent::{Extent, ExtentKind};
pub use size::{check_disk_size, MAX_DISK_SIZE};
pub use source::{BlockSource, SourceCaps};
pub use target::{BlockTarget, TargetOptions};

//! transfer-core: ferry's library. Sources (NBD, files, synthetic disks), targets (files, block
//! devices), the copy engine with its I/O engines, and verify.
//!
//! Embedding: open a source with [`open::open_source`], a target with
//! [`target::open_target`], and run [`engine::copy`] on a tokio runtime.

pub mod buffer;
pub mod delta;
pub mod engine;
pub mod error;
pub mod extent;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
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
pub use source::{BlockSource, SourceCaps};
pub use target::{BlockTarget, TargetOptions};

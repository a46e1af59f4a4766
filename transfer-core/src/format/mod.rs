//! Disk image formats read as raw disks on top of any source: detected by their magic or
//! forced (`--format`).

pub mod qcow2;

use std::sync::Arc;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::source::BlockSource;

/// How a source's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// By the magic at its start (positional sources; a stream is read as it is).
    #[default]
    Auto,
    /// As they are.
    Raw,
    /// As a qcow2 image.
    Qcow2,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Format::Auto),
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown format '{s}' (auto, raw, qcow2)"),
            )),
        }
    }
}

/// The format whose magic starts `head`, if one this crate reads.
pub fn detect(head: &[u8]) -> Option<Format> {
    head.starts_with(&qcow2::MAGIC).then_some(Format::Qcow2)
}

/// `src` read as `format` (detected from its first bytes for [`Format::Auto`]).
pub async fn open_format(
    src: Arc<dyn BlockSource>,
    format: Format,
) -> Result<Arc<dyn BlockSource>> {
    let format = match format {
        Format::Auto if src.caps().sequential || src.size() < 4 => Format::Raw,
        Format::Auto => {
            let n = src.size().min(512) as usize;
            let head = src.read_at(0, Buffer::new(n)).await?;
            detect(head.as_slice()).unwrap_or(Format::Raw)
        }
        f => f,
    };
    match format {
        Format::Qcow2 => Ok(Arc::new(qcow2::Qcow2Source::open(src).await?)),
        _ => Ok(src),
    }
}

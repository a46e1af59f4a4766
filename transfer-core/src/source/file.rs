//! `file:///path` source: a raw image file or a block device, read with positional reads on the
//! blocking pool; extents from `SEEK_DATA`/`SEEK_HOLE` for regular files.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};
use crate::source::{BlockSource, SourceCaps};
use crate::sys;

/// A raw file or block device opened read-only.
pub struct FileSource {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    is_block: bool,
}

impl FileSource {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("opening source {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("inspecting source {}", path.display()), e))?;
        let is_block = meta.file_type().is_block_device();
        let size = if is_block {
            sys::block_device_size(&file)
                .map_err(|e| Error::io(format!("reading size of {}", path.display()), e))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "source {} is neither a regular file nor a block device",
                    path.display()
                ),
            ));
        };
        Ok(FileSource {
            path: path.to_owned(),
            file: Arc::new(file),
            size,
            is_block,
        })
    }

    fn file_extents(&self, offset: u64, len: u64) -> std::io::Result<Vec<Extent>> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = sys::seek_data(&self.file, pos)?.unwrap_or(end).min(end);
            if data > pos {
                out.push(Extent::new(pos, data - pos, ExtentKind::Hole));
                pos = data;
                continue;
            }
            let hole = sys::seek_hole(&self.file, pos)?.unwrap_or(end).min(end);
            let hole = hole.max(pos + 1);
            out.push(Extent::new(pos, hole - pos, ExtentKind::Data));
            pos = hole;
        }
        Ok(out)
    }
}

#[async_trait]
impl BlockSource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps {
            preferred_request: 1 << 20,
            max_request: 32 << 20,
            can_extents: !self.is_block,
            max_connections: 16,
            max_requests: 4,
            sequential: false,
            size_known: true,
            costly_requests: false,
        }
    }

    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        let file = self.file.clone();
        let desc = self.describe();
        tokio::task::spawn_blocking(move || {
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io(format!("reading {desc} at offset {offset}"), e))?;
            Ok(buf)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("read task failed: {e}")))?
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        if self.is_block {
            return Ok(vec![Extent::new(offset, len, ExtentKind::Data)]);
        }
        self.file_extents(offset, len)
            .map_err(|e| Error::io(format!("mapping extents of {}", self.describe()), e))
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(FileSource {
            path: self.path.clone(),
            file: self.file.clone(),
            size: self.size,
            is_block: self.is_block,
        }))
    }
}

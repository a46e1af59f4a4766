//! Sources: where disk bytes come from. One module per kind, all behind [`BlockSource`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};

pub mod file;
#[cfg(feature = "http")]
pub mod glance;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
pub mod imageio;
pub mod nbd;
pub mod retry;
#[cfg(feature = "http")]
pub mod stream;
pub mod synth;
#[cfg(feature = "vddk")]
pub mod vddk;

/// What a source can do; the engine plans around it.
#[derive(Debug, Clone)]
pub struct SourceCaps {
    /// Request size the source prefers (bytes).
    pub preferred_request: usize,
    /// Largest request the source accepts (bytes).
    pub max_request: usize,
    /// Whether `extents` reports real allocation (otherwise everything is data).
    pub can_extents: bool,
    /// How many independent handles may be opened at once.
    pub max_connections: usize,
    /// How many requests one handle can usefully have in flight.
    pub max_requests: usize,
    /// Whether the source can only be read front to back (a stream).
    pub sequential: bool,
    /// Whether `size()` is the real size. A decompressed stream learns its size at its end: its
    /// `size()` is 0 and `read_at` returns a short buffer at the end.
    pub size_known: bool,
    /// Whether every request costs the source a round trip and bookkeeping of its own, so
    /// that reading a short zero gap with the data around it is cheaper than a second request
    /// (imageio). The engine then bridges short gaps in fragmented ranges unless told
    /// otherwise (see [`crate::extent::auto_gap`]).
    pub costly_requests: bool,
}

impl Default for SourceCaps {
    fn default() -> Self {
        SourceCaps {
            preferred_request: 1 << 20,
            max_request: 32 << 20,
            can_extents: false,
            max_connections: 1,
            max_requests: 64,
            sequential: false,
            size_known: true,
            costly_requests: false,
        }
    }
}

impl SourceCaps {
    /// What a stream read front to back can do: one reader, one request at a time.
    pub fn stream(size_known: bool) -> SourceCaps {
        SourceCaps {
            preferred_request: 1 << 20,
            max_request: 4 << 20,
            can_extents: false,
            max_connections: 1,
            max_requests: 1,
            sequential: true,
            size_known,
            costly_requests: false,
        }
    }
}

/// A readable virtual disk.
///
/// Reads take an owned [`Buffer`] and give it back filled: the buffer may be filled by another
/// task (the NBD reply reader) or thread while the caller awaits, which a borrowed `&mut [u8]`
/// cannot allow without an extra copy.
#[async_trait]
pub trait BlockSource: Send + Sync {
    /// A description for messages (never contains credentials).
    fn describe(&self) -> String;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Capabilities.
    fn caps(&self) -> SourceCaps;

    /// Fills `buf` (its whole length) with the bytes at `offset`.
    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer>;

    /// Extents of `[offset, offset+len)`: sorted, contiguous, starting at `offset`; they may end
    /// before `offset+len` (the caller asks again for the rest). Default: all data.
    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent::new(offset, len, ExtentKind::Data)])
    }

    /// Opens another, independent handle on the same disk for a parallel reader.
    async fn open_another(&self) -> Result<Arc<dyn BlockSource>>;

    /// Ends the session cleanly (e.g. NBD_CMD_DISC). Dropping without it is allowed.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// The changed ranges this source can report over the session it already has (an NBD
    /// dirty bitmap negotiated on this connection, an imageio ticket's dirty extents, vSphere's
    /// changed areas through the login that opened the disk), or `None` when it cannot.
    fn changes(&self) -> Option<Arc<dyn ChangeTracking>> {
        None
    }

    /// What the source knows of the version of its content, beyond its name and size: an
    /// HTTP entity tag or modification time, a VMware snapshot. A resume journal written for
    /// another version is not resumed. `None` when the source cannot tell.
    fn fingerprint(&self) -> Option<String> {
        None
    }
}

/// A source's knowledge of what changed between two checkpoints: where a warm migration's
/// delta comes from. What "since" means was fixed when the source was opened (the NBD bitmap
/// named, the imageio ticket's `dirty` flag, the vSphere checkpoint counted from).
#[async_trait]
pub trait ChangeTracking: Send + Sync {
    /// The changed ranges `(offset, length)`; the caller sorts, merges and bounds-checks them
    /// (see [`crate::delta::DeltaSet::new`]).
    async fn changed_ranges(&self) -> Result<Vec<(u64, u64)>>;
}

/// Changed ranges learnt when the source was opened (vSphere's changed areas, read through
/// the same login that found the disk).
pub struct KnownChanges(pub Vec<(u64, u64)>);

#[async_trait]
impl ChangeTracking for KnownChanges {
    async fn changed_ranges(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self.0.clone())
    }
}

/// Decodes `%XX` escapes of a URI part (a `+` stays a `+`; a broken escape stays as it is).
pub(crate) fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Extents covering all of `[offset, offset+len)`, asking the source as often as needed, clipped
/// and checked (a source that returns nothing, goes backwards or skips bytes is a protocol error).
pub async fn extents_covering(src: &dyn BlockSource, offset: u64, len: u64) -> Result<Vec<Extent>> {
    covering(&src.describe(), offset, len, |o, l| src.extents(o, l)).await
}

/// Extents covering all of `[offset, offset+len)` from `fetch(offset, len)`, which may answer
/// for less than it was asked; asks again from where the last answer ended. Answers are clipped
/// and checked: one that is empty, goes backwards or skips bytes is a protocol error of `what`.
pub async fn covering<F, Fut>(
    what: &str,
    offset: u64,
    len: u64,
    mut fetch: F,
) -> Result<Vec<Extent>>
where
    F: FnMut(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Extent>>>,
{
    let end = offset + len;
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let got = fetch(pos, end - pos).await?;
        let before = pos;
        for e in got {
            if e.offset != pos || e.len == 0 {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "{what}: extents out of order at offset {} (expected {pos})",
                        e.offset
                    ),
                ));
            }
            let l = e.len.min(end - pos);
            out.push(Extent::new(pos, l, e.kind));
            pos += l;
            if pos >= end {
                break;
            }
        }
        if pos == before {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{what}: no extents returned for offset {pos}"),
            ));
        }
    }
    Ok(out)
}

//! Disks made of other sources: a window of one ([`SliceSource`]: a flat VMDK extent at its
//! offset, a tar member), several end to end ([`ConcatSource`]: the extents of a split VMDK,
//! the chunks of an OVA file) and zeros ([`ZeroSource`]: a VMDK `ZERO` extent).

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};
use crate::source::{BlockSource, SourceCaps};

fn past_end(what: &str, offset: u64, len: u64) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{what}: read of {len} bytes at {offset} past the end"),
    )
}

fn check_range(what: &str, size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(past_end(what, offset, len)),
    }
}

/// `len` bytes of `inner` from `start`, as a disk of their own.
pub struct SliceSource {
    inner: Arc<dyn BlockSource>,
    start: u64,
    len: u64,
    desc: String,
}

impl SliceSource {
    /// The window `[start, start+len)` of `inner`, described as `desc`; it must lie within
    /// `inner` (a shorter file is a truncated image).
    pub fn new(inner: Arc<dyn BlockSource>, start: u64, len: u64, desc: String) -> Result<Self> {
        if start.checked_add(len).is_none_or(|e| e > inner.size()) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "{desc}: {len} bytes at {start} lie past the end of {} ({} bytes): truncated?",
                    inner.describe(),
                    inner.size()
                ),
            ));
        }
        Ok(SliceSource {
            inner,
            start,
            len,
            desc,
        })
    }
}

#[async_trait]
impl BlockSource for SliceSource {
    fn fingerprint(&self) -> Option<String> {
        self.inner.fingerprint()
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn caps(&self) -> SourceCaps {
        self.inner.caps()
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        check_range(&self.desc, self.len, offset, buf.len() as u64)?;
        self.inner.read_at(self.start + offset, buf).await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.len.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let got = self.inner.extents(self.start + offset, len).await?;
        Ok(got
            .into_iter()
            .filter_map(|e| {
                let from = e.offset.max(self.start + offset);
                let to = e.end().min(self.start + offset + len);
                (to > from).then(|| Extent::new(from - self.start, to - from, e.kind))
            })
            .collect())
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(SliceSource {
            inner: self.inner.open_another().await?,
            start: self.start,
            len: self.len,
            desc: self.desc.clone(),
        }))
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Sources end to end.
pub struct ConcatSource {
    /// Each part with the offset it starts at.
    parts: Vec<(u64, Arc<dyn BlockSource>)>,
    size: u64,
    desc: String,
}

impl ConcatSource {
    /// `parts` one after the other (at least one).
    pub fn new(parts: Vec<Arc<dyn BlockSource>>, desc: String) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::new(ErrorKind::Protocol, format!("{desc}: no parts")));
        }
        let mut at = 0u64;
        let mut placed = Vec::with_capacity(parts.len());
        for p in parts {
            let size = p.size();
            placed.push((at, p));
            at = at.checked_add(size).ok_or_else(|| {
                Error::new(ErrorKind::Protocol, format!("{desc}: parts too large"))
            })?;
        }
        Ok(ConcatSource {
            parts: placed,
            size: at,
            desc,
        })
    }

    /// The index of the part holding `offset` (< size).
    fn part_of(&self, offset: u64) -> usize {
        self.parts.partition_point(|(start, _)| *start <= offset) - 1
    }
}

#[async_trait]
impl BlockSource for ConcatSource {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        let mut caps = self.parts[0].1.caps();
        for (_, p) in &self.parts[1..] {
            let c = p.caps();
            caps.can_extents |= c.can_extents;
            caps.max_connections = caps.max_connections.min(c.max_connections);
            caps.max_requests = caps.max_requests.min(c.max_requests);
            caps.max_request = caps.max_request.min(c.max_request);
            caps.preferred_request = caps.preferred_request.max(c.preferred_request);
            caps.sequential |= c.sequential;
        }
        caps.preferred_request = caps.preferred_request.min(caps.max_request);
        caps
    }

    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        let len = buf.len() as u64;
        check_range(&self.desc, self.size, offset, len)?;
        let mut pos = offset;
        let mut i = if len > 0 { self.part_of(offset) } else { 0 };
        while pos < offset + len {
            let (start, part) = &self.parts[i];
            let n = (start + part.size() - pos).min(offset + len - pos);
            if n > 0 {
                let at = (pos - offset) as usize;
                let got = part.read_at(pos - start, Buffer::new(n as usize)).await?;
                buf.as_mut_slice()[at..at + n as usize].copy_from_slice(got.as_slice());
            }
            pos += n;
            i += 1;
        }
        Ok(buf)
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        if offset >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        // One part per answer: the caller asks again from where it ends.
        let (start, part) = &self.parts[self.part_of(offset)];
        let within = offset - start;
        let n = len.min(part.size() - within);
        let got = part.extents(within, n).await?;
        Ok(got
            .into_iter()
            .map(|e| Extent::new(e.offset + start, e.len, e.kind))
            .collect())
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        let mut parts = Vec::with_capacity(self.parts.len());
        for (start, p) in &self.parts {
            parts.push((*start, p.open_another().await?));
        }
        Ok(Arc::new(ConcatSource {
            parts,
            size: self.size,
            desc: self.desc.clone(),
        }))
    }

    async fn close(&self) -> Result<()> {
        for (_, p) in &self.parts {
            p.close().await?;
        }
        Ok(())
    }
}

/// `size` bytes of zeros.
pub struct ZeroSource {
    size: u64,
    desc: String,
}

impl ZeroSource {
    /// Zeros of `size` bytes, described as `desc`.
    pub fn new(size: u64, desc: String) -> Self {
        ZeroSource { size, desc }
    }
}

#[async_trait]
impl BlockSource for ZeroSource {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps {
            can_extents: true,
            max_connections: 64,
            ..SourceCaps::default()
        }
    }

    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        check_range(&self.desc, self.size, offset, buf.len() as u64)?;
        buf.as_mut_slice().fill(0);
        Ok(buf)
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.size.saturating_sub(offset));
        Ok(if len == 0 {
            Vec::new()
        } else {
            vec![Extent::new(offset, len, ExtentKind::Zero)]
        })
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(ZeroSource::new(self.size, self.desc.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::synth::SynthSource;

    fn pattern(size: u64) -> Arc<dyn BlockSource> {
        let url = url::Url::parse(&format!("synth://pattern?size={size}")).unwrap();
        Arc::new(SynthSource::from_url(&url).unwrap())
    }

    async fn read(src: &dyn BlockSource, offset: u64, len: usize) -> Vec<u8> {
        src.read_at(offset, Buffer::new(len))
            .await
            .unwrap()
            .as_slice()
            .to_vec()
    }

    #[tokio::test]
    async fn slices_and_concatenations_read_the_right_bytes() {
        let base = pattern(1 << 20);
        let whole = read(&*base, 0, 1 << 20).await;
        let a: Arc<dyn BlockSource> =
            Arc::new(SliceSource::new(base.clone(), 1000, 5000, "a".into()).unwrap());
        let z: Arc<dyn BlockSource> = Arc::new(ZeroSource::new(300, "z".into()));
        let b: Arc<dyn BlockSource> =
            Arc::new(SliceSource::new(base.clone(), 70_000, 4096, "b".into()).unwrap());
        let c = ConcatSource::new(vec![a, z, b], "c".into()).unwrap();
        assert_eq!(c.size(), 5000 + 300 + 4096);
        let got = read(&c, 4000, 2000).await;
        assert_eq!(&got[..1000], &whole[5000..6000]);
        assert!(got[1000..1300].iter().all(|&x| x == 0));
        assert_eq!(&got[1300..], &whole[70_000..70_700]);
        let ext = crate::source::extents_covering(&c, 0, c.size())
            .await
            .unwrap();
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), c.size());
        assert!(c.read_at(9000, Buffer::new(1000)).await.is_err());
        assert!(SliceSource::new(base, 1 << 20, 1, "x".into()).is_err());
    }
}

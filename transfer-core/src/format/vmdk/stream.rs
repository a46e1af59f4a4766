//! A stream-optimized extent decoded front to back, for sources that can only be read that way
//! (an HTTP server without Range, a gzip-compressed OVA member): past the header's overhead come
//! markers, each a compressed grain (its disk sector, its size, zlib data, padded to a sector) or
//! metadata to step over (grain tables, the directory, the footer), until an end-of-stream marker
//! or the end of the input. Gaps between grains read as zeros. Grains must come in disk order,
//! as VMware and qemu write them; anything else needs random access and is refused.

use std::io::Read;

use super::descriptor::Descriptor;
use super::header::{corrupt, unsupported, Marker, MarkerKind, SparseHeader, GD_AT_END, SECTOR};
use super::sparse::inflate_grain;
use crate::error::{Error, Result};
use crate::format::seq::to_io;

/// A stream-optimized extent as the raw disk it holds.
pub struct StreamReader<R> {
    input: R,
    header: SparseHeader,
    /// Input bytes taken so far.
    consumed: u64,
    /// Disk bytes given out so far.
    pos: u64,
    size: u64,
    grain: Vec<u8>,
    /// The disk offset of the grain held in `grain`, and how many of its bytes count.
    held: Option<(u64, u64)>,
    /// No grains follow: the rest reads as zeros.
    ended: bool,
    packed: Vec<u8>,
    /// Grains the tables before the first grain list (qemu's layout), when they were read.
    expected: Option<u64>,
    /// Grains read so far.
    seen: u64,
    /// The markers after the disk's last byte were checked.
    finished: bool,
}

/// The most metadata before the first grain kept to count the allocated grains.
const MAX_LEADING_METADATA: u64 = 64 << 20;

fn read_full(r: &mut impl Read, out: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < out.len() {
        match r.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> StreamReader<R> {
    /// Reads the header from `input` (at the extent's first byte) and steps to the first
    /// marker, checking the embedded descriptor on the way.
    pub fn new(mut input: R) -> Result<Self> {
        let mut head = [0u8; SparseHeader::LEN];
        let got = read_full(&mut input, &mut head).map_err(|e| io_err(e, "reading the header"))?;
        let header = SparseHeader::parse(&head[..got])?;
        if !header.compressed() || !header.markers() {
            return Err(unsupported(
                "only a stream-optimized VMDK can be read front to back; this one needs random access (a server with Range support, or a file)",
            ));
        }
        let mut r = StreamReader {
            input,
            size: header.size(),
            grain: vec![0u8; header.grain_bytes() as usize],
            header,
            consumed: SparseHeader::LEN as u64,
            pos: 0,
            held: None,
            ended: false,
            packed: Vec::new(),
            expected: None,
            seen: 0,
            finished: false,
        };
        let h = r.header.clone();
        if h.descriptor_sectors > 0 && h.descriptor_offset >= 1 {
            r.skip_to(h.descriptor_offset.saturating_mul(SECTOR))?;
            let mut text = vec![0u8; (h.descriptor_sectors * SECTOR) as usize];
            let got = read_full(&mut r.input, &mut text)
                .map_err(|e| io_err(e, "reading the descriptor"))?;
            r.consumed += got as u64;
            Descriptor::parse(&text[..got])?;
        }
        let first_grain = h.overhead.saturating_mul(SECTOR);
        let gd_at = h.gd_offset.saturating_mul(SECTOR);
        if h.gd_offset != GD_AT_END
            && gd_at >= r.consumed
            && first_grain > r.consumed
            && first_grain - r.consumed <= MAX_LEADING_METADATA
        {
            // qemu puts the grain directory and tables before the grains, and writes no
            // end-of-stream marker: counting the grains they list tells a complete stream
            // from a truncated one.
            let base = r.consumed;
            let mut meta = vec![0u8; (first_grain - base) as usize];
            let got = read_full(&mut r.input, &mut meta)
                .map_err(|e| io_err(e, "reading the grain tables"))?;
            r.consumed += got as u64;
            meta.truncate(got);
            r.expected = count_grains(&h, &meta, base);
        }
        r.skip_to(first_grain)?;
        Ok(r)
    }

    /// The disk's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn skip_to(&mut self, at: u64) -> Result<()> {
        if at <= self.consumed {
            return Ok(());
        }
        let want = at - self.consumed;
        let n = std::io::copy(&mut (&mut self.input).take(want), &mut std::io::sink())
            .map_err(|e| io_err(e, "skipping metadata"))?;
        self.consumed += n;
        if n < want {
            return Err(corrupt(format!(
                "the stream ends at byte {} inside metadata that runs to {at}: truncated?",
                self.consumed
            )));
        }
        Ok(())
    }

    /// After the disk's last byte: the markers that follow must end the stream properly (an
    /// end-of-stream marker, or the end of a stream whose tables were all delivered), so that
    /// a stream cut in its trailing metadata is not taken for a whole one.
    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        while !self.ended {
            self.held = None;
            self.next_grain()?;
            if self.held.is_some() {
                return Err(corrupt("a grain after the disk's last grain, out of order"));
            }
        }
        Ok(())
    }

    /// Reads the next grain into `grain`, or finds the end.
    fn next_grain(&mut self) -> Result<()> {
        loop {
            let mut sector = [0u8; SECTOR as usize];
            let got = read_full(&mut self.input, &mut sector)
                .map_err(|e| io_err(e, "reading a marker"))?;
            let at = self.consumed;
            self.consumed += got as u64;
            if got == 0 {
                // qemu ends its streams without an end-of-stream marker: complete when every
                // grain its tables list has come. Anything else ended early.
                return match self.expected {
                    Some(n) if self.seen >= n => {
                        self.ended = true;
                        Ok(())
                    }
                    Some(n) => Err(corrupt(format!(
                        "the stream ends at byte {at} after {} of the {n} grains its tables list: truncated?",
                        self.seen
                    ))),
                    None => Err(corrupt(format!(
                        "the stream ends at byte {at} without an end-of-stream marker: truncated?"
                    ))),
                };
            }
            if got < sector.len() {
                return Err(corrupt(format!(
                    "the stream ends inside the marker at byte {at}: truncated?"
                )));
            }
            match Marker::parse(&sector)? {
                Marker::Meta {
                    kind: MarkerKind::EndOfStream,
                    ..
                } => {
                    self.ended = true;
                    return Ok(());
                }
                Marker::Meta { sectors, .. } => {
                    let to = sectors
                        .checked_mul(SECTOR)
                        .and_then(|b| b.checked_add(self.consumed))
                        .ok_or_else(|| {
                            corrupt(format!("metadata of {sectors} sectors at byte {at}"))
                        })?;
                    self.skip_to(to)?;
                }
                Marker::Grain { lba, size } => {
                    return self.take_grain(&sector, at, lba, size);
                }
            }
        }
    }

    fn take_grain(&mut self, first: &[u8], at: u64, lba: u64, size: u32) -> Result<()> {
        let gb = self.header.grain_bytes();
        if size as u64 > gb + 4096 {
            return Err(corrupt(format!(
                "a compressed grain of {size} bytes at byte {at}, more than a grain can take"
            )));
        }
        let start = lba
            .checked_mul(SECTOR)
            .filter(|s| *s < self.size && lba.is_multiple_of(self.header.grain_sectors))
            .ok_or_else(|| corrupt(format!("a grain for sector {lba} at byte {at}, outside the disk or not on a grain boundary")))?;
        if start < self.pos {
            return Err(corrupt(format!(
                "grains out of order at byte {at} (sector {lba} after {}): this VMDK needs random access (a server with Range support, or a file)",
                self.pos / SECTOR
            )));
        }
        let total = (Marker::GRAIN_HEADER as u64 + size as u64).next_multiple_of(SECTOR) as usize;
        self.packed.clear();
        self.packed.extend_from_slice(first);
        self.packed.resize(total.max(first.len()), 0);
        let got = read_full(&mut self.input, &mut self.packed[first.len()..])
            .map_err(|e| io_err(e, "reading a grain"))?;
        self.consumed += got as u64;
        if got < total.saturating_sub(first.len()) {
            // The padding of the very last grain may be missing; its data may not.
            if first.len() + got < Marker::GRAIN_HEADER + size as usize {
                return Err(corrupt(format!(
                    "the stream ends inside the grain at byte {at}: truncated?"
                )));
            }
        }
        let need = (self.size - start).min(gb);
        inflate_grain(&self.packed, true, &mut self.grain, need as usize)
            .map_err(|e| e.context_prefix(format!("grain at byte {at}")))?;
        self.held = Some((start, need));
        self.seen += 1;
        Ok(())
    }
}

/// The allocated grains (entries above 1) the grain directory and tables in `meta` (the bytes
/// from offset `base`) list; `None` when a table lies outside them.
fn count_grains(h: &SparseHeader, meta: &[u8], base: u64) -> Option<u64> {
    let slice = |at: u64, len: u64| -> Option<&[u8]> {
        let from = usize::try_from(at.checked_sub(base)?).ok()?;
        meta.get(from..from.checked_add(usize::try_from(len).ok()?)?)
    };
    let gd = slice(h.gd_offset.checked_mul(SECTOR)?, h.gd_entries() * 4)?;
    let mut n = 0u64;
    for e in gd.chunks_exact(4) {
        let gt = u32::from_le_bytes(e.try_into().expect("4 bytes")) as u64;
        if gt == 0 {
            continue;
        }
        let table = slice(gt * SECTOR, h.gtes_per_gt as u64 * 4)?;
        n += table
            .chunks_exact(4)
            .filter(|g| u32::from_le_bytes((*g).try_into().expect("4 bytes")) > 1)
            .count() as u64;
    }
    Some(n)
}

fn io_err(e: std::io::Error, doing: &str) -> Error {
    crate::format::seq::from_io(e, &format!("vmdk: {doing}"))
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fill(out)?;
        if n > 0 && self.pos >= self.size {
            self.finish().map_err(to_io)?;
        }
        Ok(n)
    }
}

impl<R: Read> StreamReader<R> {
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos >= self.size || out.is_empty() {
                return Ok(0);
            }
            let room = (out.len() as u64).min(self.size - self.pos);
            match self.held {
                Some((start, _)) if self.pos < start => {
                    let n = room.min(start - self.pos) as usize;
                    out[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Some((start, len)) if self.pos < start + len => {
                    let from = (self.pos - start) as usize;
                    let n = room.min(start + len - self.pos) as usize;
                    out[..n].copy_from_slice(&self.grain[from..from + n]);
                    self.pos += n as u64;
                    return Ok(n);
                }
                _ if self.ended => {
                    let n = room as usize;
                    out[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
                _ => {
                    self.held = None;
                    self.next_grain().map_err(to_io)?;
                }
            }
        }
    }
}

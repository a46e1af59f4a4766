//! What the fuzz targets share: a reader of the fuzz input, a bounded tokio runtime, an in-memory
//! peer that plays back the input as the server's bytes, and the checks of extent lists that
//! several sources must pass.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use transfer_core::Extent;

/// Longest a target may wait on the code under test: the input is in memory and ends, so a
/// client that is still waiting after this hangs on a server that has gone (a bug).
pub const TIME_BOUND: Duration = Duration::from_secs(10);

/// Reads numbers and byte strings from the front of a fuzz input; past its end it gives zeros
/// and empty slices, so every input is usable.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// The next byte, 0 at the end.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next big-endian u16 (zero-padded at the end).
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.bytes(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_be_bytes(b)
    }

    /// The next big-endian u32 (zero-padded at the end).
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.bytes(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_be_bytes(b)
    }

    /// The next big-endian u64 (zero-padded at the end).
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_be_bytes(b)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A fresh single-threaded runtime with timers: one per input, so nothing one input spawned
/// survives into the next.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `fut` to completion on `rt`, panicking (a finding) when it takes longer than
/// [`TIME_BOUND`].
pub fn block_on_bounded<F: Future>(rt: &tokio::runtime::Runtime, what: &str, fut: F) -> F::Output {
    rt.block_on(async {
        match tokio::time::timeout(TIME_BOUND, fut).await {
            Ok(v) => v,
            Err(_) => {
                panic!("{what} still waiting after {TIME_BOUND:?} on an input that has ended")
            }
        }
    })
}

/// A peer that sends the fuzz input and then closes: reads give the input, then EOF; writes
/// are accepted and kept (what the client sent).
#[derive(Debug, Default)]
pub struct Playback {
    rx: Vec<u8>,
    pos: usize,
    /// Everything the client wrote.
    pub sent: Vec<u8>,
}

impl Playback {
    /// A peer whose bytes are `rx`.
    pub fn new(rx: &[u8]) -> Self {
        Playback {
            rx: rx.to_vec(),
            pos: 0,
            sent: Vec::new(),
        }
    }
}

impl AsyncRead for Playback {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.rx.len() - self.pos);
        let at = self.pos;
        buf.put_slice(&self.rx[at..at + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Playback {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.sent.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Checks the [`transfer_core::BlockSource::extents`] contract for an answer about
/// `[offset, ...)` of a disk of `size` bytes: not empty, starting at `offset`, each extent
/// non-empty and starting where the previous one ended, the last ending inside the disk.
pub fn check_extents(what: &str, extents: &[Extent], offset: u64, size: u64) {
    assert!(!extents.is_empty(), "{what}: an empty extent list");
    let mut pos = offset;
    for e in extents {
        assert!(e.len > 0, "{what}: an empty extent in {extents:?}");
        assert_eq!(
            e.offset, pos,
            "{what}: extents not contiguous from {offset}: {extents:?}"
        );
        pos = e
            .offset
            .checked_add(e.len)
            .unwrap_or_else(|| panic!("{what}: an extent past 2^64: {extents:?}"));
    }
    assert!(
        pos <= size,
        "{what}: extents end at {pos}, past the disk ({size} bytes): {extents:?}"
    );
}

/// Checks a list of byte ranges `(offset, length)` as a [`transfer_core::delta::DeltaSet`]
/// promises them: each non-empty, sorted, apart from each other (merged), inside `[0, size)`.
pub fn check_ranges(what: &str, ranges: &[(u64, u64)], size: u64) {
    let mut prev_end: Option<u64> = None;
    for &(o, l) in ranges {
        assert!(l > 0, "{what}: an empty range in {ranges:?}");
        let end = o
            .checked_add(l)
            .unwrap_or_else(|| panic!("{what}: a range past 2^64: {ranges:?}"));
        assert!(
            end <= size,
            "{what}: a range past the disk ({size}): {ranges:?}"
        );
        if let Some(p) = prev_end {
            assert!(
                o > p,
                "{what}: ranges unsorted, overlapping or adjacent: {ranges:?}"
            );
        }
        prev_end = Some(end);
    }
}

/// Prints what `what` says when `FUZZ_DEBUG` is set: run a target on one input
/// (`TARGET FILE`) with it to see what the code under test made of it (e.g. that a seed is
/// accepted, not refused at its first byte).
pub fn debug(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some()) {
        eprintln!("{}", what());
    }
}

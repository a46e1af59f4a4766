//! HTTP answers as the HTTP and imageio sources read them: `Content-Range` values
//! (`parse_content_range`), `Content-Length`, the magic sniffed from a body's first bytes, a
//! ranged GET's reply as a whole (status, `Content-Range`, body in chunks, a transport error
//! mid-body: `fill_from_range_reply`), and bounded reads of API answers (`http::read_bounded`).
//!
//! Input: one byte of flags (bits 0-1: status 206, 200, 416 or 206; bit 2: the body ends in a
//! transport error; bit 3: no `Content-Range`), the offset asked (u32), its length - 1 (u16,
//! modulo 4096), the disk size (u64), the answer limit (u16), a length-prefixed (u8) header
//! value used as `Content-Range` and `Content-Length`, then body chunks, each length-prefixed
//! (u8).
//!
//! Holds: no panic; a parsed `Content-Range` is ordered (first <= last < total) and reads back
//! the same from its canonical form; a ranged read succeeds exactly when the status is 206, the
//! `Content-Range` is the range asked of this size and the body is the range's length, and
//! then the buffer is the body; `read_bounded` returns the body exactly when it fits the limit.

#![no_main]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ferry_fuzz::{block_on_bounded, debug, runtime, Input};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use http::{HeaderValue, StatusCode};
use http_body::Frame;
use libfuzzer_sys::fuzz_target;
use transfer_core::buffer::Buffer;
use transfer_core::fuzzing::{content_length, fill_from_range_reply};
use transfer_core::http::read_bounded;
use transfer_core::source::http::{parse_content_range, sniff_format};
use url::Url;

/// A response body that gives its chunks one frame each, then maybe an error.
struct Chunks(VecDeque<io::Result<Bytes>>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        Poll::Ready(self.0.pop_front().map(|r| r.map(Frame::data)))
    }
}

struct Reply<'a> {
    status: StatusCode,
    header: Option<&'a [u8]>,
    chunks: Vec<&'a [u8]>,
    broken: bool,
}

impl Reply<'_> {
    fn response(&self) -> reqwest::Response {
        let mut items: VecDeque<io::Result<Bytes>> = self
            .chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if self.broken {
            items.push_back(Err(io::Error::new(io::ErrorKind::ConnectionReset, "fuzz")));
        }
        let mut b = http::Response::builder().status(self.status);
        if let Some(v) = self.header.and_then(|h| HeaderValue::from_bytes(h).ok()) {
            b = b.header(CONTENT_RANGE, v.clone()).header(CONTENT_LENGTH, v);
        }
        let resp = b
            .body(reqwest::Body::wrap(Chunks(items)))
            .expect("a response");
        reqwest::Response::from(resp)
    }

    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// The header as the sources see it: present, and text.
    fn header_str(&self) -> Option<String> {
        let v = HeaderValue::from_bytes(self.header?).ok()?;
        v.to_str().ok().map(str::to_owned)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let status = match flags & 3 {
        1 => StatusCode::OK,
        2 => StatusCode::RANGE_NOT_SATISFIABLE,
        _ => StatusCode::PARTIAL_CONTENT,
    };
    let offset = u64::from(input.u32());
    let len = 1 + usize::from(input.u16() % 4096);
    let size = input.u64();
    let limit = usize::from(input.u16());
    let n = input.u8();
    let header = input.bytes(n.into());
    let mut chunks = Vec::new();
    while !input.is_empty() {
        let n = input.u8();
        chunks.push(input.bytes(n.into()));
    }
    let reply = Reply {
        status,
        header: (flags & 8 == 0).then_some(header),
        chunks,
        broken: flags & 4 != 0,
    };

    let header_str = reply.header_str();
    if let Some(h) = &header_str {
        check_content_range(h);
        if let Some(n) = content_length(&reply.response()) {
            assert_eq!(
                h.trim().parse::<u64>().ok(),
                Some(n),
                "Content-Length {h:?}"
            );
        }
    }
    let body = reply.body();
    if let Some(f) = sniff_format(&body) {
        assert!(matches!(f, "gzip" | "xz" | "qcow2" | "vmdk"), "{f}");
    }

    let at = Url::parse("http://fuzz.invalid/disk.img").expect("a URL");
    let rt = runtime();
    let last = offset + len as u64 - 1;
    let got = block_on_bounded(
        &rt,
        "a ranged read",
        fill_from_range_reply(reply.response(), &at, offset, size, Buffer::new(len)),
    );
    let range_ok = header_str
        .as_deref()
        .and_then(parse_content_range)
        .is_some_and(|c| c.first == offset && c.last == last && c.total.is_none_or(|t| t == size));
    debug(|| {
        format!(
            "{header_str:?} {status} {offset}+{len} of {size}: {:?}",
            got.as_ref().map(|b| b.len())
        )
    });
    let should =
        status == StatusCode::PARTIAL_CONTENT && range_ok && body.len() == len && !reply.broken;
    match got {
        Ok(buf) => {
            assert!(should, "a ranged read accepted a bad reply");
            assert_eq!(&buf[..], &body[..], "the buffer is not the body");
        }
        Err(e) => assert!(!should, "a good ranged reply refused: {e}"),
    }

    let got = block_on_bounded(
        &rt,
        "a bounded read",
        read_bounded(reply.response(), &at, limit),
    );
    let fits = body.len() <= limit && !reply.broken;
    match got {
        Ok(b) => {
            assert!(fits, "read_bounded took {} bytes over {limit}", b.len());
            assert_eq!(b, body);
        }
        Err(e) => assert!(!fits, "read_bounded refused a body that fits: {e}"),
    }
});

/// A parsed `Content-Range` is ordered and reads back the same from its canonical form.
fn check_content_range(h: &str) {
    let Some(c) = parse_content_range(h) else {
        return;
    };
    assert!(c.first <= c.last, "{h:?} -> {c:?}");
    assert!(c.total.is_none_or(|t| c.last < t), "{h:?} -> {c:?}");
    let total = c.total.map_or("*".to_owned(), |t| t.to_string());
    let canonical = format!("bytes {}-{}/{total}", c.first, c.last);
    assert_eq!(
        parse_content_range(&canonical),
        Some(c),
        "{h:?} -> {canonical:?}"
    );
}

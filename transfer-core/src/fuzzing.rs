//! Thin public wrappers around the parsers of untrusted bytes that are private to the crate, for
//! the fuzz targets in `fuzz/`. Hidden from the docs: not an API, and free to change with them.

use reqwest::Response;
use url::Url;

use crate::buffer::Buffer;
use crate::error::Result;

/// Fills `buf` from the reply to `Range: bytes=offset-(offset+len-1)` of a disk of `size`
/// bytes, checking status, `Content-Range` and body length (`source::http`).
pub async fn fill_from_range_reply(
    resp: Response,
    at: &Url,
    offset: u64,
    size: u64,
    buf: Buffer,
) -> Result<Buffer> {
    crate::source::http::fill_from_range_reply(resp, at, offset, size, buf).await
}

/// The `Content-Length` of a response, as the HTTP source reads it (`source::http`).
pub fn content_length(resp: &Response) -> Option<u64> {
    crate::source::http::content_length(resp)
}

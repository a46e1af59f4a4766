//! NBD wire format (the NBD project's doc/proto.md): constants, encoders and parsers over byte
//! slices. No I/O here: the handshake and the client feed these functions bytes they have read,
//! so every parser can be unit-tested and fuzzed on its own.

use crate::error::{protocol, Result};
use crate::extent::{Extent, ExtentKind};

/// "NBDMAGIC", first thing a newstyle server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation, and the prefix of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle negotiation magic (not supported, but recognised for a clear error).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of option replies.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 2;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// NBD_OPT_ABORT.
pub const OPT_ABORT: u32 = 2;
/// NBD_OPT_GO.
pub const OPT_GO: u32 = 7;
/// NBD_OPT_STRUCTURED_REPLY.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// NBD_OPT_SET_META_CONTEXT.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// NBD_REP_INFO.
pub const REP_INFO: u32 = 3;
/// NBD_REP_META_CONTEXT.
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR_BIT: u32 = 1 << 31;
/// NBD_REP_ERR_UNSUP.
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
/// NBD_REP_ERR_UNKNOWN (no such export).
pub const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;

/// Info types in NBD_OPT_GO.
pub const INFO_EXPORT: u16 = 0;
/// NBD_INFO_BLOCK_SIZE.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
/// NBD_FLAG_READ_ONLY.
pub const TF_READ_ONLY: u16 = 1 << 1;
/// NBD_FLAG_SEND_FLUSH.
pub const TF_SEND_FLUSH: u16 = 1 << 2;
/// NBD_FLAG_SEND_WRITE_ZEROES.
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// NBD_FLAG_CAN_MULTI_CONN.
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
/// NBD_CMD_WRITE.
pub const CMD_WRITE: u16 = 1;
/// NBD_CMD_DISC.
pub const CMD_DISC: u16 = 2;
/// NBD_CMD_FLUSH.
pub const CMD_FLUSH: u16 = 3;
/// NBD_CMD_WRITE_ZEROES.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// NBD_CMD_BLOCK_STATUS.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply flag: last chunk of this request.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Chunk types.
pub const CHUNK_NONE: u16 = 0;
/// NBD_REPLY_TYPE_OFFSET_DATA.
pub const CHUNK_OFFSET_DATA: u16 = 1;
/// NBD_REPLY_TYPE_OFFSET_HOLE.
pub const CHUNK_OFFSET_HOLE: u16 = 2;
/// NBD_REPLY_TYPE_BLOCK_STATUS.
pub const CHUNK_BLOCK_STATUS: u16 = 5;
/// NBD_REPLY_TYPE_ERROR.
pub const CHUNK_ERROR: u16 = (1 << 15) + 1;
/// NBD_REPLY_TYPE_ERROR_OFFSET.
pub const CHUNK_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// base:allocation flags.
pub const STATE_HOLE: u32 = 1;
/// NBD_STATE_ZERO.
pub const STATE_ZERO: u32 = 2;
/// A `qemu:dirty-bitmap:NAME` block is dirty (bit 0 of its flags).
pub const STATE_DIRTY: u32 = 1;

/// Largest structured chunk payload we accept besides read data (error messages, block status).
pub const MAX_META_PAYLOAD: u32 = 16 << 20;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn need(b: &[u8], n: usize, what: &str) -> Result<()> {
    if b.len() < n {
        return Err(protocol(format!(
            "{what} is {} bytes, expected at least {n}",
            b.len()
        )));
    }
    Ok(())
}

/// The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn parse_greeting(b: &[u8; 18]) -> Result<u16> {
    let magic = be64(b, 0);
    if magic != NBDMAGIC {
        return Err(protocol(format!("not an NBD server (magic {magic:#018x})")));
    }
    match be64(b, 8) {
        IHAVEOPT => Ok(be16(b, 16)),
        OLDSTYLE_MAGIC => Err(protocol(
            "server uses oldstyle negotiation, which is not supported",
        )),
        m => Err(protocol(format!("unknown negotiation magic {m:#018x}"))),
    }
}

/// Encodes an option: IHAVEOPT, option, length, data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// NBD_OPT_GO data: export name and the info requests.
pub fn encode_go(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// NBD_OPT_SET_META_CONTEXT data: export name and the queries.
pub fn encode_meta_context(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReplyHeader {
    /// The option this answers.
    pub option: u32,
    /// Reply type (ACK, INFO, META_CONTEXT, or an error with bit 31).
    pub reply: u32,
    /// Payload length that follows.
    pub len: u32,
}

/// Parses the 20-byte option reply header, checking the magic and that it answers `expect`.
pub fn parse_opt_reply_header(b: &[u8; 20], expect: u32) -> Result<OptReplyHeader> {
    let magic = be64(b, 0);
    if magic != OPT_REPLY_MAGIC {
        return Err(protocol(format!("bad option reply magic {magic:#018x}")));
    }
    let h = OptReplyHeader {
        option: be32(b, 8),
        reply: be32(b, 12),
        len: be32(b, 16),
    };
    if h.option != expect {
        return Err(protocol(format!(
            "reply to option {} while waiting for {expect}",
            h.option
        )));
    }
    if h.len > MAX_META_PAYLOAD {
        return Err(protocol(format!(
            "option reply of {} bytes is too large",
            h.len
        )));
    }
    Ok(h)
}

/// True when an option reply type is an error.
pub fn is_rep_err(reply: u32) -> bool {
    reply & REP_ERR_BIT != 0
}

/// Name of an option reply error, for messages.
pub fn rep_err_name(reply: u32) -> &'static str {
    match reply & !REP_ERR_BIT {
        1 => "unsupported",
        2 => "forbidden by policy",
        3 => "invalid",
        4 => "unsupported on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size required",
        9 => "too big",
        10 => "extended headers required",
        _ => "error",
    }
}

/// What NBD_REP_INFO told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// NBD_INFO_EXPORT: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// NBD_INFO_BLOCK_SIZE.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload size.
        max: u32,
    },
    /// Something we did not ask for or do not use.
    Other(u16),
}

/// Parses an NBD_REP_INFO payload.
pub fn parse_info(b: &[u8]) -> Result<Info> {
    need(b, 2, "NBD_REP_INFO")?;
    match be16(b, 0) {
        INFO_EXPORT => {
            if b.len() != 12 {
                return Err(protocol(format!(
                    "NBD_INFO_EXPORT is {} bytes, expected 12",
                    b.len()
                )));
            }
            Ok(Info::Export {
                size: be64(b, 2),
                flags: be16(b, 10),
            })
        }
        INFO_BLOCK_SIZE => {
            if b.len() != 14 {
                return Err(protocol(format!(
                    "NBD_INFO_BLOCK_SIZE is {} bytes, expected 14",
                    b.len()
                )));
            }
            let (min, preferred, max) = (be32(b, 2), be32(b, 6), be32(b, 10));
            if min == 0 || !min.is_power_of_two() || preferred < min || max < min {
                return Err(protocol(format!(
                    "invalid block sizes min={min} preferred={preferred} max={max}"
                )));
            }
            Ok(Info::BlockSize {
                min,
                preferred,
                max,
            })
        }
        t => Ok(Info::Other(t)),
    }
}

/// Parses an NBD_REP_META_CONTEXT payload: context id and name.
pub fn parse_meta_context(b: &[u8]) -> Result<(u32, String)> {
    need(b, 4, "NBD_REP_META_CONTEXT")?;
    let name = String::from_utf8_lossy(&b[4..]).into_owned();
    Ok((be32(b, 0), name))
}

/// Parses the reply to NBD_OPT_EXPORT_NAME: size and transmission flags (the 124 zero bytes, if
/// any, are read and ignored by the caller).
pub fn parse_export_name_reply(b: &[u8; 10]) -> (u64, u16) {
    (be64(b, 0), be16(b, 8))
}

/// A transmission-phase request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub cmd: u16,
    /// Cookie that the reply echoes.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

/// Encodes a request header (28 bytes).
pub fn encode_request(r: &Request) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.cmd.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// A reply header: the first 16 bytes decide simple vs structured; structured needs 4 more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// Simple reply: error and cookie (read data follows when error is 0).
    Simple {
        /// errno-style error (0 = success).
        error: u32,
        /// Cookie of the request.
        cookie: u64,
    },
    /// Structured chunk.
    Structured {
        /// Chunk flags (DONE).
        flags: u16,
        /// Chunk type.
        kind: u16,
        /// Cookie of the request.
        cookie: u64,
        /// Payload length.
        len: u32,
    },
}

/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply header.
pub const STRUCTURED_REPLY_LEN: usize = 20;

/// Parses a reply header from `b`, which must hold at least 16 bytes (20 for structured replies;
/// returns `Ok(None)` when a structured header needs the 4 more bytes).
pub fn parse_reply_header(b: &[u8]) -> Result<Option<ReplyHeader>> {
    need(b, SIMPLE_REPLY_LEN, "reply header")?;
    match be32(b, 0) {
        SIMPLE_REPLY_MAGIC => Ok(Some(ReplyHeader::Simple {
            error: be32(b, 4),
            cookie: be64(b, 8),
        })),
        STRUCTURED_REPLY_MAGIC => {
            if b.len() < STRUCTURED_REPLY_LEN {
                return Ok(None);
            }
            Ok(Some(ReplyHeader::Structured {
                flags: be16(b, 4),
                kind: be16(b, 6),
                cookie: be64(b, 8),
                len: be32(b, 16),
            }))
        }
        m => Err(protocol(format!("bad reply magic {m:#010x}"))),
    }
}

/// An error chunk: errno, message and (for ERROR_OFFSET) the offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorChunk {
    /// NBD errno value.
    pub error: u32,
    /// Server's message (may be empty).
    pub message: String,
    /// Offset the error applies to.
    pub offset: Option<u64>,
}

/// Parses the payload of NBD_REPLY_TYPE_ERROR / ERROR_OFFSET.
pub fn parse_error_chunk(kind: u16, b: &[u8]) -> Result<ErrorChunk> {
    need(b, 6, "error chunk")?;
    let error = be32(b, 0);
    let mlen = be16(b, 4) as usize;
    need(b, 6 + mlen, "error chunk message")?;
    let message = crate::error::peer_text(&String::from_utf8_lossy(&b[6..6 + mlen]));
    let offset = if kind == CHUNK_ERROR_OFFSET {
        if b.len() != 6 + mlen + 8 {
            return Err(protocol("error-offset chunk has the wrong length"));
        }
        Some(be64(b, 6 + mlen))
    } else {
        if b.len() != 6 + mlen {
            return Err(protocol("error chunk has the wrong length"));
        }
        None
    };
    if error == 0 {
        return Err(protocol("error chunk with error 0"));
    }
    Ok(ErrorChunk {
        error,
        message,
        offset,
    })
}

/// Parses the payload of NBD_REPLY_TYPE_OFFSET_HOLE: offset and length.
pub fn parse_offset_hole(b: &[u8]) -> Result<(u64, u32)> {
    if b.len() != 12 {
        return Err(protocol(format!(
            "hole chunk is {} bytes, expected 12",
            b.len()
        )));
    }
    Ok((be64(b, 0), be32(b, 8)))
}

/// Parses the payload of NBD_REPLY_TYPE_BLOCK_STATUS: context id and (length, flags) pairs.
pub fn parse_block_status(b: &[u8]) -> Result<(u32, Vec<(u32, u32)>)> {
    if b.len() < 12 || !(b.len() - 4).is_multiple_of(8) {
        return Err(protocol(format!(
            "block status chunk has invalid length {}",
            b.len()
        )));
    }
    let id = be32(b, 0);
    let descs = b[4..]
        .chunks_exact(8)
        .map(|c| (be32(c, 0), be32(c, 4)))
        .collect();
    Ok((id, descs))
}

/// How the flags of a meta context's block status descriptors read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaContext {
    /// `base:allocation`: NBD_STATE_HOLE and NBD_STATE_ZERO.
    Allocation,
    /// `qemu:dirty-bitmap:NAME`: bit 0 set is dirty (changed), clear is clean.
    DirtyBitmap,
}

impl MetaContext {
    /// The extent kind a descriptor's `flags` mean: for `base:allocation` a hole, zeros or data;
    /// for a dirty bitmap `Data` (dirty) or `Hole` (clean), never `Zero`.
    pub fn extent_kind(self, flags: u32) -> ExtentKind {
        match self {
            MetaContext::DirtyBitmap if flags & STATE_DIRTY != 0 => ExtentKind::Data,
            MetaContext::DirtyBitmap => ExtentKind::Hole,
            MetaContext::Allocation if flags & STATE_HOLE != 0 => ExtentKind::Hole,
            MetaContext::Allocation if flags & STATE_ZERO != 0 => ExtentKind::Zero,
            MetaContext::Allocation => ExtentKind::Data,
        }
    }
}

/// The extents that block status descriptors `(length, flags)` of `context` describe for a
/// request at `offset` of an export of `size` bytes: laid end to end from `offset`, the one
/// that crosses the end of the export cut there and any after it dropped. A descriptor of
/// length 0 is a protocol error (it would describe nothing and never advance).
pub fn status_extents(
    descs: &[(u32, u32)],
    context: MetaContext,
    offset: u64,
    size: u64,
) -> Result<Vec<Extent>> {
    let mut out = Vec::with_capacity(descs.len());
    let mut pos = offset;
    for &(len, flags) in descs {
        if len == 0 {
            return Err(protocol("block status descriptor of length 0"));
        }
        let end = pos.saturating_add(u64::from(len)).min(size);
        if end <= pos {
            break;
        }
        out.push(Extent::new(pos, end - pos, context.extent_kind(flags)));
        pos = end;
    }
    Ok(out)
}

/// Decodes one NBD_REPLY_TYPE_BLOCK_STATUS payload answering a request at `offset` of an
/// export of `size` bytes, for the meta context whose id is `id` and which reads as `context`.
/// A server sends one chunk per negotiated context (this protocol version cannot ask for one):
/// `Ok(None)` when the chunk is another context's; otherwise its extents ([`status_extents`]).
/// The payload must be well formed whichever context it answers.
pub fn decode_block_status(
    payload: &[u8],
    id: u32,
    context: MetaContext,
    offset: u64,
    size: u64,
) -> Result<Option<Vec<Extent>>> {
    let (got, descs) = parse_block_status(payload)?;
    if got != id {
        return Ok(None);
    }
    status_extents(&descs, context, offset, size).map(Some)
}

/// Where a chunk of `len` bytes for offset `at` lands in a read of `request_len` bytes at
/// `request_offset`: its start in the read's buffer, or a protocol error naming `what` (a
/// "data" or "hole" chunk) when it reaches outside the request (offsets near 2^64 included,
/// without wrapping).
pub fn chunk_in_request(
    what: &str,
    at: u64,
    len: u64,
    request_offset: u64,
    request_len: u64,
) -> Result<u64> {
    at.checked_sub(request_offset)
        .filter(|s| s.checked_add(len).is_some_and(|e| e <= request_len))
        .ok_or_else(|| {
            protocol(format!(
                "{what} chunk at {at}+{len} outside the request at {request_offset}"
            ))
        })
}

/// The byte ranges of a read's buffer that reply chunks filled so far: start -> end.
pub type Covered = std::collections::BTreeMap<u64, u64>;

/// Records that bytes `[start, start+len)` of the buffer of the read at `offset` are filled,
/// in `covered`: chunks must not overlap, or a server could leave stale bytes in a reused
/// buffer while the lengths still add up; and a chunk is never empty, so a read takes at most
/// one chunk per byte and each check costs a lookup, whatever the server sends.
pub fn claim(covered: &mut Covered, start: u64, len: u64, offset: u64) -> Result<()> {
    let end = start + len;
    if len == 0 {
        return Err(protocol(format!(
            "empty reply chunk for the read at offset {offset} (at byte {start})"
        )));
    }
    // The one range that starts before `end` and begins last is the only one that can reach
    // past `start` (ranges in `covered` never overlap one another).
    if let Some((s, e)) = covered.range(..end).next_back() {
        if *e > start {
            return Err(protocol(format!(
                "overlapping reply chunks for the read at offset {offset} (bytes {start}..{end} and {s}..{e})"
            )));
        }
    }
    covered.insert(start, end);
    Ok(())
}

/// The errno at the start of an error chunk of a type this client does not know (every error
/// chunk type starts with one); EIO when the payload is too short to hold it.
pub fn unknown_error_errno(b: &[u8]) -> u32 {
    if b.len() >= 4 {
        be32(b, 0)
    } else {
        5
    }
}

/// errno name for NBD error values, for messages.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM (operation not permitted)",
        5 => "EIO (input/output error)",
        12 => "ENOMEM (out of memory)",
        22 => "EINVAL (invalid argument)",
        28 => "ENOSPC (no space left)",
        75 => "EOVERFLOW (value too large)",
        95 => "ENOTSUP (not supported)",
        108 => "ESHUTDOWN (server shutting down)",
        _ => "unknown error",
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;

//! The fixed-newstyle handshake: structured replies, `base:allocation`, then NBD_OPT_GO with block
//! size info (falling back to NBD_OPT_EXPORT_NAME on servers without NBD_OPT_GO).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::*;
use crate::error::{protocol, Error, ErrorKind, Result};

/// What the handshake learned about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum, preferred and maximum block sizes (defaults 1, 4096, 32 MiB when not announced).
    pub block_min: u32,
    /// Preferred block size.
    pub block_preferred: u32,
    /// Maximum payload size.
    pub block_max: u32,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Context id of `base:allocation`, when negotiated.
    pub base_allocation: Option<u32>,
    /// Context id of the `qemu:dirty-bitmap:NAME` asked for, when negotiated.
    pub dirty_bitmap: Option<u32>,
}

impl ExportInfo {
    /// Whether the server says several connections see the same data.
    pub fn can_multi_conn(&self) -> bool {
        self.flags & TF_CAN_MULTI_CONN != 0
    }
}

/// Options for the handshake.
#[derive(Debug, Clone, Default)]
pub struct HandshakeOptions {
    /// Export name ("" is the default export).
    pub export: String,
    /// Whether to ask for structured replies and base:allocation.
    pub structured: bool,
    /// A qemu dirty bitmap to ask for too (`qemu:dirty-bitmap:NAME`); its absence is an error.
    pub dirty_bitmap: Option<String>,
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| {
        let mut err = Error::io(format!("NBD handshake: {what}"), e);
        if err.kind() == ErrorKind::Disconnected {
            err = Error::new(
                ErrorKind::Disconnected,
                format!("NBD handshake: server closed the connection while {what}"),
            );
        }
        err
    }
}

async fn send_option<S: AsyncWrite + Unpin>(s: &mut S, opt: u32, data: &[u8]) -> Result<()> {
    s.write_all(&encode_option(opt, data))
        .await
        .map_err(io_err("sending an option"))
}

async fn read_opt_reply<S: AsyncRead + Unpin>(
    s: &mut S,
    opt: u32,
) -> Result<(OptReplyHeader, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)
        .await
        .map_err(io_err("reading an option reply"))?;
    let h = parse_opt_reply_header(&h, opt)?;
    let mut payload = vec![0u8; h.len as usize];
    s.read_exact(&mut payload)
        .await
        .map_err(io_err("reading an option reply"))?;
    Ok((h, payload))
}

fn rep_error(opt: &str, export: &str, h: &OptReplyHeader, payload: &[u8]) -> Error {
    let msg = crate::error::peer_text(&String::from_utf8_lossy(payload));
    let kind = if h.reply == REP_ERR_UNKNOWN {
        ErrorKind::NotFound
    } else {
        ErrorKind::Server
    };
    let detail = if msg.is_empty() {
        String::new()
    } else {
        format!(": {msg}")
    };
    Error::new(
        kind,
        format!(
            "NBD {opt} for export '{export}': {}{detail}",
            rep_err_name(h.reply)
        ),
    )
}

/// Runs the client side of the handshake on `s`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    opts: &HandshakeOptions,
) -> Result<ExportInfo> {
    let mut g = [0u8; 18];
    s.read_exact(&mut g)
        .await
        .map_err(io_err("reading the greeting"))?;
    let server_flags = parse_greeting(&g)?;
    let fixed = server_flags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags: u32 = if fixed { FLAG_FIXED_NEWSTYLE as u32 } else { 0 }
        | if no_zeroes { FLAG_NO_ZEROES as u32 } else { 0 };
    s.write_all(&client_flags.to_be_bytes())
        .await
        .map_err(io_err("sending client flags"))?;
    let export = opts.export.as_str();
    if export.len() > 4096 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "NBD export name longer than 4096 bytes",
        ));
    }

    let mut info = ExportInfo {
        size: 0,
        flags: 0,
        block_min: 1,
        block_preferred: 4096,
        block_max: 32 << 20,
        structured: false,
        base_allocation: None,
        dirty_bitmap: None,
    };
    if !fixed {
        if opts.dirty_bitmap.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the server is not fixed-newstyle, so it has no dirty bitmaps",
            ));
        }
        return export_name(s, export, no_zeroes, info).await;
    }

    if opts.structured {
        send_option(s, OPT_STRUCTURED_REPLY, &[]).await?;
        let (h, _) = read_opt_reply(s, OPT_STRUCTURED_REPLY).await?;
        info.structured = h.reply == REP_ACK;
        if !info.structured && !is_rep_err(h.reply) {
            return Err(protocol(format!(
                "unexpected reply {} to NBD_OPT_STRUCTURED_REPLY",
                h.reply
            )));
        }
    }
    if opts.dirty_bitmap.is_some() && !info.structured {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "the server has no structured replies, so no dirty bitmap",
        ));
    }
    if info.structured {
        let bitmap = opts
            .dirty_bitmap
            .as_ref()
            .map(|b| format!("qemu:dirty-bitmap:{b}"));
        let mut queries = vec!["base:allocation"];
        queries.extend(bitmap.as_deref());
        send_option(
            s,
            OPT_SET_META_CONTEXT,
            &encode_meta_context(export, &queries),
        )
        .await?;
        loop {
            let (h, payload) = read_opt_reply(s, OPT_SET_META_CONTEXT).await?;
            match h.reply {
                REP_META_CONTEXT => {
                    let (id, name) = parse_meta_context(&payload)?;
                    if name == "base:allocation" {
                        info.base_allocation = Some(id);
                    } else if bitmap.as_deref() == Some(name.as_str()) {
                        info.dirty_bitmap = Some(id);
                    }
                }
                REP_ACK => break,
                r if is_rep_err(r) => {
                    if r == REP_ERR_UNKNOWN {
                        return Err(rep_error("SET_META_CONTEXT", export, &h, &payload));
                    }
                    break;
                }
                r => {
                    return Err(protocol(format!(
                        "unexpected reply {r} to NBD_OPT_SET_META_CONTEXT"
                    )))
                }
            }
        }
    }

    if let (Some(b), None) = (&opts.dirty_bitmap, info.dirty_bitmap) {
        // Leave politely (the server need not log a broken negotiation); its answer is moot.
        let _ = send_option(s, OPT_ABORT, &[]).await;
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("the server does not know the dirty bitmap '{b}'"),
        ));
    }
    send_option(s, OPT_GO, &encode_go(export, &[INFO_BLOCK_SIZE])).await?;
    let mut have_export = false;
    loop {
        let (h, payload) = read_opt_reply(s, OPT_GO).await?;
        match h.reply {
            REP_INFO => match parse_info(&payload)? {
                Info::Export { size, flags } => {
                    info.size = size;
                    info.flags = flags;
                    have_export = true;
                }
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                } => {
                    info.block_min = min;
                    info.block_preferred = preferred;
                    info.block_max = max;
                }
                Info::Other(_) => {}
            },
            REP_ACK => break,
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes, info).await,
            r if is_rep_err(r) => return Err(rep_error("GO", export, &h, &payload)),
            r => return Err(protocol(format!("unexpected reply {r} to NBD_OPT_GO"))),
        }
    }
    if !have_export {
        return Err(protocol(
            "server acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT",
        ));
    }
    Ok(info)
}

async fn export_name<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    no_zeroes: bool,
    mut info: ExportInfo,
) -> Result<ExportInfo> {
    send_option(s, OPT_EXPORT_NAME, export.as_bytes()).await?;
    let mut b = [0u8; 10];
    s.read_exact(&mut b).await.map_err(|e| {
        let err = Error::io(String::new(), e);
        if err.kind() == ErrorKind::Disconnected {
            Error::new(
                ErrorKind::NotFound,
                format!("NBD server closed the connection after NBD_OPT_EXPORT_NAME: export '{export}' not found?"),
            )
        } else {
            err.context_prefix("NBD handshake: reading the export")
        }
    })?;
    let (size, flags) = parse_export_name_reply(&b);
    if !no_zeroes {
        let mut z = [0u8; 124];
        s.read_exact(&mut z)
            .await
            .map_err(io_err("reading padding"))?;
    }
    info.size = size;
    info.flags = flags;
    // Without NBD_OPT_GO, structured replies and meta contexts are still in force if negotiated.
    Ok(info)
}

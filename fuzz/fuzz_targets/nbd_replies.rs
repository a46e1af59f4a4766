//! The NBD client's transmission phase fed the fuzz input as the server's replies: simple
//! replies, structured chunks (OFFSET_DATA, OFFSET_HOLE, BLOCK_STATUS, NONE, ERROR,
//! ERROR_OFFSET, unknown types), read by the real reply reader task through an in-memory duplex.
//!
//! Input: one byte of flags (bit 0: structured replies negotiated, bit 1: `base:allocation`
//! negotiated, bit 2: a dirty bitmap negotiated), one byte choosing the export size (1 MiB,
//! 1 MiB + 512, 2^63, 2^64 - 1), the context ids of `base:allocation` and of the bitmap (u32
//! each, big-endian), then the replies. The client first sends, in this order
//! (cookies 1, 2, ... for those it sends): read 4096 @ 0, read 1000 @ 8192, block status of
//! `[4096, size)`, dirty status of `[0, size)`, flush, read 512 @ size - 512. After the replies
//! the server closes the connection.
//!
//! Holds: no panic; every request ends (the end of the input ends them all, no hang); a read
//! that succeeds gives exactly the bytes asked for; block status answers keep the extents
//! contract (non-empty, contiguous from the offset asked, inside the export); a dirty bitmap
//! answers only dirty (Data) or clean (Hole).

#![no_main]

use std::sync::Arc;

use ferry_fuzz::{block_on_bounded, check_extents, debug, runtime, Input};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use transfer_core::buffer::Buffer;
use transfer_core::source::nbd::proto::{TF_HAS_FLAGS, TF_READ_ONLY};
use transfer_core::source::nbd::{Connection, ExportInfo};
use transfer_core::{ExtentKind, Result};

const SIZES: [u64; 4] = [1 << 20, (1 << 20) + 512, 1 << 63, u64::MAX];

enum Outcome {
    Read(usize, Result<Buffer>),
    Status(u64, bool, Result<Vec<transfer_core::Extent>>),
    Flush,
}

#[derive(Clone, Copy)]
enum Request {
    Read(u64, usize),
    Status(u64, bool),
    Flush,
}

impl Request {
    async fn run(self, c: Arc<Connection>, size: u64) -> Outcome {
        match self {
            Request::Read(offset, len) => {
                Outcome::Read(len, c.read(offset, Buffer::new(len)).await)
            }
            Request::Status(offset, dirty) => {
                let len = size - offset;
                let r = if dirty {
                    c.dirty_status(offset, len).await
                } else {
                    c.block_status(offset, len).await
                };
                Outcome::Status(offset, dirty, r)
            }
            Request::Flush => {
                // Whatever the answer, it must come: that is checked by the caller's time bound.
                let _ = c.flush().await;
                Outcome::Flush
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let size = SIZES[(input.u8() & 3) as usize];
    let (base, bitmap) = (input.u32(), input.u32());
    let replies = input.rest().to_vec();
    let info = ExportInfo {
        size,
        flags: TF_HAS_FLAGS | TF_READ_ONLY,
        block_min: 1,
        block_preferred: 4096,
        block_max: 32 << 20,
        structured: flags & 1 != 0,
        base_allocation: (flags & 2 != 0).then_some(base),
        dirty_bitmap: (flags & 4 != 0).then_some(bitmap),
    };
    let rt = runtime();
    let outcomes = block_on_bounded(&rt, "NBD requests", run(info, replies));
    for o in outcomes {
        debug(|| match &o {
            Outcome::Read(len, r) => format!("read {len}: {:?}", r.as_ref().map(|b| b.len())),
            Outcome::Status(offset, dirty, r) => {
                format!("status at {offset} (dirty {dirty}): {r:?}")
            }
            Outcome::Flush => "flush".into(),
        });
        match o {
            Outcome::Read(len, Ok(buf)) => assert_eq!(buf.len(), len, "short read"),
            Outcome::Status(offset, dirty, Ok(extents)) => {
                check_extents("NBD block status", &extents, offset, size);
                if dirty {
                    assert!(
                        extents.iter().all(|e| e.kind != ExtentKind::Zero),
                        "a dirty bitmap answered zero extents: {extents:?}"
                    );
                }
            }
            _ => {}
        }
    }
});

async fn run(info: ExportInfo, replies: Vec<u8>) -> Vec<Outcome> {
    let size = info.size;
    let (client, mut server) = tokio::io::duplex(replies.len() + (1 << 16));
    let (r, w) = tokio::io::split(client);
    let conn = Arc::new(Connection::start(
        info,
        "fuzz".into(),
        Box::new(r),
        Box::new(w),
        transfer_core::source::nbd::DEFAULT_IDLE_TIMEOUT,
    ));
    let requests = [
        Request::Read(0, 4096),
        Request::Read(8192, 1000),
        Request::Status(4096, false),
        Request::Status(0, true),
        Request::Flush,
        Request::Read(size - 512, 512),
    ];
    // Made one at a time, each read by the server before the next is made, so the cookies are
    // 1, 2, ... in this order.
    let mut tasks: Vec<JoinHandle<Outcome>> = Vec::new();
    for req in requests {
        let mut t = tokio::spawn(req.run(conn.clone(), size));
        tasks.push(match sent_or_done(&mut server, &mut t).await {
            Some(o) => tokio::spawn(async move { o }),
            None => t,
        });
    }
    server
        .write_all(&replies)
        .await
        .expect("the duplex is large enough");
    drop(server);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("a request task"));
    }
    drop(conn);
    out
}

/// Waits until the request of `task` reached the server (its 28-byte header), or the task
/// finished without sending one (answered locally); the outcome in that case.
async fn sent_or_done(
    server: &mut DuplexStream,
    task: &mut JoinHandle<Outcome>,
) -> Option<Outcome> {
    let mut hdr = [0u8; 28];
    tokio::select! {
        r = server.read_exact(&mut hdr) => {
            r.expect("a request header");
            None
        }
        o = task => Some(o.expect("a request task")),
    }
}

//! The copy workers, one per source handle. A positional worker takes work items in turn, asks
//! for their extents, zeroes the zero runs and reads the data runs with many requests in flight;
//! a sequential worker reads a stream front to back, one read at a time. Both hand each filled
//! buffer to a write-back task through one [`Tasks`] set that holds the task's permits (request
//! slot, memory budget) until it ends.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{zero, Shared};
use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{auto_gap, bridge, clip, coalesce, Extent, ExtentKind, Run};
use crate::io::WriteJob;
use crate::source::{extents_covering, BlockSource};

/// The tasks one worker has spawned: each holds its permits until it ends, and a task that
/// fails fails the copy. Finished tasks are reaped as new ones are spawned.
struct Tasks {
    set: JoinSet<()>,
    sh: Arc<Shared>,
}

impl Tasks {
    fn new(sh: &Arc<Shared>) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            sh: sh.clone(),
        }
    }

    /// Runs `work` in a task that keeps `permits` until it ends.
    fn spawn<P, F>(&mut self, permits: P, work: F)
    where
        P: Send + 'static,
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let sh = self.sh.clone();
        self.set.spawn(async move {
            if let Err(e) = work.await {
                sh.fail(e);
            }
            drop(permits);
        });
        while self.set.try_join_next().is_some() {}
    }

    /// Waits for every task.
    async fn drain(mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

/// A share of the copy's in-flight memory budget and, when there is one, of the budget it
/// shares with other copies (taken in that order by every copy, and held only for one buffer).
async fn memory(sh: &Shared) -> (OwnedSemaphorePermit, Option<super::budget::Share>) {
    let own = sh
        .budget
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore open");
    let shared = match &sh.shared_memory {
        Some(b) => Some(b.share(sh.request_size).await),
        None => None,
    };
    (own, shared)
}

/// Takes work items in turn until none is left (or the copy failed), with at most `requests`
/// reads of this handle in flight.
pub(super) async fn positional(
    src: Arc<dyn BlockSource>,
    sh: Arc<Shared>,
    requests: usize,
    can_extents: bool,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(requests));
    let mut tasks = Tasks::new(&sh);
    let result = async {
        loop {
            if sh.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = sh.next_range.fetch_add(1, Ordering::Relaxed) as usize;
            let Some(work) = sh.plan.get(i) else {
                return Ok(());
            };
            if !sh.skip[i] {
                item(&src, &sh, i, &work, can_extents, &slots, &mut tasks).await?;
            }
        }
    }
    .await;
    tasks.drain().await;
    result
}

/// Copies work item `i` (its ranges `work`): zero runs zeroed, data runs read in requests.
async fn item(
    src: &Arc<dyn BlockSource>,
    sh: &Arc<Shared>,
    i: usize,
    work: &[(u64, u64)],
    can_extents: bool,
    slots: &Arc<Semaphore>,
    tasks: &mut Tasks,
) -> Result<()> {
    let (first, last) = (work[0].0, work[work.len() - 1]);
    let span_len = last.0 + last.1 - first;
    let span = if can_extents {
        extents_covering(&**src, first, span_len)
            .await
            .map_err(|e| e.context_prefix("reading extents"))?
    } else {
        vec![Extent::new(first, span_len, ExtentKind::Data)]
    };
    let pieces: Vec<Vec<Run>> = work
        .iter()
        .map(|&(start, len)| coalesce(&clip(&span, start, len), start, start + len))
        .collect();
    let gap = match sh.read_gaps {
        Some(gap) => gap,
        None if sh.costly_requests => auto_gap(pieces.iter().flatten(), sh.request_size as u64),
        None => 0,
    };
    let runs: Vec<Run> = pieces
        .into_iter()
        .flat_map(|runs| bridge(runs, gap))
        .collect();
    for run in runs {
        let (offset, len) = match run {
            Run::Zero { offset, len } => {
                sh.zero(i, offset, len).await?;
                continue;
            }
            Run::Data { offset, len } => (offset, len),
        };
        let mut pos = offset;
        while pos < offset + len {
            if sh.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let n = (offset + len - pos).min(sh.request_size as u64) as usize;
            let slot = slots.clone().acquire_owned().await.expect("semaphore open");
            let mem = memory(sh).await;
            let (src, sh2) = (src.clone(), sh.clone());
            tasks.spawn((slot, mem), async move {
                let buf = src.read_at(pos, sh2.buffer(n)).await?;
                write_back(&sh2, Some(i), pos, buf).await
            });
            pos += n as u64;
        }
    }
    Ok(())
}

/// Reads a sequential source (a stream) front to back with one read at a time, while the writes
/// of earlier buffers proceed in parallel within the memory budget.
pub(super) async fn sequential(src: Arc<dyn BlockSource>, sh: Arc<Shared>) -> Result<()> {
    let mut tasks = Tasks::new(&sh);
    let mut pos = 0u64;
    // A stream of unknown size is read one byte past its limit, to tell "ends there" from
    // "goes on".
    let limit = if sh.size_known {
        sh.size
    } else {
        sh.stream_limit + 1
    };
    let result = async {
        while pos < limit && !sh.failed.load(Ordering::Relaxed) {
            let n = (limit - pos).min(sh.request_size as u64) as usize;
            let mem = memory(&sh).await;
            let buf = src.read_at(pos, sh.buffer(n)).await?;
            let got = buf.len();
            if !sh.size_known && pos + got as u64 > sh.stream_limit {
                sh.put(buf);
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "{}: the image expands past the {} bytes the target can take",
                        src.describe(),
                        sh.stream_limit
                    ),
                ));
            }
            if got < n && sh.size_known {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "{}: stream ended at {} of {} bytes",
                        src.describe(),
                        pos + got as u64,
                        sh.size
                    ),
                ));
            }
            if got > 0 {
                let (sh2, at) = (sh.clone(), pos);
                tasks.spawn(mem, async move { write_back(&sh2, None, at, buf).await });
            } else {
                sh.put(buf);
            }
            pos += got as u64;
            sh.streamed.store(pos, Ordering::Relaxed);
            if got < n {
                break;
            }
        }
        Ok(())
    }
    .await;
    tasks.drain().await;
    result
}

/// Zero-detects a filled buffer, zeroes or skips its zero blocks, writes its data blocks, and
/// returns the buffer to the pool.
async fn write_back(sh: &Shared, item: Option<usize>, offset: u64, buf: Buffer) -> Result<()> {
    let len = buf.len();
    let segs = zero::segments(&buf, zero::ZERO_BLOCK);
    let mut data = Vec::with_capacity(segs.len());
    let mut zero_bytes = 0u64;
    for &(start, n, is_zero) in &segs {
        if is_zero {
            zero_bytes += n as u64;
            if !sh.target_zero {
                sh.io.zero(offset + start as u64, n as u64).await?;
            }
        } else {
            data.push((start, n));
        }
    }
    let data_bytes = len as u64 - zero_bytes;
    let buf = if data.is_empty() {
        buf
    } else {
        sh.io
            .write(WriteJob {
                offset,
                buf,
                segments: data,
            })
            .await?
    };
    sh.put(buf);
    sh.done(item, data_bytes, zero_bytes);
    Ok(())
}

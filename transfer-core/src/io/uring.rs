//! The io_uring engine: one thread owns the ring, takes write jobs from a queue, submits one SQE
//! per data segment and completes a job when all of its segments are written (resubmitting the
//! rest of a short write). Zeroing and flushing run on the blocking pool: they are rare and go
//! through the target's fallback chain.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use io_uring::{opcode, types, IoUring};
use tokio::sync::oneshot;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{IoEngine, WriteJob};
use crate::target::BlockTarget;

struct Pending {
    job: WriteJob,
    done: Vec<usize>,
    remaining: usize,
    error: Option<Error>,
    reply: oneshot::Sender<Result<Buffer>>,
}

type Msg = (WriteJob, oneshot::Sender<Result<Buffer>>);

/// Checks that io_uring can be set up and completes a NOP (container runtimes often refuse it).
pub fn probe() -> std::io::Result<()> {
    let mut ring = IoUring::new(4)?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory, so nothing must outlive the submission.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| std::io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

/// Writes through io_uring.
pub struct UringEngine {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Option<thread::JoinHandle<()>>,
    target: Arc<dyn BlockTarget>,
}

impl UringEngine {
    /// Probes io_uring and starts the ring thread with `depth` entries.
    pub fn new(target: Arc<dyn BlockTarget>, depth: u32) -> Result<Self> {
        probe().map_err(|e| {
            Error::with_source(ErrorKind::Unsupported, "io_uring is not available", e)
        })?;
        let ring = IoUring::new(depth.clamp(8, 4096))
            .map_err(|e| Error::with_source(ErrorKind::Unsupported, "creating an io_uring", e))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let t = target.clone();
        let thread = thread::Builder::new()
            .name("ferry-uring".into())
            .spawn(move || ring_loop(ring, rx, t))
            .map_err(|e| Error::io("spawning the io_uring thread", e))?;
        Ok(UringEngine {
            tx: Mutex::new(Some(tx)),
            thread: Some(thread),
            target,
        })
    }
}

fn ring_loop(mut ring: IoUring, rx: mpsc::Receiver<Msg>, target: Arc<dyn BlockTarget>) {
    let mut slots: Vec<Option<Pending>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut backlog: VecDeque<(usize, usize)> = VecDeque::new();
    let mut inflight = 0usize;
    let accept = |msg: Msg,
                  slots: &mut Vec<Option<Pending>>,
                  backlog: &mut VecDeque<(usize, usize)>,
                  free: &mut Vec<usize>| {
        let (job, reply) = msg;
        if job.segments.is_empty() {
            drop(reply.send(Ok(job.buf)));
            return;
        }
        let n = job.segments.len();
        let p = Pending {
            done: vec![0; n],
            remaining: n,
            error: None,
            job,
            reply,
        };
        let slot = match free.pop() {
            Some(s) => {
                slots[s] = Some(p);
                s
            }
            None => {
                slots.push(Some(p));
                slots.len() - 1
            }
        };
        backlog.extend((0..n).map(|i| (slot, i)));
    };
    let mut freed: Vec<usize> = Vec::new();
    loop {
        if inflight == 0 && backlog.is_empty() {
            match rx.recv() {
                Ok(m) => accept(m, &mut slots, &mut backlog, &mut free),
                Err(_) => return,
            }
        }
        while let Ok(m) = rx.try_recv() {
            accept(m, &mut slots, &mut backlog, &mut free);
        }
        free.append(&mut freed);
        while let Some(&(slot, seg)) = backlog.front() {
            let p = slots[slot].as_mut().expect("live slot");
            let (start, len) = p.job.segments[seg];
            let done = p.done[seg];
            let ptr = p.job.buf[start + done..].as_ptr();
            let off = p.job.offset + (start + done) as u64;
            let n = len - done;
            let Some(fd) = target.raw_fd_for(off, n, ptr as usize) else {
                p.error.get_or_insert_with(|| {
                    Error::new(
                        ErrorKind::Unsupported,
                        "target has no descriptor for io_uring",
                    )
                });
                backlog.pop_front();
                complete_segment(&mut slots, slot, &mut freed);
                continue;
            };
            let user = ((slot as u64) << 32) | seg as u64;
            let sqe = opcode::Write::new(types::Fd(fd), ptr, n as u32)
                .offset(off)
                .build()
                .user_data(user);
            // SAFETY: the SQE points into `p.job.buf`, whose heap storage is owned by the slot
            // entry; the entry is neither dropped nor replaced until every SQE of the job has
            // completed (`complete_segment` frees it only when `remaining` reaches 0), and moving
            // the `Pending` inside `slots` does not move the heap bytes. `fd` belongs to the
            // target, which this thread keeps alive through its `Arc` until the loop exits.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                break;
            }
            backlog.pop_front();
            inflight += 1;
        }
        if inflight == 0 {
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The ring itself failed: fail everything queued and stop taking work.
            for p in slots.drain(..).flatten() {
                drop(p.reply.send(Err(Error::io(
                    "io_uring submit",
                    std::io::Error::from(e.kind()),
                ))));
            }
            return;
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user, res) in cqes {
            inflight -= 1;
            let slot = (user >> 32) as usize;
            let seg = (user & 0xffff_ffff) as usize;
            let p = slots[slot].as_mut().expect("completion for a live slot");
            let (start, len) = p.job.segments[seg];
            if res < 0 {
                let err = std::io::Error::from_raw_os_error(-res);
                if matches!(-res, libc::EINTR | libc::EAGAIN) {
                    backlog.push_back((slot, seg));
                    continue;
                }
                let off = p.job.offset + (start + p.done[seg]) as u64;
                p.error.get_or_insert_with(|| {
                    let full = if -res == libc::ENOSPC || -res == libc::EDQUOT {
                        ": the target is out of space"
                    } else {
                        ""
                    };
                    Error::io(
                        format!("writing {} at offset {off}{full}", target.describe()),
                        err,
                    )
                });
            } else if res == 0 {
                let off = p.job.offset + (start + p.done[seg]) as u64;
                p.error.get_or_insert_with(|| {
                    Error::new(
                        ErrorKind::Io,
                        format!(
                            "writing {} at offset {off}: wrote 0 bytes",
                            target.describe()
                        ),
                    )
                });
            } else {
                p.done[seg] += res as usize;
                if p.done[seg] < len {
                    backlog.push_back((slot, seg));
                    continue;
                }
                target.written(p.job.offset + start as u64, len as u64);
            }
            complete_segment(&mut slots, slot, &mut freed);
        }
    }
}

fn complete_segment(slots: &mut [Option<Pending>], slot: usize, freed: &mut Vec<usize>) {
    let p = slots[slot].as_mut().expect("live slot");
    p.remaining -= 1;
    if p.remaining == 0 {
        let p = slots[slot].take().expect("live slot");
        freed.push(slot);
        let r = match p.error {
            Some(e) => Err(e),
            None => Ok(p.job.buf),
        };
        drop(p.reply.send(r));
    }
}

#[async_trait]
impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "uring"
    }

    async fn write(&self, job: WriteJob) -> Result<Buffer> {
        let (tx, rx) = oneshot::channel();
        {
            let g = self.tx.lock().unwrap();
            g.as_ref()
                .and_then(|t| t.send((job, tx)).ok())
                .ok_or_else(|| Error::new(ErrorKind::Io, "io_uring engine stopped"))?;
        }
        rx.await
            .map_err(|_| Error::new(ErrorKind::Io, "io_uring engine thread died"))?
    }

    async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let t = self.target.clone();
        tokio::task::spawn_blocking(move || t.write_zeroes(offset, len))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("zeroing task failed: {e}")))?
    }

    async fn flush(&self) -> Result<()> {
        let t = self.target.clone();
        tokio::task::spawn_blocking(move || t.flush())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("flush task failed: {e}")))?
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.tx.lock().unwrap().take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

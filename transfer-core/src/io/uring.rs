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
            .spawn(move || Ring::run(ring, rx, t))
            .map_err(|e| Error::io("spawning the io_uring thread", e))?;
        Ok(UringEngine {
            tx: Mutex::new(Some(tx)),
            thread: Some(thread),
            target,
        })
    }
}

/// The ring thread's state: the ring, the jobs in flight (one slot each, reused), the segments
/// waiting for a submission entry, and the target written to.
struct Ring {
    ring: IoUring,
    target: Arc<dyn BlockTarget>,
    slots: Vec<Option<Pending>>,
    /// Slots free for the next job.
    free: Vec<usize>,
    /// Slots freed by completions since the last batch of jobs was taken (reused after it).
    freed: Vec<usize>,
    /// `(slot, segment)` pairs still to submit, or to submit again after a short write.
    backlog: VecDeque<(usize, usize)>,
    inflight: usize,
}

impl Ring {
    /// Serves write jobs from `rx` until its sender is gone and nothing is in flight, or the ring
    /// fails.
    fn run(ring: IoUring, rx: mpsc::Receiver<Msg>, target: Arc<dyn BlockTarget>) {
        let mut r = Ring {
            ring,
            target,
            slots: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            backlog: VecDeque::new(),
            inflight: 0,
        };
        loop {
            if r.inflight == 0 && r.backlog.is_empty() {
                match rx.recv() {
                    Ok(m) => r.accept(m),
                    Err(_) => return,
                }
            }
            while let Ok(m) = rx.try_recv() {
                r.accept(m);
            }
            r.free.append(&mut r.freed);
            r.submit_backlog();
            if r.inflight == 0 {
                continue;
            }
            if let Err(e) = r.ring.submit_and_wait(1) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                r.fail_all(&e);
                return;
            }
            r.reap();
        }
    }

    /// Takes a job into a slot and queues its segments (a job without data is done at once).
    fn accept(&mut self, (job, reply): Msg) {
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
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(p);
                s
            }
            None => {
                self.slots.push(Some(p));
                self.slots.len() - 1
            }
        };
        self.backlog.extend((0..n).map(|i| (slot, i)));
    }

    /// Pushes queued segments into the submission queue until it is full.
    fn submit_backlog(&mut self) {
        while let Some(&(slot, seg)) = self.backlog.front() {
            let p = self.slots[slot].as_mut().expect("live slot");
            let (start, len) = p.job.segments[seg];
            let done = p.done[seg];
            let ptr = p.job.buf[start + done..].as_ptr();
            let off = p.job.offset + (start + done) as u64;
            let n = len - done;
            let Some(fd) = self.target.raw_fd_for(off, n, ptr as usize) else {
                p.error.get_or_insert_with(|| {
                    Error::new(
                        ErrorKind::Unsupported,
                        "target has no descriptor for io_uring",
                    )
                });
                self.backlog.pop_front();
                self.complete_segment(slot);
                continue;
            };
            let user = ((slot as u64) << 32) | seg as u64;
            let sqe = opcode::Write::new(types::Fd(fd), ptr, n as u32)
                .offset(off)
                .build()
                .user_data(user);
            // SAFETY: the SQE points into `p.job.buf`, whose heap storage is owned by the slot
            // entry until the completion arrives: the entry is neither dropped nor replaced until
            // every SQE of the job has completed (`complete_segment` frees it only when
            // `remaining` reaches 0; `fail_all`, after the ring itself failed, leaks the buffer
            // instead of freeing it), and moving the `Pending` inside `slots` does not move the
            // heap bytes. `fd` belongs to the target, which this ring keeps alive through its
            // `Arc` until the thread exits.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                break;
            }
            self.backlog.pop_front();
            self.inflight += 1;
        }
    }

    /// The ring itself failed: fails every job in a slot. Writes of those jobs may still be in
    /// the kernel and read their buffers, so the buffers are leaked, never freed: the copy has
    /// failed, and a few leaked buffers are better than a write of freed memory.
    fn fail_all(&mut self, e: &std::io::Error) {
        for p in self.slots.drain(..).flatten() {
            let Pending { job, reply, .. } = p;
            std::mem::forget(job);
            drop(reply.send(Err(Error::io(
                "io_uring submit",
                std::io::Error::from(e.kind()),
            ))));
        }
    }

    /// Handles every completion there is.
    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user, res) in cqes {
            self.inflight -= 1;
            self.completed((user >> 32) as usize, (user & 0xffff_ffff) as usize, res);
        }
    }

    /// One completion of segment `seg` of the job in `slot`: `res` bytes written, or `-errno`.
    /// A short write or EINTR/EAGAIN goes back to the backlog; an error is kept for the job.
    fn completed(&mut self, slot: usize, seg: usize, res: i32) {
        let target = &self.target;
        let p = self.slots[slot]
            .as_mut()
            .expect("completion for a live slot");
        let (start, len) = p.job.segments[seg];
        let off = p.job.offset + (start + p.done[seg]) as u64;
        if res < 0 {
            if matches!(-res, libc::EINTR | libc::EAGAIN) {
                self.backlog.push_back((slot, seg));
                return;
            }
            p.error.get_or_insert_with(|| {
                let full = if -res == libc::ENOSPC || -res == libc::EDQUOT {
                    ": the target is out of space"
                } else {
                    ""
                };
                Error::io(
                    format!("writing {} at offset {off}{full}", target.describe()),
                    std::io::Error::from_raw_os_error(-res),
                )
            });
        } else if res == 0 {
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
                self.backlog.push_back((slot, seg));
                return;
            }
            target.written(p.job.offset + start as u64, len as u64);
        }
        self.complete_segment(slot);
    }

    /// Counts one segment of the job in `slot` as finished; the last one answers the job and
    /// frees the slot.
    fn complete_segment(&mut self, slot: usize) {
        let p = self.slots[slot].as_mut().expect("live slot");
        p.remaining -= 1;
        if p.remaining == 0 {
            let p = self.slots[slot].take().expect("live slot");
            self.freed.push(slot);
            let r = match p.error {
                Some(e) => Err(e),
                None => Ok(p.job.buf),
            };
            drop(p.reply.send(r));
        }
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

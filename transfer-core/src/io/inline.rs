//! The inline engine: the copying task writes its buffer itself. For a target whose writes are
//! copies into memory that never wait for a disk (a file on tmpfs), handing every buffer to a
//! writer thread and waking the task when it comes back costs more than the write; measured in
//! `docs/benchmarks.md` ("What bounds transfer-bench").
//!
//! One write at a time: writes to one file take its inode lock in the kernel, where a second
//! writer spins on its CPU for as long as the first one copies (a profile showed 11-16% of the
//! importer's CPU in `rwsem_spin_on_owner`). A task that finds a write in progress hands its own
//! to a helper thread that waits for its turn asleep, and goes back to reading the source.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{IoEngine, WriteJob};
use crate::target::BlockTarget;

type Work = Box<dyn FnOnce() + Send>;

/// Writes in the calling task, or on its helper thread when another write is in progress.
pub struct InlineEngine {
    target: Arc<dyn BlockTarget>,
    /// Held for the length of each write.
    turn: Arc<Mutex<()>>,
    helper: Mutex<Option<mpsc::Sender<Work>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InlineEngine {
    /// An engine writing to `target` from the caller's task.
    pub fn new(target: Arc<dyn BlockTarget>) -> Self {
        let (tx, rx) = mpsc::channel::<Work>();
        let thread = thread::Builder::new()
            .name("ferry-write-turn".into())
            .spawn(move || {
                while let Ok(work) = rx.recv() {
                    work();
                }
            })
            .expect("spawning the writer helper thread");
        InlineEngine {
            target,
            turn: Arc::new(Mutex::new(())),
            helper: Mutex::new(Some(tx)),
            thread: Some(thread),
        }
    }

    /// Runs `op` on the target now if no other write is in progress, else on the helper
    /// thread once it is this one's turn.
    async fn run<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn BlockTarget) -> Result<T> + Send + 'static,
    {
        if let Ok(_turn) = self.turn.try_lock() {
            return op(&*self.target);
        }
        let (tx, rx) = oneshot::channel();
        let (target, turn) = (self.target.clone(), self.turn.clone());
        let work: Work = Box::new(move || {
            let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
            drop(tx.send(op(&*target)));
        });
        let sent = self
            .helper
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|h| h.send(work).is_ok());
        if !sent {
            return Err(Error::new(ErrorKind::Io, "inline write engine stopped"));
        }
        rx.await
            .map_err(|_| Error::new(ErrorKind::Io, "inline write engine thread died"))?
    }
}

#[async_trait]
impl IoEngine for InlineEngine {
    fn name(&self) -> &'static str {
        "inline"
    }

    async fn write(&self, job: WriteJob) -> Result<Buffer> {
        self.run(move |t| {
            for &(start, len) in &job.segments {
                t.write_at(job.offset + start as u64, &job.buf[start..start + len])?;
            }
            Ok(job.buf)
        })
        .await
    }

    async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.run(move |t| t.write_zeroes(offset, len)).await
    }

    async fn flush(&self) -> Result<()> {
        self.run(|t| t.flush()).await
    }
}

impl Drop for InlineEngine {
    fn drop(&mut self) {
        self.helper.lock().unwrap().take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::record::RecordingTarget;

    fn job(offset: u64, byte: u8) -> WriteJob {
        let mut buf = Buffer::new(4096);
        buf.fill(byte);
        WriteJob {
            offset,
            buf,
            segments: vec![(0, 4096)],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land_whether_written_now_or_on_the_helper() {
        let t = Arc::new(RecordingTarget::new(64 * 4096, true));
        let e = Arc::new(InlineEngine::new(t.clone()));
        let writes: Vec<_> = (0..64u64)
            .map(|i| {
                let e = e.clone();
                tokio::spawn(async move { e.write(job(i * 4096, i as u8 + 1)).await })
            })
            .collect();
        for w in writes {
            assert_eq!(w.await.unwrap().unwrap().len(), 4096);
        }
        e.flush().await.unwrap();
        let data = t.contents();
        for i in 0..64usize {
            assert!(data[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
    }

    #[tokio::test]
    async fn a_write_waiting_for_its_turn_goes_through_the_helper() {
        let t = Arc::new(RecordingTarget::new(4096, true));
        let e = InlineEngine::new(t.clone());
        // Another writer holds the turn (a thread here) until told to let go.
        let held = e.turn.clone();
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            let _turn = held.lock().unwrap();
            taken_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        taken_rx.recv().unwrap();
        let write = e.write(job(0, 9));
        tokio::pin!(write);
        // The write cannot complete while the turn is held elsewhere.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut write)
                .await
                .is_err()
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        write.await.unwrap();
        assert!(t.contents().iter().all(|&b| b == 9));
    }
}

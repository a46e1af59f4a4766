//! The pwrite engine: a fixed pool of threads taking jobs from one queue. The pool is bounded;
//! the number of queued jobs is bounded by the copy engine's in-flight budget.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{IoEngine, WriteJob};
use crate::target::BlockTarget;

enum Job {
    Write(WriteJob, oneshot::Sender<Result<Buffer>>),
    Zero(u64, u64, oneshot::Sender<Result<()>>),
    Flush(oneshot::Sender<Result<()>>),
}

/// A pool of threads issuing positional writes.
pub struct PwriteEngine {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

fn run(target: &dyn BlockTarget, job: Job) {
    match job {
        Job::Write(w, reply) => {
            let mut r = Ok(());
            for &(start, len) in &w.segments {
                r = target.write_at(w.offset + start as u64, &w.buf[start..start + len]);
                if r.is_err() {
                    break;
                }
            }
            drop(reply.send(r.map(|()| w.buf)));
        }
        Job::Zero(offset, len, reply) => drop(reply.send(target.write_zeroes(offset, len))),
        Job::Flush(reply) => drop(reply.send(target.flush())),
    }
}

impl PwriteEngine {
    /// Starts `threads` writer threads for `target`.
    pub fn new(target: Arc<dyn BlockTarget>, threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                let target = target.clone();
                thread::Builder::new()
                    .name(format!("ferry-pwrite-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap().recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        run(&*target, job);
                    })
                    .expect("spawning a writer thread")
            })
            .collect();
        PwriteEngine {
            tx: Mutex::new(Some(tx)),
            threads,
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        let tx = self.tx.lock().unwrap();
        tx.as_ref()
            .and_then(|t| t.send(job).ok())
            .ok_or_else(|| Error::new(ErrorKind::Io, "pwrite engine stopped"))
    }
}

async fn recv<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .map_err(|_| Error::new(ErrorKind::Io, "pwrite engine thread died"))?
}

#[async_trait]
impl IoEngine for PwriteEngine {
    fn name(&self) -> &'static str {
        "pwrite"
    }

    async fn write(&self, job: WriteJob) -> Result<Buffer> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Write(job, tx))?;
        recv(rx).await
    }

    async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Zero(offset, len, tx))?;
        recv(rx).await
    }

    async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Flush(tx))?;
        recv(rx).await
    }
}

impl Drop for PwriteEngine {
    fn drop(&mut self) {
        self.tx.lock().unwrap().take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

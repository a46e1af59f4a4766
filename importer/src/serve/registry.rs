//! The transfers a daemon knows: their states and counters, the queue (at most
//! `max_transfers` run at once, first come first served), and which targets are being written.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use transfer_core::engine::{MemoryBudget, ProgressObserver};
use transfer_core::job::{CancelToken, Resume, ServerSlots, SourceSpec, Summary, Transfer};
use transfer_core::source::vddk::Sessions;
use transfer_core::ErrorKind;

use super::request::{self, Refusal, Request};
use super::state::StateDir;

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a slot.
    Queued,
    /// Copying.
    Running,
    /// Every byte on the target and flushed.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped by `DELETE`.
    Cancelled,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn finished(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// One transfer's progress counters, fed by the engine.
#[derive(Debug, Default)]
struct Counters {
    total: AtomicU64,
    done: AtomicU64,
    /// The daemon's count of every transfer's bytes.
    all: Arc<AtomicU64>,
}

impl ProgressObserver for Counters {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.all.fetch_add(n, Ordering::Relaxed);
    }
}

struct Outcome {
    state: State,
    started: Option<Instant>,
    ended: Option<Instant>,
    error: Option<String>,
    summary: Option<Summary>,
}

/// One transfer.
pub struct Entry {
    id: String,
    target: PathBuf,
    /// The request as it came (recorded in the state directory).
    request: Value,
    /// How a transfer that had finished before a restart was last shown.
    restored: Option<Value>,
    counters: Arc<Counters>,
    cancel: CancelToken,
    outcome: Mutex<Outcome>,
}

impl Entry {
    fn new(
        id: String,
        target: PathBuf,
        request: Value,
        restored: Option<Value>,
        all: &Arc<AtomicU64>,
    ) -> Entry {
        Entry {
            id,
            target,
            request,
            restored,
            counters: Arc::new(Counters {
                all: all.clone(),
                ..Counters::default()
            }),
            cancel: CancelToken::new(),
            outcome: Mutex::new(Outcome {
                state: State::Queued,
                started: None,
                ended: None,
                error: None,
                summary: None,
            }),
        }
    }

    /// The transfer's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The transfer as `GET` shows it. Never the source (its URI may carry credentials).
    pub fn to_json(&self) -> Value {
        if let Some(v) = &self.restored {
            return v.clone();
        }
        let o = self.outcome.lock().unwrap();
        let done = self.counters.done.load(Ordering::Relaxed);
        let elapsed = o
            .started
            .map(|s| o.ended.unwrap_or_else(Instant::now) - s)
            .unwrap_or_default();
        let rate = if elapsed > Duration::ZERO {
            done as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        let mut v = json!({
            "id": self.id,
            "state": o.state.name(),
            "target": self.target.display().to_string(),
            "bytes_total": self.counters.total.load(Ordering::Relaxed),
            "bytes_done": done,
            "bytes_per_second": rate.round(),
            "error": o.error,
        });
        if let Some(s) = &o.summary {
            v["retries"] = json!(s.retries);
            v["bytes_reread"] = json!(s.bytes_reread);
            v["checkpoint"] = json!(s.checkpoint);
            v["summary"] = json!({
                "bytes_total": s.stats.bytes_total,
                "bytes_data": s.stats.bytes_data,
                "bytes_zero": s.stats.bytes_zero,
                "bytes_resumed": s.stats.bytes_resumed,
                "delta_bytes": s.delta_bytes,
                "connections": s.stats.connections,
                "io_engine": s.stats.io_engine,
                "seconds": s.stats.seconds,
                "verified": s.verified,
            });
        }
        v
    }

    fn state(&self) -> State {
        match &self.restored {
            Some(v) => match v["state"].as_str() {
                Some("succeeded") => State::Succeeded,
                Some("cancelled") => State::Cancelled,
                _ => State::Failed,
            },
            None => self.outcome.lock().unwrap().state,
        }
    }
}

/// What the daemon's transfers share.
pub struct Shared {
    /// Copy buffers, all transfers together.
    pub memory: MemoryBudget,
    /// Connections per source server.
    pub servers: ServerSlots,
    /// vSphere logins and VDDK connections kept for the next checkpoint of a disk.
    pub sessions: Sessions,
}

/// Every transfer of the daemon.
pub struct Registry {
    shared: Shared,
    copied: Arc<AtomicU64>,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    busy: Mutex<HashSet<PathBuf>>,
    slots: Arc<Semaphore>,
    next: AtomicU64,
    retention: Duration,
    state: Option<StateDir>,
}

impl Registry {
    /// A registry running at most `max_transfers` at once and keeping finished ones for
    /// `retention`.
    /// `state`, when given, records every transfer so that a restarted daemon finds them.
    pub fn new(
        max_transfers: usize,
        retention: Duration,
        state: Option<StateDir>,
        shared: Shared,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            shared,
            copied: Arc::default(),
            entries: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(max_transfers.max(1))),
            next: AtomicU64::new(1),
            retention,
            state,
        })
    }

    /// Takes up the transfers of the state directory: finished ones are listed as they were;
    /// unfinished ones (the daemon was killed or stopped) run again under their ids, resuming
    /// from their journals where the target keeps one. Returns how many were queued again.
    pub fn restore(self: &Arc<Self>, roots: &[PathBuf]) -> usize {
        let Some(state) = &self.state else {
            return 0;
        };
        let mut queued = 0;
        for (n, record) in state.load() {
            self.next.fetch_max(n + 1, Ordering::Relaxed);
            let id = format!("t{n}");
            let mut view = record["view"].clone();
            let finished = ["succeeded", "failed", "cancelled"]
                .contains(&view["state"].as_str().unwrap_or(""));
            let body = record["request"].to_string();
            let withheld = !finished && request::had_withheld_secret(&record["request"]);
            if withheld {
                // Its secret came in the request and was not kept: it cannot run again.
                view["state"] = "failed".into();
                view["error"] = "the daemon restarted and the transfer's secret, given in the request, is not kept: submit it again (or name a file for it)".into();
                tracing::warn!(transfer = %id, "transfer not taken up again: its secret was not kept");
            }
            if finished || withheld {
                let target = PathBuf::from(view["target"].as_str().unwrap_or(""));
                let e = Entry::new(
                    id.clone(),
                    target,
                    record["request"].clone(),
                    Some(view),
                    &self.copied,
                );
                *e.outcome.lock().unwrap() = Outcome {
                    state: e.state(),
                    started: None,
                    ended: Some(Instant::now()),
                    error: None,
                    summary: None,
                };
                let e = Arc::new(e);
                if withheld {
                    self.persist(&e);
                }
                self.entries.lock().unwrap().insert(id, e);
                continue;
            }
            match request::parse(body.as_bytes(), roots) {
                Ok(req) => match self.insert(id.clone(), req, record["request"].clone()) {
                    Ok(_) => {
                        tracing::info!(transfer = %id, "transfer taken up again after a restart");
                        queued += 1;
                    }
                    Err(r) => {
                        tracing::warn!(transfer = %id, error = %r.message, "transfer not taken up again")
                    }
                },
                Err(r) => {
                    tracing::warn!(transfer = %id, error = %r.message, "transfer not taken up again");
                    state.remove(&id);
                }
            }
        }
        queued
    }

    /// Queues `req` (its JSON `body` is what the state directory records); 409 when a
    /// transfer not yet finished writes the same target.
    pub fn add(self: &Arc<Self>, req: Request, body: Value) -> Result<Arc<Entry>, Refusal> {
        let id = format!("t{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.insert(id, req, body)
    }

    fn insert(
        self: &Arc<Self>,
        id: String,
        mut req: Request,
        body: Value,
    ) -> Result<Arc<Entry>, Refusal> {
        self.expire();
        // With a state directory a transfer keeps a resume journal where it can, so that it
        // resumes after a restart instead of starting over.
        if self.state.is_some() && req.spec.resume == Resume::Off {
            req.spec.resume = Resume::IfPossible;
        }
        req.spec.engine.shared_memory = Some(self.shared.memory.clone());
        req.spec.server_slots = Some(self.shared.servers.clone());
        if let Some(SourceSpec::Uri { options, .. }) = &mut req.spec.source {
            options.vddk.sessions = Some(self.shared.sessions.clone());
        }
        if !self.busy.lock().unwrap().insert(req.target.clone()) {
            return Err(Refusal {
                status: 409,
                message: format!(
                    "target: {} is being written by another transfer",
                    req.target.display()
                ),
            });
        }
        let entry = Arc::new(Entry::new(
            id.clone(),
            req.target.clone(),
            request::without_secrets(&body),
            None,
            &self.copied,
        ));
        self.entries.lock().unwrap().insert(id, entry.clone());
        self.persist(&entry);
        let (me, e) = (self.clone(), entry.clone());
        tokio::spawn(async move { me.run(e, Transfer::new(req.spec)).await });
        Ok(entry)
    }

    async fn run(self: Arc<Self>, e: Arc<Entry>, transfer: Transfer) {
        let slot = tokio::select! {
            s = self.slots.clone().acquire_owned() => s.ok(),
            () = e.cancel.cancelled() => None,
        };
        let result = match slot {
            None => Err(None),
            Some(_slot) => {
                {
                    let mut o = e.outcome.lock().unwrap();
                    o.state = State::Running;
                    o.started = Some(Instant::now());
                }
                self.persist(&e);
                let progress: Arc<dyn ProgressObserver> = e.counters.clone();
                transfer.run(&e.cancel, Some(progress)).await.map_err(Some)
            }
        };
        {
            let mut o = e.outcome.lock().unwrap();
            o.ended = Some(Instant::now());
            match result {
                Ok(s) => {
                    o.state = State::Succeeded;
                    o.summary = Some(s);
                }
                Err(None) => o.state = State::Cancelled,
                Err(Some(err)) if err.kind() == ErrorKind::Cancelled => {
                    o.state = State::Cancelled;
                }
                Err(Some(err)) => {
                    tracing::warn!(transfer = %e.id, error = %err, "transfer failed");
                    o.state = State::Failed;
                    o.error = Some(err.to_string());
                }
            }
        }
        self.persist(&e);
        self.busy.lock().unwrap().remove(&e.target);
    }

    /// Records `e` in the state directory, if there is one.
    fn persist(&self, e: &Entry) {
        if let Some(state) = &self.state {
            state.save(&e.id, &e.request, &e.to_json());
        }
    }

    /// Whether a stop of the daemon leaves `e` to be taken up again at the next start.
    pub fn keeps_state(&self) -> bool {
        self.state.is_some()
    }

    /// The transfer `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.expire();
        self.entries.lock().unwrap().get(id).cloned()
    }

    /// Every transfer, oldest first.
    pub fn list(&self) -> Vec<Arc<Entry>> {
        self.expire();
        let mut v: Vec<_> = self.entries.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|e| e.id[1..].parse::<u64>().unwrap_or(0));
        v
    }

    /// Cancels `id` (nothing to do when it has finished); `None` when unknown.
    pub fn cancel(&self, id: &str) -> Option<Arc<Entry>> {
        let e = self.get(id)?;
        if !e.state().finished() {
            e.cancel.cancel();
        }
        Some(e)
    }

    /// Counts by state, for `/metrics`.
    pub fn counts(&self) -> Vec<(&'static str, usize, u64)> {
        let all = self.list();
        [
            State::Queued,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
        ]
        .iter()
        .map(|s| {
            let of: Vec<_> = all.iter().filter(|e| e.state() == *s).collect();
            let bytes = of
                .iter()
                .map(|e| e.counters.done.load(Ordering::Relaxed))
                .sum();
            (s.name(), of.len(), bytes)
        })
        .collect()
    }

    /// Bytes every transfer has put on its target since the daemon started.
    pub fn bytes_copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// What the transfers share, for `/metrics`.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Forgets finished transfers older than the retention time (and their records).
    fn expire(&self) {
        let now = Instant::now();
        self.entries.lock().unwrap().retain(|id, e| {
            let o = e.outcome.lock().unwrap();
            let old = o.state.finished() && o.ended.is_some_and(|t| now - t > self.retention);
            if old {
                if let Some(state) = &self.state {
                    state.remove(id);
                }
            }
            !old
        });
    }
}

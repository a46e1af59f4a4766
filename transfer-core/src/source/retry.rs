//! A retrying source: wraps any [`BlockSource`] the way nbdkit's retry filter wraps a plugin.
//! A read or an extents query that fails with a transient error (see
//! [`ErrorKind::is_transient`]) is tried again on a fresh handle (`open_another`: a new NBD
//! connection, a reopened VDDK handle, new HTTP requests), after a backoff that doubles from
//! `delay` up to [`MAX_DELAY`]; at most `retries` times in a row. Refusals, missing objects, bad
//! input and wrong data fail at once. Each retry is logged with its cause.
//!
//! The first open is not retried (a wrong URL or password should fail at once), and neither
//! are sequential sources: a stream cannot be rewound to the missing byte.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{BlockSource, SourceCaps};
use crate::buffer::Buffer;
use crate::error::{ErrorKind, Result};
use crate::extent::Extent;

/// The longest wait between two tries.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first, per failing request (0: no retries).
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, up to [`MAX_DELAY`].
    pub delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `n` (from 1).
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32 << (n.saturating_sub(1)).min(16);
        self.delay.saturating_mul(factor).min(MAX_DELAY)
    }
}

/// What the retries of one copy did (shared by all its handles).
#[derive(Debug, Default)]
pub struct RetryStats {
    /// Requests tried again.
    pub retries: AtomicU64,
    /// Bytes read again because a request failed.
    pub bytes_reread: AtomicU64,
    /// Fresh handles opened to replace failed ones.
    pub reconnects: AtomicU64,
}

/// A source whose transient failures are retried on fresh handles.
pub struct RetrySource {
    /// The handle in use; replaced after a failure (generation counted, so that requests that
    /// failed together reconnect once).
    current: Mutex<(u64, Arc<dyn BlockSource>)>,
    /// Serialises reconnects of this handle.
    reconnecting: tokio::sync::Mutex<()>,
    policy: RetryPolicy,
    stats: Arc<RetryStats>,
}

impl RetrySource {
    /// Wraps `inner`; a sequential source, or a policy of no retries, is returned as it is.
    pub fn wrap(
        inner: Arc<dyn BlockSource>,
        policy: RetryPolicy,
        stats: Arc<RetryStats>,
    ) -> Arc<dyn BlockSource> {
        if policy.retries == 0 || inner.caps().sequential {
            return inner;
        }
        Arc::new(RetrySource {
            current: Mutex::new((0, inner)),
            reconnecting: tokio::sync::Mutex::new(()),
            policy,
            stats,
        })
    }

    fn handle(&self) -> (u64, Arc<dyn BlockSource>) {
        let g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (g.0, g.1.clone())
    }

    /// Replaces the handle of generation `failed` with a fresh one (unless another request has
    /// done so already). A failure to reconnect is itself retried by the caller's loop.
    async fn reconnect(&self, failed: u64) -> Result<()> {
        let _one = self.reconnecting.lock().await;
        let (generation, old) = self.handle();
        if generation != failed {
            return Ok(());
        }
        let fresh = old.open_another().await?;
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        // The old handle is not closed: requests still in flight on it finish or fail on
        // their own, and it goes when the last of them drops it.
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = (generation + 1, fresh);
        drop(old);
        Ok(())
    }

    /// Runs `op` on the current handle until it succeeds, fails for good, or the retries are
    /// spent; `what` names the request in messages (made only on a failure: reads are hot),
    /// `bytes` is what a retry reads again.
    async fn retrying<T, F, Fut>(
        &self,
        what: impl Fn() -> String,
        bytes: u64,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(Arc<dyn BlockSource>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0u32;
        loop {
            let (generation, h) = self.handle();
            let e = match op(h).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            attempt += 1;
            let what = what();
            if !e.kind().is_transient() || attempt > self.policy.retries {
                if attempt > 1 {
                    return Err(e.context_prefix(format!("{what} failed after {} tries", attempt)));
                }
                return Err(e);
            }
            let wait = self.policy.backoff(attempt);
            tracing::warn!(
                "{what}: retry {attempt} of {} in {:.1} s after: {e}",
                self.policy.retries,
                wait.as_secs_f64()
            );
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_reread.fetch_add(bytes, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            // A server that answered with an error still has a working connection (an NBD
            // error reply, an HTTP 5xx): only a broken one is replaced.
            if matches!(e.kind(), ErrorKind::Server | ErrorKind::Busy) {
                continue;
            }
            if let Err(re) = self.reconnect(generation).await {
                tracing::warn!("{what}: reconnecting failed: {re}");
                if !re.kind().is_transient() {
                    return Err(re.context_prefix(format!("{what}: reconnecting after: {e}")));
                }
            }
        }
    }
}

#[async_trait]
impl BlockSource for RetrySource {
    fn describe(&self) -> String {
        self.handle().1.describe()
    }

    fn size(&self) -> u64 {
        self.handle().1.size()
    }

    fn caps(&self) -> SourceCaps {
        self.handle().1.caps()
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        let len = buf.len();
        let mut spare = Some(buf);
        self.retrying(
            || format!("read of {len} bytes at {offset}"),
            len as u64,
            |h| {
                // A failed read consumed its buffer; a retry reads into a new one.
                let b = spare.take().unwrap_or_else(|| Buffer::new(len));
                async move { h.read_at(offset, b).await }
            },
        )
        .await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.retrying(
            || format!("extents at {offset}"),
            0,
            |h| async move { h.extents(offset, len).await },
        )
        .await
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        let (_, h) = self.handle();
        let another = h.open_another().await?;
        Ok(Arc::new(RetrySource {
            current: Mutex::new((0, another)),
            reconnecting: tokio::sync::Mutex::new(()),
            policy: self.policy,
            stats: self.stats.clone(),
        }))
    }

    async fn close(&self) -> Result<()> {
        self.handle().1.close().await
    }

    fn changes(&self) -> Option<Arc<dyn crate::source::ChangeTracking>> {
        self.handle().1.changes()
    }

    fn fingerprint(&self) -> Option<String> {
        self.handle().1.fingerprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            retries: 10,
            delay: Duration::from_millis(500),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(4), Duration::from_secs(4));
        assert_eq!(p.backoff(9), MAX_DELAY);
        assert_eq!(p.backoff(40), MAX_DELAY);
    }

    #[test]
    fn only_transient_kinds_are_retried() {
        for k in [
            ErrorKind::Connect,
            ErrorKind::Server,
            ErrorKind::Disconnected,
        ] {
            assert!(k.is_transient(), "{k:?}");
        }
        for k in [
            ErrorKind::Denied,
            ErrorKind::Protocol,
            ErrorKind::NotFound,
            ErrorKind::InvalidInput,
            ErrorKind::Mismatch,
            ErrorKind::ReadOnly,
        ] {
            assert!(!k.is_transient(), "{k:?}");
        }
    }
}

//! Progress display: a bar redrawn on a terminal, a log line every few seconds otherwise, and a
//! last report when the copy ends.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_core::engine::Progress;

/// Interval of progress log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shows `p` until aborted; `start` is when the copy began.
pub async fn report(p: Arc<Progress>, terminal: bool, start: Instant) {
    let every = if terminal {
        Duration::from_millis(200)
    } else {
        LOG_EVERY
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        show(&p, terminal, start);
    }
}

fn show(p: &Progress, terminal: bool, start: Instant) {
    let (done, total) = p.get();
    let pct = p.percent();
    let secs = start.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / (1 << 20) as f64 / secs;
    if terminal {
        let width = 40usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r[{bar}] {pct:5.1}% {rate:>8.0} MiB/s ");
        let _ = e.flush();
    } else {
        tracing::info!(
            percent = (pct * 10.0).round() / 10.0,
            bytes_done = done,
            bytes_total = total,
            mib_per_s = (rate * 10.0).round() / 10.0,
            "progress"
        );
    }
}

/// The last report: the final state (100% after a successful copy), then the bar's newline.
pub fn finish(p: &Progress, terminal: bool, start: Instant) {
    show(p, terminal, start);
    if terminal {
        eprintln!();
    }
}

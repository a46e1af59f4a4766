//! Progress display: a bar redrawn on a terminal, periodic log lines otherwise.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_core::engine::Progress;

/// Reports `p` until aborted.
pub async fn report(p: Arc<Progress>, terminal: bool) {
    let start = Instant::now();
    let every = if terminal {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (done, total) = p.get();
        let pct = p.percent();
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / (1 << 20) as f64 / secs;
        if terminal {
            let width = 40usize;
            let filled = ((pct / 100.0) * width as f64) as usize;
            let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r[{bar}] {pct:5.1}% {:>8} MiB/s ", format!("{rate:.0}"));
            let _ = e.flush();
        } else {
            tracing::info!(
                percent = format!("{pct:.1}"),
                bytes_done = done,
                bytes_total = total,
                mib_per_s = format!("{rate:.1}"),
                "progress"
            );
        }
    }
}

/// Ends the bar's line on a terminal.
pub fn finish(terminal: bool) {
    if terminal {
        eprintln!();
    }
}

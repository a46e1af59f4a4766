//! The clone: vmkfstools started on the host, its task polled until it ends (progress and
//! XCOPY use into the metrics), and its files cleaned once it has.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use transfer_core::{Error, ErrorKind, Result};

use super::{
    parse_task, pause, percent, unless_cancelled, Outcome, Peers, Plan, Vmkfstools, XCOPY_USED,
};

/// Clones `source` onto the device and follows the task to its end.
pub(super) async fn clone(
    plan: &Plan,
    p: &Peers<'_>,
    vmk: &Vmkfstools,
    source: &str,
    naa: &str,
    bytes: u64,
) -> Result<Outcome> {
    let target = format!("/vmfs/devices/disks/{naa}");
    let started = Instant::now();
    let msg = unless_cancelled(p.cancel, vmk.clone(source, &target)).await??;
    let v: Value = serde_json::from_str(&msg).map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("vmkfstools clone: not JSON: {e}"),
        )
    })?;
    let id = match &v["taskId"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(Error::new(
                ErrorKind::Protocol,
                "vmkfstools clone: no taskId in the answer",
            ))
        }
    };
    tracing::info!(task = %id, "clone {source} -> {target} started");
    let r = follow(plan, p, vmk, &id, bytes, started).await;
    match &r {
        // The task ended: its files go (the wrapper's task directory, the RDM descriptor).
        Ok(_) => clean_task(vmk, &id).await,
        Err(e) if e.kind() == ErrorKind::Server => clean_task(vmk, &id).await,
        // SIGTERM or a host that stopped answering: the wrapper cannot stop vmkfstools, which
        // goes on until the device goes away with the unmapping.
        Err(_) => tracing::warn!(
            "clone task {id} may still run on the host; unmapping the LUN ends its writes"
        ),
    }
    r
}

async fn clean_task(vmk: &Vmkfstools, id: &str) {
    if let Err(e) = vmk.task_clean(id).await {
        tracing::warn!("cleaning clone task {id}: {e}");
    }
}

/// `taskGet` failures in a row tolerated (a vCenter or host that hiccups) before the
/// population fails.
const TASK_GET_TRIES: u32 = 3;

/// Polls the clone task until it ends.
async fn follow(
    plan: &Plan,
    p: &Peers<'_>,
    vmk: &Vmkfstools,
    id: &str,
    bytes: u64,
    started: Instant,
) -> Result<Outcome> {
    let labels = [
        ("storage_vendor", plan.vendor.as_str()),
        ("clone_method", plan.clone_method.as_str()),
    ];
    let mut failures = 0;
    loop {
        pause(p.cancel, plan.poll).await?;
        let got = unless_cancelled(p.cancel, vmk.task_get(id)).await?;
        let t = match got.and_then(|m| parse_task(&m)) {
            Ok(t) => {
                failures = 0;
                t
            }
            Err(e) if failures + 1 < TASK_GET_TRIES && e.kind() != ErrorKind::Server => {
                failures += 1;
                tracing::warn!("polling clone task {id} (try {failures}): {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(pc) = percent(&t.last_line) {
            p.metrics.set_percent(pc);
        }
        let used = t.xcopy_used.unwrap_or(false);
        p.observed.xcopy_used.store(used, Ordering::Relaxed);
        p.metrics
            .set(XCOPY_USED, &labels, f64::from(u8::from(used)));
        if t.exit_code.is_empty() {
            tracing::debug!(line = %t.last_line, "clone running");
            continue;
        }
        if t.exit_code != "0" {
            return Err(Error::new(
                ErrorKind::Server,
                format!(
                    "the clone failed with exit code {}: {}",
                    t.exit_code,
                    if t.stderr.is_empty() {
                        &t.last_line
                    } else {
                        &t.stderr
                    }
                ),
            ));
        }
        let elapsed = started.elapsed();
        let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001) / (1 << 20) as f64;
        if used {
            tracing::info!(
                "clone done with XCOPY: {} MiB in {:.1} s",
                bytes >> 20,
                elapsed.as_secs_f64()
            );
        } else {
            tracing::warn!(
                "the array did not copy: ESXi fell back to a copy through the host (no XCOPY), {} MiB in {:.1} s, {rate:.0} MiB/s; check the array's VAAI support and that source and target are on the same array",
                bytes >> 20,
                elapsed.as_secs_f64()
            );
        }
        return Ok(Outcome {
            xcopy_used: used,
            bytes,
            elapsed,
        });
    }
}

//! The cleanup that ends every population whatever happened: the device set off and
//! detached, the LUN's mappings restored, the adapters rescanned. Nothing here stops on
//! SIGTERM; every ESXi call is bounded instead, so that the unmapping happens within the pod's
//! grace period.

use std::time::Duration;

use transfer_core::source::retry::RetryPolicy;
use transfer_core::{Error, ErrorKind, Result};

use super::{Mapped, Peers};
use crate::xcopy::esxcli::{field, Answer, Esxcli};
use crate::xcopy::release;

/// How many times (1 s apart) the cleanup looks for the device's status to say `off`.
const DEVICE_OFF_WAITS: u32 = 10;

/// How long one ESXi call of the cleanup may take: the unmapping must happen within the
/// pod's grace period even when vCenter is slow.
const CLEANUP_CALL: Duration = Duration::from_secs(15);

/// How restoring the mappings is tried again: twice more, 1 s then 2 s later.
const RESTORE_RETRY: RetryPolicy = RetryPolicy {
    retries: 2,
    delay: Duration::from_secs(1),
};

/// Runs one esxcli command of the cleanup, bounded by [`CLEANUP_CALL`]; `Ok(None)` for a
/// command that failed on the host.
async fn cleanup_call(x: &Esxcli, words: &[&str], args: &[(&str, &str)]) -> Result<Option<Answer>> {
    match tokio::time::timeout(CLEANUP_CALL, x.try_run(words, args)).await {
        Ok(r) => r.map(std::result::Result::ok),
        Err(_) => Err(Error::new(
            ErrorKind::TimedOut,
            format!(
                "esxcli {}: no answer within {CLEANUP_CALL:?}",
                words.join(" ")
            ),
        )),
    }
}

/// Device off and detached, mappings restored, adapters rescanned: every step tried (none
/// stopped by SIGTERM), the mappings' failure reported.
pub(super) async fn cleanup(p: &Peers<'_>, m: &Mapped) -> Result<()> {
    let naa = m.lun.naa.as_str();
    let x = &m.esxcli;
    let list = ["storage", "core", "device", "list"];
    if let Ok(Some(_)) = cleanup_call(x, &list, &[("device", naa)]).await {
        match cleanup_call(
            x,
            &["storage", "core", "device", "set"],
            &[("state", "off"), ("device", naa)],
        )
        .await
        {
            Ok(Some(_)) => {
                for _ in 0..DEVICE_OFF_WAITS {
                    let off = match cleanup_call(x, &list, &[("device", naa)]).await {
                        Ok(Some(a)) => {
                            a.rows().first().and_then(|r| field(r, "Status")) == Some("off")
                        }
                        _ => true,
                    };
                    if off {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let detached = cleanup_call(
                    x,
                    &["storage", "core", "device", "detached", "remove"],
                    &[("device", naa)],
                )
                .await;
                if matches!(detached, Ok(Some(_))) {
                    tracing::info!(device = naa, "device set off and removed from the host");
                } else {
                    tracing::warn!("removing {naa} from the detached devices failed");
                }
            }
            Ok(None) => tracing::warn!("ESXi refused to set {naa} off (busy?)"),
            Err(e) => tracing::warn!("setting {naa} off: {e}"),
        }
    }
    let mut restored = Err(Error::new(ErrorKind::Server, "not tried"));
    for attempt in 0..=RESTORE_RETRY.retries {
        if attempt > 0 {
            tokio::time::sleep(RESTORE_RETRY.backoff(attempt)).await;
        }
        restored = release(p.array, &m.lun, &m.group, &m.before).await;
        if restored.is_ok() {
            break;
        }
    }
    if let Err(e) = restored {
        return Err(e.context_prefix(format!(
            "restoring the mappings of {} (still mapped to {}?)",
            m.lun.name, m.group
        )));
    }
    tracing::info!(group = %m.group, mappings = ?m.before, "LUN unmapped, its mappings restored");
    // Forklift rescans here without the host Lease: ESXi drops the paths to the unmapped LUN.
    for a in &m.adapters {
        let r = cleanup_call(
            x,
            &["storage", "core", "adapter", "rescan"],
            &[("type", "delete"), ("adapter", a)],
        )
        .await;
        if !matches!(r, Ok(Some(_))) {
            tracing::warn!("rescanning {a} after the unmapping failed");
        }
    }
    Ok(())
}

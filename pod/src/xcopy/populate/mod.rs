//! The copy-offload population, step by step as Forklift's populator runs it: the target PV
//! from Kubernetes, the ESXi host and its initiators from vSphere, the PV's LUN mapped to the
//! host's initiator group on the array, a rescan (under the host's Lease) until ESXi sees the
//! device, the clone by vmkfstools (Forklift's VIB, or the wrapper over SSH: [`Vmkfstools`])
//! polled every few seconds, and the
//! cleanup that runs whatever happened: device off and detached, the LUN's mappings restored
//! to what they were before this populator (or a killed one before it) touched them, the
//! adapters rescanned.
//!
//! Every step can run again: the initiator group is the host's own (`xcopy-<host id>`), the
//! mappings kept are those of every other group, so a restarted pod finishes the clone or
//! cleans up what a killed one left.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use transfer_core::delta::vsphere::Client;
use transfer_core::job::CancelToken;
use transfer_core::{Error, ErrorKind, Result};

mod cleanup;
mod clone;

use cleanup::cleanup;
use clone::clone;

use super::esxcli::{field, Esxcli};
use super::paths;
use super::vmkfstools::{SshPlan, Vmkfstools};
use super::{Initiators, Lun, StorageArray, Volume, GROUP_PREFIX};
use crate::kube::Kube;
use crate::metrics::Metrics;

/// The progress metric Forklift's controller scrapes.
pub const PROGRESS: &str = "vsphere_xcopy_volume_populator_progress";
/// 1 when the array copied with XCOPY, 0 when ESXi fell back to a copy through the host.
pub const XCOPY_USED: &str = "vsphere_xcopy_volume_populator_xcopy_used";
/// How long the copy took; present once it has ended (with `result`).
pub const COPY_DURATION: &str = "vsphere_xcopy_volume_populator_copy_duration_seconds";
/// The source disk's size in bytes (`type="provisioned"`: its capacity).
pub const SOURCE_DISK_BYTES: &str = "vsphere_xcopy_volume_populator_source_disk_bytes";
/// 1, labelled with the array's vendor, product, model and version.
pub const ARRAY_INFO: &str = "vsphere_xcopy_volume_populator_storage_array_info";

/// What one population needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The VM (a moref value, `vm-123`).
    pub vm: String,
    /// The disk, `[datastore] dir/disk.vmdk`.
    pub vmdk: String,
    /// The namespace of the target PVC.
    pub namespace: String,
    /// The target PVC (`--owner-name`).
    pub pvc: String,
    /// The ESXi host to use instead of the VM's (a moref value, `host-123`).
    pub migration_host: Option<String>,
    /// The `--storage-vendor-product`, for labels.
    pub vendor: String,
    /// `vib` (esxcli over the vSphere API) or `ssh`.
    pub clone_method: String,
    /// How to reach the host when the clone method is `ssh`.
    pub ssh: Option<SshPlan>,
    /// How often the clone task is polled (5 s).
    pub poll: Duration,
    /// Rescans tried before giving up on the device (5).
    pub rescans: u32,
    /// The wait after a rescan.
    pub rescan_wait: Duration,
    /// Where the host Leases live, who holds them, and for how long (s).
    pub lease: LeasePlan,
}

/// The host Lease settings.
#[derive(Debug, Clone)]
pub struct LeasePlan {
    /// `HOST_LEASE_NAMESPACE` (openshift-mtv).
    pub namespace: String,
    /// The holder identity (the pod's name).
    pub holder: String,
    /// `HOST_LEASE_DURATION_SECONDS` (10).
    pub duration: u64,
    /// Holders per host at once (2).
    pub slots: u32,
    /// How often a held Lease is renewed (3 s).
    pub renew: Duration,
    /// How long to wait before trying the slots again (10 s).
    pub retry: Duration,
}

/// `[datastore] dir/disk.vmdk` as ESXi's path `/vmfs/volumes/datastore/dir/disk.vmdk`, and the
/// datastore's name.
pub fn esxi_path(vmdk: &str) -> Result<(String, String)> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("--source-vmdk '{vmdk}' is not of the form '[datastore] dir/disk.vmdk'"),
        )
    };
    let rest = vmdk.trim().strip_prefix('[').ok_or_else(bad)?;
    let (ds, path) = rest.split_once(']').ok_or_else(bad)?;
    let path = path.trim();
    // Names that would escape /vmfs/volumes/, split the SSH method's `DS=...;CMD=...`, or
    // carry control characters into a command line are no datastore or disk.
    if ds.is_empty()
        || ds == "."
        || ds == ".."
        || ds.contains(['/', ';'])
        || vmdk.chars().any(char::is_control)
        || path.is_empty()
        || !path.ends_with(".vmdk")
        || path.starts_with('/')
        || path.split('/').any(|p| p.is_empty() || p == "..")
    {
        return Err(bad());
    }
    Ok((format!("/vmfs/volumes/{ds}/{path}"), ds.to_owned()))
}

/// The host id Forklift names Leases and initiator groups after: `HostSystem:host-12` as
/// `hostsystem-host-12`.
pub fn host_id(host: &str) -> String {
    format!("hostsystem-{host}")
        .to_ascii_lowercase()
        .replace([':', '_', '.'], "-")
}

/// The initiators of adapter rows of `storage core adapter list`: link up (or online), iSCSI
/// or Fibre Channel (NVMe `nqn.` ones are named and skipped: no array here serves them).
pub fn adapter_initiators(rows: &[Vec<(String, String)>]) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut adapters = Vec::new();
    for r in rows {
        let link = field(r, "LinkState").unwrap_or("").to_ascii_lowercase();
        let uid = field(r, "UID").unwrap_or("").trim().to_ascii_lowercase();
        let name = field(r, "HBAName").unwrap_or("").to_owned();
        if link != "link-up" && link != "online" {
            continue;
        }
        if uid.starts_with("iqn.") || uid.starts_with("eui.") || uid.starts_with("fc.") {
            if !ids.contains(&uid) {
                ids.push(uid);
            }
            adapters.push(name);
        } else if uid.starts_with("nqn.") {
            tracing::warn!(adapter = %name, "skipping NVMe adapter {uid}: not supported for copy offload");
        }
    }
    (ids, adapters)
}

/// The percentage in a vmkfstools progress line (`Clone: 37% done.`).
pub fn percent(line: &str) -> Option<f64> {
    let i = line.find('%')?;
    let digits: String = line[..i]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse::<f64>().ok().filter(|p| *p <= 100.0)
}

/// The state of the plugin's clone task (`taskGet`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Task {
    /// `exitCode`: empty while it runs.
    pub exit_code: String,
    /// `lastLine` of vmkfstools' output.
    pub last_line: String,
    /// `xcopyUsed` (`None`: unknown).
    pub xcopy_used: Option<bool>,
    /// `stdErr`.
    pub stderr: String,
}

/// Reads a `taskGet` message.
pub fn parse_task(message: &str) -> Result<Task> {
    let v: Value = serde_json::from_str(message).map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("vmkfstools taskGet: not JSON: {e}"),
        )
    })?;
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    Ok(Task {
        exit_code: s("exitCode"),
        last_line: s("lastLine"),
        xcopy_used: v["xcopyUsed"].as_bool(),
        stderr: transfer_core::error::peer_text(&s("stdErr")),
    })
}

/// Everything the run talks to.
pub struct Peers<'a> {
    /// The cluster's API.
    pub kube: &'a Kube,
    /// vCenter (or ESXi).
    pub vsphere: Arc<Client>,
    /// The storage array.
    pub array: &'a dyn StorageArray,
    /// The pod's metrics.
    pub metrics: &'a Metrics,
    /// Cancelled on SIGTERM.
    pub cancel: &'a CancelToken,
    /// What the run learns, for the metrics of its end whichever way it ends.
    pub observed: &'a Observed,
}

/// What a run learns on its way that the metrics of its end need, also when it fails.
#[derive(Debug, Default)]
pub struct Observed {
    /// The SAN protocol ([`Initiators::protocol`]), once the host's initiators are known.
    pub protocol: OnceLock<&'static str>,
    /// Whether the clone used XCOPY, as its last poll said.
    pub xcopy_used: AtomicBool,
}

/// What the ESXi side of the cleanup needs.
struct Mapped {
    lun: Lun,
    group: String,
    before: Vec<String>,
    adapters: Vec<String>,
    esxcli: Esxcli,
    host_id: String,
    /// The host's name and moref, for messages.
    host: String,
}

/// What a finished clone reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Whether the array's XCOPY did the copy.
    pub xcopy_used: bool,
    /// The disk's size in bytes (0: unknown).
    pub bytes: u64,
    /// How long the clone took.
    pub elapsed: Duration,
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "population terminated by SIGTERM")
}

/// What `fut` gives, or the cancellation error when the run is cancelled (SIGTERM) first:
/// every wait on the host is raced with it, so that the cleanup fits the grace period.
async fn unless_cancelled<T>(
    cancel: &CancelToken,
    fut: impl std::future::Future<Output = T>,
) -> Result<T> {
    tokio::select! {
        _ = cancel.cancelled() => Err(cancelled()),
        v = fut => Ok(v),
    }
}

/// Sleeps `d`, or fails when the run is cancelled first.
async fn pause(cancel: &CancelToken, d: Duration) -> Result<()> {
    unless_cancelled(cancel, tokio::time::sleep(d)).await
}

/// Runs the population; the LUN's mappings are restored whatever happens once they changed.
pub async fn run(plan: &Plan, p: &Peers<'_>) -> Result<Outcome> {
    let (source, ds) = esxi_path(&plan.vmdk)?;
    let volume = p.kube.target_volume(&plan.namespace, &plan.pvc).await?;
    tracing::info!(pv = %volume.name, handle = %volume.handle, "target volume");

    let vs = &p.vsphere;
    let bytes = disk_size(vs, &plan.vm, &plan.vmdk).await?;
    let host = match &plan.migration_host {
        Some(h) => h.clone(),
        None => vs
            .property("VirtualMachine", &plan.vm, "runtime.host")
            .await?
            .map(|n| n.text.trim().to_owned())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("vSphere: VM {} runs on no host", plan.vm),
                )
            })?,
    };
    let host_name = vs
        .property("HostSystem", &host, "name")
        .await?
        .map(|n| n.text.trim().to_owned())
        .unwrap_or_else(|| host.clone());
    tracing::info!(host = %host, name = %host_name, "ESXi host");

    let esxcli = Esxcli::new(vs.clone(), &host).await?;
    // Checked before the array is touched: a host without the VIB, or without the restricted
    // key, fails with nothing to undo.
    let vmk = unless_cancelled(p.cancel, async {
        match &plan.ssh {
            None => Vmkfstools::vib(esxcli.clone(), &host_name).await,
            Some(s) => Vmkfstools::ssh(vs, &host, &host_name, &ds, s).await,
        }
    })
    .await??;
    let r = populate(
        plan,
        p,
        &vmk,
        Host {
            moref: host,
            name: host_name,
            esxcli,
        },
        &source,
        &ds,
        &volume,
        bytes,
    )
    .await;
    vmk.close().await;
    r
}

/// The ESXi host.
struct Host {
    moref: String,
    name: String,
    esxcli: Esxcli,
}

/// Maps, finds the device, clones and cleans up.
#[allow(clippy::too_many_arguments)]
async fn populate(
    plan: &Plan,
    p: &Peers<'_>,
    vmk: &Vmkfstools,
    h: Host,
    source: &str,
    ds: &str,
    volume: &Volume,
    bytes: u64,
) -> Result<Outcome> {
    let vs = &p.vsphere;
    let Host {
        moref: host,
        name: host_name,
        esxcli,
    } = h;
    let id = host_id(&host);
    let (ids, adapters) = match datastore_initiators(vs, &plan.vm, ds, &host).await? {
        Some(found) => found,
        None => {
            // Not VMFS, or no active iSCSI/FC path to it (a local or NFS datastore): every
            // iSCSI and FC adapter that is up, as Forklift's first method takes them.
            let rows = esxcli
                .run(&["storage", "core", "adapter", "list"], &[])
                .await?;
            adapter_initiators(rows.rows())
        }
    };
    let initiators = Initiators::from_esxi(&ids)?;
    tracing::info!(initiators = ?ids, "ESXi initiators");
    let _ = p.observed.protocol.set(initiators.protocol());
    p.metrics.set(
        SOURCE_DISK_BYTES,
        &[
            ("storage_vendor", &plan.vendor),
            ("clone_method", &plan.clone_method),
            ("storage_protocol", initiators.protocol()),
            ("type", "provisioned"),
        ],
        bytes as f64,
    );
    match p.array.info().await {
        Ok(a) => {
            tracing::info!(vendor = a.vendor, product = a.product, model = %a.model, version = %a.version, "storage array");
            p.metrics.set_unowned(
                ARRAY_INFO,
                &[
                    ("storage_vendor", &plan.vendor),
                    ("storage_array_vendor", a.vendor),
                    ("storage_array_product", a.product),
                    ("storage_array_model", &a.model),
                    ("storage_array_version", &a.version),
                ],
                1.0,
            );
        }
        // Only the metric's labels need it.
        Err(e) => tracing::warn!("the storage array's model and version: {e}"),
    }

    let group = p.array.ensure_group(&id, &initiators).await?;
    let lun = p.array.lun(volume).await?;
    // Mappings to the host's group, or to any populator group (`xcopy-...`: a killed run's,
    // maybe on another host), are not the LUN's own: the rest is what it goes back to. A new
    // PV's LUN is never an ESXi host's before the populator maps it.
    let before: Vec<String> = p
        .array
        .mappings(&lun)
        .await?
        .into_iter()
        .filter(|g| *g != group && !g.starts_with(GROUP_PREFIX))
        .collect();
    tracing::info!(lun = %lun.name, naa = %lun.naa, before = ?before, "LUN");
    let mapped = Mapped {
        lun,
        group,
        before,
        adapters,
        esxcli,
        host_id: id,
        host: format!("{host_name} ({host})"),
    };
    let r = async {
        if p.cancel.is_cancelled() {
            return Err(cancelled());
        }
        p.array.map(&mapped.lun, &mapped.group).await?;
        tracing::info!(group = %mapped.group, "LUN mapped to the host");
        with_lease(plan, p, &mapped.host_id, || find_device(plan, p, &mapped)).await?;
        clone(plan, p, vmk, source, &mapped.lun.naa, bytes).await
    }
    .await;
    let cleaned = cleanup(p, &mapped).await;
    match (r, cleaned) {
        (Ok(o), Ok(())) => Ok(o),
        (Ok(_), Err(e)) => Err(e.context_prefix("the clone finished but the cleanup failed")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            tracing::error!("cleanup failed too: {c}");
            Err(e)
        }
    }
}

/// The initiators (and adapter names) of `host`'s adapters with an active path to the VMFS
/// datastore `ds` of `vm`; `None` when the datastore is not VMFS or has no such path.
async fn datastore_initiators(
    vs: &Client,
    vm: &str,
    ds: &str,
    host: &str,
) -> Result<Option<(Vec<String>, Vec<String>)>> {
    let Some(list) = vs.property("VirtualMachine", vm, "datastore").await? else {
        return Ok(None);
    };
    let mut found = None;
    for d in &list.children {
        let moref = d.text.trim();
        let name = vs.property("Datastore", moref, "name").await?;
        if name.is_some_and(|n| n.text.trim() == ds) {
            found = Some(moref.to_owned());
            break;
        }
    }
    let Some(moref) = found else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("VM {vm} uses no datastore named {ds}"),
        ));
    };
    let disk = match vs.property("Datastore", &moref, "info").await? {
        Some(info) => paths::vmfs_disk(&info),
        None => None,
    };
    let Some(disk) = disk else {
        tracing::info!(
            datastore = ds,
            "not a VMFS datastore: initiators from the adapter list"
        );
        return Ok(None);
    };
    let Some(storage) = vs
        .property("HostSystem", host, "config.storageDevice")
        .await?
    else {
        return Ok(None);
    };
    let (ids, names) = paths::active_initiators(&storage, &disk);
    if ids.is_empty() {
        tracing::info!(datastore = ds, disk = %disk, "no active iSCSI or FC path to the datastore: initiators from the adapter list");
        return Ok(None);
    }
    Ok(Some((ids, names)))
}

/// The capacity of the VM's disk `vmdk` (0 when vSphere does not list it: the clone then
/// reports its own percentages only).
async fn disk_size(vs: &Client, vm: &str, vmdk: &str) -> Result<u64> {
    let disks = vs
        .disks("VirtualMachine", vm)
        .await
        .map_err(|e| e.context_prefix(format!("VM {vm}")))?;
    match disks.iter().find(|d| d.is_backed_by(vmdk)) {
        Some(d) => Ok(d.capacity),
        None => Err(Error::new(
            ErrorKind::NotFound,
            format!("VM {vm} has no disk {vmdk}"),
        )),
    }
}

/// Runs `f` holding one of the host's Lease slots (renewed while it runs, given up after).
async fn with_lease<F, Fut, T>(plan: &Plan, p: &Peers<'_>, host_id: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let l = &plan.lease;
    let name = loop {
        let mut got = None;
        for slot in 0..l.slots.max(1) {
            let name = format!("esxi-lock-{host_id}-slot-{slot}");
            if p.kube
                .try_lease(&l.namespace, &name, &l.holder, l.duration)
                .await?
            {
                got = Some(name);
                break;
            }
        }
        if let Some(n) = got {
            break n;
        }
        tracing::info!(
            "every rescan slot of {host_id} is held; trying again in {:?}",
            l.retry
        );
        pause(p.cancel, l.retry).await?;
    };
    tracing::info!(lease = %name, "host lease taken for the rescan");
    // Renewed every few seconds; a renewal that fails, or does not answer before the next one
    // is due, loses the hold and the work stops (another may take the slot once it expires).
    let renew = async {
        loop {
            tokio::time::sleep(l.renew).await;
            let renewed = tokio::time::timeout(
                l.renew,
                p.kube.try_lease(&l.namespace, &name, &l.holder, l.duration),
            )
            .await;
            if !matches!(renewed, Ok(Ok(true))) {
                return;
            }
        }
    };
    let r = tokio::select! {
        r = f() => r,
        () = renew => Err(Error::new(ErrorKind::Server, format!("lost the host lease {name}"))),
    };
    if let Err(e) = p.kube.release_lease(&l.namespace, &name, &l.holder).await {
        tracing::warn!("giving up the host lease {name}: {e}");
    }
    r
}

/// Rescans until ESXi lists the LUN's device (a device left off or dead by an earlier run is
/// removed from the detached list first).
async fn find_device(plan: &Plan, p: &Peers<'_>, m: &Mapped) -> Result<()> {
    let naa = m.lun.naa.as_str();
    for attempt in 0..=plan.rescans {
        let listed = m
            .esxcli
            .try_run(&["storage", "core", "device", "list"], &[("device", naa)])
            .await?;
        match listed {
            Ok(a) => {
                let status = a
                    .rows()
                    .first()
                    .and_then(|r| field(r, "Status"))
                    .unwrap_or("")
                    .to_owned();
                if status != "off" && status != "dead timeout" {
                    tracing::info!(device = naa, rescans = attempt, "ESXi sees the device");
                    return Ok(());
                }
                m.esxcli
                    .try_run(
                        &["storage", "core", "device", "detached", "remove"],
                        &[("device", naa)],
                    )
                    .await?
                    .ok();
            }
            Err(f) => tracing::debug!(device = naa, "not listed yet: {}", f.message),
        }
        if attempt == plan.rescans {
            break;
        }
        // A rescan that fails (an adapter that errs) is not the end: the device may show
        // all the same, and the next listing tells (Forklift's populator goes on too).
        let rescan = m
            .esxcli
            .try_run(
                &["storage", "core", "adapter", "rescan"],
                &[("type", "add"), ("all", "1")],
            )
            .await;
        match rescan {
            Ok(Ok(_)) => {}
            Ok(Err(f)) => tracing::warn!("rescan {} failed: {}", attempt + 1, f.message),
            Err(e) => tracing::warn!("rescan {} failed: {e}", attempt + 1),
        }
        pause(p.cancel, plan.rescan_wait).await?;
    }
    // The usual causes: a LUN number the host does not scan (above Disk.MaxLUN), or no path.
    let max_lun = m
        .esxcli
        .try_run(
            &["system", "settings", "advanced", "list"],
            &[("option", "/Disk/MaxLUN")],
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|a| {
            a.rows()
                .first()
                .and_then(|r| field(r, "IntValue"))
                .map(str::to_owned)
        })
        .map_or_else(
            || "the host's Disk.MaxLUN".to_owned(),
            |v| format!("the host's Disk.MaxLUN ({v})"),
        );
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "ESXi host {} does not see {naa} after {} rescans (is the LUN number at or above {max_lun}, or has the host no path to the array?)",
            m.host, plan.rescans
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmdk_paths_become_esxi_paths() {
        assert_eq!(
            esxi_path("[LocalDS_0] vm1/vm1.vmdk").unwrap(),
            (
                "/vmfs/volumes/LocalDS_0/vm1/vm1.vmdk".into(),
                "LocalDS_0".into()
            )
        );
        for bad in [
            "vm1/vm1.vmdk",
            "[ds]",
            "[ds] ../x.vmdk",
            "[ds] /abs.vmdk",
            "[ds] a/b.txt",
            "[] a.vmdk",
            "[..] a.vmdk",
            "[a;CMD=--version] a.vmdk",
            "[a/b] a.vmdk",
            "[ds] a\n--task-clean.vmdk",
        ] {
            assert!(esxi_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_lines_tasks_and_adapters_are_read() {
        assert_eq!(percent("Clone: 37% done."), Some(37.0));
        assert_eq!(percent("Clone: 100% done."), Some(100.0));
        assert_eq!(percent("Destination disk format: VMFS thin"), None);
        let t = parse_task(r#"{"taskId": "7", "pid": 1, "exitCode": "", "lastLine": "Clone: 5% done.", "xcopyUsed": null, "stdErr": ""}"#).unwrap();
        assert_eq!((t.exit_code.as_str(), t.xcopy_used), ("", None));
        assert!(parse_task("nope").is_err());
        let row = |n: &str, l: &str, u: &str| {
            vec![
                ("HBAName".to_owned(), n.to_owned()),
                ("LinkState".to_owned(), l.to_owned()),
                ("UID".to_owned(), u.to_owned()),
            ]
        };
        let (ids, names) = adapter_initiators(&[
            row("vmhba0", "link-n/a", "sas.5000c29"),
            row("vmhba64", "online", "iqn.1998-01.com.vmware:h1"),
            row("vmhba2", "link-up", "FC.20000025B5AA0001:20000025B5BB0001"),
            row("vmhba3", "link-down", "fc.1:2"),
        ]);
        assert_eq!(
            ids,
            vec![
                "iqn.1998-01.com.vmware:h1",
                "fc.20000025b5aa0001:20000025b5bb0001"
            ]
        );
        assert_eq!(names, vec!["vmhba64", "vmhba2"]);
        assert_eq!(host_id("host-21"), "hostsystem-host-21");
    }
}

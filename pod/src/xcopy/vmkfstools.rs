//! vmkfstools on the ESXi host, either way Forklift runs it: the esxcli `vmkfstools` namespace
//! of its VIB over the vSphere API (`vib`), or the wrapper script over SSH (`ssh`). Both take
//! the same commands and answer the same JSON messages (`taskId`, `exitCode`, `lastLine`,
//! `xcopyUsed`, `stdErr`).

use std::sync::Arc;

use serde_json::Value;
use transfer_core::delta::vsphere::xml;
use transfer_core::delta::vsphere::Client;
use transfer_core::{Error, ErrorKind, Result};

use super::esxcli::{field, Esxcli};
use super::ssh::{self, EsxiSsh, SshKeys, WRAPPER, WRAPPER_NAME, WRAPPER_VERSION};

/// How the SSH clone method reaches the host.
#[derive(Debug, Clone)]
pub struct SshPlan {
    /// The restricted key pair.
    pub keys: SshKeys,
    /// The SSH port (22).
    pub port: u16,
    /// The host key's `SHA256:...` fingerprint to insist on (`None`: any, as Forklift).
    pub host_key: Option<String>,
}

/// The way vmkfstools runs on the host.
pub enum Vmkfstools {
    /// Forklift's VIB, through esxcli over the vSphere API.
    Vib(Esxcli),
    /// The wrapper on the disk's datastore, over SSH.
    Ssh {
        /// The connection.
        ssh: Box<EsxiSsh>,
        /// The datastore the wrapper is on.
        ds: String,
    },
}

impl Vmkfstools {
    /// Checks that Forklift's VIB is on the host: its wrapper's version, or, from a release
    /// without `vmkfstools version`, the VIB as `software vib get` lists it (a warning, and
    /// the clone goes on, as Forklift's populator does). Fails when the host has no such VIB,
    /// before the array is touched.
    pub async fn vib(esxcli: Esxcli, host_name: &str) -> Result<Vmkfstools> {
        let e = match esxcli.plugin("version", &[]).await {
            Ok(version) => {
                let version = version_of(version);
                tracing::info!(version = %version, "Forklift's vmkfstools-wrapper VIB");
                return Ok(Vmkfstools::Vib(esxcli));
            }
            Err(e) => e,
        };
        let listed = esxcli
            .try_run(&["software", "vib", "get"], &[("vibname", VIB_NAME)])
            .await;
        match listed {
            Ok(Ok(a)) => match a.rows().iter().find_map(|r| field(r, "Version")) {
                Some(v) => {
                    tracing::warn!(
                        "Forklift's vmkfstools-wrapper VIB {v} on {host_name} does not answer `vmkfstools version` ({e}): an older release, going on"
                    );
                    Ok(Vmkfstools::Vib(esxcli))
                }
                None => Err(not_installed(host_name)),
            },
            // NoMatchError: no such VIB.
            Ok(Err(_)) => Err(not_installed(host_name)),
            Err(listing) => {
                tracing::warn!(
                    "cannot tell whether Forklift's vmkfstools-wrapper VIB is on {host_name} ({e}; {listing}): going on"
                );
                Ok(Vmkfstools::Vib(esxcli))
            }
        }
    }

    /// Connects to the host's management address, checks the restricted key, and makes sure
    /// the wrapper on datastore `ds` is this release's: uploaded when it is missing or another
    /// version (never rewritten while it matches, as other populators' runs may be reading it).
    pub async fn ssh(
        vs: &Arc<Client>,
        host: &str,
        host_name: &str,
        ds: &str,
        plan: &SshPlan,
    ) -> Result<Vmkfstools> {
        let addr = management_ip(vs, host).await?;
        let label = format!("ESXi host {host_name}");
        let line = ssh::authorized_keys_line(&plan.keys.public);
        let instructions = || {
            tracing::error!(
                "the SSH clone method needs this line in /etc/ssh/keys-root/authorized_keys on {host_name} ({addr}):\n  {line}"
            );
        };
        let conn = match EsxiSsh::connect(
            &addr,
            plan.port,
            &label,
            plan.keys.clone(),
            plan.host_key.clone(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                instructions();
                return Err(e);
            }
        };
        let checked = async {
            if let Err(e) = conn.check_access().await {
                instructions();
                return Err(e);
            }
            match wrapper_version(&conn, ds).await {
                Ok(v) if v == WRAPPER_VERSION => {
                    tracing::info!(datastore = ds, "the vmkfstools wrapper on [{ds}] is this release's ({v})");
                    return Ok(());
                }
                Ok(v) => tracing::info!(datastore = ds, "the vmkfstools wrapper on [{ds}] is version {v}: replacing it"),
                Err(e) => tracing::info!(datastore = ds, "no usable vmkfstools wrapper on [{ds}] yet ({e})"),
            }
            let dc = datacenter_path(vs, host).await?;
            vs.upload(&dc, ds, WRAPPER_NAME, WRAPPER.as_bytes())
                .await
                .map_err(|e| e.context_prefix("uploading the vmkfstools wrapper"))?;
            tracing::info!(datastore = ds, "vmkfstools wrapper uploaded as [{ds}] {WRAPPER_NAME}");
            let version = match wrapper_version(&conn, ds).await {
                Ok(v) => v,
                Err(e) => {
                    instructions();
                    return Err(e.context_prefix("the restricted key did not run the uploaded wrapper"));
                }
            };
            if version != WRAPPER_VERSION {
                instructions();
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{label}: the restricted key ran a wrapper of version {} rather than the one just uploaded ({WRAPPER_VERSION}): its authorized_keys line runs another file (an older Forklift line, .py or with a UUID?); replace it with the line printed above",
                        transfer_core::error::peer_text(&version)
                    ),
                ));
            }
            Ok(())
        }
        .await;
        if let Err(e) = checked {
            conn.close().await;
            return Err(e);
        }
        tracing::info!(address = %addr, "SSH access to {host_name} checked");
        Ok(Vmkfstools::Ssh {
            ssh: Box::new(conn),
            ds: ds.to_owned(),
        })
    }

    /// Starts the clone of `source` onto `target`: the wrapper's answer (JSON with `taskId`).
    /// Never sent twice: a clone may have started even when its answer was lost.
    pub async fn clone(&self, source: &str, target: &str) -> Result<String> {
        match self {
            Vmkfstools::Vib(e) => {
                e.plugin("clone", &[("sourcevmdk", source), ("targetlun", target)])
                    .await
            }
            Vmkfstools::Ssh { ssh, ds } => {
                ssh.wrapper(ds, &["--clone", "-s", source, "-t", target], true)
                    .await
            }
        }
    }

    /// The task's state (JSON).
    pub async fn task_get(&self, id: &str) -> Result<String> {
        match self {
            Vmkfstools::Vib(e) => e.plugin("taskGet", &[("id", id)]).await,
            Vmkfstools::Ssh { ssh, ds } => ssh.wrapper(ds, &["--task-get", "-i", id], false).await,
        }
    }

    /// Forgets an ended task (its files, the RDM descriptor).
    pub async fn task_clean(&self, id: &str) -> Result<()> {
        match self {
            Vmkfstools::Vib(e) => e.plugin("taskClean", &[("id", id)]).await.map(drop),
            Vmkfstools::Ssh { ssh, ds } => ssh
                .wrapper(ds, &["--task-clean", "-i", id], false)
                .await
                .map(drop),
        }
    }

    /// Ends the SSH connection, if any.
    pub async fn close(&self) {
        if let Vmkfstools::Ssh { ssh, .. } = self {
            ssh.close().await;
        }
    }
}

/// The version the wrapper on `ds` answers through the key.
async fn wrapper_version(conn: &EsxiSsh, ds: &str) -> Result<String> {
    Ok(version_of(conn.wrapper(ds, &["--version"], false).await?))
}

/// The version in a `version` answer (`{"version": "0.3.1"}`), or the answer as it is.
/// The name of Forklift's VIB.
const VIB_NAME: &str = "vmkfstools-wrapper";

fn not_installed(host_name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "Forklift's vmkfstools-wrapper VIB is not installed on {host_name} (install it, or use ESXI_CLONE_METHOD=ssh)"
        ),
    )
}

fn version_of(message: String) -> String {
    serde_json::from_str::<Value>(&message)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or(message)
}

/// The host's management address: the first IP of the vmkernel NICs selected for management
/// (`config.virtualNicManagerInfo.netConfig`, as govmomi's `HostSystem.ManagementIPs`).
async fn management_ip(vs: &Client, host: &str) -> Result<String> {
    let configs = vs
        .property("HostSystem", host, "config.virtualNicManagerInfo.netConfig")
        .await?;
    configs.as_ref().and_then(management_ip_of).ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("vSphere: {host} has no management IP address (config.virtualNicManagerInfo)"),
        )
    })
}

/// The first selected management vmknic's IP address in a `netConfig` list.
pub fn management_ip_of(list: &xml::Node) -> Option<String> {
    for nc in &list.children {
        if nc.text_of("nicType") != Some("management") {
            continue;
        }
        let selected: Vec<&str> = nc.all("selectedVnic").map(|s| s.text.trim()).collect();
        for v in nc.all("candidateVnic") {
            let key = v.text_of("key").unwrap_or("");
            if !selected.contains(&key) {
                continue;
            }
            let ip = v
                .child("spec")
                .and_then(|s| s.child("ip"))
                .and_then(|i| i.text_of("ipAddress"))
                .map(str::trim)
                .filter(|ip| !ip.is_empty());
            if let Some(ip) = ip {
                return Some(ip.to_owned());
            }
        }
    }
    None
}

/// The inventory path of the host's datacenter (`DC0`, or `folder/DC0`), as `/folder`'s
/// `dcPath` wants it.
async fn datacenter_path(vs: &Client, host: &str) -> Result<String> {
    let parent = |ty: String, id: String| async move {
        Ok::<_, Error>(
            vs.property(&ty, &id, "parent")
                .await?
                .and_then(|n| Some((n.mo_type.clone()?, n.text.trim().to_owned()))),
        )
    };
    let mut cur = ("HostSystem".to_owned(), host.to_owned());
    let mut dc = None;
    let mut names = Vec::new();
    for _ in 0..64 {
        let Some(p) = parent(cur.0.clone(), cur.1.clone()).await? else {
            break;
        };
        if dc.is_none() && p.0 == "Datacenter" {
            dc = Some(p.clone());
        }
        if dc.is_some() {
            // The root folder (no parent of its own) is not part of the path.
            if parent(p.0.clone(), p.1.clone()).await?.is_some() {
                let name = vs.property(&p.0, &p.1, "name").await?;
                names.push(name.map(|n| n.text.trim().to_owned()).unwrap_or_default());
            }
        }
        cur = p;
    }
    if dc.is_none() || names.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("vSphere: no datacenter above {host}"),
        ));
    }
    names.reverse();
    Ok(names.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_management_nic_gives_the_address() {
        let doc = r#"<v xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
          <VirtualNicManagerNetConfig><nicType>vmotion</nicType><candidateVnic><key>k0</key><spec><ip><ipAddress>10.0.0.9</ipAddress></ip></spec></candidateVnic><selectedVnic>k0</selectedVnic></VirtualNicManagerNetConfig>
          <VirtualNicManagerNetConfig><nicType>management</nicType>
            <candidateVnic><key>k1</key><spec><ip><ipAddress>192.168.0.1</ipAddress></ip></spec></candidateVnic>
            <candidateVnic><key>k2</key><spec><ip><ipAddress>10.1.1.1</ipAddress></ip></spec></candidateVnic>
            <selectedVnic>k2</selectedVnic></VirtualNicManagerNetConfig></v>"#;
        let n = xml::parse(doc.as_bytes(), "t").unwrap();
        assert_eq!(management_ip_of(&n).as_deref(), Some("10.1.1.1"));
        let none = xml::parse(b"<v><VirtualNicManagerNetConfig><nicType>management</nicType></VirtualNicManagerNetConfig></v>", "t").unwrap();
        assert_eq!(management_ip_of(&none), None);
    }
}

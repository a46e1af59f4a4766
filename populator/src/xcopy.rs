//! `populator vsphere-xcopy` (or the binary called `vsphere-copy-offload-populator` or
//! `vsphere-xcopy-volume-populator`): Forklift's copy-offload populator, with its flags, its
//! secret's environment keys, its metrics and its exit codes (2 for a missing flag or secret
//! key, 1 for a failed population). The flow itself is `ferry_pod::xcopy::populate`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_pod::kube::Kube;
use ferry_pod::metrics::Metrics;
use ferry_pod::xcopy::ontap::Ontap;
use ferry_pod::xcopy::populate::{
    self, LeasePlan, Observed, Peers, Plan, ARRAY_INFO, COPY_DURATION, PROGRESS, SOURCE_DISK_BYTES,
    XCOPY_USED,
};
use ferry_pod::xcopy::pure::{Credentials, FlashArray};
use ferry_pod::xcopy::ssh::SshKeys;
use ferry_pod::xcopy::vmkfstools::SshPlan;
use ferry_pod::xcopy::{check_product, StorageArray};
use transfer_core::delta::vsphere::Client;
use transfer_core::http::{HttpOptions, Thumbprint, TlsTrust};
use transfer_core::source::vddk::Secret;
use transfer_core::{Error, ErrorKind, Result};

use crate::Flags;

/// Flags the populator must be given (Forklift's controller always passes them;
/// `--cr-name`, `--cr-namespace` and `--secret-name` come too but are not needed).
const REQUIRED: [&str; 5] = [
    "source-vm-id",
    "source-vmdk",
    "target-namespace",
    "owner-name",
    "storage-vendor-product",
];

/// How long the last values wait for a scrape before the pod ends.
const FINAL_SCRAPE: Duration = Duration::from_secs(10);

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// A setting from its flag, else from the environment key Forklift's secret provides.
fn setting(flags: &Flags, flag: &str, key: &str) -> Option<String> {
    flags.get(flag).map(str::to_owned).or_else(|| env(key))
}

/// What is missing among the required flags and secret keys, one message each.
fn missing(flags: &Flags) -> Vec<String> {
    let mut out: Vec<String> = REQUIRED
        .iter()
        .filter(|f| match **f {
            "storage-vendor-product" => vendor(flags).is_none(),
            f => flags.get(f).is_none(),
        })
        .map(|f| format!("missing value for mandatory flag --{f}"))
        .collect();
    for (flag, key) in [
        ("storage-hostname", "STORAGE_HOSTNAME"),
        ("vsphere-hostname", "GOVMOMI_HOSTNAME"),
        ("vsphere-username", "GOVMOMI_USERNAME"),
    ] {
        if setting(flags, flag, key).is_none() {
            out.push(format!(
                "missing value for --{flag} (or the secret key {key})"
            ));
        }
    }
    if env("GOVMOMI_PASSWORD").is_none() {
        out.push("missing the secret key GOVMOMI_PASSWORD".into());
    }
    if env("STORAGE_TOKEN").is_none()
        && (setting(flags, "storage-username", "STORAGE_USERNAME").is_none()
            || env("STORAGE_PASSWORD").is_none())
    {
        out.push(
            "either STORAGE_TOKEN or both STORAGE_USERNAME and STORAGE_PASSWORD must be provided"
                .into(),
        );
    }
    out
}

/// `--storage-vendor-product`, else `STORAGE_VENDOR` (its default in Forklift's populator).
fn vendor(flags: &Flags) -> Option<String> {
    setting(flags, "storage-vendor-product", "STORAGE_VENDOR")
}

/// The vSphere server and port of `GOVMOMI_HOSTNAME` (`host`, `host:port`, or a URL).
fn vsphere_address(s: &str) -> Result<(String, u32)> {
    let u = if s.contains("://") {
        s.to_owned()
    } else {
        format!("https://{s}")
    };
    let url = url::Url::parse(&u).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("GOVMOMI_HOSTNAME '{s}': {e}"),
        )
    })?;
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_owned();
    Ok((host, url.port().map_or(443, u32::from)))
}

/// How vCenter's certificate is checked: the provider secret's `cacert`, `thumbprint` or
/// `insecureSkipVerify` (also govmomi's `GOVMOMI_INSECURE`), else the system's roots.
fn vsphere_trust(dir: &std::path::Path) -> Result<TlsTrust> {
    if env("insecureSkipVerify").as_deref() == Some("true")
        || env("GOVMOMI_INSECURE").is_some_and(|v| v == "true" || v == "1")
    {
        return Ok(TlsTrust::Insecure);
    }
    if let Some(t) = env("thumbprint") {
        return Ok(TlsTrust::Pinned(Thumbprint::parse(&t)?));
    }
    ferry_pod::forklift::tls_trust(dir)
}

/// The storage array of `product`, from the secret's keys.
fn array(product: &str, flags: &Flags) -> Result<Box<dyn StorageArray>> {
    let host = setting(flags, "storage-hostname", "STORAGE_HOSTNAME").unwrap_or_default();
    let user = setting(flags, "storage-username", "STORAGE_USERNAME").unwrap_or_default();
    let password = env("STORAGE_PASSWORD").unwrap_or_default();
    let skip = setting(
        flags,
        "storage-skip-ssl-verification",
        "STORAGE_SKIP_SSL_VERIFICATION",
    )
    .is_some_and(|v| v == "true");
    let timeout = match setting(
        flags,
        "storage-http-timeout-seconds",
        "STORAGE_HTTP_TIMEOUT_SECONDS",
    ) {
        Some(s) => s.parse::<u64>().map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("STORAGE_HTTP_TIMEOUT_SECONDS '{s}' is not a number of seconds"),
            )
        })?,
        None => 30,
    };
    let http = HttpOptions {
        trust: if skip {
            TlsTrust::Insecure
        } else {
            TlsTrust::System
        },
        idle_timeout: Duration::from_secs(timeout.max(1)),
        ..HttpOptions::default()
    };
    Ok(match product {
        "ontap" => Box::new(Ontap::new(
            &host,
            &user,
            &password,
            &env("ONTAP_SVM").unwrap_or_default(),
            &http,
        )?),
        "pureFlashArray" => {
            let creds = match env("STORAGE_TOKEN") {
                Some(t) => Credentials::Token(t),
                None => Credentials::Password(user, password),
            };
            Box::new(FlashArray::new(
                &host,
                creds,
                &env("PURE_CLUSTER_PREFIX").unwrap_or_default(),
                &http,
            )?)
        }
        other => check_product(other).map(|()| unreachable!("checked above"))?,
    })
}

/// The pod's name (the Lease holder), as Forklift takes it: the host name.
fn holder() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| {
            // Unique enough among pods whose process ids are all 1.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("populator-{:x}", nanos ^ u128::from(std::process::id()))
        })
}

/// A number from the environment (`HOST_LEASE_DURATION_SECONDS` may end in `s`, as Forklift
/// reads it as a Go duration). `FERRY_XCOPY_POLL_MS` and `FERRY_XCOPY_RESCAN_WAIT_MS` shorten
/// Forklift's 5 s waits for tests.
fn number_env(key: &str, default: u64) -> Result<u64> {
    match env(key) {
        None => Ok(default),
        Some(s) => s.trim().trim_end_matches('s').parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{key} '{s}' is not a number"),
            )
        }),
    }
}

/// The SSH clone method's settings: the restricted key pair from Forklift's secret
/// (`SSH_PRIVATE_KEY`, `SSH_PUBLIC_KEY`, base64, both required), the host key to pin
/// (`SSH_HOST_KEY_FINGERPRINT`, optional, `SHA256:...`), and `FERRY_XCOPY_SSH_PORT` (22; the
/// tests' sshd listens elsewhere).
fn ssh_plan() -> Result<SshPlan> {
    let (Some(private), Some(public)) = (env("SSH_PRIVATE_KEY"), env("SSH_PUBLIC_KEY")) else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "ESXI_CLONE_METHOD=ssh needs SSH_PRIVATE_KEY and SSH_PUBLIC_KEY (base64) in the secret",
        ));
    };
    let port = match env("FERRY_XCOPY_SSH_PORT") {
        None => 22,
        Some(p) => p.trim().parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("FERRY_XCOPY_SSH_PORT '{p}' is not a port"),
            )
        })?,
    };
    Ok(SshPlan {
        keys: SshKeys::from_base64(&private, &public)?,
        port,
        host_key: env("SSH_HOST_KEY_FINGERPRINT"),
    })
}

/// Runs the populator; the process's exit code.
pub async fn main(flags: &Flags) -> ExitCode {
    if flags.get("version").is_some() {
        println!("populator (ferry) {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let gaps = missing(flags);
    if !gaps.is_empty() {
        for g in gaps {
            eprintln!("populator: {g}");
        }
        return ExitCode::from(2);
    }
    let product = vendor(flags).unwrap_or_default();
    if let Err(e) = check_product(&product) {
        eprintln!("populator: error: {e}");
        return ExitCode::from(2);
    }
    let method = setting(flags, "esxi-clone-method", "ESXI_CLONE_METHOD")
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "vib".into());
    let ssh = match method.as_str() {
        "vib" => None,
        "ssh" => match ssh_plan() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("populator: error: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "populator: error: ESXI_CLONE_METHOD={method} is not supported: 'vib' (Forklift's vmkfstools-wrapper VIB, over the vSphere API) or 'ssh' (the wrapper script over SSH with SSH_PRIVATE_KEY)"
            );
            return ExitCode::from(2);
        }
    };
    let owner = flags.get("owner-uid").unwrap_or("").to_owned();
    let metrics = Metrics::labelled(
        &[PROGRESS],
        "owner_uid",
        &owner,
        &[
            (
                XCOPY_USED,
                "Whether the storage array copied with XCOPY (1) or ESXi through the host (0)",
            ),
            (COPY_DURATION, "How long the copy took, in seconds"),
            (
                SOURCE_DISK_BYTES,
                "The source disk's size in bytes (type=provisioned: its capacity)",
            ),
            (
                ARRAY_INFO,
                "The storage array's vendor, product, model and version (always 1)",
            ),
        ],
    );
    let metrics = match Metrics::start_on_pod(metrics).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("populator: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let observed = Observed::default();
    let r = run(flags, &product, &method, ssh, &metrics, &observed).await;
    let (result, used) = match &r {
        Ok(o) => ("success", o.xcopy_used),
        // As far as the clone got.
        Err(_) => ("failure", observed.xcopy_used.load(Ordering::Relaxed)),
    };
    let used = if used { "1" } else { "0" };
    metrics.set(
        COPY_DURATION,
        &[
            ("result", result),
            ("storage_vendor", &product),
            ("clone_method", &method),
            ("xcopy_used", used),
            (
                "storage_protocol",
                observed.protocol.get().copied().unwrap_or("n/a"),
            ),
        ],
        started.elapsed().as_secs_f64(),
    );
    if r.is_ok() {
        metrics.set_percent(100.0);
    }
    metrics.hold_for_scrape(FINAL_SCRAPE).await;
    match r {
        Ok(o) => {
            eprintln!(
                "populator: done: {} MiB in {:.1} s ({})",
                o.bytes >> 20,
                o.elapsed.as_secs_f64(),
                if o.xcopy_used {
                    "XCOPY"
                } else {
                    "no XCOPY: a copy through the ESXi host"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("populator: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    flags: &Flags,
    product: &str,
    method: &str,
    ssh: Option<SshPlan>,
    metrics: &Arc<Metrics>,
    observed: &Observed,
) -> Result<populate::Outcome> {
    let cancel = ferry_pod::cancel_on_sigterm();
    let f = |k: &str| flags.get(k).unwrap_or("").to_owned();
    let duration = number_env("HOST_LEASE_DURATION_SECONDS", 10)?;
    if duration < 3 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("HOST_LEASE_DURATION_SECONDS {duration} is too short (3 s at least)"),
        ));
    }
    let plan = Plan {
        vm: f("source-vm-id"),
        vmdk: f("source-vmdk"),
        namespace: f("target-namespace"),
        pvc: f("owner-name"),
        migration_host: flags.get("migration-host").map(str::to_owned),
        vendor: product.to_owned(),
        clone_method: method.to_owned(),
        ssh,
        poll: Duration::from_millis(number_env("FERRY_XCOPY_POLL_MS", 5000)?),
        rescans: 5,
        rescan_wait: Duration::from_millis(number_env("FERRY_XCOPY_RESCAN_WAIT_MS", 5000)?),
        lease: LeasePlan {
            namespace: env("HOST_LEASE_NAMESPACE").unwrap_or_else(|| "openshift-mtv".into()),
            holder: holder(),
            duration,
            slots: 2,
            // Three renewals within one duration: a late one does not lose the slot.
            renew: Duration::from_millis((duration * 1000 / 3).min(3000)),
            retry: Duration::from_secs(10),
        },
    };
    populate::esxi_path(&plan.vmdk)?;
    let array = array(product, flags)?;
    let kube = Kube::in_cluster()?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let (server, port) = vsphere_address(
        &setting(flags, "vsphere-hostname", "GOVMOMI_HOSTNAME").unwrap_or_default(),
    )?;
    let user = setting(flags, "vsphere-username", "GOVMOMI_USERNAME").unwrap_or_default();
    let password = Secret::new(&env("GOVMOMI_PASSWORD").unwrap_or_default());
    let vsphere = Arc::new(
        Client::connect(&server, port, &user, password, vsphere_trust(dir.path())?).await?,
    );
    let peers = Peers {
        kube: &kube,
        vsphere: vsphere.clone(),
        array: array.as_ref(),
        metrics,
        cancel: &cancel,
        observed,
    };
    let r = populate::run(&plan, &peers).await;
    vsphere.logout().await;
    r
}

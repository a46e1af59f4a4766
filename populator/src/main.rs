//! `populator`: Forklift's volume populators. `populator openstack ARGS` (or the binary called
//! `openstack-populator`) copies a Glance image into `--volume-path`, as Forklift's
//! openstack-populator does: Keystone credentials from the environment keys of Forklift's secret,
//! the image's bytes written as they are (the controller converts non-raw images later),
//! progress served over HTTPS :8443 under Forklift's and CDI's names. `populator ovirt` (or
//! `ovirt-populator`) downloads an oVirt disk through an engine image transfer and imageio.
//! `populator vsphere-xcopy` (or `vsphere-copy-offload-populator`,
//! `vsphere-xcopy-volume-populator`) has ESXi and the storage array clone a VMware disk onto the
//! target PV's LUN (storage copy offload, [`xcopy`]).
//!
//! Called `populator` with flags only (one image serving as all of Forklift's populator
//! images, whose pods pass arguments and no command), `--engine-url` means ovirt,
//! `--image-id` openstack and `--source-vmdk` vsphere-xcopy.
//!
//! Arguments are parsed by hand, Go-flag style (`-flag=value`, `--flag value`): Forklift may
//! add flags in future versions, and an unknown one is a warning, not a failure.

mod xcopy;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ferry_pod::metrics::Metrics;
use ferry_pod::ovirt::Engine;
use transfer_core::engine::Progress;
use transfer_core::http::HttpOptions;
use transfer_core::job::{Resume, SourceSpec, TargetSpec, Transfer, TransferSpec};
use transfer_core::open::SourceOptions;
use transfer_core::source::glance::GlanceSource;
use transfer_core::source::BlockSource;
use transfer_core::{Error, ErrorKind, Result};

/// Flags Forklift passes that take a value.
const KNOWN: [&str; 25] = [
    "volume-path",
    "owner-uid",
    "pvc-size",
    "secret-name",
    "cr-name",
    "cr-namespace",
    "endpoint",
    "image-id",
    "engine-url",
    "disk-id",
    // vsphere-xcopy (Forklift's copy-offload populator)
    "source-vm-id",
    "source-vmdk",
    "target-namespace",
    "owner-name",
    "storage-vendor-product",
    "migration-host",
    "storage-hostname",
    "storage-username",
    "storage-skip-ssl-verification",
    "storage-http-timeout-seconds",
    "vsphere-hostname",
    "vsphere-username",
    "esxi-clone-method",
    "kubeconfig",
    "master",
];

/// Flags without a value.
const BOOL_FLAGS: [&str; 1] = ["version"];

/// Forklift's populator flags that carry a secret: read from the environment only, so that no
/// secret sits in a process's arguments.
const SECRET_FLAGS: [(&str, &str); 3] = [
    ("storage-password", "STORAGE_PASSWORD"),
    ("storage-token", "STORAGE_TOKEN"),
    ("vsphere-password", "GOVMOMI_PASSWORD"),
];
/// How long the finished progress stays scrapeable when no scrape has seen it yet.
const GRACE: Duration = Duration::from_secs(3);

/// The populator's flags.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    values: Vec<(String, String)>,
}

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut values = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].trim_start_matches('-');
            i += 1;
            if a.len() == args[i - 1].len() {
                // Not echoed: a stray argument may be a value meant for a secret flag.
                eprintln!("populator: warning: ignoring argument {i} (not a flag)");
                continue;
            }
            let (k, v) = match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (a.to_owned(), None),
            };
            if BOOL_FLAGS.contains(&k.as_str()) {
                values.push((k, v.unwrap_or_else(|| "true".into())));
                continue;
            }
            if !KNOWN.contains(&k.as_str()) {
                match SECRET_FLAGS.iter().find(|(f, _)| *f == k) {
                    Some((f, key)) => {
                        eprintln!(
                            "populator: warning: ignoring --{f}: secrets are read from the environment only ({key})"
                        );
                        // Its value goes too, whatever it looks like (Go's flag package takes
                        // the next argument as the value).
                        if v.is_none() && i < args.len() {
                            i += 1;
                        }
                    }
                    None => {
                        eprintln!("populator: warning: ignoring unknown flag --{k}");
                        if v.is_none() && args.get(i).is_some_and(|n| !n.starts_with('-')) {
                            i += 1;
                        }
                    }
                }
                continue;
            }
            let v = match v {
                Some(v) => v,
                None if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                None => String::new(),
            };
            values.push((k, v));
        }
        Flags { values }
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The populator these flags are for: `--engine-url` is oVirt's, `--image-id` OpenStack's,
    /// `--source-vmdk` copy offload's.
    fn implied_kind(&self) -> Option<&'static str> {
        match (
            self.get("engine-url"),
            self.get("image-id"),
            self.get("source-vmdk"),
        ) {
            (Some(_), None, None) => Some("ovirt"),
            (None, Some(_), None) => Some("openstack"),
            (None, None, Some(_)) => Some("vsphere-xcopy"),
            _ => None,
        }
    }

    fn need(&self, k: &str) -> Result<&str> {
        self.get(k)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("--{k} is required")))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        // A pod's log is a file: colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args: Vec<String> = std::env::args().collect();
    let called = PathBuf::from(args.remove(0))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = match called.as_str() {
        "openstack-populator" => "openstack".to_owned(),
        "ovirt-populator" => "ovirt".to_owned(),
        "vsphere-copy-offload-populator" | "vsphere-xcopy-volume-populator" => {
            "vsphere-xcopy".to_owned()
        }
        _ if !args.is_empty() && !args[0].starts_with('-') => args.remove(0),
        _ => String::new(),
    };
    let flags = Flags::parse(&args);
    // One image can serve both of Forklift's populator images, whose pods pass arguments only:
    // without a name or subcommand, the flags tell which populator is meant.
    let kind = if kind.is_empty() {
        flags.implied_kind().unwrap_or_default().to_owned()
    } else {
        kind
    };
    let rt = match ferry_pod::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("populator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if kind == "vsphere-xcopy" {
        return rt.block_on(xcopy::main(&flags));
    }
    let r = rt.block_on(async {
        match kind.as_str() {
            "openstack" => openstack(&flags).await,
            "ovirt" => ovirt(&flags).await,
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown populator '{other}' (openstack, ovirt, vsphere-xcopy; or call the binary openstack-populator, ovirt-populator or vsphere-copy-offload-populator)"),
            )),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("populator: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

async fn openstack(flags: &Flags) -> Result<()> {
    let owner = flags.get("owner-uid").unwrap_or("").to_owned();
    let metrics = Metrics::start_for_populator(
        &[
            "openstack_populator_progress",
            "kubevirt_cdi_openstack_populator_progress_total",
        ],
        &owner,
    )
    .await?;
    let endpoint = flags.need("endpoint")?;
    let image = flags.need("image-id")?;
    let volume = PathBuf::from(flags.need("volume-path")?);
    let pvc_size = pvc_size(flags)?;
    let keystone = url::Url::parse(endpoint).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("--endpoint is not a URL: {e}"),
        )
    })?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let opts = HttpOptions {
        trust: ferry_pod::forklift::tls_trust(dir.path())?,
        ..HttpOptions::default()
    };
    let auth = ferry_pod::forklift::glance_auth();
    let src: Arc<dyn BlockSource> =
        Arc::new(GlanceSource::open(keystone, image, &auth, &opts).await?);
    populate(SourceSpec::Opened(src), None, &volume, pvc_size, &metrics).await
}

/// `--pvc-size` in bytes (0 when not given: progress is then against the source's size).
fn pvc_size(flags: &Flags) -> Result<u64> {
    match flags.get("pvc-size") {
        Some(s) => s.parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("--pvc-size '{s}' is not a number of bytes"),
            )
        }),
        None => Ok(0),
    }
}

/// Copies `source` into `volume`, with progress against `pvc_size`, and holds 100 for a
/// scrape.
async fn populate(
    source: SourceSpec,
    name: Option<String>,
    volume: &std::path::Path,
    pvc_size: u64,
    metrics: &Arc<Metrics>,
) -> Result<()> {
    let spec = TransferSpec {
        source: Some(source),
        target: TargetSpec {
            path: volume.to_owned(),
            ..TargetSpec::default()
        },
        // Resumable on a filesystem volume: a restarted pod carries on (not on a block volume,
        // which has no room beside it). `name` stands for a source whose URL changes per run.
        resume: Resume::IfPossible,
        source_name: name,
        ..TransferSpec::default()
    };
    let progress = Arc::new(Progress::new());
    let follower = tokio::spawn(metrics.clone().follow(progress.clone(), pvc_size));
    // Kubernetes stops a pod with SIGTERM: the copy ends there as a failure (and an oVirt
    // transfer is cancelled); Forklift recreates the pod to start again.
    let cancel = ferry_pod::cancel_on_sigterm();
    let r = Transfer::new(spec).run(&cancel, Some(progress)).await;
    follower.abort();
    match r {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Err(Error::new(
                ErrorKind::Io,
                "population terminated by SIGTERM",
            ))
        }
        r => r?,
    };
    metrics.finish(GRACE).await;
    Ok(())
}

/// Forklift's ovirt-populator: an image transfer of `--disk-id` from the engine at
/// `--engine-url` (credentials `user`/`password` in the environment), read through imageio,
/// finalized on success and cancelled on failure.
async fn ovirt(flags: &Flags) -> Result<()> {
    let owner = flags.get("owner-uid").unwrap_or("").to_owned();
    let metrics = Metrics::start_for_populator(
        &["ovirt_progress", "kubevirt_cdi_ovirt_progress_total"],
        &owner,
    )
    .await?;
    let mut api = url::Url::parse(flags.need("engine-url")?).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("--engine-url is not a URL: {e}"),
        )
    })?;
    if !api.path().contains("/ovirt-engine/api") {
        api.set_path("/ovirt-engine/api");
    }
    let disk = flags.need("disk-id")?;
    let volume = PathBuf::from(flags.need("volume-path")?);
    let pvc_size = pvc_size(flags)?;
    let need = |k: &str| {
        env(k).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("the secret's key '{k}' is missing"),
            )
        })
    };
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let opts = HttpOptions {
        trust: ferry_pod::forklift::tls_trust(dir.path())?,
        ..HttpOptions::default()
    };
    let engine = Engine::login(&api, &need("user")?, &need("password")?, &opts).await?;
    let t = engine.start_download(disk).await?;
    let keep = engine.keep_alive(&t)?;
    let r = async {
        let source = SourceSpec::Uri {
            uri: format!("imageio+{}", t.url.clone().unwrap_or_default()),
            options: SourceOptions {
                http: opts.clone(),
                ..SourceOptions::default()
            },
        };
        let name = format!("oVirt disk {disk}");
        populate(source, Some(name), &volume, pvc_size, &metrics).await
    }
    .await;
    drop(keep);
    if let Err(e) = engine.end(&t.id, r.is_ok()).await {
        if r.is_ok() {
            return Err(e.context_prefix("finalizing the image transfer"));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_style_flags_parse_and_unknown_ones_are_skipped() {
        let f = Flags::parse(&args(&[
            "--volume-path=/mnt/disk.img",
            "-owner-uid",
            "u-1",
            "--future-flag=x",
            "--another-future",
            "val",
            "--pvc-size",
            "1073741824",
            "stray",
        ]));
        assert_eq!(f.get("volume-path"), Some("/mnt/disk.img"));
        assert_eq!(f.get("owner-uid"), Some("u-1"));
        assert_eq!(f.get("pvc-size"), Some("1073741824"));
        assert_eq!(f.get("future-flag"), None);
        assert!(f.need("endpoint").is_err());
        assert_eq!(f.implied_kind(), None);
    }

    #[test]
    fn the_flags_tell_which_populator_is_meant() {
        let ovirt = Flags::parse(&args(&["--engine-url=https://e", "--disk-id=d"]));
        assert_eq!(ovirt.implied_kind(), Some("ovirt"));
        let openstack = Flags::parse(&args(&["--endpoint=https://k/v3", "--image-id=i"]));
        assert_eq!(openstack.implied_kind(), Some("openstack"));
        let both = Flags::parse(&args(&["--engine-url=https://e", "--image-id=i"]));
        assert_eq!(both.implied_kind(), None);
    }
}

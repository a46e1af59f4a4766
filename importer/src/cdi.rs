//! CDI importer mode (`importer` with no subcommand): the contract of CDI's importer pod. The
//! environment is read as CDI's controller sets it, the disk goes to `/dev/cdi-block-volume`
//! when that exists, else to `/data/disk.img`, and the outcome is one line in
//! `/dev/termination-log` (JSON on success, plain text on failure) and the exit code (0 or 1).
//!
//! Progress is the counter `kubevirt_cdi_import_progress_total{ownerUID="$OWNER_UID"}` over
//! HTTPS on :8443, held at 100 until a scrape has seen it (at most a few seconds).
//!
//! For tests the fixed paths can be re-rooted under `FERRY_CDI_ROOT` (unset in a pod, where
//! the paths are CDI's own); the metrics then listen on a free loopback port written to
//! `ROOT/metrics-addr`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ferry_pod::ovirt::{Engine, KeepAlive};
use transfer_core::digest::Checksum;
use transfer_core::engine::Progress;
use transfer_core::http::{HttpOptions, TlsTrust};
use transfer_core::job::{
    Changes, Mode, Resume, SourceSpec, TargetSpec, Transfer, TransferSpec, Volume,
};
use transfer_core::open::{SourceOptions, VddkOptions};
use transfer_core::source::vddk::{connected_host, loaded_version, Secret};
use transfer_core::{Error, ErrorKind, Result};

use ferry_pod::metrics::Metrics;

/// The environment variable that re-roots CDI's fixed paths (tests only).
pub const ROOT_ENV: &str = "FERRY_CDI_ROOT";
/// The most CDI keeps of a termination message.
const MAX_MESSAGE: usize = 4096;
/// How long the finished progress stays scrapeable when no scrape has seen it yet.
const GRACE: Duration = Duration::from_secs(3);

/// CDI's fixed paths, under the test root when one is set.
struct Paths {
    root: PathBuf,
}

impl Paths {
    fn from_env() -> Paths {
        Paths {
            root: std::env::var_os(ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }

    fn at(&self, fixed: &str) -> PathBuf {
        self.root.join(fixed.trim_start_matches('/'))
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parses a Kubernetes quantity of bytes: `10Gi`, `500M`, `1.5Gi`, `1073741824`.
pub fn parse_quantity(s: &str) -> Result<u64> {
    let s = s.trim();
    let bad = || {
        invalid(format!(
            "invalid size '{s}' (a Kubernetes quantity such as 10Gi)"
        ))
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(bad()),
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut bytes = int.checked_mul(mult).ok_or_else(bad)?;
    if !frac.is_empty() {
        let f: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
        bytes = bytes
            .checked_add((f * mult as f64).ceil() as u64)
            .ok_or_else(bad)?;
    }
    Ok(bytes)
}

/// What the import did, for the termination message.
struct Done {
    preallocation: bool,
    /// VDDK's version and the host, for a vddk import.
    vddk: Option<(String, String)>,
}

/// Runs the CDI importer and returns its exit code; the outcome is also in the termination log.
pub async fn run() -> ExitCode {
    let paths = Paths::from_env();
    let result = import(&paths).await;
    let (code, message) = match &result {
        Ok(done) => {
            let mut v = serde_json::json!({
                "scratchSpaceRequired": false,
                "preallocationApplied": done.preallocation,
                "labels": {},
                "message": "Import Complete",
            });
            if let Some((version, host)) = &done.vddk {
                v["vddkInfo"] = serde_json::json!({"Version": version, "Host": host});
            }
            (ExitCode::SUCCESS, v.to_string())
        }
        Err(e) => {
            let line = crate::hints::cdi(e);
            eprintln!("importer: error: {line}");
            (ExitCode::FAILURE, line)
        }
    };
    let mut line = message.replace('\n', " ");
    if line.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    let log = paths.at("/dev/termination-log");
    if let Err(e) = std::fs::write(&log, line) {
        eprintln!("importer: cannot write {}: {e}", log.display());
    }
    code
}

/// Serves the progress counter: on CDI's :8443, or (under a test root) on a free loopback port
/// whose address is written to `ROOT/metrics-addr`.
async fn start_metrics(paths: &Paths) -> Result<Arc<Metrics>> {
    let owner = env("OWNER_UID").unwrap_or_default();
    let metrics = Metrics::new(&["kubevirt_cdi_import_progress_total"], &owner);
    let test_root = std::env::var_os(ROOT_ENV).is_some();
    let addr = if test_root {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:8443"
    };
    let bound = metrics.serve(addr).await?;
    if test_root {
        let _ = std::fs::write(paths.at("/metrics-addr"), bound.to_string());
    }
    Ok(metrics)
}

async fn import(paths: &Paths) -> Result<Done> {
    let metrics = start_metrics(paths).await?;
    let source = env("IMPORTER_SOURCE").unwrap_or_default();
    if !matches!(source.as_str(), "http" | "imageio" | "vddk" | "none") {
        return Err(invalid(format!("Unknown data source: {source}")));
    }
    let preallocation = match env("PREALLOCATION").as_deref() {
        Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(invalid(format!(
                "PREALLOCATION must be true or false, not '{v}'"
            )))
        }
        None => return Err(invalid("PREALLOCATION is required (true or false)")),
    };
    let requested = env("IMPORTER_IMAGE_SIZE")
        .map(|s| parse_quantity(&s))
        .transpose()?;
    let overhead: f64 = match env("FILESYSTEM_OVERHEAD") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|o: &f64| (0.0..1.0).contains(o))
            .ok_or_else(|| invalid(format!("FILESYSTEM_OVERHEAD '{v}' is not a fraction")))?,
        None => 0.06,
    };
    let mut sopts = SourceOptions {
        http: http_options(paths)?,
        checksum: env("IMPORTER_CHECKSUM")
            .map(|c| Checksum::parse(&c))
            .transpose()?,
        ..SourceOptions::default()
    };
    let mut checkpoints = (None, None);
    // An oVirt image transfer is finalized when the copy succeeds and cancelled otherwise.
    let mut transfer: Option<(Engine, String, KeepAlive)> = None;
    let uri = match source.as_str() {
        "none" => {
            let size = requested
                .ok_or_else(|| invalid("IMPORTER_IMAGE_SIZE is required for a blank disk"))?;
            format!("synth://zero?size={size}")
        }
        "http" => {
            env("IMPORTER_ENDPOINT").ok_or_else(|| invalid("IMPORTER_ENDPOINT is required"))?
        }
        "imageio" => {
            let api = env("IMPORTER_ENDPOINT")
                .ok_or_else(|| invalid("IMPORTER_ENDPOINT (the engine's API URL) is required"))?;
            let api = url::Url::parse(&api)
                .map_err(|e| invalid(format!("IMPORTER_ENDPOINT is not a URL: {e}")))?;
            let need = |k: &str| {
                env(k).ok_or_else(|| invalid(format!("{k} is required for an imageio import")))
            };
            let engine = Engine::login(
                &api,
                &need("IMPORTER_ACCESS_KEY_ID")?,
                &need("IMPORTER_SECRET_KEY")?,
                &sopts.http,
            )
            .await?;
            let t = engine.start_download(&need("IMPORTER_DISK_ID")?).await?;
            let url = format!("imageio+{}", t.url.clone().unwrap_or_default());
            let keep = engine.keep_alive(&t)?;
            transfer = Some((engine, t.id, keep));
            url
        }
        "vddk" => {
            checkpoints = (
                env("IMPORTER_CURRENT_CHECKPOINT"),
                env("IMPORTER_PREVIOUS_CHECKPOINT"),
            );
            // CDI marks the cutover delta (taken from the stopped VM) as final; the copy is
            // the same, so it is only checked and logged.
            match env("IMPORTER_FINAL_CHECKPOINT").as_deref() {
                None | Some("false") => {}
                Some("true") => tracing::info!("final checkpoint: this delta is the cutover"),
                Some(other) => {
                    return Err(invalid(format!(
                        "IMPORTER_FINAL_CHECKPOINT must be true or false, not '{other}'"
                    )))
                }
            }
            sopts.vddk = vddk_options(paths, checkpoints.0.as_deref())?;
            "vddk:///".to_owned()
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("data source {other} is not supported by ferry's CDI mode yet"),
            ))
        }
    };
    if env("IMPORTER_CONTENTTYPE").is_some_and(|c| c != "kubevirt") {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "only content type kubevirt (a disk image) is supported",
        ));
    }
    let job = Job {
        uri,
        checkpoints,
        source,
        requested,
        overhead,
        preallocation,
    };
    let r = copy_from(paths, &job, &sopts, &metrics).await;
    if let Some((engine, id, keep)) = transfer {
        drop(keep);
        if let Err(e) = engine.end(&id, r.is_ok()).await {
            if r.is_ok() {
                return Err(e.context_prefix("finalizing the image transfer"));
            }
        }
    }
    r
}

/// What an import copies, once its source is known.
struct Job {
    uri: String,
    /// Current and previous checkpoints (warm vddk imports).
    checkpoints: (Option<String>, Option<String>),
    /// `IMPORTER_SOURCE`.
    source: String,
    requested: Option<u64>,
    overhead: f64,
    preallocation: bool,
}

/// Copies the job's source into the volume.
async fn copy_from(
    paths: &Paths,
    job: &Job,
    sopts: &SourceOptions,
    metrics: &Arc<Metrics>,
) -> Result<Done> {
    let block = paths.at("/dev/cdi-block-volume");
    let is_block = block.exists();
    let (current, previous) = job.checkpoints.clone();
    let spec = TransferSpec {
        source: Some(SourceSpec::Uri {
            uri: job.uri.clone(),
            options: sopts.clone(),
        }),
        target: TargetSpec {
            path: if is_block {
                block
            } else {
                paths.at("/data/disk.img")
            },
            preallocate: job.preallocation,
            volume: Some(Volume {
                overhead: job.overhead,
                requested: job.requested,
            }),
            file_mode: Some(0o660),
            ..TargetSpec::default()
        },
        // A warm migration's later copies are deltas: vSphere's changed areas since the
        // previous checkpoint, written in place.
        mode: match previous {
            Some(_) => Mode::Delta(Changes::FromSource),
            None => Mode::Full,
        },
        checkpoint: current,
        previous_checkpoint: previous,
        // Always resumable on a filesystem volume: a pod restarted after an eviction or an OOM
        // kill carries on where the last one stopped. An oVirt transfer's URL changes each
        // time, so its copy is named by the disk.
        resume: Resume::IfPossible,
        source_name: (job.source == "imageio")
            .then(|| env("IMPORTER_DISK_ID").map(|d| format!("oVirt disk {d}")))
            .flatten(),
        ..TransferSpec::default()
    };
    let progress = Arc::new(Progress::new());
    let follower = tokio::spawn(metrics.clone().follow(progress.clone(), 0));
    // Kubernetes stops a pod with SIGTERM: the copy ends there, a disk this run created is
    // removed and (for imageio) the transfer is cancelled, like any other failure.
    let cancel = ferry_pod::cancel_on_sigterm();
    let r = Transfer::new(spec).run(&cancel, Some(progress)).await;
    follower.abort();
    match r {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Err(Error::new(ErrorKind::Io, "import terminated by SIGTERM"))
        }
        r => r?,
    };
    metrics.finish(GRACE).await;
    let vddk = (job.source == "vddk").then(|| {
        // The ESXi host VDDK read from, as CDI reports it; the vCenter when VDDK never said.
        let host = connected_host().unwrap_or_else(|| {
            sopts
                .vddk
                .params
                .iter()
                .find(|(k, _)| k == "server")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        });
        (loaded_version().unwrap_or_default(), host)
    });
    Ok(Done {
        preallocation: job.preallocation,
        vddk,
    })
}

/// The vddk:// parameters from CDI's variables: the vCenter at `IMPORTER_ENDPOINT`, the VM by
/// `IMPORTER_UUID`, the disk `IMPORTER_BACKING_FILE`, read at the current checkpoint (a
/// snapshot), VDDK from CDI's mount.
fn vddk_options(paths: &Paths, snapshot: Option<&str>) -> Result<VddkOptions> {
    let need =
        |k: &str| env(k).ok_or_else(|| invalid(format!("{k} is required for a vddk import")));
    let endpoint = need("IMPORTER_ENDPOINT")?;
    let url = url::Url::parse(&endpoint)
        .map_err(|e| invalid(format!("IMPORTER_ENDPOINT is not a URL: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| invalid("IMPORTER_ENDPOINT has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let mut params = vec![
        ("server".to_owned(), host),
        (
            "port".to_owned(),
            url.port_or_known_default().unwrap_or(443).to_string(),
        ),
        ("user".to_owned(), need("IMPORTER_ACCESS_KEY_ID")?),
        ("uuid".to_owned(), need("IMPORTER_UUID")?),
        ("file".to_owned(), need("IMPORTER_BACKING_FILE")?),
        ("thumbprint".to_owned(), need("IMPORTER_THUMBPRINT")?),
        (
            "libdir".to_owned(),
            paths.at(VDDK_DIR).to_string_lossy().into_owned(),
        ),
    ];
    let config = paths.at("/vddk-args/vddk-config-file");
    if config.is_file() {
        params.push(("config".to_owned(), config.to_string_lossy().into_owned()));
    }
    if let Some(s) = snapshot {
        params.push(("snapshot".to_owned(), s.to_owned()));
    }
    Ok(VddkOptions {
        params,
        password: Some(Secret::new(&need("IMPORTER_SECRET_KEY")?)),
        changed_since: None,
        timeout: None,
        sessions: None,
    })
}

/// Where CDI mounts VDDK.
const VDDK_DIR: &str = "/opt/vmware-vix-disklib-distrib";

/// The VDDK directory of a CDI vddk import, when this process is one (for the re-execution
/// with VDDK's lib64 on LD_LIBRARY_PATH).
pub fn vddk_libdir() -> Option<PathBuf> {
    (env("IMPORTER_SOURCE").as_deref() == Some("vddk")).then(|| Paths::from_env().at(VDDK_DIR))
}

/// TLS trust and extra headers from CDI's variables.
fn http_options(paths: &Paths) -> Result<HttpOptions> {
    let trust = if env("INSECURE_TLS").as_deref() == Some("true") {
        TlsTrust::Insecure
    } else if let Some(dir) = env("IMPORTER_CERT_DIR") {
        TlsTrust::CaBundle(paths.at(&dir))
    } else {
        TlsTrust::System
    };
    let mut headers = Vec::new();
    for n in 0.. {
        let Some(h) = env(&format!("IMPORTER_EXTRA_HEADER_{n}")) else {
            break;
        };
        headers.push(HttpOptions::parse_header(&h)?);
    }
    Ok(HttpOptions {
        trust,
        headers,
        ..HttpOptions::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("10Gi").unwrap(), 10 << 30);
        assert_eq!(parse_quantity("500M").unwrap(), 500_000_000);
        assert_eq!(parse_quantity("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_quantity("1048576").unwrap(), 1 << 20);
        for bad in ["", "Gi", "10GB", "1..5Gi", "-1", "99999999999999999999Pi"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}

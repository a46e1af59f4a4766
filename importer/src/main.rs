//! `importer`: copy and verify virtual disks (`importer copy|verify ...`). Errors are one line on
//! stderr and a non-zero exit; success of `copy` is one JSON line on stdout.

mod cdi;
mod checksum_cmd;
mod copy_cmd;
mod delta_args;
mod hints;
mod progress;
mod serve;
mod vddk_args;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use transfer_core::digest::Checksum;
use transfer_core::engine::verify::{verify, VerifyOptions, VerifyResult};
use transfer_core::http::{HttpOptions, Thumbprint, TlsTrust};
use transfer_core::open::{dirty_ranges, open_source, SourceOptions};
use transfer_core::size::parse_size;
use transfer_core::source::retry::RetryPolicy;
use vddk_args::VddkArgs;

#[derive(Parser)]
#[command(
    name = "importer",
    version,
    about = "ferry: move virtual-machine disks into KubeVirt"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level filter (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info", env = "FERRY_LOG")]
    log_level: String,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Copy SOURCE (nbd://, nbd+unix://, http(s)://, vddk://, file://, synth://, or a path) to
    /// TARGET (a file or a block device).
    Copy(copy_cmd::CopyArgs),
    /// Copy every disk of an OVA (or those given with --map) to its own target.
    CopyOva(copy_cmd::CopyOvaArgs),
    /// Compare SOURCE and TARGET logically; exit 0 when equal, 1 with the first differing offset.
    Verify(VerifyArgs),
    /// Print SOURCE's extents as JSON ([{"start","length","kind"}], kind data|zero|hole), or
    /// with --dirty its changed ranges ([{"start","length"}]; oVirt imageio tickets, NBD dirty
    /// bitmaps, vSphere CBT for vddk://).
    Extents(ExtentsArgs),
    /// Print a per-range CRC32 manifest of SOURCE as JSON
    /// ({"size","range_size","ranges":[{"offset","length","crc32"}]}), reading only its data.
    Checksum(checksum_cmd::ChecksumArgs),
    /// Run the transfer daemon: an HTTP/JSON API on a Unix socket for many transfers (see
    /// docs/daemon.md).
    Serve(serve::ServeArgs),
    /// Talk to a running daemon: add, get, list, cancel or wait for transfers.
    Transfers(serve::client::TransfersArgs),
}

#[derive(Args)]
pub(crate) struct Tuning {
    /// Source connections (handles); capped by what the source allows (NBD: multi-conn).
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    requests: usize,
    /// Bytes per request (256K-4M; default: what the source prefers, 1M for NBD and files, 4M
    /// for imageio and ranged HTTP).
    #[arg(long, value_parser = size_arg)]
    pub(crate) request_size: Option<u64>,
    /// Times a failed read is tried again on a fresh connection (0: never). Refusals (403,
    /// 404, a refused login), bad data and checksum mismatches are never retried.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Seconds before the first retry; each further one waits twice as long, up to 30 s.
    #[arg(long, default_value_t = 1.0, value_parser = seconds_arg)]
    retry_delay: f64,
    /// Seconds a request may wait without a byte from the server (NBD, HTTP, imageio) before
    /// the connection is given up and the read retried on a new one. A slow server that keeps
    /// sending never trips it. VDDK: how long opening, one read or closing may take.
    #[arg(long, default_value_t = 120.0, value_parser = seconds_arg)]
    idle_timeout: f64,
}

impl Tuning {
    pub(crate) fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            delay: std::time::Duration::from_secs_f64(self.retry_delay),
        }
    }

    /// Sets the retry policy and the idle timeouts of `opts`.
    pub(crate) fn apply(&self, opts: &mut SourceOptions) {
        opts.retry = self.retry();
        // 0 would time out every request at once: take it as the shortest timeout.
        let idle = std::time::Duration::from_secs_f64(self.idle_timeout.max(0.1));
        opts.nbd.idle_timeout = idle;
        opts.http.idle_timeout = idle;
        opts.vddk.timeout = Some(idle);
    }
}

fn seconds_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds from 0 to 3600")),
    }
}

#[derive(Args)]
pub(crate) struct HttpArgs {
    /// CA certificates (PEM file or directory) to trust instead of the system roots.
    #[arg(long, value_name = "PATH")]
    cacert: Option<std::path::PathBuf>,
    /// Do not verify the server's TLS certificate.
    #[arg(long, conflicts_with_all = ["cacert", "thumbprint"])]
    insecure: bool,
    /// Trust exactly the server certificate with this SHA-256 or SHA-1 fingerprint (01:23:...).
    #[arg(long, value_name = "HEX", conflicts_with = "cacert")]
    thumbprint: Option<String>,
    /// How to read an http(s):// SOURCE: auto (a disk image file) or imageio (an oVirt ticket URL).
    #[arg(long, default_value = "auto", value_parser = ["auto", "imageio"])]
    source_kind: String,
    /// How to reach an imageio daemon: auto (its local Unix socket when it offers one and runs
    /// on this host, else HTTP(S)) or tcp (HTTP(S) only).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcp"])]
    imageio_transport: String,
    /// Verify the received body against ALGO:HEX (md5, sha1, sha256, sha512); reads one stream.
    #[arg(long, value_name = "ALGO:HEX")]
    checksum: Option<String>,
    /// File holding a KubeVirt VirtualMachineExport token (sent as x-kubevirt-export-token).
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// Extra request header 'Name: value' (repeatable; sent to the source's own origin only).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// How to read the source's bytes: auto (an image file or HTTP object is detected by its
    /// magic: qcow2, VMDK, OVA; NBD, imageio and VDDK serve raw disks), or raw, qcow2, vmdk,
    /// ova (on any source).
    #[arg(long, default_value = "auto", value_parser = ["auto", "raw", "qcow2", "vmdk", "ova"])]
    format: String,
    /// The disk of an OVA to read: its index in the OVF's DiskSection (from 0), its diskId or
    /// its file name. Needed when the OVA holds more than one.
    #[arg(long, value_name = "INDEX|NAME")]
    pub(crate) disk: Option<String>,
}

impl HttpArgs {
    /// The source options for `uri` with these HTTP arguments, `vddk` and `connections`.
    pub(crate) fn source_options(
        &self,
        uri: &str,
        vddk: &VddkArgs,
        connections: usize,
    ) -> transfer_core::Result<SourceOptions> {
        Ok(SourceOptions {
            http: self.options()?,
            checksum: self.checksum.as_deref().map(Checksum::parse).transpose()?,
            connections,
            kind: self.source_kind.parse()?,
            imageio_transport: self.imageio_transport.parse()?,
            vddk: vddk.options(uri, self.thumbprint.as_deref())?,
            format: self.format.parse()?,
            disk: self.disk.as_deref().map(str::parse).transpose()?,
            ..SourceOptions::default()
        })
    }

    fn options(&self) -> transfer_core::Result<HttpOptions> {
        let trust = if self.insecure {
            TlsTrust::Insecure
        } else if let Some(t) = &self.thumbprint {
            TlsTrust::Pinned(Thumbprint::parse(t)?)
        } else if let Some(p) = &self.cacert {
            TlsTrust::CaBundle(p.clone())
        } else {
            TlsTrust::System
        };
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|h| HttpOptions::parse_header(h))
            .collect::<Result<_, _>>()?;
        if let Some(p) = &self.token_file {
            let token = std::fs::read_to_string(p).map_err(|e| {
                transfer_core::Error::io(format!("reading token file {}", p.display()), e)
            })?;
            // The token is a secret: checked like a header value, never echoed.
            headers.push(HttpOptions::parse_header(&format!(
                "x-kubevirt-export-token: {}",
                token.trim()
            ))?);
        }
        Ok(HttpOptions {
            trust,
            headers,
            ..HttpOptions::default()
        })
    }
}

#[derive(Args)]
struct ExtentsArgs {
    /// Source URI.
    source: String,
    /// Print the ranges changed since the previous checkpoint: an imageio ticket's
    /// `context=dirty`, or an NBD export's qemu dirty bitmap (--dirty-bitmap NAME).
    #[arg(long)]
    dirty: bool,
    /// The qemu dirty bitmap of an NBD source (qemu-nbd -B NAME) for --dirty.
    #[arg(long, value_name = "NAME")]
    dirty_bitmap: Option<String>,
    /// For --dirty of a vddk:// source: the change id or snapshot moref vSphere counts changes
    /// from.
    #[arg(long, value_name = "ID")]
    previous_checkpoint: Option<String>,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    vddk: VddkArgs,
}

#[derive(Args)]
struct VerifyArgs {
    /// First disk (any source URI).
    source: String,
    /// Second disk (any source URI or path).
    target: String,
    #[command(flatten)]
    tuning: Tuning,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    vddk: VddkArgs,
}

pub(crate) fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => b.with_target(false).init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Whether this is CDI's importer pod: CDI sets `IMPORTER_SOURCE` and passes klog-style flags
/// (`-v=1`), never one of our subcommands.
fn cdi_pod() -> bool {
    std::env::var_os("IMPORTER_SOURCE").is_some()
        && !std::env::args().skip(1).any(|a| {
            matches!(
                a.as_str(),
                "copy" | "copy-ova" | "verify" | "extents" | "checksum" | "help" | "--help" | "-h"
            )
        })
}

fn main() -> ExitCode {
    let cli = if cdi_pod() {
        // CDI's flags are its own (klog verbosity): they are not ours to parse.
        Cli::parse_from(["importer"])
    } else {
        Cli::parse()
    };
    init_logging(&cli);
    let Some(cmd) = cli.cmd else {
        if std::env::var_os("IMPORTER_SOURCE").is_none() {
            eprintln!(
                "importer: a subcommand is required (copy, copy-ova, verify, extents, checksum), or CDI's IMPORTER_* environment; see --help"
            );
            return ExitCode::from(2);
        }
        // No subcommand: CDI's importer pod, configured by its environment.
        if let Some(libdir) = cdi::vddk_libdir() {
            if let Err(e) = vddk_args::reexec_with_library_path(&libdir) {
                eprintln!("importer: error: {}", hints::cdi(&e));
                return ExitCode::FAILURE;
            }
        }
        return match ferry_pod::runtime() {
            Ok(rt) => rt.block_on(cdi::run()),
            Err(e) => {
                eprintln!("importer: cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        };
    };
    if let Cmd::Transfers(a) = cmd {
        return match serve::client::run(a) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("importer: error: {}", hints::cli(&e));
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::Serve(a) = cmd {
        let rt = match ferry_pod::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("importer: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(serve::run(a)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("importer: error: {}", hints::cli(&e));
                ExitCode::FAILURE
            }
        };
    }
    let (source, vddk) = match &cmd {
        Cmd::Copy(a) => (a.source(), &a.o.vddk),
        Cmd::CopyOva(a) => (a.source(), &a.o.vddk),
        Cmd::Verify(a) => (&a.source, &a.vddk),
        Cmd::Extents(a) => (&a.source, &a.vddk),
        Cmd::Checksum(a) => (&a.source, &a.vddk),
        Cmd::Serve(_) | Cmd::Transfers(_) => unreachable!("run above"),
    };
    if let Err(e) = vddk.reexec_for_library_path(source) {
        eprintln!("importer: error: {}", hints::cli(&e));
        return ExitCode::FAILURE;
    }
    let rt = match ferry_pod::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("importer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cmd {
            Cmd::Copy(a) => copy_cmd::run(a).await,
            Cmd::CopyOva(a) => copy_cmd::run_ova(a).await,
            Cmd::Verify(a) => run_verify(a).await,
            Cmd::Extents(a) => run_extents(a).await,
            Cmd::Checksum(a) => checksum_cmd::run(a).await,
            Cmd::Serve(_) | Cmd::Transfers(_) => unreachable!("run above"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    transfer_core::source::vddk::shutdown();
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("importer: error: {}", hints::cli(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run_verify(a: VerifyArgs) -> transfer_core::Result<ExitCode> {
    let mut opts = a
        .http
        .source_options(&a.source, &a.vddk, a.tuning.connections)?;
    a.tuning.apply(&mut opts);
    let x = open_source(&a.source, &opts).await?;
    let mut topts = a
        .http
        .source_options(&a.target, &a.vddk, a.tuning.connections)?;
    a.tuning.apply(&mut topts);
    // --disk picks a disk of the first (an OVA); the second is compared with it.
    topts.disk = None;
    let y = open_source(&a.target, &topts).await?;
    let vopts = VerifyOptions {
        connections: a.tuning.connections,
        requests: a.tuning.requests.min(8),
        request_size: a
            .tuning
            .request_size
            .map_or(x.caps().preferred_request, |r| r as usize),
        ..VerifyOptions::default()
    };
    match verify(x, y, &vopts).await? {
        VerifyResult::Equal => {
            println!("{}", serde_json::json!({"equal": true}));
            Ok(ExitCode::SUCCESS)
        }
        VerifyResult::SizeDiffers(p, q) => {
            eprintln!("importer: disks differ: sizes {p} and {q}");
            println!(
                "{}",
                serde_json::json!({"equal": false, "source_size": p, "target_size": q})
            );
            Ok(ExitCode::from(1))
        }
        VerifyResult::DiffersAt(off) => {
            eprintln!("importer: disks differ at offset {off}");
            println!(
                "{}",
                serde_json::json!({"equal": false, "first_difference": off})
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Extents are asked for in windows of this size (sources answer per range).
const EXTENTS_WINDOW: u64 = 1 << 30;

async fn run_extents(a: ExtentsArgs) -> transfer_core::Result<ExitCode> {
    if !a.dirty && (a.dirty_bitmap.is_some() || a.previous_checkpoint.is_some()) {
        return Err(transfer_core::Error::new(
            transfer_core::ErrorKind::InvalidInput,
            "--dirty-bitmap and --previous-checkpoint choose changed ranges: add --dirty",
        ));
    }
    let mut opts = a.http.source_options(&a.source, &a.vddk, 1)?;
    opts.nbd.dirty_bitmap = a.dirty_bitmap.clone();
    opts.vddk.changed_since = a.previous_checkpoint.clone();
    let list: Vec<serde_json::Value> = if a.dirty {
        dirty_ranges(&a.source, &opts)
            .await?
            .into_iter()
            .map(|(start, length)| serde_json::json!({"start": start, "length": length}))
            .collect()
    } else {
        let source = open_source(&a.source, &opts).await?;
        let mut merged: Vec<(u64, u64, &'static str)> = Vec::new();
        let mut offset = 0;
        while offset < source.size() {
            let len = EXTENTS_WINDOW.min(source.size() - offset);
            for e in source.extents(offset, len).await? {
                let kind = e.kind.name();
                match merged.last_mut() {
                    Some((s, l, k)) if *k == kind && *s + *l == e.offset => *l += e.len,
                    _ => merged.push((e.offset, e.len, kind)),
                }
            }
            offset += len;
        }
        merged
            .into_iter()
            .map(|(start, length, kind)| {
                serde_json::json!({"start": start, "length": length, "kind": kind})
            })
            .collect()
    };
    println!("{}", serde_json::Value::Array(list));
    Ok(ExitCode::SUCCESS)
}

//! `importer copy SOURCE TARGET` and `importer copy-ova OVA [TARGET_DIR]`: one disk, or
//! every disk of an OVA each to its own target.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use transfer_core::engine::{Progress, ProgressObserver};
use transfer_core::format::{DiskChoice, Format};
use transfer_core::io::IoEngineKind;
use transfer_core::job::{
    CancelToken, EngineOptions, Resume, SourceSpec, TargetSpec, Transfer, TransferSpec,
};
use transfer_core::open::ova_listing;
use transfer_core::target::target_path;
use transfer_core::{Error, ErrorKind};

use crate::delta_args::DeltaArgs;
use crate::vddk_args::VddkArgs;
use crate::{progress, size_arg, HttpArgs, Tuning};

#[derive(Args)]
pub(crate) struct CopyArgs {
    /// Source URI.
    source: String,
    /// Target path (or file:///path).
    target: String,
    #[command(flatten)]
    pub(crate) o: CopyOpts,
}

impl CopyArgs {
    pub(crate) fn source(&self) -> &String {
        &self.source
    }
}

impl CopyOvaArgs {
    pub(crate) fn source(&self) -> &String {
        &self.source
    }
}

/// `importer copy-ova OVA [TARGET_DIR] [--map DISK=TARGET]...`
#[derive(Args)]
pub(crate) struct CopyOvaArgs {
    /// The OVA (a path, file:// or http(s):// URL).
    source: String,
    /// Where disks without a --map go, each as NAME.img (NAME: its file in the OVA without
    /// the extension).
    target_dir: Option<std::path::PathBuf>,
    /// Copy disk INDEX or NAME (its diskId or file) to TARGET (a file or a block device);
    /// repeatable. With maps and no TARGET_DIR, only the mapped disks are copied.
    #[arg(long = "map", value_name = "DISK=TARGET")]
    map: Vec<String>,
    #[command(flatten)]
    pub(crate) o: CopyOpts,
}

/// What `copy` and `copy-ova` share.
#[derive(Args)]
pub(crate) struct CopyOpts {
    #[command(flatten)]
    pub(crate) tuning: Tuning,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    #[command(flatten)]
    pub(crate) vddk: VddkArgs,
    #[command(flatten)]
    delta: DeltaArgs,
    /// In-flight byte budget (all request buffers together).
    #[arg(long, default_value = "16M", value_parser = size_arg)]
    memory: u64,
    /// Allocate the whole target file.
    #[arg(long)]
    preallocate: bool,
    /// Write with O_DIRECT.
    #[arg(long)]
    direct: bool,
    /// The target already reads as zeros: never zero it.
    #[arg(long)]
    target_is_zero: bool,
    /// I/O engine for target writes (auto: inline on tmpfs, io_uring with --direct where it
    /// works, else pwrite threads).
    #[arg(long, default_value = "auto", value_parser = ["auto", "pwrite", "uring", "inline"])]
    io_engine: String,
    /// Writer threads of the pwrite engine.
    #[arg(long, default_value_t = 2)]
    writer_threads: usize,
    /// Show progress (a bar on a terminal, log lines otherwise).
    #[arg(long)]
    progress: bool,
    /// Keep a journal of the finished work ranges (TARGET.ferry-journal, or next to
    /// --state-file), so that a copy run again after an interruption skips what is on the
    /// target already. The journal is removed when the copy completes.
    #[arg(long)]
    resume: bool,
    /// After the copy, read source and target again and compare them (zero-aware, in
    /// parallel); a difference fails the copy.
    #[arg(long)]
    verify: bool,
    /// Read zero runs shorter than SIZE together with the data around them; 0 never reads a
    /// zero range. Without it, a source whose every request is costly (imageio) reads gaps
    /// under 1 MiB in fragmented work ranges, and other sources read no zeros.
    #[arg(long, value_parser = size_arg)]
    read_gaps: Option<u64>,
}

/// `importer copy SOURCE TARGET`.
pub(crate) async fn run(a: CopyArgs) -> transfer_core::Result<ExitCode> {
    copy_one(&a.source, &a.target, &a.o, None, None).await
}

/// Copies `source` to `target`; `disk` overrides --disk, and `label` is added to the summary
/// line.
async fn copy_one(
    source: &str,
    target: &str,
    a: &CopyOpts,
    disk: Option<DiskChoice>,
    label: Option<(&str, serde_json::Value)>,
) -> transfer_core::Result<ExitCode> {
    let spec = a.spec(source, target, disk)?;
    let progress = a.progress.then(|| Arc::new(Progress::new()));
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let reporter = progress
        .clone()
        .map(|p| tokio::spawn(progress::report(p, terminal, started)));
    let observer = progress.clone().map(|p| p as Arc<dyn ProgressObserver>);
    let r = Transfer::new(spec).run(&CancelToken::new(), observer).await;
    if let (Some(rep), Some(p)) = (reporter, &progress) {
        rep.abort();
        if r.is_ok() {
            progress::finish(p, terminal, started);
        } else if terminal {
            eprintln!();
        }
    }
    let s = r?;
    let stats = &s.stats;
    let mut line = serde_json::json!({
        "bytes_total": stats.bytes_total,
        "bytes_data": stats.bytes_data,
        "bytes_zero": stats.bytes_zero,
        "bytes_resumed": stats.bytes_resumed,
        "seconds": (stats.seconds * 1000.0).round() / 1000.0,
        "mib_per_s": (stats.mib_per_s() * 10.0).round() / 10.0,
        "connections": stats.connections,
        "io_engine": stats.io_engine,
        "retries": s.retries,
        "bytes_reread": s.bytes_reread,
    });
    if let Some(n) = s.delta_bytes {
        line["delta_bytes"] = n.into();
    }
    if s.verified {
        line["verified"] = true.into();
    }
    if let Some((k, v)) = label {
        line[k] = v;
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

impl CopyOpts {
    /// The transfer these flags describe.
    fn spec(
        &self,
        source: &str,
        target: &str,
        disk: Option<DiskChoice>,
    ) -> transfer_core::Result<TransferSpec> {
        let mut sopts = self
            .http
            .source_options(source, &self.vddk, self.tuning.connections)?;
        if disk.is_some() {
            sopts.disk = disk;
        }
        if self.delta.is_delta()
            && (!matches!(sopts.format, Format::Auto | Format::Raw) || sopts.disk.is_some())
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a delta applies to a raw disk: --format and --disk cannot be combined with it",
            ));
        }
        self.tuning.apply(&mut sopts);
        sopts.nbd.dirty_bitmap = self.delta.dirty_bitmap();
        let mut spec = TransferSpec {
            source: Some(SourceSpec::Uri {
                uri: source.to_owned(),
                options: sopts,
            }),
            target: TargetSpec {
                path: target_path(target)?,
                preallocate: self.preallocate,
                direct: self.direct,
                target_is_zero: self.target_is_zero,
                ..TargetSpec::default()
            },
            resume: if self.resume {
                Resume::Required
            } else {
                Resume::Off
            },
            verify: self.verify,
            engine: EngineOptions {
                connections: self.tuning.connections,
                requests: self.tuning.requests,
                request_size: self.tuning.request_size.map(|r| r as usize),
                memory: self.memory as usize,
                io_engine: self.io_engine.parse::<IoEngineKind>()?,
                writer_threads: self.writer_threads,
                read_gaps: self.read_gaps,
                shared_memory: None,
            },
            ..TransferSpec::default()
        };
        self.delta.apply(&mut spec)?;
        Ok(spec)
    }
}

/// `importer copy-ova`: every disk of the OVA (or the mapped ones), one after the other, each
/// with the whole engine; one summary line per disk, with its "disk" id.
pub(crate) async fn run_ova(a: CopyOvaArgs) -> transfer_core::Result<ExitCode> {
    if a.o.http.disk.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "copy-ova copies every disk: choose targets with --map DISK=TARGET, not --disk",
        ));
    }
    if a.o.delta.is_delta() || a.o.resume {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "copy-ova copies whole disks: deltas and --resume are for copy",
        ));
    }
    let sopts =
        a.o.http
            .source_options(&a.source, &a.o.vddk, a.o.tuning.connections)?;
    let listing = ova_listing(&a.source, &sopts).await?;
    let mut maps: Vec<(usize, String)> = Vec::new();
    for m in &a.map {
        let (disk, target) = m.split_once('=').ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("--map {m}: expected DISK=TARGET"),
            )
        })?;
        let d = listing.choose(Some(&disk.parse()?))?;
        if maps.iter().any(|(i, _)| *i == d.index) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("--map: disk {} is mapped twice", d.disk_id),
            ));
        }
        maps.push((d.index, target.to_string()));
    }
    let mut jobs: Vec<(usize, String)> = Vec::new();
    for d in &listing.disks {
        let target = match (maps.iter().find(|(i, _)| *i == d.index), &a.target_dir) {
            (Some((_, t)), _) => t.clone(),
            (None, Some(dir)) => dir.join(image_name(&d.file)).display().to_string(),
            (None, None) if !maps.is_empty() => continue,
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "copy-ova needs a TARGET_DIR, or --map DISK=TARGET for each disk to copy",
                ))
            }
        };
        if jobs.iter().any(|(_, t)| *t == target) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("two disks would be copied to {target}: map them apart with --map"),
            ));
        }
        jobs.push((d.index, target));
    }
    if let Some(dir) = &a.target_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    for (index, target) in jobs {
        let d = &listing.disks[index];
        tracing::info!(disk = %d.disk_id, file = %d.file, target = %target, "copying");
        copy_one(
            &a.source,
            &target,
            &a.o,
            Some(DiskChoice::Index(index)),
            Some(("disk", d.disk_id.clone().into())),
        )
        .await
        .map_err(|e| e.context_prefix(format!("disk {} ({})", d.disk_id, d.file)))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The target file name of an OVA member: its base name up to the first dot, plus `.img`.
fn image_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("disk");
    format!("{stem}.img")
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_names() {
        assert_eq!(super::image_name("vm-disk1.vmdk"), "vm-disk1.img");
        assert_eq!(super::image_name("./d/x.vmdk.gz"), "x.img");
        assert_eq!(super::image_name(".hidden"), "disk.img");
    }
}

//! `importer copy SOURCE TARGET` and `importer copy-ova OVA [TARGET_DIR]`: one disk, or
//! every disk of an OVA each to its own target.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Args;
use transfer_core::engine::journal::{self, identity};
use transfer_core::engine::verify::{verify, VerifyOptions, VerifyResult};
use transfer_core::engine::{copy, CopyOptions, Journal, Progress};
use transfer_core::format::{DiskChoice, Format};
use transfer_core::io::IoEngineKind;
use transfer_core::open::{open_source, ova_listing, SourceOptions};
use transfer_core::target::{open_target, target_path, TargetOptions};
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
    /// I/O engine for target writes.
    #[arg(long, default_value = "auto", value_parser = ["auto", "pwrite", "uring"])]
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
    /// Read zero runs shorter than SIZE together with the data around them (default 0: zero
    /// ranges are never read). Fewer, larger requests help sources with a high cost per
    /// request, such as imageio tickets of fragmented disks.
    #[arg(long, default_value = "0", value_parser = size_arg)]
    read_gaps: u64,
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
    let io_engine = a.io_engine.parse::<IoEngineKind>()?;
    let mut sopts = a
        .http
        .source_options(source, &a.vddk, a.tuning.connections)?;
    if disk.is_some() {
        sopts.disk = disk;
    }
    if a.delta.is_delta() {
        // Changed ranges are offsets of the bytes the source serves, not of a disk inside an
        // image file.
        if !matches!(sopts.format, Format::Auto | Format::Raw) || sopts.disk.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a delta applies to a raw disk: --format and --disk cannot be combined with it",
            ));
        }
        sopts.format = Format::Raw;
    }
    sopts.retry = a.tuning.retry();
    let retries = sopts.retry_stats.clone();
    sopts.nbd_dirty_bitmap = a.delta.dirty_bitmap();
    let source_uri = source;
    let source = open_source(source, &sopts).await?;
    let path = target_path(target)?;
    let mut plan = a
        .delta
        .plan(source_uri, source.size(), &path, &sopts)
        .await?;
    // A file this run creates is removed again if the copy fails, so a failed import never
    // leaves a full-size file behind that looks like a finished disk (unless a resume journal
    // records what is on it).
    let created = std::fs::symlink_metadata(&path).is_err();
    let journal = if a.resume {
        let jpath = a.delta.journal_path(&path)?;
        if created {
            // A journal without its target describes nothing.
            let _ = std::fs::remove_file(&jpath);
        }
        let id = identity(&*source, None, plan.delta.as_ref());
        let (j, resuming) = Journal::open(&jpath, &id)?;
        Some((Arc::new(j), resuming))
    } else {
        None
    };
    let resuming = journal.as_ref().is_some_and(|(_, r)| *r);
    let topts = TargetOptions {
        preallocate: a.preallocate,
        direct: a.direct,
        target_is_zero: a.target_is_zero,
        in_place: plan.delta.is_some() || resuming,
    };
    let delta_bytes = plan.delta.as_ref().map(|d| d.bytes());
    let target = open_target(&path, source.size(), &topts)?;
    let progress = a.progress.then(|| Arc::new(Progress::new()));
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let reporter = progress
        .clone()
        .map(|p| tokio::spawn(progress::report(p, terminal, started)));
    let opts = CopyOptions {
        connections: a.tuning.connections,
        requests: a.tuning.requests,
        request_size: a
            .tuning
            .request_size
            .map_or(source.caps().preferred_request, |r| r as usize),
        memory: a.memory as usize,
        io_engine,
        writer_threads: a.writer_threads,
        direct: a.direct,
        progress,
        read_gaps: a.read_gaps,
        delta: plan.delta.take().map(Arc::new),
        journal: journal.as_ref().map(|(j, _)| j.clone()),
        ..CopyOptions::default()
    };
    let stats = copy(source, target, &opts).await;
    if let (Some(r), Some(p)) = (reporter, &opts.progress) {
        r.abort();
        if stats.is_ok() {
            progress::finish(p, terminal, started);
        } else if terminal {
            eprintln!();
        }
    }
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            if journal::after_failure(&path, created, journal.as_ref().map(|(j, _)| &**j)) {
                tracing::info!("what was copied is kept: run the copy again with --resume");
            }
            return Err(e);
        }
    };
    if a.verify {
        check_copy(source_uri, a, &sopts, &path).await?;
    }
    plan.record(stats.bytes_total)?;
    let mut line = serde_json::json!({
        "bytes_total": stats.bytes_total,
        "bytes_data": stats.bytes_data,
        "bytes_zero": stats.bytes_zero,
        "bytes_resumed": stats.bytes_resumed,
        "seconds": (stats.seconds * 1000.0).round() / 1000.0,
        "mib_per_s": (stats.mib_per_s() * 10.0).round() / 10.0,
        "connections": stats.connections,
        "io_engine": stats.io_engine,
        "retries": retries.retries.load(Ordering::Relaxed),
        "bytes_reread": retries.bytes_reread.load(Ordering::Relaxed),
    });
    if let Some(n) = delta_bytes {
        line["delta_bytes"] = n.into();
    }
    if a.verify {
        line["verified"] = true.into();
    }
    if let Some((k, v)) = label {
        line[k] = v;
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// `copy --verify`: the target read back equals the source read again (of a delta, only the
/// changed ranges are the copy's doing, but the whole disk must still match the source).
async fn check_copy(
    source: &str,
    a: &CopyOpts,
    sopts: &SourceOptions,
    target: &std::path::Path,
) -> transfer_core::Result<()> {
    let x = open_source(source, sopts).await?;
    let y = open_source(&target.display().to_string(), &SourceOptions::default()).await?;
    let vopts = VerifyOptions {
        connections: a.tuning.connections,
        requests: a.tuning.requests.min(8),
        ..VerifyOptions::default()
    };
    let mismatch = |what: String| {
        transfer_core::Error::new(
            transfer_core::ErrorKind::Mismatch,
            format!("verify: {what}"),
        )
    };
    match verify(x, y, &vopts).await? {
        VerifyResult::Equal => Ok(()),
        VerifyResult::SizeDiffers(p, q) => Err(mismatch(format!(
            "the source has {p} bytes but the target {q}"
        ))),
        VerifyResult::DiffersAt(off) => Err(mismatch(format!(
            "the target differs from the source at offset {off}"
        ))),
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

//! `importer checksum DISK`: a per-range CRC32 manifest (JSON) of any source or target, so two
//! sides of a migration can be compared without moving the data twice.

use std::process::ExitCode;

use clap::Args;
use transfer_core::engine::checksum::{manifest, to_json, ChecksumOptions};
use transfer_core::open::open_source;

use crate::vddk_args::VddkArgs;
use crate::{size_arg, HttpArgs, Tuning};

#[derive(Args)]
pub struct ChecksumArgs {
    /// The disk (any source URI or path).
    pub source: String,
    /// Bytes per range of the manifest.
    #[arg(long, default_value = "64M", value_parser = size_arg)]
    pub range_size: u64,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub vddk: VddkArgs,
}

/// Prints the manifest of `a.source` on one line.
pub async fn run(a: ChecksumArgs) -> transfer_core::Result<ExitCode> {
    let mut opts = a
        .http
        .source_options(&a.source, &a.vddk, a.tuning.connections)?;
    a.tuning.apply(&mut opts);
    let src = open_source(&a.source, &opts).await?;
    let size = src.size();
    let copts = ChecksumOptions {
        range_size: a.range_size,
        connections: a.tuning.connections,
        request_size: a
            .tuning
            .request_size
            .map_or(src.caps().preferred_request, |r| r as usize),
    };
    let sums = manifest(src, &copts).await?;
    println!("{}", to_json(size, copts.range_size, &sums));
    Ok(ExitCode::SUCCESS)
}

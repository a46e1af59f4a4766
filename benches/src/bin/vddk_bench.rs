//! `vddk-bench`: `importer copy vddk://...` against the way CDI reads VDDK today (one request
//! in flight, sequential, a new buffer per block), both through ferry's fake VDDK
//! (`vddk-sys/fake`, built as `libvddk_fake.so`) over the same raw disk, side by side,
//! alternating, several rounds; prints medians and ratios.
//!
//! Two settings of the fake: 2 ms latency per read (what a vCenter NFC round trip costs) and no
//! latency (our overhead per call). Requests are 2 MiB in both readers (vCenter's NFC limit).
//! The baseline is this program itself run with `--baseline`: VixDiskLib_Read of 2 MiB into a
//! freshly allocated buffer, write it to the target, next block; fdatasync at the end. The no-
//! latency setting also copies the raw file itself with the importer (`file` row): the
//! difference is what the VDDK path costs.
//!
//! A third setting models VMware's NBD/NFC transport (150 MB/s per handle, 3 ms per read) and
//! runs the importer with 1 to 4 connections (VDDK handles) on the one disk against the same
//! CDI-style baseline, on the same bandwidth-limited fake.
//!
//! Run: `cargo build --release -p importer -p benches -p vddk-fake && ./target/release/vddk-bench
//! --rounds 3` (options: `--size 1G`, `--rounds N`, `--dir /var/tmp/ferry-vddk-bench`).

mod util;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use util::{arg, rounds, table, Row};
use vddk_sys::disk::{Disk, DiskSpec, Password, SECTOR};

const THUMBPRINT: &str = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD";
const PASSWORD: &str = "bench-password";
const BLOCK: usize = 2 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = if args.get(1).map(String::as_str) == Some("--baseline") {
        baseline(&args[2..])
    } else {
        bench()
    };
    if let Err(e) = r {
        eprintln!("vddk-bench: {e}");
        std::process::exit(1);
    }
}

/// `--baseline LIBDIR DISK TARGET`: the CDI-style sequential copy.
fn baseline(a: &[String]) -> Result<(), String> {
    let [libdir, disk, target] = a else {
        return Err("usage: vddk-bench --baseline LIBDIR DISK TARGET".into());
    };
    let vddk = vddk_sys::session::init(Path::new(libdir), None).map_err(|e| e.to_string())?;
    let spec = DiskSpec {
        server: "vcenter.bench".into(),
        port: 443,
        nfc_port: 902,
        user: "bench".into(),
        password: Password::new(PASSWORD),
        thumbprint: Some(THUMBPRINT.into()),
        vm: "moref=vm-1".into(),
        snapshot: None,
        transports: None,
        path: disk.clone(),
        timeout: std::time::Duration::from_secs(120),
    };
    let d = Disk::open(vddk, &spec).map_err(|e| e.to_string())?;
    let size = d.info().capacity * SECTOR;
    let out = File::create(target).map_err(|e| format!("{target}: {e}"))?;
    out.set_len(size).map_err(|e| e.to_string())?;
    let mut off = 0u64;
    while off < size {
        let n = (BLOCK as u64).min(size - off) as usize;
        // A new buffer for every block, as CDI's reader does.
        let mut buf = vec![0u8; n];
        d.read(off / SECTOR, &mut buf).map_err(|e| e.to_string())?;
        out.write_all_at(&buf, off).map_err(|e| e.to_string())?;
        off += n as u64;
    }
    out.sync_data().map_err(|e| e.to_string())?;
    d.close();
    vddk_sys::session::exit(std::time::Duration::from_secs(5));
    Ok(())
}

fn bench() -> Result<(), String> {
    let size = transfer_core::size::parse_size(&arg("--size", "1G")).map_err(|e| e.to_string())?;
    let rounds_n: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-vddk-bench"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.parent().ok_or("no binary directory")?.to_owned();
    let fake = bin.join("libvddk_fake.so");
    let importer = bin.join("importer");
    for p in [&fake, &importer] {
        if !p.exists() {
            return Err(format!(
                "{} is missing: cargo build --release -p importer -p vddk-fake",
                p.display()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let libdir = dir.join("vddk");
    let lib64 = libdir.join("lib64");
    let root = dir.join("datastores");
    let disk_dir = root.join("datastore1/bench");
    for d in [&lib64, &disk_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::os::unix::fs::symlink(&fake, lib64.join("libvixDiskLib.so.8"))
        .map_err(|e| e.to_string())?;
    let raw = disk_dir.join("bench.vmdk");
    write_random(&raw, size)?;
    let disk = "[datastore1] bench/bench.vmdk";
    let out = dir.join("target.img");
    println!(
        "vddk-bench: {} MiB fully allocated disk, 2 MiB requests, {rounds_n} rounds",
        size >> 20
    );

    let env = |latency_us: u32, bandwidth: u64| -> Vec<String> {
        vec![
            format!("FAKE_VDDK_ROOT={}", root.display()),
            format!("FAKE_VDDK_LATENCY_US={latency_us}"),
            format!("FAKE_VDDK_BANDWIDTH={bandwidth}"),
            format!("FAKE_VDDK_PASSWORD={PASSWORD}"),
            format!("VDDK_PASSWORD={PASSWORD}"),
        ]
    };
    let importer_row = |latency_us: u32, bandwidth: u64, connections: usize| -> Row {
        let mut a = env(latency_us, bandwidth);
        a.extend([
            importer.display().to_string(),
            "copy".into(),
            "--log-level=warn".into(),
            format!(
                "vddk://bench@vcenter.bench/?vm=moref=vm-1&thumbprint={THUMBPRINT}&libdir={}",
                libdir.display()
            ),
            "--vddk".into(),
            format!("file={disk}"),
            "--vddk".into(),
            format!("connections={connections}"),
            out.display().to_string(),
        ]);
        let name = match connections {
            1 => "importer (pipelined)".to_owned(),
            n => format!("importer, {n} connections"),
        };
        (name, "env".into(), a)
    };
    let baseline_row = |latency_us: u32, bandwidth: u64| -> Row {
        let mut a = env(latency_us, bandwidth);
        a.extend([
            exe.display().to_string(),
            "--baseline".into(),
            libdir.display().to_string(),
            disk.into(),
            out.display().to_string(),
        ]);
        ("CDI-style (1 in flight)".into(), "env".into(), a)
    };

    let mut summary = Vec::new();
    for (label, latency) in [("2 ms per read", 2000), ("no latency", 0)] {
        println!("\n== fake VDDK, {label} ==");
        let mut rows = vec![importer_row(latency, 0, 1), baseline_row(latency, 0)];
        if latency == 0 {
            rows.push((
                "importer (the raw file)".into(),
                importer.display().to_string(),
                vec![
                    "copy".into(),
                    raw.display().to_string(),
                    out.display().to_string(),
                ],
            ));
        }
        let med = rounds(&rows, rounds_n, &out, 2 * size, &[], &mut |_| {
            Ok(String::new())
        })?;
        table(&rows, &med, size);
        let calls = size.div_ceil(BLOCK as u64) as f64;
        let line = if latency == 0 {
            format!(
                "{label}: CDI-style/importer {:.2}x; importer via VDDK vs the raw file: {:+.1} us per 2 MiB call",
                med[1].0 / med[0].0,
                (med[0].0 - med[2].0) / calls * 1e6
            )
        } else {
            format!(
                "{label}: CDI-style/importer {:.2}x (goal >= 5x)",
                med[1].0 / med[0].0
            )
        };
        println!("{line}");
        summary.push(line);
    }
    // What VMware's NBD/NFC transport gives one connection (100-160 MiB/s; MTV measured 162
    // MiB/s for one cold disk, CDI's importer about 142 MB/s): 150 MB/s per handle and 3 ms per
    // read, and how more handles on one disk scale against CDI's one-request loop.
    let (label, latency, bandwidth) = (
        "NFC-like, 150 MB/s per handle, 3 ms per read",
        3000,
        150_000_000,
    );
    println!("\n== fake VDDK, {label} ==");
    let mut rows = vec![baseline_row(latency, bandwidth)];
    rows.extend((1..=4).map(|n| importer_row(latency, bandwidth, n)));
    let med = rounds(&rows, rounds_n, &out, 2 * size, &[], &mut |_| {
        Ok(String::new())
    })?;
    table(&rows, &med, size);
    let speedups: Vec<String> = (1..rows.len())
        .map(|k| format!("{k}: {:.2}x", med[0].0 / med[k].0))
        .collect();
    let line = format!(
        "{label}: CDI-style/importer by connections {}",
        speedups.join(", ")
    );
    println!("{line}");
    summary.push(line);
    println!();
    for l in summary {
        println!("{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes `size` bytes of pseudo-random data (every block allocated).
fn write_random(path: &Path, size: u64) -> Result<(), String> {
    let mut f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| e.to_string())
}

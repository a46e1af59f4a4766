//! `delta-bench`: what applying a warm-migration delta costs next to a full copy of the same
//! snapshot. The disk is `nbdkit sparse-random size=4G percent=50` over a Unix socket (about
//! 2 GB of data); the delta touches 1% of it in 64 KiB areas scattered over the whole disk
//! (a `--changed-areas` file, as a controller hands it over). Each round makes a full copy into
//! a fresh file (recording checkpoint s1), then applies the delta in place (s1 -> s2); prints
//! medians and the ratio. Goal: the delta costs at most 3% of the full copy.
//!
//! Run: `cargo build --release -p importer -p benches && ./target/release/delta-bench` (7 rounds,
//! the method of `benches::method`; options: `--size 4G`, `--percent 1`, `--rounds N`,
//! `--dir /var/tmp/ferry-delta-bench`).

mod util;

use std::path::PathBuf;

use util::{arg, median, prepare_rounds, sparse_random_nbd, timed_rss, Measured};

const AREA: u64 = 64 << 10;

fn main() {
    if let Err(e) = bench() {
        eprintln!("delta-bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let size = transfer_core::size::parse_size(&arg("--size", "4G")).map_err(|e| e.to_string())?;
    let percent: f64 = arg("--percent", "1").parse().map_err(|_| "bad --percent")?;
    let rounds_n: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-delta-bench"));
    let (importer, nbdkit, uri) = sparse_random_nbd(&dir, size)?;

    // 1% of the disk in 64 KiB areas, spread evenly with a pseudo-random jitter.
    let areas = ((size as f64 * percent / 100.0) / AREA as f64)
        .round()
        .max(1.0) as u64;
    let stride = size / areas;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut list = Vec::new();
    for i in 0..areas {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let jitter = (x % (stride / AREA).max(1)) * AREA;
        list.push(format!(
            r#"{{"start":{},"length":{AREA}}}"#,
            i * stride + jitter
        ));
    }
    let areas_file = dir.join("areas.json");
    std::fs::write(&areas_file, format!("[{}]", list.join(","))).map_err(|e| e.to_string())?;
    let target = dir.join("disk.img");
    let t = target.display().to_string();
    println!(
        "delta-bench: {} MiB disk (half data), delta of {areas} areas of 64 KiB ({} MiB, {percent}%), {rounds_n} rounds",
        size >> 20,
        (areas * AREA) >> 20
    );

    prepare_rounds(&dir, 2 * size, rounds_n)?;
    let exe = importer.display().to_string();
    let server = nbdkit.0.id();
    let log = dir.join("importer.log");
    // One step of a round: the run, and the CPU nbdkit spent on it.
    let step = |args: &[String], out: &std::path::Path| -> Result<(Measured, f64), String> {
        let before = benches::method::cpu_seconds(server).unwrap_or(0.0);
        let m = timed_rss(&exe, args, out, &log)?;
        Ok((
            m,
            benches::method::cpu_seconds(server).unwrap_or(0.0) - before,
        ))
    };
    let mut full = Vec::new();
    let mut delta = Vec::new();
    for r in 0..rounds_n {
        let args: Vec<String> = ["copy", &uri, &t, "--checkpoint", "s1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let _ = std::fs::remove_file(format!("{t}.checkpoints.json"));
        let f = step(&args, &target)?;
        let args: Vec<String> = [
            "copy",
            &uri,
            &t,
            "--changed-areas",
            &areas_file.display().to_string(),
            "--checkpoint",
            "s2",
            "--previous-checkpoint",
            "s1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `timed_rss` deletes its output path first: give it one that is not the target.
        let d = step(&args, &dir.join("none"))?;
        println!(
            "round {}/{rounds_n}  full copy {:6.2} s (+sync {:6.2} s, cpu {:.2} s, nbdkit {:.2} s)   delta {:6.3} s (+sync {:6.3} s, cpu {:.2} s, nbdkit {:.2} s)",
            r + 1,
            f.0.secs,
            f.0.synced,
            f.0.cpu,
            f.1,
            d.0.secs,
            d.0.synced,
            d.0.cpu,
            d.1
        );
        full.push(f);
        delta.push(d);
    }
    let summary = |v: &[(Measured, f64)]| {
        let of = |g: fn(&(Measured, f64)) -> f64| v.iter().map(g).collect::<Vec<f64>>();
        (
            benches::method::min(&of(|m| m.0.synced)),
            median(of(|m| m.0.synced)),
            median(of(|m| m.0.cpu)),
            median(of(|m| m.1)),
        )
    };
    let (fmin, f, fcpu, fk) = summary(&full);
    let (dmin, d, dcpu, dk) = summary(&delta);
    println!(
        "\n{:<10} {:>12} {:>15} {:>7} {:>11}",
        "step", "min +sync s", "median +sync s", "cpu s", "nbdkit cpu"
    );
    println!(
        "{:<10} {fmin:>12.3} {f:>15.3} {fcpu:>7.2} {fk:>11.2}",
        "full copy"
    );
    println!(
        "{:<10} {dmin:>12.3} {d:>15.3} {dcpu:>7.2} {dk:>11.2}",
        "delta"
    );
    println!(
        "\nmedians (+sync): full copy {f:.2} s, delta {d:.3} s -> the delta costs {:.1}% of the full copy (goal <= 3%)",
        d / f * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

//! `resume-bench`: what the resume journal costs. The same 4 GiB copy
//! (`nbdkit sparse-random size=4G percent=50` over a Unix socket, about 2 GB of data) into a
//! fresh file, with `--resume` (the journal flushed and rewritten every second) and without,
//! alternating, side by side; prints medians and the overhead. Goal: at most 3% slower.
//!
//! Run: `cargo build --release -p importer -p benches && ./target/release/resume-bench --rounds 5`
//! (options: `--size 4G`, `--rounds N`, `--dir /var/tmp/ferry-resume-bench`).

mod util;

use std::path::PathBuf;

use util::{arg, median, sparse_random_nbd, timed};

fn main() {
    if let Err(e) = bench() {
        eprintln!("resume-bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let size = transfer_core::size::parse_size(&arg("--size", "4G")).map_err(|e| e.to_string())?;
    let rounds_n: usize = arg("--rounds", "5").parse().map_err(|_| "bad --rounds")?;
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-resume-bench"));
    let (importer, _nbdkit, uri) = sparse_random_nbd(&dir, size)?;
    let target = dir.join("disk.img");
    let t = target.display().to_string();
    let exe = importer.display().to_string();
    println!(
        "resume-bench: {} MiB disk (half data) into a fresh file, journal off vs on, {rounds_n} rounds",
        size >> 20
    );

    let (mut off, mut on) = (Vec::new(), Vec::new());
    for r in 0..rounds_n {
        let plain: Vec<String> = ["copy", &uri, &t].iter().map(|s| s.to_string()).collect();
        let mut journaled = plain.clone();
        journaled.push("--resume".into());
        // Alternate which goes first, so neither always meets a warmer cache.
        let (a, b) = if r % 2 == 0 {
            (
                timed(&exe, &plain, &target)?,
                timed(&exe, &journaled, &target)?,
            )
        } else {
            let b = timed(&exe, &journaled, &target)?;
            (timed(&exe, &plain, &target)?, b)
        };
        println!(
            "round {}/{rounds_n}  journal off {:6.2} s (+sync {:6.2} s)   journal on {:6.2} s (+sync {:6.2} s)",
            r + 1,
            a.0,
            a.1,
            b.0,
            b.1
        );
        off.push(a.1);
        on.push(b.1);
    }
    let (a, b) = (median(off), median(on));
    println!(
        "\nmedians (+sync): journal off {a:.2} s, on {b:.2} s -> the journal costs {:+.1}% (goal <= 3%)",
        (b / a - 1.0) * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

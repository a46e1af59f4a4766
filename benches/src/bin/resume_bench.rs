//! `resume-bench`: what the resume journal costs. The same 4 GiB copy
//! (`nbdkit sparse-random size=4G percent=50` over a Unix socket, about 2 GB of data) into a
//! fresh file, with `--resume` (the journal flushed and rewritten every second) and without,
//! alternating, side by side; prints medians and the overhead. Goal: at most 3% slower.
//!
//! Run: `cargo build --release -p importer -p benches && ./target/release/resume-bench` (7 rounds;
//! the method of `benches::method`; options: `--size 4G`, `--rounds N`,
//! `--dir /var/tmp/ferry-resume-bench`).

mod util;

use std::path::PathBuf;

use util::{arg, rounds, sparse_random_nbd, table, Row};

fn main() {
    if let Err(e) = bench() {
        eprintln!("resume-bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let size = transfer_core::size::parse_size(&arg("--size", "4G")).map_err(|e| e.to_string())?;
    let rounds_n: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-resume-bench"));
    let (importer, nbdkit, uri) = sparse_random_nbd(&dir, size)?;
    let target = dir.join("disk.img");
    let t = target.display().to_string();
    let exe = importer.display().to_string();
    println!(
        "resume-bench: {} MiB disk (half data) into a fresh file, journal off vs on, {rounds_n} rounds",
        size >> 20
    );
    let plain: Vec<String> = ["copy", &uri, &t].iter().map(|s| s.to_string()).collect();
    let mut journaled = plain.clone();
    journaled.push("--resume".into());
    let rows: Vec<Row> = vec![
        ("journal off".into(), exe.clone(), plain),
        ("journal on (--resume)".into(), exe, journaled),
    ];
    let med = rounds(
        &rows,
        rounds_n,
        &target,
        2 * size,
        &[nbdkit.0.id()],
        &mut |_| Ok(String::new()),
    )?;
    table(&rows, &med, size);
    let (a, b) = (med[0].1, med[1].1);
    println!(
        "\nmedians (+sync): journal off {a:.2} s, on {b:.2} s -> the journal costs {:+.1}% (goal <= 3%)",
        (b / a - 1.0) * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

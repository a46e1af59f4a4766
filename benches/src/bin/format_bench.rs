//! `format-bench`: reading image formats next to `qemu-img convert`. The same 4 GiB half-sparse
//! disk as a streamOptimized VMDK inside an OVA and as a compressed qcow2; for each,
//! `importer copy IMAGE out.raw` against the peer's way into a raw file:
//!
//! - OVA: `tar -xf vm.ova -C extract disk.vmdk && qemu-img convert -O raw extract/disk.vmdk
//!   out.raw` (this way needs scratch space as large as the VMDK; both steps are timed, each with
//!   its `sync`, and reported apart and summed). qemu-img can also read the member in place
//!   through a `json:` filename (a raw driver at the member's offset, as virt-v2v does);
//!   that is timed too, as its own row (`qemu-img json: in place`);
//! - qcow2: `qemu-img convert -O raw disk.qcow2 out.raw`.
//!
//! Every run writes a fresh `out.raw` (deleted and synced first) and is timed until the `sync`
//! after it, under GNU time for its peak RSS; ferry and the peer alternate which goes first each
//! round. Round 1's outputs are checked: `qemu-img compare` of each ferry output (and of the
//! peer's OVA output) against the peer's qcow2 output. Prints a line per round, then medians,
//! MiB/s over the virtual size, peak RSS, the peer's scratch space and the ratios
//! qemu-img/ferry. Goal: ferry at least as fast as qemu-img (ratio >= 1), with no scratch space.
//! If `importer copy` fails on an image or its output differs, the error is printed, that
//! column is skipped from then on (the peer still runs) and the bench exits non-zero at the end.
//!
//! The inputs are made once, from a raw file written here: about half of its 1 MiB chunks are
//! holes, and each 4 KiB block of the others is 1-2 KiB of pseudo-random bytes then text, which
//! deflate shrinks about 2.5x, like a real disk. The VMDK and qcow2 come from
//! `qemu-img convert`, the OVA from `tar` (the OVF descriptor first, as the OVF spec requires).
//! That takes a while, so inputs found in `--dir` with a stamp of the same size are reused.
//!
//! Run: `cargo build --release -p importer -p benches && ./target/release/format-bench --rounds 3`
//! (options: `--size 4G` (a multiple of 1 MiB), `--rounds N`, `--dir /var/tmp/ferry-format-bench`,
//! `--keep` to keep the inputs for the next run instead of removing the directory at the end,
//! `--keep-raw` to keep the raw file the inputs are made from).

mod util;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use util::{arg, flag, median, prepare_rounds, timed_rss, Measured, GNU_TIME};

/// Holes and data are chosen per chunk of this many bytes.
const CHUNK: u64 = 1 << 20;
/// Data is made per block of this many bytes: pseudo-random bytes, then text.
const BLOCK: usize = 4096;
/// The inputs' stamp file and its first words; a change in how inputs are made bumps the version.
const STAMP: &str = "inputs.stamp";
const STAMP_VERSION: &str = "format-bench inputs v1";
/// The largest member a ustar archive holds (11 octal digits).
const USTAR_MAX: u64 = 0o777_7777_7777;
const MIB: f64 = (1u64 << 20) as f64;

fn main() {
    if let Err(e) = bench() {
        eprintln!("format-bench: {e}");
        std::process::exit(1);
    }
}

/// One input image and how the peer reads it.
struct Image {
    /// Shown in the output.
    name: &'static str,
    /// In file names.
    tag: &'static str,
    /// What both tools read.
    path: PathBuf,
    /// The peer must first extract the VMDK with tar.
    in_ova: bool,
    /// Where `disk.vmdk` is inside the OVA (offset, size), for qemu-img's `json:` filename.
    member: Option<(u64, u64)>,
}

/// One image's runs over the rounds.
#[derive(Default)]
struct Runs {
    /// `importer copy`, one per round until it fails.
    ferry: Vec<Measured>,
    /// Why `importer copy` failed; it is not run again.
    ferry_failed: Option<String>,
    /// The peer's `tar -x` (OVA only), one per round.
    tar: Vec<Measured>,
    /// The peer's `qemu-img convert`, one per round.
    convert: Vec<Measured>,
    /// The peer's `qemu-img convert` of the member in place (`json:`; OVA only), one per round.
    json: Vec<Measured>,
}

/// Paths shared by every run.
struct Bench {
    importer: String,
    dir: PathBuf,
    /// The raw file every run writes.
    out: PathBuf,
    /// Where the peer extracts the VMDK from the OVA.
    extract: PathBuf,
    /// Each run's stderr and GNU time report.
    logs: PathBuf,
    rounds: usize,
}

fn bench() -> Result<(), String> {
    let size = transfer_core::size::parse_size(&arg("--size", "4G")).map_err(|e| e.to_string())?;
    let rounds: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let dir = std::path::absolute(arg("--dir", "/var/tmp/ferry-format-bench"))
        .map_err(|e| format!("--dir: {e}"))?;
    if size == 0 || !size.is_multiple_of(CHUNK) || rounds == 0 {
        return Err("--size must be a positive multiple of 1 MiB, --rounds at least 1".into());
    }
    let importer = util::importer()?;
    if !importer.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p importer -p benches",
            importer.display()
        ));
    }
    for tool in [GNU_TIME, "qemu-img", "tar"] {
        if !Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Err(format!("{tool} is needed"));
        }
    }

    let vmdk_bytes = inputs(&dir, size, flag("--keep-raw"))?;
    let b = Bench {
        importer: importer.display().to_string(),
        out: dir.join("out.raw"),
        extract: dir.join("extract"),
        logs: dir.join("logs"),
        dir: dir.clone(),
        rounds,
    };
    for d in [&b.extract, &b.logs] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let images = [
        Image {
            name: "OVA",
            tag: "ova",
            path: dir.join("vm.ova"),
            in_ova: true,
            member: Some(vmdk_member(&dir.join("vm.ova"))?),
        },
        Image {
            name: "qcow2",
            tag: "qcow2",
            path: dir.join("disk.qcow2"),
            in_ova: false,
            member: None,
        },
    ];
    println!(
        "format-bench: {} MiB disk (half data) as OVA (streamOptimized VMDK, {} MiB) and compressed qcow2 ({} MiB), into a fresh raw file, ferry vs qemu-img, {rounds} rounds",
        size >> 20,
        vmdk_bytes >> 20,
        file_len(&images[1].path)? >> 20
    );

    // Memory a VM touches first is slow: twice the raw output, written and deleted first.
    prepare_rounds(&dir, 2 * size, rounds)?;
    let mut runs: [Runs; 2] = Default::default();
    for r in 0..rounds {
        for (img, runs) in images.iter().zip(runs.iter_mut()) {
            b.round(img, runs, r)?;
        }
        if r == 0 {
            b.check_round1(size, &images, &mut runs)?;
        }
    }

    println!(
        "\nmedians over {rounds} rounds; +sync: until the data is on disk; MiB/s of the {} MiB virtual size (+sync)",
        size >> 20
    );
    println!(
        "{:<6} {:<26} {:>6} {:>8} {:>8} {:>7} {:>6} {:>13} {:>12}",
        "image", "tool", "min s", "s", "+sync s", "MiB/s", "cpu s", "peak RSS MiB", "scratch MiB"
    );
    for (img, runs) in images.iter().zip(&runs) {
        let scratch = if img.in_ova { vmdk_bytes } else { 0 };
        summary(img, runs, size, scratch);
    }
    println!();
    for (img, runs) in images.iter().zip(&runs) {
        ratios(img, runs, vmdk_bytes);
    }

    let failed: Vec<String> = images
        .iter()
        .zip(&runs)
        .filter_map(|(img, r)| Some(format!("{}: {}", img.name, r.ferry_failed.as_ref()?)))
        .collect();
    if flag("--keep") {
        let _ = fs::remove_file(&b.out);
        let _ = fs::remove_dir_all(&b.extract);
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    if !failed.is_empty() {
        return Err(format!("ferry failed on {}", failed.join("; ")));
    }
    Ok(())
}

impl Bench {
    /// One round of `img`: ferry and the peer, in the round's order, and one line.
    fn round(&self, img: &Image, runs: &mut Runs, r: usize) -> Result<(), String> {
        let (ferry, peer) = if r.is_multiple_of(2) {
            let f = self.ferry(img, runs, r)?;
            (f, self.peer(img, runs, r)?)
        } else {
            let p = self.peer(img, runs, r)?;
            (self.ferry(img, runs, r)?, p)
        };
        let ferry = ferry.map_or_else(|| "failed, skipped".to_string(), |m| show(&m));
        let split = match peer.0 {
            Some(t) => format!(
                " = tar {:.2} s + convert {:.2} s (+sync each)",
                t.synced, peer.1.synced
            ),
            None => String::new(),
        };
        let json = match (img.member, runs.json.last()) {
            (Some(_), Some(m)) => format!("   qemu-img json: {}", show(m)),
            _ => String::new(),
        };
        println!(
            "round {}/{}  {:<5}  ferry {ferry}   qemu-img {}{split}{json}",
            r + 1,
            self.rounds,
            img.name,
            show(&sum(peer.0, peer.1)),
        );
        Ok(())
    }

    /// `importer copy IMAGE out.raw`; `None` once it has failed (the error is printed once).
    fn ferry(&self, img: &Image, runs: &mut Runs, r: usize) -> Result<Option<Measured>, String> {
        if runs.ferry_failed.is_some() {
            return Ok(None);
        }
        let args = vec![
            "copy".to_string(),
            img.path.display().to_string(),
            self.out.display().to_string(),
        ];
        let log = self.logs.join(format!("{}-ferry.log", img.tag));
        match timed_rss(&self.importer, &args, &self.out, &log) {
            Ok(m) => {
                runs.ferry.push(m);
                self.keep_round1(img, "ferry", r)?;
                Ok(Some(m))
            }
            Err(e) => {
                eprintln!(
                    "format-bench: {}: {e}\n  (ferry's {} column is skipped from now on)",
                    img.name, img.name
                );
                runs.ferry_failed = Some(e);
                Ok(None)
            }
        }
    }

    /// The peer: for an OVA `tar -x` of the VMDK (then deleted) and `qemu-img convert` of it,
    /// else `qemu-img convert` of the image; returns (tar, convert).
    fn peer(
        &self,
        img: &Image,
        runs: &mut Runs,
        r: usize,
    ) -> Result<(Option<Measured>, Measured), String> {
        if let Some((offset, size)) = img.member {
            // What virt-v2v does: the vmdk driver over a raw window of the tar, no scratch.
            let json = serde_json::json!({
                "driver": "vmdk",
                "file": {"driver": "raw", "offset": offset, "size": size,
                         "file": {"driver": "file", "filename": img.path.display().to_string()}},
            });
            let args = [
                "convert".to_string(),
                "-O".into(),
                "raw".into(),
                format!("json:{json}"),
                self.out.display().to_string(),
            ];
            let log = self.logs.join("ova-qemu-img-json.log");
            runs.json
                .push(timed_rss("qemu-img", &args, &self.out, &log)?);
        }
        let _ = fs::remove_file(&self.out);
        let vmdk = self.extract.join("disk.vmdk");
        let tar = if img.in_ova {
            let args = [
                "-xf",
                &img.path.display().to_string(),
                "-C",
                &self.extract.display().to_string(),
                "disk.vmdk",
            ]
            .map(String::from);
            let log = self.logs.join("ova-tar.log");
            let m = timed_rss("tar", &args, &vmdk, &log)?;
            runs.tar.push(m);
            Some(m)
        } else {
            None
        };
        let source = if img.in_ova { &vmdk } else { &img.path };
        let args = [
            "convert",
            "-O",
            "raw",
            &source.display().to_string(),
            &self.out.display().to_string(),
        ]
        .map(String::from);
        let log = self.logs.join(format!("{}-qemu-img.log", img.tag));
        let convert = timed_rss("qemu-img", &args, &self.out, &log)?;
        runs.convert.push(convert);
        let _ = fs::remove_file(&vmdk);
        self.keep_round1(img, "qemu-img", r)?;
        Ok((tar, convert))
    }

    /// In round 1, moves `out.raw` aside for [`Bench::check_round1`].
    fn keep_round1(&self, img: &Image, tool: &str, r: usize) -> Result<(), String> {
        if r > 0 {
            return Ok(());
        }
        let to = self.round1(img.tag, tool);
        fs::rename(&self.out, &to).map_err(|e| format!("{}: {e}", to.display()))
    }

    fn round1(&self, tag: &str, tool: &str) -> PathBuf {
        self.dir.join(format!("round1-{tag}-{tool}.raw"))
    }

    /// Checks round 1's outputs against qemu-img's from the qcow2, then deletes them all. A
    /// ferry output that differs counts as a failure of `importer copy` on that image (its
    /// column is skipped from then on); the peers' two outputs differing is an error.
    fn check_round1(&self, size: u64, images: &[Image], runs: &mut [Runs]) -> Result<(), String> {
        let reference = self.round1("qcow2", "qemu-img");
        let peer = self.round1("ova", "qemu-img");
        let result = (|| {
            if let Some(why) = differs(&reference, &peer, size)? {
                return Err(format!("the peer's outputs differ: {why}"));
            }
            let mut equal = 0;
            for (img, runs) in images.iter().zip(runs.iter_mut()) {
                let p = self.round1(img.tag, "ferry");
                if !p.exists() {
                    continue;
                }
                match differs(&reference, &p, size)? {
                    None => equal += 1,
                    Some(why) => {
                        let e = format!("its output is not qemu-img's: {why}");
                        eprintln!(
                            "format-bench: {}: {e}\n  (ferry's {} column is skipped from now on)",
                            img.name, img.name
                        );
                        runs.ferry.clear();
                        runs.ferry_failed = Some(e);
                    }
                }
            }
            println!("round 1: {equal} ferry output(s) equal qemu-img's (qemu-img compare)");
            Ok(())
        })();
        for tag in ["ova", "qcow2"] {
            for tool in ["ferry", "qemu-img"] {
                let _ = fs::remove_file(self.round1(tag, tool));
            }
        }
        result
    }
}

/// Why raw file `b` is not raw file `a` of `size` bytes (`qemu-img compare`, which reads holes
/// as zeros), or `None` when it is.
fn differs(a: &Path, b: &Path, size: u64) -> Result<Option<String>, String> {
    for p in [a, b] {
        let len = file_len(p)?;
        if len != size {
            return Ok(Some(format!("{} is {len} bytes, not {size}", name(p))));
        }
    }
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .map_err(|e| format!("qemu-img compare: {e}"))?;
    let said = format!(
        "{} {}",
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    match o.status.code() {
        Some(0) => Ok(None),
        // 1: the images differ; anything else: compare itself failed.
        Some(1) => Ok(Some(format!(
            "{} vs {}: {}",
            a.display(),
            b.display(),
            said.trim()
        ))),
        _ => Err(format!(
            "qemu-img compare {} {} failed: {}",
            a.display(),
            b.display(),
            said.trim()
        )),
    }
}

/// Prints `img`'s rows of the median table.
fn summary(img: &Image, runs: &Runs, size: u64, scratch: u64) {
    let mib = size as f64 / MIB;
    // One table row: the medians and peak RSS of `runs`.
    let row = |tool: &str, runs: &[Measured], scratch: Option<u64>| {
        let s = median(runs.iter().map(|m| m.secs).collect());
        let min = benches::method::min(&runs.iter().map(|m| m.secs).collect::<Vec<_>>());
        let cpu = median(runs.iter().map(|m| m.cpu).collect());
        let synced = median(runs.iter().map(|m| m.synced).collect());
        let rss = peak(runs);
        let rate = if scratch.is_some() {
            format!("{:.0}", mib / synced)
        } else {
            String::new()
        };
        let scratch = scratch.map_or_else(String::new, |b| format!("{:.0}", b as f64 / MIB));
        println!(
            "{:<6} {tool:<26} {min:>6.2} {s:>8.2} {synced:>8.2} {rate:>7} {cpu:>6.2} {:>13.0} {scratch:>12}",
            img.name,
            rss as f64 / 1024.0
        );
    };
    match &runs.ferry_failed {
        Some(e) if runs.ferry.is_empty() => {
            println!("{:<6} {:<26} failed: {e}", img.name, "ferry importer copy")
        }
        _ => row("ferry importer copy", &runs.ferry, Some(0)),
    }
    let peer = peer_sums(runs);
    if img.in_ova {
        row("qemu-img tar + convert", &peer, Some(scratch));
        for (tool, steps) in [
            ("  tar -x", &runs.tar),
            ("  qemu-img convert", &runs.convert),
        ] {
            row(tool, steps, None);
        }
        row("qemu-img json: in place", &runs.json, Some(0));
    } else {
        row("qemu-img convert", &peer, Some(scratch));
    }
}

/// Prints `img`'s ratios qemu-img/ferry (+sync medians) and whether the goal is met.
fn ratios(img: &Image, runs: &Runs, vmdk_bytes: u64) {
    if runs.ferry.is_empty() {
        println!("{}: no ratio, importer copy failed", img.name);
        return;
    }
    let ferry = median(runs.ferry.iter().map(|m| m.synced).collect());
    let peer = median(peer_sums(runs).iter().map(|m| m.synced).collect()) / ferry;
    let met = if peer >= 1.0 { "met" } else { "NOT met" };
    if img.in_ova {
        let convert = median(runs.convert.iter().map(|m| m.synced).collect()) / ferry;
        println!(
            "{}: qemu-img/ferry {peer:.2}x (qemu-img convert alone/ferry {convert:.2}x); scratch space: ferry none, qemu-img {} MiB -> goal (>= 1.00x, no scratch) {met}",
            img.name,
            vmdk_bytes >> 20
        );
        if !runs.json.is_empty() {
            let json = median(runs.json.iter().map(|m| m.synced).collect()) / ferry;
            let met = if json >= 1.0 { "met" } else { "NOT met" };
            println!(
                "{}: qemu-img json: in place/ferry {json:.2}x (neither needs scratch space) -> goal (>= 1.00x) {met}",
                img.name
            );
        }
    } else {
        println!(
            "{}: qemu-img/ferry {peer:.2}x -> goal (>= 1.00x) {met}",
            img.name
        );
    }
}

/// Where `disk.vmdk` is inside the OVA at `path`: (offset, size).
fn vmdk_member(path: &Path) -> Result<(u64, u64), String> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let members =
        transfer_core::format::ova::members_of(f, "the bench OVA").map_err(|e| e.to_string())?;
    members
        .iter()
        .find(|m| m.name == "disk.vmdk")
        .map(|m| (m.offset, m.size))
        .ok_or_else(|| format!("{} holds no disk.vmdk", path.display()))
}

/// Each round's peer run: tar and convert added up (their seconds, their larger peak RSS).
fn peer_sums(runs: &Runs) -> Vec<Measured> {
    (0..runs.convert.len())
        .map(|i| sum(runs.tar.get(i).copied(), runs.convert[i]))
        .collect()
}

/// `convert` after `tar`, if there was one, as one run.
fn sum(tar: Option<Measured>, convert: Measured) -> Measured {
    match tar {
        Some(t) => Measured {
            secs: t.secs + convert.secs,
            synced: t.synced + convert.synced,
            rss_kib: t.rss_kib.max(convert.rss_kib),
            cpu: t.cpu + convert.cpu,
        },
        None => convert,
    }
}

/// The largest peak RSS of `runs`, KiB.
fn peak(runs: &[Measured]) -> u64 {
    runs.iter().map(|m| m.rss_kib).max().unwrap_or(0)
}

/// One run for a round line.
fn show(m: &Measured) -> String {
    format!(
        "{:6.2} s (+sync {:6.2} s, {:4} MiB)",
        m.secs,
        m.synced,
        m.rss_kib >> 10
    )
}

/// `p`'s file name, for messages about files deleted by then.
fn name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn file_len(p: &Path) -> Result<u64, String> {
    fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The inputs in `dir` (`vm.ova`, `disk.qcow2`), reused when the stamp says they are of `size`,
/// else made afresh in an emptied `dir`; returns the VMDK's size.
fn inputs(dir: &Path, size: u64, keep_raw: bool) -> Result<u64, String> {
    let stamp = dir.join(STAMP);
    let prefix = format!("{STAMP_VERSION} size={size} vmdk=");
    if let Ok(s) = fs::read_to_string(&stamp) {
        let vmdk = s.trim().strip_prefix(&prefix).and_then(|v| v.parse().ok());
        if let Some(v) =
            vmdk.filter(|_| dir.join("vm.ova").is_file() && dir.join("disk.qcow2").is_file())
        {
            println!("format-bench: reusing the inputs in {}", dir.display());
            return Ok(v);
        }
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!(
        "format-bench: making the inputs in {} (once; --keep keeps them for the next run)",
        dir.display()
    );
    let raw = dir.join("input.raw");
    write_raw(&raw, size)?;
    let vmdk = dir.join("disk.vmdk");
    let (r, v) = (raw.display().to_string(), vmdk.display().to_string());
    let streamopt = ["-o", "subformat=streamOptimized"];
    make(
        "qemu-img",
        &[
            &["convert", "-f", "raw", "-O", "vmdk"][..],
            &streamopt,
            &[&r, &v],
        ]
        .concat(),
    )?;
    let vmdk_bytes = file_len(&vmdk)?;
    fs::write(dir.join("vm.ovf"), ovf(size, vmdk_bytes)).map_err(|e| format!("vm.ovf: {e}"))?;
    let ova = dir.join("vm.ova").display().to_string();
    let d = dir.display().to_string();
    // ustar (as OVF asks) when the VMDK fits in it, else GNU tar's own format.
    let format = if vmdk_bytes <= USTAR_MAX {
        "--format=ustar"
    } else {
        "--format=gnu"
    };
    make(
        "tar",
        &[format, "-C", &d, "-cf", &ova, "vm.ovf", "disk.vmdk"],
    )?;
    let _ = fs::remove_file(&vmdk);
    let _ = fs::remove_file(dir.join("vm.ovf"));
    let q = dir.join("disk.qcow2").display().to_string();
    make(
        "qemu-img",
        &["convert", "-c", "-f", "raw", "-O", "qcow2", &r, &q],
    )?;
    if !keep_raw {
        let _ = fs::remove_file(&raw);
    }
    fs::write(&stamp, format!("{prefix}{vmdk_bytes}\n")).map_err(|e| format!("{STAMP}: {e}"))?;
    Ok(vmdk_bytes)
}

/// Runs `cmd args`, its stderr shown; an error unless it exits 0.
fn make(cmd: &str, args: &[&str]) -> Result<(), String> {
    let st = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !st.success() {
        return Err(format!("{cmd} {} failed ({st})", args.join(" ")));
    }
    Ok(())
}

/// xorshift64: the bench's deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The raw disk: `size` bytes, about half of the 1 MiB chunks data (see [`fill_chunk`]), the
/// others holes (never written).
fn write_raw(path: &Path, size: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let f = fs::File::create(path).map_err(err)?;
    f.set_len(size).map_err(err)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; CHUNK as usize];
    for off in (0..size).step_by(CHUNK as usize) {
        if rng.next() >> 63 == 0 {
            continue;
        }
        fill_chunk(&mut buf, off, &mut rng);
        f.write_all_at(&buf, off).map_err(err)?;
    }
    f.sync_all().map_err(err)
}

/// One data chunk at disk offset `off`: each 4 KiB block is 1-2 KiB of pseudo-random bytes,
/// then lines of text naming the block (moderately compressible, like a real disk's data).
fn fill_chunk(buf: &mut [u8], off: u64, rng: &mut Rng) {
    for (i, block) in buf.chunks_mut(BLOCK).enumerate() {
        let random = 1024 + (rng.next() % 1024) as usize;
        for w in block[..random].chunks_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes()[..w.len()]);
        }
        let line = format!(
            "{:012x} ferry format-bench: some text that compresses, as on real disks\n",
            off + (i * BLOCK) as u64
        );
        for (b, c) in block[random..].iter_mut().zip(line.bytes().cycle()) {
            *b = c;
        }
    }
}

/// An OVF 1.0 descriptor for one streamOptimized VMDK `disk.vmdk` of `vmdk_bytes` holding a
/// disk of `capacity` bytes, with a minimal virtual system (1 CPU, 1 GiB, one IDE disk).
fn ovf(capacity: u64, vmdk_bytes: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="disk.vmdk" ovf:id="file1" ovf:size="{vmdk_bytes}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="format-bench">
    <Info>A virtual machine</Info>
    <Name>format-bench</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>format-bench</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>1024 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>IDE Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

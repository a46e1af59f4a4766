//! `daemon-bench`: what the daemon's kept sessions and shared memory budget are worth.
//!
//! 1. A VMware warm migration of one disk: a base copy and five deltas of about 1% each
//!    (the vCenter simulator's changed areas, rewritten before each delta), read through the
//!    fake VDDK with realistic session costs (`--login-delay` for each vSphere Login and
//!    `--connect-delay` for each VDDK ConnectEx; real ones take seconds). Two ways, alternating
//!    which goes first, `--rounds` rounds: through one `importer serve` (the login and the VDDK
//!    connection kept between checkpoints) and as six separate `importer copy` runs (CDI's pod
//!    per checkpoint, without the pod's start). Timed: the five delta cycles (submit and wait;
//!    process start to exit), not the base copy nor the guest's writes between them. CPU: the
//!    importer's (the daemon's, or the six processes') and the simulator's; the fake VDDK runs
//!    inside the importer. Every delta's target is compared with the disk.
//! 2. Eight 1 GiB transfers at once from one nbdkit (`pattern`, every byte data) into one
//!    daemon: its peak RSS against its memory budget, wall time and CPU of both sides.
//!
//! Run: `cargo build --release -p importer -p benches -p vddk-fake && bash
//! scripts/install-peers.sh` (for vcsim-ferry), then `./target/release/daemon-bench`
//! (options: `--rounds 7`, `--size 1G`, `--areas 160` (64 KiB each), `--login-delay 1s`,
//! `--connect-delay 1s`, `--dir /var/tmp/ferry-daemon-bench`, `--skip-memory`, `--only-memory`, `--daemon-memory 64M`).

mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benches::method::{min, tree_cpu_seconds};
use serde_json::Value;
use util::{arg, flag, median, prepare_rounds, wait_until};

const DELTAS: usize = 5;

fn main() {
    if let Err(e) = bench() {
        eprintln!("daemon-bench: {e}");
        std::process::exit(1);
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The vCenter simulator and what its ready line says.
struct Sim {
    proc: Proc,
    url: String,
    user: String,
    password: String,
    thumbprint: String,
    vm: Value,
    areas: Vec<(u64, u64)>,
}

fn start_sim(repo: &Path, dir: &Path, size: u64, areas: &str, delay: &str) -> Result<Sim, String> {
    let bin = repo.join(".peers/bin/vcsim-ferry");
    let dump = dir.join("areas.json");
    let mut child = Command::new(&bin)
        .args(["-areas", areas, "-page", "2000", "-capacity"])
        .arg(size.to_string())
        .args(["-login-delay", delay, "-dump"])
        .arg(&dump)
        .env("TMPDIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e} (run scripts/install-peers.sh)", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("vcsim-ferry: {e}: {line}"))?;
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let dumped: Value =
        serde_json::from_str(&std::fs::read_to_string(&dump).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let areas = dumped
        .as_array()
        .ok_or("areas.json is not an array")?
        .iter()
        .map(|a| {
            (
                a["start"].as_u64().unwrap_or(0),
                a["length"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Ok(Sim {
        url: text("url"),
        user: text("user"),
        password: text("password"),
        thumbprint: text("thumbprint"),
        vm: v["vms"][0].clone(),
        areas,
        proc: Proc(child),
    })
}

/// The change id of checkpoint `n` (the first one ends in `/1`).
fn change_id(first: &str, n: usize) -> String {
    let stem = first.rsplit_once('/').map_or(first, |(s, _)| s);
    format!("{stem}/{n}")
}

/// Writes round `n`'s guest writes into the changed areas of the disk.
fn guest_writes(disk: &Path, areas: &[(u64, u64)], n: usize) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| e.to_string())?;
    for (i, &(s, l)) in areas.iter().enumerate() {
        let buf = vec![(n * 31 + i % 200) as u8 | 1; l as usize];
        f.write_all_at(&buf, s).map_err(|e| e.to_string())?;
    }
    f.sync_data().map_err(|e| e.to_string())
}

fn same(a: &Path, b: &Path) -> Result<(), String> {
    let ok = Command::new("cmp")
        .arg("-s")
        .args([a, b])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("{} differs from {}", b.display(), a.display()))
    }
}

struct Setup {
    importer: PathBuf,
    dir: PathBuf,
    libdir: PathBuf,
    disk: PathBuf,
    base: PathBuf,
    target: PathBuf,
    sim: Sim,
    env: Vec<(String, String)>,
    password_file: PathBuf,
}

impl Setup {
    fn source(&self) -> String {
        let port = self
            .sim
            .url
            .rsplit(':')
            .next()
            .unwrap_or("")
            .trim_end_matches("/sdk");
        format!(
            "vddk://{}@127.0.0.1:{port}/?vm=moref={}&thumbprint={}",
            self.sim.user.replace('@', "%40"),
            self.sim.vm["moref"].as_str().unwrap_or_default(),
            self.sim.thumbprint
        )
    }

    fn first_change_id(&self) -> String {
        self.sim.vm["changeId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn disk_file(&self) -> &str {
        self.sim.vm["diskFile"].as_str().unwrap_or_default()
    }

    /// Puts the base disk back and removes the target (and its checkpoint chain).
    fn reset(&self) -> Result<(), String> {
        std::fs::copy(&self.base, &self.disk).map_err(|e| e.to_string())?;
        for p in [self.target.clone(), chain_of(&self.target)] {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

fn chain_of(target: &Path) -> PathBuf {
    PathBuf::from(format!("{}.checkpoints.json", target.display()))
}

/// One way's five delta cycles: (seconds, importer CPU, simulator CPU).
type Cycles = (f64, f64, f64);

/// The warm migration as six `importer copy` runs.
fn separate_runs(s: &Setup) -> Result<Cycles, String> {
    s.reset()?;
    let file = format!("file={}", s.disk_file());
    let libdir = format!("libdir={}", s.libdir.display());
    let copy = |extra: Vec<String>| -> Result<f64, String> {
        let report = s.dir.join("time.txt");
        let mut args: Vec<String> = vec![
            "-o".into(),
            report.display().to_string(),
            "-f".into(),
            "%U %S".into(),
            s.importer.display().to_string(),
            "copy".into(),
            "--log-level=warn".into(),
            s.source(),
            s.target.display().to_string(),
            "--vddk".into(),
            file.clone(),
            "--vddk".into(),
            libdir.clone(),
            "--vddk".into(),
            "connections=1".into(),
            "--password-file".into(),
            s.password_file.display().to_string(),
        ];
        args.extend(extra);
        let st = Command::new(util::GNU_TIME)
            .args(&args)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!(
                "importer copy {extra_args:?} failed",
                extra_args = &args[5..]
            ));
        }
        let t = std::fs::read_to_string(&report).map_err(|e| e.to_string())?;
        Ok(t.lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|x| x.parse::<f64>().ok())
            .sum())
    };
    copy(vec!["--checkpoint".into(), s.first_change_id()])?;
    same(&s.disk, &s.target)?;
    let (mut secs, mut cpu, mut sim_cpu) = (0.0, 0.0, 0.0);
    for n in 2..=DELTAS + 1 {
        guest_writes(&s.disk, &s.sim.areas, n)?;
        let sim0 = tree_cpu_seconds(s.sim.proc.0.id()).unwrap_or(0.0);
        let t = Instant::now();
        cpu += copy(vec![
            "--delta".into(),
            "--checkpoint".into(),
            change_id(&s.first_change_id(), n),
            "--previous-checkpoint".into(),
            change_id(&s.first_change_id(), n - 1),
        ])?;
        secs += t.elapsed().as_secs_f64();
        sim_cpu += tree_cpu_seconds(s.sim.proc.0.id()).unwrap_or(0.0) - sim0;
        same(&s.disk, &s.target)?;
    }
    Ok((secs, cpu, sim_cpu))
}

/// One HTTP request to the daemon's socket.
fn call(sock: &Path, method: &str, path: &str, body: &str) -> Result<Value, String> {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(sock).map_err(|e| e.to_string())?;
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    c.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).map_err(|e| format!("{e}: {out}"))
}

/// Submits `body` and waits until the transfer has finished; fails unless it succeeded.
fn transfer(sock: &Path, body: &str) -> Result<(), String> {
    wait(sock, &submit(sock, body)?)
}

/// Submits `body`; the transfer's id.
fn submit(sock: &Path, body: &str) -> Result<String, String> {
    let v = call(sock, "POST", "/v1/transfers", body)?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("refused: {v}"))
}

/// Waits until transfer `id` has finished; fails unless it succeeded.
fn wait(sock: &Path, id: &str) -> Result<(), String> {
    loop {
        let v = call(sock, "GET", &format!("/v1/transfers/{id}"), "")?;
        match v["state"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("queued" | "running") => std::thread::sleep(Duration::from_millis(5)),
            _ => return Err(format!("transfer {id}: {v}")),
        }
    }
}

fn start_daemon(
    importer: &Path,
    dir: &Path,
    root: &Path,
    env: &[(String, String)],
    extra: &[&str],
) -> Result<(Proc, PathBuf), String> {
    let sock = dir.join("ferry.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(importer)
        .args(["serve", "--log-level=warn", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .arg("--target-root")
        .arg(root)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let p = Proc(child);
    if !wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }) {
        return Err("the daemon did not listen".into());
    }
    Ok((p, sock))
}

/// The warm migration through one daemon.
fn through_daemon(s: &Setup) -> Result<Cycles, String> {
    s.reset()?;
    let root = s.target.parent().ok_or("no target directory")?;
    let (daemon, sock) = start_daemon(&s.importer, &s.dir, root, &s.env, &[])?;
    let body = |extra: String| {
        format!(
            r#"{{"source":"{}","target":"{}","vddk":{{"file":"{}","libdir":"{}"}},"secrets":{{"password_file":"{}"}},"options":{{"connections":1}}{extra}}}"#,
            s.source(),
            s.target.display(),
            s.disk_file(),
            s.libdir.display(),
            s.password_file.display()
        )
    };
    transfer(
        &sock,
        &body(format!(r#","checkpoint":"{}""#, s.first_change_id())),
    )?;
    same(&s.disk, &s.target)?;
    let (mut secs, mut sim_cpu) = (0.0, 0.0);
    let cpu0 = tree_cpu_seconds(daemon.0.id()).unwrap_or(0.0);
    for n in 2..=DELTAS + 1 {
        guest_writes(&s.disk, &s.sim.areas, n)?;
        let sim0 = tree_cpu_seconds(s.sim.proc.0.id()).unwrap_or(0.0);
        let t = Instant::now();
        transfer(
            &sock,
            &body(format!(
                r#","delta":{{"changes":"source"}},"checkpoint":"{}","previous_checkpoint":"{}""#,
                change_id(&s.first_change_id(), n),
                change_id(&s.first_change_id(), n - 1)
            )),
        )?;
        secs += t.elapsed().as_secs_f64();
        sim_cpu += tree_cpu_seconds(s.sim.proc.0.id()).unwrap_or(0.0) - sim0;
        same(&s.disk, &s.target)?;
    }
    let cpu = tree_cpu_seconds(daemon.0.id()).unwrap_or(0.0) - cpu0;
    drop(daemon);
    Ok((secs, cpu, sim_cpu))
}

fn bench() -> Result<(), String> {
    let size = transfer_core::size::parse_size(&arg("--size", "1G")).map_err(|e| e.to_string())?;
    let rounds_n: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let areas = arg("--areas", "160");
    let login = arg("--login-delay", "1s");
    let connect = arg("--connect-delay", "1s");
    let connect_us = parse_secs(&connect)? * 1e6;
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-daemon-bench"));
    if flag("--only-memory") {
        return only_memory(&dir, rounds_n);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.parent().ok_or("no binary directory")?.to_owned();
    let repo = bin.join("../..");
    let importer = util::importer()?;
    let fake = bin.join("libvddk_fake.so");
    if !fake.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p vddk-fake",
            fake.display()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let libdir = dir.join("vddk");
    let vol = dir.join("volumes");
    for d in [libdir.join("lib64"), vol.clone()] {
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::os::unix::fs::symlink(&fake, libdir.join("lib64/libvixDiskLib.so.8"))
        .map_err(|e| e.to_string())?;
    let sim = start_sim(&repo, &dir, size, &areas, &login)?;
    let datastores = dir.join("datastores");
    let disk_file = sim.vm["diskFile"].as_str().unwrap_or_default().to_owned();
    let (ds, rel) = disk_file
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .ok_or_else(|| format!("disk file {disk_file}"))?;
    let disk = datastores.join(ds).join(rel);
    std::fs::create_dir_all(disk.parent().ok_or("disk dir")?).map_err(|e| e.to_string())?;
    let base = dir.join("base.raw");
    util::run(
        "sh",
        &[
            "-c",
            &format!("head -c {size} /dev/urandom > {}", base.display()),
        ],
    )?;
    let password_file = dir.join("password");
    std::fs::write(&password_file, &sim.password).map_err(|e| e.to_string())?;
    let changed: u64 = sim.areas.iter().map(|a| a.1).sum();
    let env = vec![
        (
            "FAKE_VDDK_ROOT".to_owned(),
            datastores.display().to_string(),
        ),
        ("FAKE_VDDK_PASSWORD".to_owned(), sim.password.clone()),
        (
            "FAKE_VDDK_CONNECT_US".to_owned(),
            format!("{connect_us:.0}"),
        ),
    ];
    let s = Setup {
        importer,
        dir: dir.clone(),
        libdir,
        disk,
        base,
        target: vol.join("disk.img"),
        sim,
        env,
        password_file,
    };
    println!(
        "daemon-bench: {} MiB disk, {DELTAS} deltas of {} areas ({} MiB, {:.1}%), vSphere Login {login}, VDDK ConnectEx {connect}, {rounds_n} rounds",
        size >> 20,
        s.sim.areas.len(),
        changed >> 20,
        changed as f64 * 100.0 / size as f64
    );
    prepare_rounds(&vol, 2 * size, rounds_n)?;
    let mut results: [Vec<Cycles>; 2] = [Vec::new(), Vec::new()];
    let names = ["daemon (sessions kept)", "6 separate importer runs"];
    for r in 0..rounds_n {
        for k in 0..2 {
            let i = (k + r) % 2;
            let c = if i == 0 {
                through_daemon(&s)?
            } else {
                separate_runs(&s)?
            };
            println!(
                "round {}/{rounds_n}  {:<26} 5 deltas {:6.2} s  importer cpu {:5.2} s  vcsim cpu {:5.2} s",
                r + 1,
                names[i],
                c.0,
                c.1,
                c.2
            );
            results[i].push(c);
        }
    }
    println!(
        "\n{:<26} {:>9} {:>9} {:>13} {:>11}",
        "5 delta cycles", "min s", "median s", "importer cpu", "vcsim cpu"
    );
    let mut med = [0.0; 2];
    for i in 0..2 {
        let col = |f: fn(&Cycles) -> f64| results[i].iter().map(f).collect::<Vec<_>>();
        med[i] = median(col(|c| c.0));
        println!(
            "{:<26} {:>9.2} {:>9.2} {:>13.2} {:>11.2}",
            names[i],
            min(&col(|c| c.0)),
            med[i],
            median(col(|c| c.1)),
            median(col(|c| c.2))
        );
    }
    println!(
        "five delta cycles: separate runs / daemon = {:.2}x (goal >= 3x)",
        med[1] / med[0]
    );
    drop(s.sim.proc);
    if !flag("--skip-memory") {
        memory(&s.importer, &dir, rounds_n)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--only-memory`: the eight-transfer part alone.
fn only_memory(dir: &Path, rounds_n: usize) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("volumes")).map_err(|e| e.to_string())?;
    memory(&util::importer()?, dir, rounds_n)?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let (n, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    n.parse::<f64>()
        .map(|v| v * scale)
        .map_err(|_| format!("bad duration {s} (e.g. 1s, 500ms)"))
}

/// One run of eight transfers: (seconds, peak RSS in KiB, daemon CPU, nbdkit CPU).
type Eight = (f64, f64, f64, f64);

/// Eight 1 GiB transfers at once from one nbdkit into one daemon, `rounds_n` rounds
/// alternating the daemon's budget between `--daemon-memory` (64M) and 1G (each transfer's own
/// 16 MiB only), a fresh daemon each run.
fn memory(importer: &Path, dir: &Path, rounds_n: usize) -> Result<(), String> {
    let vol = dir.join("volumes");
    let sock = dir.join("nbdkit.sock");
    let nbdkit = Proc(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .args(["pattern", "size=1G"])
            .spawn()
            .map_err(|e| format!("nbdkit: {e}"))?,
    );
    if !wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }) {
        return Err("nbdkit did not start".into());
    }
    prepare_rounds(&vol, 9 << 30, rounds_n)?;
    let budgets = [arg("--daemon-memory", "64M"), "1G".to_owned()];
    let mut runs: [Vec<Eight>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds_n {
        for k in 0..2 {
            let i = (k + r) % 2;
            let m = eight(importer, dir, &sock, nbdkit.0.id(), &budgets[i])?;
            println!(
                "round {}/{rounds_n}  --memory {:<4} {:6.2} s  {:5.0} MiB/s  peak RSS {:6.1} MiB  daemon cpu {:5.2} s  nbdkit cpu {:5.2} s",
                r + 1,
                budgets[i],
                m.0,
                8.0 * 1024.0 / m.0,
                m.1 / 1024.0,
                m.2,
                m.3
            );
            runs[i].push(m);
        }
    }
    println!(
        "\n8 x 1 GiB at once       min s  median s  min RSS MiB  median RSS MiB  max RSS MiB  daemon cpu  nbdkit cpu"
    );
    for i in 0..2 {
        let col = |f: fn(&Eight) -> f64| runs[i].iter().map(f).collect::<Vec<_>>();
        let rss = col(|m| m.1 / 1024.0);
        println!(
            "--memory {:<13} {:>6.2} {:>9.2} {:>12.1} {:>15.1} {:>12.1} {:>11.2} {:>11.2}",
            budgets[i],
            min(&col(|m| m.0)),
            median(col(|m| m.0)),
            min(&rss),
            median(rss.clone()),
            rss.iter().cloned().fold(0.0, f64::max),
            median(col(|m| m.2)),
            median(col(|m| m.3))
        );
    }
    println!("goal: the daemon's peak RSS under 128 MiB with its budget");
    Ok(())
}

/// One run of eight 1 GiB transfers into a fresh daemon with `--memory budget`.
fn eight(
    importer: &Path,
    dir: &Path,
    sock: &Path,
    nbdkit: u32,
    budget: &str,
) -> Result<Eight, String> {
    let vol = dir.join("volumes");
    for e in std::fs::read_dir(&vol)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let _ = std::fs::remove_file(e.path());
    }
    util::run("sync", &[])?;
    // Eight transfers of four connections each, all copying at once.
    let (daemon, dsock) = start_daemon(
        importer,
        dir,
        &vol,
        &[],
        &[
            "--max-transfers",
            "8",
            "--server-connections",
            "32",
            "--memory",
            budget,
        ],
    )?;
    let (cpu0, ncpu0) = (
        tree_cpu_seconds(daemon.0.id()).unwrap_or(0.0),
        tree_cpu_seconds(nbdkit).unwrap_or(0.0),
    );
    let t = Instant::now();
    let ids = (0..8)
        .map(|i| {
            submit(
                &dsock,
                &format!(
                    r#"{{"source":"nbd+unix:///?socket={}","target":"{}"}}"#,
                    sock.display(),
                    vol.join(format!("d{i}.img")).display()
                ),
            )
        })
        .collect::<Result<Vec<_>, String>>()?;
    for id in &ids {
        wait(&dsock, id)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = tree_cpu_seconds(daemon.0.id()).unwrap_or(0.0) - cpu0;
    let ncpu = tree_cpu_seconds(nbdkit).unwrap_or(0.0) - ncpu0;
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id()))
        .map_err(|e| e.to_string())?;
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .ok_or("no VmHWM in the daemon's status")?;
    Ok((secs, hwm_kib, cpu, ncpu))
}

//! Helpers shared by the side-by-side benchmark binaries (`http-bench`, `imageio-bench`,
//! `vddk-bench`, `resume-bench`, `delta-bench`, `format-bench`): arguments, running and timing
//! peers (with their peak RSS), free ports, medians, a self-signed certificate. Each binary uses
//! a subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether the flag `name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Runs `cmd args` quietly; an error unless it exits 0.
pub fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let st = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match st {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!("{cmd} {args:?} failed: {other:?}")),
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `ready` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The importer binary next to this one (`cargo build --release -p importer -p benches`).
pub fn importer() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(exe.parent().ok_or("no binary directory")?.join("importer"))
}

/// A fresh bench directory `dir`, the importer next to this binary, and
/// `nbdkit sparse-random size=SIZE percent=50 seed=7` on a Unix socket in `dir`, ready: returns
/// the importer's path, the server (stopped when dropped) and its NBD URI.
pub fn sparse_random_nbd(dir: &Path, size: u64) -> Result<(PathBuf, Guard, String), String> {
    let importer = importer()?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let sock = dir.join("nbdkit.sock");
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(&sock)
        .args([
            "sparse-random",
            &format!("size={size}"),
            "percent=50",
            "seed=7",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nbdkit: {e}"))?;
    let guard = Guard(child);
    if !wait_until(Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }) {
        return Err("nbdkit did not start".into());
    }
    Ok((
        importer,
        guard,
        format!("nbd+unix:///?socket={}", sock.display()),
    ))
}

/// Runs one tool writing `out` (deleted and synced first); returns (seconds, seconds including
/// the `sync` after it).
pub fn timed(cmd: &str, args: &[String], out: &Path) -> Result<(f64, f64), String> {
    let _ = std::fs::remove_file(out);
    run("sync", &[])?;
    let t = Instant::now();
    let st = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status();
    let secs = t.elapsed().as_secs_f64();
    if !st.is_ok_and(|s| s.success()) {
        return Err(format!("{cmd} {args:?} failed"));
    }
    run("sync", &[])?;
    Ok((secs, t.elapsed().as_secs_f64()))
}

/// GNU time, which reports a run's peak RSS (`-f %M`, in KiB).
pub const GNU_TIME: &str = "/usr/bin/time";

/// One run measured by [`timed_rss`].
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Wall seconds of the run.
    pub secs: f64,
    /// Wall seconds including the `sync` after it.
    pub synced: f64,
    /// Peak resident set size in KiB.
    pub rss_kib: u64,
    /// User plus system CPU seconds of the run (its threads and waited-for children).
    pub cpu: f64,
}

/// [`timed`] under GNU time, which also gives the peak RSS: deletes `out`, syncs, runs
/// `cmd args` with its stderr written to `log` (GNU time's report next to it, `.time`), syncs.
/// When the run fails, the error quotes the last lines of its stderr.
pub fn timed_rss(cmd: &str, args: &[String], out: &Path, log: &Path) -> Result<Measured, String> {
    let _ = std::fs::remove_file(out);
    run("sync", &[])?;
    let report = log.with_extension("time");
    let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let t = Instant::now();
    let st = Command::new(GNU_TIME)
        .arg("-o")
        .arg(&report)
        .args(["-f", "%M %U %S", cmd])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(|e| format!("starting {GNU_TIME} {cmd}: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        return Err(format!("`{cmd} {}` failed ({st}): {tail}", args.join(" ")));
    }
    run("sync", &[])?;
    let synced = t.elapsed().as_secs_f64();
    let (rss_kib, cpu) = std::fs::read_to_string(&report)
        .ok()
        .and_then(|s| {
            let mut f = s.lines().last()?.split_whitespace();
            let rss: u64 = f.next()?.parse().ok()?;
            let user: f64 = f.next()?.parse().ok()?;
            let sys: f64 = f.next()?.parse().ok()?;
            Some((rss, user + sys))
        })
        .ok_or_else(|| format!("no figures in GNU time's report {}", report.display()))?;
    Ok(Measured {
        secs,
        synced,
        rss_kib,
        cpu,
    })
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A self-signed P-256 end-entity certificate for 127.0.0.1 (its own CA file): `DIR/cert.pem` and `DIR/key.pem`.
pub fn self_signed(dir: &Path) -> Result<(), String> {
    let d = dir.display();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // An end-entity certificate (webpki refuses a CA certificate as the server's own);
            // self-signed, it is its own trust anchor.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &format!("{d}/key.pem"),
            "-out",
            &format!("{d}/cert.pem"),
        ],
    )
}

/// A row of a side-by-side table: its name, the command and its arguments.
pub type Row = (String, String, Vec<String>);

/// One row's figures over the rounds: median wall seconds, median seconds including the `sync`
/// after the run, the fastest wall seconds, the median CPU seconds (user plus system, of the
/// tool and of what runs inside it or as its child) and the median CPU seconds the servers
/// spent on the run (NaN without servers).
#[derive(Clone, Copy, Debug)]
pub struct Stat(pub f64, pub f64, pub f64, pub f64, pub f64);

/// CPU seconds the processes `servers` (and their children) have used so far.
fn servers_cpu(servers: &[u32]) -> f64 {
    servers
        .iter()
        .filter_map(|&p| benches::method::tree_cpu_seconds(p))
        .sum()
}

/// Before the rounds: pre-touches `bytes` in `dir` (see `benches::method`) and says so, and
/// flags fewer than `benches::method::MIN_ROUNDS` rounds as too few to conclude from.
pub fn prepare_rounds(dir: &Path, bytes: u64, rounds: usize) -> Result<(), String> {
    let took = benches::method::pretouch(dir, bytes)?;
    println!(
        "pre-touched {} MiB in {} with a file: {:.1} s",
        bytes >> 20,
        dir.display(),
        took.as_secs_f64()
    );
    if rounds < benches::method::MIN_ROUNDS {
        println!(
            "(only {rounds} rounds: fewer than {}, too few to conclude from)",
            benches::method::MIN_ROUNDS
        );
    }
    Ok(())
}

/// Runs every row `rounds` times, rotating the order each round, printing each time, after
/// pre-touching `pretouch` bytes next to `out` (see `benches::method`); returns each row's
/// [`Stat`]. Before each run, `prepare(row)` is called and what it returns replaces `{ticket}`
/// in the row's arguments. The CPU of the processes `servers` (the peers the tools talk to) is
/// read before and after each run.
pub fn rounds(
    rows: &[Row],
    rounds: usize,
    out: &Path,
    pretouch: u64,
    servers: &[u32],
    prepare: &mut dyn FnMut(usize) -> Result<String, String>,
) -> Result<Vec<Stat>, String> {
    prepare_rounds(out.parent().unwrap_or(Path::new(".")), pretouch, rounds)?;
    let log = out.with_extension("log");
    let mut times: Vec<Vec<(Measured, f64)>> = vec![Vec::new(); rows.len()];
    for r in 0..rounds {
        for k in 0..rows.len() {
            let i = (k + r) % rows.len();
            let (name, cmd, args) = &rows[i];
            let fill = prepare(i)?;
            let args: Vec<String> = args.iter().map(|a| a.replace("{ticket}", &fill)).collect();
            let before = servers_cpu(servers);
            let m = timed_rss(cmd, &args, out, &log)?;
            let server = servers_cpu(servers) - before;
            println!(
                "round {}/{rounds}  {name:<30} {:6.2} s  (+sync {:6.2} s)  cpu {:5.2} s  server cpu {:5.2} s",
                r + 1,
                m.secs,
                m.synced,
                m.cpu,
                server
            );
            times[i].push((m, server));
        }
    }
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(&log);
    Ok(times
        .iter()
        .map(|t| {
            let of = |f: fn(&(Measured, f64)) -> f64| t.iter().map(f).collect::<Vec<f64>>();
            Stat(
                median(of(|m| m.0.secs)),
                median(of(|m| m.0.synced)),
                benches::method::min(&of(|m| m.0.secs)),
                median(of(|m| m.0.cpu)),
                if servers.is_empty() {
                    f64::NAN
                } else {
                    median(of(|m| m.1))
                },
            )
        })
        .collect())
}

/// Prints the table of `rows` for a copy of `bytes`: min and median wall seconds, MiB/s over
/// the median, median seconds with the `sync`, median CPU seconds of the tool and of the
/// servers it talked to.
pub fn table(rows: &[Row], med: &[Stat], bytes: u64) {
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "\n{:<30} {:>7} {:>9} {:>9} {:>10} {:>7} {:>11}",
        "tool", "min s", "median s", "MiB/s", "+sync s", "cpu s", "server cpu"
    );
    for ((name, _, _), m) in rows.iter().zip(med) {
        let server = if m.4.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}", m.4)
        };
        println!(
            "{name:<30} {:>7.2} {:>9.2} {:>9.0} {:>10.2} {:>7.2} {server:>11}",
            m.2,
            m.0,
            mib / m.0,
            m.1,
            m.3
        );
    }
}

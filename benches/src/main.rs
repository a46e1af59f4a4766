//! `transfer-bench`: ferry's `importer copy` side by side with its peers, `nbdcopy` (libnbd, the
//! speed anchor) and `qemu-img convert`, copying the same NBD export into a fresh raw file.
//!
//! What it measures: for each scenario it starts one nbdkit (`sparse-random size=4G percent=50`,
//! on a Unix socket; the `delay` scenario adds `--filter=delay rdelay=2ms`, a slow high-latency
//! source), then runs every tool once per round, rotating which tool goes first so that none
//! always profits from a warm or cold start. Before each run the output file is deleted and
//! `sync` runs, so every tool writes a new file on a clean page cache. Each run is timed by GNU
//! time (`/usr/bin/time -f '%e %M'`: wall seconds and peak RSS), and the `sync` right after it is
//! timed too: the tools do not leave the same amount of dirty data behind (importer flushes the
//! target before it reports success, qemu-img convert does not sync by default), so the table
//! shows both the wall time and the time until the data is on disk ("+sync").
//!
//! The method is `benches::method`'s: before the rounds a file of twice the disk size is
//! written and deleted in `--dir` (memory a virtual machine touches for the first time is
//! slow, and would be charged to whichever tool ran first), at least 7 rounds by default, and
//! the CPU seconds of each tool (GNU time) and of the nbdkit serving it (its `/proc/PID/stat`
//! before and after the run).
//!
//! It prints one line per run, then per scenario a table (min and median wall seconds, MiB/s
//! over the median, median CPU seconds of the tool and of nbdkit, peak RSS), the ratios
//! importer/nbdcopy and importer/qemu-img, and whether the goals are met (importer <= 0.9x
//! nbdcopy's median wall time, importer's CPU plus nbdkit's <= nbdcopy's plus nbdkit's, peak
//! RSS <= 64 MiB). After the rounds
//! `importer verify` compares the source with importer's output and must succeed. The last line
//! is one JSON object with every figure. A missing peer is reported and its column skipped.
//!
//! Run it (importer is found next to this binary; build both):
//!
//! ```text
//! cargo build --release -p importer -p benches
//! cargo run --release -p benches --bin transfer-bench -- --rounds 3
//! ```
//!
//! Options: `--help`. Tuning experiments pass flags through to importer with
//! `--extra-importer-args "--connections 8 --requests 32"`. Every child is killed on error and on
//! timeout (`--timeout`); nbdkit also runs with `--exit-with-parent`.

mod args;
mod report;
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::{json, Value};

use args::{Options, Parsed, Scenario, Tool};
use report::{RunRecord, ScenarioResult, ToolResult};
use run::{Logs, Server};

fn main() -> ExitCode {
    let opts = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("transfer-bench: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    match bench(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transfer-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A tool that can run, with its binary.
struct Ready {
    tool: Tool,
    program: PathBuf,
}

fn bench(o: &Options) -> Result<(), String> {
    fs::create_dir_all(&o.dir).map_err(|e| format!("cannot create {}: {e}", o.dir.display()))?;
    if !run::is_executable(Path::new(run::GNU_TIME)) {
        return Err(format!(
            "{} (GNU time) is needed to measure wall time and peak RSS",
            run::GNU_TIME
        ));
    }
    let nbdkit = run::which("nbdkit").ok_or("nbdkit is not in PATH")?;
    let (ready, skipped) = find_tools(o)?;
    if ready.is_empty() {
        return Err("none of the requested tools is available".into());
    }
    let mut versions = serde_json::Map::new();
    versions.insert("nbdkit".into(), version(&nbdkit).into());
    for r in &ready {
        versions.insert(r.tool.name().into(), version(&r.program).into());
    }
    for (t, why) in &skipped {
        eprintln!("transfer-bench: skipping {}: {why}", t.name());
    }
    println!(
        "transfer-bench: {} rounds, disk {} ({} bytes), {}% data, seed {}, output in {}",
        o.rounds,
        o.size,
        o.size_bytes,
        o.percent,
        o.seed,
        o.dir.display()
    );
    for r in &ready {
        println!("  {:<9} {}", r.tool.name(), r.program.display());
    }

    // Twice the output size (see benches::method).
    let touch = 2 * o.size_bytes;
    let took = benches::method::pretouch(&o.dir, touch)?;
    println!(
        "pre-touched {} MiB of memory or disk in {} with a file: {:.1} s",
        touch >> 20,
        o.dir.display(),
        took.as_secs_f64()
    );
    let mut results = Vec::new();
    for &sc in &o.scenarios {
        let r = run_scenario(o, sc, &nbdkit, &ready, &skipped)?;
        print!("{}", r.table());
        results.push(r);
    }

    let line = json!({
        "bench": "transfer-bench",
        "size_bytes": o.size_bytes,
        "percent": o.percent,
        "seed": o.seed,
        "rounds": o.rounds,
        "extra_importer_args": o.extra_importer_args,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "versions": versions,
        "scenarios": results.iter().map(ScenarioResult::json).collect::<Vec<_>>(),
    });
    println!("{line}");
    let bad: Vec<&str> = results
        .iter()
        .filter(|r| r.verified == Some(false))
        .map(|r| r.name.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "importer's output differs from the source in scenario(s) {}",
            bad.join(", ")
        ))
    }
}

/// Requested tools that cannot run, with the reason.
type Skipped = Vec<(Tool, String)>;

/// Splits the requested tools into those that can run and those that cannot (with why).
fn find_tools(o: &Options) -> Result<(Vec<Ready>, Skipped), String> {
    let mut ready = Vec::new();
    let mut skipped = Vec::new();
    for &tool in &o.tools {
        let found = match tool {
            Tool::Importer => {
                let p = match &o.importer {
                    Some(p) => p.clone(),
                    None => std::env::current_exe()
                        .map_err(|e| format!("cannot find this binary's directory: {e}"))?
                        .with_file_name("importer"),
                };
                if run::is_executable(&p) {
                    Ok(p)
                } else {
                    Err(format!(
                        "{} is not an executable (cargo build --release -p importer, or --importer PATH)",
                        p.display()
                    ))
                }
            }
            Tool::Nbdcopy => {
                run::which("nbdcopy").ok_or_else(|| "nbdcopy is not in PATH (libnbd-bin)".into())
            }
            Tool::QemuImg => {
                run::which("qemu-img").ok_or_else(|| "qemu-img is not in PATH (qemu-utils)".into())
            }
        };
        match found {
            Ok(program) => ready.push(Ready { tool, program }),
            Err(why) => skipped.push((tool, why)),
        }
    }
    Ok((ready, skipped))
}

/// First line of `PROGRAM --version`, or "unknown".
fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// nbdkit's arguments after `-U SOCKET`: filters first, then the plugin and its parameters.
fn nbdkit_args(o: &Options, sc: Scenario) -> Vec<String> {
    let mut a = Vec::new();
    if sc == Scenario::Delay {
        a.push("--filter=delay".to_string());
    }
    a.push("sparse-random".into());
    a.push(format!("size={}", o.size));
    a.push(format!("percent={}", o.percent));
    a.push(format!("seed={}", o.seed));
    if sc == Scenario::Delay {
        a.push(format!("rdelay={}", o.delay));
    }
    a
}

/// A tool's arguments for copying `uri` into `out`.
fn tool_args(o: &Options, tool: Tool, uri: &str, out: &Path) -> Vec<String> {
    let out = out.display().to_string();
    match tool {
        Tool::Importer => {
            let mut a = vec!["copy".into(), uri.into(), out];
            a.extend(o.extra_importer_args.iter().cloned());
            a
        }
        Tool::Nbdcopy => vec![uri.into(), out],
        Tool::QemuImg => ["convert", "-f", "raw", "-O", "raw", uri, &out]
            .map(String::from)
            .to_vec(),
    }
}

/// Output files, removed when the scenario ends (also on error).
struct Outputs(Vec<PathBuf>);

impl Drop for Outputs {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = run::remove_if_exists(p);
        }
    }
}

fn run_scenario(
    o: &Options,
    sc: Scenario,
    nbdkit: &Path,
    ready: &[Ready],
    skipped: &[(Tool, String)],
) -> Result<ScenarioResult, String> {
    let name = sc.name();
    let source = nbdkit_args(o, sc);
    println!("\n[{name}] nbdkit {}", source.join(" "));
    let server = Server::start(
        nbdkit,
        &source,
        &o.dir.join(format!("nbdkit-{name}.sock")),
        &o.dir.join(format!("nbdkit-{name}.log")),
    )?;
    let uri = server.uri();
    let outputs = Outputs(
        ready
            .iter()
            .map(|r| o.dir.join(format!("{name}-{}.raw", r.tool.name())))
            .collect(),
    );
    let mut results: Vec<ToolResult> = ready
        .iter()
        .map(|r| ToolResult {
            tool: r.tool,
            runs: Vec::new(),
        })
        .collect();

    for round in 1..=o.rounds {
        for i in 0..ready.len() {
            // Rotate the order each round: no tool always runs first (or right after another).
            let k = (round - 1 + i) % ready.len();
            let r = &ready[k];
            let out = &outputs.0[k];
            run::remove_if_exists(out)?;
            run::sync()?;
            let logs = Logs::new(&o.dir, &format!("{name}-{}", r.tool.name()));
            let server_before = benches::method::cpu_seconds(server.pid());
            let m = run::run_timed(
                &r.program,
                &tool_args(o, r.tool, &uri, out),
                &logs,
                o.timeout,
            )?;
            let server_cpu_seconds =
                match (server_before, benches::method::cpu_seconds(server.pid())) {
                    (Some(a), Some(b)) => b - a,
                    _ => return Err("nbdkit's /proc/PID/stat cannot be read".into()),
                };
            let sync_seconds = run::sync()?.as_secs_f64();
            let len = fs::metadata(out)
                .map_err(|e| format!("{} left no {}: {e}", r.tool.name(), out.display()))?
                .len();
            if len != o.size_bytes {
                return Err(format!(
                    "{} wrote {} bytes into {}, expected {}",
                    r.tool.name(),
                    len,
                    out.display(),
                    o.size_bytes
                ));
            }
            let report: Option<Value> = match r.tool {
                Tool::Importer => m
                    .stdout
                    .lines()
                    .last()
                    .and_then(|l| serde_json::from_str(l).ok()),
                _ => None,
            };
            println!(
                "[{name}] round {round}/{}  {:<9} {:>8.2} s {:>8.1} MiB/s  cpu {:.2} s + nbdkit {:.2} s  RSS {:>6.1} MiB  sync {:.2} s{}",
                o.rounds,
                r.tool.name(),
                m.seconds,
                o.size_bytes as f64 / (1024.0 * 1024.0) / m.seconds,
                m.cpu_seconds,
                server_cpu_seconds,
                m.rss_kib as f64 / 1024.0,
                sync_seconds,
                report.as_ref().map(importer_summary).unwrap_or_default()
            );
            results[k].runs.push(RunRecord {
                round,
                seconds: m.seconds,
                sync_seconds,
                rss_kib: m.rss_kib,
                cpu_seconds: m.cpu_seconds,
                server_cpu_seconds,
                report,
            });
        }
    }

    let verified = match ready.iter().position(|r| r.tool == Tool::Importer) {
        Some(k) => Some(verify(o, &ready[k].program, &uri, &outputs.0[k], name)?),
        None => None,
    };
    drop(outputs);
    drop(server);
    Ok(ScenarioResult {
        name: name.to_string(),
        source: source.join(" "),
        size_bytes: o.size_bytes,
        rounds: o.rounds,
        tools: results,
        skipped: skipped.to_vec(),
        verified,
    })
}

/// `(connections=4 io_engine=uring)` from importer's JSON line.
fn importer_summary(v: &Value) -> String {
    format!(
        "  (connections={} io_engine={})",
        v["connections"],
        v["io_engine"].as_str().unwrap_or("?")
    )
}

/// `importer verify URI OUT`: true on exit 0; a difference is shown loudly on stderr.
fn verify(o: &Options, importer: &Path, uri: &str, out: &Path, name: &str) -> Result<bool, String> {
    let logs = Logs::new(&o.dir, &format!("{name}-verify"));
    let mut cmd = Command::new(importer);
    cmd.arg("verify").arg(uri).arg(out);
    let st = run::run_logged(cmd, &logs, o.timeout, "importer verify")?;
    if st.success() {
        println!("[{name}] importer verify: equal");
        return Ok(true);
    }
    eprintln!(
        "\n!!! [{name}] importer verify {uri} {} FAILED ({st}) !!!\n{}\n{}",
        out.display(),
        run::tail(&logs.stdout, 10),
        run::tail(&logs.stderr, 20)
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_scenario_puts_the_filter_before_the_plugin() {
        let a = nbdkit_args(&Options::default(), Scenario::Delay);
        assert_eq!(
            a,
            [
                "--filter=delay",
                "sparse-random",
                "size=4G",
                "percent=50",
                "seed=1",
                "rdelay=2ms"
            ]
        );
    }

    #[test]
    fn qemu_img_converts_raw_to_raw_from_the_uri() {
        let a = tool_args(
            &Options::default(),
            Tool::QemuImg,
            "nbd+unix:///?socket=/s",
            Path::new("/o"),
        );
        assert_eq!(
            a,
            [
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                "nbd+unix:///?socket=/s",
                "/o"
            ]
        );
    }

    #[test]
    fn extra_importer_args_follow_the_copy_arguments() {
        let o = Options {
            extra_importer_args: vec!["--connections".into(), "8".into()],
            ..Options::default()
        };
        let a = tool_args(
            &o,
            Tool::Importer,
            "nbd+unix:///?socket=/s",
            Path::new("/o"),
        );
        assert_eq!(
            a,
            ["copy", "nbd+unix:///?socket=/s", "/o", "--connections", "8"]
        );
    }
}

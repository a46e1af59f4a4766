//! Child processes: the nbdkit server (killed when dropped) and tool runs under GNU time, each in
//! its own process group so that a timeout or an error kills the tool and not only `time`.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// GNU time; `-f '%e %M'` gives wall seconds and peak RSS in KiB.
pub const GNU_TIME: &str = "/usr/bin/time";

const POLL: Duration = Duration::from_millis(10);

/// Finds `name` in `PATH` (an executable regular file).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// True when `p` is a regular file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Removes a file; a missing file is fine.
pub fn remove_if_exists(p: &Path) -> Result<(), String> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", p.display())),
    }
}

/// Runs `sync` and returns how long it took.
pub fn sync() -> Result<Duration, String> {
    let t = Instant::now();
    let st = Command::new("sync")
        .status()
        .map_err(|e| format!("cannot run sync: {e}"))?;
    if !st.success() {
        return Err(format!("sync failed: {st}"));
    }
    Ok(t.elapsed())
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(p: &Path, n: usize) -> String {
    let text = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A child in its own process group, killed with the whole group when dropped unfinished.
struct Group {
    child: Child,
    finished: bool,
}

impl Group {
    fn spawn(mut cmd: Command, what: &str) -> Result<Group, String> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Group {
            child,
            finished: false,
        })
    }

    /// Waits at most `timeout`; on timeout the group is killed and an error returned.
    fn wait(&mut self, timeout: Duration, what: &str) -> Result<ExitStatus, String> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.finished = true;
                    return Ok(st);
                }
                Ok(None) if start.elapsed() > timeout => {
                    self.kill();
                    return Err(format!("{what} did not finish in {}s", timeout.as_secs()));
                }
                Ok(None) => sleep(POLL),
                Err(e) => return Err(format!("waiting for {what}: {e}")),
            }
        }
    }

    fn kill(&mut self) {
        // The group id is the child's pid (process_group(0)); `kill -- -PGID` needs no unsafe.
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &pgid])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finished = true;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.finished {
            self.kill();
        }
    }
}

/// Where a run's stdout, stderr and time report go.
pub struct Logs {
    /// The program's stdout.
    pub stdout: PathBuf,
    /// The program's stderr.
    pub stderr: PathBuf,
    /// GNU time's report (`-o`).
    pub time: PathBuf,
}

impl Logs {
    /// `DIR/LABEL.stdout`, `.stderr` and `.time`.
    pub fn new(dir: &Path, label: &str) -> Logs {
        Logs {
            stdout: dir.join(format!("{label}.stdout")),
            stderr: dir.join(format!("{label}.stderr")),
            time: dir.join(format!("{label}.time")),
        }
    }
}

/// What GNU time measured, and what the program printed.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Wall-clock seconds (`%e`).
    pub seconds: f64,
    /// Peak resident set size in KiB (`%M`).
    pub rss_kib: u64,
    /// User plus system CPU seconds (`%U` + `%S`).
    pub cpu_seconds: f64,
    /// The program's stdout.
    pub stdout: String,
}

/// Runs `program args` under GNU time with a timeout; a non-zero exit is an error that quotes
/// the end of the program's stderr.
pub fn run_timed(
    program: &Path,
    args: &[String],
    logs: &Logs,
    timeout: Duration,
) -> Result<Measured, String> {
    let what = program.display().to_string();
    let mut cmd = Command::new(GNU_TIME);
    cmd.arg("-o")
        .arg(&logs.time)
        .args(["-f", "%e %M %U %S"])
        .arg(program)
        .args(args);
    let st = run_logged(cmd, logs, timeout, &what)?;
    if !st.success() {
        return Err(format!(
            "{what} {} failed ({st}):\n{}",
            args.join(" "),
            tail(&logs.stderr, 20)
        ));
    }
    let report = fs::read_to_string(&logs.time)
        .map_err(|e| format!("cannot read {}: {e}", logs.time.display()))?;
    let (seconds, rss_kib, cpu_seconds) = parse_time_report(&report)
        .ok_or_else(|| format!("cannot parse GNU time output {report:?}"))?;
    let stdout = fs::read_to_string(&logs.stdout).unwrap_or_default();
    Ok(Measured {
        seconds,
        rss_kib,
        cpu_seconds,
        stdout,
    })
}

/// Runs `cmd` with stdout and stderr going to the log files, killing it after `timeout`.
pub fn run_logged(
    mut cmd: Command,
    logs: &Logs,
    timeout: Duration,
    what: &str,
) -> Result<ExitStatus, String> {
    let out = fs::File::create(&logs.stdout)
        .map_err(|e| format!("cannot create {}: {e}", logs.stdout.display()))?;
    let err = fs::File::create(&logs.stderr)
        .map_err(|e| format!("cannot create {}: {e}", logs.stderr.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    Group::spawn(cmd, what)?.wait(timeout, what)
}

/// Parses GNU time's `-f '%e %M %U %S'` report into wall seconds, peak RSS in KiB and CPU
/// seconds. When the program fails, time writes "Command exited with non-zero status N" first,
/// so the figures are on the last non-empty line.
pub fn parse_time_report(s: &str) -> Option<(f64, u64, f64)> {
    let line = s.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut it = line.split_whitespace();
    let secs = it.next()?.parse().ok()?;
    let rss = it.next()?.parse().ok()?;
    let user: f64 = it.next()?.parse().ok()?;
    let sys: f64 = it.next()?.parse().ok()?;
    Some((secs, rss, user + sys))
}

/// An nbdkit server on a Unix socket, killed (and its socket removed) when dropped.
pub struct Server {
    group: Group,
    socket: PathBuf,
}

impl Server {
    /// Starts `nbdkit -f --exit-with-parent -U SOCKET ARGS...` and waits until the socket
    /// accepts connections.
    pub fn start(
        nbdkit: &Path,
        args: &[String],
        socket: &Path,
        log: &Path,
    ) -> Result<Server, String> {
        remove_if_exists(socket)?;
        let err =
            fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(nbdkit);
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let mut server = Server {
            group: Group::spawn(cmd, "nbdkit")?,
            socket: socket.to_path_buf(),
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = server.group.child.try_wait() {
                server.group.finished = true;
                return Err(format!(
                    "nbdkit {} exited ({st}):\n{}",
                    args.join(" "),
                    tail(log, 20)
                ));
            }
            if UnixStream::connect(socket).is_ok() {
                return Ok(server);
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("nbdkit did not open {} in 30s", socket.display()));
            }
            sleep(POLL);
        }
    }

    /// The server's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.group.child.id()
    }

    /// The NBD URI of the export, as libnbd and qemu spell it.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.group.finished {
            self.group.kill();
        }
        let _ = remove_if_exists(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_report_gives_seconds_and_kib() {
        assert_eq!(
            parse_time_report("3.21 30124 1.50 0.25\n"),
            Some((3.21, 30124, 1.75))
        );
    }

    #[test]
    fn time_report_of_a_failed_command_uses_the_last_line() {
        let s = "Command exited with non-zero status 1\n0.01 2048 0.00 0.01\n";
        assert_eq!(parse_time_report(s), Some((0.01, 2048, 0.01)));
    }

    #[test]
    fn empty_time_report_is_refused() {
        assert_eq!(parse_time_report("\n"), None);
    }
}

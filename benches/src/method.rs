//! The benchmark method, written down once so that no benchmark flatters ferry.
//!
//! - Memory is pre-touched. On a virtual machine a page of memory touched for the first time is
//!   expensive (the hypervisor backs it then): the same nbdcopy run takes 0.63 s or 1.8 s on
//!   tmpfs depending on it alone. Before the rounds, [`pretouch`] writes and deletes a file of
//!   at least twice the output size on the output's filesystem, so that every tool writes into
//!   memory the guest already owns.
//! - At least [`MIN_ROUNDS`] rounds, alternating the tools, and both the minimum and the median
//!   are reported: a 5-round median can flip a conclusion.
//! - CPU seconds of the copier and of the server it talks to ([`cpu_seconds`] of a process,
//!   from `/proc/PID/stat`, before and after each run): a client that makes its server work
//!   harder is not cheaper.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Fewest rounds a benchmark runs by default.
pub const MIN_ROUNDS: usize = 7;

/// Clock ticks per second of `/proc/PID/stat`'s times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// Writes a file of `bytes` bytes (not zeros) into `dir`, syncs it and deletes it, so the pages
/// it took are the guest's before anything is timed. Returns how long that took.
pub fn pretouch(dir: &Path, bytes: u64) -> Result<Duration, String> {
    let path = dir.join(".ferry-pretouch");
    let started = Instant::now();
    let result = (|| {
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let chunk = vec![0x5au8; 8 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])
                .map_err(|e| format!("pre-touching {}: {e}", path.display()))?;
            left -= n as u64;
        }
        f.sync_all()
            .map_err(|e| format!("pre-touching {}: {e}", path.display()))
    })();
    let _ = std::fs::remove_file(&path);
    result.map(|()| started.elapsed())
}

/// User plus system CPU seconds process `pid` has used so far (its threads included), or `None`
/// when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

/// [`cpu_seconds`] of `pid` and of every process below it (a server that forks workers), or
/// `None` when `pid` is gone.
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let mut total = cpu_seconds(pid)?;
    let mut parents = vec![pid];
    let procs: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            // `rest` starts at field 3 (the state); the parent's pid is field 4.
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    while let Some(parent) = parents.pop() {
        for &(p, _) in procs.iter().filter(|(_, pp)| *pp == parent) {
            total += cpu_seconds(p).unwrap_or(0.0);
            parents.push(p);
        }
    }
    Some(total)
}

/// [`cpu_seconds`] from the text of `/proc/PID/stat`: utime and stime are its 14th and 15th
/// fields; the command name (the 2nd, in parentheses) may hold spaces, so fields are counted
/// after its closing parenthesis.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The smallest of `v` (NaN when empty).
pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_after_the_command_name() {
        let stat = "4242 (nbdkit (x) y) S 1 4242 4242 0 -1 4194560 200 0 0 0 150 37 0 0 20 0 5 0";
        assert_eq!(parse_cpu_seconds(stat), Some(1.87));
        assert_eq!(parse_cpu_seconds("1 (short) S 1"), None);
        let own = cpu_seconds(std::process::id()).expect("this process");
        assert!(own >= 0.0);
    }

    #[test]
    fn pretouch_leaves_nothing_behind() {
        let d = tempfile_dir();
        pretouch(&d, 3 << 20).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-pretouch-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn min_ignores_nothing_and_is_nan_when_empty() {
        assert_eq!(min(&[0.9, 0.63, 1.8]), 0.63);
        assert!(min(&[]).is_nan());
    }
}

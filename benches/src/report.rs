//! Figures of a scenario: per-run records, medians, ratios against the peers, the goals, and their
//! rendering as a table and as JSON.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::args::Tool;

/// The speed goal: importer's median wall time at most this times nbdcopy's.
pub const SPEED_GOAL: f64 = 0.9;
/// The memory goal: importer's peak RSS at most this many MiB.
pub const RSS_GOAL_MIB: f64 = 64.0;

const MIB: f64 = 1024.0 * 1024.0;

/// One run of one tool.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Round number, from 1.
    pub round: usize,
    /// Wall seconds (GNU time).
    pub seconds: f64,
    /// Seconds the `sync` right after the run took (dirty data the tool left in the page cache).
    pub sync_seconds: f64,
    /// Peak RSS in KiB (GNU time).
    pub rss_kib: u64,
    /// The tool's user plus system CPU seconds (GNU time).
    pub cpu_seconds: f64,
    /// CPU seconds nbdkit spent serving the run (from its `/proc/PID/stat`).
    pub server_cpu_seconds: f64,
    /// importer's own JSON line, when the tool is importer.
    pub report: Option<Value>,
}

/// Median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// All runs of one tool in one scenario, and their summary.
#[derive(Debug, Clone)]
pub struct ToolResult {
    /// Which tool.
    pub tool: Tool,
    /// Its runs, in order.
    pub runs: Vec<RunRecord>,
}

impl ToolResult {
    /// Median wall seconds.
    pub fn median_s(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.seconds).collect::<Vec<_>>())
    }

    /// Fastest wall seconds.
    pub fn min_s(&self) -> f64 {
        benches::method::min(&self.runs.iter().map(|r| r.seconds).collect::<Vec<_>>())
    }

    /// Median CPU seconds of the tool.
    pub fn median_cpu_s(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.cpu_seconds).collect::<Vec<_>>())
    }

    /// Median CPU seconds of the server serving the tool.
    pub fn median_server_cpu_s(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.server_cpu_seconds)
                .collect::<Vec<_>>(),
        )
    }

    /// Median of wall seconds plus the following `sync`: the time until the data is durable.
    pub fn median_durable_s(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.seconds + r.sync_seconds)
                .collect::<Vec<_>>(),
        )
    }

    /// Largest peak RSS over the runs, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.runs.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0
    }
}

/// Everything measured in one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// `plain` or `delay`.
    pub name: String,
    /// The nbdkit command line after `-U SOCKET`.
    pub source: String,
    /// Disk size in bytes.
    pub size_bytes: u64,
    /// Rounds run.
    pub rounds: usize,
    /// Tools that ran, in table order.
    pub tools: Vec<ToolResult>,
    /// Tools that were asked for but could not run, with the reason.
    pub skipped: Vec<(Tool, String)>,
    /// `importer verify` of the source against importer's output: `None` when importer did not run.
    pub verified: Option<bool>,
}

impl ScenarioResult {
    fn get(&self, t: Tool) -> Option<&ToolResult> {
        self.tools.iter().find(|r| r.tool == t)
    }

    /// Disk MiB per median second.
    pub fn mib_per_s(&self, r: &ToolResult) -> f64 {
        self.size_bytes as f64 / MIB / r.median_s()
    }

    /// importer's median wall time over `peer`'s.
    pub fn ratio(&self, peer: Tool) -> Option<f64> {
        Some(self.get(Tool::Importer)?.median_s() / self.get(peer)?.median_s())
    }

    /// importer's median CPU seconds plus its server's over `peer`'s: the whole cost of a copy.
    pub fn cpu_ratio(&self, peer: Tool) -> Option<f64> {
        let cost = |r: &ToolResult| r.median_cpu_s() + r.median_server_cpu_s();
        Some(cost(self.get(Tool::Importer)?) / cost(self.get(peer)?))
    }

    /// The same ratio counting the `sync` after each run.
    pub fn durable_ratio(&self, peer: Tool) -> Option<f64> {
        Some(self.get(Tool::Importer)?.median_durable_s() / self.get(peer)?.median_durable_s())
    }

    /// Whether importer is at most [`SPEED_GOAL`] times nbdcopy (`None`: one of them is missing).
    pub fn speed_goal_met(&self) -> Option<bool> {
        self.ratio(Tool::Nbdcopy).map(|r| r <= SPEED_GOAL)
    }

    /// Whether importer's peak RSS is at most [`RSS_GOAL_MIB`].
    pub fn rss_goal_met(&self) -> Option<bool> {
        self.get(Tool::Importer)
            .map(|r| r.peak_rss_mib() <= RSS_GOAL_MIB)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n== scenario {}: nbdkit {} ({} MiB, {} round{})",
            self.name,
            self.source,
            self.size_bytes as f64 / MIB,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        );
        if self.rounds < benches::method::MIN_ROUNDS {
            let _ = writeln!(
                s,
                "(only {} rounds: fewer than {}, too few to conclude from)",
                self.rounds,
                benches::method::MIN_ROUNDS
            );
        }
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>9} {:>8} {:>8} {:>11} {:>9} {:>12}",
            "tool", "min s", "median s", "MiB/s", "cpu s", "nbdkit cpu", "RSS MiB", "median +sync"
        );
        for r in &self.tools {
            let _ = writeln!(
                s,
                "{:<10} {:>8.3} {:>9.3} {:>8.1} {:>8.2} {:>11.2} {:>9.1} {:>12.3}",
                r.tool.name(),
                r.min_s(),
                r.median_s(),
                self.mib_per_s(r),
                r.median_cpu_s(),
                r.median_server_cpu_s(),
                r.peak_rss_mib(),
                r.median_durable_s()
            );
        }
        for (t, why) in &self.skipped {
            let _ = writeln!(s, "{:<10} skipped: {why}", t.name());
        }
        for peer in [Tool::Nbdcopy, Tool::QemuImg] {
            let (Some(r), Some(d)) = (self.ratio(peer), self.durable_ratio(peer)) else {
                continue;
            };
            let goal = match peer {
                Tool::Nbdcopy => format!(
                    "   goal <= {SPEED_GOAL:.2}x: {}",
                    met(Some(r <= SPEED_GOAL))
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "ratio importer/{:<9} {r:>6.2}x  (+sync {d:.2}x){goal}",
                peer.name()
            );
        }
        if let Some(c) = self.cpu_ratio(Tool::Nbdcopy) {
            let _ = writeln!(
                s,
                "cpu (tool + nbdkit) importer/nbdcopy {c:.2}x   goal <= 1.00x: {}",
                met(Some(c <= 1.0))
            );
        }
        if let Some(r) = self.get(Tool::Importer) {
            let _ = writeln!(
                s,
                "importer peak RSS {:.1} MiB   goal <= {RSS_GOAL_MIB:.0} MiB: {}",
                r.peak_rss_mib(),
                met(self.rss_goal_met())
            );
        }
        let _ = writeln!(
            s,
            "verify: {}",
            match self.verified {
                Some(true) => "importer output equals the source (importer verify exit 0)",
                Some(false) => "IMPORTER OUTPUT DIFFERS FROM THE SOURCE",
                None => "not run (importer skipped)",
            }
        );
        s
    }

    /// All figures as JSON.
    pub fn json(&self) -> Value {
        let tools: serde_json::Map<String, Value> = self
            .tools
            .iter()
            .map(|r| {
                let runs: Vec<Value> = r
                    .runs
                    .iter()
                    .map(|x| {
                        json!({
                            "round": x.round,
                            "seconds": x.seconds,
                            "sync_seconds": round3(x.sync_seconds),
                            "rss_kib": x.rss_kib,
                            "cpu_seconds": round3(x.cpu_seconds),
                            "nbdkit_cpu_seconds": round3(x.server_cpu_seconds),
                            "report": x.report,
                        })
                    })
                    .collect();
                let v = json!({
                    "min_s": round3(r.min_s()),
                    "median_s": round3(r.median_s()),
                    "median_cpu_s": round3(r.median_cpu_s()),
                    "median_nbdkit_cpu_s": round3(r.median_server_cpu_s()),
                    "median_durable_s": round3(r.median_durable_s()),
                    "mib_per_s": round1(self.mib_per_s(r)),
                    "peak_rss_mib": round1(r.peak_rss_mib()),
                    "runs": runs,
                });
                (r.tool.name().to_string(), v)
            })
            .collect();
        let skipped: serde_json::Map<String, Value> = self
            .skipped
            .iter()
            .map(|(t, why)| (t.name().to_string(), Value::from(why.as_str())))
            .collect();
        json!({
            "name": self.name,
            "source": format!("nbdkit {}", self.source),
            "size_bytes": self.size_bytes,
            "rounds": self.rounds,
            "tools": tools,
            "skipped": skipped,
            "ratios": {
                "importer/nbdcopy": self.ratio(Tool::Nbdcopy).map(round3),
                "importer/qemu-img": self.ratio(Tool::QemuImg).map(round3),
                "importer/nbdcopy+sync": self.durable_ratio(Tool::Nbdcopy).map(round3),
                "importer/qemu-img+sync": self.durable_ratio(Tool::QemuImg).map(round3),
                "cpu importer/nbdcopy (with nbdkit)": self.cpu_ratio(Tool::Nbdcopy).map(round3),
            },
            "goals": {
                "speed_vs_nbdcopy_max": SPEED_GOAL,
                "speed_met": self.speed_goal_met(),
                "rss_max_mib": RSS_GOAL_MIB,
                "rss_met": self.rss_goal_met(),
            },
            "verified": self.verified,
        })
    }
}

fn met(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "n/a",
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(t: Tool, secs: &[f64], rss_kib: u64) -> ToolResult {
        let runs = secs
            .iter()
            .enumerate()
            .map(|(i, &s)| RunRecord {
                round: i + 1,
                seconds: s,
                sync_seconds: 0.5,
                rss_kib,
                cpu_seconds: s / 2.0,
                server_cpu_seconds: 0.25,
                report: None,
            })
            .collect();
        ToolResult { tool: t, runs }
    }

    fn scenario(tools: Vec<ToolResult>) -> ScenarioResult {
        ScenarioResult {
            name: "plain".into(),
            source: "sparse-random size=4G".into(),
            size_bytes: 4 << 30,
            rounds: 3,
            tools,
            skipped: vec![],
            verified: Some(true),
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn ratios_compare_median_wall_times() {
        let s = scenario(vec![
            tool(Tool::Importer, &[1.0, 9.0, 2.0], 1024),
            tool(Tool::Nbdcopy, &[4.0, 4.0, 4.0], 1024),
        ]);
        assert_eq!(
            (s.ratio(Tool::Nbdcopy), s.speed_goal_met()),
            (Some(0.5), Some(true))
        );
    }

    #[test]
    fn missing_peer_gives_no_ratio_and_no_verdict() {
        let s = scenario(vec![tool(Tool::Importer, &[1.0], 1024)]);
        assert_eq!((s.ratio(Tool::QemuImg), s.speed_goal_met()), (None, None));
    }

    #[test]
    fn rss_goal_uses_the_largest_run() {
        let s = scenario(vec![tool(Tool::Importer, &[1.0], 65 * 1024)]);
        assert_eq!(s.rss_goal_met(), Some(false));
    }

    #[test]
    fn mib_per_s_is_disk_size_over_median_time() {
        let s = scenario(vec![tool(Tool::Importer, &[4.0], 1024)]);
        assert_eq!(s.mib_per_s(&s.tools[0]), 1024.0);
    }
}

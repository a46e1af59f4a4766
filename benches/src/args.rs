//! Command-line options of `transfer-bench`, parsed from `std::env::args` by hand so that the
//! benchmark adds no dependency (and no change to the workspace lock file).

use std::path::PathBuf;
use std::time::Duration;

use transfer_core::size::parse_size;

/// Help text (`--help`).
pub const USAGE: &str = "\
transfer-bench: side-by-side copy benchmark of importer, nbdcopy and qemu-img from nbdkit

usage: transfer-bench [OPTIONS]

  --importer PATH             importer binary (default: `importer` next to this binary)
  --size SIZE                 disk size for nbdkit sparse-random (default 4G)
  --percent N                 percentage of data in the disk (default 50)
  --seed N                    sparse-random seed (default 1)
  --rounds N                  rounds; each round runs every tool once (default 7; fewer
                              are reported as not enough to conclude from)
  --dir DIR                   where output files and logs go (default /var/tmp/ferry-bench)
  --scenario plain|delay|all  which scenarios to run (default all)
  --delay TIME                read delay of the `delay` scenario (default 2ms)
  --tools LIST                comma-separated subset of importer,nbdcopy,qemu-img (default all)
  --extra-importer-args ARGS  extra arguments for `importer copy` (split on whitespace)
  --timeout SECS              kill a run that takes longer than this (default 900)
  -h, --help                  this text
";

/// A copy tool under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    /// ferry's `importer copy`.
    Importer,
    /// libnbd's `nbdcopy`.
    Nbdcopy,
    /// `qemu-img convert`.
    QemuImg,
}

impl Tool {
    /// Every tool, in table order.
    pub const ALL: [Tool; 3] = [Tool::Importer, Tool::Nbdcopy, Tool::QemuImg];

    /// The name used in tables, file names and `--tools`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Importer => "importer",
            Tool::Nbdcopy => "nbdcopy",
            Tool::QemuImg => "qemu-img",
        }
    }

    fn parse(s: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// What nbdkit serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `sparse-random` as fast as nbdkit can serve it.
    Plain,
    /// The same behind `--filter=delay rdelay=...` (a slow, high-latency source).
    Delay,
}

impl Scenario {
    /// The name used in tables, file names and `--scenario`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Delay => "delay",
        }
    }
}

/// Everything the benchmark is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The importer binary; `None` means next to the current executable.
    pub importer: Option<PathBuf>,
    /// Disk size as given to nbdkit (`4G`).
    pub size: String,
    /// The same in bytes.
    pub size_bytes: u64,
    /// Data percentage as given to nbdkit.
    pub percent: String,
    /// sparse-random seed.
    pub seed: u64,
    /// Rounds per scenario.
    pub rounds: usize,
    /// Output and log directory.
    pub dir: PathBuf,
    /// Scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// `rdelay` of the delay scenario (`2ms`).
    pub delay: String,
    /// Tools to run, in table order.
    pub tools: Vec<Tool>,
    /// Extra arguments for `importer copy`.
    pub extra_importer_args: Vec<String>,
    /// Upper bound of one run.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            importer: None,
            size: "4G".into(),
            size_bytes: 4 << 30,
            percent: "50".into(),
            seed: 1,
            rounds: benches::method::MIN_ROUNDS,
            dir: PathBuf::from("/var/tmp/ferry-bench"),
            scenarios: vec![Scenario::Plain, Scenario::Delay],
            delay: "2ms".into(),
            tools: Tool::ALL.to_vec(),
            extra_importer_args: Vec::new(),
            timeout: Duration::from_secs(900),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these options.
    Run(Box<Options>),
    /// Print [`USAGE`] and exit.
    Help,
}

/// Parses the arguments after the program name. Accepts `--opt value` and `--opt=value`.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !key.starts_with("--") {
            return Err(format!("unexpected argument '{arg}'"));
        }
        let mut value = || match inline.clone() {
            Some(v) => Ok(v),
            None => it.next().ok_or_else(|| format!("{key} needs a value")),
        };
        match key.as_str() {
            "--importer" => o.importer = Some(PathBuf::from(value()?)),
            "--size" => {
                let v = value()?;
                o.size_bytes = parse_size(&v).map_err(|e| format!("--size: {e}"))?;
                if o.size_bytes == 0 {
                    return Err("--size must be more than 0".into());
                }
                o.size = v;
            }
            "--percent" => {
                let v = value()?;
                match v.parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => o.percent = v,
                    _ => return Err(format!("--percent must be 0-100, not '{v}'")),
                }
            }
            "--seed" => o.seed = number(&key, &value()?)?,
            "--rounds" => {
                o.rounds = number(&key, &value()?)?;
                if o.rounds == 0 {
                    return Err("--rounds must be at least 1".into());
                }
            }
            "--dir" => o.dir = PathBuf::from(value()?),
            "--scenario" => {
                o.scenarios = match value()?.as_str() {
                    "plain" => vec![Scenario::Plain],
                    "delay" => vec![Scenario::Delay],
                    "all" => vec![Scenario::Plain, Scenario::Delay],
                    v => return Err(format!("--scenario must be plain, delay or all, not '{v}'")),
                }
            }
            "--delay" => o.delay = value()?,
            "--tools" => o.tools = tools(&value()?)?,
            "--extra-importer-args" => {
                o.extra_importer_args = value()?.split_whitespace().map(String::from).collect()
            }
            "--timeout" => o.timeout = Duration::from_secs(number(&key, &value()?)?),
            _ => return Err(format!("unknown option '{key}'")),
        }
    }
    Ok(Parsed::Run(Box::new(o)))
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{key} needs a number, not '{v}'"))
}

fn tools(list: &str) -> Result<Vec<Tool>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let t = Tool::parse(name).ok_or_else(|| {
            format!("unknown tool '{name}' (expected importer, nbdcopy, qemu-img)")
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err("--tools names no tool".into());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let o = run(&[]).unwrap();
        assert_eq!(
            (o.size_bytes, o.rounds, o.scenarios.len(), o.tools.len()),
            (4 << 30, 7, 2, 3)
        );
    }

    #[test]
    fn both_value_spellings_are_accepted() {
        let o = run(&["--rounds", "2", "--size=1G", "--scenario=delay"]).unwrap();
        assert_eq!(
            (o.rounds, o.size_bytes, o.scenarios),
            (2, 1 << 30, vec![Scenario::Delay])
        );
    }

    #[test]
    fn tools_are_deduplicated_and_kept_in_table_order() {
        let o = run(&["--tools", "qemu-img,importer,importer"]).unwrap();
        assert_eq!(o.tools, vec![Tool::Importer, Tool::QemuImg]);
    }

    #[test]
    fn extra_importer_args_are_split_on_whitespace() {
        let o = run(&["--extra-importer-args", "--connections 8  --requests 32"]).unwrap();
        assert_eq!(
            o.extra_importer_args,
            ["--connections", "8", "--requests", "32"]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--rounds", "0"][..],
            &["--percent", "101"],
            &["--tools", "dd"],
            &["--scenario", "fast"],
            &["--size"],
            &["--frobnicate"],
        ] {
            assert!(run(args).is_err(), "{args:?}");
        }
    }
}

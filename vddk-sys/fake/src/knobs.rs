//! The `FAKE_VDDK_*` environment knobs, read when `VixDiskLib_InitEx` starts a session (or, for
//! a call made before any InitEx, when the first call needs them). A knob that is unset or empty
//! takes its default; a malformed one is an error that InitEx reports (see the crate docs).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use vddk_sys::VixError;

use crate::ffi::FAIL;

/// The calls `FAKE_VDDK_FAIL` can make fail (`Read` covers `ReadAsync` too).
pub const FAILABLE: [&str; 8] = [
    "InitEx",
    "PrepareForAccess",
    "ConnectEx",
    "Open",
    "GetInfo",
    "QueryAllocatedBlocks",
    "Read",
    "Flush",
];

/// The calls `FAKE_VDDK_HANG` can make never return.
pub const HANGABLE: [&str; 5] = ["ConnectEx", "Open", "Wait", "Close", "Disconnect"];

/// The transport modes offered when `FAKE_VDDK_TRANSPORTS` is unset.
pub const DEFAULT_TRANSPORTS: &str = "file:san:hotadd:nbdssl:nbd";

/// The VDDK version reported when `FAKE_VDDK_VERSION` is unset.
pub const DEFAULT_VERSION: &str = "8.0.3";

/// The knobs of one session.
#[derive(Debug)]
pub struct Knobs {
    /// Every `FAKE_VDDK_*` variable as it was read (knobs of one library only are parsed there).
    raw: BTreeMap<String, OsString>,
    /// `FAKE_VDDK_ROOT`: the directory holding one directory per datastore.
    pub root: Option<PathBuf>,
    /// `FAKE_VDDK_LOG`: the call log.
    pub log: Option<PathBuf>,
    /// `FAKE_VDDK_LATENCY_US`: added to every read and allocation query.
    pub latency: Duration,
    /// `FAKE_VDDK_BANDWIDTH`: bytes per second of one handle's wire, 0 for unlimited.
    pub bandwidth: u64,
    /// `FAKE_VDDK_CONNECT_US`: how long every ConnectEx takes before it answers.
    pub connect: Duration,
    /// `FAKE_VDDK_FAIL`: calls that always fail, with their code.
    pub fail: BTreeMap<String, VixError>,
    /// `FAKE_VDDK_FAIL_READ`: the 1-based number of the read that fails, and its code.
    pub fail_read: Option<(u64, VixError)>,
    /// `FAKE_VDDK_HANG`: calls that never return.
    pub hang: Vec<String>,
    /// `FAKE_VDDK_HANG_READ`: the 1-based number of the read that never completes.
    pub hang_read: Option<u64>,
    /// `FAKE_VDDK_COMPLETE_INLINE`: ReadAsync calls its callback before it returns.
    pub complete_inline: bool,
    /// `FAKE_VDDK_PASSWORD`: the password ConnectEx expects.
    pub password: Option<String>,
    /// `FAKE_VDDK_THUMBPRINT`: the server certificate's SHA-1 thumbprint ConnectEx expects.
    pub thumbprint: Option<String>,
    /// `FAKE_VDDK_TRANSPORTS`: the transport modes offered, colon-separated.
    pub transports: String,
    /// `FAKE_VDDK_VERSION`: the version InitEx announces.
    pub version: String,
    /// `FAKE_VDDK_ESX_HOST`: the ESXi host Open reports the disk was opened on.
    pub esx_host: Option<String>,
}

impl Knobs {
    /// The knobs of the process environment, and the complaints about malformed ones (which
    /// keep their defaults).
    pub fn from_env() -> (Knobs, Vec<String>) {
        Knobs::parse(
            std::env::vars_os()
                .filter(|(k, _)| k.to_str().is_some_and(|k| k.starts_with("FAKE_VDDK_")))
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v))),
        )
    }

    /// The knobs of `vars` (name, value pairs), and the complaints about malformed ones.
    pub fn parse(vars: impl IntoIterator<Item = (String, OsString)>) -> (Knobs, Vec<String>) {
        let raw: BTreeMap<String, OsString> =
            vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let mut errors = Vec::new();
        let latency = knob(&raw, "FAKE_VDDK_LATENCY_US", &mut errors, number);
        let bandwidth = knob(&raw, "FAKE_VDDK_BANDWIDTH", &mut errors, number);
        let connect = knob(&raw, "FAKE_VDDK_CONNECT_US", &mut errors, number);
        let fail = knob(&raw, "FAKE_VDDK_FAIL", &mut errors, fail_list);
        let fail_read = knob(&raw, "FAKE_VDDK_FAIL_READ", &mut errors, nth_read);
        let hang = knob(&raw, "FAKE_VDDK_HANG", &mut errors, hang_list);
        let hang_read = knob(&raw, "FAKE_VDDK_HANG_READ", &mut errors, |v| {
            nth_read(v).map(|(n, _)| n)
        });
        let complete_inline = knob(&raw, "FAKE_VDDK_COMPLETE_INLINE", &mut errors, flag);
        let text = |name: &str| raw.get(name).map(|v| v.to_string_lossy().into_owned());
        let knobs = Knobs {
            root: raw.get("FAKE_VDDK_ROOT").map(PathBuf::from),
            log: raw.get("FAKE_VDDK_LOG").map(PathBuf::from),
            latency: latency.map(Duration::from_micros).unwrap_or_default(),
            bandwidth: bandwidth.unwrap_or(0),
            connect: connect.map(Duration::from_micros).unwrap_or_default(),
            fail: fail.unwrap_or_default(),
            fail_read,
            hang: hang.unwrap_or_default(),
            hang_read,
            complete_inline: complete_inline.unwrap_or(false),
            password: text("FAKE_VDDK_PASSWORD"),
            thumbprint: text("FAKE_VDDK_THUMBPRINT"),
            transports: text("FAKE_VDDK_TRANSPORTS").unwrap_or_else(|| DEFAULT_TRANSPORTS.into()),
            version: text("FAKE_VDDK_VERSION").unwrap_or_else(|| DEFAULT_VERSION.into()),
            esx_host: text("FAKE_VDDK_ESX_HOST"),
            raw,
        };
        (knobs, errors)
    }

    /// The value of the knob `name` as it was read, for knobs one library parses itself.
    pub fn raw(&self, name: &str) -> Option<&OsStr> {
        self.raw.get(name).map(OsString::as_os_str)
    }

    /// The code `call` fails with, if `FAKE_VDDK_FAIL` names it.
    pub fn failure(&self, call: &str) -> Option<VixError> {
        self.fail.get(call).copied()
    }

    /// Whether `FAKE_VDDK_HANG` names `call`.
    pub fn hangs(&self, call: &str) -> bool {
        self.hang.iter().any(|c| c == call)
    }

    /// Whether the transport `mode` is offered.
    pub fn offers(&self, mode: &str) -> bool {
        self.transports.split(':').any(|m| m == mode)
    }
}

/// The knob `name` of `raw` parsed by `parse`; a malformed value is added to `errors`.
fn knob<T>(
    raw: &BTreeMap<String, OsString>,
    name: &str,
    errors: &mut Vec<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Option<T> {
    let v = raw.get(name)?;
    let parsed = v
        .to_str()
        .ok_or_else(|| "not UTF-8".to_owned())
        .and_then(parse);
    parsed
        .map_err(|e| errors.push(format!("{name}={}: {e}", v.to_string_lossy())))
        .ok()
}

/// `FAKE_VDDK_FAIL`: `Call[:code],...`.
fn fail_list(v: &str) -> Result<BTreeMap<String, VixError>, String> {
    let mut fail = BTreeMap::new();
    for item in v.split(',').filter(|i| !i.trim().is_empty()) {
        let (call, code) = with_code(item)?;
        if !FAILABLE.contains(&call) {
            return Err(format!("{call} is not one of {}", FAILABLE.join(", ")));
        }
        fail.insert(call.to_owned(), code);
    }
    Ok(fail)
}

/// `FAKE_VDDK_HANG`: `Call,...`.
fn hang_list(v: &str) -> Result<Vec<String>, String> {
    let calls: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    match calls.iter().find(|c| !HANGABLE.contains(&c.as_str())) {
        Some(c) => Err(format!("{c} is not one of {}", HANGABLE.join(", "))),
        None => Ok(calls),
    }
}

/// `1` or `0`.
fn flag(v: &str) -> Result<bool, String> {
    match v.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(format!("{v:?} is not 0 or 1")),
    }
}

/// `FAKE_VDDK_FAIL_READ`: `N[:code]`, N counted from 1.
fn nth_read(v: &str) -> Result<(u64, VixError), String> {
    let (n, code) = with_code(v)?;
    match number(n)? {
        0 => Err("reads are counted from 1".to_owned()),
        n => Ok((n, code)),
    }
}

/// A decimal number.
fn number(v: &str) -> Result<u64, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number"))
}

/// `X` or `X:CODE`: X, and CODE (VIX_E_FAIL when absent).
fn with_code(item: &str) -> Result<(&str, VixError), String> {
    match item.split_once(':') {
        None => Ok((item.trim(), FAIL)),
        Some((x, code)) => Ok((x.trim(), number(code)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> (Knobs, Vec<String>) {
        Knobs::parse(vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))))
    }

    #[test]
    fn unset_knobs_take_their_defaults() {
        let (k, errors) = parse(&[]);

        assert!(errors.is_empty());
        assert_eq!(k.transports, DEFAULT_TRANSPORTS);
        assert_eq!(k.version, DEFAULT_VERSION);
        assert_eq!(k.latency, Duration::ZERO);
        assert_eq!(k.bandwidth, 0);
        assert_eq!(k.connect, Duration::ZERO);
        assert_eq!(k.fail_read, None);
        assert!(k.root.is_none() && k.log.is_none() && k.password.is_none());
    }

    #[test]
    fn failures_default_to_vix_e_fail_and_take_a_code() {
        let (k, errors) = parse(&[
            ("FAKE_VDDK_FAIL", "Open,Flush:6"),
            ("FAKE_VDDK_FAIL_READ", "3:4"),
        ]);

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(k.failure("Open"), Some(FAIL));
        assert_eq!(k.failure("Flush"), Some(6));
        assert_eq!(k.failure("Read"), None);
        assert_eq!(k.fail_read, Some((3, 4)));
    }

    #[test]
    fn hangs_name_calls_and_a_read() {
        let (k, errors) = parse(&[
            ("FAKE_VDDK_HANG", "ConnectEx, Wait"),
            ("FAKE_VDDK_HANG_READ", "5"),
            ("FAKE_VDDK_COMPLETE_INLINE", "1"),
        ]);

        assert!(errors.is_empty(), "{errors:?}");
        assert!(k.hangs("ConnectEx") && k.hangs("Wait") && !k.hangs("Open"));
        assert_eq!(k.hang_read, Some(5));
        assert!(k.complete_inline);
        let (_, errors) = parse(&[
            ("FAKE_VDDK_HANG", "Read"),
            ("FAKE_VDDK_COMPLETE_INLINE", "y"),
        ]);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn malformed_knobs_are_named_and_keep_their_defaults() {
        let (k, errors) = parse(&[
            ("FAKE_VDDK_LATENCY_US", "soon"),
            ("FAKE_VDDK_FAIL", "Reed"),
            ("FAKE_VDDK_FAIL_READ", "0"),
            ("FAKE_VDDK_BANDWIDTH", ""),
        ]);

        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("FAKE_VDDK_LATENCY_US=soon"),
            "{errors:?}"
        );
        assert!(errors[1].contains("Reed is not one of"), "{errors:?}");
        assert!(errors[2].contains("counted from 1"), "{errors:?}");
        assert_eq!(k.latency, Duration::ZERO);
        assert!(k.fail.is_empty());
    }

    #[test]
    fn the_connect_time_is_in_microseconds_and_must_be_a_number() {
        let (k, errors) = parse(&[("FAKE_VDDK_CONNECT_US", "200000")]);

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(k.connect, Duration::from_millis(200));
        let (k, errors) = parse(&[("FAKE_VDDK_CONNECT_US", "2s")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("FAKE_VDDK_CONNECT_US=2s"),
            "{errors:?}"
        );
        assert_eq!(k.connect, Duration::ZERO);
    }

    #[test]
    fn offered_transports_are_matched_whole() {
        let (k, _) = parse(&[("FAKE_VDDK_TRANSPORTS", "nbdssl:hotadd")]);

        assert!(k.offers("nbdssl"));
        assert!(!k.offers("nbd"));
        assert!(k.raw("FAKE_VDDK_TRANSPORTS").is_some());
    }
}

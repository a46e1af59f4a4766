//! The parameters of a VDDK source, from a `vddk://` URL and `KEY=VALUE` overrides. Pure
//! parsing, no I/O (the password file is read by the caller).
//!
//! ```text
//! vddk://USER@SERVER[:PORT]/?vm=moref=vm-42&file=[datastore1] vm/vm.vmdk&thumbprint=01:..:EF
//!        [&snapshot=snapshot-7][&transports=nbdssl:nbd][&nfchostport=902][&config=FILE]
//!        [&libdir=DIR][&max-request=2M][&connections=1]
//! ```
//! The keys are nbdkit-vddk's where it has one (`vm`, `file`, `snapshot`, `thumbprint`,
//! `transports`, `nfchostport`, `config`, `libdir`, `port`, `server`, `user`). A password
//! is never accepted in the URL or as a key: it comes from a file or the environment.

use std::fmt;
use std::path::PathBuf;

use crate::error::{invalid, Hint, Result};
use crate::size::parse_size;
use crate::source::percent_decode;

/// Where CDI mounts VDDK in its importer pods.
pub const DEFAULT_LIBDIR: &str = "/opt/vmware-vix-disklib-distrib";
/// vCenter's NFC limit on one request.
pub const DEFAULT_MAX_REQUEST: usize = 2 << 20;
/// How long a VDDK call may go without an answer (opening, a read, closing) before the handle
/// is given up: as long as the network sources' idle timeout.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// The transport modes VDDK knows.
pub const TRANSPORTS: [&str; 5] = ["file", "san", "hotadd", "nbdssl", "nbd"];

/// A secret string: redacted in `{:?}`, never in a message.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s` (one trailing newline, as a password file has, is dropped).
    pub fn new(s: &str) -> Self {
        Secret(
            s.strip_suffix('\n')
                .unwrap_or(s)
                .trim_end_matches('\r')
                .to_owned(),
        )
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Everything needed to open a VMware disk through VDDK.
#[derive(Debug, Clone, PartialEq)]
pub struct VddkParams {
    /// vCenter or ESXi host.
    pub server: String,
    /// HTTPS port (443).
    pub port: u32,
    /// NFC port (902).
    pub nfc_port: u32,
    /// User name.
    pub user: String,
    /// Password (set by the caller from a file or the environment).
    pub password: Option<Secret>,
    /// SHA-1 thumbprint of the server certificate, `01:23:...:EF` (upper case).
    pub thumbprint: Option<String>,
    /// The VM as VDDK's vmxSpec: `moref=vm-42`.
    pub vm: String,
    /// The VM's instance or BIOS UUID, looked up through the vSphere API when `vm` is not
    /// given (what CDI passes).
    pub uuid: Option<String>,
    /// Snapshot moref to read the disk at.
    pub snapshot: Option<String>,
    /// The disk: `[datastore1] vm/vm.vmdk`.
    pub file: String,
    /// Transport modes in order of preference (`nbdssl:nbd`); `None`: VDDK's choice.
    pub transports: Option<String>,
    /// VDDK configuration file.
    pub config: Option<PathBuf>,
    /// VDDK installation directory.
    pub libdir: PathBuf,
    /// Largest request (bytes).
    pub max_request: usize,
    /// Connections (VDDK handles) a copy may open; each is an NFC connection on the host.
    pub connections: usize,
    /// How long a VDDK call may go unanswered (ConnectEx and Open together, one read, Close)
    /// before the handle is abandoned; a read that times out is retried on a new handle.
    pub timeout: std::time::Duration,
}

impl Default for VddkParams {
    fn default() -> Self {
        VddkParams {
            server: String::new(),
            port: 443,
            nfc_port: 902,
            user: String::new(),
            password: None,
            thumbprint: None,
            vm: String::new(),
            uuid: None,
            snapshot: None,
            file: String::new(),
            transports: None,
            config: None,
            libdir: PathBuf::from(DEFAULT_LIBDIR),
            max_request: DEFAULT_MAX_REQUEST,
            connections: 1,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

impl VddkParams {
    /// Parses a `vddk://` URL (not yet checked for completeness: see [`VddkParams::check`]).
    pub fn from_url(url: &url::Url) -> Result<Self> {
        if url.scheme() != "vddk" {
            return Err(invalid(format!("not a vddk:// URL: {}", url.scheme())));
        }
        if url.password().is_some() {
            return Err(
                invalid("vddk: a password in the URL would end up in argv and logs")
                    .with_hint(Hint::PasswordFile),
            );
        }
        let mut p = VddkParams::default();
        if let Some(host) = url.host_str() {
            p.server = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
        }
        if let Some(port) = url.port() {
            p.port = u32::from(port);
        }
        if !url.username().is_empty() {
            p.user = percent_decode(url.username());
        }
        let path = percent_decode(url.path().trim_start_matches('/'));
        if !path.is_empty() {
            p.file = path;
        }
        // Decoded by hand: form decoding (`query_pairs`) would turn a `+` of a datastore path
        // into a space.
        for pair in url
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|s| !s.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            p.set(&percent_decode(k), &percent_decode(v))?;
        }
        Ok(p)
    }

    /// Sets one `KEY=VALUE` parameter.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match key {
            "server" => self.server = v.to_owned(),
            "user" => self.user = v.to_owned(),
            "port" => self.port = parse_port(key, v)?,
            "nfchostport" | "nfc-port" => self.nfc_port = parse_port(key, v)?,
            "thumbprint" => self.thumbprint = Some(parse_thumbprint(v)?),
            "vm" => self.vm = parse_vm(v)?,
            "uuid" => self.uuid = non_empty(v),
            "snapshot" => self.snapshot = non_empty(v),
            "file" | "disk" => self.file = v.to_owned(),
            "transports" => self.transports = Some(parse_transports(v)?),
            "config" => self.config = Some(PathBuf::from(v)),
            "libdir" => self.libdir = PathBuf::from(v),
            "max-request" => {
                let n = parse_size(v)?;
                if !(4096..=(64 << 20)).contains(&n) || !n.is_multiple_of(512) {
                    return Err(invalid(format!(
                        "vddk: max-request={v} must be a multiple of 512 between 4K and 64M"
                    )));
                }
                self.max_request = n as usize;
            }
            "connections" => {
                self.connections = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| {
                        invalid(format!("vddk: connections={v} must be between 1 and 64"))
                    })?
            }
            "password" | "passwd" => {
                return Err(invalid("vddk: the password is not a parameter")
                    .with_hint(Hint::PasswordFile))
            }
            other => {
                return Err(invalid(format!(
                    "vddk: unknown parameter '{other}' (server, user, port, nfchostport, thumbprint, vm, uuid, snapshot, file, transports, config, libdir, max-request, connections)"
                )))
            }
        }
        Ok(())
    }

    /// Checks that everything needed to connect is there.
    pub fn check(&self) -> Result<()> {
        let missing = |what: &str| Err(invalid(format!("vddk: {what} is required")));
        if self.server.is_empty() {
            return missing("the server (vddk://USER@SERVER/...)");
        }
        if self.user.is_empty() {
            return missing("the user (vddk://USER@SERVER/...)");
        }
        if self.vm.is_empty() {
            return missing("vm=moref=vm-N (or uuid=, found through the vSphere API)");
        }
        if self.file.is_empty() {
            return missing("file=[datastore] vm/vm.vmdk");
        }
        if self.thumbprint.is_none() {
            return missing("thumbprint= (the SHA-1 fingerprint of the server's certificate)");
        }
        if self.password.is_none() {
            return missing("a password").map_err(|e| e.with_hint(Hint::PasswordFile));
        }
        if !self.file.starts_with('[') || !self.file.contains("] ") {
            return Err(invalid(format!(
                "vddk: file={} is not a datastore path like '[datastore1] vm/vm.vmdk'",
                self.file
            )));
        }
        Ok(())
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

fn parse_port(key: &str, v: &str) -> Result<u32> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(u32::from)
        .ok_or_else(|| invalid(format!("vddk: {key}={v} is not a port number")))
}

/// `01:23:...` (20 bytes, any case, colons optional) -> upper case with colons.
pub fn parse_thumbprint(v: &str) -> Result<String> {
    let hex: String = v.chars().filter(|c| *c != ':').collect();
    if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "vddk: thumbprint '{v}' is not a SHA-1 fingerprint (20 hex bytes, 01:23:...)"
        )));
    }
    let up = hex.to_ascii_uppercase();
    Ok(up
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":"))
}

/// `vm-42` or `moref=vm-42` -> `moref=vm-42`.
fn parse_vm(v: &str) -> Result<String> {
    let id = v.strip_prefix("moref=").unwrap_or(v);
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(format!(
            "vddk: vm={v} is not a VM managed object reference like moref=vm-42"
        )));
    }
    Ok(format!("moref={id}"))
}

fn parse_transports(v: &str) -> Result<String> {
    let modes: Vec<&str> = v.split(':').collect();
    if let Some(bad) = modes.iter().find(|m| !TRANSPORTS.contains(m)) {
        return Err(invalid(format!(
            "vddk: unknown transport '{bad}' (file, san, hotadd, nbdssl, nbd)"
        )));
    }
    Ok(modes.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    const TP: &str = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67";

    #[test]
    fn a_full_url_parses() {
        let p = VddkParams::from_url(&url(&format!(
            "vddk://administrator%40vsphere.local@vcenter.example.com:8443/?vm=moref=vm-42&file=[datastore1] vm-42/vm-42.vmdk&thumbprint={}&snapshot=snapshot-7&transports=nbdssl:nbd&nfchostport=9020&config=/etc/vddk.conf&libdir=/opt/vddk&max-request=1M&connections=2",
            TP.to_lowercase()
        )))
        .unwrap();
        assert_eq!(p.server, "vcenter.example.com");
        assert_eq!(p.port, 8443);
        assert_eq!(p.user, "administrator@vsphere.local");
        assert_eq!(p.vm, "moref=vm-42");
        assert_eq!(p.file, "[datastore1] vm-42/vm-42.vmdk");
        assert_eq!(p.thumbprint.as_deref(), Some(TP));
        assert_eq!(p.snapshot.as_deref(), Some("snapshot-7"));
        assert_eq!(p.transports.as_deref(), Some("nbdssl:nbd"));
        assert_eq!(p.nfc_port, 9020);
        assert_eq!(p.config, Some(PathBuf::from("/etc/vddk.conf")));
        assert_eq!(p.libdir, PathBuf::from("/opt/vddk"));
        assert_eq!(p.max_request, 1 << 20);
        assert_eq!(p.connections, 2);
    }

    #[test]
    fn defaults_are_cdis() {
        let p = VddkParams::from_url(&url("vddk://u@h/?vm=vm-1")).unwrap();
        assert_eq!((p.port, p.nfc_port), (443, 902));
        assert_eq!(p.libdir, PathBuf::from(DEFAULT_LIBDIR));
        assert_eq!(p.max_request, 2 << 20);
        assert_eq!(p.vm, "moref=vm-1");
        assert_eq!(p.connections, 1);
    }

    #[test]
    fn a_plus_in_the_query_stays_a_plus() {
        let p = VddkParams::from_url(&url("vddk://u@h/?vm=vm-1&file=[ds] a+b/a%2Bb.vmdk")).unwrap();
        assert_eq!(p.file, "[ds] a+b/a+b.vmdk");
    }

    #[test]
    fn the_disk_may_be_the_path() {
        let p = VddkParams::from_url(&url("vddk://u@h/[ds1] a b/a b.vmdk?vm=vm-1")).unwrap();
        assert_eq!(p.file, "[ds1] a b/a b.vmdk");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let e = VddkParams::from_url(&url("vddk://u:hunter2@h/?vm=vm-1")).unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let mut p = VddkParams::default();
        let e = p.set("password", "hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn percent_escapes_decode_and_broken_ones_stay() {
        assert_eq!(percent_decode("a%40b%2"), "a@b%2");
        assert_eq!(percent_decode("%e2%82%ac%zz%"), "\u{20ac}%zz%");
    }

    #[test]
    fn bad_values_are_refused() {
        let mut p = VddkParams::default();
        for (k, v) in [
            ("thumbprint", "01:23"),
            ("thumbprint", &"zz".repeat(20)),
            ("vm", "moref="),
            ("vm", "vm 1"),
            ("transports", "nbdssl:ftp"),
            ("port", "0"),
            ("nfchostport", "70000"),
            ("max-request", "100"),
            ("connections", "0"),
            ("colour", "blue"),
        ] {
            assert!(p.set(k, v).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn check_names_what_is_missing() {
        let mut p = VddkParams::from_url(&url("vddk://u@h/?vm=vm-1")).unwrap();
        assert!(p.check().unwrap_err().to_string().contains("file="));
        p.set("file", "[ds] v/v.vmdk").unwrap();
        assert!(p.check().unwrap_err().to_string().contains("thumbprint"));
        p.set("thumbprint", TP).unwrap();
        assert!(p.check().unwrap_err().to_string().contains("password"));
        p.password = Some(Secret::new("pw\n"));
        p.check().unwrap();
        assert_eq!(p.password.as_ref().unwrap().expose(), "pw");
        assert!(!format!("{p:?}").contains("pw\""), "{p:?}");
        p.set("file", "vm.vmdk").unwrap();
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("datastore path"));
    }
}

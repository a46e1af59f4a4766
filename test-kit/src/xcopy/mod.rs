//! In-test servers for the copy-offload populator, where no real system can be installed here:
//! a NetApp ONTAP REST API (`ontap.rs`: igroups, LUNs, LUN maps, as ONTAP's REST reference
//! describes them), a Pure FlashArray REST 2.x API (`pure.rs`: API token, session login, hosts,
//! volumes, connections, as Pure's REST reference describes them) and a Kubernetes API server
//! (`kube.rs`: PVCs, PVs and `coordination.k8s.io/v1` Leases, over TLS with a bearer token, as a
//! pod's service account reaches it). Each keeps its state in a table the tests read.
//!
//! A fake array also stands for the SAN ([`San`]): a LUN backed by a device (a loop device)
//! appears to the ESXi host of the test vCenter as `DIR/naa.*`, a symlink to that device,
//! exactly while the LUN is mapped to an initiator group holding one of the host's initiators
//! (vcsim-ferry's `-esxcli-devices DIR`).

mod kube;
mod ontap;
mod pure;

pub use kube::*;
pub use ontap::*;
pub use pure::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

/// One request to a fake.
pub struct Req {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// Path segments after `strip` (see [`serve`]).
    pub segs: Vec<String>,
    /// Query pairs, decoded.
    pub query: Vec<(String, String)>,
    /// Headers as sent.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

impl Req {
    /// The query value `k`.
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// The header `k` (any case).
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    /// The path segments as `&str`s.
    pub fn segs(&self) -> Vec<&str> {
        self.segs.iter().map(String::as_str).collect()
    }
}

/// An answer: status, extra headers, JSON body.
pub type Answer = (u16, Vec<(&'static str, String)>, Value);

/// Reads one request from `s` (segments taken after the prefix `strip`).
fn read_req(s: &mut impl Read, strip: &str) -> Option<Req> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let url = url::Url::parse(&format!("http://x{target}")).ok()?;
    Some(Req {
        method,
        path: url.path().to_owned(),
        segs: url
            .path()
            .strip_prefix(strip)
            .unwrap_or(url.path())
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        query: url.query_pairs().into_owned().collect(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn write_answer(s: &mut impl Write, (status, extra, body): Answer) {
    let b = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        b.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let _ = write!(s, "{head}\r\n{b}");
    let _ = s.flush();
}

/// Serves `handle` over plain HTTP on 127.0.0.1 (one request per connection), with path
/// segments after `strip`; returns its URL.
pub fn serve(strip: &str, handle: impl Fn(&Req) -> Answer + Send + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let strip = strip.to_owned();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            if let Some(req) = read_req(&mut s, &strip) {
                write_answer(&mut s, handle(&req));
            }
        }
    });
    url
}

/// Serves `handle` over TLS on 127.0.0.1 with the certificate and key files given; returns the
/// port.
pub fn serve_tls(
    cert: &Path,
    key: &Path,
    strip: &str,
    handle: impl Fn(&Req) -> Answer + Send + Sync + 'static,
) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let strip = strip.to_owned();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for tcp in l.incoming().flatten() {
            let (config, strip, handle) = (config.clone(), strip.clone(), handle.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                if let Some(req) = read_req(&mut tls, &strip) {
                    write_answer(&mut tls, handle(&req));
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

/// What a fake array shows one ESXi host.
pub struct San {
    /// vcsim-ferry's `-esxcli-devices` directory.
    pub dir: PathBuf,
    /// The host's initiators as ESXi names them: IQNs and `fc.WWNN:WWPN`.
    pub initiators: Vec<String>,
    /// The array's id of each LUN, its NAA id and the device backing it.
    pub devices: Vec<(String, String, PathBuf)>,
}

impl San {
    /// Whether `initiator`, as an array holds it (an IQN, or a WWPN in hex with or without
    /// colons), is one of the host's.
    pub fn is_hosts(&self, initiator: &str) -> bool {
        let held = initiator.replace(':', "").to_ascii_lowercase();
        let held = if held.starts_with("iqn.") || held.starts_with("eui.") {
            initiator.to_ascii_lowercase()
        } else {
            held
        };
        self.initiators.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("fc.") {
                Some(ids) => ids.split_once(':').is_some_and(|(_, wwpn)| wwpn == held),
                None => h == held,
            }
        })
    }

    /// Makes the device entries match the mappings: `initiators(lun)` lists every initiator
    /// the LUN `lun` is mapped to.
    pub fn sync(&self, initiators: impl Fn(&str) -> Vec<String>) {
        for (lun, naa, dev) in &self.devices {
            let visible = initiators(lun).iter().any(|i| self.is_hosts(i));
            let entry = self.dir.join(naa);
            let exists = entry.symlink_metadata().is_ok();
            if visible && !exists {
                std::os::unix::fs::symlink(dev, &entry).unwrap();
            } else if !visible && exists {
                std::fs::remove_file(&entry).unwrap();
            }
        }
    }
}

/// The `name` of every record in a JSON array (none if it is not one).
fn names(records: &Value) -> Vec<String> {
    records
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

//! In-test servers for the copy-offload populator, where no real system can be installed here:
//! a NetApp ONTAP REST API (igroups, LUNs, LUN maps, as ONTAP's REST reference describes them)
//! and a Kubernetes API server (PVCs, PVs and `coordination.k8s.io/v1` Leases, over TLS with a
//! bearer token, as a pod's service account reaches it). Each keeps its state in a table the
//! tests read.
//!
//! The fake array also stands for the SAN: a LUN backed by a device (a loop device) appears to
//! the ESXi host of the test vCenter as `DIR/naa.*`, a symlink to that device, exactly while the
//! LUN is mapped to an igroup holding one of the host's initiators (vcsim-ferry's
//! `-esxcli-devices DIR`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};

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

// ---- ONTAP ----

/// The fake ONTAP's administrator.
pub const ONTAP_USER: &str = "admin";
/// Its password.
pub const ONTAP_PASSWORD: &str = "ontap-pw-93";
/// The SVM it serves.
pub const ONTAP_SVM: &str = "svm1";

/// The fake ONTAP's state.
#[derive(Default)]
pub struct OntapTable {
    /// (uuid, name, initiators)
    pub igroups: Vec<(String, String, Vec<String>)>,
    /// (uuid, name, serial)
    pub luns: Vec<(String, String, String)>,
    /// (lun uuid, igroup uuid)
    pub maps: Vec<(String, String)>,
    /// Make creating a LUN map fail.
    pub fail_map: bool,
    /// Every request, `METHOD path`, in order.
    pub log: Vec<String>,
    /// The SAN: the directory of ESXi-visible devices, the host's initiators, and the device
    /// backing each LUN (by uuid).
    pub san: Option<San>,
    next: u32,
}

/// What the fake array shows one ESXi host.
pub struct San {
    /// vcsim-ferry's `-esxcli-devices` directory.
    pub dir: PathBuf,
    /// The host's initiators (IQNs, and FC WWPNs in `aa:bb:..` form).
    pub initiators: Vec<String>,
    /// LUN uuid -> (NAA id, backing device).
    pub devices: Vec<(String, String, PathBuf)>,
}

impl OntapTable {
    /// The table of an array with one LUN, `/vol/<internal>/lun0` (uuid `lun-1`, serial
    /// `serial`), mapped to the igroup `other-host` (uuid `ig-0`).
    pub fn with_lun(internal: &str, serial: &str) -> OntapTable {
        OntapTable {
            igroups: vec![("ig-0".into(), "other-host".into(), vec!["iqn.other".into()])],
            luns: vec![(
                "lun-1".into(),
                format!("/vol/{internal}/lun0"),
                serial.into(),
            )],
            maps: vec![("lun-1".into(), "ig-0".into())],
            ..OntapTable::default()
        }
    }

    /// The mappings as (LUN name, igroup name), sorted.
    pub fn mapping_names(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .maps
            .iter()
            .map(|(l, g)| {
                let ln = self.luns.iter().find(|x| x.0 == *l).map(|x| x.1.clone());
                let gn = self.igroups.iter().find(|x| x.0 == *g).map(|x| x.1.clone());
                (ln.unwrap_or_default(), gn.unwrap_or_default())
            })
            .collect();
        v.sort();
        v
    }

    /// Makes the SAN's device entries match the mappings.
    fn sync_san(&self) {
        let Some(san) = &self.san else { return };
        for (lun, naa, dev) in &san.devices {
            let visible = self.maps.iter().any(|(l, g)| {
                l == lun
                    && self.igroups.iter().any(|ig| {
                        ig.0 == *g
                            && ig
                                .2
                                .iter()
                                .any(|i| san.initiators.iter().any(|h| h.eq_ignore_ascii_case(i)))
                    })
            });
            let entry = san.dir.join(naa);
            let exists = entry.symlink_metadata().is_ok();
            if visible && !exists {
                std::os::unix::fs::symlink(dev, &entry).unwrap();
            } else if !visible && exists {
                std::fs::remove_file(&entry).unwrap();
            }
        }
    }
}

/// The fake ONTAP's shared table.
pub type Ontap = Arc<Mutex<OntapTable>>;

fn ontap_error(status: u16, msg: &str) -> Answer {
    (
        status,
        vec![],
        json!({"error": {"message": msg, "code": "4"}}),
    )
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

fn ontap_handle(t: &Ontap, r: &Req) -> Answer {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ONTAP_USER}:{ONTAP_PASSWORD}"))
    );
    let mut t = t.lock().unwrap();
    t.log.push(format!("{} {}", r.method, r.path));
    if r.header("authorization") != Some(want.as_str()) {
        return ontap_error(401, "User is not authorized.");
    }
    let q = |k: &str| r.q(k).map(str::to_owned);
    let body = &r.body;
    let records = |v: Vec<Value>| (200, vec![], json!({"num_records": v.len(), "records": v}));
    let answer = match (r.method.as_str(), r.segs().as_slice()) {
        ("GET", ["protocols", "san", "igroups"]) => {
            if q("svm.name").as_deref() != Some(ONTAP_SVM) {
                return ontap_error(400, "svm.name is wrong");
            }
            let v = t
                .igroups
                .iter()
                .filter(|g| q("name").is_none_or(|n| n == g.1))
                .map(|g| json!({"uuid": g.0, "name": g.1, "initiators": g.2.iter().map(|i| json!({"name": i})).collect::<Vec<_>>()}))
                .collect();
            records(v)
        }
        ("POST", ["protocols", "san", "igroups"]) => {
            if body["svm"]["name"] != ONTAP_SVM || body["os_type"] != "vmware" {
                return ontap_error(400, "svm.name or os_type is wrong");
            }
            t.next += 1;
            let uuid = format!("ig-{}", t.next);
            let inits = names(&body["initiators"]);
            let name = body["name"].as_str().unwrap_or("").to_owned();
            t.igroups.push((uuid, name, inits));
            (201, vec![], json!({}))
        }
        ("POST", ["protocols", "san", "igroups", uuid, "initiators"]) => {
            let add = names(&body["records"]);
            match t.igroups.iter_mut().find(|g| g.0 == *uuid) {
                Some(g) => {
                    g.2.extend(add);
                    (201, vec![], json!({}))
                }
                None => ontap_error(404, "entry doesn't exist"),
            }
        }
        ("GET", ["storage", "luns"]) => {
            let v = t
                .luns
                .iter()
                .filter(|l| q("name").is_none_or(|n| n == l.1))
                .map(|l| json!({"uuid": l.0, "name": l.1, "serial_number": l.2}))
                .collect();
            records(v)
        }
        ("GET", ["protocols", "san", "lun-maps"]) => {
            let v = t
                .maps
                .iter()
                .filter(|m| q("lun.uuid").is_none_or(|u| u == m.0))
                .filter_map(|m| {
                    let g = t.igroups.iter().find(|g| g.0 == m.1)?;
                    q("igroup.name").is_none_or(|n| n == g.1).then(
                        || json!({"lun": {"uuid": m.0}, "igroup": {"uuid": g.0, "name": g.1}}),
                    )
                })
                .collect();
            records(v)
        }
        ("POST", ["protocols", "san", "lun-maps"]) => {
            if t.fail_map {
                return ontap_error(500, "The LUN map could not be created.");
            }
            let lun = t
                .luns
                .iter()
                .find(|l| body["lun"]["name"] == l.1)
                .map(|l| l.0.clone());
            let group = t
                .igroups
                .iter()
                .find(|g| body["igroup"]["name"] == g.1)
                .map(|g| g.0.clone());
            match (lun, group) {
                (Some(l), Some(g)) if !t.maps.contains(&(l.clone(), g.clone())) => {
                    t.maps.push((l, g));
                    (201, vec![], json!({}))
                }
                (Some(_), Some(_)) => ontap_error(409, "The LUN map already exists."),
                _ => ontap_error(404, "entry doesn't exist"),
            }
        }
        ("DELETE", ["protocols", "san", "lun-maps", lun, group]) => {
            let before = t.maps.len();
            t.maps.retain(|m| !(m.0 == *lun && m.1 == *group));
            if t.maps.len() < before {
                (200, vec![], json!({}))
            } else {
                ontap_error(404, "The specified LUN map does not exist.")
            }
        }
        _ => ontap_error(404, "no such endpoint"),
    };
    t.sync_san();
    answer
}

/// Serves `table` as an ONTAP REST API (`/api/...`) on 127.0.0.1; returns its URL.
pub fn ontap(table: OntapTable) -> (String, Ontap) {
    let table: Ontap = Arc::new(Mutex::new(table));
    table.lock().unwrap().sync_san();
    let t = table.clone();
    (serve("/api/", move |r| ontap_handle(&t, r)), table)
}

// ---- Kubernetes ----

/// The bearer token the fake Kubernetes API accepts.
pub const KUBE_TOKEN: &str = "sa-token-5f1c";

/// The fake Kubernetes API's state.
#[derive(Default)]
pub struct KubeTable {
    /// PVCs: (namespace, name, object).
    pub pvcs: Vec<(String, String, Value)>,
    /// PVs: (name, object).
    pub pvs: Vec<(String, Value)>,
    /// Leases: (namespace, name, object).
    pub leases: Vec<(String, String, Value)>,
    /// Every request: `METHOD path`.
    pub log: Vec<String>,
    /// Namespaces that do not exist (creating a Lease there answers 404).
    pub absent_namespaces: Vec<String>,
    version: u64,
}

impl KubeTable {
    /// A PVC `ns/name` bound to the CSI PV `pv` with `attributes`.
    pub fn add_bound_pvc(&mut self, ns: &str, name: &str, pv: &str, attributes: Value) {
        self.pvcs.push((
            ns.into(),
            name.into(),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "namespace": ns},
                   "spec": {"volumeName": pv, "volumeMode": "Block"},
                   "status": {"phase": "Bound"}}),
        ));
        self.pvs.push((
            pv.into(),
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": pv},
                   "spec": {"csi": {"driver": "csi.trident.netapp.io", "volumeHandle": pv,
                                     "volumeAttributes": attributes}}}),
        ));
    }

    /// A PVC `ns/name` (uid `uid`) left unbound, and its `prime-<uid>` claim bound to the CSI PV
    /// `pv`, as the volume populator machinery has them while a populator runs.
    pub fn add_prime_bound_pvc(
        &mut self,
        ns: &str,
        name: &str,
        uid: &str,
        pv: &str,
        attributes: Value,
    ) {
        self.pvcs.push((
            ns.into(),
            name.into(),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "namespace": ns, "uid": uid},
                   "spec": {"volumeMode": "Block"}, "status": {"phase": "Pending"}}),
        ));
        self.add_bound_pvc(ns, &format!("prime-{uid}"), pv, attributes);
    }

    /// The holder of Lease `ns/name` (`None`: no Lease, or not held).
    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        self.leases
            .iter()
            .find(|l| l.0 == ns && l.1 == name)
            .and_then(|l| l.2["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }
}

/// The fake Kubernetes API's shared table.
pub type Kube = Arc<Mutex<KubeTable>>;

fn status(code: u16, reason: &str, msg: &str) -> Answer {
    (
        code,
        vec![],
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": msg, "reason": reason, "code": code}),
    )
}

fn kube_handle(t: &Kube, r: &Req) -> Answer {
    let mut t = t.lock().unwrap();
    t.log.push(format!("{} {}", r.method, r.path));
    if r.header("authorization") != Some(format!("Bearer {KUBE_TOKEN}").as_str()) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let s = r.segs();
    match (r.method.as_str(), s.as_slice()) {
        ("GET", ["api", "v1", "namespaces", ns, "persistentvolumeclaims", name]) => {
            match t.pvcs.iter().find(|p| p.0 == *ns && p.1 == *name) {
                Some(p) => (200, vec![], p.2.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("persistentvolumeclaims \"{name}\" not found"),
                ),
            }
        }
        ("GET", ["api", "v1", "persistentvolumes", name]) => {
            match t.pvs.iter().find(|p| p.0 == *name) {
                Some(p) => (200, vec![], p.1.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("persistentvolumes \"{name}\" not found"),
                ),
            }
        }
        ("GET", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            match t.leases.iter().find(|l| l.0 == *ns && l.1 == *name) {
                Some(l) => (200, vec![], l.2.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("leases.coordination.k8s.io \"{name}\" not found"),
                ),
            }
        }
        ("POST", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
            if t.absent_namespaces.iter().any(|a| a == ns) {
                return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
            }
            let name = r.body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            if t.leases.iter().any(|l| l.0 == *ns && l.1 == name) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            t.version += 1;
            let mut obj = r.body.clone();
            obj["metadata"]["resourceVersion"] = json!(t.version.to_string());
            t.leases.push(((*ns).into(), name, obj.clone()));
            (201, vec![], obj)
        }
        ("PUT", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            t.version += 1;
            let v = t.version;
            let Some(l) = t.leases.iter_mut().find(|l| l.0 == *ns && l.1 == *name) else {
                return status(404, "NotFound", "not found");
            };
            if r.body["metadata"]["resourceVersion"] != l.2["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled on leases.coordination.k8s.io: the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let mut obj = r.body.clone();
            obj["metadata"]["resourceVersion"] = json!(v.to_string());
            l.2 = obj.clone();
            (200, vec![], obj)
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// A Kubernetes API server on 127.0.0.1 serving `table` over TLS, and a service account
/// directory (`token`, `ca.crt`, `namespace`) under `dir` for it. Returns the port, the service
/// account directory and the table. The environment a populator pod gets is
/// `KUBERNETES_SERVICE_HOST=127.0.0.1`, `KUBERNETES_SERVICE_PORT=<port>` and
/// `FERRY_SERVICE_ACCOUNT_DIR=<sa dir>`.
pub fn kube(dir: &Path, table: KubeTable) -> (u16, PathBuf, Kube) {
    let tls = crate::nginx::Tls::create(dir);
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::copy(tls.ca_cert(), sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("token"), format!("{KUBE_TOKEN}\n")).unwrap();
    std::fs::write(sa.join("namespace"), "openshift-mtv").unwrap();
    let table: Kube = Arc::new(Mutex::new(table));
    let t = table.clone();
    let port = serve_tls(&tls.server_cert(), &tls.server_key(), "/", move |r| {
        kube_handle(&t, r)
    });
    (port, sa, table)
}

//! The fake Pure FlashArray REST API: `GET /api/api_version`, the 1.x `auth/apitoken` exchange
//! of a user's password for an API token, the 2.x `login` (`api-token` in, `x-auth-token` out),
//! and hosts, volumes and host-volume connections with `{"items"}` answers and
//! `{"errors": [{"message"}]}` failures.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{serve, Answer, Req, San};

/// The fake FlashArray's user.
pub const PURE_USER: &str = "pureuser";
/// Its password.
pub const PURE_PASSWORD: &str = "pure-pw-17";
/// The API token that password is exchanged for (also usable as `STORAGE_TOKEN`).
pub const PURE_API_TOKEN: &str = "6e1b80a1-cd63-de90-b74a-7fc16d034016";
/// The session token a login answers with (followed by `-N` after N expiries).
pub const PURE_SESSION: &str = "session-token-42";
/// The REST 2.x version the fake offers as its newest.
const V2: &str = "2.21";

/// The fake FlashArray's state.
#[derive(Default)]
pub struct PureTable {
    /// (name, IQNs, WWNs)
    pub hosts: Vec<(String, Vec<String>, Vec<String>)>,
    /// (name, serial, id)
    pub volumes: Vec<(String, String, String)>,
    /// (host, volume)
    pub connections: Vec<(String, String)>,
    /// Sessions opened.
    pub logins: usize,
    /// Sessions ended by [`PureTable::expire_sessions`]: the valid token is
    /// `PURE_SESSION-<expired>` (just `PURE_SESSION` before any).
    pub expired: usize,
    /// Make connecting a volume to a host fail.
    pub fail_connect: bool,
    /// Every request, `METHOD path`, in order.
    pub log: Vec<String>,
    /// The SAN, with devices by volume name.
    pub san: Option<San>,
}

impl PureTable {
    /// An array with the volume `volume` (serial `serial`) connected to the host `other`.
    pub fn with_volume(volume: &str, serial: &str) -> PureTable {
        PureTable {
            hosts: vec![("other".into(), vec!["iqn.other".into()], vec![])],
            volumes: vec![(
                volume.into(),
                serial.into(),
                "b1a2c3d4-0000-4000-8000-00000000f1a5".into(),
            )],
            connections: vec![("other".into(), volume.into())],
            ..PureTable::default()
        }
    }

    /// The connections as (volume, host), sorted.
    pub fn mapping_names(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .connections
            .iter()
            .map(|(h, vol)| (vol.clone(), h.clone()))
            .collect();
        v.sort();
        v
    }

    /// Ends every open session, as Purity ends idle ones: calls answer 401 until a new login.
    pub fn expire_sessions(&mut self) {
        self.expired += 1;
    }

    /// The session token valid now.
    fn session(&self) -> String {
        match self.expired {
            0 => PURE_SESSION.to_owned(),
            n => format!("{PURE_SESSION}-{n}"),
        }
    }

    fn sync_san(&self) {
        let Some(san) = &self.san else { return };
        san.sync(|volume| {
            self.connections
                .iter()
                .filter(|(_, v)| v == volume)
                .filter_map(|(h, _)| self.hosts.iter().find(|x| x.0 == *h))
                .flat_map(|h| h.1.iter().chain(&h.2).cloned())
                .collect()
        });
    }
}

/// The fake FlashArray's shared table.
pub type Pure = Arc<Mutex<PureTable>>;

fn pure_error(status: u16, msg: &str) -> Answer {
    (status, vec![], json!({"errors": [{"message": msg}]}))
}

/// The strings of the JSON array `body[k]`.
fn list(body: &Value, k: &str) -> Vec<String> {
    body[k]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn pure_handle(t: &Pure, r: &Req) -> Answer {
    let mut a = t.lock().unwrap();
    a.log.push(format!("{} {}", r.method, r.path));
    let items = |v: Vec<Value>| (200, vec![], json!({"items": v}));
    let segs = r.segs();
    let (version, rest) = match segs.split_first() {
        Some((v, rest)) => (*v, rest),
        None => return pure_error(404, "no such endpoint"),
    };
    if version == "api_version" && r.method == "GET" {
        return (200, vec![], json!({"version": ["1.17", "1.19", "2.4", V2]}));
    }
    if version.starts_with("1.") {
        return match (r.method.as_str(), rest) {
            ("POST", ["auth", "apitoken"])
                if r.body["username"] == PURE_USER && r.body["password"] == PURE_PASSWORD =>
            {
                (200, vec![], json!({"api_token": PURE_API_TOKEN}))
            }
            ("POST", ["auth", "apitoken"]) => pure_error(400, "invalid credentials"),
            _ => pure_error(404, "no such endpoint"),
        };
    }
    if version != V2 {
        return pure_error(404, "no such version");
    }
    if r.method == "POST" && rest == ["login"] {
        if r.header("api-token") != Some(PURE_API_TOKEN) {
            return pure_error(401, "Invalid api-token.");
        }
        a.logins += 1;
        return (
            200,
            vec![("x-auth-token", a.session())],
            json!({"items": [{"username": PURE_USER}]}),
        );
    }
    if r.header("x-auth-token") != Some(a.session().as_str()) {
        return pure_error(401, "Session expired.");
    }
    let answer = match (r.method.as_str(), rest) {
        ("GET", ["arrays"]) => items(vec![
            json!({"name": "fa-1", "os": "Purity//FA", "version": "6.5.3"}),
        ]),
        ("GET", ["controllers"]) => items(vec![
            json!({"name": "CT0", "mode": "primary", "model": "FA-X70R3", "version": "6.5.3"}),
            json!({"name": "CT1", "mode": "secondary", "model": "FA-X70R3", "version": "6.5.3"}),
        ]),
        ("GET", ["hosts"]) => items(
            a.hosts
                .iter()
                .map(|h| json!({"name": h.0, "iqns": h.1, "wwns": h.2}))
                .collect(),
        ),
        ("POST", ["hosts"]) => {
            let name = r.q("names").unwrap_or("").to_owned();
            if a.hosts.iter().any(|h| h.0 == name) {
                return pure_error(400, "Host already exists.");
            }
            let (iqns, wwns) = (list(&r.body, "iqns"), list(&r.body, "wwns"));
            a.hosts.push((name.clone(), iqns, wwns));
            items(vec![json!({"name": name})])
        }
        ("PATCH", ["hosts"]) => {
            let name = r.q("names").unwrap_or("").to_owned();
            let (iqns, wwns) = (list(&r.body, "add_iqns"), list(&r.body, "add_wwns"));
            match a.hosts.iter_mut().find(|h| h.0 == name) {
                Some(h) => {
                    h.1.extend(iqns);
                    h.2.extend(wwns);
                    items(vec![json!({"name": name})])
                }
                None => pure_error(400, "Host does not exist."),
            }
        }
        ("GET", ["volumes"]) => {
            // `names` or `ids`: comma-separated; one that does not exist fails the query.
            let wanted = |k: &str| -> Option<Vec<String>> {
                r.q(k).map(|v| v.split(',').map(str::to_owned).collect())
            };
            let (names, ids) = (wanted("names"), wanted("ids"));
            for n in names.iter().flatten() {
                if !a.volumes.iter().any(|v| v.0 == *n) {
                    return pure_error(400, "Volume does not exist.");
                }
            }
            for i in ids.iter().flatten() {
                if !a.volumes.iter().any(|v| v.2 == *i) {
                    return pure_error(400, "Volume does not exist.");
                }
            }
            items(
                a.volumes
                    .iter()
                    .filter(|v| names.as_ref().is_none_or(|n| n.contains(&v.0)))
                    .filter(|v| ids.as_ref().is_none_or(|i| i.contains(&v.2)))
                    .map(|v| json!({"name": v.0, "serial": v.1, "id": v.2}))
                    .collect(),
            )
        }
        ("GET", ["connections"]) => {
            let vol = r.q("volume_names").unwrap_or("");
            items(
                a.connections
                    .iter()
                    .filter(|c| c.1 == vol)
                    .map(|c| json!({"host": {"name": c.0}, "volume": {"name": c.1}, "lun": 1}))
                    .collect(),
            )
        }
        ("POST", ["connections"]) => {
            let c = (
                r.q("host_names").unwrap_or("").to_owned(),
                r.q("volume_names").unwrap_or("").to_owned(),
            );
            if a.fail_connect {
                return pure_error(500, "Could not connect the volume.");
            }
            if !a.hosts.iter().any(|h| h.0 == c.0) {
                return pure_error(400, "Host does not exist.");
            }
            if !a.volumes.iter().any(|v| v.0 == c.1) {
                return pure_error(400, "Volume does not exist.");
            }
            if a.connections.contains(&c) {
                return pure_error(400, "Connection already exists.");
            }
            a.connections.push(c);
            items(vec![])
        }
        ("DELETE", ["connections"]) => {
            let c = (
                r.q("host_names").unwrap_or("").to_owned(),
                r.q("volume_names").unwrap_or("").to_owned(),
            );
            let before = a.connections.len();
            a.connections.retain(|x| *x != c);
            if a.connections.len() < before {
                (200, vec![], json!({}))
            } else {
                pure_error(400, "Connection does not exist.")
            }
        }
        _ => pure_error(404, "no such endpoint"),
    };
    a.sync_san();
    answer
}

/// Serves `table` as a FlashArray REST API (`/api/...`) on 127.0.0.1; returns its URL.
pub fn flasharray(table: PureTable) -> (String, Pure) {
    let table: Pure = Arc::new(Mutex::new(table));
    table.lock().unwrap().sync_san();
    let t = table.clone();
    (serve("/api/", move |r| pure_handle(&t, r)), table)
}

//! The fake NetApp ONTAP REST API: igroups, LUNs and LUN maps of one SVM under `/api`, with
//! basic authentication and `{"num_records", "records"}` answers.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{names, serve, Answer, Req, San};

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
    /// Data SVMs besides [`ONTAP_SVM`].
    pub other_svms: Vec<String>,
    /// Every request, `METHOD path`, in order.
    pub log: Vec<String>,
    /// The SAN: the directory of ESXi-visible devices, the host's initiators, and the device
    /// backing each LUN (by uuid).
    pub san: Option<San>,
    next: u32,
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
        san.sync(|lun| {
            self.maps
                .iter()
                .filter(|(l, _)| l == lun)
                .filter_map(|(_, g)| self.igroups.iter().find(|ig| ig.0 == *g))
                .flat_map(|ig| ig.2.clone())
                .collect()
        });
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
        ("GET", ["cluster"]) => (
            200,
            vec![],
            json!({"name": "cluster1", "version": {
                "full": "NetApp Release 9.14.1: Mon Mar 04 12:00:00 UTC 2024",
                "generation": 9, "major": 14, "minor": 1}}),
        ),
        ("GET", ["svm", "svms"]) => records(
            std::iter::once(ONTAP_SVM.to_owned())
                .chain(t.other_svms.iter().cloned())
                .map(|n| json!({"name": n}))
                .collect(),
        ),
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

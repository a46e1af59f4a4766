//! The fake Kubernetes API server: PVCs, PVs and `coordination.k8s.io/v1` Leases over TLS,
//! with the bearer token of a pod's service account.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{serve_tls, Answer, Req};

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

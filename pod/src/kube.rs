//! The Kubernetes API as a populator pod uses it, with its service account (in-cluster): read a
//! PVC and the PV bound to it, and hold Leases (`coordination.k8s.io/v1`).
//!
//! Written here rather than taken from a crate: kube-rs would bring a second HTTP and TLS
//! stack, a YAML parser and code generation for the whole API, against four REST calls.
//!
//! In a pod the API server is `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, its CA
//! and the bearer token are files of the service account directory
//! (`/var/run/secrets/kubernetes.io/serviceaccount`, or `FERRY_SERVICE_ACCOUNT_DIR`). The token
//! is read again for every call (kubelet rotates it) and never appears in a message.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Value};
use url::Url;

use transfer_core::error::peer_text;
use transfer_core::http::{read_bounded, HttpClient, HttpOptions, TlsTrust, MAX_ANSWER};
use transfer_core::{Error, ErrorKind, Result};

use crate::xcopy::Volume;

/// How long one API call may take in all.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a pod's service account files are.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The in-cluster API client.
pub struct Kube {
    http: HttpClient,
    base: Url,
    dir: PathBuf,
}

/// A Lease as read: its holder, how long a hold lasts, when it was last renewed, its version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseState {
    /// `spec.holderIdentity` (empty: free).
    pub holder: String,
    /// `spec.leaseDurationSeconds`.
    pub duration: u64,
    /// `spec.renewTime` (or `acquireTime`) as seconds since the epoch.
    pub renewed: Option<f64>,
    /// `metadata.resourceVersion`, for an update that fails if another changed it first.
    pub version: String,
    /// `spec.leaseTransitions`.
    pub transitions: u64,
}

impl LeaseState {
    /// Reads a Lease object.
    pub fn parse(v: &Value) -> LeaseState {
        let spec = &v["spec"];
        let renewed = spec["renewTime"]
            .as_str()
            .or(spec["acquireTime"].as_str())
            .and_then(parse_time);
        LeaseState {
            holder: spec["holderIdentity"].as_str().unwrap_or("").to_owned(),
            duration: spec["leaseDurationSeconds"].as_u64().unwrap_or(0),
            renewed,
            version: v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            transitions: spec["leaseTransitions"].as_u64().unwrap_or(0),
        }
    }

    /// Whether `me` may take it at `now` (seconds since the epoch): unheld, ours, or expired.
    /// A held Lease without a renew time never expires (as Forklift's populator reads it).
    pub fn free_for(&self, me: &str, now: f64) -> bool {
        self.holder.is_empty()
            || self.holder == me
            || self
                .renewed
                .is_some_and(|r| r + self.duration as f64 <= now)
    }
}

/// Seconds since the epoch now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `secs` since the epoch as Kubernetes' MicroTime (`2026-12-06T04:13:10.123456Z`).
pub fn format_time(secs: f64) -> String {
    let whole = secs.floor() as i64;
    let micros = ((secs - whole as f64) * 1e6).round().min(999_999.0) as i64;
    let days = whole.div_euclid(86_400);
    let rem = whole.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 time in UTC (`Z`) or with an offset, with or without a fraction.
pub fn parse_time(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..n]).parse().ok()?;
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let v = num(s.len() - 5..s.len() - 3)? * 3600 + num(s.len() - 2..s.len())? * 60;
            if o.starts_with('+') {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    // Days since the epoch from the civil date (inverse of the above).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

/// A PVC's PV name from the PVC object (`spec.volumeName`).
pub fn bound_volume(pvc: &Value) -> Option<&str> {
    pvc["spec"]["volumeName"].as_str().filter(|s| !s.is_empty())
}

/// What the array needs of a PV object: name, CSI volume handle, volume attributes.
pub fn csi_volume(pv: &Value) -> Result<Volume> {
    let name = pv["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let csi = &pv["spec"]["csi"];
    let handle = csi["volumeHandle"].as_str().ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!("PV {name} is not a CSI volume (no spec.csi.volumeHandle)"),
        )
    })?;
    let attributes = csi["volumeAttributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Volume {
        name,
        handle: handle.to_owned(),
        attributes,
    })
}

/// A path segment checked to be a Kubernetes name (no `/`, `?`, `%` or `..` smuggled in).
fn name(what: &str, s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s != "."
        && s != "..";
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} '{s}' is not a Kubernetes name"),
        ))
    }
}

impl Kube {
    /// The API server of the cluster the pod runs in.
    pub fn in_cluster() -> Result<Kube> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "KUBERNETES_SERVICE_HOST is not set: not running in a pod",
            )
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = std::env::var_os("FERRY_SERVICE_ACCOUNT_DIR")
            .map_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR), PathBuf::from);
        Kube::new(&format!("https://{host}:{port}/"), dir)
    }

    /// The API server at `base` (`https://host:port/`), trusted and called with the CA and
    /// token files of the service account directory `dir`.
    pub fn new(base: &str, dir: PathBuf) -> Result<Kube> {
        let base = Url::parse(base).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("the Kubernetes API at {base}: {e}"),
            )
        })?;
        let opts = HttpOptions {
            trust: TlsTrust::CaBundle(dir.join("ca.crt")),
            idle_timeout: Duration::from_secs(30),
            ..HttpOptions::default()
        };
        Ok(Kube {
            http: HttpClient::new(&opts)?,
            base,
            dir,
        })
    }

    fn token(&self) -> Result<HeaderValue> {
        let p = self.dir.join("token");
        let t = std::fs::read_to_string(&p).map_err(|e| {
            Error::io(
                format!("reading the service account token {}", p.display()),
                e,
            )
        })?;
        let mut v = HeaderValue::from_str(&format!("Bearer {}", t.trim())).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "the service account token is not a header value",
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// One call, bounded by [`CALL_TIMEOUT`]; `Ok(None)` for a status in `none_on` (404 for a
    /// GET, 409 for a create or update that lost a race), else the answer or an error with the
    /// API server's message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        none_on: &[u16],
    ) -> Result<Option<Value>> {
        let what = format!("{method} {path}");
        let timed_out = || {
            Error::new(
                ErrorKind::TimedOut,
                format!("Kubernetes {what}: no answer within {CALL_TIMEOUT:?}"),
            )
        };
        tokio::time::timeout(CALL_TIMEOUT, async {
            let url = self.base.join(path).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("Kubernetes: bad path {path}: {e}"),
                )
            })?;
            let mut h = HeaderMap::new();
            h.insert(ACCEPT, HeaderValue::from_static("application/json"));
            h.insert(AUTHORIZATION, self.token()?);
            let (resp, at) = self
                .http
                .send_with(
                    method,
                    &url,
                    None,
                    body.map(|b| b.to_string().into_bytes()),
                    &h,
                )
                .await
                .map_err(|e| e.context_prefix("Kubernetes API"))?;
            let status = resp.status().as_u16();
            let answer = read_bounded(resp, &at, MAX_ANSWER).await?;
            if none_on.contains(&status) {
                return Ok(None);
            }
            let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                return Ok(Some(v));
            }
            let kind = match status {
                401 | 403 => ErrorKind::Denied,
                _ => ErrorKind::Server,
            };
            let msg = v["message"].as_str().map(peer_text).unwrap_or_default();
            Err(Error::new(
                kind,
                format!("Kubernetes {what}: HTTP {status} {msg}"),
            ))
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()))
    }

    async fn get(&self, path: &str) -> Result<Option<Value>> {
        self.call(Method::GET, path, None, &[404]).await
    }

    /// The PVC `ns/pvc`, if it exists.
    pub async fn pvc(&self, ns: &str, pvc: &str) -> Result<Option<Value>> {
        let path = format!(
            "api/v1/namespaces/{}/persistentvolumeclaims/{}",
            name("namespace", ns)?,
            name("PVC", pvc)?
        );
        self.get(&path).await
    }

    /// The CSI volume behind the PVC `ns/pvc`, as Forklift's populator finds it: the PV bound
    /// to that PVC, or, while it is unbound (the volume populator machinery binds the PV to
    /// its own claim first), the PV bound to `prime-<the PVC's uid>` in the same namespace.
    pub async fn target_volume(&self, ns: &str, pvc: &str) -> Result<Volume> {
        let claim = self.pvc(ns, pvc).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("PVC {ns}/{pvc} does not exist"),
            )
        })?;
        let (pv, via) = match bound_volume(&claim) {
            Some(pv) => (pv.to_owned(), pvc.to_owned()),
            None => {
                let uid = claim["metadata"]["uid"].as_str().unwrap_or("");
                let prime = format!("prime-{uid}");
                let p = self.pvc(ns, &prime).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("PVC {ns}/{pvc} is not bound and {ns}/{prime} does not exist"),
                    )
                })?;
                let pv = bound_volume(&p).ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("neither PVC {ns}/{pvc} nor {ns}/{prime} is bound to a PV yet"),
                    )
                })?;
                (pv.to_owned(), prime)
            }
        };
        let path = format!("api/v1/persistentvolumes/{}", name("PV", &pv)?);
        let pv_obj = self.get(&path).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("PV {pv} (bound to PVC {ns}/{via}) does not exist"),
            )
        })?;
        csi_volume(&pv_obj)
    }

    fn lease_path(ns: &str, lease: Option<&str>) -> Result<String> {
        let base = format!(
            "apis/coordination.k8s.io/v1/namespaces/{}/leases",
            name("namespace", ns)?
        );
        Ok(match lease {
            Some(l) => format!("{base}/{}", name("Lease", l)?),
            None => base,
        })
    }

    /// Takes the Lease `ns/lease` for `me` when it is free, ours or expired (creating it when
    /// it does not exist). `Ok(false)` when another holds it, or won the race for it.
    pub async fn try_lease(&self, ns: &str, lease: &str, me: &str, duration: u64) -> Result<bool> {
        let t = format_time(now());
        let spec = |transitions: u64, acquire: &str| {
            json!({
                "holderIdentity": me,
                "leaseDurationSeconds": duration,
                "acquireTime": acquire,
                "renewTime": t,
                "leaseTransitions": transitions,
            })
        };
        match self.get(&Kube::lease_path(ns, Some(lease))?).await? {
            None => {
                let body = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": lease, "namespace": ns},
                    "spec": spec(0, &t),
                });
                let created = self
                    .call(
                        Method::POST,
                        &Kube::lease_path(ns, None)?,
                        Some(body),
                        &[409],
                    )
                    .await?;
                Ok(created.is_some())
            }
            Some(obj) => {
                if !obj.is_object() {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("Kubernetes: Lease {ns}/{lease} is not an object"),
                    ));
                }
                let st = LeaseState::parse(&obj);
                if !st.free_for(me, now()) {
                    return Ok(false);
                }
                let transitions = st.transitions.saturating_add(u64::from(st.holder != me));
                let acquire = if st.holder == me {
                    obj["spec"]["acquireTime"].as_str().unwrap_or(&t).to_owned()
                } else {
                    t.clone()
                };
                let mut obj = obj;
                obj["spec"] = spec(transitions, &acquire);
                // The update carries the resourceVersion read: if another took the Lease
                // meanwhile the server answers 409 and we do not hold it.
                let put = self
                    .call(
                        Method::PUT,
                        &Kube::lease_path(ns, Some(lease))?,
                        Some(obj),
                        &[409],
                    )
                    .await?;
                Ok(put.is_some())
            }
        }
    }

    /// Gives the Lease up, if `me` holds it: holder cleared and renew time set past the
    /// expiry, so that the next taker need not wait (Forklift's populator takes a Lease whose
    /// renew time plus duration has passed, and never one without a renew time).
    pub async fn release_lease(&self, ns: &str, lease: &str, me: &str) -> Result<()> {
        let path = Kube::lease_path(ns, Some(lease))?;
        let Some(mut obj) = self.get(&path).await? else {
            return Ok(());
        };
        if !obj["spec"].is_object() || LeaseState::parse(&obj).holder != me {
            return Ok(());
        }
        let duration = obj["spec"]["leaseDurationSeconds"].as_u64().unwrap_or(0);
        obj["spec"]["holderIdentity"] = Value::Null;
        obj["spec"]["renewTime"] = json!(format_time(now() - duration as f64 - 1.0));
        self.call(Method::PUT, &path, Some(obj), &[404, 409])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_kubernetes_form() {
        let t = 1_796_530_390.123_456;
        let s = format_time(t);
        assert_eq!(s, "2026-12-06T04:13:10.123456Z");
        assert!((parse_time(&s).unwrap() - t).abs() < 1e-5);
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_time("2000-03-01T01:00:00+01:00"), Some(951_868_800.0));
        assert_eq!(format_time(951_868_800.0), "2000-03-01T00:00:00.000000Z");
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-12-06 04:13:10Z",
            "2026-12-06T04:13:10.Z",
            "2026-12-06T04:13:10",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_lease_is_free_when_unheld_ours_or_expired() {
        let l = LeaseState::parse(&json!({
            "metadata": {"resourceVersion": "7"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 10,
                     "renewTime": "2026-12-06T04:13:10.000000Z", "leaseTransitions": 2}
        }));
        let renewed = parse_time("2026-12-06T04:13:10Z").unwrap();
        assert_eq!(l.version, "7");
        assert!(l.free_for("pod-a", renewed + 1.0));
        assert!(!l.free_for("pod-b", renewed + 9.0));
        assert!(l.free_for("pod-b", renewed + 10.0));
        assert!(LeaseState::default().free_for("pod-b", 0.0));
        let forever = LeaseState {
            holder: "pod-a".into(),
            ..LeaseState::default()
        };
        assert!(!forever.free_for("pod-b", 1e12));
    }

    #[test]
    fn a_pv_yields_its_csi_volume_and_names_are_checked() {
        let v = csi_volume(&json!({
            "metadata": {"name": "pvc-1"},
            "spec": {"csi": {"driver": "csi.trident.netapp.io", "volumeHandle": "pvc-1",
                     "volumeAttributes": {"internalName": "trident_pvc_1"}}}
        }))
        .unwrap();
        assert_eq!(v.attribute("internalName"), Some("trident_pvc_1"));
        assert!(csi_volume(&json!({"metadata": {"name": "nfs"}, "spec": {"nfs": {}}})).is_err());
        assert!(name("PVC", "a/../b").is_err());
        assert!(name("PVC", "prime-1f2e").is_ok());
    }
}

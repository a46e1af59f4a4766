//! NetApp ONTAP through its REST API (`/api`, ONTAP 9.6 and later), as its API reference
//! describes it: initiator groups (`/api/protocols/san/igroups`), LUNs (`/api/storage/luns`)
//! and LUN maps (`/api/protocols/san/lun-maps`, deleted as `lun-maps/{lun.uuid}/{igroup.uuid}`),
//! HTTP basic authentication, answers as `{"records": [...]}` and errors as
//! `{"error": {"message", "code"}}`. Everything lives in one SVM (`ONTAP_SVM`).
//!
//! A PV that NetApp's Trident provisioned with its `ontap-san` driver names its FlexVol in the
//! volume attribute `internalName`; the LUN is `/vol/<internalName>/lun0`. ESXi sees the LUN as
//! `naa.600a0980` followed by the hex of the LUN's serial number (NetApp's NAA prefix).
//! Parsers are apart from I/O; the password never appears in a message.

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use url::Url;

use transfer_core::error::peer_text;
use transfer_core::http::{read_bounded, redact, HttpClient, HttpOptions, MAX_ANSWER};
use transfer_core::{Error, ErrorKind, Result};

use super::{ArrayInfo, Initiators, Lun, StorageArray, Volume};

/// NetApp's IEEE company id in an NAA device id.
const NAA_PREFIX: &str = "naa.600a0980";

/// An ONTAP cluster's REST API, for one SVM.
pub struct Ontap {
    http: HttpClient,
    api: Url,
    auth: HeaderValue,
    svm: OnceCell<String>,
}

/// The records of a collection answer.
pub fn records(body: &[u8]) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("ONTAP: not JSON: {e}")))?;
    match v.get("records") {
        Some(Value::Array(r)) => Ok(r.clone()),
        None if v.get("num_records").and_then(Value::as_u64) == Some(0) => Ok(Vec::new()),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            "ONTAP: the answer has no records",
        )),
    }
}

/// The message of an ONTAP error answer.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(peer_text))
        .unwrap_or_default()
}

/// The NAA id ESXi gives an ONTAP LUN of serial number `serial`.
pub fn naa(serial: &str) -> String {
    let hex: String = serial.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{NAA_PREFIX}{hex}")
}

/// The igroup protocol for `initiators`: [`Initiators::protocol`] in ONTAP's words.
fn protocol(i: &Initiators) -> &'static str {
    match i.protocol() {
        "iscsi" => "iscsi",
        "fc" => "fcp",
        _ => "mixed",
    }
}

/// The path of the PV's LUN: from Trident's `internalID` (`/svm/S/flexvol/F/lun/L`, the
/// ontap-san-economy driver's LUNs, several in one FlexVol) as `/vol/F/L`, else from its
/// `internalName` (the ontap-san driver's own FlexVol) as `/vol/<internalName>/lun0`.
pub fn lun_path(volume: &Volume) -> Result<String> {
    if let Some(id) = volume.attribute("internalID") {
        let parts = id
            .split_once("/flexvol/")
            .and_then(|(_, rest)| rest.split_once("/lun/"))
            .filter(|(vol, lun)| {
                let ok = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
                ok(vol) && ok(lun)
            });
        return match parts {
            Some((vol, lun)) => Ok(format!("/vol/{vol}/{lun}")),
            None => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the PV {}'s internalID '{id}' is not /svm/<svm>/flexvol/<volume>/lun/<lun>",
                    volume.handle
                ),
            )),
        };
    }
    let internal = volume.attribute("internalName").ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the PV {} has neither an internalID nor an internalName attribute (not provisioned by Trident's ontap-san or ontap-san-economy driver?)",
                volume.handle
            ),
        )
    })?;
    Ok(format!("/vol/{internal}/lun0"))
}

/// A field of a record, as a string.
fn text(v: &Value, path: &[&str]) -> Result<String> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().map(str::to_owned).ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            format!("ONTAP: a record lacks {}", path.join(".")),
        )
    })
}

impl Ontap {
    /// The API of `host` (a name, `host:port` or an `https://` URL) for `svm` (empty: the
    /// cluster's only SVM), logging in as `user` with `password` (HTTP basic authentication on
    /// every call).
    pub fn new(
        host: &str,
        user: &str,
        password: &str,
        svm: &str,
        http: &HttpOptions,
    ) -> Result<Ontap> {
        let base = if host.contains("://") {
            host.to_owned()
        } else {
            format!("https://{host}")
        };
        let api = Url::parse(&base)
            .and_then(|u| u.join("/api/"))
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("STORAGE_HOSTNAME '{host}': {e}"),
                )
            })?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "the storage user or password is not a header value",
            )
        })?;
        auth.set_sensitive(true);
        Ok(Ontap {
            http: HttpClient::new(http)?,
            api,
            auth,
            svm: match svm {
                "" => OnceCell::new(),
                s => OnceCell::new_with(Some(s.to_owned())),
            },
        })
    }

    /// The SVM that serves the LUNs: `ONTAP_SVM`, or else the cluster's only data SVM (as
    /// Trident finds it).
    async fn svm(&self) -> Result<&str> {
        self.svm
            .get_or_try_init(|| async {
                let r = self.get("svm/svms", &[("fields", "name")]).await?;
                let names: Vec<String> = r
                    .iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_owned))
                    .collect();
                match names.as_slice() {
                    [one] => {
                        tracing::info!(svm = %one, "ONTAP_SVM unset: the cluster's only SVM");
                        Ok(one.clone())
                    }
                    _ => Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "ONTAP_SVM is required: the cluster has {} SVMs ({})",
                            names.len(),
                            names.join(", ")
                        ),
                    )),
                }
            })
            .await
            .map(String::as_str)
    }

    /// One call; the answer's body, or an error with ONTAP's message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Vec<u8>> {
        let url = self
            .api
            .join(path)
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("ONTAP: bad path {path}: {e}")))?;
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(AUTHORIZATION, self.auth.clone());
        let what = format!("{method} {}", redact(&url));
        let body = body.map(|b| b.to_string().into_bytes());
        let (resp, at) = self.http.send_with(method, &url, None, body, &h).await?;
        let status = resp.status();
        let answer = read_bounded(resp, &at, MAX_ANSWER).await?;
        if status.is_success() {
            return Ok(answer);
        }
        let kind = match status.as_u16() {
            401 | 403 => ErrorKind::Denied,
            404 => ErrorKind::NotFound,
            _ => ErrorKind::Server,
        };
        Err(Error::new(
            kind,
            format!(
                "ONTAP {what}: HTTP {} {}",
                status.as_u16(),
                error_message(&answer)
            ),
        ))
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Value>> {
        let mut url = Url::parse("http://x/").expect("a valid URL");
        url.set_path(path);
        url.query_pairs_mut().extend_pairs(query);
        let rel = format!(
            "{}?{}",
            path.trim_start_matches('/'),
            url.query().unwrap_or("")
        );
        records(&self.call(Method::GET, &rel, None).await?)
    }

    /// The igroup named `name` in the SVM: its uuid and initiators.
    async fn igroup(&self, name: &str) -> Result<Option<(String, Vec<String>)>> {
        let r = self
            .get(
                "protocols/san/igroups",
                &[
                    ("name", name),
                    ("svm.name", self.svm().await?),
                    ("fields", "uuid,initiators.name"),
                ],
            )
            .await?;
        let Some(g) = r.first() else {
            return Ok(None);
        };
        let names = g["initiators"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["name"].as_str().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some((text(g, &["uuid"])?, names)))
    }

    /// The uuid of the map of `lun` to `group`, if there is one.
    async fn map_of(&self, lun: &Lun, group: &str) -> Result<Option<String>> {
        let r = self
            .get(
                "protocols/san/lun-maps",
                &[
                    ("lun.uuid", &lun.id),
                    ("igroup.name", group),
                    ("fields", "igroup.uuid"),
                ],
            )
            .await?;
        r.first().map(|m| text(m, &["igroup", "uuid"])).transpose()
    }
}

/// The igroup name the populator uses for an ESXi host and its initiators: `xcopy-`, the host
/// id and the igroup's protocol (`xcopy-hostsystem-host-21-iscsi`, as Forklift names it), with
/// what ONTAP does not take in a name replaced by `-`.
pub fn group_name(host: &str, initiators: &Initiators) -> String {
    super::group_name(
        &format!("{host}-{}", protocol(initiators)),
        |c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.',
        96,
    )
}

#[async_trait]
impl StorageArray for Ontap {
    fn product(&self) -> &'static str {
        "ontap"
    }

    async fn info(&self) -> Result<ArrayInfo> {
        let body = self
            .call(Method::GET, "cluster?fields=version", None)
            .await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let n = |k: &str| v["version"][k].as_u64();
        let version = match (n("generation"), n("major"), n("minor")) {
            (Some(g), Some(a), Some(i)) => format!("{g}.{a}.{i}"),
            _ => "n/a".to_owned(),
        };
        Ok(ArrayInfo {
            vendor: "NetApp",
            product: "ONTAP",
            model: "n/a".to_owned(),
            version,
        })
    }

    async fn ensure_group(&self, host: &str, initiators: &Initiators) -> Result<String> {
        let name = group_name(host, initiators);
        let mut wanted: Vec<String> = initiators
            .iscsi
            .iter()
            .map(|i| i.to_ascii_lowercase())
            .collect();
        wanted.extend(initiators.fc_wwpns());
        match self.igroup(&name).await? {
            None => {
                let body = json!({
                    "name": name,
                    "svm": {"name": self.svm().await?},
                    "os_type": "vmware",
                    "protocol": protocol(initiators),
                    "initiators": wanted.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
                });
                self.call(Method::POST, "protocols/san/igroups", Some(body))
                    .await?;
            }
            Some((uuid, have)) => {
                let missing: Vec<Value> = wanted
                    .iter()
                    .filter(|w| !have.contains(w))
                    .map(|n| json!({"name": n}))
                    .collect();
                if !missing.is_empty() {
                    self.call(
                        Method::POST,
                        &format!("protocols/san/igroups/{uuid}/initiators"),
                        Some(json!({ "records": missing })),
                    )
                    .await?;
                }
            }
        }
        Ok(name)
    }

    async fn lun(&self, volume: &Volume) -> Result<Lun> {
        let path = lun_path(volume)?;
        let svm = self.svm().await?;
        let r = self
            .get(
                "storage/luns",
                &[
                    ("name", &path),
                    ("svm.name", svm),
                    ("fields", "uuid,name,serial_number"),
                ],
            )
            .await?;
        let l = r.first().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("ONTAP: no LUN {path} in SVM {svm}"),
            )
        })?;
        Ok(Lun {
            id: text(l, &["uuid"])?,
            name: text(l, &["name"])?,
            naa: naa(&text(l, &["serial_number"])?),
        })
    }

    async fn mappings(&self, lun: &Lun) -> Result<Vec<String>> {
        let r = self
            .get(
                "protocols/san/lun-maps",
                &[("lun.uuid", &lun.id), ("fields", "igroup.name")],
            )
            .await?;
        r.iter().map(|m| text(m, &["igroup", "name"])).collect()
    }

    async fn map(&self, lun: &Lun, group: &str) -> Result<()> {
        if self.map_of(lun, group).await?.is_some() {
            return Ok(());
        }
        let body = json!({
            "svm": {"name": self.svm().await?},
            "lun": {"name": lun.name},
            "igroup": {"name": group},
        });
        self.call(Method::POST, "protocols/san/lun-maps", Some(body))
            .await
            .map(drop)
    }

    async fn unmap(&self, lun: &Lun, group: &str) -> Result<()> {
        let Some(igroup) = self.map_of(lun, group).await? else {
            return Ok(());
        };
        self.call(
            Method::DELETE,
            &format!("protocols/san/lun-maps/{}/{igroup}", lun.id),
            None,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naa_id_is_netapps_prefix_and_the_serial_in_hex() {
        assert_eq!(naa("wCVg4]DhZs-V"), "naa.600a098077435667345d44685a732d56");
    }

    #[test]
    fn the_lun_path_comes_from_tridents_internal_id_or_internal_name() {
        let pv = |k: &str, v: &str| Volume {
            name: "pvc-1".into(),
            handle: "pvc-1".into(),
            attributes: vec![(k.into(), v.into())],
        };
        let economy = pv(
            "internalID",
            "/svm/svm1/flexvol/trident_lun_pool_abc/lun/trident_pvc_1",
        );
        assert_eq!(
            lun_path(&economy).unwrap(),
            "/vol/trident_lun_pool_abc/trident_pvc_1"
        );
        assert_eq!(
            lun_path(&pv("internalName", "trident_pvc_1")).unwrap(),
            "/vol/trident_pvc_1/lun0"
        );
        for bad in [
            "/svm/s/flexvol//lun/x",
            "/svm/s/lun/x",
            "/svm/s/flexvol/v/lun/../x",
            "/svm/s/flexvol/v",
        ] {
            assert!(lun_path(&pv("internalID", bad)).is_err(), "{bad}");
        }
        let e = lun_path(&pv("other", "x")).unwrap_err().to_string();
        assert!(
            e.contains("internalID") && e.contains("internalName"),
            "{e}"
        );
    }

    #[test]
    fn answers_are_parsed_apart_from_io() {
        assert_eq!(
            records(br#"{"records":[{"uuid":"u1"}],"num_records":1}"#).unwrap()[0]["uuid"],
            "u1"
        );
        assert!(records(br#"{"num_records":0}"#).unwrap().is_empty());
        assert!(records(b"<html>").is_err());
        assert_eq!(
            error_message(br#"{"error":{"message":"entry doesn't exist","code":"4"}}"#),
            "entry doesn't exist"
        );
        let iscsi = Initiators::from_esxi(&["iqn.1998-01.com.vmware:esx1".to_owned()]).unwrap();
        assert_eq!(
            group_name("esx 1.example/x", &iscsi),
            "xcopy-esx-1.example-x-iscsi"
        );
    }
}

//! A minimal vSphere Web Services (SOAP, urn:vim25) client for changed-block tracking: the
//! service content, Login (session cookie `vmware_soap_session`, one new login and retry when a
//! long run's session has expired), SearchIndex.FindByUuid, the PropertyCollector for a VM's or
//! a snapshot's `config.hardware.device`, QueryChangedDiskAreas, Logout. Calls that only read
//! (property reads, lookups, changed areas) are sent again, twice at most, when no answer came
//! back (a dropped connection, an HTTP error such as 503 without a SOAP fault): a vCenter that
//! is briefly overloaded should not fail a migration or turn a delta into a full copy.
//!
//! Written here rather than taken from a crate: no maintained Rust vSphere client exists, and
//! these six calls are small. TLS trust (the SHA-1 thumbprint VDDK users already have, or CA
//! options) comes from the shared HTTP layer; messages are parsed by `xml`, apart from I/O.
//!
//! QueryChangedDiskAreas answers for `[startOffset, startOffset+length)` only, with at most
//! about 2000 areas, so it is called again from `startOffset+length` until the disk's capacity:
//! reading only the first page would silently miss changes. Any fault means the delta cannot be
//! known and a full copy is needed; a partial delta is never returned.

pub mod xml;

use std::sync::{Arc, Mutex};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::Method;
use url::Url;

use crate::delta::DeltaSet;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{read_bounded, redact, HttpClient, HttpOptions, TlsTrust};
use crate::source::retry::RetryPolicy;
use crate::source::vddk::{Secret, Sessions, VddkParams};
use xml::{envelope, escape, moref, Fault, Node, ServiceContent, VirtualDisk};

/// The session cookie vCenter and ESXi set at Login.
const SESSION_COOKIE: &str = "vmware_soap_session";
/// Most pages of changed areas read for one disk (a guard against a server that never ends).
const MAX_PAGES: usize = 1_000_000;

/// Most changed areas kept for one disk, after adjacent ones are merged (64 MiB of ranges):
/// past it a delta is no cheaper than a full copy, and the server's answer is not trusted.
const MAX_AREAS: usize = 1 << 22;

/// How a call that only reads is sent again when no answer came: twice more, 1 s then 2 s
/// later.
const READ_RETRY: RetryPolicy = RetryPolicy {
    retries: 2,
    delay: std::time::Duration::from_secs(1),
};

/// A logged-in vSphere API session.
pub struct Client {
    http: HttpClient,
    url: Url,
    sc: ServiceContent,
    user: String,
    password: Secret,
    cookie: Mutex<Option<String>>,
}

fn soap_error(what: &str, f: &Fault) -> Error {
    let kind = match f.kind.as_str() {
        "NotAuthenticated" | "InvalidLogin" | "NoPermission" => ErrorKind::Connect,
        "ManagedObjectNotFound" => ErrorKind::NotFound,
        _ => ErrorKind::Server,
    };
    let msg = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
    Error::new(kind, format!("vSphere {what}: {} fault: {msg}", f.kind))
}

impl Client {
    /// Connects to `https://server:port/sdk`, reads the service content and logs in.
    pub async fn connect(
        server: &str,
        port: u32,
        user: &str,
        password: Secret,
        trust: TlsTrust,
    ) -> Result<Client> {
        let host = if server.contains(':') && !server.starts_with('[') {
            format!("[{server}]")
        } else {
            server.to_owned()
        };
        let url = Url::parse(&format!("https://{host}:{port}/sdk")).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("vSphere server '{server}': {e}"),
            )
        })?;
        let http = HttpClient::new(&HttpOptions {
            trust,
            ..HttpOptions::default()
        })?;
        let mut c = Client {
            http,
            url,
            sc: ServiceContent {
                session_manager: String::new(),
                search_index: String::new(),
                property_collector: String::new(),
            },
            user: user.to_owned(),
            password,
            cookie: Mutex::new(None),
        };
        let answer = c
            .raw(
                "service content",
                &format!(
                    r#"<RetrieveServiceContent xmlns="urn:vim25">{}</RetrieveServiceContent>"#,
                    moref("_this", "ServiceInstance", "ServiceInstance")
                ),
            )
            .await?
            .map_err(|f| soap_error("RetrieveServiceContent", &f))?;
        c.sc = xml::service_content(&answer)?;
        c.login().await?;
        Ok(c)
    }

    /// Logs in (again) and keeps the session cookie.
    async fn login(&self) -> Result<()> {
        *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let body = format!(
            r#"<Login xmlns="urn:vim25">{}<userName>{}</userName><password>{}</password></Login>"#,
            moref("_this", "SessionManager", &self.sc.session_manager),
            escape(&self.user),
            escape(self.password.expose())
        );
        self.raw("Login", &body)
            .await?
            .map_err(|f| soap_error(&format!("Login as {}", self.user), &f))?;
        if self
            .cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "vSphere Login at {}: no {SESSION_COOKIE} cookie",
                    redact(&self.url)
                ),
            ));
        }
        Ok(())
    }

    /// Ends the session (errors ignored: the session expires anyway).
    pub async fn logout(&self) {
        let body = format!(
            r#"<Logout xmlns="urn:vim25">{}</Logout>"#,
            moref("_this", "SessionManager", &self.sc.session_manager)
        );
        let _ = self.raw("Logout", &body).await;
    }

    /// The session cookie as a header (marked sensitive: it is never part of a message).
    fn add_cookie(&self, headers: &mut HeaderMap) {
        if let Some(c) = self
            .cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
        {
            if let Ok(mut v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={c}")) {
                v.set_sensitive(true);
                headers.insert(COOKIE, v);
            }
        }
    }

    /// Writes `body` as the file `path` (relative to the datastore's root) of datastore `ds`
    /// in datacenter `dc`, through the `/folder` service that govmomi's `Datastore.UploadFile`
    /// uses (HTTP PUT, the session cookie as credentials); one new login when the session has
    /// expired.
    pub async fn upload(&self, dc: &str, ds: &str, path: &str, body: &[u8]) -> Result<()> {
        let mut url = self.url.clone();
        url.set_path(&format!("/folder/{}", path.trim_start_matches('/')));
        url.query_pairs_mut()
            .append_pair("dcPath", dc)
            .append_pair("dsName", ds);
        let what = format!("upload of [{ds}] {path}");
        let mut relogged = false;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            self.add_cookie(&mut headers);
            let (resp, at) = self
                .http
                .send_with(Method::PUT, &url, None, Some(body.to_vec()), &headers)
                .await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            if status.as_u16() == 401 && !relogged {
                tracing::debug!("vSphere session expired before the {what}; logging in again");
                self.login().await?;
                relogged = true;
                continue;
            }
            let kind = match status.as_u16() {
                401 | 403 => ErrorKind::Connect,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::Server,
            };
            return Err(Error::new(
                kind,
                format!(
                    "vSphere {what}: HTTP {} from {}",
                    status.as_u16(),
                    redact(&at)
                ),
            ));
        }
    }

    /// Sends one request; the answer's body element, or its fault.
    async fn raw(&self, what: &str, inner: &str) -> Result<std::result::Result<Node, Fault>> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        headers.insert("SOAPAction", HeaderValue::from_static("urn:vim25/7.0"));
        self.add_cookie(&mut headers);
        let (resp, at) = self
            .http
            .send_with(
                Method::POST,
                &self.url,
                None,
                Some(envelope(inner).into_bytes()),
                &headers,
            )
            .await?;
        let status = resp.status();
        for v in resp.headers().get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            if let Some(rest) = v.trim().strip_prefix(SESSION_COOKIE) {
                if let Some(val) = rest.strip_prefix('=') {
                    let val = val.split(';').next().unwrap_or("").trim();
                    if !val.is_empty() {
                        *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(val.to_owned());
                    }
                }
            }
        }
        let body = read_bounded(resp, &at, crate::http::MAX_ANSWER).await?;
        let root = xml::parse(&body, what).map_err(|e| {
            if status.is_success() {
                e
            } else {
                Error::new(
                    ErrorKind::Server,
                    format!(
                        "vSphere {what}: HTTP {} from {}",
                        status.as_u16(),
                        redact(&at)
                    ),
                )
            }
        })?;
        let answer = xml::body(&root, what)?;
        match xml::fault(&answer) {
            Some(f) => Ok(Err(f)),
            None if !status.is_success() => Err(Error::new(
                ErrorKind::Server,
                format!(
                    "vSphere {what}: HTTP {} from {}",
                    status.as_u16(),
                    redact(&at)
                ),
            )),
            None => Ok(Ok(answer)),
        }
    }

    /// One call with one new login and retry when the session has expired.
    async fn call(&self, what: &str, inner: &str) -> Result<Node> {
        self.call_again(what, inner, 0).await
    }

    /// [`Client::call`] for a call that changes nothing on the server: sent again when no
    /// answer came back ([`READ_RETRY`]).
    async fn read(&self, what: &str, inner: &str) -> Result<Node> {
        self.call_again(what, inner, READ_RETRY.retries).await
    }

    async fn call_again(&self, what: &str, inner: &str, retries: u32) -> Result<Node> {
        match self.raw_again(what, inner, retries).await? {
            Ok(a) => Ok(a),
            Err(f) if f.kind == "NotAuthenticated" => {
                tracing::debug!("vSphere session expired during {what}; logging in again");
                self.login().await?;
                self.raw_again(what, inner, retries)
                    .await?
                    .map_err(|f| soap_error(what, &f))
            }
            Err(f) => Err(soap_error(what, &f)),
        }
    }

    /// [`Client::raw`], sent again up to `retries` times when it failed in a way that may pass
    /// (no connection, a dropped one, an HTTP error without a fault). A fault is an answer:
    /// never sent again here.
    async fn raw_again(
        &self,
        what: &str,
        inner: &str,
        retries: u32,
    ) -> Result<std::result::Result<Node, Fault>> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.raw(what, inner).await {
                Err(e) if tries <= retries && e.kind().is_transient() => {
                    tracing::warn!("{e}; asking again (try {tries} of {})", retries + 1);
                    tokio::time::sleep(READ_RETRY.backoff(tries)).await;
                }
                r => return r,
            }
        }
    }

    /// Calls any vim25 method: `inner` is the body element (every value escaped by the
    /// caller, with [`xml::escape`] and [`xml::moref`]); one new login when the session has
    /// expired; a fault is an error naming `what`.
    pub async fn invoke(&self, what: &str, inner: &str) -> Result<Node> {
        self.call(what, inner).await
    }

    /// [`Client::invoke`] for a method that changes nothing on the server (a retrieval): also
    /// sent again, twice at most, 1 s then 2 s later, when no answer came back.
    pub async fn invoke_read(&self, what: &str, inner: &str) -> Result<Node> {
        self.read(what, inner).await
    }

    /// The value of the property `path` of the managed object `ty:obj` (`None`: unset).
    pub async fn property(&self, ty: &str, obj: &str, path: &str) -> Result<Option<Node>> {
        let body = format!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25">{}<specSet><propSet><type>{}</type><pathSet>{}</pathSet></propSet><objectSet>{}</objectSet></specSet><options></options></RetrievePropertiesEx>"#,
            moref("_this", "PropertyCollector", &self.sc.property_collector),
            escape(ty),
            escape(path),
            moref("obj", ty, obj)
        );
        let answer = self.read(&format!("{path} of {obj}"), &body).await?;
        Ok(xml::property_value(&answer).cloned())
    }

    /// The VM with `uuid`: its instance UUID first, then its BIOS UUID (as CDI looks it up).
    pub async fn find_vm_by_uuid(&self, uuid: &str) -> Result<String> {
        for instance in [true, false] {
            let body = format!(
                r#"<FindByUuid xmlns="urn:vim25">{}<uuid>{}</uuid><vmSearch>true</vmSearch><instanceUuid>{instance}</instanceUuid></FindByUuid>"#,
                moref("_this", "SearchIndex", &self.sc.search_index),
                escape(uuid)
            );
            if let Some(vm) = xml::returned_moref(&self.read("FindByUuid", &body).await?) {
                return Ok(vm);
            }
        }
        Err(Error::new(
            ErrorKind::NotFound,
            format!("vSphere: no VM with UUID {uuid}"),
        ))
    }

    /// The virtual disks of a VM (`VirtualMachine`) or snapshot (`VirtualMachineSnapshot`).
    pub async fn disks(&self, ty: &str, obj: &str) -> Result<Vec<VirtualDisk>> {
        let body = format!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25">{}<specSet><propSet><type>{}</type><pathSet>config.hardware.device</pathSet></propSet><objectSet>{}</objectSet></specSet><options></options></RetrievePropertiesEx>"#,
            moref("_this", "PropertyCollector", &self.sc.property_collector),
            escape(ty),
            moref("obj", ty, obj)
        );
        let what = format!("devices of {obj}");
        xml::virtual_disks(&self.read(&what, &body).await?)
    }

    /// The areas of disk `key` (of `capacity` bytes) of `vm` that changed between `change_id`
    /// and `snapshot` (or the running VM), every page of them.
    pub async fn changed_areas(
        &self,
        vm: &str,
        snapshot: Option<&str>,
        key: i32,
        capacity: u64,
        change_id: &str,
    ) -> Result<DeltaSet> {
        let what = format!("QueryChangedDiskAreas for disk {key} of {vm}");
        let full_copy = |e: Error| e.context_prefix("a full copy is needed");
        let mut areas = Vec::new();
        let mut start = 0u64;
        let mut pages = 0;
        while start < capacity {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(full_copy(Error::new(
                    ErrorKind::Protocol,
                    format!("vSphere {what}: too many pages"),
                )));
            }
            let body = format!(
                r#"<QueryChangedDiskAreas xmlns="urn:vim25">{}{}<deviceKey>{key}</deviceKey><startOffset>{start}</startOffset><changeId>{}</changeId></QueryChangedDiskAreas>"#,
                moref("_this", "VirtualMachine", vm),
                snapshot.map_or(String::new(), |s| moref(
                    "snapshot",
                    "VirtualMachineSnapshot",
                    s
                )),
                escape(change_id)
            );
            let page = xml::change_info(&self.read(&what, &body).await.map_err(full_copy)?)
                .map_err(full_copy)?;
            let end = page.start.checked_add(page.length);
            if page.start != start || page.length == 0 || end.is_none_or(|e| e > capacity) {
                return Err(full_copy(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "vSphere {what}: a page at {start} answered for {} bytes at {} (disk of {capacity})",
                        page.length, page.start
                    ),
                )));
            }
            let end = start + page.length;
            for &(a, l) in &page.areas {
                if a < start || a.checked_add(l).is_none_or(|e| e > end) {
                    return Err(full_copy(Error::new(
                        ErrorKind::Protocol,
                        format!("vSphere {what}: area {a}+{l} outside its page [{start}, {end})"),
                    )));
                }
            }
            merge_into(&mut areas, &page.areas);
            if areas.len() > MAX_AREAS {
                return Err(full_copy(Error::new(
                    ErrorKind::Protocol,
                    format!("vSphere {what}: more than {MAX_AREAS} separate changed areas"),
                )));
            }
            start = end;
        }
        tracing::debug!(pages, areas = areas.len(), "vSphere changed disk areas");
        DeltaSet::new(capacity, areas).map_err(full_copy)
    }
}

/// Appends a page's `areas` (in order, within the page) to `areas`, merging an area into the
/// one before it when they touch or overlap.
fn merge_into(areas: &mut Vec<(u64, u64)>, page: &[(u64, u64)]) {
    for &(a, l) in page.iter().filter(|(_, l)| *l > 0) {
        match areas.last_mut() {
            Some((s, n)) if a >= *s && a <= *s + *n => *n = (*n).max(a + l - *s),
            _ => areas.push((a, l)),
        }
    }
}

/// Whether `s` names a snapshot (`snapshot-42`, a moref) rather than a disk change id
/// (`52 2d ... 7b/81`, or `*` for every allocated area).
pub fn is_snapshot_moref(s: &str) -> bool {
    s.strip_prefix("snapshot-")
        .is_some_and(|n| !n.is_empty() && !n.contains([' ', '/']))
}

/// Fills in `params.vm` from `params.uuid` through SearchIndex.FindByUuid (instance UUID
/// first, then BIOS UUID) when only the UUID is given, and then the disk as the VM (or the
/// snapshot being read) has it now: `params.file` may name the base file of a disk that
/// snapshots have since moved to a child (`vm.vmdk` -> `vm-000002.vmdk`), as CDI's
/// `IMPORTER_BACKING_FILE` does.
pub async fn resolve_vm(params: &mut VddkParams) -> Result<()> {
    let Some(uuid) = params.uuid.clone().filter(|_| params.vm.is_empty()) else {
        return Ok(());
    };
    let c = connect_for(params).await?;
    let r = resolve_with(&c, params, &uuid).await;
    c.logout().await;
    r
}

async fn resolve_with(c: &Client, params: &mut VddkParams, uuid: &str) -> Result<()> {
    let vm = c.find_vm_by_uuid(uuid).await?;
    params.vm = format!("moref={vm}");
    let disk = find_disk(c, params).await?;
    if disk.file_name != params.file {
        tracing::info!(
            named = %params.file,
            file = %disk.file_name,
            "vSphere: the disk is now a child of the file named"
        );
        params.file = disk.file_name;
    }
    Ok(())
}

/// The disk of `params.vm` (at `params.snapshot`, if given) whose backing file or one of its
/// parents is `params.file`.
async fn find_disk(c: &Client, params: &VddkParams) -> Result<VirtualDisk> {
    let vm = params.vm.strip_prefix("moref=").unwrap_or(&params.vm);
    let disks = match params.snapshot.as_deref() {
        Some(s) => c.disks("VirtualMachineSnapshot", s).await?,
        None => c.disks("VirtualMachine", vm).await?,
    };
    let exact = disks.iter().position(|d| d.file_name == params.file);
    let found = exact.or_else(|| disks.iter().position(|d| d.is_backed_by(&params.file)));
    match found {
        Some(i) => Ok(disks[i].clone()),
        None => {
            let names: Vec<&str> = disks.iter().map(|d| d.file_name.as_str()).collect();
            let at = params
                .snapshot
                .as_deref()
                .map_or(String::new(), |s| format!(" at {s}"));
            Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "vSphere: {vm}{at} has no disk {} (it has {names:?})",
                    params.file
                ),
            ))
        }
    }
}

async fn connect_for(params: &VddkParams) -> Result<Client> {
    let tp = params.thumbprint.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            "vddk: thumbprint= (the SHA-1 fingerprint of the server's certificate) is required",
        )
    })?;
    let trust = TlsTrust::Pinned(crate::http::Thumbprint::parse(tp)?);
    let password = params.password.clone().unwrap_or_default();
    Client::connect(&params.server, params.port, &params.user, password, trust).await
}

/// The changed ranges of a `vddk://` disk since `previous` (a change id, or the moref of the
/// snapshot whose disk change id to start from) up to the params' snapshot, from vSphere CBT.
pub async fn vddk_changed_areas(params: &VddkParams, previous: &str) -> Result<DeltaSet> {
    let mut params = params.clone();
    let d = prepare(&mut params, Some(previous)).await?;
    d.ok_or_else(|| Error::new(ErrorKind::Server, "vSphere: no changed areas were read"))
}

/// Everything a `vddk://` source needs from the vSphere API before VDDK opens the disk,
/// through one login: the VM and the disk as it is now (see [`resolve_vm`]) and, for a delta,
/// the changed areas since `changed_since`. No login when neither is needed.
pub async fn prepare(
    params: &mut VddkParams,
    changed_since: Option<&str>,
) -> Result<Option<DeltaSet>> {
    prepare_with(None, params, changed_since).await
}

/// [`prepare`] through the login `sessions` keeps for the server and user, made and kept
/// there when there is none (it is then not logged out: the next checkpoint reuses it).
pub async fn prepare_with(
    sessions: Option<&Sessions>,
    params: &mut VddkParams,
    changed_since: Option<&str>,
) -> Result<Option<DeltaSet>> {
    let uuid = params.uuid.clone().filter(|_| params.vm.is_empty());
    if uuid.is_none() && changed_since.is_none() {
        return Ok(None);
    }
    let kept = sessions.and_then(|s| s.login(params));
    let c = match kept {
        Some(c) => c,
        None => Arc::new(connect_for(params).await?),
    };
    let r = async {
        if let Some(uuid) = &uuid {
            resolve_with(&c, params, uuid).await?;
        }
        match changed_since {
            None => Ok(None),
            Some(previous) => {
                params.check()?;
                changed_areas_with(&c, params, previous).await.map(Some)
            }
        }
    }
    .await;
    match sessions {
        Some(s) if !matches!(&r, Err(e) if e.kind() == ErrorKind::Connect) => {
            if let Some(extra) = s.keep_login(params, c) {
                extra.logout().await;
            }
        }
        Some(s) => {
            s.drop_login(params);
            c.logout().await;
        }
        None => c.logout().await,
    }
    r
}

async fn changed_areas_with(c: &Client, params: &VddkParams, previous: &str) -> Result<DeltaSet> {
    let vm = params.vm.strip_prefix("moref=").unwrap_or(&params.vm);
    let snap = params.snapshot.as_deref();
    let disk = find_disk(c, params).await?;
    let change_id = if !is_snapshot_moref(previous) {
        previous.to_owned()
    } else {
        let old = c
            .disks("VirtualMachineSnapshot", previous)
            .await
            .map_err(|e| e.context_prefix("a full copy is needed"))?;
        old.iter()
            .find(|d| d.key == disk.key)
            .and_then(|d| d.change_id.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "vSphere: snapshot {previous} has no change id for disk {} (is changed-block tracking on?); a full copy is needed",
                        disk.key
                    ),
                )
            })?
    };
    c.changed_areas(vm, snap, disk.key, disk.capacity, &change_id)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_morefs_are_told_from_change_ids() {
        assert!(is_snapshot_moref("snapshot-42"));
        for id in [
            "52 2d 8e 1a 0c 7b 51 f6-9c 5d 3e 21 a4 9f 07 7b/81",
            "*",
            "snapshot-",
            "snapshot-1/2",
        ] {
            assert!(!is_snapshot_moref(id), "{id}");
        }
    }

    #[test]
    fn touching_areas_are_merged_as_pages_arrive() {
        let mut areas = Vec::new();
        merge_into(&mut areas, &[(0, 10), (10, 5), (20, 5), (22, 10)]);
        merge_into(&mut areas, &[(32, 8), (50, 0), (64, 1)]);
        assert_eq!(areas, vec![(0, 15), (20, 20), (64, 1)]);
    }
}

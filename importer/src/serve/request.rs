//! `POST /v1/transfers` bodies: parsed apart from any I/O into a [`TransferSpec`], every
//! refusal naming the field it is about. Unknown fields are refused (a typo must not silently
//! drop an option).

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};
use transfer_core::job::{
    Changes, EngineOptions, Mode, Resume, SourceSpec, TargetSpec, TransferSpec,
};
use transfer_core::open::SourceOptions;
use transfer_core::source::glance::GlanceAuth;
use transfer_core::source::vddk::Secret;

/// Why a request was refused, and with which HTTP status.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// 400 (malformed), 403 (target outside the roots), 409 (target busy).
    pub status: u16,
    /// One line; never a secret (source URIs are not quoted).
    pub message: String,
}

fn bad(field: &str, what: &str) -> Refusal {
    Refusal {
        status: 400,
        message: format!("{field}: {what}"),
    }
}

/// A transfer request, checked.
#[derive(Debug)]
pub struct Request {
    /// The spec to run.
    pub spec: TransferSpec,
    /// The target, as the client named it (absolute, normalised).
    pub target: PathBuf,
}

const FIELDS: &[&str] = &[
    "source",
    "target",
    "options",
    "checkpoint",
    "previous_checkpoint",
    "delta",
    "vddk",
    "keystone",
    "secrets",
];
const KEYSTONE: &[&str] = &[
    "auth_type",
    "username",
    "user_id",
    "user_domain_name",
    "user_domain_id",
    "project_name",
    "project_id",
    "project_domain_name",
    "project_domain_id",
    "application_credential_id",
    "application_credential_name",
    "region",
    "interface",
];
const DELTA: &[&str] = &["changes", "dirty_bitmap", "ranges"];
const SECRETS: &[&str] = &[
    "password",
    "password_file",
    "token",
    "token_file",
    "application_credential_secret",
    "application_credential_secret_file",
];
/// The secrets given inline, which the state directory never keeps.
const INLINE_SECRETS: &[&str] = &["password", "token", "application_credential_secret"];
const OPTIONS: &[&str] = &["connections", "verify", "resume"];

/// Parses a request body. `roots` are the directories targets must lie in.
pub fn parse(body: &[u8], roots: &[PathBuf]) -> Result<Request, Refusal> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            &format!("not JSON: {}", e.to_string().replace('\n', " ")),
        )
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("body", "must be a JSON object"))?;
    refuse_unknown(obj, FIELDS, "")?;
    let source = string(obj, "source")?.ok_or_else(|| bad("source", "required"))?;
    if source.is_empty() || source.len() > 4096 || source.chars().any(char::is_control) {
        return Err(bad(
            "source",
            "must be a URI or path of at most 4096 characters",
        ));
    }
    if url::Url::parse(&source).is_ok_and(|u| u.password().is_some()) {
        return Err(bad(
            "source",
            "credentials in the URI are not accepted (they would be kept and shown); pass them as files",
        ));
    }
    let target = string(obj, "target")?.ok_or_else(|| bad("target", "required"))?;
    let target = normalised(&target)
        .ok_or_else(|| bad("target", "must be an absolute path without '..' components"))?;
    check_root(&target, roots)?;
    let mut engine = EngineOptions::default();
    let mut sopts = SourceOptions::default();
    let mut verify = false;
    let mut resume = Resume::Off;
    if let Some(o) = obj.get("options") {
        let o = o
            .as_object()
            .ok_or_else(|| bad("options", "must be a JSON object"))?;
        refuse_unknown(o, OPTIONS, "options.")?;
        if let Some(c) = o.get("connections") {
            let n = c
                .as_u64()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| bad("options.connections", "must be an integer from 1 to 64"))?;
            engine.connections = n as usize;
            sopts.connections = n as usize;
        }
        verify = flag(o, "verify")?.unwrap_or(false);
        if flag(o, "resume")?.unwrap_or(false) {
            resume = Resume::Required;
        }
    }
    let is_vddk = source
        .split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("vddk"));
    if let Some(v) = obj.get("vddk") {
        if !is_vddk {
            return Err(bad("vddk", "only for a vddk:// source"));
        }
        sopts.vddk.params = vddk_params(v)?;
    }
    let is_glance = source
        .split_once("://")
        .is_some_and(|(s, _)| s.to_ascii_lowercase().starts_with("glance+"));
    let secrets = match obj.get("secrets") {
        Some(v) => Some(secrets(v)?),
        None => None,
    };
    if is_glance {
        let mut auth = match obj.get("keystone") {
            Some(k) => keystone(k)?,
            None => return Err(bad("keystone", "required for a glance+ source")),
        };
        let s = secrets.unwrap_or_default();
        auth.password = s.password.map(|p| p.expose().to_owned());
        auth.token = s.token.map(|p| p.expose().to_owned());
        auth.app_cred_secret = s.app_secret.map(|p| p.expose().to_owned());
        sopts.glance_auth = Some(auth);
    } else if obj.contains_key("keystone") {
        return Err(bad("keystone", "only for a glance+ source"));
    } else if let Some(s) = secrets {
        if !is_vddk || s.token.is_some() || s.app_secret.is_some() {
            return Err(bad(
                "secrets",
                "a vddk:// source takes a password, a glance+ source Keystone's secrets; others none",
            ));
        }
        sopts.vddk.password = s.password;
    }
    let mode = match obj.get("delta") {
        None | Some(Value::Null) => Mode::Full,
        Some(d) => delta(d, &mut sopts)?,
    };
    let cp = checkpoint(obj, "checkpoint")?;
    let previous = checkpoint(obj, "previous_checkpoint")?;
    if let Mode::Delta(_) = mode {
        if cp.is_none() || previous.is_none() {
            return Err(bad(
                "delta",
                "needs checkpoint and previous_checkpoint: the target's chain keeps deltas in order",
            ));
        }
    } else if previous.is_some() {
        return Err(bad("previous_checkpoint", "belongs to a delta"));
    }
    let spec = TransferSpec {
        mode,
        source: Some(SourceSpec::Uri {
            uri: source,
            options: sopts,
        }),
        target: TargetSpec {
            path: target.clone(),
            ..TargetSpec::default()
        },
        checkpoint: cp,
        previous_checkpoint: previous,
        resume,
        verify,
        engine,
        ..TransferSpec::default()
    };
    Ok(Request { spec, target })
}

/// `delta`: `{"changes": "source"}` (the source tells them: vSphere changed areas since the
/// previous checkpoint, an imageio ticket's dirty extents), `{"dirty_bitmap": "NAME"}` (an NBD
/// export's qemu dirty bitmap) or `{"ranges": [{"start": N, "length": N}, ...]}`.
fn delta(v: &Value, sopts: &mut SourceOptions) -> Result<Mode, Refusal> {
    let d = v
        .as_object()
        .ok_or_else(|| bad("delta", "must be a JSON object"))?;
    refuse_unknown(d, DELTA, "delta.")?;
    if d.len() != 1 {
        return Err(bad(
            "delta",
            "name where the changes come from: one of changes, dirty_bitmap, ranges",
        ));
    }
    if let Some(c) = d.get("changes") {
        if c.as_str() != Some("source") {
            return Err(bad("delta.changes", "must be \"source\""));
        }
        return Ok(Mode::Delta(Changes::FromSource));
    }
    if let Some(b) = d.get("dirty_bitmap") {
        let b = b
            .as_str()
            .filter(|b| !b.is_empty() && b.len() <= 256 && !b.chars().any(char::is_control))
            .ok_or_else(|| bad("delta.dirty_bitmap", "must be a bitmap name"))?;
        sopts.nbd.dirty_bitmap = Some(b.to_owned());
        return Ok(Mode::Delta(Changes::FromSource));
    }
    let ranges = d["ranges"]
        .as_array()
        .ok_or_else(|| bad("delta.ranges", "must be an array"))?;
    if ranges.len() > MAX_RANGES {
        return Err(bad(
            "delta.ranges",
            &format!("at most {MAX_RANGES} ranges (merge them)"),
        ));
    }
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let field = |k: &str| r.get(k).and_then(Value::as_u64);
        match (field("start"), field("length")) {
            (Some(s), Some(l)) if s.checked_add(l).is_some() => out.push((s, l)),
            _ => {
                return Err(bad(
                    "delta.ranges",
                    "each range is {\"start\": N, \"length\": N}",
                ))
            }
        }
    }
    Ok(Mode::Delta(Changes::Ranges(out)))
}

/// Most ranges a request may list (a 1 MiB body holds fewer anyway).
const MAX_RANGES: usize = 1 << 16;

/// `vddk`: the `vddk://` parameters of `--vddk KEY=VALUE`, as an object of strings.
fn vddk_params(v: &Value) -> Result<Vec<(String, String)>, Refusal> {
    let o = v
        .as_object()
        .ok_or_else(|| bad("vddk", "must be a JSON object of strings"))?;
    o.iter()
        .map(|(k, v)| match v {
            Value::String(s) if !s.chars().any(char::is_control) => Ok((k.clone(), s.clone())),
            _ => Err(bad(&format!("vddk.{}", printable(k)), "must be a string")),
        })
        .collect()
}

/// The secrets of a request.
#[derive(Default)]
struct Secrets {
    password: Option<Secret>,
    token: Option<Secret>,
    app_secret: Option<Secret>,
}

/// `secrets`: each inline (`NAME`) or in a file the daemon reads (`NAME_file`). Never kept in
/// the state directory, shown or logged.
fn secrets(v: &Value) -> Result<Secrets, Refusal> {
    let o = v
        .as_object()
        .ok_or_else(|| bad("secrets", "must be a JSON object"))?;
    refuse_unknown(o, SECRETS, "secrets.")?;
    let one = |name: &str| -> Result<Option<Secret>, Refusal> {
        let file = format!("{name}_file");
        match (o.get(name), o.get(&file)) {
            (None, None) => Ok(None),
            (Some(Value::String(p)), None) => Ok(Some(Secret::new(p))),
            (None, Some(Value::String(f))) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    bad(
                        &format!("secrets.{file}"),
                        &format!("cannot be read: {}", e.kind()),
                    )
                })?;
                Ok(Some(Secret::new(&text)))
            }
            _ => Err(bad(
                &format!("secrets.{name}"),
                &format!("give {name} or {file}, as a string"),
            )),
        }
    };
    Ok(Secrets {
        password: one("password")?,
        token: one("token")?,
        app_secret: one("application_credential_secret")?,
    })
}

/// `keystone`: how a `glance+` source logs in (its secrets come in `secrets`).
fn keystone(v: &Value) -> Result<GlanceAuth, Refusal> {
    let o = v
        .as_object()
        .ok_or_else(|| bad("keystone", "must be a JSON object of strings"))?;
    refuse_unknown(o, KEYSTONE, "keystone.")?;
    let get = |k: &str| -> Result<Option<String>, Refusal> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.chars().any(char::is_control) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("keystone.{k}"), "must be a string")),
        }
    };
    Ok(GlanceAuth {
        auth_type: get("auth_type")?.unwrap_or_else(|| "password".into()),
        username: get("username")?,
        user_id: get("user_id")?,
        user_domain_name: get("user_domain_name")?,
        user_domain_id: get("user_domain_id")?,
        project_name: get("project_name")?,
        project_id: get("project_id")?,
        project_domain_name: get("project_domain_name")?,
        project_domain_id: get("project_domain_id")?,
        app_cred_id: get("application_credential_id")?,
        app_cred_name: get("application_credential_name")?,
        region: get("region")?,
        interface: get("interface")?,
        ..GlanceAuth::default()
    })
}

/// The request as the state directory keeps it: without an inline password (a password
/// file's path is kept: the file is read again when the transfer is taken up again).
pub fn without_secrets(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(s) = b.get_mut("secrets").and_then(Value::as_object_mut) {
        let mut withheld = false;
        for k in INLINE_SECRETS {
            withheld |= s.remove(*k).is_some();
        }
        if withheld {
            s.insert("withheld".into(), Value::Bool(true));
        }
    }
    b
}

/// Whether a kept request had an inline secret, which was not kept.
pub fn had_withheld_secret(body: &Value) -> bool {
    body["secrets"]["withheld"] == Value::Bool(true)
}

fn refuse_unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), Refusal> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(bad(
            &format!("{prefix}{}", printable(k)),
            &format!("unknown field (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A field name safe to echo: at most 64 printable characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, Refusal> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn flag(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, Refusal> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(&format!("options.{field}"), "must be true or false")),
    }
}

fn checkpoint(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, Refusal> {
    let c = string(obj, field)?;
    if let Some(c) = &c {
        if c.is_empty() || c.len() > 256 || c.chars().any(char::is_control) {
            return Err(bad(field, "must be 1 to 256 printable characters"));
        }
    }
    Ok(c)
}

/// `p` made absolute-and-clean: `None` when it is relative or climbs with `..`.
fn normalised(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() || p.len() > 4096 {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The target must lie under one of `roots` once symbolic links are resolved: its directory
/// is canonicalised (the file itself may not exist yet; if it does and is a link, the link's
/// destination is what is checked).
fn check_root(target: &Path, roots: &[PathBuf]) -> Result<(), Refusal> {
    let forbidden = || Refusal {
        status: 403,
        message: format!(
            "target: {} is outside the target roots of this daemon",
            target.display()
        ),
    };
    let resolved = match std::fs::canonicalize(target) {
        Ok(p) => p,
        Err(_) => {
            let parent = target.parent().ok_or_else(forbidden)?;
            let name = target.file_name().ok_or_else(forbidden)?;
            std::fs::canonicalize(parent)
                .map_err(|_| bad("target", "its directory does not exist"))?
                .join(name)
        }
    };
    let inside = roots
        .iter()
        .any(|r| std::fs::canonicalize(r).is_ok_and(|r| resolved.starts_with(&r) && resolved != r));
    if inside {
        Ok(())
    } else {
        Err(forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> (tempfile::TempDir, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let r = vec![d.path().to_path_buf()];
        (d, r)
    }

    fn body(target: &Path, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"source":"nbd+unix:///?socket=/s","target":"{}"{extra}}}"#,
            target.display()
        )
        .into_bytes()
    }

    #[test]
    fn a_good_request_becomes_a_spec() {
        let (d, roots) = roots();
        let t = d.path().join("disk.img");
        let r = parse(
            &body(
                &t,
                r#","options":{"connections":2,"verify":true},"checkpoint":"s1""#,
            ),
            &roots,
        )
        .unwrap();
        assert_eq!(r.target, t);
        assert_eq!(r.spec.engine.connections, 2);
        assert!(r.spec.verify);
        assert_eq!(r.spec.checkpoint.as_deref(), Some("s1"));
    }

    #[test]
    fn refusals_name_the_field() {
        let (d, roots) = roots();
        let t = d.path().join("disk.img");
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "body"),
            (b"[]", "body"),
            (br#"{"target":"/x"}"#, "source"),
            (&body(&t, r#","colour":"red""#), "colour"),
            (
                &body(&t, r#","options":{"conections":2}"#),
                "options.conections",
            ),
            (
                &body(&t, r#","options":{"connections":0}"#),
                "options.connections",
            ),
            (
                &body(&t, r#","options":{"verify":"yes"}"#),
                "options.verify",
            ),
            (&body(&t, r#","checkpoint":"""#), "checkpoint"),
            (br#"{"source":"x","target":"relative/disk.img"}"#, "target"),
            (br#"{"source":"x","target":"/a/../etc/passwd"}"#, "target"),
            (
                br#"{"source":"https://user:pw@example.com/d.img","target":"/x"}"#,
                "source",
            ),
        ];
        for (b, field) in cases {
            let e = parse(b, &roots).unwrap_err();
            assert_eq!(e.status, 400, "{e:?}");
            assert!(
                e.message.starts_with(&format!("{field}:")),
                "{field}: {e:?}"
            );
        }
    }

    #[test]
    fn deltas_name_where_their_changes_come_from_and_need_both_checkpoints() {
        let (d, roots) = roots();
        let t = d.path().join("disk.img");
        let cps = r#","checkpoint":"s2","previous_checkpoint":"s1""#;
        let r = parse(
            &body(
                &t,
                &format!(r#","delta":{{"ranges":[{{"start":0,"length":512}}]}}{cps}"#),
            ),
            &roots,
        )
        .unwrap();
        assert!(matches!(r.spec.mode, Mode::Delta(Changes::Ranges(ref v)) if v == &[(0, 512)]));
        let r = parse(
            &body(&t, &format!(r#","delta":{{"dirty_bitmap":"b0"}}{cps}"#)),
            &roots,
        )
        .unwrap();
        assert!(matches!(r.spec.mode, Mode::Delta(Changes::FromSource)));
        let cases: &[(&str, &str)] = &[
            (r#","delta":{"changes":"source"}"#, "delta"),
            (
                r#","delta":{"changes":"guess"},"checkpoint":"a","previous_checkpoint":"b""#,
                "delta.changes",
            ),
            (
                r#","delta":{"ranges":[{"start":1}]},"checkpoint":"a","previous_checkpoint":"b""#,
                "delta.ranges",
            ),
            (
                r#","delta":{},"checkpoint":"a","previous_checkpoint":"b""#,
                "delta",
            ),
            (r#","previous_checkpoint":"b""#, "previous_checkpoint"),
            (r#","vddk":{"libdir":"/x"}"#, "vddk"),
            (r#","secrets":{"password":"pw"}"#, "secrets"),
            (r#","keystone":{"username":"u"}"#, "keystone"),
            (r#","secrets":{"pasword":"pw"}"#, "secrets.pasword"),
        ];
        for (extra, field) in cases {
            let e = parse(&body(&t, extra), &roots).unwrap_err();
            assert!(
                e.message.starts_with(&format!("{field}:")),
                "{field}: {e:?}"
            );
            assert!(!e.message.contains("pw\""), "no secret echoed: {e:?}");
        }
    }

    #[test]
    fn an_inline_password_is_used_but_never_kept() {
        let (d, roots) = roots();
        let t = d.path().join("disk.img");
        let b = format!(
            r#"{{"source":"vddk://u@h/?vm=moref=vm-1","target":"{}","vddk":{{"file":"[ds] a.vmdk"}},"secrets":{{"password":"hunter2"}}}}"#,
            t.display()
        );
        let r = parse(b.as_bytes(), &roots).unwrap();
        let Some(SourceSpec::Uri { options, .. }) = &r.spec.source else {
            panic!("a URI source")
        };
        assert!(options.vddk.password.is_some());
        assert_eq!(
            options.vddk.params,
            vec![("file".into(), "[ds] a.vmdk".into())]
        );
        let kept = without_secrets(&serde_json::from_slice(b.as_bytes()).unwrap());
        assert!(!kept.to_string().contains("hunter2"), "{kept}");
        assert!(had_withheld_secret(&kept));
    }

    #[test]
    fn a_target_outside_the_roots_or_behind_a_link_out_of_them_is_forbidden() {
        let (d, roots) = roots();
        let outside = tempfile::tempdir().unwrap();
        let e = parse(&body(&outside.path().join("disk.img"), ""), &roots).unwrap_err();
        assert_eq!(e.status, 403);
        std::os::unix::fs::symlink(outside.path(), d.path().join("escape")).unwrap();
        let e = parse(&body(&d.path().join("escape/disk.img"), ""), &roots).unwrap_err();
        assert_eq!(e.status, 403, "{e:?}");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link.img")).unwrap();
        let e = parse(&body(&d.path().join("link.img"), ""), &roots).unwrap_err();
        assert_eq!(e.status, 403, "{e:?}");
        let e = parse(&body(d.path(), ""), &roots).unwrap_err();
        assert_eq!(e.status, 403, "the root itself is not a target: {e:?}");
    }
}

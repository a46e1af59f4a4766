//! The SSH clone method (`ESXI_CLONE_METHOD=ssh`): vmkfstools run on the ESXi host through a
//! restricted root key rather than through Forklift's VIB.
//!
//! As Forklift's populator does it: the wrapper script ([`WRAPPER`], ferry's own, with the
//! commands and answers of Forklift's) is uploaded to the disk's datastore as
//! `secure-vmkfstools-wrapper`; the host's `/etc/ssh/keys-root/authorized_keys` holds the
//! public key behind a forced command that reads `DS=<datastore>;CMD=<arguments>` from
//! `$SSH_ORIGINAL_COMMAND`, answers `SSH_OK` when the datastore is empty (the access test) and
//! otherwise runs `/vmfs/volumes/<datastore>/secure-vmkfstools-wrapper` with the arguments. The
//! administrator installs that line (ESXi offers no API for it); when the access test fails,
//! the error says so and the log carries the line to install ([`authorized_keys_line`]).
//!
//! The SSH client is russh (the image has no `ssh` binary): public-key authentication as
//! root, one exec channel per command, 60 s per command, at most 1 MiB of answer. Parsers are
//! apart from I/O: [`parse_answer`] reads the wrapper's esxcli-style XML answer.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use tokio::sync::Mutex;
use transfer_core::delta::vsphere::xml;
use transfer_core::error::peer_text;
use transfer_core::{Error, ErrorKind, Result};

/// ferry's vmkfstools wrapper, uploaded to the datastore.
pub const WRAPPER: &str = include_str!("wrapper.sh");
/// Its file name at the datastore's root (the name the forced command runs).
pub const WRAPPER_NAME: &str = "secure-vmkfstools-wrapper";
/// The version it answers to `--version` (the one in [`WRAPPER`]).
pub const WRAPPER_VERSION: &str = "0.3.1+ferry.1";

/// The forced command of the restricted key, as written inside `command="..."` of an
/// authorized_keys line (its double quotes escaped): `DS=<datastore>;CMD=<arguments>` from
/// `$SSH_ORIGINAL_COMMAND`; `SSH_OK` for an empty datastore; a datastore name with a `/`, or
/// `.` or `..`, is refused; else the datastore's wrapper runs with the arguments.
pub const FORCED_COMMAND: &str = r#"sh -c 'c=\"$SSH_ORIGINAL_COMMAND\"; case \"$c\" in DS=*\;CMD=*) ;; *) echo \"refused: expected DS=<datastore>;CMD=<command>\"; exit 1;; esac; ds=${c#DS=}; ds=${ds%%;CMD=*}; case \"$ds\" in */*|.|..) echo \"refused: bad datastore\"; exit 1;; esac; if [ -z \"$ds\" ]; then echo SSH_OK; else SSH_ORIGINAL_COMMAND=${c#*;CMD=} exec sh \"/vmfs/volumes/$ds/secure-vmkfstools-wrapper\"; fi'"#;

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting and authenticating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most answer bytes read from one command.
const MAX_ANSWER: usize = 1 << 20;
/// Connections tried for one command when the previous one broke.
const CONNECT_TRIES: u32 = 3;

/// The line for `/etc/ssh/keys-root/authorized_keys` that gives `public_key` the restricted
/// access the SSH clone method needs.
pub fn authorized_keys_line(public_key: &str) -> String {
    format!(
        "command=\"{FORCED_COMMAND}\",no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty {}",
        public_key.trim()
    )
}

/// An argument for the wrapper's command line, which it splits on blanks: blanks and `%`
/// percent-encoded (the wrapper decodes `%20`, `%09` and `%25`).
pub fn encode_arg(s: &str) -> String {
    s.replace('%', "%25")
        .replace(' ', "%20")
        .replace('\t', "%09")
}

/// The restricted key pair, from Forklift's secret (`SSH_PRIVATE_KEY`, `SSH_PUBLIC_KEY`, each
/// base64 of the OpenSSH or PEM text). Never printed.
#[derive(Clone)]
pub struct SshKeys {
    private: Arc<PrivateKey>,
    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub public: String,
}

impl std::fmt::Debug for SshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKeys")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SshKeys {
    /// Decodes the two values; errors name the variable, never its content.
    pub fn from_base64(private_b64: &str, public_b64: &str) -> Result<SshKeys> {
        let decode = |name: &str, v: &str| -> Result<String> {
            let clean: String = v.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(clean.as_bytes())
                .map_err(|_| {
                    Error::new(ErrorKind::InvalidInput, format!("{name} is not base64"))
                })?;
            String::from_utf8(bytes)
                .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("{name} is not text")))
        };
        let private_text = decode("SSH_PRIVATE_KEY", private_b64)?;
        let public = decode("SSH_PUBLIC_KEY", public_b64)?;
        let private = russh::keys::decode_secret_key(&private_text, None).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "SSH_PRIVATE_KEY is not an unencrypted OpenSSH or PEM private key",
            )
        })?;
        let first = public.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let mut words = first.split_whitespace();
        let parsed = match (words.next(), words.next()) {
            (Some(_), Some(b64)) => russh::keys::parse_public_key_base64(b64).ok(),
            _ => None,
        };
        let Some(parsed) = parsed else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "SSH_PUBLIC_KEY is not an OpenSSH public key line ('<type> <base64> [comment]')",
            ));
        };
        if parsed.key_data() != private.public_key().key_data() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "SSH_PUBLIC_KEY is not the public half of SSH_PRIVATE_KEY",
            ));
        }
        // Written out again from the parsed key, with the comment of its line when printable:
        // whatever else the value held (a second line, options) never reaches the
        // authorized_keys line an administrator copies.
        let mut public = parsed.to_openssh().map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "SSH_PUBLIC_KEY cannot be written out",
            )
        })?;
        let comment = words.collect::<Vec<_>>().join(" ");
        if !comment.is_empty() && comment.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            public = format!("{public} {comment}");
        }
        Ok(SshKeys {
            private: Arc::new(private),
            public,
        })
    }
}

/// What one wrapper command answered: its status (`0`: done) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperAnswer {
    /// `0` on success.
    pub status: String,
    /// JSON on success (or empty), else what went wrong.
    pub message: String,
}

/// Reads the wrapper's answer: `<output><structure><field name="status"><string>..` and the
/// same for `message`.
pub fn parse_answer(text: &str, what: &str) -> Result<WrapperAnswer> {
    let start = text.find("<output").ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            format!(
                "{what}: the host did not answer with the wrapper's XML: {}",
                peer_text(text.trim())
            ),
        )
    })?;
    let root = xml::parse(&text.as_bytes()[start..], what)?;
    let structure = root
        .child("structure")
        .or_else(|| root.children.iter().find_map(|c| c.child("structure")))
        .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("{what}: no structure")))?;
    let field = |name: &str| {
        structure
            .children
            .iter()
            .find(|f| f.name == "field" && f.name_attr.as_deref() == Some(name))
            .map(|f| f.text_of("string").unwrap_or("").to_owned())
    };
    let status = field("status")
        .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("{what}: no status field")))?;
    Ok(WrapperAnswer {
        status: status.trim().to_owned(),
        message: field("message").unwrap_or_default(),
    })
}

/// Accepts the host's key, as Forklift's populator does (its secret carries no host key),
/// unless `SSH_HOST_KEY_FINGERPRINT` names one; logs what it saw.
struct HostKey {
    expected: Option<String>,
    label: String,
    /// The fingerprint of a key refused for not being the expected one.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for HostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let fp = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string()
            }
            PublicKeyOrCertificate::Certificate(c) => {
                russh::keys::PublicKey::from(c.public_key().clone())
                    .fingerprint(HashAlg::Sha256)
                    .to_string()
            }
        };
        match &self.expected {
            Some(want) if want.trim() != fp => {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
                Ok(false)
            }
            Some(_) => Ok(true),
            None => {
                tracing::info!(host = %self.label, "SSH host key {fp} (not verified: set SSH_HOST_KEY_FINGERPRINT to pin it)");
                Ok(true)
            }
        }
    }
}

/// An SSH connection to one ESXi host's restricted key.
pub struct EsxiSsh {
    addr: String,
    port: u16,
    label: String,
    keys: SshKeys,
    host_key: Option<String>,
    conn: Mutex<Option<client::Handle<HostKey>>>,
}

impl EsxiSsh {
    /// Connects to `addr:port` as root with `keys` (`label` names the host in messages).
    pub async fn connect(
        addr: &str,
        port: u16,
        label: &str,
        keys: SshKeys,
        host_key: Option<String>,
    ) -> Result<EsxiSsh> {
        let s = EsxiSsh {
            addr: addr.to_owned(),
            port,
            label: label.to_owned(),
            keys,
            host_key,
            conn: Mutex::new(None),
        };
        let h = s.open().await?;
        *s.conn.lock().await = Some(h);
        Ok(s)
    }

    async fn open(&self) -> Result<client::Handle<HostKey>> {
        let at = format!("SSH to {} ({}:{})", self.label, self.addr, self.port);
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            ..Default::default()
        });
        let refused = Arc::new(std::sync::Mutex::new(None));
        let handler = HostKey {
            expected: self.host_key.clone(),
            label: self.label.clone(),
            refused: refused.clone(),
        };
        let fut = async {
            let mut h = client::connect(config, (self.addr.as_str(), self.port), handler)
                .await
                .map_err(
                    |e| match refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        Some(fp) => Error::new(
                            ErrorKind::Denied,
                            format!(
                                "{at}: the host key {fp} is not SSH_HOST_KEY_FINGERPRINT {}",
                                self.host_key.as_deref().unwrap_or("").trim()
                            ),
                        ),
                        None => Error::new(ErrorKind::Connect, format!("{at}: {e}")),
                    },
                )?;
            let hash = h
                .best_supported_rsa_hash()
                .await
                .map_err(|e| Error::new(ErrorKind::Connect, format!("{at}: {e}")))?
                .flatten();
            let auth = h
                .authenticate_publickey(
                    "root",
                    PrivateKeyWithHashAlg::new(self.keys.private.clone(), hash),
                )
                .await
                .map_err(|e| Error::new(ErrorKind::Connect, format!("{at}: {e}")))?;
            if !auth.success() {
                return Err(Error::new(
                    ErrorKind::Denied,
                    format!("{at}: the host refused the key of SSH_PUBLIC_KEY for root (is it in /etc/ssh/keys-root/authorized_keys?)"),
                ));
            }
            Ok(h)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::TimedOut,
                    format!("{at}: no answer in {CONNECT_TIMEOUT:?}"),
                )
            })?
    }

    /// Runs `line` as the SSH command (the forced command sees it): its exit status and its
    /// output (standard output, then error output). A broken connection is opened again (up
    /// to three connections); with `once`, only while the command has not been sent.
    pub async fn exec(&self, line: &str, once: bool) -> Result<(Option<u32>, String)> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut guard = self.conn.lock().await;
            if guard.as_ref().is_none_or(|h| h.is_closed()) {
                *guard = None;
                match self.open().await {
                    Ok(h) => *guard = Some(h),
                    // Nothing was sent yet: tried again even for a command sent once.
                    Err(e) if tries < CONNECT_TRIES && e.kind().is_transient() => {
                        tracing::warn!("{e} (try {tries} of {CONNECT_TRIES})");
                        drop(guard);
                        tokio::time::sleep(Duration::from_secs(u64::from(tries))).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let h = guard.as_ref().ok_or_else(|| {
                Error::new(
                    ErrorKind::Connect,
                    format!("SSH to {}: no connection", self.label),
                )
            })?;
            let (sent, e) = match tokio::time::timeout(COMMAND_TIMEOUT, run(h, line)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(Failed::TooLong)) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "SSH to {}: the answer is longer than {MAX_ANSWER} bytes",
                            self.label
                        ),
                    ))
                }
                Ok(Err(Failed::Unsent(e))) => (false, e),
                Ok(Err(Failed::Sent(e))) => (true, e),
                Err(_) => {
                    *guard = None;
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("SSH to {}: no answer in {COMMAND_TIMEOUT:?}", self.label),
                    ));
                }
            };
            *guard = None;
            if tries < CONNECT_TRIES && (!once || !sent) {
                tracing::warn!(
                    "SSH to {}: {e} (try {tries} of {CONNECT_TRIES})",
                    self.label
                );
                continue;
            }
            return Err(Error::new(
                ErrorKind::Connect,
                format!("SSH to {}: {e}", self.label),
            ));
        }
    }

    /// Whether the restricted key's forced command answers its access test (`SSH_OK`).
    pub async fn check_access(&self) -> Result<()> {
        let (_, out) = self.exec("DS=;CMD=status test-task-id", false).await?;
        if out.trim() == "SSH_OK" {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Connect,
            format!(
                "SSH to {}: the key's forced command did not answer SSH_OK (answered: {}); install the restricted key line printed above in /etc/ssh/keys-root/authorized_keys",
                self.label,
                peer_text(out.trim())
            ),
        ))
    }

    /// Runs the wrapper on datastore `ds` with `args`: its message when its status is `0`.
    pub async fn wrapper(&self, ds: &str, args: &[&str], once: bool) -> Result<String> {
        let cmd = args
            .iter()
            .map(|a| encode_arg(a))
            .collect::<Vec<_>>()
            .join(" ");
        let what = format!("vmkfstools wrapper {} on {}", args[0], self.label);
        let (_, out) = self.exec(&format!("DS={ds};CMD={cmd}"), once).await?;
        let a = parse_answer(&out, &what)?;
        if a.status == "0" {
            Ok(a.message)
        } else {
            Err(Error::new(
                ErrorKind::Server,
                format!(
                    "{what}: failed (status {}): {}",
                    peer_text(&a.status),
                    peer_text(&a.message)
                ),
            ))
        }
    }

    /// Ends the connection.
    pub async fn close(&self) {
        if let Some(h) = self.conn.lock().await.take() {
            let _ = h
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
    }
}

/// Why one command got no answer.
enum Failed {
    /// The channel could not be opened: the command never left.
    Unsent(russh::Error),
    /// The connection failed once the command was (maybe) sent.
    Sent(russh::Error),
    /// The answer passed [`MAX_ANSWER`].
    TooLong,
}

/// One command on a new channel: exit status and output, at most [`MAX_ANSWER`] bytes.
async fn run(
    h: &client::Handle<HostKey>,
    line: &str,
) -> std::result::Result<(Option<u32>, String), Failed> {
    let mut ch = h.channel_open_session().await.map_err(Failed::Unsent)?;
    ch.exec(true, line).await.map_err(Failed::Sent)?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut status = None;
    while let Some(msg) = ch.wait().await {
        let (buf, data) = match msg {
            ChannelMsg::Data { data } => (&mut out, data),
            ChannelMsg::ExtendedData { data, .. } => (&mut err, data),
            ChannelMsg::ExitStatus { exit_status } => {
                status = Some(exit_status);
                continue;
            }
            _ => continue,
        };
        if buf.len() + data.len() > MAX_ANSWER {
            return Err(Failed::TooLong);
        }
        buf.extend_from_slice(&data);
    }
    out.extend_from_slice(&err);
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        let ok = "<?xml version=\"1.0\" ?>\n<output xmlns=\"http://www.vmware.com/Products/ESX/5.0/esxcli/\">\n<structure typeName=\"result\"><field name=\"status\"><string>0</string></field><field name=\"message\"><string>{\"taskId\": \"a-1\", \"lastLine\": \"x &lt; y\"}</string></field></structure>\n</output>\n";
        let a = parse_answer(ok, "t").unwrap();
        assert_eq!(a.status, "0");
        assert_eq!(a.message, r#"{"taskId": "a-1", "lastLine": "x < y"}"#);
        // Noise before the document (a login banner) is skipped.
        let a = parse_answer(&format!("Welcome\n{ok}"), "t").unwrap();
        assert_eq!(a.status, "0");
        let failed = ok.replace("<string>0</string>", "<string>1</string>");
        assert_eq!(parse_answer(&failed, "t").unwrap().status, "1");
        for bad in ["", "SSH_OK", "<output><structure/></output>", "<output>"] {
            assert!(parse_answer(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_wrapper_and_the_key_line_agree() {
        assert!(WRAPPER.contains(&format!("VERSION=\"{WRAPPER_VERSION}\"")));
        assert!(FORCED_COMMAND.contains(WRAPPER_NAME));
        let line = authorized_keys_line("ssh-ed25519 AAAAC3 ferry\n");
        assert!(line.starts_with("command=\"sh -c '"), "{line}");
        assert!(line.ends_with(",no-pty ssh-ed25519 AAAAC3 ferry"), "{line}");
        // Inside command="...", every double quote is escaped.
        let inner = &line["command=\"".len()..line.find("\",no-port").unwrap()];
        assert!(!inner.replace("\\\"", "").contains('"'), "{inner}");
        assert_eq!(
            encode_arg("/vmfs/volumes/ds 1/a%b\tc"),
            "/vmfs/volumes/ds%201/a%25b%09c"
        );
    }

    #[test]
    fn keys_are_checked_without_showing_them() {
        let e = SshKeys::from_base64("not base64!", "x").unwrap_err();
        assert!(
            e.to_string().contains("SSH_PRIVATE_KEY is not base64"),
            "{e}"
        );
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let e = SshKeys::from_base64(
            &b64("-----BEGIN OPENSSH PRIVATE KEY-----\nsecretstuff\n"),
            &b64("ssh-ed25519 AAAA"),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secretstuff"), "{e}");
    }
}

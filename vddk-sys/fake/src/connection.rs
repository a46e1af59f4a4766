//! `VixDiskLib_ConnectEx`'s checks and the connection object it returns: the parameters are
//! read once, the password only compared (its text is kept nowhere), and the connection
//! remembers the server, the snapshot and the requested transport modes for `Open`.

use std::ffi::c_char;

use vddk_sys::{VixDiskLibConnectParams, VixError, VIXDISKLIB_CRED_UID};

use crate::ffi::{text, AUTHENTICATION_FAILURE, FAIL, INVALID_ARG};
use crate::global::Session;

/// What ConnectEx (and PrepareForAccess, EndAccess) were given.
#[derive(Debug, Default)]
pub struct Params {
    /// `vmxSpec`.
    pub vmx_spec: Option<String>,
    /// `serverName`.
    pub server: Option<String>,
    /// `thumbPrint`.
    pub thumbprint: Option<String>,
    /// `credType`.
    pub cred_type: u32,
    /// `creds.uid.userName` (for `VIXDISKLIB_CRED_UID`).
    pub user: Option<String>,
    /// How the password compared: "ok" | "wrong" | "none" with `FAKE_VDDK_PASSWORD` set,
    /// "set" | "none" without.
    pub password: &'static str,
    /// `port`.
    pub port: u32,
    /// `nfcHostPort`.
    pub nfc_port: u32,
}

impl Params {
    /// Reads `p` (all `None` for NULL), comparing its password with `expected`.
    ///
    /// # Safety
    /// `p` is NULL or points to connection parameters whose strings are NULL or NUL-terminated,
    /// all valid during the call.
    pub unsafe fn read(p: *const VixDiskLibConnectParams, expected: Option<&str>) -> Params {
        // SAFETY: by this function's contract `p` is NULL or valid for reads.
        let Some(p) = (unsafe { p.as_ref() }) else {
            return Params {
                password: "none",
                ..Params::default()
            };
        };
        let (user, password) = if p.credType == VIXDISKLIB_CRED_UID {
            // SAFETY: with credType VIXDISKLIB_CRED_UID the caller filled the `uid` member of
            // the union (for any other type neither member is read).
            unsafe { (p.creds.uid.userName, p.creds.uid.password) }
        } else {
            (std::ptr::null_mut(), std::ptr::null_mut())
        };
        // SAFETY: the strings of `p` are NULL or NUL-terminated (this function's contract).
        unsafe {
            Params {
                vmx_spec: text(p.vmxSpec),
                server: text(p.serverName),
                thumbprint: text(p.thumbPrint),
                cred_type: p.credType,
                user: text(user),
                password: compare(password, expected),
                port: p.port,
                nfc_port: p.nfcHostPort,
            }
        }
    }

    /// Whether the parameters are well-formed: a `moref=` vmxSpec, a server name, a user name.
    fn check(&self) -> Result<(), VixError> {
        let vmx = self.vmx_spec.as_deref().unwrap_or("");
        let server = self.server.as_deref().unwrap_or("");
        let ok = vmx.starts_with("moref=")
            && !server.is_empty()
            && self.cred_type == VIXDISKLIB_CRED_UID
            && self.user.is_some();
        ok.then_some(()).ok_or(INVALID_ARG)
    }
}

/// How the password at `p` compares with `expected`, without keeping its text.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid during the call.
unsafe fn compare(p: *const c_char, expected: Option<&str>) -> &'static str {
    if p.is_null() {
        return "none";
    }
    let Some(expected) = expected else {
        return "set";
    };
    // SAFETY: `p` is not NULL and NUL-terminated (this function's contract).
    let given = unsafe { std::ffi::CStr::from_ptr(p) };
    if given.to_bytes() == expected.as_bytes() {
        "ok"
    } else {
        "wrong"
    }
}

/// A connection: what `VixDiskLibConnection` points to.
pub struct Connection {
    /// The session it belongs to.
    pub session: &'static Session,
    /// The server name.
    pub server: String,
    /// The snapshot whose disk contents `Open` serves, if any.
    pub snapshot: Option<String>,
    /// The requested transport modes, colon-separated (`None`: any offered).
    pub transports: Option<String>,
}

impl Connection {
    /// Connects as ConnectEx does: well-formed parameters, then an injected failure, then the
    /// server's thumbprint, then the password.
    pub fn connect(
        session: &'static Session,
        params: &Params,
        snapshot: Option<String>,
        transports: Option<String>,
    ) -> Result<Connection, VixError> {
        params.check()?;
        if let Some(code) = session.knobs.failure("ConnectEx") {
            return Err(code);
        }
        let server = params.server.clone().unwrap_or_default();
        if let Some(expected) = &session.knobs.thumbprint {
            let got = params.thumbprint.as_deref().unwrap_or("(none)");
            if !got.eq_ignore_ascii_case(expected) {
                session.warn(&format!(
                    "SSL thumbprint mismatch for {server}: expected {expected}, got {got}"
                ));
                return Err(FAIL);
            }
        }
        if session.knobs.password.is_some() && params.password != "ok" {
            session.warn(&format!(
                "Cannot connect to host {server}: incorrect user name or password"
            ));
            return Err(AUTHENTICATION_FAILURE);
        }
        Ok(Connection {
            session,
            server,
            snapshot,
            transports,
        })
    }

    /// The transport mode of a disk opened through this connection: the first requested mode
    /// the host offers (any offered one when none was requested).
    pub fn mode(&self) -> Result<String, VixError> {
        let knobs = &self.session.knobs;
        let requested = self
            .transports
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(&knobs.transports);
        let mode = requested
            .split(':')
            .find(|m| !m.is_empty() && knobs.offers(m));
        mode.map(str::to_owned).ok_or_else(|| {
            self.session.warn(&format!(
                "none of the requested transport modes ({requested}) is available"
            ));
            FAIL
        })
    }
}

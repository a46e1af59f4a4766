//! Forklift's populator secrets, as its populators get them in the environment: the OpenStack
//! credentials and the TLS trust of either populator.

use std::path::Path;

use transfer_core::http::TlsTrust;
use transfer_core::source::glance::GlanceAuth;
use transfer_core::{Error, Result};

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// TLS trust from the secret: `insecureSkipVerify`, or `cacert` (PEM text, written to
/// `dir/ca.pem` for the HTTP layer to read), else the system's roots.
pub fn tls_trust(dir: &Path) -> Result<TlsTrust> {
    if env("insecureSkipVerify").as_deref() == Some("true") {
        return Ok(TlsTrust::Insecure);
    }
    match env("cacert") {
        Some(pem) => {
            let p = dir.join("ca.pem");
            std::fs::write(&p, pem).map_err(|e| Error::io("writing the CA certificate", e))?;
            Ok(TlsTrust::CaBundle(p))
        }
        None => Ok(TlsTrust::System),
    }
}

/// Reads the keys of Forklift's OpenStack secret (`authType`, `username`, `userID`,
/// `password`, `token`, `applicationCredentialID`/`Name`/`Secret`, `projectName`,
/// `projectID`, `userDomainName`/`ID`, `projectDomainName`/`ID`, `domainName`/`ID` for both
/// when the specific ones are absent, `regionName`, `availability`).
pub fn glance_auth() -> GlanceAuth {
    let v = env;
    let domain_name = v("domainName");
    let domain_id = v("domainID");
    GlanceAuth {
        auth_type: v("authType").unwrap_or_else(|| "password".into()),
        username: v("username"),
        user_id: v("userID"),
        password: v("password"),
        token: v("token"),
        app_cred_id: v("applicationCredentialID"),
        app_cred_name: v("applicationCredentialName"),
        app_cred_secret: v("applicationCredentialSecret"),
        project_name: v("projectName"),
        project_id: v("projectID"),
        user_domain_name: v("userDomainName").or_else(|| domain_name.clone()),
        user_domain_id: v("userDomainID").or_else(|| domain_id.clone()),
        project_domain_name: v("projectDomainName").or(domain_name),
        project_domain_id: v("projectDomainID").or(domain_id),
        region: v("regionName"),
        interface: v("availability"),
    }
}

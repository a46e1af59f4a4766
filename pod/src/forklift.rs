//! Forklift's OpenStack secret, as its openstack-populator gets it in the environment.

use transfer_core::source::glance::GlanceAuth;

/// Reads the keys of Forklift's OpenStack secret (`authType`, `username`, `userID`,
/// `password`, `token`, `applicationCredentialID`/`Name`/`Secret`, `projectName`,
/// `projectID`, `userDomainName`/`ID`, `projectDomainName`/`ID`, `domainName`/`ID` for both
/// when the specific ones are absent, `regionName`, `availability`).
pub fn glance_auth() -> GlanceAuth {
    let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
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

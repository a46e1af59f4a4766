//! TLS for every HTTPS source, on rustls (no OpenSSL): system roots by default, a CA bundle (file
//! or directory of PEM files) instead, no verification with `insecure`, or pinning of the leaf
//! certificate's SHA-256 or SHA-1 fingerprint (how vCenter and ESXi thumbprints are given). A pin
//! replaces chain verification, as VDDK's thumbprint does; handshake signatures are still checked.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha1::Digest as _;

use crate::error::{invalid, Error, ErrorKind, Result};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsTrust {
    /// The system's roots.
    #[default]
    System,
    /// PEM certificates from a file or a directory of files.
    CaBundle(std::path::PathBuf),
    /// No verification at all.
    Insecure,
    /// The leaf certificate's fingerprint.
    Pinned(Thumbprint),
}

/// A certificate fingerprint: SHA-256 (32 bytes) or SHA-1 (20 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprint(Vec<u8>);

impl Thumbprint {
    /// Parses `01:23:AB...` or `0123ab...` (64 hex digits for SHA-256, 40 for SHA-1).
    pub fn parse(s: &str) -> Result<Self> {
        let hex: String = s
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        if !(hex.len() == 64 || hex.len() == 40) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "invalid thumbprint '{s}': expected a SHA-256 (64 hex digits) or SHA-1 (40) fingerprint"
            )));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits checked"))
            .collect();
        Ok(Thumbprint(bytes))
    }

    /// The same kind of fingerprint of `der`.
    pub fn of(&self, der: &[u8]) -> Thumbprint {
        if self.0.len() == 20 {
            Thumbprint(sha1::Sha1::digest(der).to_vec())
        } else {
            Thumbprint(sha2::Sha256::digest(der).to_vec())
        }
    }
}

impl std::fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&parts.join(":"))
    }
}

/// Accepts exactly the pinned leaf certificate (or, when `pin` is `None`, any certificate), and
/// checks handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<Thumbprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = pin.of(end_entity.as_ref());
        if &got == pin {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "thumbprint mismatch: expected {pin}, server presented {got}"
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn load_pem_dir_or_file(path: &Path, roots: &mut RootCertStore) -> Result<()> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let rd = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("reading CA directory {}", path.display()), e))?;
        let mut v: Vec<_> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_owned()]
    };
    let mut added = 0usize;
    for f in &files {
        let certs = CertificateDer::pem_file_iter(f).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("reading CA file {}: {e}", f.display()),
            )
        })?;
        for c in certs {
            let c = c.map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("parsing CA file {}: {e}", f.display()),
                )
            })?;
            if roots.add(c).is_ok() {
                added += 1;
            }
        }
    }
    if added == 0 {
        return Err(invalid(format!(
            "no CA certificate found in {}",
            path.display()
        )));
    }
    Ok(())
}

/// The rustls client configuration for `trust`.
pub fn client_config(trust: &TlsTrust) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Unsupported, format!("TLS setup: {e}")))?;
    let config = match trust {
        TlsTrust::Insecure | TlsTrust::Pinned(_) => {
            let pin = match trust {
                TlsTrust::Pinned(p) => Some(p.clone()),
                _ => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider }))
                .with_no_client_auth()
        }
        TlsTrust::CaBundle(path) => {
            let mut roots = RootCertStore::empty();
            load_pem_dir_or_file(path, &mut roots)?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsTrust::System => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                tracing::warn!("no system CA certificates found; HTTPS servers cannot be verified");
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_parse_in_colon_and_plain_forms() {
        let colon = "AB:".repeat(31) + "AB";
        let a = Thumbprint::parse(&colon).unwrap();
        let b = Thumbprint::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), colon);
        assert_eq!(Thumbprint::parse(&"01".repeat(20)).unwrap().0.len(), 20);
    }

    #[test]
    fn bad_thumbprints_are_rejected() {
        for s in ["", "AB:CD", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(Thumbprint::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn fingerprint_kind_follows_the_pin() {
        let sha1 = Thumbprint::parse(&"00".repeat(20)).unwrap();
        let sha256 = Thumbprint::parse(&"00".repeat(32)).unwrap();
        assert_eq!(
            sha1.of(b"abc").to_string(),
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
        );
        assert_eq!(sha256.of(b"abc").0.len(), 32);
    }
}

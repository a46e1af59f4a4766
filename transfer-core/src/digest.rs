//! Expected digests of a source's bytes as they are served (`sha256:HEX`, ...): what a
//! checksum is and how it is computed. It belongs to the body being read, not to the transport
//! that carries it; the stream reader ([`crate::source::stream`]) checks it at the body's end.

use sha1::Digest as _;

use crate::error::{invalid, Result};

/// An expected digest of the received bytes: `sha256:HEX`, `sha1:`, `sha512:`, `md5:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub(crate) algo: &'static str,
    pub(crate) expected: Vec<u8>,
}

impl Checksum {
    /// Parses `ALGO:HEX`.
    pub fn parse(s: &str) -> Result<Self> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| invalid("invalid checksum: expected ALGO:HEX"))?;
        let (algo, len) = match algo.to_ascii_lowercase().as_str() {
            "md5" => ("md5", 16),
            "sha1" => ("sha1", 20),
            "sha256" => ("sha256", 32),
            "sha512" => ("sha512", 64),
            other => {
                return Err(invalid(format!(
                    "unknown checksum algorithm '{other}' (md5, sha1, sha256, sha512)"
                )))
            }
        };
        let hex = hex.trim();
        if hex.len() != len * 2 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "invalid {algo} checksum: expected {} hex digits",
                len * 2
            )));
        }
        let expected = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        Ok(Checksum { algo, expected })
    }

    pub(crate) fn hasher(&self) -> Hasher {
        match self.algo {
            "md5" => Hasher::Md5(md5::Md5::new()),
            "sha1" => Hasher::Sha1(sha1::Sha1::new()),
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            _ => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

pub(crate) enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_all_algorithms_and_reject_bad_input() {
        assert_eq!(
            Checksum::parse(&format!("sha256:{}", "ab".repeat(32)))
                .unwrap()
                .algo,
            "sha256"
        );
        assert_eq!(
            Checksum::parse(&format!("MD5:{}", "00".repeat(16)))
                .unwrap()
                .algo,
            "md5"
        );
        assert_eq!(
            Checksum::parse(&format!("sha1:{}", "00".repeat(20)))
                .unwrap()
                .expected
                .len(),
            20
        );
        assert_eq!(
            Checksum::parse(&format!("sha512:{}", "00".repeat(64)))
                .unwrap()
                .expected
                .len(),
            64
        );
        for bad in [
            "sha256",
            "crc:00",
            "sha256:abc",
            &format!("sha1:{}", "zz".repeat(20)),
        ] {
            assert!(Checksum::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_of_abc_matches_the_known_digest() {
        let c = Checksum::parse(&format!("sha256:{}", "00".repeat(32))).unwrap();
        let mut h = c.hasher();
        h.update(b"abc");
        assert_eq!(
            hex(&h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

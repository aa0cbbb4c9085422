//! `Digest`, the name of every blob: `sha256:<64 lowercase hex>`, parsed once and then trusted, and
//! `Hasher`, which computes one incrementally. Owns the digest grammar; must not touch the disk.
//!
//! Only sha256 is accepted: it is what registries and the Go checksum database use, and one algorithm
//! means one on-disk name per blob.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

const ALGORITHM: &str = "sha256";
const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A sha256 content digest in canonical form, e.g. `sha256:e3b0c442...b855`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest wharf accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest has no algorithm prefix; expected sha256:<64 lowercase hex>")]
    MissingAlgorithm,
    #[error("unsupported digest algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("sha256 digest must be lowercase hex, found uppercase {0:?}")]
    Uppercase(char),
    #[error("sha256 digest contains {0:?}, which is not a lowercase hex digit")]
    InvalidCharacter(char),
    #[error("sha256 digest must have 64 hex digits, found {0}")]
    WrongLength(usize),
}

impl Digest {
    /// Parses the canonical text form. OCI's grammar is `algorithm ":" encoded`; for sha256 the
    /// encoded part is exactly `[a-f0-9]{64}` (image-spec descriptor.md, "SHA-256").
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(DigestError::MissingAlgorithm);
        };
        if algorithm.is_empty() {
            return Err(DigestError::MissingAlgorithm);
        }
        if algorithm != ALGORITHM {
            return Err(DigestError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        if let Some(c) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(if c.is_ascii_hexdigit() {
                DigestError::Uppercase(c)
            } else {
                DigestError::InvalidCharacter(c)
            });
        }
        if hex.len() != HEX_LEN {
            return Err(DigestError::WrongLength(hex.len()));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The full canonical form, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256: feed bytes as they arrive, `finish` for the `Digest`.
#[derive(Clone, Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        let hash = self.0.finalize();
        Digest(format!("{PREFIX}{}", hex::encode(hash.as_slice())))
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(sha256)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_well_known_sha256() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
        assert_eq!(Hasher::new().finish().as_str(), EMPTY);
    }

    #[test]
    fn incremental_hash_equals_one_shot_hash() {
        let mut hasher = Hasher::new();
        hasher.update(b"hello ");
        hasher.update(b"");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Digest::of(b"hello world"));
        assert_eq!(
            Digest::of(b"hello world").hex(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[test]
    fn canonical_digest_parses_and_prints_unchanged() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn malformed_digests_are_rejected_with_the_reason() {
        let hex = &EMPTY[7..];
        let upper = format!("sha256:{}", hex.to_uppercase());
        let sha512 = format!("sha512:{hex}{hex}");
        let short = format!("sha256:{}", &hex[..63]);
        let long = format!("sha256:{hex}0");
        let spaced = format!("sha256:{} ", &hex[..63]);
        let double = format!("sha256:sha256:{hex}");
        let no_algorithm = format!(":{hex}");
        let cases: &[(&str, DigestError)] = &[
            ("", DigestError::MissingAlgorithm),
            (hex, DigestError::MissingAlgorithm),
            (&no_algorithm, DigestError::MissingAlgorithm),
            (&sha512, DigestError::UnsupportedAlgorithm("sha512".into())),
            (&upper, DigestError::Uppercase('E')),
            (&short, DigestError::WrongLength(63)),
            (&long, DigestError::WrongLength(65)),
            ("sha256:", DigestError::WrongLength(0)),
            (&spaced, DigestError::InvalidCharacter(' ')),
            (&double, DigestError::InvalidCharacter('s')),
            (
                "SHA256:abc",
                DigestError::UnsupportedAlgorithm("SHA256".into()),
            ),
            (
                "sha256:../../etc/passwd",
                DigestError::InvalidCharacter('.'),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Digest::parse(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn unsupported_algorithm_message_names_the_algorithm() {
        let err = Digest::parse("md5:abc").unwrap_err();
        assert_eq!(err.to_string(), "unsupported digest algorithm md5");
    }

    #[test]
    fn digest_serializes_as_its_string_and_deserializes_through_parse() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let bad = serde_json::from_str::<Digest>("\"sha256:ABC\"").unwrap_err();
        assert!(bad.to_string().contains("lowercase"), "{bad}");
    }
}

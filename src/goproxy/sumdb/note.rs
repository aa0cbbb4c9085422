//! The checksum database's text formats: signed notes and verifier keys
//! (golang.org/x/mod/sumdb/note), tree heads and lookup records (golang.org/x/mod/sumdb/tlog
//! `note.go`). Verification only; signing is the server's job and is not implemented.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as Ed25519Signature, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::tlog::{HASH_SIZE, Hash, Tree};

/// Algorithm id of Ed25519 in verifier keys.
const ALG_ED25519: u8 = 1;

/// Most signature lines a note may carry.
const MAX_SIGNATURES: usize = 100;

/// Largest tree-head text `parse_tree` accepts.
const MAX_TREE_TEXT: usize = 1_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("malformed verifier id")]
    MalformedKey,
    #[error("unknown verifier algorithm")]
    UnknownAlgorithm,
    #[error("invalid verifier hash")]
    KeyHashMismatch,
    #[error("malformed note")]
    Malformed,
    #[error("ambiguous key {name}+{hash:08x}")]
    AmbiguousKey { name: String, hash: u32 },
    #[error("invalid signature for key {name}+{hash:08x}")]
    InvalidSignature { name: String, hash: u32 },
    #[error("note has no verifiable signatures")]
    Unverified,
    #[error("malformed tree note")]
    MalformedTree,
    #[error("malformed record data")]
    MalformedRecord,
}

/// A parsed verifier key: `<name>+<hex8 key hash>+<base64(0x01 || Ed25519 public key)>`.
#[derive(Clone)]
pub struct VerifierKey {
    name: String,
    hash: u32,
    key: VerifyingKey,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({}+{:08x})", self.name, self.hash)
    }
}

/// `BE32(SHA-256(name || "\n" || key)[0..4])`, where `key` includes the algorithm byte.
fn key_hash(name: &str, key: &[u8]) -> u32 {
    let sum = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n")
        .chain_update(key)
        .finalize();
    u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]])
}

/// Names are non-empty, without white space or `+`.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_whitespace) && !name.contains('+')
}

impl VerifierKey {
    pub fn parse(vkey: &str) -> Result<VerifierKey, NoteError> {
        let (name, rest) = vkey.split_once('+').unwrap_or((vkey, ""));
        let (hash16, key64) = rest.split_once('+').unwrap_or((rest, ""));
        if hash16.len() != 8
            || !hash16.bytes().all(|b| b.is_ascii_hexdigit())
            || !is_valid_name(name)
        {
            return Err(NoteError::MalformedKey);
        }
        let hash = u32::from_str_radix(hash16, 16).map_err(|_| NoteError::MalformedKey)?;
        let key = STANDARD
            .decode(key64)
            .map_err(|_| NoteError::MalformedKey)?;
        let Some((&alg, raw)) = key.split_first() else {
            return Err(NoteError::MalformedKey);
        };
        if hash != key_hash(name, &key) {
            return Err(NoteError::KeyHashMismatch);
        }
        if alg != ALG_ED25519 {
            return Err(NoteError::UnknownAlgorithm);
        }
        let raw: &[u8; 32] = raw.try_into().map_err(|_| NoteError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(raw).map_err(|_| NoteError::MalformedKey)?;
        Ok(VerifierKey {
            name: name.to_string(),
            hash,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_hash(&self) -> u32 {
        self.hash
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        self.key
            .verify(msg, &Ed25519Signature::from_bytes(&sig))
            .is_ok()
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VerifierKey::parse(s)
    }
}

/// A signature that verified against a known key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub hash: u32,
}

/// A note whose text carries at least one valid signature by a known key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The signed text, ending in `\n`.
    pub text: String,
    pub sigs: Vec<Signature>,
}

/// Verifies a signed note against `known` keys, following `note.Open`:
/// 1. The message is UTF-8 without control characters other than `\n`.
/// 2. Text and signatures split at the last `\n\n`; the text keeps its final `\n`.
/// 3. Each signature line is `— <name> <base64(keyhash[4] || sig)>`; at most 100 lines.
/// 4. Signatures by unknown keys are ignored; a known key with a bad signature is an error;
///    at least one known key must have signed.
pub fn verify(msg: &[u8], known: &[VerifierKey]) -> Result<VerifiedNote, NoteError> {
    let msg = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed)?;
    if msg.chars().any(|c| c < '\u{20}' && c != '\n') {
        return Err(NoteError::Malformed);
    }
    let split = msg.rfind("\n\n").ok_or(NoteError::Malformed)?;
    let text = &msg[..split + 1];
    let sigs = &msg[split + 2..];

    let mut verified: Vec<Signature> = Vec::new();
    let sigs = sigs.strip_suffix('\n').ok_or(NoteError::Malformed)?;
    for (i, line) in sigs.split('\n').enumerate() {
        let line = line.strip_prefix("— ").ok_or(NoteError::Malformed)?;
        let (name, b64) = line.split_once(' ').unwrap_or((line, ""));
        let sig = STANDARD.decode(b64).map_err(|_| NoteError::Malformed)?;
        if !is_valid_name(name) || b64.is_empty() || sig.len() < 5 {
            return Err(NoteError::Malformed);
        }
        if i >= MAX_SIGNATURES {
            return Err(NoteError::Malformed);
        }
        let (hash, sig) = sig.split_at(4);
        let hash = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);

        let mut matching = known.iter().filter(|k| k.name == name && k.hash == hash);
        let Some(key) = matching.next() else {
            continue;
        };
        if matching.next().is_some() {
            return Err(NoteError::AmbiguousKey {
                name: name.to_string(),
                hash,
            });
        }
        if verified.iter().any(|s| s.name == name && s.hash == hash) {
            continue;
        }
        if !key.verify(text.as_bytes(), sig) {
            return Err(NoteError::InvalidSignature {
                name: name.to_string(),
                hash,
            });
        }
        verified.push(Signature {
            name: name.to_string(),
            hash,
        });
    }
    if verified.is_empty() {
        return Err(NoteError::Unverified);
    }
    Ok(VerifiedNote {
        text: text.to_string(),
        sigs: verified,
    })
}

/// Parses a tree-head text: `go.sum database tree\n<N>\n<base64 root>\n`, extra lines allowed.
pub fn parse_tree(text: &str) -> Result<Tree, NoteError> {
    let rest = text
        .strip_prefix("go.sum database tree\n")
        .ok_or(NoteError::MalformedTree)?;
    if text.len() > MAX_TREE_TEXT {
        return Err(NoteError::MalformedTree);
    }
    let mut lines = rest.splitn(3, '\n');
    let (Some(n_str), Some(hash), Some(_)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(NoteError::MalformedTree);
    };
    // Canonical decimal (no sign, no leading zeros) within int64, as in Go.
    let n: u64 = n_str.parse().map_err(|_| NoteError::MalformedTree)?;
    if n > i64::MAX as u64 || n_str != n.to_string() {
        return Err(NoteError::MalformedTree);
    }
    let hash = parse_hash(hash).ok_or(NoteError::MalformedTree)?;
    Ok(Tree { n, hash })
}

/// Formats a tree head as the server signs it.
pub fn format_tree(tree: &Tree) -> String {
    format!(
        "go.sum database tree\n{}\n{}\n",
        tree.n,
        STANDARD.encode(tree.hash)
    )
}

/// Decodes a standard-base64 32-byte hash.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let v = STANDARD.decode(s).ok()?;
    if v.len() != HASH_SIZE {
        return None;
    }
    Hash::try_from(v.as_slice()).ok()
}

/// A lookup response split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub id: u64,
    /// The record text, ending in `\n` (the leaf data of the log).
    pub text: &'a [u8],
    /// The signed tree head that follows.
    pub note: &'a [u8],
}

/// Splits a `/lookup/` response: `<id>\n<record text>\n<signed tree note>` (`tlog.ParseRecord`).
pub fn parse_record(msg: &[u8]) -> Result<Record<'_>, NoteError> {
    let nl = msg
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(NoteError::MalformedRecord)?;
    // Go's strconv.ParseInt: optional sign, decimal digits.
    let id = std::str::from_utf8(&msg[..nl])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(NoteError::MalformedRecord)?;
    let id = u64::try_from(id).map_err(|_| NoteError::MalformedRecord)?;
    let rest = &msg[nl + 1..];
    let end = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or(NoteError::MalformedRecord)?;
    let (text, note) = (&rest[..end + 1], &rest[end + 2..]);
    if !is_valid_record_text(text) {
        return Err(NoteError::MalformedRecord);
    }
    Ok(Record { id, text, note })
}

/// Record text: UTF-8, no control characters other than `\n`, no blank lines, ends in `\n`.
fn is_valid_record_text(text: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(text) else {
        return false;
    };
    s.ends_with('\n') && !s.contains("\n\n") && !s.chars().any(|c| c < '\u{20}' && c != '\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    const FIXTURE: &str = include_str!("../../../tests/fixtures/sumdb/note.json");

    fn fixture(field: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        v[field].as_str().unwrap().to_string()
    }

    fn key(field: &str) -> VerifierKey {
        VerifierKey::parse(&fixture(field)).unwrap()
    }

    #[test]
    fn sum_golang_org_key_parses_and_its_hash_checks() {
        let k = VerifierKey::parse(super::super::SUM_GOLANG_ORG_KEY).unwrap();
        assert_eq!(k.name(), "sum.golang.org");
        assert_eq!(k.key_hash(), 0x033de0ae);
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let good = super::super::SUM_GOLANG_ORG_KEY;
        assert_eq!(
            VerifierKey::parse(&good.replace("033de0ae", "033de0af")).unwrap_err(),
            NoteError::KeyHashMismatch
        );
        assert_eq!(
            VerifierKey::parse(&good.replace("sum.golang.org", "sum.golang.com")).unwrap_err(),
            NoteError::KeyHashMismatch
        );
        for bad in [
            "",
            "sum.golang.org",
            "sum.golang.org+033de0ae",
            "sum.golang.org+33de0ae+AQ==",
            "a b+00000000+AQ==",
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad:?}");
        }
        // A two-byte key with a matching hash is still malformed.
        let short = STANDARD.encode([1u8, 2]);
        let vkey = format!("x+{:08x}+{short}", key_hash("x", &[1, 2]));
        assert_eq!(
            VerifierKey::parse(&vkey).unwrap_err(),
            NoteError::MalformedKey
        );
        let alg2 = STANDARD.encode([2u8; 33]);
        let vkey = format!("x+{:08x}+{alg2}", key_hash("x", &[2; 33]));
        assert_eq!(
            VerifierKey::parse(&vkey).unwrap_err(),
            NoteError::UnknownAlgorithm
        );
    }

    #[test]
    fn note_signed_by_the_go_implementation_verifies() {
        let n = verify(fixture("signed").as_bytes(), &[key("vkey")]).unwrap();
        assert_eq!(n.text, fixture("text"));
        assert_eq!(
            n.sigs,
            vec![Signature {
                name: "example.com/sumdb".into(),
                hash: 0x692fe4e0
            }]
        );
    }

    #[test]
    fn signatures_by_unknown_keys_are_ignored() {
        let n = verify(fixture("two_signed").as_bytes(), &[key("vkey")]).unwrap();
        assert_eq!(n.sigs.len(), 1);
        let both = verify(
            fixture("two_signed").as_bytes(),
            &[key("vkey"), key("other_vkey")],
        )
        .unwrap();
        assert_eq!(both.sigs.len(), 2);
        assert_eq!(
            verify(fixture("signed").as_bytes(), &[key("other_vkey")]),
            Err(NoteError::Unverified)
        );
    }

    #[test]
    fn tampered_text_or_signature_is_rejected() {
        let signed = fixture("signed");
        let text = signed.replace("second line", "second_line");
        assert!(matches!(
            verify(text.as_bytes(), &[key("vkey")]),
            Err(NoteError::InvalidSignature { .. })
        ));
        // Flip one bit of the Ed25519 signature, keeping the key hash.
        let (head, b64) = signed.trim_end().rsplit_once(' ').unwrap();
        let mut sig = STANDARD.decode(b64).unwrap();
        sig[10] ^= 1;
        let bad = format!("{head} {}\n", STANDARD.encode(&sig));
        assert!(matches!(
            verify(bad.as_bytes(), &[key("vkey")]),
            Err(NoteError::InvalidSignature { .. })
        ));
        // A known key whose signature is too short to be Ed25519.
        let bad = format!("{head} {}\n", STANDARD.encode(&sig[..10]));
        assert!(matches!(
            verify(bad.as_bytes(), &[key("vkey")]),
            Err(NoteError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn hand_built_note_with_a_fresh_key_verifies() {
        let sk = SigningKey::from_bytes(&[42; 32]);
        let mut pubkey = vec![ALG_ED25519];
        pubkey.extend_from_slice(sk.verifying_key().as_bytes());
        let hash = key_hash("test.example", &pubkey);
        let vkey = format!("test.example+{hash:08x}+{}", STANDARD.encode(&pubkey));
        let text = "go.sum database tree\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let mut sig = hash.to_be_bytes().to_vec();
        sig.extend_from_slice(&sk.sign(text.as_bytes()).to_bytes());
        let msg = format!("{text}\n— test.example {}\n", STANDARD.encode(&sig));
        let n = verify(msg.as_bytes(), &[VerifierKey::parse(&vkey).unwrap()]).unwrap();
        assert_eq!(
            parse_tree(&n.text),
            Ok(Tree {
                n: 5,
                hash: [0; 32]
            })
        );
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let signed = fixture("signed");
        let k = [key("vkey")];
        let sig_line = signed.rsplit_once("\n\n").unwrap().1;
        for bad in [
            signed.trim_end().to_string(),                  // no final newline
            signed.replace('\n', "\r\n"),                   // control character
            signed.replace("— ", "-- "),                    // not an em dash
            fixture("text"),                                // no signatures
            format!("{}\n\n", fixture("text").trim_end()),  // empty signature block
            signed.replace("aS/k4MMq8J+", "aS/k4MMq8J+=="), // bad base64
            format!(
                "{}\n\n— example.com/sumdb AAAA\n",
                fixture("text").trim_end()
            ), // sig < 5 bytes
            format!("{}{}", signed, "— x\n"),               // no signature field
        ] {
            assert!(verify(bad.as_bytes(), &k).is_err(), "{bad:?}");
        }
        assert_eq!(verify(b"\xff\n\n", &k), Err(NoteError::Malformed));
        // 101 signature lines, even if all by unknown keys plus one good one.
        let unknown = "— nobody AAAAAAAAAA==\n".repeat(100);
        let many = format!("{}{unknown}", signed);
        assert_eq!(verify(many.as_bytes(), &k), Err(NoteError::Malformed));
        let ok = format!("{}{}", signed, "— nobody AAAAAAAAAA==\n".repeat(99));
        assert!(verify(ok.as_bytes(), &k).is_ok());
        assert!(!sig_line.is_empty());
    }

    #[test]
    fn duplicate_known_keys_are_ambiguous() {
        assert!(matches!(
            verify(fixture("signed").as_bytes(), &[key("vkey"), key("vkey")]),
            Err(NoteError::AmbiguousKey { .. })
        ));
    }

    #[test]
    fn tree_heads_parse_like_the_go_implementation() {
        let h = "HHKAHTisddptIwmN/TxVlY1NW0oH4rXSYQk1bQd7NtA=";
        let tree = parse_tree(&format!("go.sum database tree\n300\n{h}\n")).unwrap();
        assert_eq!(tree.n, 300);
        assert_eq!(
            format_tree(&tree),
            format!("go.sum database tree\n300\n{h}\n")
        );
        assert!(parse_tree(&format!("go.sum database tree\n300\n{h}\nextra\n")).is_ok());
        for bad in [
            format!("go.sum database tree\n0300\n{h}\n"),
            format!("go.sum database tree\n+300\n{h}\n"),
            format!("go.sum database tree\n-1\n{h}\n"),
            format!("go.sum database tree\n300\n{h}"),
            "go.sum database tree\n300\nAAAA\n".to_string(),
            format!("go.sum database tree\n9223372036854775808\n{h}\n"),
            format!("go.sum database trees\n300\n{h}\n"),
        ] {
            assert_eq!(parse_tree(&bad), Err(NoteError::MalformedTree), "{bad:?}");
        }
    }

    #[test]
    fn lookup_records_split_like_the_go_implementation() {
        let msg = b"42\nexample.com/m v1.0.0 h1:x\nexample.com/m v1.0.0/go.mod h1:y\n\nnote\n";
        let r = parse_record(msg).unwrap();
        assert_eq!(r.id, 42);
        assert_eq!(
            r.text,
            b"example.com/m v1.0.0 h1:x\nexample.com/m v1.0.0/go.mod h1:y\n"
        );
        assert_eq!(r.note, b"note\n");
        for bad in [
            &b"x\nrec\n\nnote"[..],
            b"-1\nrec\n\n",
            b"1\nrec\n",
            b"1",
            b"1\nre\x01c\n\n",
        ] {
            assert_eq!(
                parse_record(bad),
                Err(NoteError::MalformedRecord),
                "{bad:?}"
            );
        }
    }
}

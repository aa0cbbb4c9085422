//! A checksum database made here, for tests that need proofs of real files: the records of the
//! given module versions (and one filler, so a proof needs a tile), signed with a fixed test key,
//! served from a `GoFake` as `lookup/...` and `tile/8/0/000.p/<n>`.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest as _, Sha256};
use wharf::goproxy::sumdb::{Tree, note, tlog};

use super::GoFake;

/// A module version's go.sum lines: escaped path for the lookup, path, version, zip, go.mod.
pub struct SumRecord<'a> {
    pub escaped: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub zip: &'a [u8],
    pub go_mod: &'a str,
}

/// Puts the database on `db` under the name `name`; returns its verifier key.
pub fn serve_sumdb(db: &GoFake, name: &str, records: &[SumRecord<'_>]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let mut public = vec![1u8];
    public.extend_from_slice(key.verifying_key().as_bytes());
    let key_hash: [u8; 4] = Sha256::digest([name.as_bytes(), b"\n", &public].concat())[..4]
        .try_into()
        .unwrap();
    let vkey = format!("{name}+{}+{}", hex::encode(key_hash), b64.encode(&public));
    let mut texts: Vec<String> = records
        .iter()
        .map(|r| {
            let zip_h1 = wharf::goproxy::hash::h1_of_zip(r.zip).unwrap();
            let mod_h1 = wharf::goproxy::hash::h1_of_gomod(r.go_mod.as_bytes());
            format!(
                "{p} {v} {zip_h1}\n{p} {v}/go.mod {mod_h1}\n",
                p = r.path,
                v = r.version
            )
        })
        .collect();
    texts.push(
        "example.com/filler v1.0.0/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".into(),
    );
    let leaves: Vec<[u8; 32]> = texts
        .iter()
        .map(|t| tlog::record_hash(t.as_bytes()))
        .collect();
    // Two or three leaves: the root from the level-0 hashes (no stored level-1 tile needed).
    let root = match leaves.len() {
        2 => tlog::node_hash(&leaves[0], &leaves[1]),
        3 => tlog::node_hash(&tlog::node_hash(&leaves[0], &leaves[1]), &leaves[2]),
        n => panic!("serve_sumdb takes one or two records, not {}", n - 1),
    };
    let n = leaves.len() as u64;
    let text = note::format_tree(&Tree { n, hash: root });
    let sig = key.sign(text.as_bytes());
    let signed = format!(
        "{text}\n\u{2014} {name} {}\n",
        b64.encode([&key_hash[..], &sig.to_bytes()[..]].concat())
    );
    db.put(&format!("tile/8/0/000.p/{n}"), leaves.concat());
    for (i, r) in records.iter().enumerate() {
        db.put(
            &format!("lookup/{}@{}", r.escaped, r.version),
            format!("{i}\n{}\n{signed}", texts[i]),
        );
    }
    vkey
}

//! The checksum-database client algorithm (golang.org/x/mod/sumdb/client.go `Lookup`): fetch a
//! lookup record, verify the signed tree head, check it is consistent with the last trusted
//! head, prove the record is in the tree through authenticated tiles, and return its hashes.
//!
//! Owns no I/O: lookups and tiles come from a `SumdbSource` (the caller's HTTP client and
//! cache), and the trusted head is returned for the caller to persist. Only tiles proven part
//! of the log are handed back for caching (`SumdbSource::authenticated_tile`).

use std::collections::HashMap;
use std::future::Future;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};

use super::note::{self, NoteError, VerifierKey};
use super::tlog::{self, Hash, MAX_TREE_SIZE, TILE_HEIGHT, Tile, TilePlan, TlogError, Tree};

/// Why a `SumdbSource` could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Failed(String),
}

/// Where lookups and tiles come from: the database (directly or through a proxy) and any cache
/// in front of it. Paths are relative to the database base URL.
pub trait SumdbSource: Send + Sync {
    /// `GET <db>/lookup/<escaped module>@<escaped version>`.
    fn lookup(
        &self,
        escaped_module_at_version: &str,
    ) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;

    /// `GET <db>/<path>`, where `path` is like `tile/8/0/x001/234.p/5`.
    fn tile(&self, path: &str) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;

    /// Called for each tile the verifier has authenticated against a signed head; only such
    /// tiles may be cached. The default keeps nothing.
    fn authenticated_tile(&self, _path: &str, _data: &[u8]) {}
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: SourceError,
    },
    #[error("malformed lookup response: {0}")]
    Record(#[source] NoteError),
    #[error("reading tree note: {0}")]
    Note(#[source] NoteError),
    #[error("{0}")]
    Tlog(#[from] TlogError),
    /// Two signed heads that cannot both be true: the database (or someone in between) is
    /// showing different histories to different clients.
    #[error(
        "SECURITY ERROR\ngo.sum database server misbehavior detected!\n\nold database:\n\t{}\nnew database:\n\t{}",
        indent(.older), indent(.newer)
    )]
    Fork { older: String, newer: String },
    #[error("cannot validate record {id} in tree of size {n}")]
    RecordNotInTree { id: u64, n: u64 },
    #[error("cannot authenticate record data in server response")]
    RecordMismatch,
    #[error("checksum database record {id} has no hashes for {module} {version}")]
    NotInRecord {
        id: u64,
        module: String,
        version: String,
    },
}

fn indent(s: &str) -> String {
    s.trim_end().replace('\n', "\n\t")
}

/// The last verified tree head of one database. Persist it after every lookup and pass it to
/// the next, so that the database can never roll back or fork unnoticed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedTree {
    pub n: u64,
    #[serde(with = "b64_hash")]
    pub hash: [u8; 32],
    /// The signed note this head came from (UTF-8, as verified).
    #[serde(with = "utf8_bytes")]
    pub note: Vec<u8>,
}

impl TrustedTree {
    fn tree(&self) -> Tree {
        Tree {
            n: self.n,
            hash: self.hash,
        }
    }

    fn note_text(&self) -> String {
        String::from_utf8_lossy(&self.note).into_owned()
    }
}

/// What a lookup proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupResult {
    /// `h1:` of the module zip, from the `<module> <version> h1:...` line.
    pub zip_hash: Option<String>,
    /// `h1:` of the go.mod, from the `<module> <version>/go.mod h1:...` line.
    pub mod_hash: Option<String>,
    /// The record's position in the log.
    pub id: u64,
    /// The lookup response exactly as received; verified, so it may be cached and served.
    pub response: Vec<u8>,
    /// The head to trust from now on (the newer of the known and the received one).
    pub tree: TrustedTree,
}

/// A checksum-database client for one database, identified by its verifier key.
#[derive(Clone, Debug)]
pub struct Verifier {
    name: String,
    keys: Vec<VerifierKey>,
}

impl Verifier {
    /// `vkey` is a verifier key such as `super::SUM_GOLANG_ORG_KEY`.
    pub fn new(vkey: &str) -> Result<Verifier, NoteError> {
        let key = VerifierKey::parse(vkey)?;
        Ok(Verifier {
            name: key.name().to_string(),
            keys: vec![key],
        })
    }

    /// The database name (`sum.golang.org`), as in `/sumdb/<name>/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a signed tree head (for instance a go client's `$GOPATH/pkg/sumdb/<name>/latest`
    /// used as a seed) and returns it as a trusted tree.
    pub fn trusted_tree(&self, signed_note: &[u8]) -> Result<TrustedTree, VerifyError> {
        let verified = note::verify(signed_note, &self.keys).map_err(VerifyError::Note)?;
        let tree = note::parse_tree(&verified.text).map_err(VerifyError::Note)?;
        if tree.n > MAX_TREE_SIZE {
            return Err(TlogError::TreeTooLarge(tree.n).into());
        }
        Ok(TrustedTree {
            n: tree.n,
            hash: tree.hash,
            note: signed_note.to_vec(),
        })
    }

    /// Looks up `module@version`, verifies the signed head, merges it with `known` (the last
    /// trusted tree, persisted by the caller), proves inclusion via tiles, and returns the zip
    /// and go.mod hashes with the new trusted tree.
    pub async fn lookup(
        &self,
        src: &impl SumdbSource,
        module: &str,
        version: &str,
        known: Option<&TrustedTree>,
    ) -> Result<LookupResult, VerifyError> {
        let version = version.strip_suffix("/go.mod").unwrap_or(version);
        let key = format!("{}@{}", escape(module), escape(version));
        let response = src
            .lookup(&key)
            .await
            .map_err(|source| VerifyError::Source {
                path: format!("lookup/{key}"),
                source,
            })?;

        let record = note::parse_record(&response).map_err(VerifyError::Record)?;
        let received = self.trusted_tree(record.note)?;
        let mut tiles = TileCache::default();
        let latest = self.merge(src, &mut tiles, known, received).await?;

        // Inclusion: the leaf at the record's id must be the hash of the record text.
        if record.id >= latest.n {
            return Err(VerifyError::RecordNotInTree {
                id: record.id,
                n: latest.n,
            });
        }
        let leaf = read_hashes(
            src,
            &mut tiles,
            latest.tree(),
            &[tlog::stored_hash_index(0, record.id)],
        )
        .await?;
        if leaf.first() != Some(&tlog::record_hash(record.text)) {
            return Err(VerifyError::RecordMismatch);
        }

        let text = String::from_utf8_lossy(record.text);
        let zip_hash = find_hash(&text, &format!("{module} {version} "));
        let mod_hash = find_hash(&text, &format!("{module} {version}/go.mod "));
        if zip_hash.is_none() && mod_hash.is_none() {
            return Err(VerifyError::NotInRecord {
                id: record.id,
                module: module.to_string(),
                version: version.to_string(),
            });
        }
        let id = record.id;
        Ok(LookupResult {
            zip_hash,
            mod_hash,
            id,
            response,
            tree: latest,
        })
    }

    /// `mergeLatest`: the smaller of the two heads must be a prefix of the larger, checked by
    /// recomputing the smaller root from tiles authenticated against the larger. Returns the
    /// larger head.
    async fn merge(
        &self,
        src: &impl SumdbSource,
        tiles: &mut TileCache,
        known: Option<&TrustedTree>,
        received: TrustedTree,
    ) -> Result<TrustedTree, VerifyError> {
        let Some(known) = known.filter(|k| k.n > 0) else {
            return Ok(received);
        };
        let (older, newer) = if received.n <= known.n {
            (&received, known)
        } else {
            (known, &received)
        };
        let consistent = if older.n == newer.n {
            older.hash == newer.hash
        } else {
            let indexes = tlog::tree_hash_indexes(older.n);
            let hashes = read_hashes(src, tiles, newer.tree(), &indexes).await?;
            tlog::tree_hash_from(older.n, &hashes)? == older.hash
        };
        if !consistent {
            return Err(VerifyError::Fork {
                older: older.note_text(),
                newer: newer.note_text(),
            });
        }
        Ok(newer.clone())
    }
}

/// The hash on the first line starting with `prefix`, if it is an `h1:` hash.
fn find_hash(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .find(|h| h.starts_with("h1:") && !h.contains(' '))
        .map(str::to_string)
}

/// The go command's case encoding (`module.EscapePath`/`EscapeVersion`): `A` → `!a`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Tile data fetched during one lookup, so the consistency and inclusion checks share fetches.
/// Holds raw data: every read re-authenticates what it uses.
#[derive(Default)]
struct TileCache(HashMap<Tile, Vec<u8>>);

/// Reads stored hashes of `tree` through tiles, authenticating every tile (`tileHashReader`).
async fn read_hashes(
    src: &impl SumdbSource,
    cache: &mut TileCache,
    tree: Tree,
    indexes: &[u64],
) -> Result<Vec<Hash>, VerifyError> {
    let plan = TilePlan::new(tree, TILE_HEIGHT, indexes)?;
    let missing: Vec<Tile> = plan
        .tiles()
        .iter()
        .filter(|t| !cache.0.contains_key(t))
        .copied()
        .collect();
    let fetched = try_join_all(missing.iter().map(|t| fetch_tile(src, *t))).await?;
    cache.0.extend(missing.into_iter().zip(fetched));
    let data: Vec<Vec<u8>> = plan
        .tiles()
        .iter()
        .map(|t| cache.0.get(t).cloned().unwrap_or_default())
        .collect();
    let hashes = plan.verify(&data)?;
    for (t, d) in plan.tiles().iter().zip(&data) {
        src.authenticated_tile(&t.path(), d);
    }
    Ok(hashes)
}

/// Fetches a tile; a partial tile that cannot be had is cut from the full one, as Go does.
async fn fetch_tile(src: &impl SumdbSource, t: Tile) -> Result<Vec<u8>, VerifyError> {
    let path = t.path();
    let err = match src.tile(&path).await {
        Ok(data) => return Ok(data),
        Err(e) => e,
    };
    let full = Tile { w: 1 << t.h, ..t };
    if full == t {
        return Err(VerifyError::Source { path, source: err });
    }
    match src.tile(&full.path()).await {
        Ok(mut data) => {
            let want = t.w as usize * tlog::HASH_SIZE;
            if data.len() >= want {
                data.truncate(want);
            }
            Ok(data)
        }
        Err(_) => Err(VerifyError::Source { path, source: err }),
    }
}

mod b64_hash {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        note::parse_hash(&s).ok_or_else(|| D::Error::custom("expected a base64 SHA-256 hash"))
    }
}

mod utf8_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(b).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d)
            .map(String::into_bytes)
            .map_err(|e| D::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/sumdb/tree.json");

    #[derive(Deserialize)]
    struct Fixture {
        vkey: String,
        tiles: HashMap<String, String>,
        heads: HashMap<String, Head>,
        lookups: HashMap<String, String>,
        modules: Vec<Module>,
    }

    #[derive(Deserialize)]
    struct Head {
        n: u64,
        hash: String,
        note: String,
    }

    #[derive(Deserialize, Clone)]
    struct Module {
        id: u64,
        path: String,
        version: String,
        zip_hash: String,
        mod_hash: String,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(FIXTURE).unwrap()
    }

    /// A database frozen at one tree size, serving the fixture's tiles and lookups.
    struct MemDb {
        tiles: HashMap<String, Vec<u8>>,
        lookups: HashMap<String, Vec<u8>>,
        saved: Mutex<Vec<String>>,
    }

    impl MemDb {
        fn at(f: &Fixture, size: u64) -> MemDb {
            let prefix = format!("{size} ");
            MemDb {
                tiles: f
                    .tiles
                    .iter()
                    .map(|(p, d)| (p.clone(), STANDARD.decode(d).unwrap()))
                    .collect(),
                lookups: f
                    .lookups
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.strip_prefix(&prefix)?.to_string(), v.clone().into_bytes()))
                    })
                    .collect(),
                saved: Mutex::new(Vec::new()),
            }
        }
    }

    impl SumdbSource for MemDb {
        async fn lookup(&self, key: &str) -> Result<Vec<u8>, SourceError> {
            self.lookups.get(key).cloned().ok_or(SourceError::NotFound)
        }

        async fn tile(&self, path: &str) -> Result<Vec<u8>, SourceError> {
            self.tiles.get(path).cloned().ok_or(SourceError::NotFound)
        }

        fn authenticated_tile(&self, path: &str, _data: &[u8]) {
            self.saved.lock().unwrap().push(path.to_string());
        }
    }

    fn module(f: &Fixture, id: u64) -> Module {
        f.modules.iter().find(|m| m.id == id).cloned().unwrap()
    }

    fn verifier(f: &Fixture) -> Verifier {
        Verifier::new(&f.vkey).unwrap()
    }

    async fn lookup(
        db: &MemDb,
        f: &Fixture,
        id: u64,
        known: Option<&TrustedTree>,
    ) -> Result<LookupResult, VerifyError> {
        let m = module(f, id);
        verifier(f).lookup(db, &m.path, &m.version, known).await
    }

    #[tokio::test]
    async fn every_fixture_record_verifies_against_a_fresh_head() {
        let f = fixture();
        let db = MemDb::at(&f, 300);
        let head = &f.heads["300"];
        for m in &f.modules {
            let r = verifier(&f)
                .lookup(&db, &m.path, &m.version, None)
                .await
                .unwrap();
            assert_eq!(
                r.zip_hash.as_deref(),
                Some(m.zip_hash.as_str()),
                "{}",
                m.path
            );
            assert_eq!(r.mod_hash.as_deref(), Some(m.mod_hash.as_str()));
            assert_eq!(r.id, m.id);
            assert_eq!(r.tree.n, head.n);
            assert_eq!(STANDARD.encode(r.tree.hash), head.hash);
            assert_eq!(r.tree.note, head.note.as_bytes());
        }
        let saved = db.saved.lock().unwrap();
        assert!(saved.contains(&"tile/8/0/000".to_string()), "{saved:?}");
        assert!(saved.contains(&"tile/8/1/000.p/1".to_string()), "{saved:?}");
    }

    #[tokio::test]
    async fn growing_tree_is_checked_against_the_persisted_head() {
        let f = fixture();
        let at200 = lookup(&MemDb::at(&f, 200), &f, 5, None).await.unwrap();
        assert_eq!(at200.tree.n, 200);
        // Through JSON, as a caller would persist it.
        let persisted: TrustedTree =
            serde_json::from_str(&serde_json::to_string(&at200.tree).unwrap()).unwrap();
        assert_eq!(persisted, at200.tree);
        let at300 = lookup(&MemDb::at(&f, 300), &f, 250, Some(&persisted))
            .await
            .unwrap();
        assert_eq!(at300.tree.n, 300);
    }

    #[tokio::test]
    async fn older_head_from_a_lagging_server_keeps_the_newer_one() {
        let f = fixture();
        let at300 = lookup(&MemDb::at(&f, 300), &f, 5, None).await.unwrap();
        let again = lookup(&MemDb::at(&f, 200), &f, 199, Some(&at300.tree))
            .await
            .unwrap();
        assert_eq!(again.tree, at300.tree);
        let same = lookup(&MemDb::at(&f, 300), &f, 299, Some(&at300.tree))
            .await
            .unwrap();
        assert_eq!(same.tree, at300.tree);
    }

    #[tokio::test]
    async fn partial_tile_missing_upstream_is_cut_from_the_full_tile() {
        let f = fixture();
        let mut db = MemDb::at(&f, 200);
        db.tiles.remove("tile/8/0/000.p/200");
        let r = lookup(&db, &f, 199, None).await.unwrap();
        assert_eq!(r.tree.n, 200);
        assert!(
            db.saved
                .lock()
                .unwrap()
                .contains(&"tile/8/0/000.p/200".to_string())
        );
    }

    #[tokio::test]
    async fn upper_case_module_paths_are_escaped_in_the_lookup() {
        let f = fixture();
        let r = lookup(&MemDb::at(&f, 300), &f, 7, None).await.unwrap();
        assert_eq!(
            escape("github.com/Azure/azure-sdk@v1.0.0-RC1"),
            "github.com/!azure/azure-sdk@v1.0.0-!r!c1"
        );
        assert_eq!(r.id, 7);
    }

    #[tokio::test]
    async fn tampered_record_is_rejected() {
        let f = fixture();
        let mut db = MemDb::at(&f, 300);
        let m = module(&f, 5);
        let key = "example.com/mod5@v1.5.0";
        let body = String::from_utf8(db.lookups[key].clone()).unwrap();
        let evil = body.replace(
            &m.zip_hash,
            "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        assert_ne!(body, evil);
        db.lookups.insert(key.into(), evil.into_bytes());
        let err = lookup(&db, &f, 5, None).await.unwrap_err();
        assert!(matches!(err, VerifyError::RecordMismatch), "{err}");
    }

    #[tokio::test]
    async fn tampered_tiles_are_rejected_and_not_cached() {
        let f = fixture();
        for (tile, id) in [
            ("tile/8/0/000", 250),
            ("tile/8/0/001.p/44", 299),
            ("tile/8/1/000.p/1", 5),
        ] {
            let mut db = MemDb::at(&f, 300);
            let data = db.tiles.get_mut(tile).unwrap();
            let off = if tile == "tile/8/0/000" { 250 * 32 } else { 3 };
            data[off] ^= 0x80;
            let err = lookup(&db, &f, id, None).await.unwrap_err();
            assert!(
                matches!(err, VerifyError::Tlog(TlogError::InconsistentTile)),
                "{tile}: {err}"
            );
            assert!(db.saved.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn truncated_tile_is_rejected() {
        let f = fixture();
        let mut db = MemDb::at(&f, 300);
        db.tiles.get_mut("tile/8/0/001.p/44").unwrap().pop();
        let err = lookup(&db, &f, 299, None).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::Tlog(TlogError::TileSize { .. })),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_signature_is_rejected() {
        let f = fixture();
        let mut db = MemDb::at(&f, 300);
        let key = "example.com/mod5@v1.5.0";
        let body = String::from_utf8(db.lookups[key].clone()).unwrap();
        // Change one base64 character inside the Ed25519 signature (not the key hash).
        let (head, sig) = body.trim_end().rsplit_once(' ').unwrap();
        let mut sig = sig.to_string();
        let c = if sig.as_bytes()[20] == b'A' { "B" } else { "A" };
        sig.replace_range(20..21, c);
        db.lookups
            .insert(key.into(), format!("{head} {sig}\n").into_bytes());
        let err = lookup(&db, &f, 5, None).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::Note(NoteError::InvalidSignature { .. })),
            "{err}"
        );
    }

    #[tokio::test]
    async fn head_signed_by_another_key_is_rejected() {
        let f = fixture();
        let db = MemDb::at(&f, 300);
        let other = Verifier::new(super::super::SUM_GOLANG_ORG_KEY).unwrap();
        let m = module(&f, 5);
        let err = other
            .lookup(&db, &m.path, &m.version, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::Note(NoteError::Unverified)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn server_forking_from_the_persisted_head_is_detected() {
        let f = fixture();
        let v = verifier(&f);
        // Persisted: a forked head at 200 (same key, different history). Server: the real 300.
        let fork200 = v.trusted_tree(f.heads["fork200"].note.as_bytes()).unwrap();
        let err = lookup(&MemDb::at(&f, 300), &f, 250, Some(&fork200))
            .await
            .unwrap_err();
        let VerifyError::Fork { older, newer } = &err else {
            panic!("want a fork, got {err}");
        };
        assert_eq!(older, &f.heads["fork200"].note);
        assert_eq!(newer, &f.heads["300"].note);
        assert!(err.to_string().starts_with("SECURITY ERROR\n"), "{err}");

        // Same size, different root.
        let fork300 = v.trusted_tree(f.heads["fork300"].note.as_bytes()).unwrap();
        let err = lookup(&MemDb::at(&f, 300), &f, 5, Some(&fork300))
            .await
            .unwrap_err();
        assert!(matches!(err, VerifyError::Fork { .. }), "{err}");

        // Persisted: the real 300. Server: an older head from the forked history.
        let real300 = v.trusted_tree(f.heads["300"].note.as_bytes()).unwrap();
        let mut db = MemDb::at(&f, 200);
        let key = "example.com/mod5@v1.5.0";
        let body = String::from_utf8(db.lookups[key].clone()).unwrap();
        let forked = body.replace(&f.heads["200"].note, &f.heads["fork200"].note);
        db.lookups.insert(key.into(), forked.into_bytes());
        db.tiles = MemDb::at(&f, 300).tiles;
        let err = lookup(&db, &f, 5, Some(&real300)).await.unwrap_err();
        assert!(matches!(err, VerifyError::Fork { .. }), "{err}");
    }

    #[tokio::test]
    async fn record_beyond_the_tree_is_rejected() {
        let f = fixture();
        let mut db = MemDb::at(&f, 300);
        let key = "example.com/mod5@v1.5.0";
        let body = String::from_utf8(db.lookups[key].clone()).unwrap();
        let beyond = body.replacen("5\n", "300\n", 1);
        db.lookups.insert(key.into(), beyond.into_bytes());
        let err = lookup(&db, &f, 5, None).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::RecordNotInTree { id: 300, n: 300 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn record_for_another_module_is_rejected() {
        let f = fixture();
        let mut db = MemDb::at(&f, 300);
        let other = db.lookups["example.com/mod5@v1.5.0"].clone();
        db.lookups.insert("example.com/mod0@v1.0.0".into(), other);
        let err = lookup(&db, &f, 0, None).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::NotInRecord { id: 5, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_lookup_and_garbage_are_errors() {
        let f = fixture();
        let mut db = MemDb::at(&f, 300);
        let v = verifier(&f);
        let err = v
            .lookup(&db, "example.com/nope", "v1.0.0", None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Source {
                    source: SourceError::NotFound,
                    ..
                }
            ),
            "{err}"
        );
        db.lookups
            .insert("example.com/mod5@v1.5.0".into(), b"garbage".to_vec());
        let err = lookup(&db, &f, 5, None).await.unwrap_err();
        assert!(matches!(err, VerifyError::Record(_)), "{err}");
    }

    #[test]
    fn lookup_future_is_send_so_it_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let f = fixture();
        let db = MemDb::at(&f, 300);
        let v = verifier(&f);
        assert_send(&v.lookup(&db, "example.com/mod5", "v1.5.0", None));
    }

    #[test]
    fn trusted_tree_json_rejects_bad_hashes() {
        let bad = r#"{"n":1,"hash":"AAAA","note":"x"}"#;
        assert!(serde_json::from_str::<TrustedTree>(bad).is_err());
    }
}

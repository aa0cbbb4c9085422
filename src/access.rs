//! Client access control, off by default: a client address allowlist, HTTP basic auth against
//! argon2 password hashes, static bearer tokens (stored as SHA-256), and rules that require
//! authentication per protocol and path prefix. Refusals are rendered in each protocol's own
//! error format by the middleware in `app`.
//! The `[access]` schema, and the parsing that refuses a bad entry, are `config`'s.
//!
//! Empty or blank passwords and tokens are refused before anything is hashed, whatever the HTTP
//! version: hyper trims the trailing space of an HTTP/1 `Authorization: Bearer ` but passes it
//! through in HTTP/2, where it used to leave an empty token.
//!
//! A password check is argon2, slow on purpose (tens of milliseconds of one CPU), so:
//! 1. a name that is not configured is checked against a decoy hash with a configured user's
//!    parameters, so refusing it costs what refusing a wrong password costs and the answer time
//!    does not tell which names exist;
//! 2. the hashing runs on the blocking pool, never on an event loop (each serves many
//!    connections), at most `hashing_limit` at once; a check that cannot start within
//!    `HASHING_WAIT` is answered 503, so a flood of wrong passwords delays only password checks;
//! 3. a credential that verified is remembered for `REMEMBER_FOR` (Docker sends basic auth with
//!    every request), named by an HMAC under a key drawn at start: the password itself and any
//!    fast unkeyed hash of it are never kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, PasswordHash};
use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

// The `[access]` schema is config's; these paths are kept for code written against them.
pub use crate::config::{AccessConfig, Protocol, RuleConfig, TokenConfig, UserConfig};
use crate::net::{Cidr, Client};

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The client address is not in `access.allow_clients`: 403.
    Address,
    /// No or wrong credentials where they are required: 401 with a challenge.
    Unauthorized(&'static str),
    /// Every password-check slot stayed taken for `HASHING_WAIT`: 503, try again shortly.
    Busy,
}

/// How long a verified password is remembered. Short, so a credential seen once is not kept
/// for the life of the process; long enough that a client pulling an image pays argon2 once.
const REMEMBER_FOR: Duration = Duration::from_secs(5 * 60);

/// Most remembered credentials; past it the oldest is forgotten. Only credentials that verified
/// are remembered, so a client cannot fill this without valid ones.
const MAX_REMEMBERED: usize = 4096;

/// How long a password check waits for a hashing slot before its request is answered 503.
/// A slot is held for one argon2 run, tens of milliseconds, so a wait this long means a flood.
const HASHING_WAIT: Duration = Duration::from_secs(2);

/// The password checks run so far, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordChecks {
    /// argon2 runs, for known and unknown names alike.
    pub hashed: u64,
    /// Checks answered from remembered credentials, without argon2.
    pub remembered: u64,
    /// Checks refused 503 because no hashing slot came free in time.
    pub busy: u64,
    /// The most argon2 runs that were ever running at once.
    pub most_at_once: usize,
    /// How many may run at once.
    pub limit: usize,
}

#[derive(Default)]
struct Counters {
    hashed: AtomicU64,
    remembered: AtomicU64,
    busy: AtomicU64,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Counters {
    fn start(&self) -> Running<'_> {
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        Running(self)
    }
}

/// One argon2 run in progress; ends when dropped.
struct Running<'a>(&'a Counters);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct AccessControl {
    allow_clients: Vec<Cidr>,
    require_auth: bool,
    pub realm: String,
    users: HashMap<String, PasswordHash>,
    /// What a name that is not configured is checked against: the first user's hash with its
    /// output zeroed, so the work is the same and no password matches. `None` without users.
    decoy: Option<PasswordHash>,
    tokens: Vec<[u8; 32]>,
    rules: Vec<RuleConfig>,
    /// Credentials that verified, named by `remember_key`'s HMAC of user and password.
    remembered: Mutex<Remembered>,
    remember_key: [u8; 32],
    /// One permit per argon2 run.
    hashing: Arc<Semaphore>,
    hashing_limit: usize,
    counters: Arc<Counters>,
}

impl AccessControl {
    /// `upstreams` are the registry upstream names and `default` the default one: a registry
    /// rule prefix that does not start with an upstream name is taken to be on the default.
    pub fn new(
        cfg: &AccessConfig,
        upstreams: &[&str],
        default: &str,
    ) -> Result<AccessControl, String> {
        // Every entry is parsed (and refused) by `AccessConfig::parse`, the same function
        // `Config::validate` runs.
        let parsed = cfg.parse()?;
        let decoy = match parsed.users.first() {
            Some((name, hash)) => {
                Some(decoy_of(hash).map_err(|e| format!("access.user {name:?}: {e}"))?)
            }
            None => None,
        };
        let users: HashMap<String, PasswordHash> = parsed.users.into_iter().collect();
        let remember_key = random_key()?;
        let hashing_limit = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .max(1);
        Ok(AccessControl {
            allow_clients: parsed.allow_clients,
            require_auth: cfg.require_auth,
            realm: cfg.realm.clone(),
            users,
            decoy,
            tokens: parsed.tokens,
            rules: cfg
                .rules
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    let first = r.prefix.split('/').next().unwrap_or("");
                    if r.protocol == Protocol::Registry
                        && !r.prefix.is_empty()
                        && !upstreams.contains(&first)
                    {
                        r.prefix = format!("{default}/{}", r.prefix);
                    }
                    r
                })
                .collect(),
            remembered: Mutex::new(Remembered::default()),
            remember_key,
            hashing: Arc::new(Semaphore::new(hashing_limit)),
            hashing_limit,
            counters: Arc::default(),
        })
    }

    /// Whether any check is configured at all (the fast path skips everything otherwise).
    pub fn is_open(&self) -> bool {
        self.allow_clients.is_empty()
            && !self.require_auth
            && self.rules.is_empty()
            && self.users.is_empty()
            && self.tokens.is_empty()
    }

    pub async fn check(
        &self,
        peer: Option<IpAddr>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        self.check_client(peer.map(Client::Ip), path, headers).await
    }

    /// `check` for any kind of client. `allow_clients` is about addresses: a Unix socket's
    /// peer has none, and was admitted by the socket file's mode and group instead, so only
    /// the credential rules apply to it.
    pub async fn check_client(
        &self,
        client: Option<Client>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        if !self.allow_clients.is_empty() && client != Some(Client::Unix) {
            let ok = client
                .and_then(Client::ip)
                .is_some_and(|ip| self.allow_clients.iter().any(|c| c.contains(ip)));
            if !ok {
                return Err(Denied::Address);
            }
        }
        let authenticated = match headers.get(http::header::AUTHORIZATION) {
            None => false,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| Denied::Unauthorized("malformed Authorization header"))?;
                // Credentials that are sent must be right, even where none are required.
                self.authenticate(v).await?
            }
        };
        if authenticated || !self.requires_auth(path) {
            Ok(())
        } else {
            Err(Denied::Unauthorized("authentication required"))
        }
    }

    /// A forward proxy's check of `Proxy-Authorization` (the gateway): the same users, tokens,
    /// argon2 bound and memory as `Authorization`, but credentials are always required.
    pub async fn check_proxy_credentials(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<(), Denied> {
        let Some(v) = header else {
            return Err(Denied::Unauthorized("proxy authentication required"));
        };
        let v = v
            .to_str()
            .map_err(|_| Denied::Unauthorized("malformed Proxy-Authorization header"))?;
        if self.authenticate(v).await? {
            Ok(())
        } else {
            Err(Denied::Unauthorized("proxy authentication required"))
        }
    }

    /// The password checks so far.
    pub fn password_checks(&self) -> PasswordChecks {
        let c = &self.counters;
        PasswordChecks {
            hashed: c.hashed.load(Ordering::Relaxed),
            remembered: c.remembered.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            most_at_once: c.most_running.load(Ordering::SeqCst),
            limit: self.hashing_limit,
        }
    }

    fn requires_auth(&self, path: &str) -> bool {
        if self.require_auth {
            return true;
        }
        let Some((proto, rest)) = Protocol::of_path(path) else {
            return false;
        };
        // The most specific (longest) matching prefix decides.
        self.rules
            .iter()
            .filter(|r| r.protocol == proto && rest.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .is_some_and(|r| r.require_auth)
            // /v2/ itself must challenge when any registry rule needs auth, so `docker login` works.
            || (proto == Protocol::Registry && rest.is_empty() && self.rules.iter().any(|r| r.protocol == proto && r.require_auth))
    }

    /// `Ok(true)` for valid credentials, `Ok(false)` for the anonymous `Basic Og==`.
    async fn authenticate(&self, header: &str) -> Result<bool, Denied> {
        let header = header.trim();
        let (scheme, value) = match header.split_once([' ', '\t']) {
            Some((scheme, value)) => (scheme, value.trim()),
            None => (header, ""),
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if value.is_empty() {
                return Err(Denied::Unauthorized("empty token"));
            }
            let h: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            // Every configured token is compared, so the time does not tell which one matched.
            let matched = self
                .tokens
                .iter()
                .fold(false, |m, t| m | constant_time_eq(t, &h));
            return if matched {
                Ok(true)
            } else {
                Err(Denied::Unauthorized("invalid token"))
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(Denied::Unauthorized(if scheme.is_empty() {
                "malformed Authorization header"
            } else {
                "unsupported authorization scheme"
            }));
        }
        let malformed = Denied::Unauthorized("malformed basic credentials");
        let raw = base64_decode(value).ok_or(malformed.clone())?;
        let text = String::from_utf8(raw).map_err(|_| malformed.clone())?;
        let (user, password) = text.split_once(':').ok_or(malformed)?;
        if user.is_empty() && password.is_empty() {
            // containers/image sends `Basic Og==` (":") once a registry has challenged: that
            // is an anonymous client, not a wrong password.
            return Ok(false);
        }
        if password.trim().is_empty() {
            return Err(Denied::Unauthorized("empty password"));
        }
        self.verify_password(user, password).await
    }

    async fn verify_password(&self, user: &str, password: &str) -> Result<bool, Denied> {
        let invalid = Denied::Unauthorized("invalid user or password");
        let key = hmac_sha256(
            &self.remember_key,
            &[
                &(user.len() as u64).to_be_bytes(),
                user.as_bytes(),
                password.as_bytes(),
            ],
        );
        if self.remembered().contains(&key, Instant::now()) {
            self.counters.remembered.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        let (hash, known) = match (self.users.get(user), &self.decoy) {
            (Some(hash), _) => (hash.clone(), true),
            (None, Some(decoy)) => (decoy.clone(), false),
            // No users at all: there are no names to tell apart.
            (None, None) => return Err(invalid),
        };
        let permit =
            match tokio::time::timeout(HASHING_WAIT, self.hashing.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) | Err(_) => {
                    self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    return Err(Denied::Busy);
                }
            };
        let counters = self.counters.clone();
        let password = password.as_bytes().to_vec();
        // The permit moves into the blocking task: a client that leaves does not free the slot
        // before the hashing it started is done.
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = counters.start();
            use argon2::password_hash::PasswordVerifier as _;
            argon2::Argon2::default()
                .verify_password(&password, &hash)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if !(known && matched) {
            return Err(invalid);
        }
        self.remembered().insert(key, Instant::now());
        Ok(true)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `hash` with its output zeroed: the same argon2 work to check, and no password gives it.
fn decoy_of(hash: &PasswordHash) -> Result<PasswordHash, String> {
    let len = hash.hash.as_ref().map_or(Output::MIN_LENGTH, Output::len);
    let zeros = Output::new(&vec![0; len]).map_err(|e| format!("password_hash: {e}"))?;
    let mut decoy = hash.clone();
    decoy.hash = Some(zeros);
    Ok(decoy)
}

/// Credentials that verified, with when they did.
#[derive(Default)]
struct Remembered {
    entries: HashMap<[u8; 32], Instant>,
}

impl Remembered {
    fn contains(&mut self, key: &[u8; 32], now: Instant) -> bool {
        match self.entries.get(key) {
            Some(at) if now.saturating_duration_since(*at) < REMEMBER_FOR => true,
            Some(_) => {
                self.entries.remove(key);
                false
            }
            None => false,
        }
    }

    fn insert(&mut self, key: [u8; 32], now: Instant) {
        if self.entries.len() >= MAX_REMEMBERED && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, at| now.saturating_duration_since(*at) < REMEMBER_FOR);
            if self.entries.len() >= MAX_REMEMBERED {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, now);
    }
}

/// HMAC-SHA-256 (RFC 2104) of the concatenated `parts` under a 32-byte key.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// 32 bytes from the system's random source.
fn random_key() -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    for half in key.chunks_mut(16) {
        let bytes = argon2::password_hash::try_generate_salt()
            .map_err(|e| format!("access: no system randomness for the credential cache: {e}"))?;
        half.copy_from_slice(&bytes);
    }
    Ok(key)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// An argon2id PHC string for `password`, for `access.user.password_hash`. Empty and blank
/// passwords are refused: wharf never accepts them.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    if password.trim().is_empty() {
        return Err("the password is empty or blank".into());
    }
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pw: &str) -> HeaderMap {
        use base64::Engine as _;
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        authorization(&format!("Basic {v}"))
    }

    fn authorization(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    /// An argon2id hash with small parameters: tests run unoptimised.
    fn cheap_hash(password: &str) -> String {
        use argon2::password_hash::PasswordHasher;
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn control(extra: impl FnOnce(&mut AccessConfig)) -> AccessControl {
        let mut cfg = AccessConfig::default();
        cfg.users.push(UserConfig {
            name: "ci".into(),
            password_hash: cheap_hash("s3cret"),
        });
        cfg.tokens.push(TokenConfig {
            name: "farm".into(),
            sha256: hex::encode(Sha256::digest(b"tok")),
        });
        extra(&mut cfg);
        AccessControl::new(&cfg, &["docker.io"], "docker.io").unwrap()
    }

    #[tokio::test]
    async fn passwords_and_tokens_are_checked() {
        let a = control(|c| c.require_auth = true);
        assert_eq!(
            a.check(None, "/v2/x/manifests/1", &HeaderMap::new()).await,
            Err(Denied::Unauthorized("authentication required"))
        );
        assert!(a.check(None, "/v2/", &basic("ci", "s3cret")).await.is_ok());
        assert!(
            a.check(None, "/v2/", &basic("ci", "s3cret")).await.is_ok(),
            "cached"
        );
        assert_eq!(
            a.check(None, "/v2/", &basic("ci", "wrong")).await,
            Err(Denied::Unauthorized("invalid user or password"))
        );
        assert!(
            a.check(None, "/v2/", &basic("nobody", "s3cret"))
                .await
                .is_err()
        );
        let bearer = |t: &str| authorization(&format!("Bearer {t}"));
        assert!(
            a.check(None, "/go/x.com/@v/list", &bearer("tok"))
                .await
                .is_ok()
        );
        assert!(
            a.check(None, "/go/x.com/@v/list", &bearer("nope"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn blank_tokens_and_passwords_are_refused() {
        let a = control(|_| {});
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer \t ",
            "bearer\t",
            "Basic",
            "Basic  ",
        ] {
            let mut h = HeaderMap::new();
            // What an HTTP/2 client can send: the value exactly, trailing blanks included.
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).unwrap(),
            );
            assert!(
                matches!(
                    a.check(None, "/v2/", &h).await,
                    Err(Denied::Unauthorized(_))
                ),
                "{value:?}"
            );
        }
        for pw in ["", " ", "\t \t"] {
            assert_eq!(
                a.check(None, "/v2/", &basic("ci", pw)).await,
                Err(Denied::Unauthorized("empty password")),
                "{pw:?}"
            );
        }
        assert_eq!(a.password_checks().hashed, 0);
        assert!(hash_password("").is_err());
        assert!(hash_password(" \t").is_err());
    }

    #[test]
    fn token_hash_of_the_empty_string_is_refused_with_its_name() {
        let mut cfg = AccessConfig::default();
        cfg.tokens.push(TokenConfig {
            name: "build-farm".into(),
            sha256: "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855".into(),
        });
        let e = AccessControl::new(&cfg, &["docker.io"], "docker.io")
            .err()
            .expect("refused");
        assert!(e.contains("access.token \"build-farm\": sha256"), "{e}");
        assert!(e.contains("empty string"), "{e}");
    }

    #[test]
    fn user_hashes_must_be_argon2_with_an_output() {
        for (hash, why) in [
            ("$argon2id$v=19$m=64,t=1,p=1", "lacks a salt"),
            (
                "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0",
                "lacks a salt",
            ),
            (
                "$scrypt$ln=4,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "not an argon2",
            ),
        ] {
            let mut cfg = AccessConfig::default();
            cfg.users.push(UserConfig {
                name: "ci".into(),
                password_hash: hash.into(),
            });
            let e = AccessControl::new(&cfg, &["docker.io"], "docker.io")
                .err()
                .expect(hash);
            assert!(
                e.contains("access.user \"ci\"") && e.contains(why),
                "{hash}: {e}"
            );
        }
    }

    #[test]
    fn user_names_must_fit_basic_auth() {
        for name in ["", " ", "a:b"] {
            let mut cfg = AccessConfig::default();
            cfg.users.push(UserConfig {
                name: name.into(),
                password_hash: cheap_hash("x"),
            });
            assert!(
                AccessControl::new(&cfg, &["docker.io"], "docker.io").is_err(),
                "{name:?}"
            );
        }
    }

    #[tokio::test]
    async fn decoy_costs_one_hash_and_never_matches() {
        let a = control(|_| {});
        let decoy = a.decoy.clone().unwrap();
        assert_eq!(decoy.params, a.users["ci"].params);
        assert_ne!(decoy.hash, a.users["ci"].hash);
        // The right password of the only user, under another name: hashed, and refused.
        assert!(
            a.check(None, "/v2/", &basic("nobody", "s3cret"))
                .await
                .is_err()
        );
        assert_eq!(a.password_checks().hashed, 1);
    }

    #[tokio::test]
    async fn a_check_that_finds_no_hashing_slot_is_answered_busy() {
        let a = control(|_| {});
        assert!(a.check(None, "/v2/", &basic("ci", "s3cret")).await.is_ok());
        let all = u32::try_from(a.hashing_limit).unwrap();
        let _held = a.hashing.clone().acquire_many_owned(all).await.unwrap();
        assert_eq!(
            a.check(None, "/v2/", &basic("ci", "wrong")).await,
            Err(Denied::Busy)
        );
        assert!(
            a.check(None, "/v2/", &basic("ci", "s3cret")).await.is_ok(),
            "a remembered credential needs no slot"
        );
        let checks = a.password_checks();
        assert_eq!((checks.hashed, checks.busy), (1, 1));
    }

    #[test]
    fn remembered_credentials_expire_and_stay_bounded() {
        let start = Instant::now();
        let mut r = Remembered::default();
        r.insert([1; 32], start);
        assert!(r.contains(&[1; 32], start + REMEMBER_FOR / 2));
        assert!(!r.contains(&[1; 32], start + REMEMBER_FOR));
        assert!(
            r.entries.is_empty(),
            "expired entries are dropped when seen"
        );

        for i in 0..MAX_REMEMBERED + 10 {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            r.insert(key, start + Duration::from_millis(i as u64));
        }
        assert_eq!(r.entries.len(), MAX_REMEMBERED);
        assert!(!r.contains(&[0; 32], start), "the oldest went first");
    }

    #[test]
    fn hmac_is_rfc_4231_test_case_2() {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn rules_protect_prefixes_per_protocol() {
        let a = control(|c| {
            c.rules.push(RuleConfig {
                protocol: Protocol::Go,
                prefix: "corp.example.com/".into(),
                require_auth: true,
            });
        });
        let none = HeaderMap::new();
        assert!(
            a.check(None, "/go/golang.org/x/text/@v/list", &none)
                .await
                .is_ok()
        );
        assert!(
            a.check(None, "/go/corp.example.com/tool/@v/list", &none)
                .await
                .is_err()
        );
        assert!(
            a.check(
                None,
                "/go/corp.example.com/tool/@v/list",
                &basic("ci", "s3cret")
            )
            .await
            .is_ok()
        );
        assert!(
            a.check(None, "/v2/corp.example.com/x/manifests/1", &none)
                .await
                .is_ok(),
            "rules are per protocol"
        );
        let anon = authorization("Basic Og==");
        assert!(
            a.check(None, "/go/golang.org/x/text/@v/list", &anon)
                .await
                .is_ok(),
            "empty basic is anonymous"
        );
        assert!(
            a.check(None, "/go/corp.example.com/tool/@v/list", &anon)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn registry_rules_without_an_upstream_are_on_the_default_one() {
        let mut cfg = AccessConfig::default();
        cfg.rules.push(RuleConfig {
            protocol: Protocol::Registry,
            prefix: "private/".into(),
            require_auth: true,
        });
        let a = AccessControl::new(&cfg, &["hub.test", "ghcr.io"], "hub.test").unwrap();
        let none = HeaderMap::new();
        assert!(
            a.check(None, "/v2/hub.test/private/app/", &none)
                .await
                .is_err()
        );
        assert!(
            a.check(None, "/v2/hub.test/public/app/", &none)
                .await
                .is_ok()
        );
        assert!(
            a.check(None, "/v2/ghcr.io/private/app/", &none)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn client_ranges_are_enforced() {
        let a = control(|c| c.allow_clients.push("10.0.0.0/8".into()));
        let none = HeaderMap::new();
        assert!(
            a.check(Some("10.1.2.3".parse().unwrap()), "/v2/", &none)
                .await
                .is_ok()
        );
        assert_eq!(
            a.check(Some("192.168.1.1".parse().unwrap()), "/v2/", &none)
                .await,
            Err(Denied::Address)
        );
        assert_eq!(a.check(None, "/v2/", &none).await, Err(Denied::Address));
    }
}

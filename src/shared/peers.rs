//! Replicas that fill for each other. A cold object has one owner among the live replicas: the
//! highest rendezvous score of (replica, key), so every replica picks the same owner without
//! talking, and a replica joining or leaving moves only its share of keys. A non-owner asks the
//! owner for the protocol path (`X-Wharf-Peer` carries the fleet's secret; the owner fills it
//! once, as for any client, and never forwards it again) and fills its own disk from the stream;
//! the engine verifies it and, if the owner dies mid-transfer, finishes from upstream. An owner
//! that cannot be reached is marked down like an upstream, so keys move to the next replica.
//! No lock service, no conditional writes: at worst two replicas fetch the same object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use reqwest::Url;
use sha2::{Digest as _, Sha256};

use crate::cache::{Incoming, Peers};
use crate::config::{EgressConfig, PeersConfig, same_url};
use crate::upstream::client::{build_http, into_incoming};
use crate::upstream::health::{Health, spawn_probe};
use crate::upstream::{EgressPolicy, UpstreamError};

/// The header a replica's request to another carries.
pub const PEER_HEADER: &str = "x-wharf-peer";

/// The asking process's random name: a replica that receives its own answers 508 (it is listed
/// under two names, or DNS gave another address of it).
pub const INSTANCE_HEADER: &str = "x-wharf-instance";

/// How long a key whose owner's copy failed its checks is fetched elsewhere.
const BAD_FOR: Duration = Duration::from_secs(600);
const MAX_BAD: usize = 10_000;

/// An owner that sends less than `MIN_RATE` bytes a second over a `RATE_WINDOW` is dropped and
/// the engine finishes from upstream (an owner that sends nothing at all meets
/// `egress.read_timeout`).
const MIN_RATE: u64 = 64 * 1024;
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Fills this replica streamed from an owner.
    pub fills: AtomicU64,
    /// Fills an owner began and upstream finished.
    pub failovers: AtomicU64,
    /// Requests this replica answered as owner.
    pub served: AtomicU64,
}

struct Member {
    url: String,
    health: Arc<Health>,
    /// Answered 508: another name of this process.
    is_me: bool,
}

pub struct PeerSet {
    me: String,
    /// This process's random name (`INSTANCE_HEADER`).
    pub instance: String,
    /// Keys whose owner's copy failed its checks, and when.
    bad: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    members: RwLock<Vec<Member>>,
    secret: String,
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
    threshold: u32,
    probe_interval: Duration,
    dns: Option<(String, u16)>,
    /// `peers.members`, kept with what `dns` resolves to.
    fixed: Vec<String>,
    refresh: Duration,
    pub stats: PeerStats,
}

/// A replica's score for `key`: the owner is the live replica with the highest.
fn score(member: &str, key: &str) -> u64 {
    let h = Sha256::new()
        .chain_update(member.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first)
}

/// The owner of `key` among `members` (base URLs as configured).
pub fn owner_of<'a>(members: impl IntoIterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|m| (score(normalize(m), key), *m))
}

fn normalize(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl PeerSet {
    pub fn new(
        cfg: &PeersConfig,
        listen: std::net::SocketAddr,
        egress: &EgressConfig,
        policy: Arc<EgressPolicy>,
    ) -> Result<Arc<PeerSet>, String> {
        let secret = std::fs::read_to_string(&cfg.secret_file)
            .map_err(|e| format!("peers.secret_file {}: {e}", cfg.secret_file.display()))?
            .trim()
            .to_string();
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "peers.secret_file {}: the secret must be at least 16 printable characters \
                 (e.g. `openssl rand -hex 32`)",
                cfg.secret_file.display()
            ));
        }
        let me = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"));
        if cfg.dns.is_none() && !cfg.members.iter().any(|m| same_url(m, &me)) {
            return Err(format!(
                "peers: this replica ({me}) is not one of peers.members; set peers.advertise \
                 to its entry"
            ));
        }
        for m in &cfg.members {
            let url = Url::parse(m).map_err(|e| format!("peers: {m}: {e}"))?;
            policy.check(&url).map_err(|e| format!("peers: {e}"))?;
        }
        // Replicas are internal: their traffic (and the secret) never goes through egress.proxy.
        let direct = EgressConfig {
            proxy: None,
            ..egress.clone()
        };
        let instance = crate::secret::AdminSecret::random_hex(16)
            .map_err(|e| format!("peers: no random source: {e}"))?;
        let set = PeerSet {
            me: normalize(&me).to_string(),
            instance,
            bad: Default::default(),
            members: RwLock::new(Vec::new()),
            secret,
            http: build_http(&direct, policy.clone())?,
            policy,
            threshold: egress.failure_threshold,
            probe_interval: egress.probe_interval,
            dns: cfg
                .dns
                .clone()
                .map(|d| (d, cfg.port.unwrap_or_else(|| listen.port()))),
            fixed: cfg
                .members
                .iter()
                .map(|m| normalize(m).to_string())
                .collect(),
            refresh: cfg.refresh,
            stats: PeerStats::default(),
        };
        set.set_members(
            cfg.members
                .iter()
                .map(|m| normalize(m).to_string())
                .collect(),
        );
        Ok(Arc::new(set))
    }

    /// Resolves `peers.dns` now and every `peers.refresh` after, until `stop` turns true (no
    /// task with static members).
    pub fn spawn(
        self: &Arc<Self>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (name, port) = self.dns.clone()?;
        let (me, mut stopped) = (self.clone(), stop.clone());
        Some(tokio::spawn(async move {
            loop {
                match tokio::net::lookup_host((name.as_str(), port)).await {
                    Ok(addrs) => {
                        let mut urls: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
                        urls.extend(me.fixed.iter().cloned());
                        // This replica is always a member, resolved or not.
                        urls.push(me.me.clone());
                        me.set_members(urls);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, name = %name, "resolving peers.dns failed")
                    }
                }
                if !super::pause(&mut stopped, me.refresh).await {
                    break;
                }
            }
        }))
    }

    fn set_members(&self, mut urls: Vec<String>) {
        urls.sort();
        urls.dedup();
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let old: Vec<Member> = std::mem::take(&mut *members);
        *members = urls
            .into_iter()
            .map(|url| {
                let known = old.iter().find(|m| m.url == url);
                let health = known.map_or_else(
                    || Arc::new(Health::new(&url, self.threshold, self.probe_interval)),
                    |m| m.health.clone(),
                );
                let is_me = known.is_some_and(|m| m.is_me);
                Member { url, health, is_me }
            })
            .collect();
    }

    fn is_bad(&self, key: &str) -> bool {
        let bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        bad.get(key).is_some_and(|at| at.elapsed() < BAD_FOR)
    }

    fn mark_me(&self, url: &str) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        for m in members.iter_mut().filter(|m| m.url == url) {
            m.is_me = true;
        }
    }

    /// Whether `presented` is the fleet's secret (constant time).
    pub fn admits(&self, presented: &[u8]) -> bool {
        let want = self.secret.as_bytes();
        presented.len() == want.len()
            && presented
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Each replica and whether it is considered up, for `/healthz`.
    pub fn report(&self) -> Vec<serde_json::Value> {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        members
            .iter()
            .map(|m| {
                let me = m.url == self.me;
                serde_json::json!({
                    "url": m.url, "self": me || m.is_me, "up": me || m.is_me || m.health.is_up(),
                    "last_error": m.health.report().last_error,
                })
            })
            .collect()
    }
}

/// `incoming`, cut with an error when it falls below `MIN_RATE` over a `RATE_WINDOW`.
fn at_least_min_rate(incoming: Incoming) -> Incoming {
    use futures_util::StreamExt as _;
    let mut window = (tokio::time::Instant::now(), 0u64);
    let body = incoming
        .body
        .map(move |chunk| {
            let chunk = chunk?;
            window.1 += chunk.len() as u64;
            let elapsed = window.0.elapsed();
            if elapsed >= RATE_WINDOW {
                if window.1 < MIN_RATE * elapsed.as_secs() {
                    return Err(crate::cache::FillError::Upstream(
                        "the owner replica sends too slowly".into(),
                    ));
                }
                window = (tokio::time::Instant::now(), 0);
            }
            Ok(chunk)
        })
        .boxed();
    Incoming {
        len: incoming.len,
        body,
    }
}

impl Peers for Arc<PeerSet> {
    fn owner(&self, key: &str) -> Option<String> {
        if self.is_bad(key) {
            return None;
        }
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        // Another name of this process scores as this process: its keys are this one's.
        let live = members
            .iter()
            .filter(|m| m.url == self.me || m.is_me || m.health.is_up())
            .map(|m| m.url.as_str());
        let owner = owner_of(live, key)?;
        let mine = owner == self.me || members.iter().any(|m| m.url == owner && m.is_me);
        (!mine).then(|| owner.to_string())
    }

    fn bad(&self, owner: &str, key: &str) {
        tracing::warn!(%owner, "not asking this owner for the object again for 10 minutes");
        let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if bad.len() >= MAX_BAD {
            bad.retain(|_, at| now.duration_since(*at) < BAD_FOR);
        }
        if bad.len() < MAX_BAD {
            bad.insert(key.to_string(), now);
        }
    }

    fn get(&self, owner: &str, path: &str) -> BoxFuture<'static, Option<Incoming>> {
        let health = {
            let members = self.members.read().unwrap_or_else(|p| p.into_inner());
            members
                .iter()
                .find(|m| m.url == owner)
                .map(|m| m.health.clone())
        };
        let (me, owner, path) = (self.clone(), owner.to_string(), path.to_string());
        async move {
            let health = health?;
            health.check().ok()?;
            let url = Url::parse(&format!("{owner}{path}")).ok()?;
            me.policy.check(&url).ok()?;
            let mut secret = http::HeaderValue::from_str(&me.secret).ok()?;
            secret.set_sensitive(true);
            let sent = me
                .http
                .get(url.clone())
                .header(PEER_HEADER, secret)
                .header(INSTANCE_HEADER, me.instance.as_str())
                .send()
                .await;
            let result = sent.map_err(|e| UpstreamError::Connect {
                target: owner.clone(),
                detail: e.without_url().to_string(),
            });
            if health.record(&result)
                && let Ok(probe) = Url::parse(&format!("{owner}/healthz"))
            {
                spawn_probe(health.clone(), me.http.clone(), me.policy.clone(), probe);
            }
            match result {
                Ok(resp) if resp.status() == http::StatusCode::OK => {
                    me.stats.fills.fetch_add(1, Ordering::Relaxed);
                    Some(at_least_min_rate(into_incoming(resp)))
                }
                Ok(resp) if resp.status() == http::StatusCode::LOOP_DETECTED => {
                    tracing::warn!(%owner, "this member is this replica under another name; it owns its keys here");
                    me.mark_me(&owner);
                    None
                }
                Ok(resp) => {
                    tracing::debug!(%owner, status = %resp.status(), "the owner replica did not answer 200");
                    None
                }
                Err(e) => {
                    tracing::warn!(%owner, error = %e, "the owner replica cannot be reached; fetching directly");
                    None
                }
            }
        }
        .boxed()
    }

    fn failed_over(&self) {
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_picks_the_same_owner_and_a_leaving_one_moves_only_its_keys() {
        let three = ["http://a:5000", "http://b:5000", "http://c:5000"];
        let keys: Vec<String> = (0..300).map(|i| format!("sha256:{i:064x}")).collect();
        let mut owned = std::collections::HashMap::new();
        for k in &keys {
            let o = owner_of(three, k).unwrap();
            // Order of the list does not matter.
            assert_eq!(owner_of([three[2], three[0], three[1]], k), Some(o));
            *owned.entry(o).or_insert(0) += 1;
        }
        assert!(owned.values().all(|&n| n > 60), "spread: {owned:?}");
        for k in &keys {
            let before = owner_of(three, k).unwrap();
            let after = owner_of([three[0], three[1]], k).unwrap();
            if before != three[2] {
                assert_eq!(before, after, "{k} moved though its owner stayed");
            }
        }
        assert_eq!(owner_of([], "k"), None);
        assert_eq!(owner_of(["http://a:5000/"], "k"), Some("http://a:5000/"));
    }

    fn peers_config(dir: &std::path::Path, toml_rest: &str) -> PeersConfig {
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123").unwrap();
        toml::from_str(&format!(
            "secret_file = {:?}\n{toml_rest}",
            secret.display().to_string()
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn dns_members_join_the_static_ones_and_this_replica_is_always_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = peers_config(
            dir.path(),
            "dns = \"localhost\"\nport = 5999\nadvertise = \"http://10.9.9.9:5999\"\n\
             members = [\"http://127.0.0.2:5999\"]\nrefresh = \"1h\"",
        );
        let policy =
            Arc::new(EgressPolicy::new(&["127.0.0.1".into(), "127.0.0.2".into()]).unwrap());
        let listen = "127.0.0.1:5999".parse().unwrap();
        let set = PeerSet::new(&cfg, listen, &EgressConfig::default(), policy).unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        set.spawn(&stopped);
        let urls = || -> Vec<String> {
            set.report()
                .iter()
                .filter_map(|m| m["url"].as_str().map(str::to_string))
                .collect()
        };
        for _ in 0..200 {
            if urls().contains(&"http://127.0.0.1:5999".to_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = urls();
        for want in [
            "http://127.0.0.1:5999",
            "http://127.0.0.2:5999",
            "http://10.9.9.9:5999",
        ] {
            assert!(got.contains(&want.to_string()), "{want} in {got:?}");
        }
    }

    #[test]
    fn a_short_secret_and_a_replica_outside_members_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Arc::new(EgressPolicy::new(&["127.0.0.1".into()]).unwrap());
        let listen = "127.0.0.1:5000".parse().unwrap();
        let cfg = peers_config(dir.path(), "members = [\"http://127.0.0.1:5001\"]");
        let e = PeerSet::new(&cfg, listen, &EgressConfig::default(), policy.clone())
            .err()
            .unwrap();
        assert!(e.contains("not one of peers.members"), "{e}");
        std::fs::write(dir.path().join("secret"), "short").unwrap();
        let cfg = peers_config(dir.path(), "members = [\"http://127.0.0.1:5000\"]");
        std::fs::write(dir.path().join("secret"), "short").unwrap();
        let e = PeerSet::new(&cfg, listen, &EgressConfig::default(), policy.clone())
            .err()
            .unwrap();
        assert!(e.contains("at least 16"), "{e}");
        let cfg = peers_config(
            dir.path(),
            "members = [\"http://10.1.1.1:5000\", \"http://127.0.0.1:5000\"]",
        );
        let e = PeerSet::new(&cfg, listen, &EgressConfig::default(), policy)
            .err()
            .unwrap();
        assert!(e.contains("egress.allow"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_below_the_minimum_rate_is_cut() {
        use futures_util::StreamExt as _;
        let chunks = futures_util::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Some((Ok(bytes::Bytes::from_static(b"x")), n + 1))
        });
        let slow = Incoming {
            len: Some(1 << 20),
            body: chunks.boxed(),
        };
        let mut body = at_least_min_rate(slow).body;
        let mut got = 0;
        let err = loop {
            match body.next().await {
                Some(Ok(c)) => got += c.len(),
                Some(Err(e)) => break e,
                None => panic!("ended"),
            }
        };
        assert!(got < 10, "{got} bytes before the cut");
        assert!(matches!(err, crate::cache::FillError::Upstream(_)));
    }
}

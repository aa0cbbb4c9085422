//! Counters behind `/metrics`: a relaxed atomic add per request; nothing here touches disk or
//! knows the rest of the application (`ops` renders them with the upstream states).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub const OUTCOMES: [&str; 5] = ["HIT", "MISS", "STALE", "ERROR", "BYPASS"];

/// Body bytes a response has sent so far, for its request log line (a response extension; the
/// server's `sendfile` path adds to it, since that body is never polled).
#[derive(Clone)]
pub struct SentBytes(pub std::sync::Arc<AtomicU64>);

/// The upstream a response's request went to, for its request log line (a response extension).
#[derive(Clone)]
pub struct AnsweredBy(pub std::sync::Arc<str>);

/// Labels of a request's histograms: the protocol, what was asked (`manifest`, `blob`, `tags`,
/// `referrers`, `ping`; `info`, `mod`, `zip`, `list`, `latest`, `sumdb`; else `other`) and the
/// outcome (the cache outcome in lower case, `none` for answers without one, `error`). Bounded:
/// no names of repositories or modules.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub protocol: &'static str,
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Labels of bytes served: protocol and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// A bounded reason or kind label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Why {
    pub reason: &'static str,
}

/// A bounded kind label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct What {
    pub kind: &'static str,
}

/// Labels of the gateway's tunnels and forwarded requests: how each ended (`ok`, `refused`,
/// `bad_request`, `unauthorized`, `busy`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayResult {
    pub result: &'static str,
}

/// Labels of the gateway's bytes: `to_origin` (from clients) or `to_client`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

/// The egress gateway's families (`[gateway]`): bounded labels only, never a host name.
#[derive(Default)]
pub struct GatewayMetrics {
    pub tunnels: Family<GatewayResult, Counter>,
    pub requests: Family<GatewayResult, Counter>,
    pub bytes: Family<Direction, Counter>,
    pub refusals: Family<Why, Counter>,
    pub open: prometheus_client::metrics::gauge::Gauge,
}

impl GatewayMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "wharf_gateway_tunnels",
            "CONNECT tunnels through the egress gateway, by result (ok, refused, bad_request, unauthorized, busy, failed)",
            self.tunnels.clone(),
        );
        r.register(
            "wharf_gateway_requests",
            "Absolute-form requests the egress gateway answered, by result (as for tunnels)",
            self.requests.clone(),
        );
        r.register(
            "wharf_gateway_bytes",
            "Bytes through the egress gateway, by direction (to_origin, to_client)",
            self.bytes.clone(),
        );
        r.register(
            "wharf_gateway_refusals",
            "Gateway requests refused, by reason (host, address, ip_literal, client, auth, malformed, https_absolute, origin_form, method, busy)",
            self.refusals.clone(),
        );
        r.register(
            "wharf_gateway_tunnels_open",
            "Tunnels and forwarded requests open through the egress gateway now",
            self.open.clone(),
        );
    }

    /// One tunnel (`tunnel`) or forwarded request ended with `result`.
    pub fn ended(&self, tunnel: bool, result: &'static str) {
        let family = if tunnel {
            &self.tunnels
        } else {
            &self.requests
        };
        family.get_or_create(&GatewayResult { result }).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Why { reason }).inc();
    }

    /// Bytes moved: `up` from the client to the origin, `down` back.
    pub fn moved(&self, up: u64, down: u64) {
        let b = &self.bytes;
        b.get_or_create(&Direction {
            direction: "to_origin",
        })
        .inc_by(up);
        b.get_or_create(&Direction {
            direction: "to_client",
        })
        .inc_by(down);
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The families kept by the metrics library (`prometheus-client`): histograms, and counters
/// with bounded labels. Each update is a lookup of the label set and relaxed atomics.
pub struct Families {
    pub request_seconds: Histograms<RequestLabels>,
    pub first_byte_seconds: Histograms<RequestLabels>,
    pub served_bytes: Family<ServedLabels, Counter>,
    pub verification_failures: Family<What, Counter>,
    pub client_auth_failures: Family<Why, Counter>,
}

/// Request durations: 0.5 ms to about 2 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Families {
    fn default() -> Self {
        Families {
            request_seconds: Family::new_with_constructor(seconds),
            first_byte_seconds: Family::new_with_constructor(seconds),
            served_bytes: Family::default(),
            verification_failures: Family::default(),
            client_auth_failures: Family::default(),
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub families: Families,
    /// [protocol][outcome]: protocol 0 = registry, 1 = go.
    requests: [[AtomicU64; 5]; 2],
    /// Bytes committed from each upstream (counted once per fill, not per chunk).
    upstream_bytes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Response bodies and their bytes by how they were sent: [0] copied through a buffer,
    /// [1] `sendfile` from the file to the socket.
    bodies: [[AtomicU64; 2]; 2],
    /// Ranges of blobs still being filled: [0] answered from the fill, [1] from the upstream.
    cold_ranges: [AtomicU64; 2],
    /// Client connections: open now, and ever shed (idle, closed to make room), refused (at the
    /// limit with none idle), failed accepts.
    conns_open: AtomicU64,
    conns_shed: AtomicU64,
    conns_refused: AtomicU64,
    accept_failures: AtomicU64,
    /// The scheduled prefetch (`[[prefetch]]`).
    pub prefetch: PrefetchRuns,
    /// The store as last measured (each `cache.gc_interval`), and evictions since start.
    pub store: StoreStats,
    /// The egress gateway (`[gateway]`); rendered only when it is configured.
    pub gateway: GatewayMetrics,
}

/// The store as the periodic eviction check last measured it, and what eviction removed.
#[derive(Default)]
pub struct StoreStats {
    pub bytes: AtomicU64,
    pub objects: AtomicU64,
    pub pinned_bytes: AtomicU64,
    pub pinned_objects: AtomicU64,
    pub index_bytes: AtomicU64,
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
}

impl StoreStats {
    /// Evicted `objects` holding `bytes`.
    pub fn evicted(&self, objects: u64, bytes: u64) {
        self.evictions.fetch_add(objects, Ordering::Relaxed);
        self.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// What the scheduled prefetch did: runs, and the last run's time, items and failures.
#[derive(Default)]
pub struct PrefetchRuns {
    pub runs: AtomicU64,
    pub last_run_unix: AtomicU64,
    pub last_items: AtomicU64,
    pub last_failures: AtomicU64,
    pub items_total: AtomicU64,
    pub failures_total: AtomicU64,
}

impl PrefetchRuns {
    pub fn record(&self, finished_unix: u64, items: u64, failures: u64) {
        self.last_run_unix.store(finished_unix, Ordering::Relaxed);
        self.last_items.store(items, Ordering::Relaxed);
        self.last_failures.store(failures, Ordering::Relaxed);
        self.items_total.fetch_add(items, Ordering::Relaxed);
        self.failures_total.fetch_add(failures, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Registers the library's families for one scrape (they are shared handles).
    pub fn register(&self, r: &mut Registry) {
        let f = &self.families;
        r.register(
            "wharf_request_duration_seconds",
            "Protocol requests from arrival to the last byte of the answer, by protocol, kind and outcome",
            f.request_seconds.clone(),
        );
        r.register(
            "wharf_first_byte_seconds",
            "Time to the answer's head for misses and pass-throughs (waiting on a fill's source)",
            f.first_byte_seconds.clone(),
        );
        r.register(
            "wharf_served_bytes",
            "Body bytes sent to clients, by protocol and outcome (hit bytes against wharf_upstream_bytes_total: bytes saved)",
            f.served_bytes.clone(),
        );
        r.register(
            "wharf_verification_failures",
            "Content refused because it failed verification, by kind (blob_digest, manifest_digest, go_checksum, go_zip, tier_copy): someone served bad bytes",
            f.verification_failures.clone(),
        );
        r.register(
            "wharf_client_auth_failures",
            "Client requests refused by [access], by reason (no_credentials: a rule requires a login, bad_credentials, bad_token, client_address, busy, bad_peer_secret: a wrong X-Wharf-Peer)",
            f.client_auth_failures.clone(),
        );
    }

    /// One request answered: its duration and body bytes.
    pub fn observe_request(&self, labels: &RequestLabels, seconds: f64, bytes: u64) {
        let f = &self.families;
        f.request_seconds.get_or_create(labels).observe(seconds);
        let served = ServedLabels {
            protocol: labels.protocol,
            outcome: labels.outcome,
        };
        f.served_bytes.get_or_create(&served).inc_by(bytes);
    }

    /// A client request refused by `[access]` (`reason`: see `wharf_client_auth_failures`).
    pub fn client_refused(&self, reason: &'static str) {
        let why = Why { reason };
        self.families.client_auth_failures.get_or_create(&why).inc();
    }

    /// Content refused for failing its checks (`kind`: see `wharf_verification_failures`).
    pub fn verification_failed(&self, kind: &'static str) {
        let what = What { kind };
        self.families
            .verification_failures
            .get_or_create(&what)
            .inc();
    }

    pub fn count(&self, go: bool, outcome: &str) {
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(3);
        self.requests[usize::from(go)][o].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_upstream_bytes(&self, upstream: &str, n: u64) {
        let mut m = self
            .upstream_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry(upstream.to_string()).or_default() += n;
    }

    pub fn upstream_bytes(&self) -> std::collections::HashMap<String, u64> {
        self.upstream_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests per outcome (lower case), both protocols together.
    pub fn outcome_totals(&self) -> std::collections::HashMap<String, u64> {
        OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, o)| {
                (
                    o.to_ascii_lowercase(),
                    self.get(false, i) + self.get(true, i),
                )
            })
            .collect()
    }

    /// One response body sent, `bytes` long, with `sendfile` or copied.
    pub fn count_body(&self, sendfile: bool, bytes: u64) {
        let b = &self.bodies[usize::from(sendfile)];
        b[0].fetch_add(1, Ordering::Relaxed);
        b[1].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of a body sent so far (counted as it goes; `count_body` with 0 bytes ends it).
    pub fn add_body_bytes(&self, sendfile: bool, bytes: u64) {
        self.bodies[usize::from(sendfile)][1].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.conns_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.conns_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections_shed(&self, n: u64) {
        self.conns_shed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        self.conns_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_failed(&self) {
        self.accept_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// (open, shed, refused, failed accepts).
    pub fn connections(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            l(&self.conns_open),
            l(&self.conns_shed),
            l(&self.conns_refused),
            l(&self.accept_failures),
        )
    }

    /// A range of a blob still being filled, answered from the `upstream` or the fill.
    pub fn count_cold_range(&self, upstream: bool) {
        self.cold_ranges[usize::from(upstream)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cold_ranges(&self, upstream: bool) -> u64 {
        self.cold_ranges[usize::from(upstream)].load(Ordering::Relaxed)
    }

    /// (responses, bytes) sent with `sendfile` (true) or copied (false).
    pub fn bodies(&self, sendfile: bool) -> (u64, u64) {
        let b = &self.bodies[usize::from(sendfile)];
        (b[0].load(Ordering::Relaxed), b[1].load(Ordering::Relaxed))
    }

    /// Requests of one protocol (`go`) with outcome `OUTCOMES[o]`.
    pub fn get(&self, go: bool, o: usize) -> u64 {
        self.requests[usize::from(go)][o].load(Ordering::Relaxed)
    }
}

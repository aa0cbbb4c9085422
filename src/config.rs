//! Configuration: the serde `Config` with every default in one `impl Default`, loading from TOML,
//! and `validate()`. CLI flags are merged over it in `cli.rs`; nothing else reads the environment
//! except the credential lookups named in the config itself (`password_env`).
//!
//! Every key here is documented, with its default and why, in `systemd/wharf.toml`; keep the two
//! in step.
//!
//! A leaf over `net`: `validate()` parses every entry the runtime objects are built from
//! (`EgressConfig::parse`, `AccessConfig::parse`) with the same functions their constructors
//! call, and never builds an `EgressPolicy` or `AccessControl` itself.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use reqwest::Url;
use serde::{Deserialize, Deserializer};
use sha2::{Digest as _, Sha256};

use crate::net::{AllowEntry, Cidr, canonical_ip};

/// Docker Hub's registry API host; the default upstream.
pub const DOCKER_HUB_NAME: &str = "docker.io";
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen: one address or a list, each `host:port` (TCP) or `unix:/path` (a
    /// Unix socket). Under systemd socket activation the inherited sockets are used instead.
    pub listen: Listen,
    /// Where blobs, temp files, the index and the admin secret (`admin.token`) live.
    pub data_dir: PathBuf,
    /// Never contact any upstream: answer from the cache only (air-gapped sites).
    pub offline: bool,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub registry: RegistryConfig,
    pub go: GoConfig,
    pub egress: EgressConfig,
    pub access: AccessConfig,
    pub cache: CacheConfig,
    /// The shared tier several replicas use (`[shared]`); none by default.
    pub shared: Option<SharedConfig>,
    /// Replicas that fill for each other (`[peers]`); none by default.
    pub peers: Option<PeersConfig>,
    /// OTLP export of request and fill spans (`[traces]`); off by default.
    pub traces: Option<TracesConfig>,
    /// The egress gateway, a forward proxy to allowed destinations (`[gateway]`); off by
    /// default.
    pub gateway: Option<GatewayConfig>,
    /// How often the `[[prefetch]]` list is refreshed (an entry's `every` overrides it).
    #[serde(deserialize_with = "de_duration")]
    pub prefetch_interval: Duration,
    /// What the server keeps fetched ahead of need (scheduled prefetch); empty by default.
    #[serde(rename = "prefetch")]
    pub prefetch: Vec<PrefetchConfig>,
}

/// `[traces]`: spans of requests and fills sent to an OpenTelemetry collector (OTLP over HTTP
/// with JSON bodies). The endpoint's host must be in `egress.allow` like any other.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector's traces URL, such as `http://otel-collector:4318/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of requests traced, 0.0 to 1.0 (a trace is kept or dropped whole).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "wharf".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl TracesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        // Never echoed when it may carry a password (an error goes to the terminal and the journal).
        if self.endpoint.contains('@') {
            return invalid(
                "traces.endpoint must not carry a user name or password (nor an '@')".into(),
            );
        }
        match Url::parse(&self.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return invalid(format!(
                    "traces.endpoint {:?} is not an http(s) URL with a host",
                    self.endpoint
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid(format!(
                "traces.sample_ratio {} is not between 0.0 and 1.0",
                self.sample_ratio
            ));
        }
        Ok(())
    }
}

/// `[gateway]`: a second listener, an HTTP/1.1 forward proxy (`CONNECT host:port` tunnels and
/// absolute-form `http://` requests) that lets clients reach only the destinations
/// `gateway.allow` names, through the same egress policy (address classes, `egress.resolve`)
/// as wharf's own upstream traffic. `gateway` enforces it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gateway listens (`host:port`), e.g. `127.0.0.1:3128`.
    pub listen: SocketAddr,
    /// Destinations clients may reach, in `egress.allow`'s form (`host`, `*.suffix`,
    /// `host:port`). Default: the host entries of `egress.allow` that are the registries' and
    /// Go's (every entry except sockets and the hosts of `shared`, `peers`, `traces` and
    /// `egress.proxy`, which wharf alone talks to).
    pub allow: Option<Vec<String>>,
    /// Client address ranges that may use the gateway. Default: `access.allow_clients` when
    /// it is set, else loopback and the private ranges (10/8, 172.16/12, 192.168/16, fc00::/7).
    pub allow_clients: Option<Vec<String>>,
    /// Require `Proxy-Authorization` with the credentials of an `[[access.user]]` (or an
    /// `[[access.token]]`); missing or wrong ones get 407.
    #[serde(default)]
    pub require_auth: bool,
    /// A tunnel or forwarded request with no byte moving either way for this long is closed.
    #[serde(default = "default_gateway_idle", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// The longest a tunnel or forwarded request may last, however busy.
    #[serde(
        default = "default_gateway_max_duration",
        deserialize_with = "de_duration"
    )]
    pub max_duration: Duration,
    /// Tunnels and forwarded requests open at once; past it a new one gets 503.
    #[serde(default = "default_gateway_max_tunnels")]
    pub max_tunnels: usize,
    /// Reach destinations through `egress.proxy` (`CONNECT`, or absolute form for `http://`
    /// requests) instead of connecting directly. Unset: when that proxy is `http://` (the
    /// only kind the gateway can go through); `true` with another kind is refused.
    #[serde(default)]
    pub via_egress_proxy: Option<bool>,
}

fn default_gateway_idle() -> Duration {
    Duration::from_secs(300)
}

fn default_gateway_max_duration() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_gateway_max_tunnels() -> usize {
    256
}

/// `text` with the user info of anything URL-like (`scheme://user:password@host`) replaced
/// by `***` (over-masking an `@` later in the same word is the safe side).
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // Up to the end of the line or the next URL, not the next blank: a typo may have put
        // a quote inside the password, and a password may hold a blank (the URL parser
        // percent-encodes it, so such a URL is valid).
        let end = [tail.find(['\n', '\r']), tail.find("://")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// The client ranges the gateway admits when neither `gateway.allow_clients` nor
/// `access.allow_clients` says: loopback and the private ranges.
pub const GATEWAY_DEFAULT_CLIENTS: [&str; 6] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

impl GatewayConfig {
    /// The proxy the gateway goes through: `egress.proxy` when `via_egress_proxy` is on, or
    /// unset and the proxy `http://`.
    pub fn parent(&self, config: &Config) -> Result<Option<Url>, String> {
        let proxy = config.egress.parse()?.proxy;
        Ok(match self.via_egress_proxy {
            Some(false) => None,
            Some(true) => proxy,
            None => proxy.filter(|u| u.scheme() == "http"),
        })
    }

    /// `host:port` of the proxy the gateway goes through (no credentials), for messages.
    pub fn parent_shown(&self, config: &Config) -> Option<String> {
        let url = self.parent(config).ok()??;
        let port = url.port_or_known_default().unwrap_or(80);
        Some(format!("{}:{port}", url.host_str().unwrap_or("")))
    }

    /// An `egress.proxy` the gateway does not go through while `via_egress_proxy` is unset
    /// (not `http://`): `serve` says so once at start.
    pub fn parent_passed_over(&self, config: &Config) -> Option<Url> {
        let proxy = config.egress.parse().ok()?.proxy?;
        (self.via_egress_proxy.is_none() && proxy.scheme() != "http").then_some(proxy)
    }

    /// `gateway.allow` as given, else the registries' and Go's entries of `egress.allow`.
    pub fn allow_entries(&self, config: &Config) -> Vec<String> {
        if let Some(allow) = &self.allow {
            return allow.clone();
        }
        // wharf's own services: reachable by wharf, not by clients through the gateway. The
        // replicas are `peers.members`, this one (`advertise`) and those `peers.dns` names.
        let peers_dns = config.peers.as_ref().and_then(|p| {
            let name = p.dns.as_deref()?;
            let port = p.port.unwrap_or_else(|| {
                config
                    .listen
                    .0
                    .iter()
                    .find_map(|l| match l {
                        ListenAddr::Tcp(a) => Some(a.port()),
                        _ => None,
                    })
                    .unwrap_or(80)
            });
            Some(format!("http://{name}:{port}/"))
        });
        let own: Vec<Url> = config
            .shared
            .iter()
            .map(|s| s.endpoint.as_str())
            .chain(config.traces.iter().map(|t| t.endpoint.as_str()))
            .chain(config.egress.proxy.as_deref())
            .chain(
                config
                    .peers
                    .iter()
                    .flat_map(|p| p.members.iter().chain(&p.advertise).map(String::as_str)),
            )
            .chain(peers_dns.as_deref())
            .filter_map(|u| Url::parse(u).ok())
            .collect();
        config
            .egress
            .allow
            .iter()
            .filter(|e| !e.starts_with("unix:"))
            .filter(|e| {
                let Ok(entry) = AllowEntry::parse(e) else {
                    return false;
                };
                !own.iter().any(|u| {
                    let host = u.host_str().unwrap_or("").trim_end_matches('.');
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    entry.admits(&host.to_ascii_lowercase(), u.port_or_known_default())
                })
            })
            .cloned()
            .collect()
    }

    /// `gateway.allow_clients` as given, else `access.allow_clients`, else the defaults.
    pub fn client_ranges(&self, config: &Config) -> Vec<String> {
        match &self.allow_clients {
            Some(c) => c.clone(),
            None if !config.access.allow_clients.is_empty() => config.access.allow_clients.clone(),
            None => GATEWAY_DEFAULT_CLIENTS.map(String::from).to_vec(),
        }
    }

    /// The parsed client ranges; the first bad one refused with its key.
    pub fn parse_clients(&self, config: &Config) -> Result<Vec<Cidr>, String> {
        self.client_ranges(config)
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("gateway.allow_clients {c:?}: {e}")))
            .collect()
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(allow) = &self.allow {
            if allow.is_empty() {
                return invalid(
                    "gateway.allow is empty: the gateway would refuse every destination; \
                     list hosts, or leave it out for the registry and Go hosts of egress.allow"
                        .into(),
                );
            }
            if let Some(s) = allow.iter().find(|e| e.starts_with("unix:")) {
                return invalid(format!(
                    "gateway.allow {s:?}: the gateway reaches hosts, not Unix sockets"
                ));
            }
            parse_allow("gateway.allow", allow).map_err(ConfigError::Invalid)?;
        }
        self.parse_clients(config).map_err(ConfigError::Invalid)?;
        if config.listen.0.contains(&ListenAddr::Tcp(self.listen)) {
            return invalid(format!(
                "gateway.listen {} is also in listen: give the gateway a port of its own",
                self.listen
            ));
        }
        if self.require_auth && config.access.users.is_empty() && config.access.tokens.is_empty() {
            return invalid(
                "gateway.require_auth needs at least one [[access.user]] (or [[access.token]])"
                    .into(),
            );
        }
        if self.idle_timeout.is_zero() || self.max_duration.is_zero() {
            return invalid(
                "gateway.idle_timeout and gateway.max_duration must be more than 0s".into(),
            );
        }
        if self.max_tunnels == 0 {
            return invalid("gateway.max_tunnels must be at least 1".into());
        }
        if let Some(url) = self.parent(config).map_err(ConfigError::Invalid)?
            && url.scheme() != "http"
        {
            return invalid(format!(
                "gateway.via_egress_proxy: the gateway goes through an http:// egress.proxy \
                 only ({}://{} given); use the proxy's http:// port, or leave \
                 gateway.via_egress_proxy out (or false) to connect directly",
                url.scheme(),
                url.host_str().unwrap_or("")
            ));
        }
        Ok(())
    }
}

/// One `[[prefetch]]` entry: items `wharf prefetch` takes, refreshed on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchConfig {
    /// Images (`docker.io/library/alpine:3.20`, `...@sha256:...`) and Go modules
    /// (`golang.org/x/text@v0.14.0`, `@latest`, `@v1.2`).
    pub items: Vec<String>,
    /// Only these platforms of multi-platform images (`linux/amd64`); empty: every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// This entry's interval, in place of `prefetch_interval`.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub every: Option<Duration>,
    /// Also the images' referrers: signatures, SBOMs, attestations (as `--referrers`).
    #[serde(default)]
    pub referrers: bool,
}

/// Shortest refresh interval accepted (each run asks every upstream about every moving tag).
pub const MIN_PREFETCH_INTERVAL: Duration = Duration::from_secs(1);

/// Limits on what clients may send and hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Time a client has to send its request headers (slowloris defence).
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive and
    /// HTTP/2 alike; an HTTP/2 client answering pings does not keep it open).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A connection whose client stops reading a response for this long is closed outright
    /// (a slow-read client holds a descriptor and an open file per stream otherwise).
    #[serde(deserialize_with = "de_duration")]
    pub send_timeout: Duration,
    /// Requests one HTTP/2 connection may have in flight at once.
    pub max_streams_per_connection: u32,
    /// Largest request head (request line and headers) accepted.
    pub max_header_size: ByteSize,
    /// Longest request URL (path and query) accepted; longer ones get 414.
    pub max_url_length: usize,
    /// Upstream fills running at once; more wait up to `fill_queue_timeout`, then get 503.
    pub max_concurrent_fills: usize,
    /// How long a request that would start one fill too many waits for a running one to end.
    #[serde(deserialize_with = "de_duration")]
    pub fill_queue_timeout: Duration,
    /// Threads accepting and serving connections, each with its own event loop; 0 means one
    /// per CPU the process may use.
    pub workers: usize,
    /// Client connections kept open at once; past it the one idle the longest is closed (none
    /// idle: the new one is). 0: the descriptor limit (`LimitNOFILE`) less a reserve.
    pub max_connections: usize,
    /// Plain HTTP/1.1 `GET`/`HEAD` on wharf's own fast path, stored files sent with
    /// `sendfile(2)`; false: every request through hyper (copying through a buffer).
    pub zero_copy: bool,
    /// Permissions of the Unix sockets wharf creates (`listen = "unix:..."`), in octal: who
    /// may connect is decided by the file, not by `access.allow_clients`.
    pub socket_mode: String,
    /// Group given to those sockets (a name from /etc/group or a number); empty: wharf's own.
    pub socket_group: String,
}

impl ServerConfig {
    /// `socket_mode` as bits.
    pub fn socket_mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "server.socket_mode {:?}: not an octal file mode such as \"0660\"",
                    self.socket_mode
                )
            })
    }

    /// `workers`, with 0 resolved to the CPUs available.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            max_streams_per_connection: 64,
            max_header_size: ByteSize(64 << 10),
            max_url_length: 8192,
            max_concurrent_fills: 256,
            fill_queue_timeout: Duration::from_secs(5),
            workers: 0,
            zero_copy: true,
            max_connections: 0,
            socket_mode: "0660".into(),
            socket_group: String::new(),
        }
    }
}

/// The shared tier: an S3-compatible bucket every replica reads and writes. Credentials come
/// from files or the environment (`WHARF_SHARED_ACCESS_KEY_ID`,
/// `WHARF_SHARED_SECRET_ACCESS_KEY`), never from this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// The store's URL, e.g. `http://garage.internal:3900`; its host must be in `egress.allow`.
    pub endpoint: String,
    pub bucket: String,
    /// A key prefix inside the bucket, so several fleets can share one.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    /// `bucket.host` addressing instead of `host/bucket` (AWS wants it; Garage and MinIO do not).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// How often this replica reads the records other replicas wrote (tags, lists, links).
    #[serde(default = "default_sync_interval", deserialize_with = "de_duration")]
    pub sync_interval: Duration,
    /// This replica's name in the bucket's journal; default: a random name kept in the data
    /// directory (`replica-id`).
    pub replica_id: Option<String>,
    /// Budget of the bucket's objects (`blobs/`); past it, the gc replica removes the least
    /// recently used unpinned ones. 0 means no limit.
    #[serde(default)]
    pub max_size: ByteSize,
    /// Eviction brings the bucket down to this percentage of `max_size`.
    #[serde(default = "default_low_watermark")]
    pub low_watermark_percent: u8,
    /// How often each replica publishes its access times, and the gc replica measures the
    /// bucket, evicts and writes a journal snapshot.
    #[serde(
        default = "default_shared_gc_interval",
        deserialize_with = "de_duration"
    )]
    pub gc_interval: Duration,
    /// Whether this replica evicts from the bucket and snapshots the journal. Set it on exactly
    /// one replica; two are safe (deletes are idempotent) but do the work twice.
    #[serde(default)]
    pub gc: bool,
}

fn default_low_watermark() -> u8 {
    90
}

fn default_shared_gc_interval() -> Duration {
    Duration::from_secs(600)
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(2)
}

impl SharedConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        match Url::parse(&self.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return invalid(format!(
                    "shared.endpoint {:?}: must be an http:// or https:// URL with a host",
                    self.endpoint
                ));
            }
        }
        if self.bucket.is_empty() {
            return invalid("shared.bucket: required".into());
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") {
            return invalid(format!(
                "shared.prefix {:?}: a relative key prefix like \"fleet-a\"",
                self.prefix
            ));
        }
        if let Some(id) = &self.replica_id
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        {
            return invalid(format!(
                "shared.replica_id {id:?}: letters, digits, '_' and '.' only"
            ));
        }
        if self.sync_interval.is_zero() {
            return invalid("shared.sync_interval: must be more than 0".into());
        }
        if !(1..=100).contains(&self.low_watermark_percent) {
            return invalid("shared.low_watermark_percent: must be between 1 and 100".into());
        }
        if self.gc_interval.is_zero() {
            return invalid("shared.gc_interval: must be more than 0".into());
        }
        Ok(())
    }

    /// The size eviction brings the bucket down to.
    pub fn low_watermark(&self) -> u64 {
        percent_of(self.max_size.0, self.low_watermark_percent)
    }
}

/// Replicas that fill for each other: a cold object has one owner among the live replicas
/// (rendezvous hashing of its key); the others stream it from the owner instead of going
/// upstream, and fetch it themselves when the owner cannot be reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersConfig {
    /// Every replica's base URL, this one included: `["http://10.0.0.1:5000", ...]`.
    #[serde(default)]
    pub members: Vec<String>,
    /// A DNS name resolving to every replica (a Kubernetes headless Service), with or instead
    /// of `members`; each address becomes `http://<address>:<port>`.
    pub dns: Option<String>,
    /// The replicas' port for `dns`; default: this server's listen port.
    pub port: Option<u16>,
    /// How the others reach this replica (one of the members); default `http://<listen>`.
    pub advertise: Option<String>,
    /// A file holding the secret every replica sends to the others (`X-Wharf-Peer`); required.
    pub secret_file: PathBuf,
    /// How often `dns` is resolved again.
    #[serde(default = "default_peers_refresh", deserialize_with = "de_duration")]
    pub refresh: Duration,
}

fn default_peers_refresh() -> Duration {
    Duration::from_secs(10)
}

impl PeersConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.members.is_empty() && self.dns.is_none() {
            return invalid("peers: give members, dns, or both".into());
        }
        for m in self.members.iter().chain(&self.advertise) {
            match Url::parse(m) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.path() == "/"
                        && u.query().is_none() => {}
                _ => {
                    return invalid(format!(
                        "peers: {m:?} is not a replica's base URL like \"http://10.0.0.1:5000\""
                    ));
                }
            }
        }
        if self.dns.is_some() && self.advertise.is_none() {
            return invalid(
                "peers.advertise: required with peers.dns (this replica's own address, e.g. \"http://10.0.0.1:5000\")".into(),
            );
        }
        if let Some(a) = &self.advertise
            && self.dns.is_none()
            && !self.members.iter().any(|m| same_url(m, a))
        {
            return invalid(format!("peers.advertise {a:?} is not one of peers.members"));
        }
        Ok(())
    }
}

/// Two base URLs naming the same replica (trailing slash and default port aside).
pub fn same_url(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

/// The disk budget and eviction.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Size the store may grow to before least-recently-used unpinned content is evicted;
    /// 0 means no limit.
    pub max_size: ByteSize,
    /// Eviction brings the store down to this percentage of `max_size`, so it does not run
    /// again at once.
    pub low_watermark_percent: u8,
    /// How often the store size is checked.
    #[serde(deserialize_with = "de_duration")]
    pub gc_interval: Duration,
    /// How often access times, kept in memory on the hit path, are written to the index.
    #[serde(deserialize_with = "de_duration")]
    pub atime_flush_interval: Duration,
    /// Memory for manifests and tag answers served most recently, so a warm manifest request
    /// reads no file and no index; 0 turns it off.
    pub manifest_memory: ByteSize,
    /// Free space kept on the data directory's file system: a fill that would cross it evicts
    /// first, and goes to its clients without being stored when that is not enough.
    pub min_free: MinFree,
}

/// Free space to keep: a size, or a percentage of the file system (`"5%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    Percent(u8),
}

impl MinFree {
    /// The bytes to keep free on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => percent_of(total, p),
        }
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Bytes(n) => write!(f, "{}", ByteSize(*n)),
            MinFree::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A size written as a number or as text (`4MiB`, `5%`).
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => return Ok(MinFree::Bytes(n)),
            IntOrText::Text(t) => t,
        };
        if let Some(p) = text.trim().strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if p < 100 => Ok(MinFree::Percent(p)),
                _ => Err(serde::de::Error::custom(format!(
                    "{text:?} is not a percentage from 0% to 99%"
                ))),
            };
        }
        ByteSize::parse(&text)
            .map(|b| MinFree::Bytes(b.0))
            .map_err(serde::de::Error::custom)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: ByteSize(0),
            low_watermark_percent: 90,
            gc_interval: Duration::from_secs(60),
            atime_flush_interval: Duration::from_secs(30),
            manifest_memory: ByteSize(32 << 20),
            min_free: MinFree::Percent(1),
        }
    }
}

impl CacheConfig {
    /// The size eviction brings the store down to.
    pub fn low_watermark(&self) -> u64 {
        percent_of(self.max_size.0, self.low_watermark_percent)
    }
}

/// `percent`% of `size`, without overflow.
fn percent_of(size: u64, percent: u8) -> u64 {
    size / 100 * u64::from(percent) + size % 100 * u64::from(percent) / 100
}

/// HTTPS with a certificate and key in PEM files, re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `wharf=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The upstream used when a request names none (`registry-mirrors` clients: Docker Hub).
    pub default_upstream: String,
    /// How long a tag -> digest answer is trusted before it is revalidated upstream with HEAD.
    #[serde(deserialize_with = "de_duration")]
    pub tag_ttl: Duration,
    /// Manifests larger than this are refused (the spec asks registries to accept at least 4 MiB).
    pub max_manifest_size: ByteSize,
    /// A blob fill stops here when no manifest declared the blob's size: an upstream sending
    /// junk under a digest cannot fill the disk before the digest check fails.
    pub max_blob_size: ByteSize,
    /// `os/architecture[/variant]` served from an index to a client that accepts no index type
    /// (as the reference registry does for schema-2-only clients).
    pub default_platform: String,
    /// Below this share of an upstream's reported pull quota (`RateLimit-Remaining` of
    /// `RateLimit-Limit`), tag answers are trusted longer (up to 10x `tag_ttl` as it runs out);
    /// 0 turns that off.
    pub rate_limit_headroom: f64,
    /// Upstream answers that serve a cached tag or tag list instead of failing the client:
    /// `auth` (401/403 on a repository that was readable), `not_found` (404 for a cached tag).
    /// Empty by default: the upstream's answer is the truth.
    pub serve_stale_on: Vec<StaleOn>,
    /// A range of a blob that is not cached yet: `upstream` forwards it at once (bytes marked
    /// unverified, checked when the one full fill completes), `wait` answers from the fill.
    pub cold_ranges: ColdRanges,
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
}

/// An upstream answer `registry.serve_stale_on` turns into the cached copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleOn {
    /// 401 or 403: the credentials broke, or the repository became private.
    Auth,
    /// 404: the tag or the repository was deleted upstream.
    NotFound,
}

/// How a range of a blob that is not cached yet is answered (`registry.cold_ranges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdRanges {
    /// Forwarded to the upstream when the fill has not reached it (lazy-pulling clients).
    Upstream,
    /// Answered from the fill: only verified bytes, after the fill gets there.
    Wait,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host name clients use for it (`docker.io`, `ghcr.io`): matched against `?ns=`
    /// and against the first component of a repository name.
    pub name: String,
    /// Base URL of its registry API; or `urls`, a pool of endpoints serving the same content.
    #[serde(default)]
    pub url: String,
    /// Several endpoints serving the same content (load balanced, health checked): URLs, or
    /// tables with a `weight` and their own credentials. Exclusive with `url`.
    #[serde(default, deserialize_with = "de_endpoints")]
    pub urls: Vec<EndpointConfig>,
    /// Prefix single-component names with `library/` (Docker Hub's official images).
    #[serde(default)]
    pub library_prefix: Option<bool>,
    /// Credentials for the token service or basic auth; the password comes from a file or an
    /// environment variable, never from this file.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
}

/// One endpoint of an upstream pool: its URL, its share of requests, and credentials of its
/// own where they differ from the upstream's. Written as a URL string, or a table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub url: String,
    /// Relative share of requests (least outstanding requests per weight). Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Credentials for this endpoint alone; default: the upstream's.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
}

fn one() -> u32 {
    1
}

impl EndpointConfig {
    pub fn new(url: &str) -> EndpointConfig {
        EndpointConfig {
            url: url.to_string(),
            weight: 1,
            username: None,
            password_file: None,
            password_env: None,
        }
    }

    /// Reads this endpoint's own password, if it has one. Errors name the source only.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        read_password(
            &self.url,
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }
}

/// An endpoint written as a URL string or as a table.
struct EndpointForm;

impl<'de> serde::de::Visitor<'de> for EndpointForm {
    type Value = EndpointConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a URL, or a table { url = \"...\", weight = 2 }")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
        Ok(EndpointConfig::new(v))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<EndpointConfig, A::Error> {
        EndpointConfig::deserialize(serde::de::value::MapAccessDeserializer::new(m))
    }
}

struct Endpoint(EndpointConfig);

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EndpointForm).map(Endpoint)
    }
}

fn de_endpoints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EndpointConfig>, D::Error> {
    Ok(Vec::<Endpoint>::deserialize(d)?
        .into_iter()
        .map(|e| e.0)
        .collect())
}

/// One entry of `go.upstreams`: a GOPROXY URL, or a list of endpoints serving the same content
/// (a pool: `[["https://a", { url = "https://b", weight = 2 }], "https://proxy.golang.org"]`).
#[derive(Debug, Clone, PartialEq)]
pub struct GoUpstream(pub Vec<EndpointConfig>);

impl GoUpstream {
    pub fn url(url: &str) -> GoUpstream {
        GoUpstream(vec![EndpointConfig::new(url)])
    }

    /// The endpoints' URLs, `|`-joined: how messages and `/healthz` name this source.
    pub fn label(&self) -> String {
        let urls: Vec<&str> = self.0.iter().map(|e| e.url.as_str()).collect();
        urls.join("|")
    }
}

impl<'de> Deserialize<'de> for GoUpstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = GoUpstream;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a GOPROXY URL, or a list of URLs serving the same content (a pool)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GoUpstream, E> {
                Ok(GoUpstream::url(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<GoUpstream, A::Error> {
                let mut out = Vec::new();
                while let Some(Endpoint(e)) = seq.next_element()? {
                    out.push(e);
                }
                Ok(GoUpstream(out))
            }
        }
        d.deserialize_any(Form)
    }
}

/// The Go module proxy under `/go/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoConfig {
    /// Serve `/go/` at all.
    pub enabled: bool,
    /// Upstream GOPROXY URLs, tried in order; the next only when one says "not found". An
    /// entry that is a list is a pool of endpoints serving the same content.
    pub upstreams: Vec<GoUpstream>,
    /// How long `@v/list` and `@latest` answers are trusted before upstream is asked again.
    #[serde(deserialize_with = "de_duration")]
    pub list_ttl: Duration,
    /// How long a "not found" is remembered (the go command probes every path prefix).
    #[serde(deserialize_with = "de_duration")]
    pub not_found_ttl: Duration,
    /// Check `.mod` and `.zip` from public upstreams against the checksum database before
    /// storing them.
    pub verify: bool,
    /// How long partial sumdb tiles are reused before upstream is asked again.
    #[serde(deserialize_with = "de_duration")]
    pub sumdb_ttl: Duration,
    #[serde(rename = "sumdb")]
    pub sumdbs: Vec<SumdbConfig>,
    #[serde(rename = "private")]
    pub private: Vec<PrivateModuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SumdbConfig {
    /// The database name clients use (`GOSUMDB`), e.g. `sum.golang.org`.
    pub name: String,
    /// Its verifier key, `<name>+<hash>+<key>`.
    pub key: String,
    /// Where it is served; default `https://<name>`.
    #[serde(default)]
    pub url: Option<String>,
}

/// Modules that never go to public upstreams or the public checksum database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateModuleConfig {
    /// GOPRIVATE-style patterns, comma-separated (`corp.example.com`, `*.corp.example.com/x`).
    pub pattern: String,
    /// A directory in the go command's `cache/download` layout.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Or a GOPROXY URL, optionally with basic auth.
    #[serde(default)]
    pub url: Option<String>,
    /// Or several GOPROXY endpoints serving the same content (a pool).
    #[serde(default, deserialize_with = "de_endpoints")]
    pub urls: Vec<EndpointConfig>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
}

/// The verifier key of sum.golang.org (`golang/go:src/cmd/go/internal/modfetch/key.go`).
pub const SUM_GOLANG_ORG_KEY: &str =
    "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

impl Default for GoConfig {
    fn default() -> Self {
        GoConfig {
            enabled: true,
            upstreams: vec![GoUpstream::url("https://proxy.golang.org")],
            list_ttl: Duration::from_secs(60),
            not_found_ttl: Duration::from_secs(60),
            verify: true,
            sumdb_ttl: Duration::from_secs(60),
            sumdbs: vec![SumdbConfig {
                name: "sum.golang.org".into(),
                key: SUM_GOLANG_ORG_KEY.into(),
                url: None,
            }],
            private: Vec::new(),
        }
    }
}

impl SumdbConfig {
    pub fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.name))
            .trim_end_matches('/')
            .to_string()
    }
}

impl PrivateModuleConfig {
    /// Its GOPROXY endpoints (`urls`, or `url` alone); none for a `dir` source.
    pub fn endpoints(&self) -> Vec<EndpointConfig> {
        match &self.url {
            Some(u) => vec![EndpointConfig::new(u)],
            None => self.urls.clone(),
        }
    }

    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        read_password(
            &self.pattern,
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Hosts wharf may connect to: exact names or a leading `*.` wildcard (subdomains only),
    /// each optionally `host:port` to allow that port only (a bare host allows every port). The
    /// upstream's credentials go to a token realm on another scheme or port only when a
    /// `host:port` entry names it.
    pub allow: Vec<String>,
    /// Time to establish a TCP (and TLS) connection.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Longest silence while reading a response; there is no whole-request timeout, so large
    /// layers on slow links still complete.
    #[serde(deserialize_with = "de_duration")]
    pub read_timeout: Duration,
    /// Redirect hops followed per request (blob CDNs need one).
    pub max_redirects: usize,
    /// Address ranges wharf may connect to although they are loopback, private, link-local,
    /// CGNAT or unique-local (refused by default, so a name cannot lead wharf to internal
    /// services or cloud metadata).
    pub allow_cidrs: Vec<String>,
    /// Names pinned to addresses, bypassing DNS (sites without DNS, or to pin a mirror).
    pub resolve: std::collections::BTreeMap<String, Vec<String>>,
    /// An HTTP(S) proxy for all outbound requests; the host allowlist still applies to targets.
    pub proxy: Option<String>,
    /// Connection failures in a row after which an upstream is marked down (answered from
    /// cache at once, without waiting for timeouts).
    pub failure_threshold: u32,
    /// How often a down upstream is probed in the background.
    #[serde(deserialize_with = "de_duration")]
    pub probe_interval: Duration,
    /// How long an endpoint of a pool is skipped after a failure (connection refused, timeout,
    /// 5xx, body cut); doubled for each failure in a row.
    #[serde(deserialize_with = "de_duration")]
    pub ejection_time: Duration,
    /// The longest an endpoint is skipped, however often it failed.
    #[serde(deserialize_with = "de_duration")]
    pub max_ejection_time: Duration,
}

/// One place to listen: a TCP address, or a Unix socket's path (`unix:/run/wharf/wharf.sock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{s:?}: a Unix socket needs an absolute path, e.g. unix:/run/wharf/wharf.sock"
                ));
            }
            return Ok(ListenAddr::Unix(path.to_path_buf()));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?}: neither host:port (e.g. 127.0.0.1:5000) nor unix:/path/to.sock")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `listen`: one address (a string, as before) or a list of them; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen(pub Vec<ListenAddr>);

impl Listen {
    /// The first TCP address, what other machines and the `wharf` commands reach by default.
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.0.iter().find_map(|a| match a {
            ListenAddr::Tcp(t) => Some(*t),
            ListenAddr::Unix(_) => None,
        })
    }

    /// The first Unix socket's path.
    pub fn unix(&self) -> Option<&Path> {
        self.0.iter().find_map(|a| match a {
            ListenAddr::Unix(p) => Some(p.as_path()),
            ListenAddr::Tcp(_) => None,
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let raw = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "listen: expected \"host:port\", \"unix:/path\" or a list of them",
            )
        })? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        if raw.is_empty() {
            return Err(serde::de::Error::custom(
                "listen: the list is empty; give at least one address",
            ));
        }
        raw.iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format!("listen {e}")))
            })
            .collect::<Result<_, _>>()
            .map(Listen)
    }
}

/// The socket's path of an upstream URL `unix:///run/registry/registry.sock`; `None` for
/// any other URL.
pub fn unix_socket_url(url: &str) -> Option<PathBuf> {
    let path = Path::new(url.strip_prefix("unix://")?);
    path.is_absolute().then(|| path.to_path_buf())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Listen(vec![ListenAddr::Tcp(SocketAddr::from((
                [127, 0, 0, 1],
                5000,
            )))]),
            data_dir: default_data_dir(),
            offline: false,
            log: LogConfig::default(),
            server: ServerConfig::default(),
            tls: None,
            registry: RegistryConfig::default(),
            go: GoConfig::default(),
            access: Default::default(),
            cache: CacheConfig::default(),
            egress: EgressConfig::default(),
            shared: None,
            peers: None,
            traces: None,
            gateway: None,
            prefetch_interval: Duration::from_secs(6 * 3600),
            prefetch: Vec::new(),
        }
    }
}

impl Config {
    /// `[[prefetch]]`: entries name something, intervals are not too short. (Items and
    /// platforms are parsed as `wharf prefetch` parses them, by `app::Checked`.)
    fn validate_prefetch(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.prefetch_interval < MIN_PREFETCH_INTERVAL {
            return invalid(format!(
                "prefetch_interval must be at least {}",
                humantime::format_duration(MIN_PREFETCH_INTERVAL)
            ));
        }
        for (i, p) in self.prefetch.iter().enumerate() {
            if p.items.is_empty() {
                return invalid(format!("prefetch[{i}].items is empty"));
            }
            if p.every.is_some_and(|d| d < MIN_PREFETCH_INTERVAL) {
                return invalid(format!(
                    "prefetch[{i}].every must be at least {}",
                    humantime::format_duration(MIN_PREFETCH_INTERVAL)
                ));
            }
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            default_upstream: DOCKER_HUB_NAME.into(),
            tag_ttl: Duration::from_secs(5 * 60),
            max_manifest_size: ByteSize(4 << 20),
            max_blob_size: ByteSize(16 << 30),
            default_platform: "linux/amd64".into(),
            rate_limit_headroom: 0.2,
            serve_stale_on: Vec::new(),
            cold_ranges: ColdRanges::Upstream,
            upstreams: vec![UpstreamConfig {
                name: DOCKER_HUB_NAME.into(),
                url: DOCKER_HUB_URL.into(),
                urls: Vec::new(),
                library_prefix: Some(true),
                username: None,
                password_file: None,
                password_env: None,
            }],
        }
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow: [
                "registry-1.docker.io",
                "auth.docker.io",
                "production.cloudflare.docker.com",
                "production.cloudfront.docker.com",
                "*.r2.cloudflarestorage.com",
                "proxy.golang.org",
                "sum.golang.org",
            ]
            .map(String::from)
            .to_vec(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_redirects: 5,
            allow_cidrs: Vec::new(),
            resolve: Default::default(),
            proxy: None,
            failure_threshold: 3,
            probe_interval: Duration::from_secs(10),
            ejection_time: Duration::from_secs(5),
            max_ejection_time: Duration::from_secs(300),
        }
    }
}

/// The `[egress]` entries, parsed: what `EgressPolicy::from_config` is built from.
#[derive(Debug, Clone)]
pub struct ParsedEgress {
    pub allow: Vec<AllowEntry>,
    /// `unix:` entries of `egress.allow`: socket paths.
    pub allow_sockets: Vec<PathBuf>,
    pub allow_cidrs: Vec<Cidr>,
    /// `egress.resolve`, names as written, addresses in canonical form.
    pub resolve: Vec<(String, Vec<IpAddr>)>,
    pub proxy: Option<Url>,
}

impl EgressConfig {
    /// Parses every entry, refusing the first bad one with its key.
    pub fn parse(&self) -> Result<ParsedEgress, String> {
        let allow = parse_egress_allow(&self.allow)?;
        let allow_sockets = parse_egress_sockets(&self.allow)?;
        let allow_cidrs = self
            .allow_cidrs
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("egress.allow_cidrs {c:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let resolve = self
            .resolve
            .iter()
            .map(|(host, addrs)| {
                let ips = addrs
                    .iter()
                    .map(|a| {
                        a.parse::<IpAddr>().map(canonical_ip).map_err(|_| {
                            format!("egress.resolve {host:?}: {a:?} is not an IP address")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((host.clone(), ips))
            })
            .collect::<Result<_, String>>()?;
        let proxy = self
            .proxy
            .as_ref()
            // Not the value itself: it may carry the proxy's password.
            .map(|proxy| Url::parse(proxy).map_err(|e| format!("egress.proxy is not a URL: {e}")))
            .transpose()?;
        Ok(ParsedEgress {
            allow,
            allow_sockets,
            allow_cidrs,
            resolve,
            proxy,
        })
    }
}

/// `egress.allow` host entries, parsed; the first bad one is refused with its text. Socket
/// entries (`unix:/path`) are `parse_egress_sockets`'s.
pub fn parse_egress_allow(allow: &[String]) -> Result<Vec<AllowEntry>, String> {
    parse_allow("egress.allow", allow)
}

/// Host entries of the allowlist `key` (`egress.allow`, `gateway.allow`), parsed; socket
/// entries are skipped.
pub fn parse_allow(key: &str, allow: &[String]) -> Result<Vec<AllowEntry>, String> {
    allow
        .iter()
        .filter(|p| !p.starts_with("unix:"))
        .map(|p| AllowEntry::parse(p).map_err(|e| format!("{key} {p:?}: {e}")))
        .collect()
}

/// The Unix sockets `egress.allow` names (`unix:/run/registry/registry.sock`): each admits
/// that very path, and nothing else admits a socket.
pub fn parse_egress_sockets(allow: &[String]) -> Result<Vec<PathBuf>, String> {
    allow
        .iter()
        .filter_map(|p| p.strip_prefix("unix:").map(|path| (p, path)))
        .map(|(p, path)| {
            let path = Path::new(path);
            if path.is_absolute() {
                Ok(path.to_path_buf())
            } else {
                Err(format!(
                    "egress.allow {p:?}: a socket entry needs an absolute path, e.g. unix:/run/registry/registry.sock"
                ))
            }
        })
        .collect()
}

/// Client access control (`[access]`); off unless something is configured. `AccessControl`
/// in `access` enforces it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Client address ranges allowed at all; empty means every client.
    pub allow_clients: Vec<String>,
    /// Require authentication for every request (except `/healthz`).
    pub require_auth: bool,
    /// The realm named in `WWW-Authenticate: Basic realm=...`.
    pub realm: String,
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    #[serde(rename = "token")]
    pub tokens: Vec<TokenConfig>,
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            allow_clients: Vec::new(),
            require_auth: false,
            realm: "wharf".into(),
            users: Vec::new(),
            tokens: Vec::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An argon2 PHC string from `wharf hash-password`.
    pub password_hash: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A label for logs.
    pub name: String,
    /// SHA-256 of the token, lower-case hex (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `registry` (paths under /v2/) or `go` (paths under /go/).
    pub protocol: Protocol,
    /// A prefix of the path after `/v2/` or `/go/`, as clients send it (Go paths case-escaped).
    pub prefix: String,
    pub require_auth: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Registry,
    Go,
}

impl Protocol {
    pub fn of_path(path: &str) -> Option<(Protocol, &str)> {
        if let Some(rest) = path.strip_prefix("/v2/") {
            Some((Protocol::Registry, rest))
        } else if path == "/v2" {
            Some((Protocol::Registry, ""))
        } else {
            path.strip_prefix("/go/").map(|rest| (Protocol::Go, rest))
        }
    }
}

/// The `[access]` entries, parsed: what `AccessControl::new` is built from.
#[derive(Debug, Clone)]
pub struct ParsedAccess {
    pub allow_clients: Vec<Cidr>,
    /// In config order, names unique.
    pub users: Vec<(String, PasswordHash)>,
    /// The SHA-256 of each token.
    pub tokens: Vec<[u8; 32]>,
}

impl AccessConfig {
    /// Parses every entry, refusing the first bad one with its key and name.
    pub fn parse(&self) -> Result<ParsedAccess, String> {
        let allow_clients = self
            .allow_clients
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("access.allow_clients {c:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let mut users: Vec<(String, PasswordHash)> = Vec::new();
        for u in &self.users {
            if u.name.trim().is_empty() || u.name.contains(':') {
                return Err(format!(
                    "access.user {:?}: name must not be blank or contain ':' (basic auth could not carry it)",
                    u.name
                ));
            }
            let hash = parse_password_hash(&u.password_hash)
                .map_err(|e| format!("access.user {:?}: password_hash {e}", u.name))?;
            if users.iter().any(|(name, _)| *name == u.name) {
                return Err(format!("access.user {:?} appears twice", u.name));
            }
            users.push((u.name.clone(), hash));
        }
        let empty: [u8; 32] = Sha256::digest(b"").into();
        let tokens = self
            .tokens
            .iter()
            .map(|t| {
                let bytes = hex::decode(t.sha256.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        format!("access.token {:?}: sha256 must be 64 hex digits", t.name)
                    })?;
                if bytes == empty {
                    return Err(format!(
                        "access.token {:?}: sha256 is the SHA-256 of the empty string, a token \
                         no client may use; set it to `printf %s \"$TOKEN\" | sha256sum` of a real token",
                        t.name
                    ));
                }
                Ok(bytes)
            })
            .collect::<Result<_, String>>()?;
        Ok(ParsedAccess {
            allow_clients,
            users,
            tokens,
        })
    }
}

/// A `password_hash` as `wharf hash-password` writes it: argon2, with parameters, salt and
/// output (a hash without an output would be refused instantly, unlike every other).
fn parse_password_hash(s: &str) -> Result<PasswordHash, String> {
    let hash = PasswordHash::new(s)
        .map_err(|e| format!("is not a PHC string from `wharf hash-password`: {e}"))?;
    argon2::Algorithm::try_from(hash.algorithm.as_str())
        .map_err(|e| format!("is not an argon2 hash: {e}"))?;
    if let Some(v) = hash.version {
        argon2::Version::try_from(v).map_err(|e| format!("has an unknown argon2 version: {e}"))?;
    }
    argon2::Params::try_from(&hash).map_err(|e| format!("has invalid argon2 parameters: {e}"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("lacks a salt or an output; make one with `wharf hash-password`".into());
    }
    Ok(hash)
}

/// The data directory when neither config nor flag names one: systemd's `STATE_DIRECTORY`, else
/// `$XDG_STATE_HOME/wharf`, else `~/.local/state/wharf`, else `./wharf-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several colon-separated directories; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&state).join("wharf");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Path::new(&home).join(".local/state/wharf");
    }
    PathBuf::from("wharf-data")
}

impl Config {
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, None)
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path` without validating it: for merging command-line flags first, then
    /// validating once (`app::Checked::new`, or `cli::ConfigArgs::load` for the tools).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::deserialize(&text, Some(path))
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = Self::deserialize(text, path)?;
        config.validate()?;
        Ok(config)
    }

    fn deserialize(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            // The message quotes the line, which may hold a URL with a password (egress.proxy).
            message: mask_userinfo(&e.to_string()),
        })
    }

    /// Checks what serde cannot: cross-references, URL shapes, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.validate_prefetch()?;
        if let Some(t) = &self.traces {
            t.validate()?;
        }
        self.server
            .socket_mode_bits()
            .map_err(ConfigError::Invalid)?;
        if let Some(shared) = &self.shared {
            shared.validate()?;
        }
        if let Some(peers) = &self.peers {
            peers.validate()?;
        }
        if let Some(gateway) = &self.gateway {
            gateway.validate(self)?;
        }
        let reg = &self.registry;
        if reg.upstreams.is_empty() {
            return invalid("registry.upstream: at least one upstream is required".into());
        }
        for (i, up) in reg.upstreams.iter().enumerate() {
            if up.name.is_empty()
                || up.name.contains('/')
                || up.name != up.name.to_ascii_lowercase()
            {
                return invalid(format!(
                    "registry.upstream[{i}].name {:?}: must be a lower-case host name like \"ghcr.io\"",
                    up.name
                ));
            }
            if reg.upstreams[..i].iter().any(|u| u.name == up.name) {
                return invalid(format!(
                    "registry.upstream: name {:?} appears twice",
                    up.name
                ));
            }
            let eps = match (up.url.is_empty(), up.urls.is_empty()) {
                (false, true) => vec![EndpointConfig::new(&up.url)],
                (true, false) => up.urls.clone(),
                (false, false) => {
                    return invalid(format!(
                        "registry.upstream[{i}] ({}): set url or urls, not both",
                        up.name
                    ));
                }
                (true, true) => {
                    return invalid(format!(
                        "registry.upstream[{i}] ({}): url (or urls, a pool) is required",
                        up.name
                    ));
                }
            };
            for (j, ep) in eps.iter().enumerate() {
                let key = if up.urls.is_empty() {
                    format!("registry.upstream[{i}].url")
                } else {
                    format!("registry.upstream[{i}].urls[{j}]")
                };
                check_endpoint(&key, ep, true)?;
                if up.urls[..j.min(up.urls.len())]
                    .iter()
                    .any(|e| same_url(&e.url, &ep.url))
                {
                    return invalid(format!("{key} {:?} appears twice", ep.url));
                }
            }
            if up.password_file.is_some() && up.password_env.is_some() {
                return invalid(format!(
                    "registry.upstream[{i}]: set password_file or password_env, not both"
                ));
            }
            if (up.password_file.is_some() || up.password_env.is_some()) && up.username.is_none() {
                return invalid(format!(
                    "registry.upstream[{i}]: a password needs a username"
                ));
            }
        }
        if !reg.upstreams.iter().any(|u| u.name == reg.default_upstream) {
            return invalid(format!(
                "registry.default_upstream {:?} is not the name of any registry.upstream",
                reg.default_upstream
            ));
        }
        if reg.max_manifest_size.0 < 4 << 20 {
            return invalid(
                "registry.max_manifest_size must be at least 4MiB (the OCI spec's minimum)".into(),
            );
        }
        if !(0.0..=1.0).contains(&reg.rate_limit_headroom) {
            return invalid("registry.rate_limit_headroom must be between 0 and 1".into());
        }
        let parts: Vec<&str> = reg.default_platform.split('/').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return invalid(format!(
                "registry.default_platform {:?} is not os/architecture[/variant], e.g. \"linux/amd64\" or \"linux/arm64/v8\"",
                reg.default_platform
            ));
        }
        if reg.max_blob_size.0 == 0 {
            return invalid("registry.max_blob_size must be more than 0".into());
        }
        self.validate_go()?;
        self.access.parse().map_err(ConfigError::Invalid)?;
        if !(1..=100).contains(&self.cache.low_watermark_percent) {
            return invalid("cache.low_watermark_percent must be between 1 and 100".into());
        }
        if self.server.max_header_size.0 < 8192 {
            return invalid(
                "server.max_header_size must be at least 8KiB (HTTP's smallest buffer)".into(),
            );
        }
        if self.server.max_streams_per_connection == 0 {
            return invalid("server.max_streams_per_connection must be at least 1".into());
        }
        if self.server.send_timeout.is_zero() {
            return invalid("server.send_timeout must be more than 0s".into());
        }
        if self.server.max_concurrent_fills == 0 {
            return invalid("server.max_concurrent_fills must be at least 1".into());
        }
        let egress = self.egress.parse().map_err(ConfigError::Invalid)?;
        if let Some(url) = &egress.proxy
            && !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h")
        {
            return invalid(format!(
                "egress.proxy {}://{}: use an http:// or https:// URL",
                url.scheme(),
                url.host_str().unwrap_or("")
            ));
        }
        if self.egress.max_ejection_time < self.egress.ejection_time {
            return invalid(
                "egress.max_ejection_time must be at least egress.ejection_time".into(),
            );
        }
        if self.egress.max_redirects > 20 {
            return invalid("egress.max_redirects must be at most 20".into());
        }
        Ok(())
    }

    fn validate_go(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let check_url = |key: &str, u: &str| -> Result<(), ConfigError> {
            let url =
                Url::parse(u).map_err(|e| ConfigError::Invalid(format!("{key} {u:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::Invalid(format!(
                    "{key} {u:?}: must be an http:// or https:// URL with a host"
                )));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{key}: put credentials in username / password_file, not in the URL"
                )));
            }
            Ok(())
        };
        for (i, u) in self.go.upstreams.iter().enumerate() {
            if u.0.is_empty() {
                return invalid(format!("go.upstreams[{i}]: an empty pool"));
            }
            for (j, ep) in u.0.iter().enumerate() {
                let key = format!("go.upstreams[{i}][{j}]");
                check_endpoint(&key, ep, true)?;
                if ep.username.is_some() {
                    return invalid(format!(
                        "{key}: credentials belong to go.private sources, not public upstreams"
                    ));
                }
            }
        }
        for (i, db) in self.go.sumdbs.iter().enumerate() {
            if !db.key.starts_with(&format!("{}+", db.name)) {
                return invalid(format!(
                    "go.sumdb[{i}]: key must start with the database name {:?}",
                    db.name
                ));
            }
            check_url(&format!("go.sumdb[{i}].url"), &db.url())?;
        }
        for (i, p) in self.go.private.iter().enumerate() {
            if p.pattern.split(',').all(|s| s.trim().is_empty()) {
                return invalid(format!("go.private[{i}].pattern is empty"));
            }
            match (&p.dir, &p.url, p.urls.is_empty()) {
                (Some(_), None, true) => {}
                (None, Some(u), true) => check_endpoint(
                    &format!("go.private[{i}].url"),
                    &EndpointConfig::new(u),
                    true,
                )?,
                (None, None, false) => {
                    for (j, ep) in p.urls.iter().enumerate() {
                        check_endpoint(&format!("go.private[{i}].urls[{j}]"), ep, true)?;
                    }
                }
                _ => {
                    return invalid(format!(
                        "go.private[{i}] ({}): set exactly one of dir, url and urls",
                        p.pattern
                    ));
                }
            }
            if p.password_file.is_some() && p.password_env.is_some() {
                return invalid(format!(
                    "go.private[{i}]: set password_file or password_env, not both"
                ));
            }
            let has_secret = p.password_file.is_some() || p.password_env.is_some();
            if has_secret && p.username.is_none() {
                return invalid(format!("go.private[{i}]: a password needs a username"));
            }
            let own = p.urls.iter().any(|e| e.username.is_some());
            if p.dir.is_some() && (has_secret || p.username.is_some() || own) {
                return invalid(format!(
                    "go.private[{i}]: username and password apply to url sources, not dir"
                ));
            }
        }
        Ok(())
    }

    /// The upstream named `name`, if configured.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.registry.upstreams.iter().find(|u| u.name == name)
    }
}

impl UpstreamConfig {
    /// Its endpoints: `urls`, or `url` alone.
    pub fn endpoints(&self) -> Vec<EndpointConfig> {
        if self.urls.is_empty() {
            vec![EndpointConfig::new(&self.url)]
        } else {
            self.urls.clone()
        }
    }

    /// Docker Hub gets `library/` by default; others only when configured.
    pub fn library_prefix(&self) -> bool {
        self.library_prefix.unwrap_or(self.name == DOCKER_HUB_NAME)
    }

    /// Reads the configured password. Errors name the source, never the secret.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        read_password(
            &self.name,
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }
}

/// A password from a file (trailing newline dropped) or an environment variable.
/// One endpoint's URL (http(s), or a Unix socket where `socket` allows it; no credentials in
/// it), its weight and its own credentials' shape.
fn check_endpoint(key: &str, ep: &EndpointConfig, socket: bool) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let u = &ep.url;
    if socket && u.starts_with("unix:") {
        if unix_socket_url(u).is_none() {
            return invalid(format!(
                "{key} {u:?}: a socket upstream is unix:// and an absolute path, e.g. unix:///run/registry/registry.sock"
            ));
        }
    } else {
        let url = Url::parse(u).map_err(|e| ConfigError::Invalid(format!("{key} {u:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return invalid(format!(
                "{key} {u:?}: must be an http:// or https:// URL with a host"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return invalid(format!(
                "{key}: put credentials in username / password_file, not in the URL"
            ));
        }
    }
    if ep.weight == 0 {
        return invalid(format!("{key}: weight must be at least 1"));
    }
    if ep.password_file.is_some() && ep.password_env.is_some() {
        return invalid(format!(
            "{key}: set password_file or password_env, not both"
        ));
    }
    if (ep.password_file.is_some() || ep.password_env.is_some()) && ep.username.is_none() {
        return invalid(format!("{key}: a password needs a username"));
    }
    Ok(())
}

fn read_password(
    owner: &str,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(ConfigError::Invalid(format!(
                "{owner:?}: environment variable {var} (password_env) is not set"
            ))),
        };
    }
    Ok(None)
}

/// A byte count written as an integer or a string such as `"4MiB"`, `"512KiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size like 4MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => Ok(ByteSize(n)),
            IntOrText::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"30s\" or \"5m\": {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_never_quotes_a_password() {
        let err = Config::from_toml_str(
            "[egress]\nproxy = \"http://corp:S3cret\"Pass@proxy.corp:3128\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("S3cret"), "{err}");
        assert_eq!(
            mask_userinfo("a http://u:p@h:1/x and https://h/ and s3://k@b, \"http://x:y@z\""),
            "a http://***@h:1/x and https://h/ and s3://***@b, \"http://***@z\""
        );
        assert_eq!(
            mask_userinfo("3 | proxy = \"http://corp:pa ss@proxy.corp:3128\n  |  ^\nx@y"),
            "3 | proxy = \"http://***@proxy.corp:3128\n  |  ^\nx@y"
        );
    }

    #[test]
    fn listen_is_one_address_or_a_list_of_tcp_and_unix_sockets() {
        let c = Config::from_toml_str("listen = \"0.0.0.0:5000\"").unwrap();
        assert_eq!(c.listen.0.len(), 1);
        let c =
            Config::from_toml_str("listen = [\"127.0.0.1:5000\", \"unix:/run/wharf/wharf.sock\"]")
                .unwrap();
        assert_eq!(c.listen.tcp().unwrap().port(), 5000);
        assert_eq!(c.listen.unix().unwrap(), Path::new("/run/wharf/wharf.sock"));
        assert_eq!(
            c.listen.to_string(),
            "127.0.0.1:5000, unix:/run/wharf/wharf.sock"
        );
        for (bad, says) in [
            ("listen = []", "empty"),
            ("listen = \"unix:wharf.sock\"", "absolute path"),
            ("listen = \"localhost\"", "neither host:port"),
            ("[server]\nsocket_mode = \"rw\"", "server.socket_mode"),
            (
                "[registry]\ndefault_upstream = \"l\"\n[[registry.upstream]]\nname = \"l\"\nurl = \"unix://run/r.sock\"",
                "absolute path",
            ),
            ("[go]\nupstreams = [\"unix://go.sock\"]", "absolute path"),
            (
                "[[go.private]]\npattern = \"corp.example\"\nurl = \"unix:go.sock\"",
                "absolute path",
            ),
        ] {
            let e = Config::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let c = Config::from_toml_str(
            "[registry]\ndefault_upstream = \"l\"\n[[registry.upstream]]\nname = \"l\"\nurl = \"unix:///run/r.sock\"",
        )
        .unwrap();
        assert_eq!(
            unix_socket_url(&c.registry.upstreams[0].url).unwrap(),
            Path::new("/run/r.sock")
        );
        let c = Config::from_toml_str(
            "[go]\nupstreams = [\"unix:///run/goproxy.sock\"]\n[[go.private]]\npattern = \"corp.example\"\nurl = \"unix:///run/private.sock\"",
        )
        .unwrap();
        assert_eq!(c.go.upstreams[0].0[0].url, "unix:///run/goproxy.sock");
    }

    #[test]
    fn a_traces_endpoint_with_a_password_is_refused_without_echoing_it() {
        let e = Config::from_toml_str(
            "[traces]\nendpoint = \"http://u:hunter2@otel.example/v1/traces\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("must not carry a user name or password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn empty_file_gives_defaults_that_validate() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.registry.default_upstream, "docker.io");
        assert!(c.upstream("docker.io").unwrap().library_prefix());
    }

    #[test]
    fn min_free_is_a_size_or_a_percentage() {
        let c = |v: &str| Config::from_toml_str(&format!("[cache]\nmin_free = {v}\n"));
        assert_eq!(c("\"5%\"").unwrap().cache.min_free, MinFree::Percent(5));
        assert_eq!(
            c("\"1GiB\"").unwrap().cache.min_free,
            MinFree::Bytes(1 << 30)
        );
        assert_eq!(c("0").unwrap().cache.min_free, MinFree::Bytes(0));
        assert!(c("\"100%\"").is_err());
        assert!(c("\"lots\"").is_err());
        assert_eq!(MinFree::Percent(10).bytes(1000), 100);
        assert_eq!(Config::default().cache.min_free, MinFree::Percent(1));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml_str("listn = \"0.0.0.0:5000\"").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn shared_eviction_keys_default_off_and_are_checked() {
        let base = "[shared]\nendpoint = \"http://s3.test:3900\"\nbucket = \"b\"\n";
        let c = Config::from_toml_str(base).unwrap();
        let s = c.shared.unwrap();
        assert_eq!(
            (s.max_size, s.low_watermark_percent, s.gc),
            (ByteSize(0), 90, false)
        );
        assert_eq!(s.gc_interval, Duration::from_secs(600));
        let c = Config::from_toml_str(&format!(
            "{base}max_size = \"1000\"\nlow_watermark_percent = 50\ngc = true\ngc_interval = \"1m\"\n"
        ))
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!((s.low_watermark(), s.gc), (500, true));
        for bad in [
            "low_watermark_percent = 0",
            "low_watermark_percent = 101",
            "gc_interval = \"0s\"",
        ] {
            let err = Config::from_toml_str(&format!("{base}{bad}\n")).unwrap_err();
            assert!(err.to_string().contains("shared."), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_and_sizes_parse() {
        let c =
            Config::from_toml_str("[registry]\ntag_ttl = \"90s\"\nmax_manifest_size = \"8MiB\"\n")
                .unwrap();
        assert_eq!(c.registry.tag_ttl, Duration::from_secs(90));
        assert_eq!(c.registry.max_manifest_size, ByteSize(8 << 20));
        assert!(Config::from_toml_str("[registry]\ntag_ttl = \"soon\"\n").is_err());
    }

    #[test]
    fn small_manifest_cap_is_refused() {
        let err = Config::from_toml_str("[registry]\nmax_manifest_size = \"1MiB\"\n").unwrap_err();
        assert!(err.to_string().contains("4MiB"), "{err}");
    }

    #[test]
    fn pools_take_urls_with_weights_and_refuse_url_and_urls_together() {
        let reg = |up: &str| {
            Config::from_toml_str(&format!(
                "[registry]\ndefault_upstream = \"p\"\n[[registry.upstream]]\nname = \"p\"\n{up}\n"
            ))
        };
        let c = reg(
            r#"urls = ["https://a.test", { url = "https://b.test", weight = 2, username = "u" }]"#,
        )
        .unwrap();
        let eps = c.registry.upstreams[0].endpoints();
        assert_eq!((eps.len(), eps[0].weight, eps[1].weight), (2, 1, 2));
        assert_eq!(eps[1].username.as_deref(), Some("u"));
        for (bad, why) in [
            (
                r#"url = "https://a.test"
urls = ["https://b.test"]"#,
                "not both",
            ),
            ("", "is required"),
            (
                r#"urls = [{ url = "https://a.test", weight = 0 }]"#,
                "weight",
            ),
            (r#"urls = ["https://a.test", "https://a.test/"]"#, "twice"),
            (r#"urls = ["ftp://a.test"]"#, "http"),
            (
                r#"urls = [{ url = "https://a.test", wieght = 2 }]"#,
                "wieght",
            ),
        ] {
            let e = reg(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let c = Config::from_toml_str(
            "[go]\nupstreams = [[\"https://a.test\", { url = \"https://b.test\", weight = 3 }], \"https://c.test\"]\n",
        )
        .unwrap();
        assert_eq!(c.go.upstreams.len(), 2);
        assert_eq!(c.go.upstreams[0].0[1].weight, 3);
        assert_eq!(c.go.upstreams[1].label(), "https://c.test");
        let e = Config::from_toml_str("[go]\nupstreams = [[]]\n").unwrap_err();
        assert!(e.to_string().contains("empty pool"), "{e}");
    }

    #[test]
    fn default_upstream_must_exist() {
        let err =
            Config::from_toml_str("[registry]\ndefault_upstream = \"nope.io\"\n").unwrap_err();
        assert!(err.to_string().contains("nope.io"), "{err}");
    }

    #[test]
    fn bad_access_and_egress_entries_are_refused_at_load_with_their_key() {
        use argon2::password_hash::PasswordHasher;
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        let user =
            |name: &str| format!("[[access.user]]\nname = {name:?}\npassword_hash = {hash:?}\n");
        for (toml, key) in [
            (
                "[egress]\nallow = [\"x.test/path\"]\n".to_string(),
                "egress.allow \"x.test/path\"",
            ),
            (
                "[egress]\nallow_cidrs = [\"10.0.0.0/33\"]\n".into(),
                "egress.allow_cidrs",
            ),
            (
                "[egress.resolve]\n\"a.test\" = [\"nope\"]\n".into(),
                "egress.resolve \"a.test\"",
            ),
            ("[egress]\nproxy = \"no url\"\n".into(), "egress.proxy"),
            (
                "[egress]\nproxy = \"ftp://p.test\"\n".into(),
                "egress.proxy",
            ),
            (
                "[access]\nallow_clients = [\"nope\"]\n".into(),
                "access.allow_clients",
            ),
            (user("a:b"), "access.user \"a:b\": name"),
            (
                format!("{}{}", user("ci"), user("ci")),
                "access.user \"ci\" appears twice",
            ),
            (
                "[[access.token]]\nname = \"t\"\nsha256 = \"zz\"\n".into(),
                "access.token \"t\"",
            ),
        ] {
            let err = Config::from_toml_str(&toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        assert!(Config::from_toml_str(&user("ci")).is_ok());
    }

    #[test]
    fn byte_sizes_print_and_parse() {
        for (t, n) in [
            ("4MiB", 4 << 20),
            ("512KiB", 512 << 10),
            ("7", 7),
            ("1GiB", 1 << 30),
        ] {
            assert_eq!(ByteSize::parse(t).unwrap().0, n);
        }
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert!(ByteSize::parse("4 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999TiB").is_err());
    }
}

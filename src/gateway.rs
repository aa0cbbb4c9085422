//! The egress gateway (`[gateway]`): an optional second listener, an HTTP/1.1 forward proxy
//! whose one job is to refuse every destination but the allowed ones. Clients that cannot be
//! pointed at the mirror (`docker login`/`push`, registries wharf does not mirror, tools that
//! know only `HTTPS_PROXY`) reach `gateway.allow`'s hosts through it and nothing else.
//!
//! One connection, one request:
//! 1. the client's address must be in the gateway's client ranges (403, before a byte is read);
//! 2. the head is read within `server.header_read_timeout` and `server.max_header_size`, and
//!    refused (400, closed) when it is ambiguous (`head`); with `gateway.require_auth` its
//!    `Proxy-Authorization` must carry `[access]` credentials (407 with `Proxy-Authenticate`),
//!    checked by `access` as `Authorization` is;
//! 3. the target: `CONNECT host:port` or `http://` absolute form; origin form and `https://`
//!    absolute form get 400 saying what to do instead;
//! 4. the destination through the gateway's `EgressPolicy` (the very code wharf's own upstream
//!    traffic goes through; `dest`), connected to an address that was checked (403 with the
//!    reason otherwise);
//! 5. the bytes (`relay`): a tunnel both ways, or the request forwarded once; then closed.
//!
//! Every exchange ends in one `wharf::gateway` log line (client, destination, status, bytes
//! each way, duration; never a header or a query) and in `metrics::GatewayMetrics`. Must not:
//! follow redirects, forward hop-by-hop headers or the proxy's credentials, connect anywhere
//! the policy did not allow, or parse anything after the head of a refused request.

mod dest;
mod head;
mod parent;
mod relay;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::access::Denied;
use crate::app::AppState;
use crate::config::Config;
use crate::net::Cidr;
use crate::upstream::EgressPolicy;

pub use dest::Refusal;
use head::{Head, HeadError, Target};
use relay::{Activity, Counted, Ended, Limits};

/// How long open tunnels may go on after shutdown starts; then they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The log target of the gateway's lines.
pub const LOG_TARGET: &str = "wharf::gateway";

/// The gateway, built once from the checked config and the application state.
pub struct Gateway {
    state: AppState,
    policy: Arc<EgressPolicy>,
    clients: Vec<Cidr>,
    require_auth: bool,
    limits: Limits,
    max_tunnels: usize,
    tunnels: Arc<Semaphore>,
    header_timeout: Duration,
    max_head: usize,
    connect_timeout: Duration,
    /// The ports of wharf's TCP listeners (`listen`, `gateway.listen`), and the one the
    /// gateway's listener got (`serve`): never destinations on this machine.
    listen_ports: Vec<u16>,
    bound: std::sync::OnceLock<u16>,
    /// `egress.proxy`, when destinations are reached through it (`parent`).
    parent: Option<parent::Parent>,
    /// `egress.proxy`'s host (normalised) and port, whichever way the gateway goes: never a
    /// destination.
    /// A tunnel to the proxy itself lets a client speak to it as wharf (or, through it, as the
    /// proxy's own host), past `gateway.allow`, and reach its management pages.
    proxy_addr: Option<(String, u16)>,
}

/// The gateway's policy from `config` (for `check-config` and `check-egress`): `gateway.allow`
/// (or its default) over `[egress]`'s address rules. `None` without `[gateway]`.
pub fn policy(config: &Config) -> Result<Option<EgressPolicy>, String> {
    let Some(g) = &config.gateway else {
        return Ok(None);
    };
    let via_proxy = g.parent(config)?.is_some();
    EgressPolicy::for_gateway(&config.egress, &g.allow_entries(config), via_proxy).map(Some)
}

impl Gateway {
    /// The gateway of `state`'s config; `None` when `[gateway]` is absent.
    pub fn new(state: &AppState) -> Result<Option<Gateway>, String> {
        let config = &state.config;
        let Some(g) = &config.gateway else {
            return Ok(None);
        };
        let policy = policy(config)?.unwrap_or_default();
        let parent = match g.parent(config)? {
            Some(url) => Some(parent::Parent::from_url(&url)?),
            None => None,
        };
        let proxy_addr = config
            .egress
            .parse()?
            .proxy
            .as_ref()
            .and_then(crate::net::url_host_port);
        Ok(Some(Gateway {
            parent,
            proxy_addr,
            state: state.clone(),
            policy: Arc::new(policy),
            clients: g.parse_clients(config)?,
            require_auth: g.require_auth,
            limits: Limits {
                idle: g.idle_timeout,
                max: g.max_duration,
            },
            max_tunnels: g.max_tunnels,
            tunnels: Arc::new(Semaphore::new(g.max_tunnels)),
            header_timeout: config.server.header_read_timeout,
            max_head: config.server.max_header_size.0 as usize,
            connect_timeout: config.egress.connect_timeout,
            listen_ports: config
                .listen
                .0
                .iter()
                .filter_map(|l| match l {
                    crate::config::ListenAddr::Tcp(a) => Some(a.port()),
                    crate::config::ListenAddr::Unix(_) => None,
                })
                .chain([g.listen.port()])
                .collect(),
            bound: std::sync::OnceLock::new(),
        }))
    }

    /// Serves `listener` until `shutdown` resolves; then stops accepting, lets open tunnels
    /// run for `SHUTDOWN_GRACE` and cuts the rest.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        if let Ok(a) = listener.local_addr() {
            let _ = self.bound.set(a.port());
        }
        let mut open = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        open.spawn(self.clone().handle(stream, peer));
                    }
                    Err(e) => {
                        tracing::warn!(target: LOG_TARGET, error = %e, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                Some(_) = open.join_next(), if !open.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let drained = async { while open.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            tracing::info!(target: LOG_TARGET, open = open.len(), "cutting gateway tunnels still open at shutdown");
            open.abort_all();
            while open.join_next().await.is_some() {}
        }
    }

    /// One client connection: its one request, refused or carried out.
    async fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        // Before reading a byte: a client outside the ranges gets no head read, parsed or kept.
        if let Err(answer) = self.admit_address(peer.ip()) {
            return Exchange::new(&self, peer, None)
                .refuse(&mut stream, answer)
                .await;
        }
        let (head, buf) = match head::read(&mut stream, self.max_head, self.header_timeout).await {
            Ok(x) => x,
            Err(HeadError::Gone) => return,
            Err(e) => {
                let answer = match e {
                    HeadError::TooLarge => {
                        Answer::new(431, "malformed", "the request head is too large")
                    }
                    HeadError::Malformed(why) => Answer::new(400, "malformed", why),
                    HeadError::Gone => return,
                };
                return Exchange::new(&self, peer, None)
                    .refuse(&mut stream, answer)
                    .await;
            }
        };
        let mut x = Exchange::new(&self, peer, Some(&head));
        if let Err(answer) = self.admit(&head).await {
            return x.refuse(&mut stream, answer).await;
        }
        // TRACE asks the next hop that reaches `Max-Forwards: 0` to echo the request back: an
        // `egress.proxy` doing so would show the client the credentials wharf added for it.
        // No registry or module client needs it.
        if head.method.eq_ignore_ascii_case("TRACE") {
            return x
                .refuse(
                    &mut stream,
                    Answer::new(405, "method", "TRACE is not carried by the gateway"),
                )
                .await;
        }
        match head.target() {
            Err(why) => {
                x.refuse(&mut stream, Answer::new(400, "malformed", why))
                    .await
            }
            Ok(Target::Origin) => {
                x.refuse(&mut stream, Answer::new(400, "origin_form", ORIGIN_FORM))
                    .await
            }
            Ok(Target::Https) => {
                x.refuse(
                    &mut stream,
                    Answer::new(400, "https_absolute", HTTPS_ABSOLUTE),
                )
                .await
            }
            Ok(Target::Connect { host, port }) => {
                x.destination = dest::shown(&host, port);
                self.tunnel(x, stream, &host, port, &buf[head.len..]).await;
            }
            Ok(Target::Http(url)) => {
                x.destination = crate::upstream::egress::redact(&url);
                let host = url.host_str().unwrap_or("");
                // As checked (and as a CONNECT's host is): lowercase, no trailing dots.
                let host =
                    crate::net::normalize_host(host.trim_start_matches('[').trim_end_matches(']'));
                let port = url.port_or_known_default().unwrap_or(80);
                self.forward(x, stream, &host, port, buf).await;
            }
        }
    }

    /// The client's address must be in the gateway's client ranges.
    fn admit_address(&self, ip: IpAddr) -> Result<(), Answer> {
        let ip = crate::net::canonical_ip(ip);
        if self.clients.iter().any(|c| c.contains(ip)) {
            Ok(())
        } else {
            let text = format!("client {ip} is not in gateway.allow_clients");
            Err(Answer::new(403, "client", text))
        }
    }

    /// The client's credentials, when `gateway.require_auth` asks for them.
    async fn admit(&self, head: &Head) -> Result<(), Answer> {
        if !self.require_auth {
            return Ok(());
        }
        let value = match head
            .header("proxy-authorization")
            .map(http::HeaderValue::from_bytes)
        {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => return Err(unauthorized("malformed Proxy-Authorization header")),
            None => None,
        };
        match self
            .state
            .access
            .check_proxy_credentials(value.as_ref())
            .await
        {
            Ok(()) => Ok(()),
            Err(Denied::Busy) => Err(Answer::new(
                503,
                "busy",
                "too many password checks at once; try again shortly",
            )),
            Err(Denied::Unauthorized(why)) => Err(unauthorized(why)),
            Err(Denied::Address) => Err(Answer::new(403, "client", "client refused")),
        }
    }

    fn own_ports(&self) -> Vec<u16> {
        self.listen_ports
            .iter()
            .chain(self.bound.get())
            .copied()
            .collect()
    }

    /// A tunnel slot and a connection to the checked destination (through `egress.proxy`: a
    /// `CONNECT` tunnel when `tunnel`, else a connection to the proxy itself), with any bytes
    /// the proxy sent past its answer; or the client answered with the refusal.
    async fn open(
        &self,
        x: &mut Exchange,
        stream: &mut TcpStream,
        host: &str,
        port: u16,
        tunnel: bool,
    ) -> Option<(OwnedSemaphorePermit, TcpStream, Vec<u8>)> {
        if self
            .proxy_addr
            .as_ref()
            .is_some_and(|(h, p)| h == host && *p == port)
        {
            let text = format!(
                "{} is egress.proxy: not a gateway destination",
                dest::shown(host, port)
            );
            x.refuse(stream, Answer::new(403, "host", text)).await;
            return None;
        }
        let slot = match self.slot() {
            Ok(s) => s,
            Err(answer) => {
                x.refuse(stream, answer).await;
                return None;
            }
        };
        let (timeout, own) = (self.connect_timeout, self.own_ports());
        let connected = match &self.parent {
            None => dest::connect(&self.policy, host, port, timeout, &own)
                .await
                .map(|(s, _)| (s, Vec::new())),
            Some(p) if tunnel => p.tunnel(&self.policy, host, port, timeout, &own).await,
            Some(p) => p
                .open(&self.policy, host, port, timeout, &own)
                .await
                .map(|s| (s, Vec::new())),
        };
        match connected {
            Ok((origin, early)) => {
                x.opened();
                Some((slot, origin, early))
            }
            Err(r) => {
                x.refused(stream, r).await;
                None
            }
        }
    }

    /// A free tunnel slot, or the 503 answer.
    fn slot(&self) -> Result<OwnedSemaphorePermit, Answer> {
        self.tunnels.clone().try_acquire_owned().map_err(|_| {
            let text = format!(
                "gateway.max_tunnels ({}) are open; try again shortly",
                self.max_tunnels
            );
            Answer::new(503, "busy", text)
        })
    }

    async fn tunnel(
        &self,
        mut x: Exchange,
        mut stream: TcpStream,
        host: &str,
        port: u16,
        early: &[u8],
    ) {
        let Some((_slot, mut origin, from_origin)) =
            self.open(&mut x, &mut stream, host, port, true).await
        else {
            return;
        };
        let mut answer = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
        answer.extend_from_slice(&from_origin);
        if stream.write_all(&answer).await.is_err() {
            x.result = "failed";
            return;
        }
        x.activity
            .to_client
            .fetch_add(from_origin.len() as u64, Ordering::Relaxed);
        x.status = 200;
        x.result = "ok";
        // Bytes the client sent after its CONNECT are the tunnel's first bytes, never a request.
        if !early.is_empty() {
            if origin.write_all(early).await.is_err() {
                x.result = "failed";
                return;
            }
            x.activity
                .to_origin
                .fetch_add(early.len() as u64, Ordering::Relaxed);
        }
        x.ended = Some(relay::tunnel(&stream, &origin, &x.activity, self.limits).await);
    }

    async fn forward(
        &self,
        mut x: Exchange,
        mut stream: TcpStream,
        host: &str,
        port: u16,
        buf: Vec<u8>,
    ) {
        let Some((_slot, origin, _)) = self.open(&mut x, &mut stream, host, port, false).await
        else {
            return;
        };
        // Through egress.proxy: absolute form to the checked destination, its credentials.
        let via = self.parent.as_ref().map(|p| relay::Via {
            authority: dest::shown(host, port),
            auth: p.auth().cloned(),
        });
        x.activity
            .to_origin
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let client = Counted::new(stream, x.activity.clone(), buf);
        let ended = relay::forward(
            client,
            origin,
            via,
            x.activity.clone(),
            self.limits,
            self.max_head,
        )
        .await;
        x.ended = Some(ended);
        // 0: no answer from the origin (the client got the gateway's 502, or nothing).
        x.status = match x.activity.status.load(Ordering::Relaxed) {
            0 => 502,
            s => {
                x.result = "ok";
                s
            }
        };
    }
}

fn unauthorized(why: &str) -> Answer {
    Answer {
        extra: "Proxy-Authenticate: Basic realm=\"wharf gateway\"\r\n",
        ..Answer::new(407, "auth", why)
    }
}

/// What an origin-form request is told.
const ORIGIN_FORM: &str = "this is a forward proxy; send CONNECT host:port or an absolute \
    http:// URL (set HTTPS_PROXY / HTTP_PROXY to this address)";

/// What an absolute-form `https://` request is told.
const HTTPS_ABSOLUTE: &str =
    "https:// URLs go through a CONNECT tunnel; send CONNECT host:443 (HTTPS_PROXY)";

/// The gateway's own answer to a request it does not carry out.
struct Answer {
    status: u16,
    /// For `wharf_gateway_refusals`; empty for failures that are not refusals.
    reason: &'static str,
    /// One line, after `wharf gateway: `.
    text: String,
    /// Extra header lines, each ending in CRLF.
    extra: &'static str,
}

impl Answer {
    fn new(status: u16, reason: &'static str, text: impl Into<String>) -> Answer {
        Answer {
            status,
            reason,
            text: text.into(),
            extra: "",
        }
    }
}

/// One exchange, logged and counted when it is dropped (however it ends, shutdown included).
struct Exchange {
    metrics: Arc<crate::metrics::Metrics>,
    peer: SocketAddr,
    method: String,
    tunnel: bool,
    destination: String,
    status: u16,
    result: &'static str,
    reason: Option<&'static str>,
    ended: Option<Ended>,
    activity: Arc<Activity>,
    open: bool,
    started: tokio::time::Instant,
}

impl Exchange {
    fn new(gateway: &Gateway, peer: SocketAddr, head: Option<&Head>) -> Exchange {
        let method = head.map_or_else(|| "-".to_string(), |h| h.method.clone());
        Exchange {
            metrics: gateway.state.metrics.clone(),
            peer,
            tunnel: method == "CONNECT",
            method,
            destination: "-".into(),
            status: 0,
            result: "failed",
            reason: None,
            ended: None,
            activity: Activity::new(),
            open: false,
            started: tokio::time::Instant::now(),
        }
    }

    fn opened(&mut self) {
        self.open = true;
        self.metrics.gateway.open.inc();
    }

    async fn refused(&mut self, stream: &mut TcpStream, r: Refusal) {
        let failure = r.reason.is_none();
        let answer = Answer::new(r.status, r.reason.unwrap_or(""), r.text);
        self.refuse(stream, answer).await;
        if failure {
            self.result = "failed";
        }
    }

    /// Answers with `answer` (`text/plain`) and closes, reading (and dropping) what the client
    /// still sends for a moment so the answer is not lost to a reset.
    async fn refuse(&mut self, stream: &mut TcpStream, answer: Answer) {
        let Answer {
            status,
            reason,
            text,
            extra,
        } = answer;
        self.status = status;
        self.result = match status {
            400 | 405 | 431 => "bad_request",
            407 => "unauthorized",
            503 => "busy",
            403 => "refused",
            _ => "failed",
        };
        if !reason.is_empty() {
            self.reason = Some(reason);
            self.metrics.gateway.refused(reason);
        }
        let body = format!("wharf gateway: {text}\n");
        let phrase = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let answer = format!(
            "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_ok() {
            self.activity
                .to_client
                .fetch_add(answer.len() as u64, Ordering::Relaxed);
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 8192];
            let linger = async {
                let mut left = 64usize << 10;
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let (up, down) = self.activity.bytes();
        let g = &self.metrics.gateway;
        g.ended(self.tunnel, self.result);
        g.moved(up, down);
        if self.open {
            g.open.dec();
        }
        let ms = self.started.elapsed().as_millis() as u64;
        tracing::info!(
            target: LOG_TARGET,
            client = %self.peer,
            method = %self.method,
            destination = %self.destination,
            status = self.status,
            result = self.result,
            reason = self.reason.unwrap_or("-"),
            ended = self.ended.map_or("-", Ended::as_str),
            to_origin = up,
            to_client = down,
            ms,
            "gateway {}",
            if self.tunnel { "tunnel" } else { "request" }
        );
    }
}

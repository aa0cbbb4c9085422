//! The egress gateway (`[gateway]`) over real sockets: refusals (hosts, loopback addresses, IP
//! literals, ambiguous heads, smuggling, clients, proxy credentials) with trap listeners that
//! must see no connection, tunnels and forwarded requests to in-process origins on port 0,
//! limits, metrics and the log line of a served wharf, and the real clients (curl, skopeo)
//! through it to a TLS `docker-registry`.
//!
//! Destinations are named `*.wharf-test` and pinned to 127.0.0.1 with `egress.resolve`; tests
//! that need to reach them open loopback with `egress.allow_cidrs`, tests of the address check
//! keep the default (loopback refused).

mod support;
use support::origin::{Origin, require_tools, skopeo_dir};
use support::*;
use support::{oci, tlsgen};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// `egress` keys that let the gateway reach loopback, with the test names pinned there.
const REACH_LOOPBACK: &str = r#"allow_cidrs = ["127.0.0.0/8"]
resolve = { "origin.wharf-test" = ["127.0.0.1"], "trap.wharf-test" = ["127.0.0.1"], "registry.wharf-test" = ["127.0.0.1"], "blocked.wharf-test" = ["127.0.0.1"] }"#;

/// The test names pinned to loopback, loopback not opened.
const PINNED_ONLY: &str =
    r#"resolve = { "origin.wharf-test" = ["127.0.0.1"], "trap.wharf-test" = ["127.0.0.1"] }"#;

const USER: &str = "builder";
const PASSWORD: &str = "tunnel pass 7";

/// wharf in-process with its gateway served on a port of its own.
struct Gate {
    wharf: Wharf,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// `egress` keys and `[gateway]` keys (besides `listen`) and any extra tables.
    async fn start(egress: &str, gateway: &str, tables: &str) -> Gate {
        let wharf = Wharf::in_temp_dir(|d| {
            WharfConfig::new(d).egress(egress).tables(&format!(
                "[gateway]\nlisten = \"127.0.0.1:9\"\n{gateway}\n{tables}"
            ))
        })
        .await;
        let gateway = wharf::gateway::Gateway::new(&wharf.state)
            .expect("gateway config")
            .expect("[gateway] is configured");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Arc::new(gateway).serve(listener, async move {
            let _ = stopped.await;
        }));
        Gate {
            wharf,
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn metrics(&self) -> String {
        wharf::ops::render(&self.wharf.state)
    }

    /// `wharf_gateway_refusals_total` for `reason`, once the metrics settle.
    async fn refusals(&self, reason: &str) -> u64 {
        let line = format!("wharf_gateway_refusals_total{{reason=\"{reason}\"}}");
        metric(&self.settled_metrics().await, &line)
    }

    /// The gateway's metrics once they stop changing (an exchange is counted when its task
    /// ends, a moment after the client saw the connection close); at most 5 s.
    async fn settled_metrics(&self) -> String {
        let gateway = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("wharf_gateway_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut last = self.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = self.metrics();
            if gateway(&now) == gateway(&last) {
                return now;
            }
            last = now;
        }
        last
    }

    /// Sends `bytes` on a new connection and reads until the gateway closes it (at most 5 s).
    async fn exchange(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the gateway closes the connection after its answer")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `CONNECT dest` and its answer's head; the stream is the tunnel when that was 200.
    async fn connect(&self, dest: &str, extra: &str) -> (String, TcpStream) {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        (head, s)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("the gateway stops after the shutdown signal")
            .unwrap();
    }
}

/// Reads one answer's head (up to the blank line), byte by byte so nothing after it is taken.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A listener that counts the connections it gets; none may arrive in a refusal test.
async fn trap() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

async fn assert_untouched(hits: &AtomicUsize) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the trap got a connection");
}

/// An origin that echoes every byte back; the count of connections it accepted.
async fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, conns)
}

/// An HTTP origin: `/` answers `hello from origin`, `/moved` redirects elsewhere; every
/// request's headers are kept.
async fn web_origin() -> (SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    use axum::response::IntoResponse;
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new()
        .route("/", axum::routing::any(|| async { "hello from origin" }))
        .route(
            "/moved",
            axum::routing::get(|| async {
                (
                    http::StatusCode::FOUND,
                    [("location", "http://trap.wharf-test/elsewhere")],
                )
                    .into_response()
            }),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(req.headers().clone());
                    next.run(req).await
                }
            },
        ));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, seen)
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// Each named sample of `text` has its value (a missing one counts as 0).
fn assert_metrics(text: &str, want: &[(&str, u64)]) {
    for (line_start, value) in want {
        assert_eq!(metric(text, line_start), *value, "{line_start}\n{text}");
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| wharf::access::hash_password(PASSWORD).expect("hash"))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test]
async fn connect_to_a_host_not_in_gateway_allow_is_refused_without_connecting() {
    let (trap, hits) = trap().await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let dest = format!("trap.wharf-test:{}", trap.port());
    let answer = gate
        .exchange(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("text/plain"), "{answer}");
    assert!(
        answer.contains(&format!("wharf gateway: {dest} is not in gateway.allow")),
        "{answer}"
    );
    assert_untouched(&hits).await;
    let m = gate.settled_metrics().await;
    assert_metrics(
        &m,
        &[
            ("wharf_gateway_refusals_total{reason=\"host\"}", 1),
            ("wharf_gateway_tunnels_total{result=\"refused\"}", 1),
        ],
    );
    gate.stop().await;
}

#[tokio::test]
async fn an_allowed_name_on_loopback_is_refused_without_the_address_allowance() {
    let (trap, hits) = trap().await;
    let gate = Gate::start(PINNED_ONLY, r#"allow = ["trap.wharf-test"]"#, "").await;
    let (head, _) = gate
        .connect(&format!("trap.wharf-test:{}", trap.port()), "")
        .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let answer = gate
        .exchange(
            format!(
                "GET http://trap.wharf-test:{0}/ HTTP/1.1\r\nHost: trap.wharf-test:{0}\r\n\r\n",
                trap.port()
            )
            .as_bytes(),
        )
        .await;
    assert!(
        answer.contains("resolves only to forbidden addresses (loopback)")
            && answer.contains("egress.allow_cidrs")
            && !answer.contains("127.0.0.1"),
        "{answer}"
    );
    assert_untouched(&hits).await;
    assert_eq!(gate.refusals("address").await, 2);
}

#[tokio::test]
async fn absolute_form_to_a_refused_host_and_ip_literals_are_refused() {
    let (trap, hits) = trap().await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let port = trap.port();
    let answer = gate
        .exchange(
            format!("GET http://trap.wharf-test:{port}/x HTTP/1.1\r\nHost: trap.wharf-test:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("is not in gateway.allow"), "{answer}");
    // Loopback is open to names, yet a literal must be listed itself.
    for literal in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let (head, _) = gate.connect(&literal, "").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{literal}: {head}");
    }
    let answer = gate
        .exchange(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await;
    assert!(answer.contains("is an IP address"), "{answer}");
    assert_untouched(&hits).await;
    assert_eq!(gate.refusals("ip_literal").await, 3);
}

#[tokio::test]
async fn an_ip_literal_listed_in_gateway_allow_is_reached() {
    let (origin, conns) = echo().await;
    let gate = Gate::start(
        r#"allow_cidrs = ["127.0.0.0/8"]"#,
        &format!(r#"allow = ["127.0.0.1:{}"]"#, origin.port()),
        "",
    )
    .await;
    let (head, mut s) = gate
        .connect(&format!("127.0.0.1:{}", origin.port()), "")
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ambiguous_heads_get_400_and_the_connection_closed() {
    let (trap, hits) = trap().await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["trap.wharf-test"]"#, "").await;
    let p = trap.port();
    for (what, request) in [
        (
            "two Host headers",
            format!(
                "GET http://trap.wharf-test:{p}/ HTTP/1.1\r\nHost: trap.wharf-test:{p}\r\nHost: other.example\r\n\r\n"
            ),
        ),
        (
            "Host header disagrees",
            format!("GET http://trap.wharf-test:{p}/ HTTP/1.1\r\nHost: other.example\r\n\r\n"),
        ),
        (
            "Transfer-Encoding together with Content-Length",
            format!(
                "POST http://trap.wharf-test:{p}/ HTTP/1.1\r\nHost: trap.wharf-test:{p}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "obs-fold",
            format!(
                "GET http://trap.wharf-test:{p}/ HTTP/1.1\r\nHost: trap.wharf-test:{p}\r\nX-A: a\r\n b\r\n\r\n"
            ),
        ),
        (
            "does not parse",
            "GET http://trap.wharf-test/ HTTP/1.1 junk\r\n\r\n".to_string(),
        ),
        (
            "forward proxy",
            format!("GET / HTTP/1.1\r\nHost: trap.wharf-test:{p}\r\n\r\n"),
        ),
        (
            "CONNECT tunnel",
            format!(
                "GET https://trap.wharf-test:{p}/ HTTP/1.1\r\nHost: trap.wharf-test:{p}\r\n\r\n"
            ),
        ),
    ] {
        let answer = gate.exchange(request.as_bytes()).await;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 400"),
            "{what}: {answer}"
        );
        assert!(answer.contains(what), "{what}: {answer}");
        assert!(answer.contains("Connection: close"), "{what}: {answer}");
    }
    assert_untouched(&hits).await;
}

#[tokio::test]
async fn a_request_pipelined_behind_a_connect_is_never_parsed() {
    let (trap, hits) = trap().await;
    let (origin, _) = echo().await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let smuggled = format!(
        "GET http://trap.wharf-test:{0}/ HTTP/1.1\r\nHost: trap.wharf-test:{0}\r\n\r\n",
        trap.port()
    );
    // Refused CONNECT: one answer, then the connection ends; the second request is not read.
    let answer = gate
        .exchange(format!("CONNECT blocked.wharf-test:443 HTTP/1.1\r\n\r\n{smuggled}").as_bytes())
        .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Allowed CONNECT: what follows the head is the tunnel's first bytes, delivered as data.
    let dest = format!("origin.wharf-test:{}", origin.port());
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n{smuggled}").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut echoed = vec![0u8; smuggled.len()];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, smuggled.as_bytes());
    assert_untouched(&hits).await;
}

#[tokio::test]
async fn a_client_outside_allow_clients_is_refused() {
    let (origin, conns) = echo().await;
    let gate = Gate::start(
        REACH_LOOPBACK,
        r#"allow = ["origin.wharf-test"]
allow_clients = ["10.0.0.0/8"]"#,
        "",
    )
    .await;
    let (head, _) = gate
        .connect(&format!("origin.wharf-test:{}", origin.port()), "")
        .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let answer = gate
        .exchange(b"CONNECT origin.wharf-test:1 HTTP/1.1\r\n\r\n")
        .await;
    assert!(
        answer.contains("client 127.0.0.1 is not in gateway.allow_clients"),
        "{answer}"
    );
    assert_untouched(&conns).await;
    assert_eq!(gate.refusals("client").await, 2);
}

#[tokio::test]
async fn a_client_outside_allow_clients_is_refused_before_its_head_is_read() {
    let gate = Gate::start(
        REACH_LOOPBACK,
        r#"allow = ["origin.wharf-test"]
allow_clients = ["10.0.0.0/8"]"#,
        "",
    )
    .await;
    // It sends nothing: the answer must not wait for a head (server.header_read_timeout).
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .expect("refused at once, not after the head's read timeout")
        .ok();
    let answer = String::from_utf8_lossy(&out);
    assert!(status_line(&answer).starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("client 127.0.0.1 is not in gateway.allow_clients"),
        "{answer}"
    );
}

#[tokio::test]
async fn the_gateway_never_connects_to_its_own_listener() {
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    // An allowed name on an allowed address, at the gateway's own port: a client would come
    // back in from this machine (and could nest tunnels in it).
    let dest = format!("origin.wharf-test:{}", gate.addr.port());
    let (head, _) = gate.connect(&dest, "").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let answer = gate
        .exchange(format!("GET http://{dest}/ HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .await;
    assert!(
        answer.contains(&format!("wharf gateway: {dest} is wharf's own listener")),
        "{answer}"
    );
}

#[tokio::test]
async fn proxy_credentials_are_required_checked_and_never_forwarded() {
    let (origin, seen) = web_origin().await;
    let access = format!(
        "[access]\n[[access.user]]\nname = \"{USER}\"\npassword_hash = \"{}\"\n",
        password_hash()
    );
    let gate = Gate::start(
        REACH_LOOPBACK,
        r#"allow = ["origin.wharf-test"]
require_auth = true"#,
        &access,
    )
    .await;
    let p = origin.port();
    let request = |auth: &str| {
        format!(
            "GET http://origin.wharf-test:{p}/ HTTP/1.1\r\nHost: origin.wharf-test:{p}\r\n{auth}Connection: close, X-Hop\r\nX-Hop: 1\r\nX-End: kept\r\n\r\n"
        )
    };
    for auth in [
        String::new(),
        format!("Proxy-Authorization: Basic {}\r\n", basic(USER, "wrong")),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            basic("nobody", PASSWORD)
        ),
    ] {
        let answer = gate.exchange(request(&auth).as_bytes()).await;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 407"),
            "{auth}: {answer}"
        );
        assert!(
            answer.contains("Proxy-Authenticate: Basic realm=\"wharf gateway\""),
            "{answer}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused request reached the origin"
    );
    let right = format!("Proxy-Authorization: Basic {}\r\n", basic(USER, PASSWORD));
    let answer = gate.exchange(request(&right).as_bytes()).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from origin"), "{answer}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let h = &seen[0];
    assert!(h.get("proxy-authorization").is_none(), "{h:?}");
    assert!(
        h.get("x-hop").is_none(),
        "a header Connection names was forwarded: {h:?}"
    );
    assert_eq!(h.get("x-end").map(|v| v.to_str().unwrap()), Some("kept"));
    // A tunnel needs the credentials too.
    let (head, _) = gate.connect(&format!("origin.wharf-test:{p}"), "").await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    let (head, _) = gate
        .connect(&format!("origin.wharf-test:{p}"), &right)
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn redirects_are_passed_on_not_followed() {
    let (origin, seen) = web_origin().await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let p = origin.port();
    let answer = gate
        .exchange(
            format!("GET http://origin.wharf-test:{p}/moved HTTP/1.1\r\nHost: origin.wharf-test:{p}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 302"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("location: http://trap.wharf-test/elsewhere"),
        "{answer}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "one request, no redirect followed"
    );
    assert_eq!(
        metric(
            &gate.settled_metrics().await,
            "wharf_gateway_requests_total{result=\"ok\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways_and_is_counted() {
    let (origin, _) = echo().await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let (head, s) = gate
        .connect(&format!("origin.wharf-test:{}", origin.port()), "")
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let payload: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(
        back == payload,
        "the echo differs ({} bytes back)",
        back.len()
    );
    let m = gate.settled_metrics().await;
    assert_metrics(&m, &[("wharf_gateway_tunnels_total{result=\"ok\"}", 1)]);
    assert_eq!(
        metric(&m, "wharf_gateway_bytes_total{direction=\"to_origin\"}"),
        3 << 20
    );
    assert_eq!(
        metric(&m, "wharf_gateway_bytes_total{direction=\"to_client\"}"),
        3 << 20
    );
    assert_eq!(metric(&m, "wharf_gateway_tunnels_open "), 0, "{m}");
}

/// TCP urgent data stops `splice(2)` at its mark for good; the tunnel steps over it as a plain
/// read does, so the bytes after it still arrive (the urgent byte itself is not forwarded).
#[tokio::test]
async fn urgent_data_does_not_stall_a_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        let (mut c, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).await.unwrap();
        all
    });
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let (head, mut s) = gate.connect(&format!("origin.wharf-test:{port}"), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"abc").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    rustix::net::send(&s, b"X", rustix::net::SendFlags::OOB).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"def").await.unwrap();
    s.shutdown().await.unwrap();
    let all = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the origin never saw the end: the tunnel stalled at the urgent mark")
        .unwrap();
    assert_eq!(all, b"abcdef");
    gate.stop().await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_max_tunnels_refuses_with_503() {
    let (origin, _) = echo().await;
    let gate = Gate::start(
        REACH_LOOPBACK,
        r#"allow = ["origin.wharf-test"]
idle_timeout = "1s"
max_tunnels = 1"#,
        "",
    )
    .await;
    let dest = format!("origin.wharf-test:{}", origin.port());
    let (head, mut first) = gate.connect(&dest, "").await;
    let started = tokio::time::Instant::now();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = gate.connect(&dest, "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(metric(&gate.metrics(), "wharf_gateway_tunnels_open "), 1);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel is closed")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // Its slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (head, _) = gate.connect(&dest, "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let m = gate.settled_metrics().await;
    assert_metrics(&m, &[("wharf_gateway_refusals_total{reason=\"busy\"}", 1)]);
}

#[tokio::test]
async fn a_served_gateway_logs_each_tunnel_and_stops_with_the_server() {
    let (origin, _) = echo().await;
    let dir = work_dir("wharf-gateway-serve-");
    let port = free_port();
    let config = WharfConfig::new(&dir.path().join("data"))
        .egress(REACH_LOOPBACK)
        .tables(&format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\nallow = [\"origin.wharf-test\"]\n"
        ))
        .write(&dir.path().join("wharf.toml"));
    let server = Server::start(&config, &dir.path().join("wharf.log")).await;
    let gw = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(gw).await {
            s = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = s.expect("the gateway listens on gateway.listen");
    let dest = format!("origin.wharf-test:{}", origin.port());
    s.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"0123456789").await.unwrap();
    let mut b = [0u8; 10];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logs = {
        let mut logs = server.logs();
        for _ in 0..100 {
            if logs.contains("gateway tunnel") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            logs = server.logs();
        }
        logs
    };
    let line = logs
        .lines()
        .find(|l| l.contains("gateway tunnel"))
        .unwrap_or_else(|| panic!("no gateway log line:\n{logs}"));
    for needle in [
        format!("destination={dest}"),
        "status=200".into(),
        "to_origin=10".into(),
        "to_client=10".into(),
        "client=127.0.0.1:".into(),
    ] {
        assert!(line.contains(&needle), "{needle} not in {line}");
    }
    assert!(metrics.contains("wharf_gateway_tunnels_open"), "{metrics}");
    server.stop().await;
    assert!(
        TcpStream::connect(gw).await.is_err(),
        "the gateway still listens after the server stopped"
    );
}

/// `curl` through the gateway (`HTTPS_PROXY`), with the CA in `ca`.
fn curl(program: &Path, proxy: SocketAddr, ca: &Path, url: &str) -> std::process::Output {
    let proxy = format!("http://{proxy}");
    Command::new(program)
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg(url)
        .env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("http_proxy", &proxy)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

/// A TLS `docker-registry` known as `registry.wharf-test`, its CA in `<dir>/certs/ca.crt`.
fn tls_origin(program: &Path, dir: &Path) -> Origin {
    let ca = tlsgen::Ca::new("wharf gateway test CA");
    let cert = ca.server_cert(&["registry.wharf-test", "blocked.wharf-test", "127.0.0.1"]);
    ca.write_cert_dir(&dir.join("certs"));
    let files = tlsgen::TlsFiles::in_dir(dir);
    files.write(&cert);
    Origin::start_tls(program, &files.cert, &files.key)
}

#[tokio::test]
async fn curl_reaches_an_allowed_tls_origin_through_the_gateway_and_no_other() {
    let Some(tools) = require_tools("curl_through_the_gateway", &["curl", "docker-registry"])
    else {
        return;
    };
    let dir = work_dir("wharf-gateway-curl-");
    let d = dir.path().to_path_buf();
    let registry = tools[1].clone();
    let origin = blocking(move || tls_origin(&registry, &d)).await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["registry.wharf-test"]"#, "").await;
    let (curl_bin, gw, ca) = (tools[0].clone(), gate.addr, dir.path().join("certs/ca.crt"));
    let port = origin.addr.port();
    let (ok, refused) = blocking(move || {
        (
            curl(
                &curl_bin,
                gw,
                &ca,
                &format!("https://registry.wharf-test:{port}/v2/"),
            ),
            curl(
                &curl_bin,
                gw,
                &ca,
                &format!("https://blocked.wharf-test:{port}/v2/"),
            ),
        )
    })
    .await;
    assert!(
        ok.status.success(),
        "curl through the gateway failed: {}",
        describe(&ok)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "{}");
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        describe(&refused)
    );
    assert_eq!(origin.requests("GET", "/v2/"), 1, "{}", origin.access_log());
}

#[tokio::test]
async fn skopeo_pushes_and_inspects_through_the_gateway_and_is_refused_elsewhere() {
    let Some(tools) = require_tools("skopeo_through_the_gateway", &["skopeo", "docker-registry"])
    else {
        return;
    };
    let dir = work_dir("wharf-gateway-skopeo-");
    let d = dir.path().to_path_buf();
    let registry = tools[1].clone();
    let origin = blocking(move || tls_origin(&registry, &d)).await;
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["registry.wharf-test"]"#, "").await;
    let mut layout = oci::Layout::create(&dir.path().join("layout"));
    let image = layout.add_image(&oci::ImageSpec::linux(
        "amd64",
        21,
        &[oci::gzip_layer(200_000)],
    ));
    layout.tag(&image.manifest, "v1");
    let (skopeo, gw, certs, root) = (
        tools[0].clone(),
        gate.addr,
        dir.path().join("certs"),
        layout.root().to_path_buf(),
    );
    let port = origin.addr.port();
    let (push, inspect, refused) = blocking(move || {
        let conf = skopeo_dir("wharf-gateway-skopeo-conf-");
        let run = |args: &[&str]| {
            Command::new(&skopeo)
                .arg("--policy")
                .arg(conf.path().join("policy.json"))
                .arg("--registries-conf")
                .arg(conf.path().join("registries.conf"))
                .args(args)
                .env("HTTPS_PROXY", format!("http://{gw}"))
                .env("TMPDIR", conf.path())
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .stdin(Stdio::null())
                .output()
                .expect("run skopeo")
        };
        let certs = certs.to_string_lossy().into_owned();
        let push = run(&[
            "copy",
            "--preserve-digests",
            "--dest-cert-dir",
            &certs,
            &format!("oci:{}:v1", root.display()),
            &format!("docker://registry.wharf-test:{port}/test/app:v1"),
        ]);
        let inspect = run(&[
            "inspect",
            "--cert-dir",
            &certs,
            &format!("docker://registry.wharf-test:{port}/test/app:v1"),
        ]);
        let refused = run(&[
            "inspect",
            "--cert-dir",
            &certs,
            &format!("docker://blocked.wharf-test:{port}/test/app:v1"),
        ]);
        (push, inspect, refused)
    })
    .await;
    assert!(push.status.success(), "push: {}", describe(&push));
    assert!(inspect.status.success(), "inspect: {}", describe(&inspect));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Digest"].as_str(), Some(image.manifest.digest.as_str()));
    assert!(!refused.status.success(), "{}", describe(&refused));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("403") || why.contains("Forbidden"), "{why}");
    assert!(
        origin.requests("PUT", "/v2/test/app/manifests/v1") >= 1,
        "{}",
        origin.access_log()
    );
    let m = gate.settled_metrics().await;
    assert!(
        metric(&m, "wharf_gateway_tunnels_total{result=\"ok\"}") >= 2,
        "{m}"
    );
    assert!(
        metric(&m, "wharf_gateway_refusals_total{reason=\"host\"}") >= 1,
        "{m}"
    );
}

#[test]
fn the_gateway_config_is_validated_with_clear_errors() {
    let parse = |t: &str| wharf::config::Config::from_toml_str(t).map(|_| ());
    let e = parse("[gateway]\nlisten = \"127.0.0.1:3128\"\nallow = [\"unix:/run/x.sock\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.allow") && e.contains("Unix"), "{e}");
    let e = parse("[gateway]\nlisten = \"127.0.0.1:3128\"\nallow = [\"a.example/x\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.allow \"a.example/x\""), "{e}");
    let e = parse("[gateway]\nlisten = \"127.0.0.1:3128\"\nrequire_auth = true\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.require_auth"), "{e}");
    let e = parse("listen = \"127.0.0.1:3128\"\n[gateway]\nlisten = \"127.0.0.1:3128\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.listen"), "{e}");
    let e = parse("[gateway]\nlisten = \"127.0.0.1:3128\"\nallow_clients = [\"10.0.0.0/33\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.allow_clients"), "{e}");
    // The default: egress.allow's registry and Go hosts, not wharf's own services.
    let c = wharf::config::Config::from_toml_str(
        "[egress]\nallow = [\"registry-1.docker.io\", \"s3.internal:9000\", \"unix:/run/r.sock\"]\n\
         [shared]\nendpoint = \"http://s3.internal:9000\"\nbucket = \"b\"\n\
         [gateway]\nlisten = \"127.0.0.1:3128\"\n",
    )
    .unwrap();
    let g = c.gateway.as_ref().unwrap();
    assert_eq!(g.allow_entries(&c), ["registry-1.docker.io"]);
    assert!(g.client_ranges(&c).contains(&"192.168.0.0/16".to_string()));
}

#[test]
fn the_default_gateway_allow_leaves_out_every_replica() {
    // With peers.dns, the replicas are this one (advertise) and what the name resolves to.
    let c = wharf::config::Config::from_toml_str(
        "listen = \"0.0.0.0:5000\"\n\
         [egress]\nallow = [\"registry-1.docker.io\", \"wharf-0.replicas.internal:5000\", \
         \"replicas.internal\"]\n\
         [peers]\ndns = \"replicas.internal\"\nadvertise = \"http://wharf-0.replicas.internal:5000\"\n\
         secret_file = \"peer-secret\"\n\
         [gateway]\nlisten = \"127.0.0.1:3128\"\n",
    )
    .unwrap();
    let g = c.gateway.as_ref().unwrap();
    assert_eq!(g.allow_entries(&c), ["registry-1.docker.io"]);
}

#[test]
fn check_config_and_check_egress_mention_the_gateway() {
    let dir = work_dir("wharf-gateway-check-");
    // A config with a gateway for the registry, `egress` keys added; its file.
    let config = |name: &str, egress: &str| {
        WharfConfig::new(dir.path())
            .allow(&["registry-1.docker.io"])
            .egress(egress)
            .tables("[gateway]\nlisten = \"127.0.0.1:3128\"\nallow = [\"registry-1.docker.io\"]\n")
            .write(&dir.path().join(name))
    };
    // `wharf <command> --config <config> [url]`'s standard output; it must not show a password.
    let run = |command: &str, config: &Path, url: Option<&str>| {
        let out = wharf_command()
            .args([command, "--config"])
            .arg(config)
            .args(url)
            .output()
            .unwrap();
        assert!(
            command != "check-config" || out.status.success(),
            "{}",
            describe(&out)
        );
        let text = stdout(&out);
        assert!(!text.contains("s3cret"), "{text}");
        text
    };
    let direct = config("wharf.toml", "");
    let text = run("check-config", &direct, None);
    for line in [
        "gateway.listen             = 127.0.0.1:3128",
        "gateway.allow              = registry-1.docker.io",
        "gateway.via_egress_proxy   = direct",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    let text = run("check-egress", &direct, Some("https://elsewhere.example/"));
    assert!(
        text.contains("gateway: REFUSED: not in gateway.allow"),
        "{text}"
    );
    // Through an http:// egress.proxy: said by both, the proxy named without its password.
    let via = config(
        "wharf-via.toml",
        "proxy = \"http://corp:s3cret@proxy.corp:3128\"",
    );
    let text = run("check-config", &via, None);
    for line in [
        "gateway.via_egress_proxy   = through egress.proxy proxy.corp:3128",
        "egress.proxy               = http://proxy.corp:3128/ (credentials from its URL, not shown)",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    let text = run(
        "check-egress",
        &via,
        Some("https://registry-1.docker.io/v2/"),
    );
    assert!(
        text.contains("gateway: host allowed by gateway.allow (reached through egress.proxy"),
        "{text}"
    );
    // An https:// one is passed over, and said so.
    let https = config(
        "wharf-https.toml",
        "proxy = \"https://corp:s3cret@proxy.corp:3129\"",
    );
    let text = run("check-config", &https, None);
    assert!(
        text.contains("= direct (egress.proxy https://proxy.corp passed over"),
        "{text}"
    );
}

#[tokio::test]
async fn an_origin_that_is_down_is_a_502_failure_not_a_refusal() {
    let closed = free_port();
    let gate = Gate::start(REACH_LOOPBACK, r#"allow = ["origin.wharf-test"]"#, "").await;
    let (head, _) = gate
        .connect(&format!("origin.wharf-test:{closed}"), "")
        .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let answer = gate
        .exchange(
            format!("GET http://origin.wharf-test:{closed}/ HTTP/1.1\r\nHost: origin.wharf-test:{closed}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(
        answer.contains(&format!(
            "wharf gateway: cannot connect to origin.wharf-test:{closed}"
        )),
        "{answer}"
    );
    let m = gate.settled_metrics().await;
    assert_metrics(
        &m,
        &[
            ("wharf_gateway_tunnels_total{result=\"failed\"}", 1),
            ("wharf_gateway_requests_total{result=\"failed\"}", 1),
        ],
    );
    assert!(!m.contains("wharf_gateway_refusals_total{"), "{m}");
}

/// What a fake `egress.proxy` does with each connection after reading its head.
#[derive(Clone, Copy)]
enum ParentMode {
    /// `200`, then `HELLO` (a server-first destination), then an echo.
    Tunnel,
    /// `407` and close.
    AuthRequired,
    /// An HTTP answer `from parent`, then close.
    Http,
    /// This status line and extra header lines, the request it was sent as the body (as
    /// proxies reflecting requests do), then close.
    Reflect(&'static str, &'static str),
}

/// A fake `egress.proxy` on loopback: the heads it was sent, in order.
async fn fake_parent(mode: ParentMode) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    fake_parent_on("127.0.0.1:0", mode).await
}

async fn fake_parent_on(bind: &str, mode: ParentMode) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                seen.lock().unwrap().push(head.clone());
                let answer: Vec<u8> = match mode {
                    ParentMode::Tunnel => b"HTTP/1.1 200 Connection established\r\n\r\nHELLO".to_vec(),
                    ParentMode::AuthRequired => b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                          Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n"
                        .to_vec(),
                    ParentMode::Http => {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nfrom parent"
                            .to_vec()
                    }
                    ParentMode::Reflect(status, extra) => format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Type: message/http\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{head}",
                        head.len()
                    )
                    .into_bytes(),
                };
                if s.write_all(&answer).await.is_err() {
                    return;
                }
                if let ParentMode::Tunnel = mode {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, heads)
}

/// `[egress]` with a fake parent as `egress.proxy`, its credentials percent-encoded.
fn via_parent(parent: SocketAddr) -> String {
    format!("proxy = \"http://corp%5Cbuilder:par%40ent@{parent}\"")
}

/// What the fake parent must get as `Proxy-Authorization`.
fn parent_auth() -> String {
    format!(
        "Proxy-Authorization: Basic {}",
        basic("corp\\builder", "par@ent")
    )
}

#[tokio::test]
async fn through_egress_proxy_a_tunnel_is_a_connect_with_the_proxys_credentials() {
    let (parent, heads) = fake_parent(ParentMode::Tunnel).await;
    let gate = Gate::start(
        &via_parent(parent),
        r#"allow = ["origin.wharf-test", "127.0.0.1"]"#,
        "",
    )
    .await;
    // The client's own Proxy-Authorization is for the gateway, never passed on.
    let (head, mut tunnel) = gate
        .connect(
            "origin.wharf-test:443",
            &format!("Proxy-Authorization: Basic {}\r\n", basic(USER, PASSWORD)),
        )
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The destination's first bytes, sent with the proxy's answer, reach the client.
    let mut hello = [0u8; 5];
    tunnel.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"HELLO");
    tunnel.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    tunnel.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    drop(tunnel);
    assert_eq!(
        heads.lock().unwrap().clone(),
        [format!(
            "CONNECT origin.wharf-test:443 HTTP/1.1\r\nHost: origin.wharf-test:443\r\n{}\r\n\r\n",
            parent_auth()
        )]
    );
    // Refused by wharf before the proxy hears of it: a host not listed, a listed address that
    // is the gateway's own listener (the proxy resolves names; literals are checked here).
    // The proxy itself neither: a tunnel to it would let a client speak to it as wharf.
    for dest in [
        "trap.wharf-test:443".to_string(),
        format!("127.0.0.1:{}", gate.addr.port()),
        parent.to_string(),
    ] {
        let (head, _) = gate.connect(&dest, "").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{dest}: {head}");
    }
    assert_eq!(heads.lock().unwrap().len(), 1);
    gate.stop().await;
}

#[tokio::test]
async fn a_proxy_refusing_connect_is_a_502_that_never_shows_its_credentials() {
    let (parent, heads) = fake_parent(ParentMode::AuthRequired).await;
    let gate = Gate::start(&via_parent(parent), r#"allow = ["origin.wharf-test"]"#, "").await;
    let answer = gate
        .exchange(b"CONNECT origin.wharf-test:443 HTTP/1.1\r\nHost: origin.wharf-test:443\r\n\r\n")
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.contains(&format!("egress.proxy {parent} asks for credentials (407)")),
        "{answer}"
    );
    for secret in ["par@ent", "par%40ent", &basic("corp\\builder", "par@ent")] {
        assert!(!answer.contains(secret), "{answer}");
    }
    assert_eq!(heads.lock().unwrap().len(), 1);
    gate.stop().await;
}

#[tokio::test]
async fn through_egress_proxy_a_forwarded_request_goes_in_absolute_form_to_the_checked_host() {
    let (parent, heads) = fake_parent(ParentMode::Http).await;
    let gate = Gate::start(&via_parent(parent), r#"allow = ["origin.wharf-test"]"#, "").await;
    let answer = gate
        .exchange(
            format!(
                "GET http://origin.wharf-test:8080/p?q=1 HTTP/1.1\r\nHost: origin.wharf-test:8080\r\n\
                 Proxy-Authorization: Basic {}\r\nConnection: close\r\n\r\n",
                basic(USER, PASSWORD)
            )
            .as_bytes(),
        )
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("from parent"), "{answer}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let sent = heads[0].to_ascii_lowercase();
    assert!(
        sent.starts_with("get http://origin.wharf-test:8080/p?q=1 http/1.1\r\n"),
        "{sent}"
    );
    assert!(
        sent.contains("\r\nhost: origin.wharf-test:8080\r\n"),
        "{sent}"
    );
    assert!(
        sent.contains(&format!("\r\n{}\r\n", parent_auth().to_ascii_lowercase())),
        "{sent}"
    );
    assert!(
        !sent.contains(&basic(USER, PASSWORD).to_ascii_lowercase()),
        "{sent}"
    );
    gate.stop().await;
}

#[test]
fn the_gateway_goes_through_an_http_egress_proxy_only() {
    let parse = |t: &str| wharf::config::Config::from_toml_str(t);
    let https = "[egress]\nproxy = \"https://u:s3cret@proxy.corp:3129\"\n\
                 [gateway]\nlisten = \"127.0.0.1:3128\"\n";
    // Unset: through an http:// proxy only; any other kind is passed over (serve warns).
    let c = parse(https).unwrap();
    let g = c.gateway.as_ref().unwrap();
    assert_eq!(g.parent(&c).unwrap(), None);
    assert!(g.parent_passed_over(&c).is_some());
    let c = parse(&https.replace("https://", "http://")).unwrap();
    let g = c.gateway.as_ref().unwrap();
    assert!(g.parent(&c).unwrap().is_some());
    assert!(g.parent_passed_over(&c).is_none());
    // Asked for with another kind: refused, saying what to do, never showing the password.
    let e = parse(&format!("{https}via_egress_proxy = true\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gateway.via_egress_proxy") && e.contains("https://proxy.corp"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
    let c = parse(&format!("{https}via_egress_proxy = false\n")).unwrap();
    let g = c.gateway.as_ref().unwrap();
    assert!(g.parent(&c).unwrap().is_none() && g.parent_passed_over(&c).is_none());
    // wharf's own traffic may use any of these; the error never shows the password.
    let e = parse("[egress]\nproxy = \"ftp://u:s3cret@proxy.corp\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("egress.proxy ftp://proxy.corp") && !e.contains("s3cret"),
        "{e}"
    );
}

/// A real forward proxy (Debian's `tinyproxy`) on loopback, asking for Basic credentials
/// (its config takes no spaces or `@` in them); its log, to count what it was asked.
struct Tinyproxy {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Tinyproxy {
    fn start(program: &Path, dir: &Path, user: &str, password: &str) -> Tinyproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 32\nLogLevel Info\n\
                 LogFile \"{}\"\nPidFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n\
                 BasicAuth {user} {password}\n",
                log.display(),
                dir.join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new(program)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tinyproxy { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn curl_reaches_tls_and_http_origins_through_the_gateway_and_tinyproxy() {
    let Some(tools) = require_tools(
        "gateway_through_tinyproxy",
        &["curl", "docker-registry", "tinyproxy"],
    ) else {
        return;
    };
    let dir = work_dir("wharf-gateway-parent-");
    let (d, registry) = (dir.path().to_path_buf(), tools[1].clone());
    // The proxy resolves the names, so the origins are named as it knows them: localhost.
    let origin = blocking(move || {
        let ca = tlsgen::Ca::new("wharf gateway parent test CA");
        ca.write_cert_dir(&d.join("certs"));
        let files = tlsgen::TlsFiles::in_dir(&d);
        files.write(&ca.server_cert(&["localhost"]));
        Origin::start_tls(&registry, &files.cert, &files.key)
    })
    .await;
    let (web, web_seen) = web_origin().await;
    let proxy = Tinyproxy::start(&tools[2], dir.path(), "corp", "parentpass7");
    let gate = Gate::start(
        &format!("proxy = \"http://corp:parentpass7@{}\"", proxy.addr),
        r#"allow = ["localhost"]"#,
        "",
    )
    .await;
    let (curl_bin, gw, ca) = (tools[0].clone(), gate.addr, dir.path().join("certs/ca.crt"));
    let (tls_port, web_port) = (origin.addr.port(), web.port());
    let (tls, http, refused) = blocking(move || {
        (
            curl(
                &curl_bin,
                gw,
                &ca,
                &format!("https://localhost:{tls_port}/v2/"),
            ),
            curl(&curl_bin, gw, &ca, &format!("http://localhost:{web_port}/")),
            curl(
                &curl_bin,
                gw,
                &ca,
                &format!("https://127.0.0.1:{tls_port}/v2/"),
            ),
        )
    })
    .await;
    assert!(tls.status.success(), "{}\n{}", describe(&tls), proxy.log());
    assert_eq!(String::from_utf8_lossy(&tls.stdout).trim(), "{}");
    assert_eq!(origin.requests("GET", "/v2/"), 1, "{}", origin.access_log());
    assert!(
        http.status.success(),
        "{}\n{}",
        describe(&http),
        proxy.log()
    );
    assert_eq!(String::from_utf8_lossy(&http.stdout), "hello from origin");
    assert_eq!(web_seen.lock().unwrap().len(), 1);
    // Not in gateway.allow: refused by wharf, never asked of the proxy.
    assert!(!refused.status.success(), "{}", describe(&refused));
    let log = proxy.log();
    assert_eq!(
        log.matches(&format!("CONNECT localhost:{tls_port}"))
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains(&format!("127.0.0.1:{tls_port}")), "{log}");
    assert!(
        log.contains(&format!("GET http://localhost:{web_port}/ ")),
        "{log}"
    );
    gate.stop().await;
}

#[tokio::test]
async fn the_proxys_credentials_are_never_reflected_back_to_a_client() {
    let secret = basic("corp\\builder", "par@ent");
    // TRACE: refused before anything is sent anywhere.
    let (parent, heads) = fake_parent(ParentMode::Reflect("200 OK", "")).await;
    let gate = Gate::start(&via_parent(parent), r#"allow = ["origin.wharf-test"]"#, "").await;
    for method in ["TRACE", "trace"] {
        let answer = gate
            .exchange(
                format!(
                    "{method} http://origin.wharf-test/ HTTP/1.1\r\nHost: origin.wharf-test\r\n\
                     Max-Forwards: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert!(status_line(&answer).starts_with("HTTP/1.1 405"), "{answer}");
    }
    assert!(heads.lock().unwrap().is_empty());
    // Max-Forwards never reaches the proxy (it would answer OPTIONS itself).
    let answer = gate
        .exchange(
            b"OPTIONS http://origin.wharf-test/ HTTP/1.1\r\nHost: origin.wharf-test\r\n\
              Max-Forwards: 0\r\n\r\n",
        )
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    let sent = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(!sent.contains("max-forwards"), "{sent}");
    gate.stop().await;
    // The proxy's own error pages (which may quote the request) become the gateway's 502.
    for (status, extra) in [
        (
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Basic\r\n",
        ),
        (
            "503 Service Unavailable",
            "X-Squid-Error: ERR_CONNECT_FAIL 111\r\n",
        ),
    ] {
        let (parent, _) = fake_parent(ParentMode::Reflect(status, extra)).await;
        let gate = Gate::start(&via_parent(parent), r#"allow = ["origin.wharf-test"]"#, "").await;
        let answer = gate
            .exchange(
                b"GET http://origin.wharf-test:1/ HTTP/1.1\r\nHost: origin.wharf-test:1\r\n\r\n",
            )
            .await;
        assert!(status_line(&answer).starts_with("HTTP/1.1 502"), "{answer}");
        assert!(!answer.contains(&secret), "{answer}");
        gate.stop().await;
    }
}

#[tokio::test]
async fn an_ipv6_literal_egress_proxy_on_loopback_is_reached() {
    let Ok(l) = TcpListener::bind("[::1]:0").await else {
        eprintln!("an_ipv6_literal_egress_proxy_on_loopback_is_reached: no IPv6 loopback here");
        return;
    };
    drop(l);
    let (parent, heads) = fake_parent_on("[::1]:0", ParentMode::Reflect("200 OK", "")).await;
    let gate = Gate::start(
        &format!("proxy = \"http://u:p@[::1]:{}\"", parent.port()),
        r#"allow = ["origin.wharf-test"]"#,
        "",
    )
    .await;
    let answer = gate
        .exchange(b"GET http://origin.wharf-test/ HTTP/1.1\r\nHost: origin.wharf-test\r\n\r\n")
        .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(heads.lock().unwrap().len(), 1);
    gate.stop().await;
}

//! Who may use the mirror, and what the listener tolerates, black-box over real sockets: the
//! client address allowlist, basic auth and bearer tokens, per-prefix rules, the `server` limits
//! (URL length, header size, slow headers), `wharf hash-password`, and TLS with certificate reload.
//!
//! wharf runs in-process on port 0 in front of a fake registry and a fake GOPROXY (tests/support);
//! certificates are generated per test (tests/support/tlsgen.rs). Refused requests must never
//! reach an upstream, so several tests count what the fakes saw.

mod support;
use support::tlsgen;
use support::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tlsgen::{Ca, TlsFiles};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const USER: &str = "ci";
const PASSWORD: &str = "s3cret pass";
const TOKEN: &str = "farm-token-0123456789";
const CHALLENGE: &str = "Basic realm=\"wharf\"";

/// One argon2 hash for the whole binary: hashing is slow on purpose.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| wharf::access::hash_password(PASSWORD).expect("hash the test password"))
}

/// An `[access]` table with `keys`, user `ci` and token `farm`; rules may follow it.
fn access(keys: &str) -> String {
    access_with_hash(keys, password_hash())
}

fn access_with_hash(keys: &str, hash: &str) -> String {
    format!(
        "[access]\n{keys}\n\
         [[access.user]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n\
         [[access.token]]\nname = \"farm\"\nsha256 = \"{}\"\n",
        hex::encode(Sha256::digest(TOKEN.as_bytes()))
    )
}

/// One `[[access.rule]]` that requires authentication under `prefix`.
fn rule(protocol: &str, prefix: &str) -> String {
    format!(
        "[[access.rule]]\nprotocol = \"{protocol}\"\nprefix = \"{prefix}\"\nrequire_auth = true\n"
    )
}

/// Registry upstream `fake.test`, the fake GOPROXY, egress to loopback only, then `extra`
/// (`[server]`, `[access]`, `[tls]` tables).
fn mirror_toml(registry: &str, goproxy: &str, data_dir: &Path, extra: &str) -> String {
    WharfConfig::fakes(registry, goproxy, data_dir)
        .tables(extra)
        .toml()
}

/// wharf over plain HTTP with both fakes behind it; the fakes hold `team/app:v1` and
/// `golang.org/x/text` / `corp.example.com/tool` version lists.
struct Mirror {
    up: FakeRegistry,
    go: GoFake,
    w: Wharf,
    manifest_digest: String,
    manifest: Vec<u8>,
    _dir: TempDir,
}

impl Mirror {
    async fn start(extra: &str) -> Mirror {
        let up = FakeRegistry::start().await;
        let (manifest_digest, manifest) = up.put_image("team/app", "v1", &[bytes_of(3000, 7)]);
        up.put_image("public/app", "v1", &[bytes_of(100, 8)]);
        up.put_image("private/app", "v1", &[bytes_of(100, 9)]);
        let go = GoFake::start().await;
        go.put("golang.org/x/text/@v/list", "v0.1.0\n");
        go.put("corp.example.com/tool/@v/list", "v1.0.0\n");
        let dir = tempfile::tempdir().unwrap();
        let toml = mirror_toml(&up.url(), &go.url(), dir.path(), extra);
        let w = Wharf::start_with_config(&toml, dir.path()).await;
        Mirror {
            up,
            go,
            w,
            manifest_digest,
            manifest,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(self.w.url(path))
    }

    /// The status of an anonymous `GET path`.
    async fn status(&self, path: &str) -> u16 {
        self.get(path).sent().await.status().as_u16()
    }

    /// Requests and TCP connections the fake registry has seen.
    fn upstream_traffic(&self) -> (usize, usize) {
        (
            self.up.total(),
            self.up.state.connections.load(Ordering::SeqCst),
        )
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {} {:?}", r.status(), r.headers()))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Authentication on the registry protocol

#[tokio::test]
async fn registry_without_credentials_is_challenged_in_the_registry_error_format() {
    let m = Mirror::start(&access("require_auth = true")).await;
    for path in ["/v2/", "/v2/team/app/manifests/v1"] {
        let r = m.get(path).sent().await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(header(&r, "www-authenticate"), CHALLENGE, "{path}");
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            "registry/2.0",
            "{path}"
        );
        assert!(
            header(&r, "content-type").starts_with("application/json"),
            "{path}"
        );
        assert_eq!(error_code(r).await, "UNAUTHORIZED", "{path}");
    }
    assert_eq!(
        m.upstream_traffic(),
        (0, 0),
        "a refused request reached upstream"
    );
}

#[tokio::test]
async fn registry_with_a_wrong_password_or_unknown_user_is_refused() {
    let m = Mirror::start(&access("require_auth = true")).await;
    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD), (USER, "")] {
        let r = m
            .get("/v2/team/app/manifests/v1")
            .basic_auth(user, Some(password))
            .sent()
            .await;
        assert_eq!(r.status(), 401, "{user}:{password}");
        assert_eq!(header(&r, "www-authenticate"), CHALLENGE);
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    let r = m
        .get("/v2/")
        .header("authorization", "Basic not-base64!")
        .sent()
        .await;
    assert_eq!(r.status(), 401, "malformed basic credentials");
    assert_eq!(
        m.upstream_traffic(),
        (0, 0),
        "a refused request reached upstream"
    );
}

#[tokio::test]
async fn registry_with_the_right_password_serves_the_base_endpoint_and_a_pull() {
    let m = Mirror::start(&access("require_auth = true")).await;
    let r = m.get("/v2/").basic_auth(USER, Some(PASSWORD)).sent().await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );

    let r = m
        .get("/v2/team/app/manifests/v1")
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        m.manifest_digest.as_str()
    );
    assert_eq!(read_body(r).await, m.manifest);

    let manifest: serde_json::Value = serde_json::from_slice(&m.manifest).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let r = m
        .get(&format!("/v2/team/app/blobs/{layer}"))
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(support::sha256(&read_body(r).await), layer);
}

#[tokio::test]
async fn upstream_never_sees_the_clients_credentials() {
    let m = Mirror::start(&access("require_auth = true")).await;
    let r = m
        .get("/v2/team/app/manifests/v1")
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    let r = m
        .get("/go/golang.org/x/text/@v/list")
        .bearer_auth(TOKEN)
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    let seen = m.up.seen();
    assert!(!seen.is_empty(), "the pull went upstream");
    for s in seen {
        assert_eq!(
            s.authorization, None,
            "{} {} carried the client's Authorization upstream",
            s.method, s.path
        );
    }
}

#[tokio::test]
async fn a_valid_bearer_token_is_accepted_and_an_invalid_one_refused() {
    let m = Mirror::start(&access("require_auth = true")).await;
    assert_eq!(m.get("/v2/").bearer_auth(TOKEN).sent().await.status(), 200);

    for bad in ["nope", &TOKEN[..TOKEN.len() - 1], &format!("{TOKEN}x")] {
        let r = m
            .get("/v2/team/app/manifests/v1")
            .bearer_auth(bad)
            .sent()
            .await;
        assert_eq!(r.status(), 401, "token {bad:?}");
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    assert_eq!(
        m.upstream_traffic(),
        (0, 0),
        "a refused request reached upstream"
    );

    let r = m
        .get("/v2/team/app/manifests/v1")
        .bearer_auth(TOKEN)
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_body(r).await, m.manifest);
}

#[tokio::test]
async fn wrong_credentials_are_refused_even_where_none_are_required() {
    let m = Mirror::start(&access("")).await;
    assert_eq!(
        m.status("/v2/team/app/manifests/v1").await,
        200,
        "no credentials, none required"
    );
    let r = m
        .get("/v2/team/app/manifests/v1")
        .basic_auth(USER, Some("wrong"))
        .sent()
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), CHALLENGE);
}

#[tokio::test]
async fn challenge_names_the_configured_realm() {
    let m = Mirror::start(&access("require_auth = true\nrealm = \"corp mirror\"")).await;
    let r = m.get("/v2/").sent().await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        "Basic realm=\"corp mirror\""
    );
}

#[tokio::test]
async fn healthz_stays_open_when_auth_is_required() {
    let m = Mirror::start(&access("require_auth = true")).await;
    let r = m.get("/healthz").sent().await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("www-authenticate").is_none());
}

// ---------------------------------------------------------------------------------------------
// Client addresses

#[tokio::test]
async fn client_outside_allow_clients_gets_403_denied_even_with_credentials() {
    let m = Mirror::start(&access("allow_clients = [\"10.0.0.0/8\"]")).await;
    let r = m.get("/v2/").sent().await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "logging in cannot help, so no challenge: {:?}",
        r.headers()
    );
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(error_code(r).await, "DENIED");

    let r = m
        .get("/v2/team/app/manifests/v1")
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 403, "an address check is not lifted by a login");

    let r = m.get("/go/golang.org/x/text/@v/list").sent().await;
    assert_eq!(r.status(), 403);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert!(!read_text(r).await.trim().is_empty());

    assert_eq!(
        m.upstream_traffic(),
        (0, 0),
        "a refused request reached upstream"
    );
    assert!(m.go.seen().is_empty(), "a refused request reached GOPROXY");
}

#[tokio::test]
async fn client_inside_allow_clients_is_served() {
    let m = Mirror::start(&access("allow_clients = [\"10.0.0.0/8\", \"127.0.0.0/8\"]")).await;
    assert_eq!(m.status("/v2/team/app/manifests/v1").await, 200);
    assert_eq!(m.status("/go/golang.org/x/text/@v/list").await, 200);
}

// ---------------------------------------------------------------------------------------------
// Rules per protocol and prefix

#[tokio::test]
async fn go_rule_challenges_its_prefix_in_plain_text_and_leaves_the_rest_open() {
    let m = Mirror::start(&(access("") + &rule("go", "corp.example.com/"))).await;
    let r = m.get("/go/corp.example.com/tool/@v/list").sent().await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), CHALLENGE);
    assert!(
        header(&r, "content-type").starts_with("text/plain"),
        "Go errors are plain text: {:?}",
        r.headers()
    );
    let body = read_text(r).await;
    assert!(
        !body.trim().is_empty() && !body.trim_start().starts_with('{'),
        "{body:?}"
    );
    assert_eq!(
        m.go.count("corp.example.com"),
        0,
        "a refused request reached GOPROXY"
    );

    let r = m
        .get("/go/corp.example.com/tool/@v/list")
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_text(r).await, "v1.0.0\n");

    let r = m.get("/go/golang.org/x/text/@v/list").sent().await;
    assert_ne!(r.status(), 401, "golang.org is outside the rule");
    assert_eq!(r.status(), 200);

    assert_eq!(
        m.status("/v2/").await,
        200,
        "a go rule does not guard the registry"
    );
}

#[tokio::test]
async fn registry_rule_makes_the_base_endpoint_challenge_so_docker_login_works() {
    let m = Mirror::start(&(access("") + &rule("registry", "private/"))).await;
    let r = m.get("/v2/").sent().await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), CHALLENGE);
    assert_eq!(
        m.get("/v2/")
            .basic_auth(USER, Some(PASSWORD))
            .sent()
            .await
            .status(),
        200
    );

    let r = m.get("/v2/private/app/manifests/v1").sent().await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    assert_eq!(m.up.count("GET", "private/"), 0);
    assert_eq!(m.up.count("HEAD", "private/"), 0);

    assert_eq!(
        m.status("/v2/public/app/manifests/v1").await,
        200,
        "public/ is outside the rule"
    );
    let r = m
        .get("/v2/private/app/manifests/v1")
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn empty_basic_credentials_count_as_anonymous_where_none_are_required() {
    // skopeo, podman and CRI-O answer the `/v2/` Basic challenge without a login by sending
    // `Basic Og==` (":") on every later request.
    let m = Mirror::start(&(access("") + &rule("registry", "private/"))).await;
    let r = m
        .get("/v2/public/app/manifests/v1")
        .header("authorization", "Basic Og==")
        .sent()
        .await;
    assert_eq!(
        r.status(),
        200,
        "an anonymous client's empty credentials were refused on an open repository"
    );
    let r = m
        .get("/v2/private/app/manifests/v1")
        .header("authorization", "Basic Og==")
        .sent()
        .await;
    assert_eq!(
        r.status(),
        401,
        "empty credentials do not open a protected one"
    );
}

#[tokio::test]
async fn the_longest_matching_rule_decides() {
    let m = Mirror::start(&format!(
        "{}[[access.rule]]\nprotocol = \"go\"\nprefix = \"corp.example.com/\"\nrequire_auth = true\n\
         [[access.rule]]\nprotocol = \"go\"\nprefix = \"corp.example.com/tool\"\nrequire_auth = false\n",
        access("")
    ))
    .await;
    assert_eq!(
        m.status("/go/corp.example.com/tool/@v/list").await,
        200,
        "the more specific open rule wins"
    );
    assert_eq!(m.status("/go/corp.example.com/other/@v/list").await, 401);
}

#[tokio::test]
async fn percent_encoded_go_path_does_not_slip_past_a_rule() {
    let m = Mirror::start(&(access("") + &rule("go", "corp.example.com/"))).await;
    // The go command percent-encodes `!` and wharf decodes the path once, so these all name
    // corp.example.com/tool to the handler.
    for path in [
        "/go/corp%2Eexample.com/tool/@v/list",
        "/go/corp%2eexample.com/tool/@v/list",
        "/go/%63orp.example.com/tool/@v/list",
        "/go/corp.example.com%2Ftool/@v/list",
    ] {
        let (status, body) = raw_get(m.w.addr, path).await;
        assert_ne!(
            status, 200,
            "{path} served the protected module without credentials: {body:?}"
        );
    }
    assert_eq!(
        m.go.count("corp.example.com"),
        0,
        "unauthenticated requests fetched the protected module: {:?}",
        m.go.seen()
    );
}

#[tokio::test]
async fn registry_rule_covers_the_upstream_qualified_spelling_of_a_repository() {
    let m = Mirror::start(&(access("") + &rule("registry", "private/"))).await;
    assert_eq!(m.status("/v2/private/app/manifests/v1").await, 401);
    // `fake.test` is the default upstream: this is the same repository.
    let r = m.get("/v2/fake.test/private/app/manifests/v1").sent().await;
    assert_ne!(
        r.status(),
        200,
        "the protected repository was served without credentials under its upstream-qualified name"
    );
    assert_eq!(m.up.count("GET", "private/"), 0, "{:?}", m.up.seen());
}

#[tokio::test]
async fn registry_rule_naming_the_upstream_covers_the_default_spelling() {
    let m = Mirror::start(&(access("") + &rule("registry", "fake.test/private/"))).await;
    assert_eq!(
        m.status("/v2/fake.test/private/app/manifests/v1").await,
        401
    );
    for path in [
        "/v2/private/app/manifests/v1",
        "/v2/private/app/manifests/v1?ns=fake.test",
        "/fake.test/v2/private/app/manifests/v1",
        "/fake%2Etest/v2/private/app/manifests/v1",
    ] {
        let r = m.get(path).sent().await;
        assert_ne!(
            r.status(),
            200,
            "{path}: the protected repository was served without credentials"
        );
    }
    assert_eq!(m.up.count("GET", "private/"), 0, "{:?}", m.up.seen());
}

// ---------------------------------------------------------------------------------------------
// Listener limits

/// Writes `request` (ignoring a write cut short by the server), then reads until EOF, a reset or
/// `within`; returns what came back and whether the connection ended.
async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let ended = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), ended)
}

fn status_of(response: &str) -> Option<u16> {
    response.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn url_longer_than_max_url_length_gets_414() {
    let m = Mirror::start("[server]\nmax_url_length = 200\n").await;
    let long_repo = "a".repeat(250);
    let (status, body) = raw_get(m.w.addr, &format!("/v2/{long_repo}/manifests/v1")).await;
    assert_eq!(status, 414, "{body}");
    let (status, body) = raw_get(m.w.addr, &format!("/go/example.com/{long_repo}/@v/list")).await;
    assert_eq!(status, 414, "{body}");
    let (status, _) = raw_get(m.w.addr, &format!("/v2/team/app/manifests/v1?{long_repo}")).await;
    assert_eq!(status, 414, "the query counts towards the length");
    assert_eq!(m.upstream_traffic(), (0, 0));
    assert!(m.go.seen().is_empty());

    let (status, _) = raw_get(m.w.addr, "/v2/team/app/manifests/v1").await;
    assert_eq!(status, 200, "a short URL is served");
}

#[tokio::test]
async fn oversized_request_headers_are_refused_and_the_server_keeps_answering() {
    let m = Mirror::start("[server]\nmax_header_size = \"16KiB\"\n").await;
    let request = |filler: usize| {
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: wharf\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "f".repeat(filler)
        )
    };
    let (answer, ended) = exchange(
        m.w.addr,
        request(64 << 10).as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(ended, "the connection with a 64 KiB header was left open");
    assert!(
        matches!(status_of(&answer), None | Some(431)),
        "a 64 KiB header was not refused: {answer:?}"
    );

    let (answer, _) = exchange(
        m.w.addr,
        request(4 << 10).as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        status_of(&answer),
        Some(200),
        "a 4 KiB header is within the limit: {answer:?}"
    );
    let (status, _) = raw_get(m.w.addr, "/v2/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn slowloris_client_is_disconnected_after_header_read_timeout() {
    let m = Mirror::start("[server]\nheader_read_timeout = \"1s\"\n").await;
    let mut slow = TcpStream::connect(m.w.addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTT").await.unwrap();
    let started = Instant::now();
    let cut = tokio::spawn(async move {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out)).await;
        (r.is_ok(), started.elapsed(), out)
    });

    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = raw_get(m.w.addr, "/v2/").await;
    assert_eq!(status, 200, "another client is served while one stalls");

    let (ended, after, out) = cut.await.unwrap();
    assert!(
        ended,
        "a client stalled mid request line was still connected after 10 s"
    );
    assert!(
        after >= Duration::from_millis(900),
        "cut after {after:?}, before header_read_timeout"
    );
    assert!(
        after < Duration::from_secs(5),
        "cut only after {after:?} (header_read_timeout = 1s)"
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        !out.starts_with("HTTP/1.1 2"),
        "the stalled request was answered: {out:?}"
    );
}

/// Sends `request` and asserts that the server hangs up within five seconds (the tests set
/// `header_read_timeout = "1s"`) without answering it with a success.
async fn assert_cut(addr: SocketAddr, request: &[u8], what: &str) {
    let started = Instant::now();
    let (answer, ended) = exchange(addr, request, Duration::from_secs(10)).await;
    assert!(
        ended,
        "{what}: still connected after 10 s (header_read_timeout = 1s); received {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{what}: cut only after {:?}",
        started.elapsed()
    );
    assert!(!answer.starts_with("HTTP/1.1 2"), "{what}: {answer:?}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let m = Mirror::start("[server]\nheader_read_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let (answer, ended) = exchange(
        m.w.addr,
        b"GET /v2/ HTTP/1.1\r\nHost: wharf\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status_of(&answer), Some(200), "{answer:?}");
    assert!(ended, "a kept-alive connection stayed open for 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn client_that_connects_and_sends_nothing_is_disconnected_after_header_read_timeout() {
    let m = Mirror::start("[server]\nheader_read_timeout = \"1s\"\n").await;
    assert_cut(m.w.addr, b"", "a client that never sent a byte").await;
}

#[tokio::test]
async fn client_that_stalls_in_the_http2_preface_is_disconnected_after_header_read_timeout() {
    let m = Mirror::start("[server]\nheader_read_timeout = \"1s\"\n").await;
    assert_cut(m.w.addr, b"PRI * HTTP/2.0\r\n", "half the HTTP/2 preface").await;
    assert_cut(
        m.w.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "the HTTP/2 preface and no request",
    )
    .await;
}

#[tokio::test]
async fn a_small_max_header_size_is_enforced_or_refused_by_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let toml = mirror_toml(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        dir.path(),
        "[server]\nmax_header_size = \"1KiB\"\n",
    );
    if wharf::config::Config::from_toml_str(&toml).is_err() {
        return;
    }
    let m = Mirror::start("[server]\nmax_header_size = \"1KiB\"\n").await;
    let request = format!(
        "GET /v2/ HTTP/1.1\r\nHost: wharf\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "f".repeat(4 << 10)
    );
    let (answer, _) = exchange(m.w.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        matches!(status_of(&answer), None | Some(431)),
        "max_header_size = 1KiB was accepted by the config, yet a 4 KiB header was served: {:?}",
        &answer[..answer.len().min(60)]
    );
}

// ---------------------------------------------------------------------------------------------
// `wharf hash-password`

fn hash_password_cli(stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = wharf_command()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wharf hash-password");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn hash_password_output_in_a_config_authenticates_that_password() {
    let password = "correct horse battery staple";
    let out = tokio::task::spawn_blocking(move || hash_password_cli(&format!("{password}\n")))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hash = stdout.trim_end();
    assert!(
        hash.starts_with("$argon2id$"),
        "not a PHC string: {stdout:?}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(!hash.contains(password));

    let m = Mirror::start(&access_with_hash("require_auth = true", hash)).await;
    assert_eq!(
        m.get("/v2/")
            .basic_auth(USER, Some(password))
            .sent()
            .await
            .status(),
        200,
        "the hashed password logs in"
    );
    let r = m
        .get("/v2/")
        .basic_auth(USER, Some(format!("{password}\n")))
        .sent()
        .await;
    assert_eq!(r.status(), 401, "the newline was not part of the password");
}

#[tokio::test]
async fn hash_password_refuses_an_empty_password() {
    let out = tokio::task::spawn_blocking(|| hash_password_cli(""))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.stderr.is_empty());
}

// ---------------------------------------------------------------------------------------------
// TLS

/// wharf served with `serve_tls` on 127.0.0.1, port 0.
struct TlsMirror {
    addr: SocketAddr,
    tls: wharf::server::TlsReloader,
    up: FakeRegistry,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _go: GoFake,
    _dir: TempDir,
}

impl Drop for TlsMirror {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TlsMirror {
    async fn start(files: &TlsFiles, extra: &str) -> TlsMirror {
        let up = FakeRegistry::start().await;
        let go = GoFake::start().await;
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "{}\n[tls]\ncert = {}\nkey = {}\n",
            mirror_toml(&up.url(), &go.url(), dir.path(), extra),
            toml::Value::String(files.cert.display().to_string()),
            toml::Value::String(files.key.display().to_string()),
        );
        let config = wharf::config::Config::from_toml_str(&toml)
            .unwrap_or_else(|e| panic!("config rejected: {e}\n{toml}"));
        let tls_config = config.tls.clone().expect("[tls] parsed");
        let tls = wharf::server::TlsReloader::load(&tls_config.cert, &tls_config.key)
            .expect("load the generated certificate");
        let state = wharf::AppState::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(wharf::serve_tls(listener, state, tls.clone(), async move {
            let _ = rx.await;
        }));
        TlsMirror {
            addr,
            tls,
            up,
            shutdown: Some(tx),
            _go: go,
            _dir: dir,
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }
}

/// A client that trusts only `ca`; each one has its own connection pool, so a new client means a
/// new TLS handshake.
fn trusting(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_der(&ca.cert_der).unwrap()])
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn peer_certificate(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

fn tls_setup() -> (TempDir, TlsFiles, Ca, tlsgen::ServerCert) {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::in_dir(dir.path());
    let ca = Ca::new("wharf test CA one");
    let cert = ca.server_cert(&["localhost", "127.0.0.1"]);
    files.write(&cert);
    (dir, files, ca, cert)
}

#[tokio::test]
async fn tls_listener_serves_clients_that_trust_its_ca_over_http2() {
    let (_d, files, ca, cert) = tls_setup();
    let m = TlsMirror::start(&files, "").await;
    let c = trusting(&ca);
    for host in ["127.0.0.1", "localhost"] {
        let r = c.get(m.url(host, "/v2/")).sent().await;
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "ALPN offers h2 ({host})"
        );
        assert_eq!(peer_certificate(&r), cert.cert_der, "{host}");
    }
    let (digest, body) = m.up.put_image("team/app", "v1", &[bytes_of(70_000, 3)]);
    let r = c
        .get(m.url("127.0.0.1", "/v2/team/app/manifests/v1"))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), digest.as_str());
    assert_eq!(read_body(r).await, body);

    let stranger = trusting(&Ca::new("some other CA"));
    let err = stranger
        .get(m.url("127.0.0.1", "/v2/"))
        .send()
        .await
        .expect_err("a client that does not trust the CA must not get an answer");
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn basic_auth_is_checked_over_tls() {
    let (_d, files, ca, _cert) = tls_setup();
    let m = TlsMirror::start(&files, &access("require_auth = true")).await;
    let c = trusting(&ca);
    let r = c.get(m.url("localhost", "/v2/")).sent().await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), CHALLENGE);
    let r = c
        .get(m.url("localhost", "/v2/"))
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let (_d, files, ca, _cert) = tls_setup();
    let m = TlsMirror::start(&files, "").await;
    let (answer, ended) = exchange(
        m.addr,
        b"GET /v2/ HTTP/1.1\r\nHost: wharf\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ended, "a plain-HTTP client was left hanging");
    assert!(
        !answer.starts_with("HTTP/"),
        "the TLS port answered plain HTTP: {answer:?}"
    );
    let err = client()
        .get(format!("http://{}/v2/", m.addr))
        .send()
        .await
        .expect_err("plain HTTP to the TLS port must fail");
    assert!(!err.is_status(), "{err:?}");

    let r = trusting(&ca).get(m.url("127.0.0.1", "/v2/")).sent().await;
    assert_eq!(r.status(), 200, "the TLS port still serves TLS clients");
}

#[tokio::test]
async fn reloaded_certificate_is_served_to_new_connections() {
    let (_d, files, old_ca, old_cert) = tls_setup();
    let m = TlsMirror::start(&files, "").await;
    let old_client = trusting(&old_ca);
    let r = old_client.get(m.url("127.0.0.1", "/v2/")).sent().await;
    assert_eq!(peer_certificate(&r), old_cert.cert_der);

    let new_ca = Ca::new("wharf test CA two");
    let new_cert = new_ca.server_cert(&["localhost", "127.0.0.1"]);
    files.write(&new_cert);
    let r = trusting(&old_ca)
        .get(m.url("127.0.0.1", "/v2/"))
        .sent()
        .await;
    assert_eq!(
        peer_certificate(&r),
        old_cert.cert_der,
        "new files alone change nothing until reload"
    );

    m.tls.reload().expect("reload the new certificate");
    let r = trusting(&new_ca)
        .get(m.url("localhost", "/v2/"))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_certificate(&r),
        new_cert.cert_der,
        "a new connection gets the new certificate"
    );
    let err = trusting(&old_ca)
        .get(m.url("127.0.0.1", "/v2/"))
        .send()
        .await
        .expect_err("the old certificate is no longer served");
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn failed_reload_keeps_serving_the_old_certificate() {
    let (_d, files, ca, cert) = tls_setup();
    let m = TlsMirror::start(&files, "").await;

    let other = Ca::new("wharf test CA two").server_cert(&["localhost"]);
    std::fs::write(&files.key, &other.key_pem).unwrap();
    let err = m
        .tls
        .reload()
        .expect_err("a key that does not fit the cert");
    assert!(err.contains("tls"), "{err}");

    std::fs::write(&files.cert, "not a certificate\n").unwrap();
    assert!(m.tls.reload().is_err(), "garbage in the cert file");

    std::fs::remove_file(&files.key).unwrap();
    assert!(m.tls.reload().is_err(), "a missing key file");

    let r = trusting(&ca).get(m.url("127.0.0.1", "/v2/")).sent().await;
    assert_eq!(r.status(), 200);
    assert_eq!(peer_certificate(&r), cert.cert_der);
}

#[tokio::test]
async fn tls_client_that_never_handshakes_is_disconnected_after_header_read_timeout() {
    let (_d, files, ca, _cert) = tls_setup();
    let m = TlsMirror::start(&files, "[server]\nheader_read_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let idle = tokio::spawn(exchange(m.addr, b"", Duration::from_secs(10)));
    let half_hello = tokio::spawn(exchange(
        m.addr,
        &[0x16, 0x03, 0x01],
        Duration::from_secs(10),
    ));

    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = trusting(&ca).get(m.url("127.0.0.1", "/v2/")).sent().await;
    assert_eq!(r.status(), 200, "others are served meanwhile");

    for (what, task) in [("idle", idle), ("half a ClientHello", half_hello)] {
        let (_, ended) = task.await.unwrap();
        assert!(ended, "{what}: still connected after 10 s");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tls_client_that_handshakes_and_sends_nothing_is_disconnected_after_header_read_timeout() {
    let (_d, files, ca, _cert) = tls_setup();
    let m = TlsMirror::start(&files, "[server]\nheader_read_timeout = \"1s\"\n").await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.cert_der.clone()))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(m.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let started = Instant::now();
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .is_ok();
    assert!(
        ended,
        "a client that completed the handshake and sent no request was still connected after 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut only after {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Blank credentials and what password checks cost

/// An argon2id hash of `password` with small parameters (`m` KiB, one pass): the tests run
/// unoptimised, where the default parameters take about a second.
fn cheap_hash(password: &str, m: u32) -> String {
    use argon2::password_hash::PasswordHasher as _;
    let params = argon2::Params::new(m, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

/// A client that speaks HTTP/2 without TLS (h2c, prior knowledge), as the go command and curl
/// `--http2-prior-knowledge` can.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// The `sha256` of the example `[[access.token]]` in systemd/wharf.toml.
fn example_token_sha256() -> String {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/wharf.toml"))
            .unwrap();
    let token = example
        .split("#[[access.token]]")
        .nth(1)
        .expect("the example has an [[access.token]]");
    let line = token
        .lines()
        .find(|l| l.starts_with("#sha256 = "))
        .expect("the example token has a sha256");
    line.trim_start_matches("#sha256 = ")
        .trim_matches('"')
        .to_string()
}

#[tokio::test]
async fn empty_bearer_token_is_refused_over_http2() {
    // The shipped example token configured as it stands, next to a real one.
    let extra = format!(
        "{}[[access.token]]\nname = \"build-farm\"\nsha256 = \"{}\"\n",
        access("require_auth = true"),
        example_token_sha256()
    );
    let m = Mirror::start(&extra).await;
    let url = m.w.url("/v2/team/app/manifests/v1");
    let clients = [
        (h2c(), http::Version::HTTP_2),
        (client(), http::Version::HTTP_11),
    ];
    for (client, version) in &clients {
        for value in ["Bearer ", "Bearer  ", "Bearer \t", "bearer", "Bearer"] {
            let r = client.get(&url).header("authorization", value).sent().await;
            assert_eq!(r.version(), *version);
            assert_eq!(r.status(), 401, "{value:?} over {version:?}");
            assert_eq!(error_code(r).await, "UNAUTHORIZED");
        }
    }
    assert_eq!(
        m.upstream_traffic(),
        (0, 0),
        "a refused request reached upstream"
    );
    for (client, version) in &clients {
        let r = client.get(&url).bearer_auth(TOKEN).sent().await;
        assert_eq!(r.status(), 200, "the real token over {version:?}");
        assert_eq!(r.version(), *version);
    }
}

#[tokio::test]
async fn blank_basic_password_is_refused() {
    // Users whose hashes are of blank passwords (made by hand: `wharf hash-password` refuses).
    let extra = format!(
        "[access]\nrequire_auth = true\n\
         [[access.user]]\nname = \"ci\"\npassword_hash = \"{}\"\n\
         [[access.user]]\nname = \"ops\"\npassword_hash = \"{}\"\n",
        cheap_hash("", 64),
        cheap_hash("  ", 64)
    );
    let m = Mirror::start(&extra).await;
    let url = m.w.url("/v2/team/app/manifests/v1");
    for client in [client(), h2c()] {
        for (user, password) in [("ci", ""), ("ops", "  "), ("ops", " "), ("ops", "\t")] {
            let r = client
                .get(&url)
                .basic_auth(user, Some(password))
                .sent()
                .await;
            assert_eq!(
                r.status(),
                401,
                "{user}:{password:?} over {:?}",
                r.version()
            );
            assert_eq!(header(&r, "www-authenticate"), CHALLENGE);
        }
    }
    assert_eq!(
        m.w.state.access.password_checks().hashed,
        0,
        "refused unhashed"
    );
    assert_eq!(m.upstream_traffic(), (0, 0));
}

#[tokio::test]
async fn token_hash_of_the_empty_string_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for sha in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        let toml = mirror_toml(
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            dir.path(),
            &format!("[access]\n[[access.token]]\nname = \"build-farm\"\nsha256 = \"{sha}\"\n"),
        );
        let e = wharf::config::Config::from_toml_str(&toml)
            .expect_err("the empty string's hash loads")
            .to_string();
        assert!(e.contains("access.token \"build-farm\": sha256"), "{e}");
        assert!(e.contains("empty string"), "{e}");
    }
}

/// Sends `user:password` to `/v2/` and returns the status and body.
async fn try_password(m: &Mirror, user: &str, password: &str) -> (u16, String) {
    let r = m.get("/v2/").basic_auth(user, Some(password)).sent().await;
    (r.status().as_u16(), read_text(r).await)
}

#[tokio::test]
async fn unknown_user_pays_the_same_hash_work() {
    let m = Mirror::start(&access_with_hash(
        "require_auth = true",
        &cheap_hash(PASSWORD, 64),
    ))
    .await;
    let hashed = || m.w.state.access.password_checks().hashed;
    let known = try_password(&m, USER, "wrong").await;
    assert_eq!(hashed(), 1, "a known user's wrong password is hashed");
    let unknown = try_password(&m, "nobody", "wrong").await;
    assert_eq!(hashed(), 2, "so is an unknown user's");
    let unknown_right = try_password(&m, "nobody", PASSWORD).await;
    assert_eq!(hashed(), 3);
    assert_eq!(known.0, 401);
    assert_eq!(unknown, known, "the answers are the same too");
    assert_eq!(unknown_right, known, "another user's password is no key");
}

#[tokio::test]
async fn a_successful_password_is_verified_once() {
    let m = Mirror::start(&access_with_hash(
        "require_auth = true",
        &cheap_hash(PASSWORD, 64),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(try_password(&m, USER, PASSWORD).await.0, 200);
    }
    let r = m
        .get("/v2/team/app/manifests/v1")
        .basic_auth(USER, Some(PASSWORD))
        .sent()
        .await;
    assert_eq!(r.status(), 200);
    let checks = m.w.state.access.password_checks();
    assert_eq!((checks.hashed, checks.remembered), (1, 3));
    // Remembering a password does not let a wrong one through.
    assert_eq!(try_password(&m, USER, "s3cret pass ").await.0, 401);
    assert_eq!(m.w.state.access.password_checks().hashed, 2);
}

#[tokio::test]
async fn argon2_work_is_bounded() {
    let m = Mirror::start(&access_with_hash(
        "require_auth = true",
        &cheap_hash(PASSWORD, 1024),
    ))
    .await;
    let limit = m.w.state.access.password_checks().limit;
    let n = 4 * limit + 8;
    let mut tasks = Vec::new();
    for i in 0..n {
        // A client each, so each request has its own connection.
        let url = m.w.url("/v2/");
        tasks.push(tokio::spawn(async move {
            let user = if i % 2 == 0 { USER } else { "nobody" };
            client()
                .get(url)
                .basic_auth(user, Some(format!("wrong {i}")))
                .sent()
                .await
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let checks = m.w.state.access.password_checks();
    assert_eq!(checks.hashed, n as u64);
    assert!(
        (1..=limit).contains(&checks.most_at_once),
        "{} argon2 runs at once, limit {limit}",
        checks.most_at_once
    );
    let r = m.get("/metrics").bearer_auth(TOKEN).sent().await;
    let text = read_text(r).await;
    assert!(
        text.contains(&format!("wharf_password_hashes_total {n}")),
        "{text}"
    );
}

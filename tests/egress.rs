//! The egress policy at work: every refused target gets a clear error and zero connections.
//! Planted listeners sit on loopback addresses (127.0.0.2, ...) that the test policy treats as
//! forbidden; `egress.resolve` pins test names, so the DNS cases are deterministic.

mod support;
use support::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};

/// A trap listener that records every request with *all* its `Authorization` headers. It
/// answers as a token service (`/token`), as a CDN (any path ending in a digest it holds) and,
/// with `realm` set, as a registry that demands `Bearer good-token` and challenges for `realm`.
struct Trap {
    addr: SocketAddr,
    state: Arc<TrapState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct TrapState {
    seen: Mutex<Vec<(String, Vec<String>)>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    realm: Mutex<Option<String>>,
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Trap {
    async fn start() -> Trap {
        let state = Arc::new(TrapState::default());
        let app = axum::Router::new()
            .fallback(trap_handler)
            .with_state(state.clone());
        let (addr, task) = serve_router("127.0.0.1:0", app).await;
        Trap { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn put_blob(&self, body: &[u8]) -> String {
        insert_blob(&self.state.blobs, body)
    }

    fn seen(&self) -> Vec<(String, Vec<String>)> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn trap_handler(State(st): State<Arc<TrapState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let authorization: Vec<String> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    st.seen
        .lock()
        .unwrap()
        .push((path.clone(), authorization.clone()));
    if path == "/token" {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"token":"good-token","expires_in":300}"#,
        )
            .into_response();
    }
    let realm = st.realm.lock().unwrap().clone();
    if let Some(realm) = realm
        && authorization != ["Bearer good-token"]
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{realm}",service="trap""#),
            )],
        )
            .into_response();
    }
    let digest = path.rsplit('/').next().unwrap_or("");
    let Some(body) = st.blobs.lock().unwrap().get(digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = body.len();
    let body = if req.method() == Method::HEAD {
        Vec::new()
    } else {
        body
    };
    (
        [
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".into()),
        ],
        body,
    )
        .into_response()
}

/// `Authorization: Basic` for `user:password`, as a client would send it.
fn basic(user_and_password: &str) -> String {
    let raw = user_and_password.as_bytes();
    let t = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("Basic ");
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                t[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// `config` with wharf logging in to its last upstream as `mirror` / `secret`.
fn with_login(config: WharfConfig, dir: &std::path::Path) -> WharfConfig {
    config.login(&dir.join("pw"), "secret")
}

fn conns(f: &FakeRegistry) -> usize {
    f.state.connections.load(Ordering::SeqCst)
}

async fn wharf_with(up: &FakeRegistry, dir: &std::path::Path, egress: &str) -> Wharf {
    Wharf::serve(
        WharfConfig::new(dir)
            .upstream("fake.test", &up.url())
            .no_allow()
            .timeouts()
            .egress(egress),
    )
    .await
}

async fn get_blob(w: &Wharf, d: &str) -> (u16, String) {
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn redirect_to_cloud_metadata_is_refused_before_connecting() {
    let up = FakeRegistry::start().await;
    let d = up.put_blob(b"layer");
    up.set_blob_mode(BlobMode::Redirect("http://169.254.169.254".into()));
    let dir = tempfile::tempdir().unwrap();
    let w = wharf_with(&up, dir.path(), r#"allow = ["127.0.0.1"]"#).await;
    let (status, body) = get_blob(&w, &d).await;
    assert_eq!(status, 502);
    assert!(
        body.contains("169.254.169.254") && body.contains("egress.allow"),
        "{body}"
    );
}

#[tokio::test]
async fn names_resolving_to_forbidden_addresses_get_no_connection() {
    let up = FakeRegistry::start().await;
    let planted = FakeRegistry::start_on("127.0.0.2:0").await;
    let port = planted.addr.port();
    let d = up.put_blob(b"layer");
    planted.put_blob(b"layer");
    let dir = tempfile::tempdir().unwrap();
    // Allowed names, but their addresses are loopback (private-range stand-ins here): refused.
    let egress = r#"allow = ["127.0.0.1", "internal.test", "mapped.test"]
resolve = { "internal.test" = ["127.0.0.2"], "mapped.test" = ["::ffff:127.0.0.2"] }"#;
    let w = wharf_with(&up, dir.path(), egress).await;
    for host in ["internal.test", "mapped.test"] {
        up.redirect_to(format!("{host}:{port}"));
        let (status, body) = get_blob(&w, &d).await;
        assert_eq!(status, 502, "{host}");
        assert!(body.contains("cannot connect"), "{host}: {body}");
    }
    assert_eq!(conns(&planted), 0, "the planted listener saw a connection");
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn allow_cidrs_opens_a_range_on_purpose() {
    let up = FakeRegistry::start().await;
    let cdn = FakeRegistry::start_on("127.0.0.2:0").await;
    let d = up.put_blob(b"layer");
    cdn.put_blob(b"layer");
    up.redirect_to(format!("cdn.test:{}", cdn.addr.port()));
    let dir = tempfile::tempdir().unwrap();
    let egress = r#"allow = ["127.0.0.1", "cdn.test"]
allow_cidrs = ["127.0.0.2/32"]
resolve = { "cdn.test" = ["127.0.0.2"] }"#;
    let w = wharf_with(&up, dir.path(), egress).await;
    let (status, body) = get_blob(&w, &d).await;
    assert_eq!((status, body.as_str()), (200, "layer"));
    assert_eq!(conns(&cdn), 1);
}

#[tokio::test]
async fn ip_literals_not_listed_are_refused() {
    let up = FakeRegistry::start().await;
    let planted = FakeRegistry::start_on("127.0.0.3:0").await;
    let d = up.put_blob(b"layer");
    up.redirect_to(format!("127.0.0.3:{}", planted.addr.port()));
    let dir = tempfile::tempdir().unwrap();
    let w = wharf_with(&up, dir.path(), r#"allow = ["127.0.0.1"]"#).await;
    let (status, body) = get_blob(&w, &d).await;
    assert_eq!(status, 502);
    assert!(body.contains("127.0.0.3"), "{body}");
    assert_eq!(conns(&planted), 0);
}

#[tokio::test]
async fn authorization_dropped_on_a_host_change_never_comes_back() {
    // A (registry, wants a token) -> B (another host) -> A again: the last hop must carry no
    // Authorization, although it returns to the host that was given one.
    let a = FakeRegistry::start().await;
    let b = FakeRegistry::start_on("127.0.0.4:0").await;
    let data = bytes_of(10_000, 3);
    let d = a.put_blob(&data);
    b.put_blob(&data);
    *a.state.require_token.lock().unwrap() = true;
    a.redirect_to(format!("b.test:{}", b.addr.port()));
    b.redirect_to(format!("127.0.0.1:{}/final", a.addr.port()));
    let dir = tempfile::tempdir().unwrap();
    let egress = r#"allow = ["127.0.0.1", "b.test"]
allow_cidrs = ["127.0.0.4/32"]
resolve = { "b.test" = ["127.0.0.4"] }"#;
    let w = wharf_with(&a, dir.path(), egress).await;
    let r = get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(read_body(r).await, data);
    let seen = a.seen();
    let back = seen
        .iter()
        .find(|s| s.path.starts_with("/final/"))
        .expect("chain returned to A");
    assert_eq!(
        back.authorization, None,
        "credentials came back on the A -> B -> A chain"
    );
    assert!(b.seen().iter().all(|s| s.authorization.is_none()));
    assert!(
        seen.iter()
            .any(|s| s.authorization.as_deref() == Some("Bearer good-token"))
    );
}

#[tokio::test]
async fn too_many_redirects_are_refused() {
    let up = FakeRegistry::start().await;
    let d = up.put_blob(b"layer");
    // Redirects to itself forever.
    up.set_blob_mode(BlobMode::Redirect(up.url()));
    let dir = tempfile::tempdir().unwrap();
    let w = wharf_with(
        &up,
        dir.path(),
        "allow = [\"127.0.0.1\"]\nmax_redirects = 3",
    )
    .await;
    let (status, body) = get_blob(&w, &d).await;
    assert_eq!(status, 502);
    assert!(body.contains("redirects"), "{body}");
    assert_eq!(
        up.count("GET", "/blobs/"),
        4,
        "the first request and three hops"
    );
}

#[test]
fn check_egress_explains_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        "[egress]\nallow = [\"mirror.test\", \"meta.test\"]\nresolve = { \"mirror.test\" = [\"10.0.0.7\", \"93.184.216.34\"], \"meta.test\" = [\"169.254.169.254\"] }\n",
    )
    .unwrap();
    let run = |url: &str| run_check_egress(&cfg, url);
    let (code, text) = run("https://mirror.test/v2/");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("allowed by egress.allow entry \"mirror.test\""),
        "{text}"
    );
    assert!(
        text.contains("10.0.0.7") && text.contains("private") && text.contains("REFUSED"),
        "{text}"
    );
    assert!(
        text.contains("93.184.216.34") && text.contains("public"),
        "{text}"
    );
    let (code, text) = run("http://meta.test/latest/meta-data/");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("link-local") && text.contains("verdict: refused"),
        "{text}"
    );
    let (code, text) = run("https://elsewhere.test/");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("egress.allow"), "{text}");
}

fn run_check_egress(cfg: &std::path::Path, url: &str) -> (Option<i32>, String) {
    let out = wharf_command()
        .args(["check-egress", "--config"])
        .arg(cfg)
        .arg(url)
        .output()
        .unwrap();
    (out.status.code(), stdout(&out))
}

#[test]
fn check_egress_does_not_resolve_refused_names() {
    // `localhost` resolves anywhere (to loopback), so any lookup would show in the report.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(&cfg, "[egress]\nallow = [\"mirror.test\"]\n").unwrap();
    let (code, text) = run_check_egress(&cfg, "http://localhost:8080/v2/");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("host: REFUSED"), "{text}");
    assert!(text.contains("not resolved"), "{text}");
    assert!(
        !text.contains("127.0.0.1") && !text.contains("::1") && !text.contains("DNS"),
        "a refused name was looked up: {text}"
    );
}

#[tokio::test]
async fn userinfo_in_redirect_location_is_not_sent() {
    let up = FakeRegistry::start().await;
    let cdn = Trap::start().await;
    let d = up.put_blob(b"layer");
    cdn.put_blob(b"layer");
    up.redirect_to(format!("user:secret@127.0.0.1:{}", cdn.addr.port()));
    let dir = tempfile::tempdir().unwrap();
    let w = wharf_with(&up, dir.path(), r#"allow = ["127.0.0.1"]"#).await;
    let (status, body) = get_blob(&w, &d).await;
    assert_eq!((status, body.as_str()), (200, "layer"));
    let seen = cdn.seen();
    assert!(!seen.is_empty());
    for (path, authorization) in seen {
        assert!(
            authorization.is_empty(),
            "{path}: the Location's userinfo went out as {authorization:?}"
        );
    }
}

#[tokio::test]
async fn userinfo_in_realm_is_not_sent() {
    // The registry and its token service on one origin, so the upstream's own credentials may
    // go to the realm; the realm's userinfo must not go anywhere, alone or as a second header.
    for with_credentials in [false, true] {
        let up = Trap::start().await;
        let data = bytes_of(1000, 4);
        let d = up.put_blob(&data);
        *up.state.realm.lock().unwrap() = Some(format!(
            "http://realm-user:realm-pw@127.0.0.1:{}/token",
            up.addr.port()
        ));
        let dir = tempfile::tempdir().unwrap();
        let mut config = WharfConfig::new(dir.path()).upstream("trap", &up.url());
        if with_credentials {
            config = with_login(config, dir.path());
        }
        let w = Wharf::serve(config).await;
        let (status, body) = get_blob(&w, &d).await;
        assert_eq!(status, 200, "{body}");
        let tokens: Vec<Vec<String>> = up
            .seen()
            .into_iter()
            .filter(|(path, _)| path == "/token")
            .map(|(_, a)| a)
            .collect();
        assert!(!tokens.is_empty());
        let want: Vec<String> = if with_credentials {
            vec![basic("mirror:secret")]
        } else {
            Vec::new()
        };
        for authorization in tokens {
            assert_eq!(authorization, want, "credentials: {with_credentials}");
        }
    }
}

#[tokio::test]
async fn allow_entry_with_port_refuses_other_ports() {
    let up = FakeRegistry::start().await;
    let planted = FakeRegistry::start().await;
    let d = up.put_blob(b"layer");
    planted.put_blob(b"layer");
    up.set_blob_mode(BlobMode::Redirect(planted.url()));
    let dir = tempfile::tempdir().unwrap();
    let egress = format!("allow = [\"127.0.0.1:{}\"]", up.addr.port());
    let w = wharf_with(&up, dir.path(), &egress).await;
    let (status, body) = get_blob(&w, &d).await;
    assert_eq!(status, 502, "{body}");
    let entry = format!("127.0.0.1:{}", planted.addr.port());
    assert!(
        body.contains(&entry) && body.contains("egress.allow"),
        "{body}"
    );
    assert_eq!(
        up.count("GET", "/blobs/"),
        1,
        "the listed port was contacted"
    );
    assert_eq!(conns(&planted), 0, "another port of the host was contacted");
}

#[tokio::test]
async fn credentials_are_not_sent_to_a_realm_on_another_port() {
    let up = FakeRegistry::start().await;
    let realm = Trap::start().await;
    *up.state.require_token.lock().unwrap() = true;
    *up.state.realm.lock().unwrap() = Some(format!("{}/token", realm.url()));
    up.put_image("app", "v1", &[bytes_of(10, 1)]);
    let entry = format!("127.0.0.1:{}", realm.addr.port());

    // A bare entry lets wharf contact the realm's port, but not hand it the credentials.
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(with_login(
        WharfConfig::fake(&up.url(), dir.path()),
        dir.path(),
    ))
    .await;
    let r = get(w.url("/v2/app/manifests/v1")).await;
    assert_eq!(r.status(), 502);
    let body = read_text(r).await;
    assert!(
        body.contains(&entry) && body.contains("egress.allow"),
        "{body}"
    );
    assert!(realm.seen().is_empty(), "{:?}", realm.seen());
    w.stop().await;

    // Listing the realm's host:port is the operator's say-so.
    let dir = tempfile::tempdir().unwrap();
    let config = WharfConfig::fake(&up.url(), dir.path()).allow(&["127.0.0.1", &entry]);
    let w = Wharf::serve(with_login(config, dir.path())).await;
    let r = get(w.url("/v2/app/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    let seen = realm.seen();
    assert!(!seen.is_empty());
    for (path, authorization) in seen {
        assert_eq!(
            (path.as_str(), authorization),
            ("/token", vec![basic("mirror:secret")])
        );
    }
}

#[tokio::test]
async fn a_challenge_from_a_redirected_hop_gets_no_login() {
    // The upstream (wharf logs in to it) redirects a blob to a CDN host on the same port class;
    // the CDN answers 401 naming its own token service. wharf must not log in there.
    let up = FakeRegistry::start().await;
    let cdn = Trap::start().await;
    let data = bytes_of(5_000, 4);
    let d = up.put_blob(&data);
    *cdn.state.realm.lock().unwrap() = Some(format!("http://{}/token", cdn.addr));
    up.redirect_to(cdn.addr);
    let dir = tempfile::tempdir().unwrap();
    let cdn_entry = format!("127.0.0.1:{}", cdn.addr.port());
    let config = WharfConfig::fake(&up.url(), dir.path()).allow(&["127.0.0.1", &cdn_entry]);
    let w = Wharf::serve(with_login(config, dir.path())).await;
    let (status, _) = get_blob(&w, &d).await;
    assert_ne!(status, 200);
    let seen = cdn.seen();
    assert!(
        !seen.iter().any(|(p, _)| p == "/token"),
        "wharf logged in to a realm named by a redirected hop: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, a)| a.is_empty()),
        "credentials reached the CDN: {seen:?}"
    );
}

//! `wharf doctor [URL]`, run on a client machine: can this machine pull through that wharf, and
//! if not, what to change. One line per check (`ok`, `warn`, `FAIL`), in the order a client
//! meets them: the connection, TLS (chain and name, with `--ca` for a private CA), wharf itself
//! (`/healthz`), the registry API and authentication (`/v2/`), each upstream's state as
//! `/healthz` reports it, the checksum-database route (`/go/sumdb/<name>/supported`), and the go
//! command's own settings here.
//!
//! Owns: the checks and their wording. Must not: send credentials over a TLS connection that did
//! not verify (the checks stop there), print a secret, or go through an HTTP proxy (it checks
//! that wharf is reachable from here, directly).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, StatusCode, header};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;

use super::client_config::Endpoint;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A certificate that expires sooner than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the command line gave.
#[derive(Debug, Clone, Default)]
pub struct DoctorArgs {
    pub url: String,
    /// How the URL was chosen, when it was not given.
    pub url_note: Option<String>,
    pub ca: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check's line.
#[derive(Debug, Clone)]
pub struct Line {
    pub verdict: Verdict,
    pub check: String,
    pub detail: String,
}

/// Every line, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, verdict: Verdict, check: &str, detail: String) {
        self.lines.push(Line {
            verdict,
            check: check.to_string(),
            detail,
        });
    }
    fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.push(Verdict::Ok, check, detail.into());
    }
    fn warn(&mut self, check: &str, what: impl Into<String>, fix: &str) {
        self.push(Verdict::Warn, check, with_fix(what.into(), fix));
    }
    fn fail(&mut self, check: &str, what: impl Into<String>, fix: &str) {
        self.push(Verdict::Fail, check, with_fix(what.into(), fix));
    }

    pub fn failed(&self) -> bool {
        self.lines.iter().any(|l| l.verdict == Verdict::Fail)
    }

    pub fn render(&self) -> String {
        let width = self
            .lines
            .iter()
            .map(|l| l.check.len())
            .max()
            .unwrap_or(0)
            .min(40);
        let mut o = String::new();
        for l in &self.lines {
            let word = match l.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            // One line each: nothing from a server may break it.
            let detail = l.detail.replace(['\n', '\r'], " ");
            o += &format!("{word:<4}  {:<width$}  {detail}\n", l.check);
        }
        o
    }
}

fn with_fix(what: String, fix: &str) -> String {
    if fix.is_empty() {
        what
    } else {
        format!("{what}; fix: {fix}")
    }
}

/// Credentials for a wharf with `[access]`: flags first, then the environment the other
/// commands read (`WHARF_TOKEN`, or `WHARF_USER` with `WHARF_PASSWORD`).
struct Credentials {
    header: HeaderValue,
    /// `user NAME` or `a token`, for messages.
    who: String,
}

fn read_secret(path: &Path, what: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(secret)
}

fn credentials(args: &DoctorArgs) -> Result<Option<Credentials>, String> {
    use base64::Engine as _;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let token = match &args.token_file {
        Some(f) => Some(read_secret(f, "--token-file")?),
        None if args.user.is_none() => env("WHARF_TOKEN"),
        None => None,
    };
    let user = args.user.clone().or_else(|| {
        if token.is_none() {
            env("WHARF_USER")
        } else {
            None
        }
    });
    let (value, who) = match (token, user) {
        (Some(_), Some(_)) if args.token_file.is_some() => {
            return Err("give --user or --token-file, not both".into());
        }
        (Some(t), _) => (format!("Bearer {t}"), "a token".to_string()),
        (None, Some(u)) => {
            let password = match &args.password_file {
                Some(f) => read_secret(f, "--password-file")?,
                None => env("WHARF_PASSWORD").ok_or_else(|| {
                    format!(
                        "user {u}: give the password with --password-file FILE or WHARF_PASSWORD"
                    )
                })?,
            };
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{password}"));
            (format!("Basic {b}"), format!("user {u}"))
        }
        (None, None) => return Ok(None),
    };
    let mut header = HeaderValue::from_str(&value)
        .map_err(|_| "the credentials contain characters a header cannot carry".to_string())?;
    header.set_sensitive(true);
    Ok(Some(Credentials { header, who }))
}

/// The system's CA certificates, plus `--ca`.
fn roots(ca: Option<&Path>) -> Result<(RootCertStore, usize), String> {
    use rustls_pki_types::pem::PemObject as _;
    let mut store = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (system, _) = store.add_parsable_certificates(native.certs);
    if let Some(path) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("--ca {}: no PEM certificate in it", path.display()));
        }
        for c in certs {
            store
                .add(c)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        }
    }
    Ok((store, system))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The deepest cause of an error, for one-line messages.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

fn date(t: UnixTime) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `DnsName("a.example")` and `IpAddress(10.0.0.1)` (how the verifier lists a certificate's
/// names) as `a.example` and `10.0.0.1`.
fn plain_name(presented: &str) -> String {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|s| s.strip_suffix(')'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| presented.to_string())
}

/// Runs every check against `args.url`.
pub async fn run(args: &DoctorArgs) -> Report {
    let mut r = Report::default();
    let ep = match Endpoint::parse(&args.url) {
        Ok(ep) => ep,
        Err(e) => {
            r.fail("url", e, "");
            return r;
        }
    };
    if let Some(note) = &args.url_note {
        r.ok("url", format!("{} ({note})", ep.base));
    }
    let creds = match credentials(args) {
        Ok(c) => c,
        Err(e) => {
            r.fail("credentials", e, "");
            return r;
        }
    };
    let url = match reqwest::Url::parse(&ep.base) {
        Ok(u) => u,
        Err(e) => {
            r.fail("url", e.to_string(), "");
            return r;
        }
    };
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);

    // 1. The connection.
    let Some(tcp) = connect(&mut r, &host, port, &ep.authority).await else {
        return r;
    };

    // 2. TLS.
    let tls = if ep.https {
        let (store, system) = match roots(args.ca.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                r.fail("tls", e, "give --ca a PEM file with wharf's CA certificate");
                return r;
            }
        };
        if store.is_empty() {
            r.fail(
                "tls",
                "this machine trusts no CA certificates",
                "install ca-certificates, or pass --ca FILE with wharf's CA",
            );
            return r;
        }
        let source = match (&args.ca, system) {
            (Some(ca), 0) => format!("--ca {}", ca.display()),
            (Some(ca), _) => format!("the system's CAs and --ca {}", ca.display()),
            (None, _) => "the system's CAs".to_string(),
        };
        match check_tls(&mut r, tcp, &host, store, &source).await {
            Some(config) => Some(config),
            None => return r,
        }
    } else {
        drop(tcp);
        None
    };

    // 3. wharf itself.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if let Some(config) = tls {
        builder = builder.tls_backend_preconfigured(config);
    }
    let http = match builder.build() {
        Ok(h) => h,
        Err(e) => {
            r.fail("wharf", format!("cannot build an HTTP client: {e}"), "");
            return r;
        }
    };
    let Some(health) = healthz(&mut r, &http, &ep).await else {
        return r;
    };

    // 4. The registry API and authentication.
    let creds = registry(&mut r, &http, &ep, creds).await;

    // 5. Upstreams as wharf reports them.
    upstreams(&mut r, &health);

    // 6. The checksum database route, for the database the go command here would use.
    let go = go_settings(&mut r, &ep).await;
    sumdb(&mut r, &http, &ep, creds.as_ref(), &go).await;
    r
}

/// Resolves and connects; a failure is the one line of the report.
async fn connect(
    r: &mut Report,
    host: &str,
    port: u16,
    authority: &str,
) -> Option<tokio::net::TcpStream> {
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                r.fail(
                    "connect",
                    format!("cannot resolve {host}: {e}"),
                    "check the host name in the URL (DNS, /etc/hosts)",
                );
                return None;
            }
            Err(_) => {
                r.fail(
                    "connect",
                    format!("resolving {host} took longer than {CONNECT_TIMEOUT:?}"),
                    "check this machine's DNS",
                );
                return None;
            }
        };
    let mut last = String::from("no address");
    for addr in &addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                r.ok(
                    "connect",
                    format!("{authority} accepts connections ({addr})"),
                );
                return Some(s);
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    r.fail(
        "connect",
        format!("nothing answers at {authority} ({last})"),
        "is wharf running, and is this its listen address and port? (a firewall?)",
    );
    None
}

/// The handshake with the system's CAs (and `--ca`): the chain, the name, the dates. Returns
/// the client config the HTTP checks use, or `None` after a FAIL line.
async fn check_tls(
    r: &mut Report,
    tcp: tokio::net::TcpStream,
    host: &str,
    store: RootCertStore,
    source: &str,
) -> Option<rustls::ClientConfig> {
    let provider = provider();
    let verifier = match WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        provider.clone(),
    )
    .build()
    {
        Ok(v) => v,
        Err(e) => {
            r.fail("tls", format!("cannot set up certificate checks: {e}"), "");
            return None;
        }
    };
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .with_webpki_verifier(verifier.clone())
            .with_no_client_auth(),
        Err(e) => {
            r.fail("tls", format!("TLS client: {e}"), "");
            return None;
        }
    };
    let name = match ServerName::try_from(host.to_string()) {
        Ok(n) => n,
        Err(e) => {
            r.fail("tls", format!("{host:?} is not a TLS server name: {e}"), "");
            return None;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let tls = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .cloned();
                let (what, fix) = explain_tls(tls.as_ref(), &e, host, source);
                r.fail("tls", what, &fix);
                return None;
            }
            Err(_) => {
                r.fail(
                    "tls",
                    format!("no TLS handshake within {CONNECT_TIMEOUT:?}"),
                    "if wharf serves plain HTTP (no [tls] in its config), use http://",
                );
                return None;
            }
        };
    let chain: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let Some((leaf, rest)) = chain.split_first() else {
        r.fail("tls", "the server sent no certificate", "");
        return None;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let expiry = |at: Duration| match verifier.verify_server_cert(
        leaf,
        rest,
        &name,
        &[],
        UnixTime::since_unix_epoch(at),
    ) {
        Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            not_after,
            ..
        })) => Some(not_after),
        _ => None,
    };
    // 9999-12-31T23:59:59Z, the last time a certificate can name: past every real `notAfter`.
    let until = expiry(Duration::from_secs(253_402_300_799));
    let until_text = until
        .map(|t| format!(", valid until {}", date(t)))
        .unwrap_or_default();
    match expiry(now + EXPIRY_WARNING) {
        Some(not_after) => r.warn(
            "tls",
            format!(
                "certificate for {host} verifies with {source}, but expires {}",
                date(not_after)
            ),
            "renew tls.cert on the wharf machine (systemctl reload wharf re-reads it)",
        ),
        None => r.ok(
            "tls",
            format!("certificate for {host} verifies with {source}{until_text}"),
        ),
    }
    Some(config)
}

/// What a failed handshake means, and what to change.
fn explain_tls(
    tls: Option<&rustls::Error>,
    io: &std::io::Error,
    host: &str,
    source: &str,
) -> (String, String) {
    use CertificateError as C;
    let reissue = format!(
        "use a URL with one of those names, or reissue wharf's certificate (tls.cert) with \
         {host} in its subjectAltName"
    );
    match tls {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::NotValidForNameContext { presented, .. } => {
                let names: Vec<String> = presented.iter().map(|p| plain_name(p)).collect();
                (
                    format!(
                        "name mismatch: the certificate is for {}, not {host}",
                        if names.is_empty() {
                            "no name".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                    reissue,
                )
            }
            C::NotValidForName => (
                format!("name mismatch: the certificate is not for {host}"),
                reissue,
            ),
            C::UnknownIssuer => (
                format!("the certificate is not issued by a CA trusted here ({source})"),
                "pass --ca FILE with wharf's CA, and give clients the same CA (wharf \
                 client-config --ca FILE), or install it (update-ca-certificates)"
                    .into(),
            ),
            C::ExpiredContext { not_after, .. } => (
                format!("the certificate expired {}", date(*not_after)),
                "renew tls.cert on the wharf machine (systemctl reload wharf re-reads it)".into(),
            ),
            C::Expired => (
                "the certificate has expired".into(),
                "renew tls.cert on the wharf machine".into(),
            ),
            C::NotValidYetContext { not_before, .. } => (
                format!("the certificate is valid only from {}", date(*not_before)),
                "check this machine's clock, or the certificate's dates".into(),
            ),
            C::NotValidYet => (
                "the certificate is not valid yet".into(),
                "check this machine's clock".into(),
            ),
            other => (
                format!("the certificate is refused: {other}"),
                "check tls.cert on the wharf machine".into(),
            ),
        },
        Some(
            e @ (rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }),
        ) => (
            format!("no TLS at this address ({e})"),
            "if wharf serves plain HTTP (no [tls] in its config), use http://".into(),
        ),
        Some(e) => (format!("TLS handshake failed: {e}"), String::new()),
        None => (
            format!("TLS handshake failed: {}", innermost(io)),
            "if wharf serves plain HTTP (no [tls] in its config), use http://".into(),
        ),
    }
}

/// `/healthz` as wharf writes it (`ops::health_json`).
#[derive(Debug, Deserialize)]
struct Health {
    status: String,
    #[serde(default)]
    offline: bool,
    #[serde(default)]
    upstreams: Vec<UpstreamHealth>,
    #[serde(default)]
    shared: Option<SharedHealth>,
    #[serde(default)]
    peers: Vec<PeerHealth>,
}

#[derive(Debug, Deserialize)]
struct UpstreamHealth {
    kind: String,
    name: String,
    up: bool,
    #[serde(default)]
    consecutive_failures: u32,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    auth_failures: u32,
    #[serde(default)]
    auth_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SharedHealth {
    up: bool,
    #[serde(default)]
    bucket: String,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PeerHealth {
    url: String,
    #[serde(default, rename = "self")]
    me: bool,
    up: bool,
    #[serde(default)]
    last_error: Option<String>,
}

async fn healthz(r: &mut Report, http: &reqwest::Client, ep: &Endpoint) -> Option<Health> {
    let url = format!("{}/healthz", ep.base);
    let resp = match http.get(&url).send().await {
        Ok(resp) => resp,
        Err(e) => {
            let fix = if ep.https {
                ""
            } else {
                "if wharf serves TLS ([tls] in its config), use https://"
            };
            r.fail(
                "wharf",
                format!("no HTTP answer from {url}: {}", innermost(&e)),
                fix,
            );
            return None;
        }
    };
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Health>(&body) {
        Ok(h) if status == StatusCode::OK => {
            r.ok(
                "wharf",
                format!("{} answers /healthz: {}", ep.base, h.status),
            );
            if h.offline {
                r.warn(
                    "offline",
                    "wharf runs offline: it serves only what it has cached",
                    "",
                );
            }
            Some(h)
        }
        _ => {
            r.fail(
                "wharf",
                format!(
                    "{} answers, but not as wharf (GET /healthz: {status})",
                    ep.base
                ),
                "check the port: another service answers there",
            );
            None
        }
    }
}

/// `/v2/` without credentials, then with them when wharf asks. Returns the credentials to use
/// on the next requests (none when wharf asks for none).
async fn registry(
    r: &mut Report,
    http: &reqwest::Client,
    ep: &Endpoint,
    creds: Option<Credentials>,
) -> Option<Credentials> {
    let url = format!("{}/v2/", ep.base);
    let anonymous = match http.get(&url).send().await {
        Ok(resp) => resp,
        Err(e) => {
            r.fail("registry", format!("GET /v2/: {}", innermost(&e)), "");
            return None;
        }
    };
    let api = |resp: &reqwest::Response| {
        resp.headers()
            .get("docker-distribution-api-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no Docker-Distribution-API-Version")
            .to_string()
    };
    let login = "clients log in with `docker login`, `podman login` / `skopeo login`, and \
                 ~/.netrc for the go command";
    match anonymous.status() {
        StatusCode::OK => {
            r.ok("registry", format!("/v2/ answers ({})", api(&anonymous)));
            r.ok("auth", "wharf asks for no credentials on /v2/");
            // Given anyway: they may be needed under a protected prefix ([[access.rule]]).
            creds
        }
        StatusCode::UNAUTHORIZED => {
            let challenge = anonymous
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no challenge")
                .to_string();
            let Some(creds) = creds else {
                r.ok("registry", "/v2/ answers, asking for credentials");
                r.fail(
                    "auth",
                    format!("wharf asks for credentials ({challenge}) and none were given"),
                    &format!(
                        "run doctor with --user NAME --password-file FILE or --token-file FILE \
                         (or WHARF_USER and WHARF_PASSWORD, or WHARF_TOKEN); {login}"
                    ),
                );
                return None;
            };
            let resp = http
                .get(&url)
                .header(header::AUTHORIZATION, creds.header.clone())
                .send()
                .await;
            match resp {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    r.ok("registry", format!("/v2/ answers ({})", api(&resp)));
                    r.ok(
                        "auth",
                        format!("wharf asks for credentials, and accepts {}", creds.who),
                    );
                    Some(creds)
                }
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    r.ok("registry", "/v2/ answers, asking for credentials");
                    r.warn(
                        "auth",
                        "wharf is too busy checking passwords to check these (503)",
                        "run doctor again shortly",
                    );
                    None
                }
                Ok(resp) => {
                    r.ok("registry", "/v2/ answers, asking for credentials");
                    r.fail(
                        "auth",
                        format!("wharf refuses {} ({})", creds.who, resp.status()),
                        "check the user name and password (or the token) against [access] on \
                         the wharf machine",
                    );
                    None
                }
                Err(e) => {
                    r.fail(
                        "auth",
                        format!("GET /v2/ with credentials: {}", innermost(&e)),
                        "",
                    );
                    None
                }
            }
        }
        StatusCode::FORBIDDEN => {
            r.fail(
                "registry",
                "wharf refuses this machine's address (403)",
                "add this client's network to access.allow_clients on the wharf machine",
            );
            None
        }
        other => {
            let text = anonymous.text().await.unwrap_or_default();
            let first = first_line(&text);
            r.fail(
                "registry",
                format!("GET /v2/ answered {other}: {first}"),
                "is this wharf's root URL (no path)?",
            );
            None
        }
    }
}

fn upstreams(r: &mut Report, h: &Health) {
    let recheck = "wharf serves what it has cached and fails the rest; on the wharf machine see \
                   its log and `wharf check-egress <upstream URL>`";
    for u in &h.upstreams {
        let check = format!("upstream {} {}", u.kind, u.name);
        if h.offline {
            r.ok(&check, "not contacted (offline)");
        } else if !u.up {
            r.fail(
                &check,
                format!(
                    "down: {}",
                    u.last_error.as_deref().unwrap_or("connections failed")
                ),
                recheck,
            );
        } else if u.auth_failures > 0 {
            r.fail(
                &check,
                format!(
                    "wharf cannot authenticate there ({} requests in a row): {}",
                    u.auth_failures,
                    u.auth_error.as_deref().unwrap_or("unknown error")
                ),
                "check the upstream's username and password_file, and that egress.allow \
                 admits its token realm, on the wharf machine",
            );
        } else if u.consecutive_failures > 0 {
            r.warn(
                &check,
                format!(
                    "up, but the last {} connection(s) failed: {}",
                    u.consecutive_failures,
                    u.last_error.as_deref().unwrap_or("unknown error")
                ),
                recheck,
            );
        } else {
            r.ok(&check, "up");
        }
    }
    if let Some(s) = &h.shared {
        if s.up {
            r.ok("shared", format!("bucket {} up", s.bucket));
        } else {
            r.warn(
                "shared",
                format!(
                    "bucket {} down: {}",
                    s.bucket,
                    s.last_error.as_deref().unwrap_or("unknown error")
                ),
                "wharf fills from upstream meanwhile; check [shared] on the wharf machine",
            );
        }
    }
    for p in h.peers.iter().filter(|p| !p.me) {
        let check = format!("peer {}", p.url);
        if p.up {
            r.ok(&check, "up");
        } else {
            r.warn(
                &check,
                format!(
                    "down: {}",
                    p.last_error.as_deref().unwrap_or("unknown error")
                ),
                "wharf fills from the bucket or upstream meanwhile",
            );
        }
    }
}

/// The go command's settings on this machine, as far as wharf is concerned.
#[derive(Debug, Default)]
struct GoSettings {
    /// The checksum database the go command would use (`None`: `GOSUMDB=off`).
    sumdb: Option<String>,
}

/// `go env` when the go command is here, else the environment.
async fn go_env() -> (std::collections::BTreeMap<String, String>, &'static str) {
    const VARS: [&str; 5] = ["GOPROXY", "GOSUMDB", "GONOPROXY", "GONOSUMDB", "GOPRIVATE"];
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("go")
            .arg("env")
            .arg("-json")
            .args(VARS)
            // Outside any module, and never a toolchain download: only the settings are wanted.
            .current_dir(std::env::temp_dir())
            .env("GOTOOLCHAIN", "local")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    if let Ok(Ok(out)) = out
        && out.status.success()
        && let Ok(map) = serde_json::from_slice(&out.stdout)
    {
        return (map, "go env");
    }
    let map = VARS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    (map, "the environment")
}

async fn go_settings(r: &mut Report, ep: &Endpoint) -> GoSettings {
    let (env, source) = go_env().await;
    let get = |k: &str| env.get(k).map(String::as_str).unwrap_or("");
    let want = format!("{}/go", ep.base);
    let proxy = get("GOPROXY");
    let first = proxy
        .split([',', '|'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if first == want {
        r.ok("go env", format!("GOPROXY={proxy} ({source})"));
    } else {
        r.warn(
            "go env",
            format!(
                "GOPROXY is {:?} ({source}): the go command does not fetch modules through this wharf",
                proxy
            ),
            &format!("go env -w GOPROXY={want} (see wharf client-config)"),
        );
    }
    let noproxy = get("GONOPROXY");
    if !noproxy.is_empty() && noproxy != "none" && first == want {
        r.warn(
            "go env",
            format!(
                "GONOPROXY is {noproxy:?}{}: the go command bypasses wharf for those modules and \
                 goes to their VCS",
                if get("GOPRIVATE").is_empty() {
                    ""
                } else {
                    " (GOPRIVATE implies it)"
                }
            ),
            &format!("set GONOSUMDB={noproxy} and unset GOPRIVATE, or set GONOPROXY=none"),
        );
    }
    let sumdb = get("GOSUMDB");
    let sumdb = if sumdb.is_empty() {
        "sum.golang.org"
    } else {
        sumdb
    };
    if sumdb == "off" {
        r.warn(
            "go env",
            "GOSUMDB=off: modules are not checked against a checksum database",
            "unset GOSUMDB (wharf proxies the checksum database)",
        );
        return GoSettings { sumdb: None };
    }
    // `name`, `name+hash+key` or `name+hash+key URL`: the database is named first.
    let name = sumdb.split(['+', ' ']).next().unwrap_or(sumdb).to_string();
    GoSettings { sumdb: Some(name) }
}

async fn sumdb(
    r: &mut Report,
    http: &reqwest::Client,
    ep: &Endpoint,
    creds: Option<&Credentials>,
    go: &GoSettings,
) {
    let Some(name) = &go.sumdb else {
        return;
    };
    let check = format!("sumdb {name}");
    let path = format!("/go/sumdb/{name}/supported");
    let mut req = http.get(format!("{}{path}", ep.base));
    if let Some(c) = creds {
        req = req.header(header::AUTHORIZATION, c.header.clone());
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            r.fail(&check, format!("GET {path}: {}", innermost(&e)), "");
            return;
        }
    };
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let reason = first_line(&text);
    match status {
        StatusCode::OK => r.ok(
            &check,
            format!("wharf proxies it ({path}): the go command reads it through GOPROXY"),
        ),
        StatusCode::NOT_FOUND if text.contains("go.enabled = false") => r.warn(
            "go",
            "wharf's Go module proxy is off (go.enabled = false)",
            "",
        ),
        StatusCode::NOT_FOUND | StatusCode::GONE => r.fail(
            &check,
            format!("wharf does not proxy it ({path}: {status}): the go command would ask {name} directly"),
            "set GOSUMDB to a database wharf serves (wharf client-config prints it), or add a \
             [[go.sumdb]] for it on the wharf machine",
        ),
        StatusCode::UNAUTHORIZED => r.fail(
            &check,
            format!("wharf asks for credentials on {path}"),
            "run doctor with credentials; the go command reads them from ~/.netrc (https only)",
        ),
        other => r.fail(&check, format!("GET {path}: {other}: {reason}"), ""),
    }
}

/// The first line of an answer's body, at most 200 characters, for a check's line.
fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_one_line_per_check_and_fails_on_any_fail() {
        let mut r = Report::default();
        r.ok("connect", "fine");
        r.warn("go env", "odd\nvalue", "change it");
        assert!(!r.failed());
        r.fail("tls", "broken", "fix it");
        assert!(r.failed());
        let text = r.render();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.contains("warn  go env   odd value; fix: change it"),
            "{text}"
        );
        assert!(
            text.contains("FAIL  tls      broken; fix: fix it"),
            "{text}"
        );
    }

    #[test]
    fn certificate_names_are_shown_plain() {
        assert_eq!(plain_name("DnsName(\"wharf.example\")"), "wharf.example");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("Other(x)"), "Other(x)");
    }
}

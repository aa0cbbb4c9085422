//! How the air-gap commands reach wharf: over HTTP to the server that answers at `--server` (or
//! at the config's `listen`), else in-process, driving the same router on a freshly opened data
//! directory (which takes sled's lock, so two processes never share an index).
//!
//! `wharf gc` and `wharf stats` use it too: it is the one way the CLI talks to a server
//! (`stats --watch` through `Client::running`: a running server only, no admin secret).
//!
//! Admin requests carry the admin secret (`admin::secret`): read from the data directory when
//! the server is on this machine, never sent anywhere else. In-process requests carry a loopback
//! `ConnectInfo`, `Host: localhost` and the in-process state's secret, so the admin guard treats
//! them exactly like a local operator's, and `[access]` is left out: whoever can open the data
//! directory already owns everything in it.
//!
//! TLS: a `--server` URL is verified as any HTTPS client would (system roots, the URL's host).
//! Our own `listen` address is reached on loopback, where the certificate's names do not match,
//! so there the server must present exactly the certificate in `tls.cert` (pinned), never "any".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use tower::ServiceExt as _;

use crate::app::AppState;
use crate::bundle::AdminErrorBody;
use crate::config::Config;
use crate::secret::{self, AdminSecret};

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Where requests go.
pub enum Client {
    Remote {
        base: String,
        http: reqwest::Client,
        auth: Option<HeaderValue>,
        /// The admin secret, when the server is on this machine.
        admin: Option<HeaderValue>,
    },
    Local {
        state: AppState,
        router: Router,
    },
}

/// A request body.
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    Stream(ByteStream),
}

/// An answer: status, headers, and a body to read or stream.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: ByteStream,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The whole body, refused beyond `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk.map_err(|e| format!("reading the answer: {e}"))?;
            if out.len() + chunk.len() > limit {
                return Err(format!("answer larger than {limit} bytes"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    pub fn into_stream(self) -> ByteStream {
        self.body
    }

    /// Reads and discards the body, returning its length.
    pub async fn drain(mut self, mut each: impl FnMut(u64)) -> Result<u64, String> {
        let mut n = 0u64;
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk.map_err(|e| format!("transfer cut short: {e}"))?;
            n += chunk.len() as u64;
            each(chunk.len() as u64);
        }
        Ok(n)
    }

    /// The error an answer carries: the admin API's `{"error": ...}`, a registry envelope's
    /// first message, or the text body's first lines.
    pub async fn error(self) -> String {
        let status = self.status;
        let body = self.bytes(64 << 10).await.unwrap_or_default();
        if let Ok(e) = serde_json::from_slice::<AdminErrorBody>(&body) {
            return e.error;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(m) = v["errors"][0]["message"].as_str()
        {
            return format!("{status}: {m}");
        }
        let text = String::from_utf8_lossy(&body);
        let text: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .collect();
        if text.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {}", text.join(" "))
        }
    }
}

/// Where a command works: what the flags asked for.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// The running wharf at the config's `listen` if one answers there, else the data directory.
    Auto,
    /// `--server URL`.
    Server(&'a str),
    /// `--data-dir DIR` given explicitly: that directory, opened in this process, never a server
    /// found at the config's address (which may keep another directory).
    DataDir,
}

impl<'a> Via<'a> {
    pub fn of(server: Option<&'a str>, explicit_data_dir: bool) -> Result<Via<'a>, String> {
        match (server, explicit_data_dir) {
            (Some(_), true) => Err(
                "--server and --data-dir contradict each other: a server keeps its own data \
                 directory; give one of them"
                    .into(),
            ),
            (Some(url), false) => Ok(Via::Server(url)),
            (None, true) => Ok(Via::DataDir),
            (None, false) => Ok(Via::Auto),
        }
    }
}

impl Client {
    /// The running wharf at `server`, or at the config's `listen` address if it answers there;
    /// otherwise (and always with `Via::DataDir`) the data directory opened in this process.
    pub async fn connect(config: &Config, via: Via<'_>) -> Result<Client, String> {
        let auth = credentials()?;
        let server = match via {
            Via::Server(url) => Some(url),
            Via::DataDir => return Client::local(config, None),
            Via::Auto => None,
        };
        if let Some(url) = server {
            let base = url.trim_end_matches('/').to_string();
            let http = http_client(None)?;
            probe(&http, &base)
                .await
                .map_err(|e| format!("no wharf answers at {base}: {e}"))?;
            let admin = admin_header(config, &base)?;
            return Ok(Client::Remote {
                base,
                http,
                auth,
                admin,
            });
        }
        let (base, http) = own_address(config)?;
        let probed = probe(&http, &base).await;
        if probed.is_ok() {
            let admin = admin_header(config, &base)?;
            return Ok(Client::Remote {
                base,
                http,
                auth,
                admin,
            });
        }
        let why = probed.err().map(|why| (base, why));
        Client::local(config, why)
    }

    /// The running wharf at `server`, else at the config's `listen` address; never the data
    /// directory, and without the admin secret: for `wharf stats --watch`, which reads a
    /// server's live `/metrics` (through `[access]`, with `WHARF_TOKEN` or `WHARF_USER`).
    pub async fn running(config: &Config, server: Option<&str>) -> Result<Client, String> {
        let (base, http) = match server {
            Some(url) => (url.trim_end_matches('/').to_string(), http_client(None)?),
            None => own_address(config)?,
        };
        probe(&http, &base).await.map_err(|why| {
            format!(
                "no wharf answers at {base} ({why}); --watch reads a running server (if it \
                 listens elsewhere, pass --server URL)"
            )
        })?;
        Ok(Client::Remote {
            base,
            http,
            auth: credentials()?,
            admin: None,
        })
    }

    /// The data directory opened in this process; `unanswered`: the address that was tried
    /// first and why it did not answer, for the message when the directory cannot be opened.
    fn local(config: &Config, unanswered: Option<(String, String)>) -> Result<Client, String> {
        let mut local = config.clone();
        local.access = Default::default();
        let state = match AppState::new(local) {
            Ok(s) => s,
            Err(e) => {
                let dir = config.data_dir.display();
                return Err(match unanswered {
                    Some((base, why)) => format!(
                        "no wharf answers at {base} ({why}), and the data directory {dir} cannot \
                         be opened: {e}\n(if a wharf is running with another address, pass \
                         --server URL)"
                    ),
                    None => format!("the data directory {dir} cannot be opened: {e}"),
                });
            }
        };
        let router = crate::web::router(state.clone());
        Ok(Client::Local { state, router })
    }

    /// The router of a running server's own state, in-process (the server's background tasks
    /// use the commands' logic through it).
    pub fn in_process(state: AppState) -> Client {
        let router = crate::web::router(state.clone());
        Client::Local { state, router }
    }

    /// `in-process` or the server's URL, for messages.
    pub fn describe(&self) -> String {
        match self {
            Client::Remote { base, .. } => format!("wharf at {base}"),
            Client::Local { state, .. } => {
                format!(
                    "data directory {} (in-process)",
                    state.config.data_dir.display()
                )
            }
        }
    }

    pub async fn get(&self, path: &str, headers: &[(HeaderName, &str)]) -> Result<Reply, String> {
        self.request(Method::GET, path, headers, Body::Empty).await
    }

    /// `POST` a JSON body, expecting a JSON answer; non-2xx answers become their error text.
    pub async fn post_json<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<R, String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let reply = self
            .request(
                Method::POST,
                path,
                &[(header::CONTENT_TYPE, "application/json")],
                Body::Bytes(bytes),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(reply.error().await);
        }
        let bytes = reply.bytes(256 << 20).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{path}: unexpected answer: {e}"))
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: Body,
    ) -> Result<Reply, String> {
        match self {
            Client::Remote {
                base,
                http,
                auth,
                admin,
            } => {
                let url = format!("{base}{path}");
                let mut req = http.request(method, &url);
                for (k, v) in headers {
                    req = req.header(k, *v);
                }
                if let Some(a) = auth {
                    req = req.header(header::AUTHORIZATION, a.clone());
                }
                if let Some(s) = admin.as_ref().filter(|_| is_admin(path)) {
                    req = req.header(secret::HEADER, s.clone());
                }
                req = match body {
                    Body::Empty => req,
                    Body::Bytes(b) => req.body(b),
                    Body::Stream(s) => req.body(reqwest::Body::wrap_stream(s)),
                };
                let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes_stream().map_err(std::io::Error::other).boxed();
                Ok(Reply {
                    status,
                    headers,
                    body,
                })
            }
            Client::Local { router, state } => {
                let body = match body {
                    Body::Empty => axum::body::Body::empty(),
                    Body::Bytes(b) => axum::body::Body::from(b),
                    Body::Stream(s) => axum::body::Body::from_stream(s),
                };
                let mut req = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::HOST, "localhost");
                for (k, v) in headers {
                    req = req.header(k, *v);
                }
                if is_admin(path) {
                    req = req.header(secret::HEADER, state.admin_secret.as_str());
                }
                let mut req = req.body(body).map_err(|e| format!("{path}: {e}"))?;
                req.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
                let resp = match router.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let (parts, body) = resp.into_parts();
                let body = body
                    .into_data_stream()
                    .map_err(std::io::Error::other)
                    .boxed();
                Ok(Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            }
        }
    }

    /// Makes everything written in-process durable; nothing to do for a server.
    pub async fn finish(&self) -> Result<(), String> {
        if let Client::Local { state, .. } = self {
            state
                .storage
                .index
                .flush_async()
                .await
                .map_err(|e| format!("flushing the index: {e}"))?;
        }
        Ok(())
    }
}

/// Where this config's own server answers, with a client for it: the first TCP address (on
/// loopback, its certificate pinned), or the first Unix socket of a wharf that has no TCP one.
fn own_address(config: &Config) -> Result<(String, reqwest::Client), String> {
    if let (None, Some(path)) = (config.listen.tcp(), config.listen.unix()) {
        let http = reqwest::Client::builder()
            .unix_socket(path)
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        return Ok(("http://localhost".to_string(), http));
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let pinned = match &config.tls {
        Some(t) => Some(pinned_tls(&t.cert)?),
        None => None,
    };
    let listen = config
        .listen
        .tcp()
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)));
    Ok((
        format!("{scheme}://{}", loopback(listen)),
        http_client(pinned)?,
    ))
}

/// `0.0.0.0:5000` is reached at `127.0.0.1:5000`, `[::]:5000` at `[::1]:5000`.
fn loopback(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// With `pinned`, the server must present that configuration's one certificate; without, the
/// usual verification.
fn http_client(pinned: Option<rustls::ClientConfig>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3));
    if let Some(tls) = pinned {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

fn is_admin(path: &str) -> bool {
    path.starts_with("/admin/")
}

/// The admin secret for a server at `base`, if it is on this machine (the admin API answers
/// nowhere else, so the secret never goes anywhere else).
fn admin_header(config: &Config, base: &str) -> Result<Option<HeaderValue>, String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("{base}: {e}"))?;
    let host = url.host_str().unwrap_or("");
    if !crate::net::loopback_host(host) {
        return Ok(None);
    }
    let found = AdminSecret::read(&wharf_storage::Layout::new(&config.data_dir))?;
    let mut v = HeaderValue::from_str(found.as_str())
        .map_err(|_| "the admin secret is not a header value".to_string())?;
    v.set_sensitive(true);
    Ok(Some(v))
}

/// A TLS client configuration that accepts exactly the first certificate of `cert` (the
/// server's own, as `tls.cert` lists it) and checks the handshake is signed by its key.
fn pinned_tls(cert: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let unreadable = |e: &dyn std::fmt::Display| format!("tls.cert {}: {e}", cert.display());
    let leaf = CertificateDer::pem_file_iter(cert)
        .map_err(|e| unreadable(&e))?
        .next()
        .ok_or_else(|| unreadable(&"no certificate in it"))?
        .map_err(|e| unreadable(&e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { leaf, provider }))
        .with_no_client_auth();
    Ok(config)
}

/// Trusts one certificate, by its exact bytes; signatures are still checked with its key.
#[derive(Debug)]
struct Pinned {
    leaf: rustls_pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server does not present the certificate in tls.cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a wharf answers `/healthz` at `base`.
async fn probe(http: &reqwest::Client, base: &str) -> Result<(), String> {
    let resp = http
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| innermost(&e))?;
    let body = resp.bytes().await.map_err(|e| innermost(&e))?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| "it does not answer /healthz like wharf".to_string())?;
    if v.get("status").is_some() {
        Ok(())
    } else {
        Err("it does not answer /healthz like wharf".into())
    }
}

/// The deepest cause of a transport error ("connection refused", a certificate refusal), not
/// reqwest's "error sending request".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// Credentials for a server with `[access]`: `WHARF_TOKEN` (bearer), or `WHARF_USER` with
/// `WHARF_PASSWORD` (basic).
fn credentials() -> Result<Option<HeaderValue>, String> {
    use base64::Engine as _;
    let value = if let Ok(t) = std::env::var("WHARF_TOKEN") {
        format!("Bearer {t}")
    } else if let Ok(u) = std::env::var("WHARF_USER") {
        let p = std::env::var("WHARF_PASSWORD").unwrap_or_default();
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Basic {b}")
    } else {
        return Ok(None);
    };
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| "WHARF_TOKEN / WHARF_USER contain characters a header cannot carry")?;
    v.set_sensitive(true);
    Ok(Some(v))
}

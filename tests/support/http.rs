//! Requests to wharf and assertions on the answers: one client (no proxy), `send` without the
//! `.send().await.unwrap()` chain, bounded body reads, and the header and error-code checks the
//! tests share.

use std::future::Future;
use std::net::SocketAddr;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response};

/// The most a test reads of one body: every answer in these tests is far smaller, and an
/// endless one must fail the test, not hang it.
pub const BODY_LIMIT: usize = 256 << 20;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `request.send().await.unwrap()`, spelled `request.sent().await`.
pub trait Sent {
    fn sent(self) -> impl Future<Output = Response> + Send;
}

impl Sent for RequestBuilder {
    async fn sent(self) -> Response {
        self.send().await.expect("request to wharf")
    }
}

/// Bounded body reads as methods, for the end of a request chain.
pub trait Body {
    fn body(self) -> impl Future<Output = Vec<u8>> + Send;
    fn body_text(self) -> impl Future<Output = String> + Send;
}

impl Body for Response {
    fn body(self) -> impl Future<Output = Vec<u8>> + Send {
        read_body(self)
    }
    fn body_text(self) -> impl Future<Output = String> + Send {
        read_text(self)
    }
}

/// `GET url` with the test client.
pub async fn get(url: impl reqwest::IntoUrl) -> Response {
    client().get(url).sent().await
}

/// The status of `GET url`.
pub async fn status_of(url: impl reqwest::IntoUrl) -> u16 {
    get(url).await.status().as_u16()
}

/// The value of header `name`, or a panic that shows the answer.
pub fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {} {:?}", r.status(), r.headers()))
        .to_str()
        .unwrap()
}

/// Asserts the answer's status, saying `why` when it differs.
#[track_caller]
pub fn expect_status(r: &Response, status: u16, why: &str) {
    assert_eq!(r.status(), status, "{why}");
}

/// Asserts that header `name` is `value`.
#[track_caller]
pub fn expect_header(r: &Response, name: &str, value: &str) {
    assert_eq!(header(r, name), value);
}

/// The body, read to its end but never past `BODY_LIMIT` bytes.
pub async fn read_body(mut r: Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.expect("read the body") {
        body.extend_from_slice(&chunk);
        assert!(
            body.len() <= BODY_LIMIT,
            "body longer than {BODY_LIMIT} bytes"
        );
    }
    body
}

/// The body as text (lossy), bounded like `read_body`.
pub async fn read_text(r: Response) -> String {
    String::from_utf8_lossy(&read_body(r).await).into_owned()
}

/// One HTTP answer, fully (and boundedly) read.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub async fn read(request: RequestBuilder) -> Answer {
        let r = request.sent().await;
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: read_body(r).await.into(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Cache` outcome, or a panic that shows the answer.
    pub fn cache(&self) -> &str {
        self.header("x-cache")
            .unwrap_or_else(|| panic!("no X-Cache header in {}", self.describe()))
    }

    /// Status, headers and the start of the body, for assertion messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(512)]).into_owned();
        format!("{} {:?} body: {body}", self.status, self.headers)
    }
}

/// Sends a raw request line (no client-side path normalisation); returns status and body.
pub async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: wharf\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.take(BODY_LIMIT as u64)
        .read_to_end(&mut out)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// `/healthz` of the wharf at `base`: the whole answer and the entry of upstream `name`.
pub async fn health_of(base: &str, name: &str) -> (serde_json::Value, serde_json::Value) {
    let health: serde_json::Value =
        serde_json::from_slice(&read_body(get(format!("{base}/healthz")).await).await).unwrap();
    let up = health["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap()
        .clone();
    (health, up)
}

/// Reads a JSON error envelope's first code.
pub async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&read_body(resp).await).expect("error body is JSON");
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

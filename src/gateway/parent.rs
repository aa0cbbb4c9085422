//! The gateway through `egress.proxy` (an `http://` proxy, `gateway.via_egress_proxy`, on by
//! default): a destination `gateway.allow` admits is reached through that proxy, a tunnel
//! with `CONNECT`, a forwarded `http://` request in absolute form, either way with the proxy's
//! own credentials (its URL's user info) added here and the target rebuilt from the checked
//! host and port, never copied from the client's bytes. The proxy resolves names, so the
//! address rules (`egress.allow_cidrs`, wharf's own listeners) apply to IP literals only.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use reqwest::Url;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::dest::{self, Refusal};
use crate::upstream::EgressPolicy;

/// Largest answer head to a `CONNECT` read from the proxy.
const MAX_ANSWER_HEAD: usize = 16 << 10;

/// `egress.proxy`, as the gateway talks to it.
#[derive(Clone)]
pub struct Parent {
    host: String,
    port: u16,
    /// `Proxy-Authorization` for the proxy itself (sensitive: never logged).
    auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parent({})", self.shown())
    }
}

impl Parent {
    /// From `egress.proxy`'s URL: `http://` only (the tunnels are spliced between plain sockets).
    pub fn from_url(url: &Url) -> Result<Parent, String> {
        // `GatewayConfig::validate` explains this to the operator first.
        if url.scheme() != "http" {
            return Err("the gateway goes through an http:// egress.proxy only".into());
        }
        let (host, port) = crate::net::url_host_port(url).ok_or("egress.proxy has no host")?;
        let auth = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
            let mut pair = decode(url.username());
            pair.push(b':');
            pair.extend(decode(url.password().unwrap_or("")));
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            let mut v = HeaderValue::from_str(&value)
                .map_err(|_| "egress.proxy's credentials do not fit a header".to_string())?;
            v.set_sensitive(true);
            Some(v)
        };
        Ok(Parent { host, port, auth })
    }

    /// `host:port` of the proxy (no credentials), for messages.
    pub fn shown(&self) -> String {
        dest::shown(&self.host, self.port)
    }

    pub fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    /// Checks `host:port` (the host list; for an IP literal also its address class and that it
    /// is not one of wharf's listeners), then connects to the proxy.
    pub async fn open(
        &self,
        policy: &EgressPolicy,
        host: &str,
        port: u16,
        connect_timeout: Duration,
        own: &[u16],
    ) -> Result<TcpStream, Refusal> {
        dest::check_host(policy, host, port)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            dest::check_literal(policy, ip, port, own)?;
        }
        let via = self.shown();
        let resolved = tokio::time::timeout(connect_timeout, policy.resolve(&self.host))
            .await
            .map_err(|_| Refusal::failed(504, format!("resolving egress.proxy {via} timed out")))?
            .map_err(|_| Refusal::failed(502, format!("cannot resolve egress.proxy {via}")))?;
        let mut timed_out = false;
        for (ip, verdict) in resolved {
            if verdict.is_err() {
                continue;
            }
            let addr = std::net::SocketAddr::new(ip, self.port);
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(_)) => {}
                Err(_) => timed_out = true,
            }
        }
        Err(if timed_out {
            Refusal::failed(504, format!("connecting to egress.proxy {via} timed out"))
        } else {
            Refusal::failed(502, format!("cannot connect to egress.proxy {via}"))
        })
    }

    /// A tunnel to `host:port` through the proxy: `open`, then `CONNECT`. Returns the stream
    /// and any bytes the proxy sent after its `2xx` head (the destination's first bytes).
    pub async fn tunnel(
        &self,
        policy: &EgressPolicy,
        host: &str,
        port: u16,
        timeout: Duration,
        own: &[u16],
    ) -> Result<(TcpStream, Vec<u8>), Refusal> {
        let mut stream = self.open(policy, host, port, timeout, own).await?;
        let target = dest::shown(host, port);
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(auth) = &self.auth {
            head.extend_from_slice(b"Proxy-Authorization: ");
            head.extend_from_slice(auth.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let via = self.shown();
        let exchange = async {
            stream.write_all(&head).await?;
            read_answer(&mut stream).await
        };
        let (status, rest) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(Refusal::failed(
                    504,
                    format!("egress.proxy {via} did not answer CONNECT {target} in time"),
                ));
            }
            Ok(Err(e)) => {
                return Err(Refusal::failed(
                    502,
                    format!("egress.proxy {via} failed CONNECT {target}: {e}"),
                ));
            }
            Ok(Ok(x)) => x,
        };
        match status {
            200..=299 => Ok((stream, rest)),
            407 => Err(Refusal::failed(
                502,
                format!(
                    "egress.proxy {via} asks for credentials (407) to CONNECT {target}; \
                     give them in egress.proxy's URL"
                ),
            )),
            s => Err(Refusal::failed(
                502,
                format!("egress.proxy {via} answered {s} to CONNECT {target}"),
            )),
        }
    }
}

/// Reads the proxy's answer head to `CONNECT`: its status, and the bytes after the head.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before its answer"));
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4)
        {
            let status = answer_status(&buf[..end])
                .ok_or_else(|| std::io::Error::other("an answer that does not parse"))?;
            return Ok((status, buf.split_off(end)));
        }
        if buf.len() > MAX_ANSWER_HEAD {
            return Err(std::io::Error::other("an answer head too large"));
        }
    }
}

/// The status of an HTTP/1.x answer head (`HTTP/1.1 200 ...`), strictly.
fn answer_status(head: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => resp.code,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url_decoded_and_never_show() {
        let url = Url::parse("http://corp%5Cbuilder:p%40ss%3Aw@proxy.test:3128").unwrap();
        let p = Parent::from_url(&url).unwrap();
        let auth = p.auth().unwrap();
        assert!(auth.is_sensitive());
        let b64 = auth.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, b"corp\\builder:p@ss:w");
        assert_eq!(p.shown(), "proxy.test:3128");
        assert_eq!(format!("{p:?}"), "Parent(proxy.test:3128)");
        let bare = Parent::from_url(&Url::parse("http://[::1]").unwrap()).unwrap();
        assert!(bare.auth().is_none());
        assert_eq!(bare.shown(), "[::1]:80");
    }

    #[test]
    fn only_an_http_proxy_can_carry_the_gateway() {
        let err =
            Parent::from_url(&Url::parse("https://u:secret@proxy.test").unwrap()).unwrap_err();
        assert!(err.contains("http:// egress.proxy only"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn answer_heads_are_parsed_strictly() {
        assert_eq!(
            answer_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            answer_status(
                b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
            ),
            Some(407)
        );
        assert_eq!(answer_status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(answer_status(b"HTTP/1.1 2000 OK\r\n\r\n"), None);
        assert_eq!(
            answer_status(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"),
            None
        );
    }
}

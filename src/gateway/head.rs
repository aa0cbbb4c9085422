//! The gateway's request head: read within a deadline and a size limit, parsed with the same
//! parser hyper uses (`httparse`), and refused on anything two parties could read two ways:
//! obs-fold, two `Host` headers, `Transfer-Encoding` with `Content-Length`, two different
//! `Content-Length`s, a `Transfer-Encoding` other than `chunked`, a `Host` that disagrees with
//! the request target. Then the target is classified (`Target`). Pure but for `read`; it never
//! decides whether a destination is allowed (`dest` does).

use std::time::Duration;

use reqwest::Url;
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Most header lines accepted.
const MAX_HEADERS: usize = 100;

/// A request head, parsed and checked.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// `HTTP/1.<minor>`.
    pub minor: u8,
    /// Names lower-case, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, the blank line included.
    pub len: usize,
}

/// Why no head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The client closed, or sent nothing in time: nothing to answer.
    Gone,
    /// A head larger than the limit.
    TooLarge,
    /// Refused with 400 and this reason.
    Malformed(&'static str),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`: `host` normalised (lower case, no brackets, no trailing dot).
    Connect { host: String, port: u16 },
    /// An absolute-form `http://` request.
    Http(Url),
    /// An absolute-form `https://` request: clients must use CONNECT for those.
    Https,
    /// An origin-form request (`GET /path`): the gateway is not a web server.
    Origin,
}

impl Head {
    /// The value of the one header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Where the request goes, with `Host` checked against it.
    pub fn target(&self) -> Result<Target, &'static str> {
        let target = if self.method == "CONNECT" {
            let (host, port) = authority(&self.target).ok_or("CONNECT needs host:port")?;
            Target::Connect { host, port }
        } else if self.target.starts_with('/') || self.target == "*" {
            return Ok(Target::Origin);
        } else if starts_with_ignore_case(&self.target, "https://") {
            return Ok(Target::Https);
        } else if starts_with_ignore_case(&self.target, "http://") {
            let url = Url::parse(&self.target).map_err(|_| "the request URL does not parse")?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err("the request URL has no host");
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err("credentials in the request URL");
            }
            Target::Http(url)
        } else {
            return Err("the request target is neither host:port nor an http:// URL");
        };
        self.check_host(&target)?;
        Ok(target)
    }

    /// `Host` must name the target; HTTP/1.1 requests other than CONNECT must send it.
    fn check_host(&self, target: &Target) -> Result<(), &'static str> {
        let Some(host) = self.header("host") else {
            return match target {
                Target::Http(_) if self.minor >= 1 => Err("no Host header"),
                _ => Ok(()),
            };
        };
        let host = std::str::from_utf8(host).map_err(|_| "a Host header that is not text")?;
        let host = host.trim();
        // What the origin reads is this very value: nothing the URL parser would drop or
        // decode (a `#fragment`, `%2e`, a path) may hide another name in it.
        if !plain_authority(host) {
            return Err("a Host header that is not host[:port]");
        }
        let named = Url::parse(&format!("http://{host}/"))
            .ok()
            .filter(|u| u.path() == "/" && u.username().is_empty() && u.query().is_none())
            .ok_or("a Host header that is not host[:port]")?;
        let named_host = bare(named.host_str().unwrap_or(""));
        let agrees = match target {
            Target::Http(url) => {
                bare(url.host_str().unwrap_or("")) == named_host
                    && url.port_or_known_default() == named.port_or_known_default()
            }
            Target::Connect { host, port } => {
                *host == named_host && named.port().is_none_or(|p| p == *port)
            }
            Target::Https | Target::Origin => true,
        };
        if agrees {
            Ok(())
        } else {
            Err("the Host header disagrees with the request target")
        }
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A host as the policy compares it: lower case, no IPv6 brackets, no trailing dot.
fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether `text` could be `host[:port]` as written: not empty, printable ASCII, and no byte
/// that starts a URL's other parts or an escape.
fn plain_authority(text: &str) -> bool {
    !text.is_empty()
        && !text.bytes().any(|b| {
            matches!(b, b'/' | b'@' | b'?' | b'#' | b'%' | b'\\') || b <= b' ' || b >= 0x7f
        })
}

/// `host:port` of a CONNECT (authority form, port required); `None` for anything else
/// (userinfo, paths, a missing or zero port).
fn authority(text: &str) -> Option<(String, u16)> {
    if !plain_authority(text) {
        return None;
    }
    let (host, port) = text.rsplit_once(':')?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return None;
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))?;
    let url = Url::parse(&format!("http://{host}/")).ok()?;
    let host = bare(url.host_str()?);
    (!host.is_empty()).then_some((host, port))
}

/// Reads a head from `io` within `timeout` and `max` bytes. Returns it with every byte read
/// (the head and whatever the client sent after it).
pub async fn read<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(2048);
    let reading = async {
        let mut chunk = [0u8; 4096];
        // How much of `buf` is known to hold no blank line ending a head: the head is parsed
        // only once one arrives, so a head sent a byte at a time costs linear time, not a
        // parse of everything so far per byte.
        let mut searched = 0;
        // Where the request line starts: the parser skips empty lines before it.
        let mut start = None;
        loop {
            start = start.or_else(|| {
                buf[searched..]
                    .iter()
                    .position(|b| !matches!(b, b'\r' | b'\n'))
                    .map(|i| searched + i)
            });
            if let Some(start) = start
                && has_end(&buf[start..], searched.saturating_sub(start))
                && let Some(head) = parse(&buf)?
            {
                return Ok(head);
            }
            searched = buf.len();
            if buf.len() >= max {
                return Err(HeadError::TooLarge);
            }
            let n = io.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
            if n == 0 {
                return Err(HeadError::Gone);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let head = tokio::time::timeout(timeout, reading)
        .await
        .map_err(|_| HeadError::Gone)??;
    if head.len > max {
        return Err(HeadError::TooLarge);
    }
    Ok((head, buf))
}

/// The head at the start of `buf`: `None` while incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    // obs-fold: a header line that starts with a space or a tab continues the previous one in
    // some parsers and is a new (bad) line in others.
    let end = find_end(buf);
    let scanned = &buf[..end.unwrap_or(buf.len())];
    if scanned
        .windows(2)
        .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
    {
        return Err(HeadError::Malformed(
            "obs-fold (a header line starting with white space)",
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed("too many header lines"));
        }
        Err(_) => return Err(HeadError::Malformed("the request head does not parse")),
    };
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        minor: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
        len,
    };
    check_framing(&head).map_err(HeadError::Malformed)?;
    Ok(Some(head))
}

/// Whether `head` (from its request line on) holds a blank line (`\n\n` or `\n\r\n`) ending
/// after its first `searched` bytes, which are known to hold none.
fn has_end(head: &[u8], searched: usize) -> bool {
    let tail = &head[searched.saturating_sub(2)..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Where the head ends (after its blank line), if it does within `buf`.
fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// One `Host`, and one unambiguous body framing.
fn check_framing(head: &Head) -> Result<(), &'static str> {
    let count = |name: &str| head.headers.iter().filter(|(n, _)| n == name).count();
    if count("host") > 1 {
        return Err("two Host headers");
    }
    let te = count("transfer-encoding");
    let lengths: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_slice())
        .collect();
    if te > 0 && !lengths.is_empty() {
        return Err("Transfer-Encoding together with Content-Length");
    }
    if te > 1 {
        return Err("two Transfer-Encoding headers");
    }
    if te == 1 {
        let v = head.header("transfer-encoding").unwrap_or_default();
        if !v.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding other than chunked");
        }
    }
    if let Some(first) = lengths.first() {
        let valid = |v: &[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit) && v.len() < 19;
        if !lengths.iter().all(|v| valid(v) && v == first) {
            return Err("an invalid or repeated Content-Length");
        }
    }
    if head.method == "CONNECT" && (te > 0 || lengths.first().is_some_and(|v| *v != b"0")) {
        return Err("a CONNECT with a body");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, HeadError> {
        parse(text.as_bytes())
    }

    fn target(text: &str) -> Result<Target, &'static str> {
        head(text).unwrap().unwrap().target()
    }

    #[test]
    fn a_connect_names_host_and_port() {
        let t =
            target("CONNECT Registry.Example.:443 HTTP/1.1\r\nHost: registry.example:443\r\n\r\n");
        assert_eq!(
            t,
            Ok(Target::Connect {
                host: "registry.example".into(),
                port: 443
            })
        );
        let t = target("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n");
        assert_eq!(
            t,
            Ok(Target::Connect {
                host: "::1".into(),
                port: 8443
            })
        );
        for bad in [
            "CONNECT example.org HTTP/1.1\r\n\r\n",
            "CONNECT example.org:0 HTTP/1.1\r\n\r\n",
            "CONNECT user@example.org:443 HTTP/1.1\r\n\r\n",
            "CONNECT example.org:443/x HTTP/1.1\r\n\r\n",
            "CONNECT ::1:443 HTTP/1.1\r\n\r\n",
            "CONNECT example.org:+443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absolute_forms_and_origin_forms_are_told_apart() {
        let t = target("GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\n\r\n").unwrap();
        assert!(matches!(t, Target::Http(u) if u.as_str() == "http://a.example/x?y"));
        assert_eq!(
            target("GET HTTPS://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Ok(Target::Https)
        );
        assert_eq!(
            target("GET /v2/ HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Ok(Target::Origin)
        );
        assert!(target("GET ftp://a.example/ HTTP/1.1\r\n\r\n").is_err());
        assert!(target("GET http://u:p@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n").is_err());
        assert!(
            target("GET http://a.example/ HTTP/1.1\r\n\r\n").is_err(),
            "no Host"
        );
    }

    #[test]
    fn host_must_agree_with_the_target() {
        let ok = |t: &str| target(t).is_ok();
        assert!(ok(
            "GET http://a.example:80/ HTTP/1.1\r\nHost: A.example\r\n\r\n"
        ));
        assert!(!ok(
            "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"
        ));
        assert!(!ok(
            "GET http://a.example/ HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"
        ));
        assert!(!ok(
            "GET http://a.example/ HTTP/1.1\r\nHost: a.example/x\r\n\r\n"
        ));
        // Parts a URL parser drops or decodes would reach the origin as they are.
        for host in [
            "a.example#@b.example",
            "a.example/../",
            "a.example?b.example",
            "a%2eexample",
            "a.example\\b",
            "b.example@a.example",
        ] {
            let t = format!("GET http://a.example/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(!ok(&t), "{host}");
        }
        assert!(ok(
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n"
        ));
        assert!(!ok(
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:444\r\n\r\n"
        ));
        assert!(!ok(
            "CONNECT a.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n"
        ));
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        let malformed = |t: &str| matches!(head(t), Err(HeadError::Malformed(_)));
        assert!(malformed(
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        ));
        assert!(malformed(
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(malformed(
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
        ));
        assert!(malformed(
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(malformed(
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n"
        ));
        assert!(malformed("GET http://a/ HTTP/1.1 extra\r\n\r\n"));
        assert!(malformed(
            "CONNECT a:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(matches!(
            head("GET http://a/ HTTP/1.1\r\nHost: a\r\n"),
            Ok(None)
        ));
    }

    /// A client that sends one byte per read.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(&b) = self.0.get(self.1) {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_read_in_linear_time() {
        let max = 64 << 10;
        let long = format!(
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "y".repeat(60_000)
        );
        let blank_lines = format!(
            "{}GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\n".repeat(30_000)
        );
        for text in [long, blank_lines] {
            let started = std::time::Instant::now();
            let mut io = Trickle(text.into_bytes(), 0);
            let (h, _) = read(&mut io, max, Duration::from_secs(20)).await.unwrap();
            assert_eq!(h.target, "http://a/");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
        }
    }

    #[tokio::test]
    async fn a_head_is_read_with_what_follows_it() {
        let bytes = b"CONNECT a:443 HTTP/1.1\r\n\r\nEARLY".to_vec();
        let mut io = &bytes[..];
        let (h, buf) = read(&mut io, 8192, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&buf[h.len..], b"EARLY");
        let long = format!(
            "GET http://a/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "y".repeat(10_000)
        );
        let mut io = long.as_bytes();
        assert_eq!(
            read(&mut io, 8192, Duration::from_secs(1))
                .await
                .unwrap_err(),
            HeadError::TooLarge
        );
    }
}

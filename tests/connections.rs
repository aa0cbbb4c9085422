//! What the listener does with connections that carry no request: an HTTP/2 client that only
//! answers pings is closed after `server.idle_timeout`, like an idle HTTP/1 keep-alive one.

mod support;
use support::*;

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

/// What a live HTTP/2 client saw until the server closed the connection or `within` passed.
struct Seen {
    closed: bool,
    pings: usize,
    goaway: bool,
}

/// Plays a live client on `s`: acknowledges SETTINGS and answers every PING, never reads
/// DATA on purpose (the window stays as the client set it), until the server closes.
async fn answer_until_closed(s: &mut TcpStream, within: Duration) -> Seen {
    let (mut pings, mut goaway) = (0, false);
    let closed = tokio::time::timeout(within, async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return true;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return true;
            }
            match (head[3], head[4] & 1) {
                (SETTINGS, 0) => {
                    let _ = s.write_all(&frame(SETTINGS, 1, &[])).await;
                }
                (PING, 0) => {
                    pings += 1;
                    let _ = s.write_all(&frame(PING, 1, &payload)).await;
                }
                (GOAWAY, _) => goaway = true,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    Seen {
        closed,
        pings,
        goaway,
    }
}

/// wharf with `send_timeout = "2s"`, holding a 200 KB blob already cached over HTTP/1.
async fn wharf_holding_a_blob(seed: u64) -> (FakeRegistry, Wharf, tempfile::TempDir, String) {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = support::bytes_of(200_000, seed);
    let d = up.put_blob(&blob);
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"60s\"\nsend_timeout = \"2s\"\n",
    ))
    .await;
    let r = support::get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(read_body(r).await.len(), blob.len());
    (up, w, dir, d)
}

#[tokio::test]
async fn idle_http2_connection_answering_pings_is_closed_after_idle_timeout() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Pings every second (header_read_timeout), idle after two.
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path())
            .tables("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n"),
    )
    .await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let Seen {
        closed,
        pings,
        goaway,
    } = answer_until_closed(&mut s, Duration::from_secs(8)).await;
    assert!(
        closed,
        "the idle connection was still open after 8 s ({pings} pings answered)"
    );
    assert!(goaway, "closed without a GOAWAY");
}

/// A request HEADERS frame for `GET path` on stream 1 (HPACK literals, no Huffman).
fn get_headers(path: &str, authority: &str) -> Vec<u8> {
    request_headers(false, path, authority, 1)
}

/// A request HEADERS frame for `GET` or `HEAD path` on `stream`.
fn request_headers(head: bool, path: &str, authority: &str, stream: u8) -> Vec<u8> {
    let mut block = if head {
        // :method HEAD (literal, name index 2), :scheme http
        vec![0x42, 4, b'H', b'E', b'A', b'D', 0x86]
    } else {
        vec![0x82, 0x86] // :method GET, :scheme http
    };
    block.push(0x44); // :path, literal with incremental indexing, name index 4
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x41); // :authority, name index 1
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    let mut f = frame(1, 0x5, &block); // END_STREAM | END_HEADERS
    f[8] = stream;
    f
}

#[tokio::test]
async fn http2_client_that_stops_reading_is_closed_after_send_timeout() {
    let (_up, w, _dir, d) = wharf_holding_a_blob(9).await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may send no DATA until told.
    s.write_all(&frame(SETTINGS, 0, &[0, 4, 0, 0, 0, 0]))
        .await
        .unwrap();
    s.write_all(&get_headers(
        &format!("/v2/app/blobs/{d}"),
        &w.addr.to_string(),
    ))
    .await
    .unwrap();
    let Seen { closed, pings, .. } = answer_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed,
        "a client that never reads kept its connection ({pings} pings answered)"
    );
}

#[tokio::test]
async fn a_stalled_stream_is_not_excused_by_new_requests_on_its_connection() {
    let (_up, w, _dir, d) = wharf_holding_a_blob(10).await;
    let path = format!("/v2/app/blobs/{d}");
    let authority = w.addr.to_string();
    let s = TcpStream::connect(w.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(PREFACE).await.unwrap();
    wr.write_all(&frame(SETTINGS, 0, &[0, 4, 0, 0, 0, 0]))
        .await
        .unwrap();
    wr.write_all(&request_headers(false, &path, &authority, 1))
        .await
        .unwrap();
    // A HEAD on a new stream every 300 ms: each finishes at once (no window needed).
    let writer = tokio::spawn(async move {
        for i in 0..60u8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stream = 3 + 2 * i;
            if wr
                .write_all(&request_headers(true, &path, &authority, stream))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    writer.abort();
    assert!(
        closed,
        "new HEADs kept a connection with a stalled stream open"
    );
}

// ---------------------------------------------------------------- the HTTP/1.1 fast path

/// One HTTP/1.1 response read off a connection: status, headers (lower-case names), body.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Headers but `date`, sorted: what must match between two ways of answering.
    fn stable_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<_> = self
            .headers
            .iter()
            .filter(|(n, _)| n != "date")
            .cloned()
            .collect();
        h.sort();
        h
    }
}

/// Reads one response from `buf` + `s` (body by `Content-Length`, chunked, or none for HEAD).
async fn read_raw(s: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Raw {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) {
        while buf.len() < want {
            let mut chunk = vec![0u8; 1 << 16];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .expect("response in time")
                .expect("read");
            assert!(
                n > 0,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let want = buf.len() + 1;
        fill(s, buf, want).await;
    };
    let text = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    buf.drain(..end);
    let mut raw = Raw {
        status,
        headers,
        body: Vec::new(),
    };
    if head {
        return raw;
    }
    if let Some(n) = raw.header("content-length") {
        let n: usize = n.parse().unwrap();
        fill(s, buf, n).await;
        raw.body = buf.drain(..n).collect();
    } else if raw.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let want = buf.len() + 1;
                fill(s, buf, want).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            fill(s, buf, size + 2).await;
            raw.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    raw
}

/// The body bytes sent with sendfile so far, from `/metrics`.
async fn sendfile_bytes(w: &Wharf) -> u64 {
    let text = String::from_utf8(read_body(support::get(w.url("/metrics")).await).await).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("wharf_http_body_bytes_total{via=\"sendfile\"} "))
        .expect("the sendfile counter in /metrics")
        .parse()
        .unwrap()
}

/// Sends `requests` in one write (pipelined) and reads one response per entry of `heads`.
async fn pipeline(w: &Wharf, requests: &str, heads: &[bool]) -> Vec<Raw> {
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(requests.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for &head in heads {
        out.push(read_raw(&mut s, &mut buf, head).await);
    }
    out
}

#[tokio::test]
async fn hits_go_out_with_sendfile_byte_for_byte_pipelined_with_ranges_and_heads() {
    let (_up, w, _dir, d) = wharf_holding_a_blob(11).await;
    let blob = support::bytes_of(200_000, 11);
    let before = sendfile_bytes(&w).await;
    let path = format!("/v2/app/blobs/{d}");
    let requests = format!(
        "GET {path} HTTP/1.1\r\nHost: w\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: w\r\nRange: bytes=1000-1999\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: w\r\n\r\n\
         GET /v2/app/blobs/sha256:{zero} HTTP/1.1\r\nHost: w\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: w\r\nRange: bytes=-10\r\nConnection: close\r\n\r\n",
        zero = "0".repeat(64)
    );
    let got = pipeline(&w, &requests, &[false, false, true, false, false]).await;
    assert_eq!(got[0].status, 200);
    assert!(got[0].body == blob, "the whole blob differs");
    assert_eq!(got[0].header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(got[0].header("content-length"), Some("200000"));
    assert!(got[0].header("date").is_some(), "{:?}", got[0].headers);
    assert_eq!(got[1].status, 206);
    assert_eq!(got[1].body, &blob[1000..2000]);
    assert_eq!(
        got[1].header("content-range"),
        Some("bytes 1000-1999/200000")
    );
    assert_eq!(got[2].status, 200);
    assert_eq!(got[2].header("content-length"), Some("200000"));
    assert_eq!(
        got[3].status,
        404,
        "{:?}",
        String::from_utf8_lossy(&got[3].body)
    );
    assert!(String::from_utf8_lossy(&got[3].body).contains("BLOB_UNKNOWN"));
    assert_eq!(got[4].status, 206);
    assert_eq!(got[4].body, &blob[200_000 - 10..]);
    assert_eq!(got[4].header("connection"), Some("close"));
    assert_eq!(
        sendfile_bytes(&w).await - before,
        200_000 + 1000 + 10,
        "the hits were not sent with sendfile"
    );
}

#[tokio::test]
async fn the_fast_path_answers_as_hyper_does() {
    let up = FakeRegistry::start().await;
    let blob = support::bytes_of(300_000, 12);
    let d = up.put_blob(&blob);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":0},"layers":[]}"#;
    up.put_manifest(
        "app",
        Some("v1"),
        manifest,
        "application/vnd.oci.image.manifest.v1+json",
    );
    let mut answers = Vec::new();
    for zero_copy in [true, false] {
        let w = Wharf::in_temp_dir(|dir| {
            WharfConfig::fake(&up.url(), dir)
                .tables(&format!("[server]\nzero_copy = {zero_copy}\n"))
        })
        .await;
        // Cold (streamed from the fill), then warm (from the file), a manifest, an error, a
        // HEAD, a range past the end, the ping.
        let requests = [
            (format!("/v2/app/blobs/{d}"), false, ""),
            (format!("/v2/app/blobs/{d}"), false, ""),
            ("/v2/app/manifests/v1".to_string(), false, ""),
            ("/v2/app/manifests/nope".to_string(), false, ""),
            (format!("/v2/app/blobs/{d}"), true, ""),
            (
                format!("/v2/app/blobs/{d}"),
                false,
                "Range: bytes=999999-\r\n",
            ),
            ("/v2/".to_string(), false, ""),
            ("/go/example.com/m/@v/list".to_string(), false, ""),
        ];
        let mut got = Vec::new();
        for (path, head, extra) in &requests {
            let method = if *head { "HEAD" } else { "GET" };
            let text = format!(
                "{method} {path} HTTP/1.1\r\nHost: w\r\nAccept: {MANIFEST_ACCEPT}\r\n{extra}\r\n"
            );
            let r = pipeline(&w, &text, &[*head]).await.remove(0);
            got.push((r.status, r.stable_headers(), r.body));
        }
        answers.push(got);
        w.stop().await;
    }
    for (i, (fast, hyper)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(fast.0, hyper.0, "request {i}: status");
        assert_eq!(fast.1, hyper.1, "request {i}: headers");
        assert!(fast.2 == hyper.2, "request {i}: body");
    }
    assert!(answers[0][1].2 == blob);
}

#[tokio::test]
async fn a_request_the_fast_path_does_not_take_hands_the_connection_to_hyper() {
    let (_up, w, _dir, d) = wharf_holding_a_blob(13).await;
    let blob = support::bytes_of(200_000, 13);
    let path = format!("/v2/app/blobs/{d}");
    // A fast GET, then a POST with a body (hyper), then a GET that hyper serves.
    let requests = format!(
        "GET {path} HTTP/1.1\r\nHost: w\r\n\r\n\
         POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc\
         GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"
    );
    let got = pipeline(&w, &requests, &[false, false, false]).await;
    assert!(got[0].status == 200 && got[0].body == blob);
    assert!(got[1].status >= 400, "{:?}", got[1]);
    assert!(got[2].status == 200 && got[2].body == blob);
    // HTTP/1.0 is hyper's.
    let got = pipeline(&w, &format!("GET {path} HTTP/1.0\r\n\r\n"), &[false]).await;
    assert!(got[0].status == 200 && got[0].body == blob);
}

#[tokio::test]
async fn http1_client_that_stops_reading_a_sendfile_body_is_closed_after_send_timeout() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = support::bytes_of(64 << 20, 14);
    let d = up.put_blob(&blob);
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path()).tables("[server]\nsend_timeout = \"2s\"\n"),
    )
    .await;
    let r = support::get(w.url(&format!("/v2/app/blobs/{d}"))).await;
    assert_eq!(read_body(r).await.len(), blob.len());
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing for longer than send_timeout: the server gives up on the connection.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was still open");
    assert!(
        got < blob.len(),
        "a stalled client still got the whole body ({got} bytes)"
    );
}

#[tokio::test]
async fn a_fill_goes_out_with_sendfile_as_it_arrives_and_a_corrupt_one_is_cut() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path())).await;
    let blob = support::bytes_of(3 << 20, 15);
    let d = up.put_blob(&blob);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(2)));
    let before = sendfile_bytes(&w).await;
    let got = pipeline(
        &w,
        &format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nHost: w\r\n\r\n"),
        &[false],
    )
    .await;
    assert_eq!(got[0].header("x-cache"), Some("MISS"));
    assert!(got[0].body == blob, "the filled blob differs");
    assert_eq!(sendfile_bytes(&w).await - before, blob.len() as u64);

    // One flipped byte: the response never completes, whatever it was sent with.
    let bad = support::bytes_of(3 << 20, 16);
    let d = up.put_blob(&bad);
    up.set_blob_mode(BlobMode::Corrupt);
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection of a corrupt fill stayed open");
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4);
    assert!(
        out.len() - head_end < bad.len(),
        "a corrupt blob was sent whole ({} body bytes)",
        out.len() - head_end
    );
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused_however_it_arrives() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path()).tables("[server]\nmax_header_size = \"16KiB\"\n"),
    )
    .await;
    // One write, so it arrives whole: still over the limit.
    let pad = "a".repeat(20_000);
    let got = pipeline(
        &w,
        &format!("GET /v2/ HTTP/1.1\r\nHost: w\r\nX-Pad: {pad}\r\n\r\n"),
        &[true],
    )
    .await;
    assert_eq!(got[0].status, 431);
}

#[tokio::test]
async fn an_http2_preface_after_http1_requests_closes_the_connection() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path())).await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: w\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let first = read_raw(&mut s, &mut buf, false).await;
    assert_eq!(first.status, 200);
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(
        buf.is_empty() && rest.is_empty(),
        "the server answered a mid-connection HTTP/2 preface: {rest:?}"
    );
}

#[tokio::test]
async fn a_tls_hello_on_the_plain_port_is_answered_at_once() {
    // Clients told the registry is insecure (skopeo --tls-verify=false, containerd) try https
    // first and fall back to http when that fails: it must fail at once, not after the header
    // timeout.
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path())
            .tables("[server]\nheader_read_timeout = \"10s\"\n"),
    )
    .await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    let hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    s.write_all(&hello).await.unwrap();
    let mut out = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(
        done.is_ok(),
        "a TLS ClientHello waited for the header timeout"
    );
    assert!(
        !String::from_utf8_lossy(&out).starts_with("HTTP/1.1 2"),
        "{out:?}"
    );
}

/// Opens `n` connections that never send a request.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
        // In order of age: the accept loop registers each before the next.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

/// Whether the server closed `s` (EOF or reset within a short wait).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn past_max_connections_the_oldest_idle_ones_are_shed_and_a_real_request_is_served() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(
        WharfConfig::fake(&up.url(), dir.path())
            .tables("[server]\nmax_connections = 8\nheader_read_timeout = \"60s\"\n"),
    )
    .await;
    let mut idle = idle_connections(w.addr, 20).await;
    let r = support::get(w.url("/v2/")).await;
    assert_eq!(r.status(), 200, "a real client gets in");
    let mut shed = Vec::new();
    for s in idle.iter_mut() {
        shed.push(closed(s).await);
    }
    // The oldest went first; the newest 7 (and the client's own) are still open.
    assert!(shed[..12].iter().all(|c| *c), "{shed:?}");
    assert!(shed[13..].iter().all(|c| !*c), "{shed:?}");
    let m = read_text(support::get(w.url("/metrics")).await).await;
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert!(value("wharf_connections_shed_total") >= 13, "{m}");
    assert!(value("wharf_connections_open") <= 8, "{m}");
}

#[tokio::test]
async fn out_of_descriptors_idle_connections_are_shed_and_the_log_stays_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let config = WharfConfig::new(&dir.path().join("data"))
        .tables("[server]\nheader_read_timeout = \"60s\"\nworkers = 1\n")
        .write(&dir.path().join("wharf.toml"));
    let log = dir.path().join("log");
    let server = Server::start_with_fd_limit(&config, &log, 128).await;
    // Far more idle connections than descriptors.
    let idle = idle_connections(server.addr, 236).await;
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reqwest::get(format!("http://{}/v2/", server.addr)).await {
                Ok(r) if r.status() == 200 => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let logs = server.logs();
    assert!(
        answered.is_ok(),
        "a real request never got through:\n{logs}"
    );
    let warnings = logs.matches("accepting connections failed").count();
    assert!(warnings <= 10, "{warnings} warnings:\n{logs}");
    drop(idle);
}

#[tokio::test]
async fn a_small_answer_stuck_on_a_zero_window_does_not_keep_its_connection_from_being_shed() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::serve(WharfConfig::fake(&up.url(), dir.path()).tables(
        "[server]\nmax_connections = 2\nheader_read_timeout = \"60s\"\nidle_timeout = \"60s\"\nsend_timeout = \"60s\"\n",
    ))
    .await;
    // Two HTTP/2 clients that ask for /v2/ and never open their window: the answer is made,
    // it can never be sent.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(w.addr).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0
        s.write_all(&frame(SETTINGS, 0, &[0, 4, 0, 0, 0, 0]))
            .await
            .unwrap();
        s.write_all(&get_headers("/v2/", "wharf")).await.unwrap();
        held.push(tokio::spawn(async move {
            answer_until_closed(&mut s, Duration::from_secs(20))
                .await
                .closed
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At the limit: a real client still gets in, by shedding one of them.
    let r = support::get(w.url("/v2/")).await;
    assert_eq!(r.status(), 200);
    let mut closed = 0;
    for h in held {
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(3), h).await {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no stuck connection was shed");
}

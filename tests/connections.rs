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

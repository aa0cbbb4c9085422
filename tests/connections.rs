//! What the listener does with connections that carry no request: an HTTP/2 client that only
//! answers pings is closed after `server.idle_timeout`, like an idle HTTP/1 keep-alive one.

mod common;

use std::time::Duration;

use common::{FakeRegistry, Wharf, config_toml};
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

#[tokio::test]
async fn idle_http2_connection_answering_pings_is_closed_after_idle_timeout() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Pings every second (header_read_timeout), idle after two.
    let toml = config_toml(&up.url(), dir.path(), "")
        + "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let w = Wharf::start_with_config(&toml, dir.path()).await;
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let (mut pings, mut goaway) = (0, false);
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
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
                (SETTINGS, 0) => s.write_all(&frame(SETTINGS, 1, &[])).await.unwrap(),
                (PING, 0) => {
                    pings += 1;
                    // A live client: every ping is answered.
                    let _ = s.write_all(&frame(PING, 1, &payload)).await;
                }
                (GOAWAY, _) => goaway = true,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        closed,
        "the idle connection was still open after 8 s ({pings} pings answered)"
    );
    assert!(goaway, "closed without a GOAWAY");
}

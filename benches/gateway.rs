//! Tunnel throughput of the egress gateway against a direct connection, in the same run: a
//! local source that sends N MiB on each connection (download) and a sink that reads until the
//! end and answers with the count (upload), each read or fed once directly and once through a
//! `CONNECT` tunnel of an in-process gateway (`tests/support`'s `Wharf` with `[gateway]`), the
//! cases interleaved.
//!
//! Run: `cargo bench --bench gateway` (`-- --mib N --samples N`). Prints the median MiB/s of
//! each case and the tunnel / direct ratio.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 256 << 10;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A source sending `bytes` on every connection, then closing.
async fn source(bytes: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let chunk = vec![0x5au8; CHUNK];
        while let Ok((mut s, _)) = l.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(CHUNK);
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A sink reading every connection to its end, then answering the count (8 bytes).
async fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// A connection to `dest`: directly, or through a CONNECT tunnel of the gateway at `via`.
async fn open(dest: SocketAddr, via: Option<SocketAddr>) -> TcpStream {
    let Some(gw) = via else {
        let s = TcpStream::connect(dest).await.unwrap();
        s.set_nodelay(true).unwrap();
        return s;
    };
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.set_nodelay(true).unwrap();
    let target = format!("bench.wharf-test:{}", dest.port());
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "the gateway closed");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

async fn download(dest: SocketAddr, via: Option<SocketAddr>, bytes: usize) -> Duration {
    let start = Instant::now();
    let mut s = open(dest, via).await;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, bytes);
    start.elapsed()
}

async fn upload(dest: SocketAddr, via: Option<SocketAddr>, bytes: usize) -> Duration {
    let start = Instant::now();
    let s = open(dest, via).await;
    let (mut r, mut w) = s.into_split();
    let chunk = vec![0xa5u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        w.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    w.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    r.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), bytes as u64);
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mib = arg("--mib", 1024);
    let samples = arg("--samples", 5).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let bytes = mib << 20;
        let (src, snk) = (source(bytes).await, sink().await);
        let dir = tempfile::tempdir().unwrap();
        let w = Wharf::serve(
            WharfConfig::new(dir.path())
                .egress("allow_cidrs = [\"127.0.0.0/8\"]\nresolve = { \"bench.wharf-test\" = [\"127.0.0.1\"] }")
                .tables("[gateway]\nlisten = \"127.0.0.1:9\"\nallow = [\"bench.wharf-test\"]\n"),
        )
        .await;
        let gateway = wharf::gateway::Gateway::new(&w.state).unwrap().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = l.local_addr().unwrap();
        tokio::spawn(Arc::new(gateway).serve(l, std::future::pending()));
        let rate = |d: Duration| mib as f64 / d.as_secs_f64();
        let mut rows: Vec<(&str, Vec<f64>)> = vec![
            ("download direct", vec![]),
            ("download tunnel", vec![]),
            ("upload direct", vec![]),
            ("upload tunnel", vec![]),
        ];
        // One warm-up of each, not counted.
        download(src, Some(gw), bytes).await;
        upload(snk, Some(gw), bytes).await;
        for _ in 0..samples {
            rows[0].1.push(rate(download(src, None, bytes).await));
            rows[1].1.push(rate(download(src, Some(gw), bytes).await));
            rows[2].1.push(rate(upload(snk, None, bytes).await));
            rows[3].1.push(rate(upload(snk, Some(gw), bytes).await));
        }
        println!("{mib} MiB per transfer, median of {samples}, cases interleaved");
        let med: Vec<f64> = rows.iter().map(|(_, v)| median(v.clone())).collect();
        for (i, (name, _)) in rows.iter().enumerate() {
            println!("{name:<16} {:>9.0} MiB/s", med[i]);
        }
        println!(
            "tunnel / direct: download {:.2}x, upload {:.2}x",
            med[1] / med[0],
            med[3] / med[2]
        );
        w.stop().await;
    });
}

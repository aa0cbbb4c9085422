//! What wrong passwords cost everyone else: `/healthz` latency while connections flood the
//! registry with basic-auth requests whose password is wrong, and what one refusal costs for an
//! unknown user against a known user with a wrong password (the gap is a user-name oracle).
//!
//! wharf runs in-process on 127.0.0.1, port 0, with `server.workers` at its default (one event
//! loop per CPU), `require_auth = true` and one user whose hash comes from
//! `wharf::access::hash_password` (argon2id, the default parameters). Requests are HTTP/1.1,
//! written by hand: each flooding client is one kept-alive connection with one request
//! outstanding, each `/healthz` probe a new connection. Nothing contacts an upstream.
//!
//! Run: `cargo bench --bench auth_flood` (`-- --flooders N --samples N` to change the load).
//! It prints one line per measurement; the latencies are in milliseconds. The bench uses only
//! `AppState::new`, `serve` and `hash_password`, so it also runs unchanged on older commits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const USER: &str = "ci";
const PASSWORD: &str = "the right password";

struct Options {
    flooders: usize,
    samples: usize,
}

fn options() -> Options {
    let mut o = Options {
        flooders: 8,
        samples: 200,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse().ok());
        match (args[i].as_str(), value) {
            ("--flooders", Some(n)) => o.flooders = n,
            ("--samples", Some(n)) => o.samples = n,
            // `cargo bench` passes `--bench`; anything else is ignored too.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// One kept-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect to wharf");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `GET path` with `auth` as the Authorization header; returns the status code.
    async fn get(&mut self, path: &str, auth: Option<&str>) -> u16 {
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: wharf\r\n{auth}\r\n");
        self.stream
            .write_all(req.as_bytes())
            .await
            .expect("send request");
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = self.stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "wharf closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        while self.buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "wharf closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        status
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {v}")
}

/// Milliseconds, sorted.
fn summary(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<44} n={:<4} p50={:>8.3} p90={:>8.3} p99={:>8.3} max={:>8.3}",
        ms.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// `samples` sequential `/healthz` requests, 2 ms apart, each on a new connection as a load
/// balancer's health check makes them: which event loop accepts a connection is up to the
/// kernel, so one long-lived connection would see only the loop it landed on. The time includes
/// the TCP connect.
async fn healthz(addr: SocketAddr, samples: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let mut c = Conn::open(addr).await;
        assert_eq!(c.get("/healthz", None).await, 200);
        out.push(t.elapsed().as_secs_f64() * 1e3);
        drop(c);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

/// `n` refusals each for an unknown user and a known user with a wrong password, alternating
/// (so neither gets the warmer machine), each with a new password.
async fn refusals(addr: SocketAddr, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut c = Conn::open(addr).await;
    let (mut unknown, mut known) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..2 * n {
        let (user, out) = if i % 2 == 0 {
            ("nobody", &mut unknown)
        } else {
            (USER, &mut known)
        };
        let auth = basic(user, &format!("wrong {i}"));
        let t = Instant::now();
        let status = c.get("/v2/", Some(&auth)).await;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 401, "{user} with a wrong password");
    }
    (unknown, known)
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run(o));
}

async fn run(o: Options) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let hash = wharf::access::hash_password(PASSWORD).expect("hash the password");
    let toml = format!(
        "data_dir = {}\n[access]\nrequire_auth = true\n\
         [[access.user]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n",
        toml::Value::String(dir.path().display().to_string())
    );
    let config = wharf::config::Config::from_toml_str(&toml).expect("the bench config");
    let workers = config.server.worker_count();
    let state = wharf::AppState::new(config).expect("start wharf");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wharf::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "auth_flood: {cpus} CPUs, {workers} wharf workers, {} flooders, {} samples",
        o.flooders, o.samples
    );

    // Warm up: the right password once, so any remembered verification is in place.
    let mut c = Conn::open(addr).await;
    assert_eq!(c.get("/v2/", Some(&basic(USER, PASSWORD))).await, 200);

    let (unknown, known) = refusals(addr, 40).await;
    summary("refusal, unknown user", unknown);
    summary("refusal, known user, wrong password", known);
    summary("/healthz, idle", healthz(addr, o.samples).await);

    let flooding = Arc::new(AtomicBool::new(true));
    let statuses: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let mut flooders = Vec::new();
    for f in 0..o.flooders {
        let flooding = flooding.clone();
        let statuses = statuses.clone();
        flooders.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let mut i = 0u64;
            while flooding.load(Ordering::Relaxed) {
                let auth = basic(USER, &format!("flood {f} {i}"));
                let slot = match c.get("/v2/", Some(&auth)).await {
                    401 => 0,
                    503 | 429 => 1,
                    _ => 2,
                };
                statuses[slot].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = statuses.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    let t = Instant::now();
    let flooded = healthz(addr, o.samples).await;
    let secs = t.elapsed().as_secs_f64();
    let after: Vec<u64> = statuses.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    summary(
        &format!("/healthz, {} connections flooding", o.flooders),
        flooded,
    );
    println!(
        "flood answers meanwhile: {:.0}/s 401, {:.0}/s 503 or 429, {:.0}/s other",
        (after[0] - before[0]) as f64 / secs,
        (after[1] - before[1]) as f64 / secs,
        (after[2] - before[2]) as f64 / secs
    );
    flooding.store(false, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let _ = stop.send(());
    let _ = server.await;
}

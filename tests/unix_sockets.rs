//! Unix sockets on both sides: wharf listening on a socket next to TCP (curl, Go's net/http and
//! reqwest as clients), upstreams on a socket (a fake, and Debian's `docker-registry`), the
//! egress entry a socket needs, and systemd socket activation with `systemd-socket-activate`,
//! including a restart that loses no connection attempt. Tests that need a tool print why and
//! pass when it is missing, unless `WHARF_REQUIRE_INTEROP` is set (CI sets it).

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::origin::require_tools;
use support::*;

/// `wharf serve --config <dir>/wharf.toml`, its log in `<dir>/wharf.log`; killed on Drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(config: &WharfConfig, dir: &Path) -> Running {
        let path = dir.join("wharf.toml");
        std::fs::write(&path, config.toml()).unwrap();
        let log = dir.join("wharf.log");
        let child = wharf_command()
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn wharf");
        Running { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 10 s) until `path` is a socket something answers on.
fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client whose every connection goes to the Unix socket `path`.
fn unix_client(path: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(path)
        .build()
        .unwrap()
}

/// `curl --unix-socket <sock> http://localhost<path>`: (status, body).
fn curl(sock: &Path, path: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(sock)
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').expect("curl output");
    let status = String::from_utf8_lossy(&body[split + 1..])
        .parse()
        .unwrap_or(0);
    body.truncate(split);
    (status, body)
}

/// Status of `GET /healthz` on a new TCP connection (closed after), or `None` if the attempt
/// failed in any way.
fn healthz_once(addr: SocketAddr) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 16];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn wharf_on_a_unix_socket_streams_from_a_socket_upstream_and_logs_the_peer_as_unix() {
    let Some(_) = require_tools("unix socket listener", &["curl"]) else {
        return;
    };
    let dir = work_dir("wharf-unix-");
    let up_sock = dir.path().join("upstream.sock");
    let fake = FakeRegistry::start_unix(&up_sock).await;
    // 1 MiB in 64 KiB chunks, 200 ms apart: the whole takes over 3 s upstream.
    let blob = bytes_of(1 << 20, 15);
    let digest = fake.put_blob(&blob);
    fake.set_blob_mode(BlobMode::Slow(Duration::from_millis(200)));
    let sock = dir.path().join("wharf.sock");
    let port = free_port();
    let config = WharfConfig::new(dir.path())
        .upstream("sock.test", &format!("unix://{}", up_sock.display()))
        .timeouts()
        .top(&format!(
            "listen = [\"127.0.0.1:{port}\", \"unix:{}\"]",
            sock.display()
        ))
        .allow(&[&format!("unix:{}", up_sock.display())])
        .tables("[server]\nsocket_mode = \"0600\"\n");
    let wharf = Running::start(&config, dir.path());
    wait_for_socket(&sock);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "server.socket_mode applies to the socket");

    // Streamed, not buffered: the first bytes arrive long before the upstream is done.
    let started = Instant::now();
    let mut resp = unix_client(&sock)
        .get(format!("http://localhost/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", wharf.logs());
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    let first_after = started.elapsed();
    let mut got = first.to_vec();
    while let Some(c) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    let total = started.elapsed();
    assert_eq!(
        sha256(&got),
        digest,
        "the blob through both sockets is whole"
    );
    assert!(
        first_after * 3 < total,
        "first bytes after {first_after:?}, the whole after {total:?}: wharf waited for the upstream"
    );

    // curl over the socket: a hit now; TCP serves the same router.
    let (status, body) = blocking({
        let sock = sock.clone();
        let path = format!("/v2/team/app/blobs/{digest}");
        move || curl(&sock, &path)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), digest);
    assert_eq!(
        blocking(move || healthz_once(SocketAddr::from(([127, 0, 0, 1], port)))).await,
        Some(200),
        "the TCP listener answers too"
    );
    let metrics = blocking({
        let sock = sock.clone();
        move || curl(&sock, "/metrics")
    })
    .await;
    assert_eq!(metrics.0, 200);
    assert!(
        String::from_utf8_lossy(&metrics.1).contains("wharf_"),
        "metrics over the socket"
    );
    // One upstream fetch for two client requests.
    assert_eq!(fake.count("GET", "/blobs/"), 1, "{:?}", fake.seen());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = wharf.logs();
    assert!(
        logs.contains("client=unix") && logs.contains(&format!("/v2/team/app/blobs/{digest}")),
        "the request line names the socket peer:\n{logs}"
    );
}

#[tokio::test]
async fn a_socket_upstream_is_contacted_only_with_its_own_egress_entry() {
    let dir = work_dir("wharf-unix-egress-");
    let up_sock = dir.path().join("upstream.sock");
    let fake = FakeRegistry::start_unix(&up_sock).await;
    let digest = fake.put_blob(b"not for you");
    let url = format!("unix://{}", up_sock.display());
    // A host entry, a wildcard and loopback: none of them admits a socket.
    let config = WharfConfig::new(dir.path())
        .upstream("sock.test", &url)
        .timeouts()
        .allow(&["localhost", "*.test", "127.0.0.1"]);
    let w = Wharf::serve(config).await;
    let a = w.get(&format!("/v2/team/app/blobs/{digest}"), None).await;
    assert!(a.status >= 500, "{}", a.describe());
    assert_eq!(
        fake.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    w.stop().await;

    // With its entry, the same request is served.
    let dir2 = work_dir("wharf-unix-egress-ok-");
    let config = WharfConfig::new(dir2.path())
        .upstream("sock.test", &url)
        .timeouts()
        .allow(&[&format!("unix:{}", up_sock.display())]);
    let w = Wharf::serve(config).await;
    let a = w.get(&format!("/v2/team/app/blobs/{digest}"), None).await;
    assert_eq!(a.status, 200, "{}", a.describe());
    assert_eq!(&a.body[..], b"not for you");
}

#[tokio::test]
async fn a_socket_upstreams_stream_ends_when_wharf_stops_reading() {
    let dir = work_dir("wharf-unix-cancel-");
    let up_sock = dir.path().join("upstream.sock");
    let fake = FakeRegistry::start_unix(&up_sock).await;
    let digest = fake.put_blob(&bytes_of(4 << 20, 3));
    fake.set_blob_mode(BlobMode::Endless);
    let config = WharfConfig::new(dir.path())
        .upstream("sock.test", &format!("unix://{}", up_sock.display()))
        .timeouts()
        .registry(r#"max_blob_size = "1MiB""#)
        .allow(&[&format!("unix:{}", up_sock.display())]);
    let w = Wharf::serve(config).await;
    let whole = match client()
        .get(w.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        _ => false,
    };
    assert!(!whole, "an endless body is never served whole");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = fake
        .state
        .endless_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = fake
        .state
        .endless_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        sent, later,
        "the upstream stream over the socket was dropped"
    );
    assert!(sent < 32 << 20, "{sent} bytes pulled for a 1 MiB limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn go_net_http_reaches_wharf_over_its_unix_socket() {
    let Some(tools) = require_tools("Go client over a unix socket", &["go"]) else {
        return;
    };
    let dir = work_dir("wharf-unix-go-");
    let sock = dir.path().join("wharf.sock");
    let config = WharfConfig::new(dir.path())
        .upstream("fake.test", "http://127.0.0.1:9")
        .top(&format!("listen = \"unix:{}\"", sock.display()));
    let _wharf = Running::start(&config, dir.path());
    wait_for_socket(&sock);
    let program = dir.path().join("main.go");
    std::fs::write(
        &program,
        r#"package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", os.Args[1])
		},
	}}
	resp, err := c.Get("http://wharf/v2/")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, resp.Header.Get("Docker-Distribution-Api-Version"), len(body))
}
"#,
    )
    .unwrap();
    let go = tools[0].clone();
    let out = blocking({
        let (program, sock, cache) = (program.clone(), sock.clone(), dir.path().join("gocache"));
        move || {
            Command::new(go)
                .arg("run")
                .arg(&program)
                .arg(&sock)
                .env("GOCACHE", cache)
                .output()
                .expect("go run")
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("200 registry/2.0"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A shell that holds systemd's sockets (as the socket unit does) and runs wharf on them twice,
/// each time with `LISTEN_PID` set to wharf's own pid; the pid of the current wharf is in
/// `<dir>/pid`.
fn socket_activated(activate: &Path, port: u16, sock: &Path, config: &Path, dir: &Path) -> Child {
    let wharf = env!("CARGO_BIN_EXE_wharf");
    let pid = dir.join("pid");
    let script = format!(
        "for i in 1 2; do sh -c 'echo $$ > {pid}; export LISTEN_PID=$$; exec {wharf} serve --config {config}'; done",
        pid = pid.display(),
        config = config.display()
    );
    Command::new(activate)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-l")
        .arg(sock)
        .args(["--fdname=web:local", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("wharf.log")).unwrap())
        .spawn()
        .expect("spawn systemd-socket-activate")
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_serves_both_sockets_and_a_restart_loses_no_connection() {
    let Some(tools) = require_tools("socket activation", &["systemd-socket-activate", "curl"])
    else {
        return;
    };
    let dir = work_dir("wharf-activate-");
    let sock = dir.path().join("wharf.sock");
    let port = free_port();
    // `listen` says something else: under activation the passed sockets are served.
    let config = WharfConfig::new(dir.path())
        .upstream("fake.test", "http://127.0.0.1:9")
        .listen("127.0.0.1:1");
    let config_path = dir.path().join("wharf.toml");
    std::fs::write(&config_path, config.toml()).unwrap();
    let mut holder = socket_activated(&tools[0], port, &sock, &config_path, dir.path());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.path().join("wharf.log");
    let logs = move || std::fs::read_to_string(&log).unwrap_or_default();

    let first = blocking(move || {
        // systemd-socket-activate binds its sockets a moment after it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match healthz_once(addr) {
                Some(s) => return Some(s),
                None if Instant::now() > deadline => return None,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
    .await;
    assert_eq!(first, Some(200), "TCP from LISTEN_FDS:\n{}", logs());
    let (status, body) = blocking({
        let sock = sock.clone();
        move || curl(&sock, "/v2/")
    })
    .await;
    assert_eq!(status, 200, "Unix socket from LISTEN_FDS:\n{}", logs());
    assert_eq!(body, b"{}");
    assert!(logs().contains("socket activation"), "{}", logs());

    // Restart: attempts keep coming while the first wharf drains and the second starts; the
    // held sockets queue them, so every one is answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match healthz_once(addr) {
                    Some(200) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", first_pid.trim()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Until the second wharf has written its pid and answered for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap_or_default();
        if pid != first_pid && !pid.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no second wharf:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = hammer.join().unwrap();
    assert_eq!(
        failed,
        0,
        "{ok} answered, {failed} lost across the restart:\n{}",
        logs()
    );
    assert!(ok > 10, "only {ok} attempts");
    assert_eq!(logs().matches("drained; exiting").count(), 1, "{}", logs());
    let (status, _) = blocking({
        let sock = sock.clone();
        move || curl(&sock, "/v2/")
    })
    .await;
    assert_eq!(status, 200, "the Unix socket after the restart");
    let _ = holder.kill();
    let second = std::fs::read_to_string(dir.path().join("pid")).unwrap_or_default();
    let _ = Command::new("kill").args(["-KILL", second.trim()]).status();
    let _ = holder.wait();
}

/// Debian's `docker-registry` listening only on a Unix socket is the origin: wharf pulls an
/// image through it for skopeo, digests intact, and a second pull costs the origin nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_docker_registry_on_a_unix_socket_is_an_origin() {
    let test = "a_docker_registry_on_a_unix_socket_is_an_origin";
    let Some(tools) = require_tools(test, &["skopeo", "docker-registry"]) else {
        return;
    };
    let dir = work_dir("wharf-unix-origin-");
    let sock = dir.path().join("registry.sock");
    let (origin, on_socket, image, skopeo) = {
        let (sock, work) = (sock.clone(), dir.path().to_path_buf());
        blocking(move || {
            let origin = support::origin::Origin::start(&tools[1]);
            let skopeo = support::origin::Skopeo::new(&tools[0]);
            let mut layout = support::oci::Layout::create(&work.join("generated"));
            let image = layout.add_image(&support::oci::ImageSpec::linux(
                "amd64",
                1,
                &[
                    support::oci::gzip_layer(4096),
                    support::oci::gzip_layer(300_000),
                ],
            ));
            layout.tag(&image.manifest, "v1");
            skopeo.push_layout(layout.root(), "v1", &origin, "team/app", false);
            let on_socket = origin.also_on_socket(&tools[1], &sock);
            (origin, on_socket, image, std::sync::Arc::new(skopeo))
        })
        .await
    };
    // Only the socket is wharf's origin; the TCP one is not allowed (nor named).
    let w = Wharf::serve(
        WharfConfig::new(dir.path())
            .upstream("sock.test", &format!("unix://{}", sock.display()))
            .timeouts()
            .allow(&[&format!("unix:{}", sock.display())]),
    )
    .await;
    let reference = format!("{}/team/app:v1", w.addr);
    for _ in 0..2 {
        let skopeo = skopeo.clone();
        let reference = reference.clone();
        let got = blocking(move || skopeo.inspect_digest(&reference)).await;
        assert_eq!(got, image.manifest.digest);
    }
    for layer in &image.layers {
        let r = get(w.url(&format!("/v2/team/app/blobs/{}", layer.digest))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&read_body(r).await), layer.digest);
        let again = get(w.url(&format!("/v2/team/app/blobs/{}", layer.digest))).await;
        assert_eq!(again.headers()["x-cache"], "HIT");
        assert_eq!(
            on_socket.requests_for(&format!("/blobs/{}", layer.digest)),
            1,
            "one fetch from the socket origin per layer"
        );
    }
    assert!(on_socket.requests_for("/manifests/") >= 1);
    assert_eq!(
        origin.requests("GET", "/v2/team/app/manifests/v1"),
        0,
        "nothing went to the TCP origin"
    );
}

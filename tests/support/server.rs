//! `wharf serve` as a child process, for tests that signal it (SIGTERM drains, SIGKILL leaves
//! nothing half-written) or need replicas on fixed ports.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::bin::wharf_command;

/// A loopback port that was free a moment ago, for a child process to listen on. Chosen below
/// the kernel's ephemeral range, so no listener on port 0 and no outgoing connection of a test
/// running alongside takes it meanwhile (a wharf that lost its port to one looked ready to the
/// caller), and never handed out twice by this process.
pub fn free_port() -> u16 {
    use std::collections::BTreeSet;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::Mutex;
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, span) = (ephemeral_low.saturating_sub(10_000).max(1024), 10_000u16);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = low + (random % u64::from(span)) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", low + span);
}

/// `wharf serve` as a child process; killed on Drop if still running.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `wharf serve --config <config>` on a free loopback port, logging to `log`, and
    /// waits (at most 10 s) until it accepts connections.
    pub async fn start(config: &Path, log: &Path) -> Server {
        Self::start_on(config, log, SocketAddr::from(([127, 0, 0, 1], free_port()))).await
    }

    /// `start` on `addr`, chosen by the caller (replicas that must know each other's address).
    pub async fn start_on(config: &Path, log: &Path, addr: SocketAddr) -> Server {
        Self::spawn(wharf_command(), config, log, addr).await
    }

    /// `start` with at most `nofile` open descriptors (util-linux `prlimit`).
    pub async fn start_with_fd_limit(config: &Path, log: &Path, nofile: u32) -> Server {
        let wharf = wharf_command();
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(wharf.get_program())
            .args(wharf.get_args())
            .envs(wharf.get_envs().filter_map(|(k, v)| Some((k, v?))));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::spawn(cmd, config, log, addr).await
    }

    async fn spawn(mut cmd: Command, config: &Path, log: &Path, addr: SocketAddr) -> Server {
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn wharf serve");
        let mut server = Server {
            child,
            addr,
            log: log.to_path_buf(),
        };
        let what = format!("wharf serve to listen on {addr}");
        server
            .poll(&what, Duration::from_secs(10), |s| {
                if let Some(status) = s.child.try_wait().unwrap() {
                    panic!("wharf serve exited early ({status}):\n{}", s.logs());
                }
                std::net::TcpStream::connect(addr).is_ok().then_some(())
            })
            .await;
        server
    }

    /// Polls `ready` every 25 ms until it gives a value, failing after `limit` with the log.
    async fn poll<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut(&mut Server) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = ready(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (a name such as `TERM` or `KILL`) to this server, by its pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Waits (at most `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.poll("wharf serve to exit", limit, |s| {
            s.child.try_wait().unwrap()
        })
        .await
    }

    /// SIGTERM, then asserts a clean exit within 10 s.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "wharf serve exited with {status} after SIGTERM:\n{}",
            self.logs()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

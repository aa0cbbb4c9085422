//! Real third-party programs for interop tests: Debian's `docker-registry` (CNCF distribution 2.8) as
//! the origin registry, and `skopeo` as the client.
//!
//! Owns: finding the tools, the origin's process (started on a free loopback port, killed on Drop),
//! running skopeo with a private policy and registries.conf so the host's /etc/containers never
//! decides a result, and failure messages that show the tool's whole output.
//! Must not: contact anything but 127.0.0.1. A missing tool skips the test with a printed reason,
//! unless `WHARF_REQUIRE_INTEROP` is set (CI sets it), in which case the test fails.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::server::free_port;

/// Set (to anything) to turn "tool missing, test skipped" into a test failure.
pub const REQUIRE_ENV: &str = "WHARF_REQUIRE_INTEROP";

/// The path of `program` on `PATH`, if it is there and executable.
pub fn find_tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The programs an interop test needs, or `None` (after saying why) when one is missing and
/// [`REQUIRE_ENV`] is unset.
pub fn require_tools(test: &str, programs: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for program in programs {
        match find_tool(program) {
            Some(path) => found.push(path),
            None => missing.push(*program),
        }
    }
    if missing.is_empty() {
        return Some(found);
    }
    let packages: Vec<&str> = missing
        .iter()
        .map(|program| match *program {
            "go" => "golang-go",
            other => other,
        })
        .collect();
    let why = format!(
        "{test}: {} not found on PATH (Debian packages: {})",
        missing.join(", "),
        packages.join(" ")
    );
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{why}; {REQUIRE_ENV} is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {why}; set {REQUIRE_ENV}=1 to make this fail instead");
    None
}

/// Status code of `GET <path>` over plain HTTP/1.0, or `None` if nothing answered.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Debian's `docker-registry` serving from a temporary directory on a loopback port.
pub struct Origin {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Origin {
    /// Starts the registry and waits until `GET /v2/` answers 200. Blocking: call it from
    /// `spawn_blocking` inside async tests.
    pub fn start(program: &Path) -> Origin {
        Self::start_with(program, None)
    }

    /// `start` serving HTTPS with the PEM files `cert` and `key` (`http.tls`); ready once a
    /// plain-HTTP `GET /v2/` gets the 400 Go's TLS server answers it with.
    pub fn start_tls(program: &Path, cert: &Path, key: &Path) -> Origin {
        Self::start_with(program, Some((cert, key)))
    }

    fn start_with(program: &Path, tls: Option<(&Path, &Path)>) -> Origin {
        let mut last_failure = String::new();
        // The port is chosen before the registry binds it; retry if someone else took it meanwhile.
        for _ in 0..3 {
            match Self::try_start(program, tls) {
                Ok(origin) => return origin,
                Err(why) => last_failure = why,
            }
        }
        panic!("docker-registry did not start: {last_failure}");
    }

    fn try_start(program: &Path, tls: Option<(&Path, &Path)>) -> Result<Origin, String> {
        let dir = tempfile::Builder::new()
            .prefix("wharf-origin-")
            .tempdir()
            .expect("create origin tempdir");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).expect("create origin storage dir");
        let config = format!(
            "storage:\n  filesystem:\n    rootdirectory: {storage}\n  \
             delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: wharf-interop-test\n{tls}",
            storage = storage.display(),
            tls = tls.map_or_else(String::new, |(cert, key)| format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ))
        );
        let ready = if tls.is_some() { 400 } else { 200 };
        let child = spawn_registry(program, dir.path(), &config)?;
        let mut origin = Origin { addr, child, dir };

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = origin.child.try_wait().expect("poll docker-registry") {
                return Err(format!("exited with {status}; log:\n{}", origin.log()));
            }
            if http_status(addr, "/v2/") == Some(ready) {
                return Ok(origin);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "GET http://{addr}/v2/ did not answer {ready} within 20 s; log:\n{}",
                    origin.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, as image references spell the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's own log (warnings and errors) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The access log so far: one line per completed request, combined log format.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// How many completed requests were `<method> <path>` exactly (query strings included).
    pub fn requests(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP/");
        self.access_log().matches(&needle).count()
    }
}

impl Origin {
    /// A second `docker-registry` serving this one's storage on the Unix socket `sock` only
    /// (`http.net: unix`): the content pushed here over TCP, reachable nowhere else. Waits
    /// until the socket exists. Blocking.
    pub fn also_on_socket(&self, program: &Path, sock: &Path) -> SocketOrigin {
        let dir = tempfile::Builder::new()
            .prefix("wharf-origin-sock-")
            .tempdir()
            .expect("create origin tempdir");
        let config = format!(
            "storage:\n  filesystem:\n    rootdirectory: {storage}\n\
             http:\n  net: unix\n  addr: {sock}\n  secret: wharf-interop-test\n",
            storage = self.dir.path().join("storage").display(),
            sock = sock.display()
        );
        let child = spawn_registry(program, dir.path(), &config).unwrap_or_else(|e| panic!("{e}"));
        let origin = SocketOrigin { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "docker-registry made no socket in 20 s; log:\n{}",
                fs::read_to_string(origin.dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        origin
    }
}

/// Starts `docker-registry serve` in `dir` with `config` (its storage and http sections) at
/// warn level; its access log (one line per request, stdout) goes to `access.log`, the rest
/// (stderr) to `registry.log`.
fn spawn_registry(program: &Path, dir: &Path, config: &str) -> Result<Child, String> {
    let path = dir.join("config.yml");
    fs::write(
        &path,
        format!("version: 0.1\nlog:\n  level: warn\n{config}"),
    )
    .expect("write origin config.yml");
    let access = fs::File::create(dir.join("access.log")).expect("create access.log");
    let log = fs::File::create(dir.join("registry.log")).expect("create registry.log");
    Command::new(program)
        .arg("serve")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(access)
        .stderr(log)
        .spawn()
        .map_err(|err| format!("spawn {}: {err}", program.display()))
}

/// A `docker-registry` listening on a Unix socket only; killed on drop.
pub struct SocketOrigin {
    child: Child,
    dir: TempDir,
}

impl SocketOrigin {
    /// How many completed requests the access log shows for a path containing `needle`.
    pub fn requests_for(&self, needle: &str) -> usize {
        fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for SocketOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory (name starting `prefix`) holding a policy.json that accepts anything and
/// an empty registries.conf, for skopeo to read in place of the machine's.
pub fn skopeo_dir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create skopeo tempdir");
    fs::write(
        dir.path().join("policy.json"),
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("write policy.json");
    fs::write(
        dir.path().join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .expect("write registries.conf");
    dir
}

/// Runs `skopeo` with its own policy.json (accept anything) and an empty registries.conf, so the
/// machine's /etc/containers cannot change a result.
pub struct Skopeo {
    program: PathBuf,
    dir: TempDir,
}

impl Skopeo {
    pub fn new(program: &Path) -> Skopeo {
        let dir = skopeo_dir("wharf-skopeo-");
        fs::create_dir(dir.path().join("tmp")).expect("create skopeo tmp dir");
        Skopeo {
            program: program.to_owned(),
            dir,
        }
    }

    /// Writes a registries.conf for this skopeo's private directory and returns its path.
    pub fn write_registries_conf(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).expect("write registries.conf");
        path
    }

    /// `skopeo copy --src-tls-verify=false <source> oci:<dest>:<tag>`.
    pub fn copy_to_layout(&self, source: &str, dest: &Path, tag: &str) -> String {
        self.run(&[
            "copy",
            "--src-tls-verify=false",
            source,
            &format!("oci:{}:{tag}", dest.display()),
        ])
    }

    /// `skopeo --policy <private> --registries-conf <private> <args...>`; panics with the command
    /// line, exit status, stdout and stderr unless it exits 0. Returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let conf = self.dir.path().join("registries.conf");
        self.run_with_registries_conf(&conf, args)
    }

    /// As [`Skopeo::run`], with `registries_conf` instead of the private empty one.
    pub fn run_with_registries_conf(&self, registries_conf: &Path, args: &[&str]) -> String {
        let output = self.output(registries_conf, args);
        if !output.status.success() {
            panic!(
                "skopeo {} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
        String::from_utf8(output.stdout).expect("skopeo stdout is UTF-8")
    }

    fn output(&self, registries_conf: &Path, args: &[&str]) -> Output {
        Command::new(&self.program)
            // Shown only on failure: every request skopeo made and what it got back.
            .arg("--debug")
            .arg("--policy")
            .arg(self.dir.path().join("policy.json"))
            .arg("--registries-conf")
            .arg(registries_conf)
            .args(args)
            // Big blobs are staged in TMPDIR; keep them inside the test's directory.
            .env("TMPDIR", self.dir.path().join("tmp"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", self.program.display()))
    }

    /// `skopeo copy` from an OCI layout to the origin, over plain HTTP. `all` copies every image
    /// of an index instead of the host's platform only. `--preserve-digests` makes skopeo fail
    /// rather than rewrite a manifest (it would gzip plain-tar layers for a registry otherwise).
    pub fn push_layout(&self, layout: &Path, tag: &str, origin: &Origin, repo: &str, all: bool) {
        let src = format!("oci:{}:{tag}", layout.display());
        let dest = format!("docker://{}/{repo}:{tag}", origin.host());
        let mut args = vec!["copy", "--preserve-digests", "--dest-tls-verify=false"];
        if all {
            args.push("--all");
        }
        args.extend([src.as_str(), dest.as_str()]);
        self.run(&args);
    }

    /// The manifest digest `skopeo inspect` reports for `docker://<reference>` over plain HTTP.
    pub fn inspect_digest(&self, reference: &str) -> String {
        let out = self.run(&[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ]);
        let value: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|err| panic!("inspect output: {err}\n{out}"));
        value["Digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no Digest in skopeo inspect output:\n{out}"))
            .to_owned()
    }

    /// The exact manifest bytes (`skopeo inspect --raw`) for `docker://<reference>`.
    pub fn inspect_raw(&self, reference: &str) -> String {
        self.run(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
    }
}

//! The Go toolchain side of the Go interop tests (`tests/interop_go.rs`): finding `go`, building
//! the `gosumdb` upstream (`tests/support/gosumdb`) in GOPATH mode against golang.org/x/mod,
//! running it, and running the go command as a client of wharf.
//!
//! Must not: let any go process reach anything but loopback. Every one starts from a cleared
//! environment: GOPROXY, GOSUMDB and the private-module variables are set explicitly, VCS access is
//! off, toolchain switching is off, and HOME, GOPATH and GOMODCACHE live in temporary directories.
//! The build cache (GOCACHE) is shared under cargo's test scratch directory so reruns stay fast.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Set (by CI) to turn "go is missing" from a skip into a failure.
pub const REQUIRE_ENV: &str = "WHARF_REQUIRE_INTEROP";

/// The upstream program, compiled at test time.
const HELPER_SOURCE: &str = include_str!("gosumdb/main.go");

/// Where a go command's non-loopback requests go: a loopback port nothing listens on.
const DEAD_PROXY: &str = "http://127.0.0.1:1";

/// Longest any one go command may run before the test fails.
const GO_TIMEOUT: Duration = Duration::from_secs(180);

/// One published module version: path, version, files.
pub type ModuleSource = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The `go` binary found on PATH.
#[derive(Debug, Clone)]
pub struct Go {
    pub bin: PathBuf,
    pub version: String,
    goroot: PathBuf,
    gopath: String,
}

/// `go` from PATH, or `None` (after saying why) when the test should be skipped.
pub fn find_go(test: &str) -> Option<Go> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("go"))
            .find(|candidate| is_executable(candidate))
    });
    let Some(bin) = found else {
        let why = format!("{test}: `go` not found on PATH (Debian package: golang-go)");
        if std::env::var_os(REQUIRE_ENV).is_some() {
            panic!("{why}; {REQUIRE_ENV} is set, so this is a failure, not a skip");
        }
        eprintln!("SKIPPED {why}; set {REQUIRE_ENV}=1 to make this fail instead");
        return None;
    };
    let scratch = scratch_dir();
    let out = std::process::Command::new(&bin)
        .args(["env", "GOVERSION", "GOROOT", "GOPATH"])
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off")
        .current_dir(&scratch)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} env: {e}", bin.display()));
    assert!(
        out.status.success(),
        "`go env` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(str::to_owned);
    let mut next = || lines.next().unwrap_or_default();
    let (version, goroot, gopath) = (next(), next(), next());
    Some(Go {
        bin,
        version,
        goroot: PathBuf::from(goroot),
        gopath,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Cargo's per-package scratch directory for integration tests; holds the shared GOCACHE.
fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wharf-interop-go");
    std::fs::create_dir_all(&dir).expect("create the Go interop scratch dir");
    dir
}

impl Go {
    /// A go command with a cleared environment that can reach nothing: no proxy, no checksum
    /// database, no VCS, no toolchain download, HOME under `home`.
    fn command(&self, home: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear();
        for keep in ["PATH", "TMPDIR"] {
            if let Some(v) = std::env::var_os(keep) {
                c.env(keep, v);
            }
        }
        c.env("HOME", home)
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", scratch_dir().join("gocache"))
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOSUMDB", "off")
            .env("GONOSUMDB", "")
            .env("GONOPROXY", "")
            .env("GOPRIVATE", "")
            .env("GOINSECURE", "")
            .env("GOVCS", "*:off")
            .env("GOWORK", "off")
            .env("CGO_ENABLED", "0")
            // A lookup that goes direct (a module the settings keep away from the proxy) would
            // resolve and fetch `https://<module>?go-get=1`: send it to a dead loopback proxy
            // instead. Loopback addresses (wharf, the upstream) are never proxied.
            .env("HTTPS_PROXY", DEAD_PROXY)
            .env("HTTP_PROXY", DEAD_PROXY)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Directories that may hold `golang.org/x/mod` as a GOPATH `src` tree or a vendor tree:
    /// Debian's golang-golang-x-mod-dev, each GOPATH entry, and the toolchain's own vendored copy.
    fn xmod_candidates(&self) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("/usr/share/gocode/src")];
        dirs.extend(
            std::env::split_paths(&self.gopath)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.join("src")),
        );
        dirs.push(self.goroot.join("src/cmd/vendor"));
        dirs.into_iter()
            .map(|d| d.join("golang.org/x/mod"))
            .filter(|d| d.join("sumdb/test.go").is_file() && d.join("zip/zip.go").is_file())
            .collect()
    }

    /// Compiles `tests/support/gosumdb` into `work` (GOPATH mode, x/mod copied next to it).
    pub async fn build_helper(&self, work: &Path) -> PathBuf {
        let candidates = self.xmod_candidates();
        let Some(xmod) = candidates.first() else {
            panic!(
                "golang.org/x/mod source not found (looked in /usr/share/gocode/src, GOPATH {:?}, \
                 {}/src/cmd/vendor); install golang-golang-x-mod-dev",
                self.gopath,
                self.goroot.display()
            );
        };
        let gopath = work.join("gopath");
        copy_go_sources(xmod, &gopath.join("src/golang.org/x/mod"));
        let main_dir = gopath.join("src/wharf-gosumdb");
        std::fs::create_dir_all(&main_dir).unwrap();
        std::fs::write(main_dir.join("main.go"), HELPER_SOURCE).unwrap();
        let home = work.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let bin = work.join("gosumdb");
        let out = self
            .command(&home)
            .env("GO111MODULE", "off")
            .env("GOPATH", &gopath)
            .current_dir(&main_dir)
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(".")
            .output()
            .await
            .expect("run go build for the gosumdb helper");
        assert!(
            out.status.success(),
            "building tests/support/gosumdb against {} failed:\n{}",
            xmod.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    }
}

/// Copies the non-test `.go` files of a package tree (no `testdata`).
fn copy_go_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "testdata" {
                copy_go_sources(&path, &to.join(&*name));
            }
        } else if name.ends_with(".go") && !name.ends_with("_test.go") {
            std::fs::copy(&path, to.join(&*name)).unwrap();
        }
    }
}

/// What the helper published for one `path@version`.
#[derive(Debug, Clone, Deserialize)]
pub struct Published {
    /// The zip's `h1:` as recorded in the checksum database.
    pub zip: String,
    /// The go.mod's `h1:` as recorded in the checksum database.
    #[serde(rename = "mod")]
    pub go_mod: String,
    /// Hex SHA-256 of the zip actually served (not the recorded one when tampered).
    pub zip_sha256: String,
    pub tampered: bool,
}

impl Published {
    /// Asserts that a download reported this version's recorded `h1:` sums.
    #[track_caller]
    pub fn assert_sums(&self, zip: Option<&str>, go_mod: Option<&str>, what: &str) {
        assert_eq!(zip, Some(self.zip.as_str()), "{what} zip h1");
        assert_eq!(go_mod, Some(self.go_mod.as_str()), "{what} go.mod h1");
    }
}

#[derive(Deserialize)]
struct Ready {
    addr: String,
    vkey: String,
    modules: BTreeMap<String, Published>,
}

/// The running helper: a GOPROXY at `/mod` and checksum database `sum.test` at `/sumdb`.
pub struct Upstream {
    child: Option<Child>,
    pub addr: String,
    /// The checksum database's verifier key (`sum.test+<hash>+<key>`).
    pub vkey: String,
    /// `path@version` -> hashes.
    pub modules: BTreeMap<String, Published>,
    log: PathBuf,
    _dir: TempDir,
}

impl Upstream {
    /// Publishes every `<module path>@<version>` directory under `src`; `tamper` names versions
    /// whose served zip must not match the checksum database.
    pub async fn start(helper: &Path, src: &Path, tamper: &[&str]) -> Upstream {
        Upstream::start_with(helper, src, tamper, None).await
    }

    /// As `start`; with `socket`, the module tree is also served from the root of that Unix
    /// socket (the checksum database stays on TCP).
    pub async fn start_with(
        helper: &Path,
        src: &Path,
        tamper: &[&str],
        socket: Option<&Path>,
    ) -> Upstream {
        let dir = tempfile::Builder::new()
            .prefix("wharf-gosumdb-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("requests.log");
        let mut cmd = Command::new(helper);
        cmd.arg("-src")
            .arg(src)
            .arg("-out")
            .arg(dir.path().join("download"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        if !tamper.is_empty() {
            cmd.arg("-tamper").arg(tamper.join(","));
        }
        if let Some(path) = socket {
            cmd.arg("-unix").arg(path);
        }
        let mut child = cmd.spawn().expect("start the gosumdb helper");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("gosumdb helper did not get ready within 30 s")
        .expect("read the gosumdb helper's stdout");
        let Some(line) = line else {
            let _ = child.wait().await;
            panic!(
                "gosumdb helper exited before it was ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let ready: Ready = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("gosumdb helper printed {line:?}: {e}"));
        Upstream {
            child: Some(child),
            addr: ready.addr,
            vkey: ready.vkey,
            modules: ready.modules,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn module(&self, key: &str) -> &Published {
        self.modules
            .get(key)
            .unwrap_or_else(|| panic!("the helper did not publish {key}"))
    }

    /// The helper's request log (one line per request), for failure messages.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the helper and waits for it: the upstream is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill the gosumdb helper");
        }
    }
}

/// One finished go command.
pub struct GoRun {
    pub success: bool,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl GoRun {
    pub fn describe(&self) -> String {
        format!(
            "`{}` {}: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            if self.success { "succeeded" } else { "failed" },
            self.status,
            self.stdout,
            self.stderr
        )
    }

    /// Panics with the command's output unless it succeeded.
    pub fn ok(self) -> GoRun {
        assert!(self.success, "{}", self.describe());
        self
    }
}

/// The go command as a module client: fresh HOME, GOPATH and GOMODCACHE, modules only through
/// `goproxy`, every module checked against the checksum database named by `sumdb_key`.
pub struct GoClient {
    go: Go,
    root: TempDir,
    vars: Vec<(String, String)>,
}

impl GoClient {
    pub fn new(go: &Go, goproxy: &str, sumdb_key: &str) -> GoClient {
        // A key without a URL: the go command asks each GOPROXY entry whether it proxies this
        // database (`/sumdb/<name>/supported`) and, when wharf says yes, reads it there.
        Self::with_vars(go, &[("GOPROXY", goproxy), ("GOSUMDB", sumdb_key)])
    }

    /// A client whose module settings are exactly `vars` (on top of the cleared environment:
    /// GOPROXY and GOSUMDB are `off` unless `vars` set them).
    pub fn with_vars(go: &Go, vars: &[(&str, &str)]) -> GoClient {
        let root = tempfile::Builder::new()
            .prefix("wharf-goclient-")
            .tempdir()
            .unwrap();
        for d in ["home", "gopath", "modcache"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let mut all: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("GOFLAGS".into(), "-mod=mod -modcacherw".into()));
        all.push(("GO111MODULE".into(), "on".into()));
        GoClient {
            go: go.clone(),
            root,
            vars: all,
        }
    }

    /// `go env <names>` with `file` as the go command's env file (`GOENV`) and none of `names`
    /// in the environment: what the go command reads from such a file.
    pub async fn env_from_file(&self, file: &Path, names: &[&str]) -> GoRun {
        let mut cmd = self.go.command(&self.root.path().join("home"));
        for n in names {
            cmd.env_remove(n);
        }
        cmd.env("GOENV", file).arg("env").args(names);
        let command = format!("GOENV={} go env {}", file.display(), names.join(" "));
        let out = tokio::time::timeout(GO_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` ran longer than {GO_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("run `{command}`: {e}"));
        GoRun {
            success: out.status.success(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command,
        }
    }

    /// This client's module cache.
    pub fn modcache(&self) -> PathBuf {
        self.root.path().join("modcache")
    }

    /// An empty directory outside any module.
    pub fn outside_module(&self) -> PathBuf {
        let dir = self.root.path().join("nomodule");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `go <args>` in `dir`.
    pub async fn run(&self, dir: &Path, args: &[&str]) -> GoRun {
        let mut cmd = self.go.command(&self.root.path().join("home"));
        cmd.env("GOPATH", self.root.path().join("gopath"))
            .env("GOMODCACHE", self.modcache())
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir)
            .args(args);
        let command = format!("go {}", args.join(" "));
        let out = tokio::time::timeout(GO_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` ran longer than {GO_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("run `{command}`: {e}"));
        GoRun {
            success: out.status.success(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command,
        }
    }
}

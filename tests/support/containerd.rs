//! containerd as a client, for the interop test of `wharf client-config`'s `hosts.toml`: Debian's
//! `containerd` daemon on a private socket with its state in a temporary directory (the CRI
//! plugin off), and `ctr` talking to it with `--hosts-dir`.
//!
//! Must not: touch the machine's containerd (`/run/containerd`, `/var/lib/containerd`) or reach
//! anything but loopback. containerd needs root: without it the test is skipped with a printed
//! reason whatever `WHARF_REQUIRE_INTEROP` says (CI runs as root).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::origin::require_tools;

/// A containerd daemon of this test's own; killed on Drop.
pub struct Containerd {
    child: Child,
    ctr: PathBuf,
    dir: TempDir,
}

impl Containerd {
    /// `None` (after saying why) when containerd cannot run here: a missing program (a failure
    /// under `WHARF_REQUIRE_INTEROP`) or not root.
    pub fn start(test: &str) -> Option<Containerd> {
        let tools = require_tools(test, &["containerd", "ctr"])?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            eprintln!("SKIPPED {test}: containerd needs root");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("wharf-containerd-")
            .tempdir()
            .expect("create containerd tempdir");
        let d = dir.path();
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = {}\nstate = {}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {}\n",
                toml_path(&d.join("root")),
                toml_path(&d.join("state")),
                toml_path(&d.join("containerd.sock")),
            ),
        )
        .expect("write containerd config");
        let child = Command::new(&tools[0])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("containerd.log")).expect("create containerd.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tools[0].display()));
        let mut c = Containerd {
            child,
            ctr: tools[1].clone(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.child.try_wait().expect("poll containerd") {
                panic!("containerd exited with {status}:\n{}", c.log());
            }
            if c.ctr(&["version"]).status.success() {
                return Some(c);
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 20 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address <private socket> --namespace wharf-test <args>`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(&self.ctr)
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .arg("--namespace")
            .arg("wharf-test")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.ctr.display()))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The one builder for the TOML configs the tests write: wharf in-process takes its text, and
//! files for the binary are written from it.
//!
//! Sections come out in a fixed order (top-level keys, `[registry]`, each `[[registry.upstream]]`,
//! `[go]`, `[egress]`, then any extra tables given verbatim), so every test config is a few
//! calls, not a copy of a TOML string.

use std::path::{Path, PathBuf};

/// TOML basic string for `s` (quotes and escapes included).
pub fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[derive(Clone, Debug)]
pub struct WharfConfig {
    data_dir: PathBuf,
    top: Vec<String>,
    default_upstream: Option<String>,
    registry: Vec<String>,
    upstreams: Vec<(String, Vec<String>)>,
    go: Vec<String>,
    egress: Vec<String>,
    tables: String,
}

impl WharfConfig {
    /// The standard test config with the fake GOPROXY `go` too (`verify = false`).
    pub fn fakes(registry: &str, go: &str, data_dir: &Path) -> WharfConfig {
        WharfConfig::fake(registry, data_dir).go(go)
    }

    /// `data_dir` only, with egress allowed to 127.0.0.1: no upstream of either protocol.
    pub fn new(data_dir: &Path) -> WharfConfig {
        WharfConfig {
            data_dir: data_dir.to_path_buf(),
            top: Vec::new(),
            default_upstream: None,
            registry: Vec::new(),
            upstreams: Vec::new(),
            go: Vec::new(),
            egress: vec![r#"allow = ["127.0.0.1"]"#.to_owned()],
            tables: String::new(),
        }
    }

    /// The standard test config: one registry upstream `fake.test` at `url` (the default),
    /// egress to 127.0.0.1 only with 2 s connect and 5 s read timeouts.
    pub fn fake(url: &str, data_dir: &Path) -> WharfConfig {
        WharfConfig::new(data_dir)
            .upstream("fake.test", url)
            .timeouts()
    }

    /// A Go-only config: GOPROXY `url` without checksum verification, loopback egress with the
    /// standard timeouts.
    pub fn go_only(url: &str, data_dir: &Path) -> WharfConfig {
        WharfConfig::new(data_dir).go(url).timeouts()
    }

    /// Top-level keys (`listen = ...`, `offline = true`).
    pub fn top(mut self, keys: &str) -> WharfConfig {
        push_lines(&mut self.top, keys);
        self
    }

    pub fn offline(self, offline: bool) -> WharfConfig {
        self.top(&format!("offline = {offline}"))
    }

    /// `listen` on a loopback port that was free a moment ago.
    pub fn listen_anywhere(self) -> WharfConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        self.listen(format!("127.0.0.1:{port}"))
    }

    pub fn listen(self, addr: impl std::fmt::Display) -> WharfConfig {
        self.top(&format!("listen = \"{addr}\""))
    }

    /// Extra `[registry]` keys (`tag_ttl = "0s"`).
    pub fn registry(mut self, keys: &str) -> WharfConfig {
        push_lines(&mut self.registry, keys);
        self
    }

    /// The default upstream, when it is not the first one added.
    pub fn default_upstream(mut self, name: &str) -> WharfConfig {
        self.default_upstream = Some(name.to_owned());
        self
    }

    /// One more `[[registry.upstream]]`; the first added is the default.
    pub fn upstream(mut self, name: &str, url: &str) -> WharfConfig {
        self.upstreams.push((
            name.to_owned(),
            vec![
                format!("name = {}", quote(name)),
                format!("url = {}", quote(url)),
            ],
        ));
        self
    }

    /// One more `[[registry.upstream]]` with a pool of endpoints: `urls` is the TOML array's
    /// content (`"http://a", { url = "http://b", weight = 2 }`).
    pub fn upstream_pool(mut self, name: &str, urls: &str) -> WharfConfig {
        self.upstreams.push((
            name.to_owned(),
            vec![
                format!("name = {}", quote(name)),
                format!("urls = [{urls}]"),
            ],
        ));
        self
    }

    /// Extra keys for the upstream added last (`library_prefix = true`).
    pub fn upstream_keys(mut self, keys: &str) -> WharfConfig {
        let (_, lines) = self
            .upstreams
            .last_mut()
            .expect("an upstream to add keys to");
        push_lines(lines, keys);
        self
    }

    /// Credentials for the upstream added last: user `mirror`, with `password` written to `file`.
    pub fn login(self, file: &Path, password: &str) -> WharfConfig {
        std::fs::write(file, format!("{password}\n")).expect("write the upstream password");
        self.upstream_keys(&format!(
            "username = \"mirror\"\npassword_file = {}",
            quote(&file.to_string_lossy())
        ))
    }

    /// `[go]` with upstream `url` and `verify = false`.
    pub fn go(self, url: &str) -> WharfConfig {
        self.go_upstreams(&[url])
    }

    /// `[go]` with `urls` tried in order and `verify = false`.
    pub fn go_upstreams(mut self, urls: &[&str]) -> WharfConfig {
        let list: Vec<String> = urls.iter().map(|u| quote(u)).collect();
        self.go = vec![
            format!("upstreams = [{}]", list.join(", ")),
            "verify = false".into(),
        ];
        self
    }

    /// Extra `[go]` keys (`list_ttl = "0s"`, or `verify = true` in place of false).
    pub fn go_keys(mut self, keys: &str) -> WharfConfig {
        push_lines(&mut self.go, keys);
        self
    }

    /// `verify = true` against one `[[go.sumdb]]` named `name` with verifier key `key` at `url`.
    pub fn sumdb(self, name: &str, key: &str, url: &str) -> WharfConfig {
        self.go_keys("verify = true").tables(&format!(
            "[[go.sumdb]]\nname = {}\nkey = {}\nurl = {}\n",
            quote(name),
            quote(key),
            quote(url)
        ))
    }

    /// Extra `[egress]` keys.
    pub fn egress(mut self, keys: &str) -> WharfConfig {
        push_lines(&mut self.egress, keys);
        self
    }

    /// The standard egress timeouts: 2 s to connect, 5 s between reads.
    pub fn timeouts(self) -> WharfConfig {
        self.egress("connect_timeout = \"2s\"\nread_timeout = \"5s\"")
    }

    /// `egress.allow` set to `entries` in place of 127.0.0.1 alone.
    pub fn allow(mut self, entries: &[&str]) -> WharfConfig {
        let list: Vec<String> = entries.iter().map(|e| quote(e)).collect();
        self.egress[0] = format!("allow = [{}]", list.join(", "));
        self
    }

    /// No `egress.allow` line: the test gives its own `[egress]` keys.
    pub fn no_allow(mut self) -> WharfConfig {
        self.egress.remove(0);
        self
    }

    /// Tables appended verbatim (`[server]`, `[access]`, `[tls]`, `[[go.sumdb]]`).
    pub fn tables(mut self, text: &str) -> WharfConfig {
        self.tables.push_str(text);
        if !self.tables.is_empty() && !self.tables.ends_with('\n') {
            self.tables.push('\n');
        }
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The same config with `offline = true`, whatever it said before.
    pub fn into_offline(self) -> WharfConfig {
        self.offline(true)
    }

    pub fn toml(&self) -> String {
        let mut t = format!("data_dir = {}\n", quote(&self.data_dir.to_string_lossy()));
        for l in &self.top {
            t += &format!("{l}\n");
        }
        if !self.upstreams.is_empty() || !self.registry.is_empty() {
            t += "[registry]\n";
            if let Some(d) = self
                .default_upstream
                .as_ref()
                .or(self.upstreams.first().map(|(n, _)| n))
            {
                t += &format!("default_upstream = {}\n", quote(d));
            }
            for l in &self.registry {
                t += &format!("{l}\n");
            }
            for (_, lines) in &self.upstreams {
                t += "[[registry.upstream]]\n";
                for l in lines {
                    t += &format!("{l}\n");
                }
            }
        }
        if !self.go.is_empty() {
            t += "[go]\n";
            for l in &self.go {
                t += &format!("{l}\n");
            }
        }
        t += "[egress]\n";
        for l in &self.egress {
            t += &format!("{l}\n");
        }
        t + &self.tables
    }

    /// Writes the config to `path` and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.toml()).expect("write the test config");
        path.to_path_buf()
    }
}

/// Adds the `key = value` lines of `keys`; a key already there gets the new value in its place.
fn push_lines(to: &mut Vec<String>, keys: &str) {
    for line in keys.lines().filter(|l| !l.trim().is_empty()) {
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
        match to.iter_mut().find(|l| key(l) == key(line)) {
            Some(old) => *old = line.to_owned(),
            None => to.push(line.to_owned()),
        }
    }
}

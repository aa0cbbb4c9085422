//! The shipped operator files: `systemd/wharf.service` passes `systemd-analyze verify`, and
//! `systemd/wharf.toml` loads, shows the real defaults, documents every key the config accepts,
//! and its commented-out settings are valid too.
//!
//! Without `systemd-analyze` on PATH the unit test prints why and passes, unless
//! `WHARF_REQUIRE_INTEROP` is set (CI sets it), in which case it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use wharf::config::Config;
use wharf::upstream::EgressPolicy;

const REQUIRE_ENV: &str = "WHARF_REQUIRE_INTEROP";
/// Where the unit expects the binary; replaced by the test build for `verify`.
const SHIPPED_BINARY: &str = "/usr/local/bin/wharf";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn service_unit_passes_systemd_analyze_verify() {
    let unit = read("systemd/wharf.service");
    assert!(
        unit.contains(&format!("\nExecStart={SHIPPED_BINARY} serve ")),
        "the unit must start {SHIPPED_BINARY} serve"
    );
    // `verify` checks that every Exec*= binary exists and is executable.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wharf.service");
    let binary = env!("CARGO_BIN_EXE_wharf");
    std::fs::write(&path, unit.replace(SHIPPED_BINARY, binary)).unwrap();

    let output = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let why = "systemd-analyze not found on PATH (Debian package: systemd)";
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{why}; {REQUIRE_ENV} is set, so this is a failure, not a skip");
            }
            eprintln!("SKIPPED service_unit_passes_systemd_analyze_verify: {why}");
            return;
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // systemd reports a problem in our file (unknown key, bad value, missing binary) naming the
    // file or the unit, mostly as a warning with exit status 0. Lines about other units of the
    // host are not ours to fix.
    let ours: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("wharf.service") || line.contains(binary))
        .collect();
    let noise: Vec<&str> = text.lines().filter(|l| !ours.contains(l)).collect();
    if !noise.is_empty() {
        eprintln!(
            "systemd-analyze said, about other units:\n{}",
            noise.join("\n")
        );
    }
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}) found problems in wharf.service:\n{text}",
        output.status
    );
}

#[test]
fn service_unit_keeps_its_hardening() {
    let unit = read("systemd/wharf.service");
    let lines: BTreeSet<&str> = unit.lines().map(str::trim).collect();
    let missing: Vec<&str> = [
        "DynamicUser=yes",
        "StateDirectory=wharf",
        "ConfigurationDirectory=wharf",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "LimitNOFILE=65536",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "WantedBy=multi-user.target",
    ]
    .into_iter()
    .filter(|line| !lines.contains(line))
    .collect();
    assert!(missing.is_empty(), "wharf.service lost: {missing:?}");
}

#[test]
fn socket_unit_holds_the_example_configs_tcp_address_and_a_unix_socket() {
    let unit = read("systemd/wharf.socket");
    let lines: BTreeSet<&str> = unit.lines().map(str::trim).collect();
    let example = wharf::config::Config::from_toml_str(&read("systemd/wharf.toml")).unwrap();
    let tcp = example.listen.tcp().expect("the example listens on TCP");
    for needed in [
        format!("ListenStream={tcp}"),
        "ListenStream=/run/wharf/wharf.sock".into(),
        "SocketMode=0600".into(),
        "WantedBy=sockets.target".into(),
    ] {
        assert!(
            lines.contains(needed.as_str()),
            "wharf.socket lacks {needed}"
        );
    }
    // The service still works alone (binds `listen`), with a directory for its own socket.
    let service = read("systemd/wharf.service");
    assert!(service.contains("RuntimeDirectory=wharf"));
    assert!(
        service.contains("wharf.socket"),
        "the service documents the socket unit"
    );
}

#[test]
fn example_config_parses_and_matches_defaults() {
    let path = repo_path("systemd/wharf.toml");
    let example = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    example.validate().unwrap();
    let default = Config::default();

    assert_eq!(example.listen, default.listen);
    // The one deliberate difference: the unit's StateDirectory, spelled out.
    assert_eq!(example.data_dir, Path::new("/var/lib/wharf"));
    assert_eq!(example.log.format, default.log.format);
    assert_eq!(example.log.level, default.log.level);

    let (r, d) = (&example.registry, &default.registry);
    assert_eq!(r.default_upstream, d.default_upstream);
    assert_eq!(r.tag_ttl, d.tag_ttl);
    assert_eq!(r.max_manifest_size, d.max_manifest_size);
    assert_eq!(r.upstreams.len(), d.upstreams.len(), "active upstreams");
    for (u, v) in r.upstreams.iter().zip(&d.upstreams) {
        assert_eq!(u.name, v.name);
        assert_eq!(u.url, v.url);
        assert_eq!(u.library_prefix(), v.library_prefix(), "{}", u.name);
        assert_eq!(u.username, v.username, "{}", u.name);
        assert_eq!(u.password_file, v.password_file, "{}", u.name);
        assert_eq!(u.password_env, v.password_env, "{}", u.name);
    }

    let (g, d) = (&example.go, &default.go);
    assert_eq!(g.enabled, d.enabled);
    assert_eq!(g.upstreams, d.upstreams);
    assert_eq!(g.list_ttl, d.list_ttl);
    assert_eq!(g.not_found_ttl, d.not_found_ttl);
    assert_eq!(g.verify, d.verify);
    assert_eq!(g.sumdb_ttl, d.sumdb_ttl);
    assert_eq!(g.sumdbs.len(), d.sumdbs.len(), "active checksum databases");
    for (s, t) in g.sumdbs.iter().zip(&d.sumdbs) {
        assert_eq!(s.name, t.name);
        assert_eq!(s.key, t.key, "{}", s.name);
        assert_eq!(s.url(), t.url(), "{}", s.name);
    }
    assert_eq!(g.private.len(), d.private.len(), "active private sources");

    let (e, d) = (&example.egress, &default.egress);
    assert_eq!(e.allow, d.allow);
    assert_eq!(e.connect_timeout, d.connect_timeout);
    assert_eq!(e.read_timeout, d.read_timeout);
    assert_eq!(e.max_redirects, d.max_redirects);
}

#[test]
fn example_config_documents_every_key() {
    let accepted = accepted_keys();
    // Guard against a parser that silently finds nothing.
    for key in [
        "listen",
        "log.level",
        "registry.tag_ttl",
        "registry.upstream.password_env",
        "egress.max_redirects",
    ] {
        assert!(
            accepted.contains(key),
            "could not find {key:?} in src/; teach accepted_keys() the new shape: {accepted:?}"
        );
    }
    let documented = documented_keys(&read("systemd/wharf.toml"));
    let missing: Vec<_> = accepted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "systemd/wharf.toml does not show these keys (set or commented out, with their default \
         and why): {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "systemd/wharf.toml shows keys the config does not accept: {unknown:?}"
    );
}

#[test]
fn example_config_with_every_commented_setting_enabled_is_valid() {
    let enabled = uncomment_settings(&read("systemd/wharf.toml"));
    let config = Config::from_toml_str(&enabled).unwrap_or_else(|e| {
        panic!("uncommenting the example's `#key = value` lines gives an invalid config: {e}")
    });
    let names: Vec<&str> = config
        .registry
        .upstreams
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    for name in ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"] {
        assert!(
            names.contains(&name),
            "no example upstream {name}: {names:?}"
        );
    }
    assert_eq!(config.go.private.len(), 4, "example private Go sources");
    // Every example upstream must be reachable under the example's egress additions.
    let policy = EgressPolicy::new(&config.egress.allow).unwrap();
    // Every endpoint of every pool, each on its own.
    let urls = (config.registry.upstreams.iter())
        .flat_map(|u| u.endpoints())
        .chain(config.go.upstreams.iter().flat_map(|u| u.0.clone()))
        .chain(config.go.private.iter().flat_map(|p| p.endpoints()))
        .map(|e| e.url)
        .chain(config.go.sumdbs.iter().map(|d| d.url()));
    for url in urls {
        if let Some(socket) = wharf::config::unix_socket_url(&url) {
            policy
                .check_socket(&socket)
                .unwrap_or_else(|e| panic!("{url} has no socket entry in egress.allow: {e}"));
            continue;
        }
        let parsed = reqwest::Url::parse(&url).unwrap();
        policy
            .check(&parsed)
            .unwrap_or_else(|e| panic!("{url} is not covered by the example's egress.allow: {e}"));
    }
}

#[tokio::test]
async fn example_config_token_cannot_match() {
    let enabled = uncomment_settings(&read("systemd/wharf.toml"));
    let config = Config::from_toml_str(&enabled).unwrap_or_else(|e| panic!("{e}"));
    let example = &config.access.tokens[0].sha256;
    let access = wharf::access::AccessControl::new(&config.access, &["docker.io"], "docker.io")
        .unwrap_or_else(|e| panic!("{e}"));
    // What someone who copied the example might send: nothing, blanks, the words around it.
    let guesses = [
        "",
        " ",
        "\t",
        "build-farm",
        "TOKEN",
        "$TOKEN",
        "token",
        "changeme",
    ];
    for guess in guesses {
        assert_ne!(
            *example,
            hex::encode(Sha256::digest(guess.as_bytes())),
            "the example token's sha256 is that of {guess:?}"
        );
        // As an HTTP/2 client can send it: the value exactly, blanks included.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {guess}")).unwrap(),
        );
        assert!(
            access.check(None, "/v2/", &headers).await.is_err(),
            "`Bearer {guess}` authenticates with the example config"
        );
    }
}

/// The example with every commented-out setting enabled: a `#` directly followed by a key,
/// a table header or an array entry is removed; `# ` (explanations) stays.
fn uncomment_settings(example: &str) -> String {
    example
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            match trimmed.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| !c.is_whitespace() && c != '#') => {
                    rest.to_string()
                }
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Key paths (`registry.upstream.url`) shown in the example, set or commented out.
fn documented_keys(example: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in uncomment_settings(example).lines() {
        let line = line.trim();
        if line.starts_with('[') && !line.starts_with("[ ") {
            let name = line.trim_start_matches('[').trim_end_matches(']');
            if is_key_path(name) {
                table = name.to_string();
                keys.insert(table.clone());
            }
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if is_key_path(key) && !key.contains('.') {
                keys.insert(join_key(&table, key));
            }
        }
    }
    keys
}

fn is_key_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// One field of a config struct, as serde sees it.
struct Field {
    key: String,
    ty: String,
    flatten: bool,
}

/// Every key path the config accepts, found by walking the structs reachable from `Config`
/// in the source (`src/config.rs` first, then the rest of `src/`, for sections that live next
/// to their module). Tables count as keys too (`registry`, `registry.upstream`).
fn accepted_keys() -> BTreeSet<String> {
    let mut structs = BTreeMap::new();
    let mut files = vec![repo_path("src/config.rs")];
    rust_files(&repo_path("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (name, fields) in parse_structs(&text) {
            structs.entry(name).or_insert(fields);
        }
    }
    let mut keys = BTreeSet::new();
    walk("Config", "", &structs, &mut keys, 0);
    keys
}

fn walk(
    name: &str,
    prefix: &str,
    structs: &BTreeMap<String, Vec<Field>>,
    keys: &mut BTreeSet<String>,
    depth: usize,
) {
    assert!(depth < 16, "config structs nest too deep (a cycle?)");
    let fields = structs
        .get(name)
        .unwrap_or_else(|| panic!("struct {name} not found in src/"));
    for field in fields {
        let child = field
            .ty
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|t| structs.contains_key(*t));
        let path = if field.flatten {
            prefix.to_string()
        } else {
            let path = join_key(prefix, &field.key);
            keys.insert(path.clone());
            path
        };
        if let Some(child) = child {
            walk(child, &path, structs, keys, depth + 1);
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `struct Name { fields }` blocks (brace style, as rustfmt writes them) with each field's serde
/// key (after `rename`), its type, and whether it is flattened; `skip`ped fields are left out.
fn parse_structs(source: &str) -> Vec<(String, Vec<Field>)> {
    let mut out = Vec::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line
            .strip_prefix("pub struct ")
            .or_else(|| line.strip_prefix("struct "))
        else {
            continue;
        };
        let Some(name) = rest.strip_suffix(" {") else {
            continue;
        };
        let mut fields = Vec::new();
        let mut attrs = String::new();
        for line in lines.by_ref() {
            if line == "}" {
                break;
            }
            let t = line.trim();
            if t.starts_with("#[") {
                attrs.push_str(t);
                continue;
            }
            if t.starts_with("//") || t.is_empty() {
                continue;
            }
            let decl = t.strip_prefix("pub(crate) ").unwrap_or(t);
            let decl = decl.strip_prefix("pub ").unwrap_or(decl);
            if let Some((ident, ty)) = decl.split_once(':') {
                let serde = attrs.contains("serde(");
                let key = attr_value(&attrs, "rename").unwrap_or_else(|| ident.trim().to_string());
                if !(serde && attrs.contains("skip") && !attrs.contains("skip_serializing")) {
                    fields.push(Field {
                        key,
                        ty: ty.trim().trim_end_matches(',').to_string(),
                        flatten: serde && attrs.contains("flatten"),
                    });
                }
            }
            attrs.clear();
        }
        out.push((name.to_string(), fields));
    }
    out
}

/// The string value of `name = "..."` inside an attribute, e.g. `rename`.
fn attr_value(attrs: &str, name: &str) -> Option<String> {
    let start = attrs.find(&format!("{name} = \""))? + name.len() + 4;
    let len = attrs[start..].find('"')?;
    Some(attrs[start..start + len].to_string())
}

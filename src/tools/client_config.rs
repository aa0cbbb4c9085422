//! `wharf client-config`: what each client needs to pull through this wharf, derived from wharf's
//! own config: containerd's `certs.d/<registry>/hosts.toml` for every registry upstream,
//! `registries.conf` for podman, skopeo, buildah and CRI-O, Docker's `daemon.json`, and the Go
//! environment.
//!
//! Owns: the URL clients use (`--url`, else `listen` with the scheme `[tls]` implies) and the
//! text of each file. `render` is pure (a `Config` and an `Endpoint` in, files out); `command`
//! prints them or writes them under `--out`. Must not: read or print a secret. Where clients
//! need credentials, the files carry a comment naming the command that stores them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, DOCKER_HUB_NAME, UpstreamConfig};

/// The name of wharf's CA certificate beside each containerd `hosts.toml` (`ca` is resolved
/// relative to the host's directory).
const CONTAINERD_CA: &str = "wharf-ca.crt";

/// Where clients reach wharf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]`, no path.
    pub base: String,
    /// `host[:port]` as image references and `registries.conf` spell the registry.
    pub authority: String,
    pub https: bool,
    /// Why this URL, when it was not given: said in the output.
    pub notes: Vec<String>,
}

impl Endpoint {
    /// `--url`, or the config's `listen` with `https` when `[tls]` is configured. A listen
    /// address of `0.0.0.0` or `[::]` is reached by this machine's host name (`host_name`).
    pub fn of(
        config: &Config,
        url: Option<&str>,
        host_name: impl FnOnce() -> Option<String>,
    ) -> Result<Endpoint, String> {
        let tls = config.tls.is_some();
        match url {
            Some(u) => {
                let ep = Self::parse(u)?;
                let mut ep = ep;
                if tls && !ep.https {
                    ep.notes.push(format!(
                        "--url is http, but wharf's config serves TLS ([tls]): clients will fail \
                         unless something in front of wharf speaks plain HTTP at {}",
                        ep.base
                    ));
                }
                Ok(ep)
            }
            None => {
                let scheme = if tls { "https" } else { "http" };
                let Some(listen) = config.listen.tcp() else {
                    return Err(format!(
                        "listen is {} (Unix sockets only): clients on other machines cannot \
                         reach it; give the URL they use with --url",
                        config.listen
                    ));
                };
                let ip = listen.ip();
                let port = listen.port();
                let mut notes = Vec::new();
                let host = if ip.is_unspecified() {
                    let name = host_name().ok_or_else(|| {
                        format!(
                            "listen is {} (every address) and this machine's host name cannot \
                             be read: give the URL clients use with --url",
                            listen
                        )
                    })?;
                    notes.push(format!(
                        "URL {scheme}://{name}:{port}: listen is {}, so clients are pointed at \
                         this machine's host name; pass --url if they reach wharf by another name",
                        listen
                    ));
                    name
                } else {
                    if ip.is_loopback() {
                        notes.push(format!(
                            "listen is {}, a loopback address: these settings work on this \
                             machine only; set listen (or pass --url) for other machines",
                            listen
                        ));
                    }
                    match ip {
                        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                        std::net::IpAddr::V4(v4) => v4.to_string(),
                    }
                };
                let mut ep = Self::parse(&format!("{scheme}://{host}:{port}"))?;
                ep.notes = notes;
                Ok(ep)
            }
        }
    }

    /// A URL clients use: http or https, a host, no credentials, no path beyond `/`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(format!(
                    "{text:?}: the scheme must be http or https, not {other}"
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{}: a URL for clients must not carry credentials",
                crate::upstream::egress::redact(&url)
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: give wharf's root URL (scheme://host:port), without a path: wharf \
                 serves /v2/ and /go/ itself"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{text:?} has no host"))?
            .to_string();
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let scheme = url.scheme();
        Ok(Endpoint {
            base: format!("{scheme}://{authority}"),
            authority,
            https,
            notes: Vec::new(),
        })
    }
}

/// One file a client needs.
#[derive(Debug, Clone)]
pub struct ClientFile {
    /// Where it goes on a client (absolute), or a name for the Go environment.
    pub target: String,
    /// Its path under `--out DIR`.
    pub out: String,
    /// One line: which client reads it.
    pub about: String,
    /// Comment lines printed above it (never inside a JSON file).
    pub comments: Vec<String>,
    pub text: String,
    /// A copy of this file (wharf's CA): printed as a comment that says so, not as its text.
    pub copy_of: Option<PathBuf>,
}

/// wharf's CA certificate (`--ca FILE`), for clients that must trust it.
#[derive(Debug, Clone)]
pub struct Ca {
    pub path: PathBuf,
    pub pem: String,
}

impl Ca {
    /// Reads `path` and checks that it holds at least one PEM certificate.
    pub fn read(path: &Path) -> Result<Ca, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let pem =
            std::fs::read_to_string(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
        let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
        match certs.next() {
            Some(Ok(_)) => Ok(Ca {
                path: path.to_path_buf(),
                pem,
            }),
            Some(Err(e)) => Err(format!("--ca {}: {e}", path.display())),
            None => Err(format!(
                "--ca {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
                path.display()
            )),
        }
    }
}

/// Whether `[access]` asks clients for credentials anywhere.
fn needs_auth(config: &Config) -> bool {
    config.access.require_auth || config.access.rules.iter().any(|r| r.require_auth)
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Whether `name` can be the first component of a repository name (lower-case letters, digits,
/// and single `.`, `_`, `-` between them): the path form of a `registries.conf` mirror.
fn is_path_component(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
}

fn is_docker_hub(name: &str) -> bool {
    matches!(
        name,
        DOCKER_HUB_NAME | "index.docker.io" | "registry-1.docker.io"
    )
}

/// Every client file for `config` reached at `ep`.
pub fn render(config: &Config, ep: &Endpoint, ca: Option<&Ca>) -> Vec<ClientFile> {
    let mut files = Vec::new();
    for u in &config.registry.upstreams {
        files.push(hosts_toml(config, ep, ca, u));
    }
    if ca.is_some() && ep.https {
        files.push(ca_file(
            &format!("/etc/containerd/certs.d/{{registry}}/{CONTAINERD_CA}"),
            "containerd: beside each hosts.toml above (written there with --out)",
            ca,
        ));
    }
    if !config.registry.upstreams.is_empty() {
        files.push(registries_conf(config, ep, ca));
        if let Some(ca) = ca.filter(|_| ep.https) {
            files.push(ca_file(
                &format!("/etc/containers/certs.d/{}/ca.crt", ep.authority),
                "podman, skopeo, buildah, CRI-O: wharf's CA",
                Some(ca),
            ));
        }
    }
    if let Some(f) = daemon_json(config, ep, ca) {
        files.push(f);
        if let Some(ca) = ca.filter(|_| ep.https) {
            files.push(ca_file(
                &format!("/etc/docker/certs.d/{}/ca.crt", ep.authority),
                "Docker: wharf's CA",
                Some(ca),
            ));
        }
    }
    if config.go.enabled {
        files.push(go_env(config, ep, ca));
    }
    files
}

fn ca_file(target: &str, about: &str, ca: Option<&Ca>) -> ClientFile {
    ClientFile {
        target: target.to_string(),
        out: target.trim_start_matches('/').to_string(),
        about: about.to_string(),
        comments: Vec::new(),
        text: ca.map(|c| c.pem.clone()).unwrap_or_default(),
        copy_of: ca.map(|c| c.path.clone()),
    }
}

/// containerd: `certs.d/<registry>/hosts.toml`. containerd tries wharf first and adds
/// `?ns=<registry>` to every request, which wharf routes on; `server` is where it falls back.
fn hosts_toml(config: &Config, ep: &Endpoint, ca: Option<&Ca>, u: &UpstreamConfig) -> ClientFile {
    let target = format!("/etc/containerd/certs.d/{}/hosts.toml", u.name);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# {}: pulled through wharf at {} (containerd adds ?ns={} to each request);",
        u.name, ep.base, u.name
    );
    let _ = writeln!(
        t,
        "# if wharf fails, containerd falls back to `server` and reports that registry's error."
    );
    if ep.https && ca.is_none() {
        let _ = writeln!(
            t,
            "# wharf's certificate must verify against the system's CAs; for a private CA, rerun \
             with --ca FILE."
        );
    }
    if needs_auth(config) {
        let _ = writeln!(
            t,
            "# wharf asks for credentials: give them to containerd's own registry auth (CRI \
             image pull secrets for {}, `ctr images pull --user`), never in a header here.",
            ep.authority
        );
    }
    let _ = writeln!(
        t,
        "server = {}",
        toml_str(
            u.endpoints()
                .first()
                .map_or("", |e| e.url.trim_end_matches('/'))
        )
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "[host.{}]", toml_str(&ep.base));
    let _ = writeln!(t, "  capabilities = [\"pull\", \"resolve\"]");
    if ep.https && ca.is_some() {
        let _ = writeln!(t, "  ca = {}", toml_str(CONTAINERD_CA));
    }
    ClientFile {
        out: target.trim_start_matches('/').to_string(),
        target,
        about: format!("containerd (CRI, nerdctl, ctr --hosts-dir): {}", u.name),
        comments: Vec::new(),
        text: t,
        copy_of: None,
    }
}

/// podman, skopeo, buildah, CRI-O: one `[[registry]]` per upstream, its mirror at wharf. Every
/// registry but the default one must name itself in the mirror's path, or wharf serves the
/// same-named repository from its default upstream.
fn registries_conf(config: &Config, ep: &Endpoint, ca: Option<&Ca>) -> ClientFile {
    let default = &config.registry.default_upstream;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# podman, skopeo, buildah, CRI-O: registries.conf (v2). Merge into \
         /etc/containers/registries.conf, or use it whole (skopeo --registries-conf FILE)."
    );
    let _ = writeln!(
        t,
        "# The default upstream ({default}) is wharf's root; every other registry's mirror \
         carries /<registry>."
    );
    if needs_auth(config) {
        let _ = writeln!(
            t,
            "# wharf asks for credentials: `podman login {0}` or `skopeo login {0}` (never here).",
            ep.authority
        );
    }
    if ep.https && ca.is_none() {
        let _ = writeln!(
            t,
            "# wharf's certificate must verify against the system's CAs; for a private CA put it \
             in /etc/containers/certs.d/{}/ca.crt.",
            ep.authority
        );
    }
    // Short names (`podman pull alpine`) are looked up here; without it podman refuses them.
    let _ = writeln!(t, "unqualified-search-registries = [{}]", toml_str(default));
    for u in &config.registry.upstreams {
        let is_default = u.name == *default;
        let location = if is_default {
            ep.authority.clone()
        } else if is_path_component(&u.name) {
            format!("{}/{}", ep.authority, u.name)
        } else {
            let _ = writeln!(
                t,
                "\n# {}: not mirrored here: its name cannot be a path component, so only \
                 containerd (?ns=) reaches it through wharf.",
                u.name
            );
            continue;
        };
        let _ = writeln!(t);
        let _ = writeln!(t, "[[registry]]");
        let _ = writeln!(t, "prefix = {}", toml_str(&u.name));
        let _ = writeln!(t, "location = {}", toml_str(&u.name));
        let _ = writeln!(t);
        let _ = writeln!(t, "[[registry.mirror]]");
        let _ = writeln!(t, "location = {}", toml_str(&location));
        if !ep.https {
            let _ = writeln!(t, "insecure = true");
        }
    }
    ClientFile {
        target: "/etc/containers/registries.conf".into(),
        out: "etc/containers/registries.conf".into(),
        about: "podman, skopeo, buildah, CRI-O".into(),
        comments: Vec::new(),
        text: t,
        copy_of: None,
    }
}

/// Docker: `registry-mirrors` mirrors Docker Hub only, and only when Docker Hub is wharf's
/// default upstream (Docker's mirror requests name no registry).
fn daemon_json(config: &Config, ep: &Endpoint, ca: Option<&Ca>) -> Option<ClientFile> {
    let default = &config.registry.default_upstream;
    if config.registry.upstreams.is_empty() || !is_docker_hub(default) {
        return None;
    }
    let mut doc = serde_json::json!({ "registry-mirrors": [ep.base] });
    if !ep.https {
        doc["insecure-registries"] = serde_json::json!([ep.authority]);
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    let mut comments = vec![
        "Docker mirrors only Docker Hub this way; other registries' images are pulled by \
         wharf's name (docker pull <wharf>/<registry>/<repository>:<tag>)."
            .to_string(),
        "If wharf fails, Docker falls back to Docker Hub and prints its error, not wharf's."
            .to_string(),
    ];
    if needs_auth(config) {
        comments.push(format!(
            "wharf asks for credentials, and Docker sends a mirror none of its own: Docker Hub \
             pulls fall back to Docker Hub. Pull by wharf's name after `docker login {}`.",
            ep.authority
        ));
    }
    if ep.https && ca.is_none() {
        comments.push(format!(
            "For a private CA, put it in /etc/docker/certs.d/{}/ca.crt.",
            ep.authority
        ));
    }
    Some(ClientFile {
        target: "/etc/docker/daemon.json".into(),
        out: "etc/docker/daemon.json".into(),
        about: "Docker (merge into an existing daemon.json, then restart dockerd)".into(),
        comments,
        text,
        copy_of: None,
    })
}

/// The go command: `GOPROXY` at wharf, `GONOSUMDB` for private patterns, `GOSUMDB` when wharf's
/// checksum database is not the go command's default. Lines are `KEY=VALUE` (a go env file and
/// a shell script alike); comments start with `#`.
fn go_env(config: &Config, ep: &Endpoint, ca: Option<&Ca>) -> ClientFile {
    let go = &config.go;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Go: add to the go command's env file (cat go.env >> \"$(go env GOENV)\"), or export \
         (set -a; . ./go.env; set +a)."
    );
    let _ = writeln!(t, "GOPROXY={}/go", ep.base);
    const DEFAULT_DB: &str = "sum.golang.org";
    if go.sumdbs.iter().any(|d| d.name == DEFAULT_DB) {
        let _ = writeln!(
            t,
            "# GOSUMDB: the default ({DEFAULT_DB}) is read through wharf \
             ({}/go/sumdb/{DEFAULT_DB}/supported); nothing to set.",
            ep.base
        );
    } else if let Some(db) = go.sumdbs.first() {
        let _ = writeln!(
            t,
            "# GOSUMDB: wharf proxies {} ({}/go/sumdb/{}/supported): its key, without a URL, \
             makes the go command read it through GOPROXY.",
            db.name, ep.base, db.name
        );
        let _ = writeln!(t, "GOSUMDB={}", db.key);
        for other in go.sumdbs.iter().skip(1) {
            let _ = writeln!(
                t,
                "# wharf also proxies {}: GOSUMDB={} to use it instead.",
                other.name, other.key
            );
        }
    } else {
        let _ = writeln!(
            t,
            "# GOSUMDB: wharf proxies no checksum database; the go command asks its default \
             directly."
        );
    }
    let patterns: Vec<&str> = go
        .private
        .iter()
        .flat_map(|p| p.pattern.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if !patterns.is_empty() {
        let list = patterns.join(",");
        let _ = writeln!(
            t,
            "# Private modules come through wharf too; GONOSUMDB keeps the go command from \
             asking a public checksum database about them."
        );
        let _ = writeln!(
            t,
            "# Not GOPRIVATE alone: it implies GONOPROXY, and the go command would bypass wharf \
             and go to their VCS. GOPRIVATE only with GONOPROXY=none."
        );
        let _ = writeln!(t, "GONOSUMDB={list}");
    }
    if needs_auth(config) {
        let url = reqwest::Url::parse(&ep.base).ok();
        let host = url
            .as_ref()
            .and_then(|u| u.host_str())
            .unwrap_or(&ep.authority)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let _ = writeln!(
            t,
            "# wharf asks for credentials: the go command reads them from ~/.netrc \
             (machine {host} login <user> password <password>){}.",
            if ep.https {
                ""
            } else {
                ", but sends them only over https: serve wharf with [tls]"
            }
        );
    }
    if ep.https && ca.is_some() {
        let _ = writeln!(
            t,
            "# The go command trusts the system's CAs: install wharf's CA there \
             (update-ca-certificates) or point SSL_CERT_FILE at it."
        );
    }
    ClientFile {
        target: "the go command's env file ($(go env GOENV)), or the environment".into(),
        out: "go.env".into(),
        about: "the go command".into(),
        comments: Vec::new(),
        text: t,
        copy_of: None,
    }
}

/// The whole output as one text: a header, then each file under a `# --- <where>` line.
pub fn print(config_name: &str, ep: &Endpoint, files: &[ClientFile]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# wharf client configuration for {}", ep.base);
    let _ = writeln!(
        o,
        "# from {config_name}; write it into a directory with --out DIR"
    );
    for n in &ep.notes {
        let _ = writeln!(o, "# note: {n}");
    }
    for f in files {
        let _ = writeln!(o);
        let _ = writeln!(o, "# --- {} ({})", f.target, f.about);
        for c in &f.comments {
            let _ = writeln!(o, "# {c}");
        }
        match &f.copy_of {
            Some(p) => {
                let _ = writeln!(o, "# a copy of {}", p.display());
            }
            None => o.push_str(&f.text),
        }
    }
    o
}

/// `README.txt` under `--out`: what each file is and where it goes.
fn readme(ep: &Endpoint, files: &[ClientFile]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Client configuration for the wharf at {}", ep.base);
    for n in &ep.notes {
        let _ = writeln!(o, "Note: {n}");
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Files under etc/ go to the same place under /etc on a client (merge with what is there):"
    );
    for f in files {
        let _ = writeln!(o);
        if f.out.contains("{registry}") {
            for h in files.iter().filter(|h| h.out.ends_with("/hosts.toml")) {
                let out = h.out.replace("hosts.toml", CONTAINERD_CA);
                let _ = writeln!(o, "{out}  ->  /{out}");
            }
            let _ = writeln!(o, "    containerd: wharf's CA, named by `ca` in hosts.toml");
            continue;
        }
        let _ = writeln!(o, "{}  ->  {}", f.out, f.target);
        let _ = writeln!(o, "    {}", f.about);
        for c in &f.comments {
            let _ = writeln!(o, "    {c}");
        }
    }
    o
}

/// Writes every file under `dir`, which must be empty or not exist yet (nothing is overwritten).
pub fn write(dir: &Path, ep: &Endpoint, files: &[ClientFile]) -> Result<Vec<PathBuf>, String> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "--out {}: the directory is not empty; give a new or empty one",
            dir.display()
        ));
    }
    let mut written = Vec::new();
    let mut put = |rel: &str, text: &str| -> Result<(), String> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for f in files {
        if f.out.contains("{registry}") {
            // The CA beside every hosts.toml.
            for h in files.iter().filter(|h| h.out.ends_with("/hosts.toml")) {
                let rel = h.out.replace("hosts.toml", CONTAINERD_CA);
                put(&rel, &f.text)?;
            }
        } else {
            put(&f.out, &f.text)?;
        }
    }
    put("README.txt", &readme(ep, files))?;
    Ok(written)
}

/// This machine's host name, for a wharf listening on every address.
pub fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "localhost")
}

/// `wharf client-config`: print the files, or write them under `out`.
pub fn command(
    config: &Config,
    config_name: &str,
    url: Option<&str>,
    ca: Option<&Path>,
    out: Option<&Path>,
) -> Result<ExitCode, crate::Error> {
    let invalid = |m: String| crate::Error::Config(crate::config::ConfigError::Invalid(m));
    let ep = Endpoint::of(config, url, host_name).map_err(invalid)?;
    let ca = ca.map(Ca::read).transpose().map_err(invalid)?;
    if ca.is_some() && !ep.https {
        eprintln!(
            "wharf: note: --ca is for https; clients reach {} over http",
            ep.base
        );
    }
    let files = render(config, &ep, ca.as_ref());
    match out {
        None => {
            let _ = std::io::Write::write_all(
                &mut std::io::stdout(),
                print(config_name, &ep, &files).as_bytes(),
            );
        }
        Some(dir) => {
            let written = write(dir, &ep, &files).map_err(invalid)?;
            let mut o = format!(
                "wrote {} files for {} under {}\n",
                written.len(),
                ep.base,
                dir.display()
            );
            for n in &ep.notes {
                o += &format!("note: {n}\n");
            }
            let _ = std::io::Write::write_all(&mut std::io::stdout(), o.as_bytes());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml_str(toml).unwrap()
    }

    #[test]
    fn the_url_comes_from_listen_with_the_scheme_tls_implies() {
        let c = config("listen = \"10.1.2.3:5000\"\n");
        let ep = Endpoint::of(&c, None, || None).unwrap();
        assert_eq!(ep.base, "http://10.1.2.3:5000");
        assert_eq!(ep.authority, "10.1.2.3:5000");
        assert!(ep.notes.is_empty(), "{:?}", ep.notes);

        let c = config("listen = \"[::]:5443\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n");
        let ep = Endpoint::of(&c, None, || Some("mirror-7".into())).unwrap();
        assert_eq!(ep.base, "https://mirror-7:5443");
        assert!(ep.https);
        assert!(ep.notes[0].contains("host name"), "{:?}", ep.notes);
        let err = Endpoint::of(&c, None, || None).unwrap_err();
        assert!(err.contains("--url"), "{err}");

        let c = config("listen = \"[::1]:5000\"\n");
        let ep = Endpoint::of(&c, None, || None).unwrap();
        assert_eq!(ep.authority, "[::1]:5000");
        assert!(ep.notes[0].contains("loopback"), "{:?}", ep.notes);
    }

    #[test]
    fn a_url_for_clients_is_a_root_url_without_credentials() {
        let ep = Endpoint::parse("https://wharf.example/").unwrap();
        assert_eq!(
            (ep.base.as_str(), ep.authority.as_str()),
            ("https://wharf.example", "wharf.example")
        );
        for bad in [
            "ftp://wharf:21",
            "http://u:p@wharf:5000",
            "http://wharf:5000/go",
            "wharf:5000",
            "not a url",
        ] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert!(!e.contains("p@"), "a password is echoed: {e}");
        }
    }

    #[test]
    fn only_lower_case_host_names_are_mirror_paths() {
        assert!(is_path_component("ghcr.io"));
        assert!(is_path_component("registry-1.example"));
        assert!(!is_path_component("registry.internal:5000"));
        assert!(!is_path_component("Quay.io"));
        assert!(!is_path_component(".io"));
    }
}

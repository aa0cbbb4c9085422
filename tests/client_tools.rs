//! The commands for client machines, as the binary runs them: `wharf client-config` (every file
//! parses as its client reads it, names every upstream the right way, carries TLS and auth
//! settings but no secret) and `wharf doctor` over a real wharf (healthy: every line ok; an
//! upstream down, a wrong URL, a certificate for another name, credentials: the line that says
//! so, and the exit status).
//!
//! The real clients read the same files in `interop_registry.rs` (skopeo, containerd's ctr) and
//! `interop_go.rs` (the go command).

mod support;
use support::tlsgen;
use support::*;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const SECRET: &str = "hunter2-never-printed";

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run wharf")
}

fn toml_of(path: &Path) -> toml::Table {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}\n{text}", path.display()))
}

/// Three registries (Docker Hub the default, one by path, one whose name has a port), TLS,
/// authentication, a private module pattern and a checksum database other than the default.
fn full_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("wharf.toml");
    fs::write(
        &path,
        format!(
            r#"listen = "0.0.0.0:5443"
data_dir = {data}
[tls]
cert = "/etc/wharf/cert.pem"
key = "/etc/wharf/key.pem"
[registry]
default_upstream = "docker.io"
[[registry.upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
username = "mirrorbot"
password_env = "WHARF_TEST_UPSTREAM_PASSWORD"
[[registry.upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
[[registry.upstream]]
name = "registry.internal:5000"
url = "https://registry.internal:5000"
[[go.sumdb]]
name = "sum.corp.test"
key = "sum.corp.test+abcdef01+AaBbCcDd"
url = "https://sumdb.corp.test"
[[go.private]]
pattern = "git.corp.test,corp.test/*"
url = "https://goproxy.corp.test"
[access]
require_auth = true
[[access.token]]
name = "ci"
sha256 = "{token}"
"#,
            data = quote(&dir.join("data").to_string_lossy()),
            token = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
    )
    .unwrap();
    path
}

#[test]
fn client_config_writes_files_each_client_parses_with_tls_auth_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = full_config(dir.path());
    let ca = tlsgen::Ca::new("wharf client-config CA");
    let ca_path = ca.write_cert_dir(&dir.path().join("ca"));
    let out_dir = dir.path().join("out");
    let out = ok(run(wharf_command()
        .args([
            "client-config",
            "--url",
            "https://wharf.test:5443",
            "--config",
        ])
        .arg(&config)
        .arg("--ca")
        .arg(&ca_path)
        .arg("--out")
        .arg(&out_dir)
        .env("WHARF_TEST_UPSTREAM_PASSWORD", SECRET)));
    expect_stdout(&out, "https://wharf.test:5443");

    // containerd: one hosts.toml per upstream, wharf first, the registry itself as `server`.
    for (name, server) in [
        ("docker.io", "https://registry-1.docker.io"),
        ("ghcr.io", "https://ghcr.io"),
        ("registry.internal:5000", "https://registry.internal:5000"),
    ] {
        let host_dir = out_dir.join("etc/containerd/certs.d").join(name);
        let t = toml_of(&host_dir.join("hosts.toml"));
        assert_eq!(t["server"].as_str(), Some(server), "{name}: {t:?}");
        let hosts = t["host"].as_table().unwrap();
        assert_eq!(hosts.len(), 1, "{name}: {t:?}");
        let h = hosts["https://wharf.test:5443"].as_table().unwrap();
        let caps: Vec<&str> = h["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(caps, ["pull", "resolve"], "{name}");
        assert_eq!(h["ca"].as_str(), Some("wharf-ca.crt"), "{name}");
        assert!(!h.contains_key("skip_verify"), "{name}: {h:?}");
        assert!(!h.contains_key("header"), "{name}: credentials in a header");
        // `ca` is relative to the host's directory, where the copy is.
        assert_eq!(
            fs::read_to_string(host_dir.join("wharf-ca.crt")).unwrap(),
            ca.cert_pem
        );
    }

    // podman / skopeo: the default upstream at wharf's root, ghcr.io under /ghcr.io, and the name
    // with a port (which cannot be a path component) left out.
    let rc = toml_of(&out_dir.join("etc/containers/registries.conf"));
    assert_eq!(
        rc["unqualified-search-registries"].as_array().unwrap()[0].as_str(),
        Some("docker.io")
    );
    let regs = rc["registry"].as_array().unwrap();
    let mirror_of = |prefix: &str| {
        let r = regs
            .iter()
            .find(|r| r["prefix"].as_str() == Some(prefix))
            .unwrap_or_else(|| panic!("no [[registry]] for {prefix}: {rc:?}"));
        assert_eq!(r["location"].as_str(), Some(prefix));
        let m = r["mirror"].as_array().unwrap();
        assert_eq!(m.len(), 1);
        assert!(
            !m[0].as_table().unwrap().contains_key("insecure"),
            "TLS: {m:?}"
        );
        m[0]["location"].as_str().unwrap().to_string()
    };
    assert_eq!(mirror_of("docker.io"), "wharf.test:5443");
    assert_eq!(mirror_of("ghcr.io"), "wharf.test:5443/ghcr.io");
    assert_eq!(regs.len(), 2, "{rc:?}");
    assert_eq!(
        fs::read_to_string(out_dir.join("etc/containers/certs.d/wharf.test:5443/ca.crt")).unwrap(),
        ca.cert_pem
    );

    // Docker: Docker Hub only, no insecure-registries over TLS.
    let daemon: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("etc/docker/daemon.json")).unwrap())
            .expect("daemon.json is JSON");
    assert_eq!(
        daemon,
        serde_json::json!({"registry-mirrors": ["https://wharf.test:5443"]})
    );
    assert!(
        out_dir
            .join("etc/docker/certs.d/wharf.test:5443/ca.crt")
            .is_file()
    );

    // Go: GOPROXY at wharf, the proxied database's key, GONOSUMDB (not GOPRIVATE) for the
    // private patterns.
    let go_env = fs::read_to_string(out_dir.join("go.env")).unwrap();
    let vars: Vec<(&str, &str)> = go_env
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split_once('=').expect("KEY=VALUE"))
        .collect();
    assert_eq!(
        vars,
        [
            ("GOPROXY", "https://wharf.test:5443/go"),
            ("GOSUMDB", "sum.corp.test+abcdef01+AaBbCcDd"),
            ("GONOSUMDB", "git.corp.test,corp.test/*"),
        ],
        "{go_env}"
    );
    assert!(go_env.contains(".netrc"), "{go_env}");

    // Credentials are named by the command that stores them, never written.
    let readme = fs::read_to_string(out_dir.join("README.txt")).unwrap();
    assert!(readme.contains("docker login wharf.test:5443"), "{readme}");
    for f in files_under(&out_dir) {
        let text = fs::read_to_string(&f).unwrap();
        assert!(!text.contains(SECRET), "{} holds the secret", f.display());
        assert!(
            !text.contains("9f86d081"),
            "{} holds a token hash",
            f.display()
        );
    }

    // A directory that already holds something is refused, and left alone.
    let again = run(wharf_command()
        .args([
            "client-config",
            "--url",
            "https://wharf.test:5443",
            "--config",
        ])
        .arg(&config)
        .arg("--out")
        .arg(&out_dir));
    assert!(!again.status.success(), "{}", describe(&again));
    assert_eq!(
        stderr(&again).trim_end().lines().count(),
        1,
        "{}",
        describe(&again)
    );
    expect_stderr(&again, "not empty");
}

#[test]
fn client_config_prints_plain_http_settings_from_listen() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    // A default upstream that is not Docker Hub: Docker's registry-mirrors would serve its
    // images under Docker Hub's names, so there is no daemon.json.
    WharfConfig::new(&dir.path().join("data"))
        .top("listen = \"127.0.0.1:5999\"")
        .upstream("origin.test", "http://127.0.0.1:9")
        .upstream("docker.io", "https://registry-1.docker.io")
        .write(&config);
    let out = ok(run(wharf_command()
        .args(["client-config", "--config"])
        .arg(&config)));
    let text = stdout(&out);
    for expected in [
        "# wharf client configuration for http://127.0.0.1:5999",
        "a loopback address",
        "# --- /etc/containerd/certs.d/origin.test/hosts.toml",
        "[host.\"http://127.0.0.1:5999\"]",
        "location = \"127.0.0.1:5999\"\ninsecure = true",
        "location = \"127.0.0.1:5999/docker.io\"\ninsecure = true",
        "GOPROXY=http://127.0.0.1:5999/go",
    ] {
        assert!(text.contains(expected), "missing {expected:?}:\n{text}");
    }
    assert!(!text.contains("daemon.json"), "{text}");
    assert!(!text.contains("GONOSUMDB"), "no private patterns: {text}");
    assert!(!text.contains("ca = "), "no TLS: {text}");
}

#[test]
fn client_config_refuses_a_url_with_a_path_in_one_line() {
    let out = run(wharf_command().args(["client-config", "--url", "http://wharf:5000/go"]));
    assert!(!out.status.success(), "{}", describe(&out));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        describe(&out)
    );
    expect_stderr(&out, "without a path");
}

/// `wharf doctor <url> [args]` with the go command's settings pointing at `goproxy` (or unset),
/// and nothing else of the machine's Go environment.
async fn doctor(url: &str, args: &[&str], goproxy: Option<&str>) -> Output {
    let mut cmd = wharf_command_async();
    cmd.arg("doctor").arg(url).args(args);
    for var in [
        "GOPROXY",
        "GOSUMDB",
        "GONOSUMDB",
        "GONOPROXY",
        "GOPRIVATE",
        "GOFLAGS",
        "WHARF_PASSWORD",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GOENV", "off").env("GOTOOLCHAIN", "local");
    if let Some(p) = goproxy {
        cmd.env("GOPROXY", p);
    }
    cmd.output().await.expect("run wharf doctor")
}

/// The line of `check` in a doctor report.
fn line_of<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{check} ")))
        })
        .unwrap_or_else(|| panic!("no {check:?} line:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_on_a_healthy_wharf_says_ok_on_every_line() {
    let up = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let wharf = Wharf::in_temp_dir(|d| WharfConfig::fakes(&up.url(), &go.url(), d)).await;
    let base = format!("http://{}", wharf.addr);
    let out = doctor(&base, &[], Some(&format!("{base}/go"))).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    for check in [
        "connect",
        "wharf",
        "registry",
        "auth",
        "upstream registry fake.test",
        "go env",
        "sumdb sum.golang.org",
    ] {
        assert!(line_of(&text, check).starts_with("ok "), "{check}:\n{text}");
    }
    assert!(
        text.lines().all(|l| l.starts_with("ok ")),
        "a healthy wharf has only ok lines:\n{text}"
    );
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_an_upstream_that_is_down_and_why() {
    // Nothing listens on the upstream's port: three failed fills mark it down.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let wharf = Wharf::in_temp_dir(|d| WharfConfig::fake(&dead, d)).await;
    for _ in 0..3 {
        let status = status_of(wharf.url("/v2/team/app/manifests/v1")).await;
        assert!(status >= 500, "{status}");
    }
    let base = format!("http://{}", wharf.addr);
    let out = doctor(&base, &[], Some(&format!("{base}/go"))).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let line = line_of(&text, "upstream registry fake.test");
    assert!(line.starts_with("FAIL"), "{text}");
    assert!(
        line.contains("down:") && line.contains("onnect") && line.contains("check-egress"),
        "the line says why and where to look: {line}"
    );
    // The rest still ran, and is fine.
    assert!(line_of(&text, "registry").starts_with("ok "), "{text}");
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_at_a_wrong_url_fails_in_one_line() {
    // Nothing there.
    let out = doctor(&format!("http://127.0.0.1:{}", free_port()), &[], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("FAIL  connect") && text.contains("nothing answers"),
        "{text}"
    );

    // Something that is not wharf.
    let other = FakeRegistry::start().await;
    let out = doctor(&other.url(), &[], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let line = line_of(&text, "wharf");
    assert!(
        line.starts_with("FAIL") && line.contains("not as wharf"),
        "{text}"
    );
    assert_eq!(
        text.lines().last(),
        Some(line),
        "nothing is checked past it:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_the_certificate_chain_and_name() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = tlsgen::Ca::new("wharf doctor CA");
    let ca_path = ca.write_cert_dir(&dir.path().join("ca"));
    let files = tlsgen::TlsFiles::in_dir(dir.path());
    files.write(&ca.server_cert(&["wharf.test", "127.0.0.1"]));
    let config = dir.path().join("wharf.toml");
    WharfConfig::fake(&up.url(), &dir.path().join("data"))
        .tables(&format!(
            "[tls]\ncert = {}\nkey = {}\n",
            quote(&files.cert.to_string_lossy()),
            quote(&files.key.to_string_lossy())
        ))
        .write(&config);
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let port = server.addr.port();
    let ca_arg = ca_path.to_string_lossy().into_owned();

    // The right name, with the CA: ok, with its expiry date.
    let base = format!("https://127.0.0.1:{port}");
    let out = doctor(&base, &["--ca", &ca_arg], Some(&format!("{base}/go"))).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let tls = line_of(&text, "tls");
    assert!(
        tls.starts_with("ok ") && tls.contains("valid until"),
        "{text}"
    );

    // Without the CA: not trusted here, and what to do.
    let out = doctor(&base, &[], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let tls = line_of(&text, "tls");
    assert!(
        tls.starts_with("FAIL")
            && tls.contains("not issued by a CA trusted here")
            && tls.contains("--ca"),
        "{text}"
    );

    // A name the certificate does not carry: the mismatch, with the names it does carry.
    let out = doctor(
        &format!("https://localhost:{port}"),
        &["--ca", &ca_arg],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let tls = line_of(&text, "tls");
    assert!(
        tls.starts_with("FAIL")
            && tls.contains("name mismatch")
            && tls.contains("the certificate is for wharf.test, 127.0.0.1,")
            && tls.contains("not localhost"),
        "{text}"
    );
    assert_eq!(
        text.lines().last(),
        Some(tls),
        "no request over an unverified connection:\n{text}"
    );

    // Plain HTTP against the TLS port says to use https.
    let out = doctor(&format!("http://127.0.0.1:{port}"), &[], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    expect_stdout(&out, "use https://");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_asks_for_credentials_when_wharf_does_and_checks_them() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hash = wharf::access::hash_password("s3cret-pass").unwrap();
    let wharf = Wharf::serve(
        WharfConfig::fake(&up.url(), &dir.path().join("data")).tables(&format!(
            "[access]\nrequire_auth = true\n[[access.user]]\nname = \"ci\"\npassword_hash = {}\n",
            quote(&hash)
        )),
    )
    .await;
    let base = format!("http://{}", wharf.addr);
    let go = format!("{base}/go");

    let out = doctor(&base, &[], Some(&go)).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let auth = line_of(&stdout(&out), "auth").to_string();
    assert!(
        auth.starts_with("FAIL") && auth.contains("none were given") && auth.contains("--user"),
        "{auth}"
    );

    let good = dir.path().join("good");
    fs::write(&good, "s3cret-pass\n").unwrap();
    let good = good.to_string_lossy().into_owned();
    let out = doctor(
        &base,
        &["--user", "ci", "--password-file", &good],
        Some(&go),
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(line_of(&text, "auth").contains("accepts user ci"), "{text}");
    assert!(
        line_of(&text, "sumdb sum.golang.org").starts_with("ok "),
        "{text}"
    );

    let bad = dir.path().join("bad");
    fs::write(&bad, "wrong\n").unwrap();
    let out = doctor(
        &base,
        &["--user", "ci", "--password-file", &bad.to_string_lossy()],
        Some(&go),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        line_of(&text, "auth").starts_with("FAIL")
            && line_of(&text, "auth").contains("refuses user ci"),
        "{text}"
    );
    assert!(
        !format!("{text}{}", stderr(&out)).contains("s3cret"),
        "{text}"
    );
    wharf.stop().await;
}

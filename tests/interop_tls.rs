//! skopeo against wharf served over TLS with `[access] require_auth = true`: `skopeo login` with the
//! generated CA in a `--cert-dir`, then `skopeo copy` through wharf from a real origin registry
//! (Debian's `docker-registry`), digests compared with the image generated here.
//!
//! Every skopeo here runs with a private HOME, XDG dirs, policy and registries.conf, so no login
//! on the machine can make a refusal pass or a success fail. Without skopeo or docker-registry
//! on PATH the tests print why and pass, unless `WHARF_REQUIRE_INTEROP` is set.

mod support;
use support::tlsgen;
use support::*;

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::oci::{Image, ImageSpec, Layout, LayoutReader, gzip_layer};
use support::origin::{Origin, Skopeo, require_tools, skopeo_dir};
use tempfile::TempDir;
use tlsgen::{Ca, TlsFiles};

/// The upstream name wharf knows the origin by; it does not resolve.
const UPSTREAM: &str = "origin.test";
const REPO: &str = "test/app";
const TAG: &str = "v1";
const USER: &str = "puller";
const PASSWORD: &str = "pull-secret-42";

/// skopeo with everything it could read from the machine replaced by files in one temporary
/// directory; unlike `support::origin::Skopeo`, it hands back failures for the test to inspect.
struct IsolatedSkopeo {
    program: PathBuf,
    dir: TempDir,
}

impl IsolatedSkopeo {
    fn new(program: &Path) -> IsolatedSkopeo {
        let dir = skopeo_dir("wharf-skopeo-tls-");
        for sub in ["home", "run", "config", "tmp"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        IsolatedSkopeo {
            program: program.to_owned(),
            dir,
        }
    }

    /// A path for an auth file that does not exist yet.
    fn authfile(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let d = self.dir.path();
        let mut child = Command::new(&self.program)
            .arg("--debug")
            .arg("--policy")
            .arg(d.join("policy.json"))
            .arg("--registries-conf")
            .arg(d.join("registries.conf"))
            .args(args)
            .env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("DOCKER_CONFIG", d.join("home"))
            .env("TMPDIR", d.join("tmp"))
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", self.program.display()));
        let mut pipe = child.stdin.take().expect("skopeo stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write skopeo stdin");
        }
        drop(pipe);
        child.wait_with_output().expect("wait for skopeo")
    }

    fn succeeds(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let out = self.output(args, stdin);
        assert!(
            out.status.success(),
            "skopeo {} failed\n{}",
            args.join(" "),
            describe(&out)
        );
        out
    }

    fn fails(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let out = self.output(args, stdin);
        assert!(
            !out.status.success(),
            "skopeo {} succeeded but must fail\n{}",
            args.join(" "),
            describe(&out)
        );
        out
    }

    /// `skopeo login` to `host` trusting the CA in `cert_dir`, the password on stdin.
    fn login(&self, host: &str, cert_dir: &Path, authfile: &Path, password: &str) -> Output {
        self.output(
            &[
                "login",
                "--cert-dir",
                &cert_dir.to_string_lossy(),
                "--authfile",
                &authfile.to_string_lossy(),
                "-u",
                USER,
                "--password-stdin",
                host,
            ],
            Some(&format!("{password}\n")),
        )
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last lines of skopeo's stderr, lower-cased: the error, without the `--debug` chatter.
fn error_text(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(3)..]
        .join("\n")
        .to_lowercase()
}

/// The origin with `test/app:v1` pushed, wharf over TLS in front of it with one user, the CA in
/// a `--cert-dir`, and a skopeo that knows nothing else.
struct Fixture {
    origin: Origin,
    image: Image,
    skopeo: IsolatedSkopeo,
    wharf: TlsWharf,
    cert_dir: PathBuf,
    work: TempDir,
}

impl Fixture {
    async fn start(test: &str) -> Option<Fixture> {
        Self::start_with(test, true, "").await
    }

    async fn start_with(test: &str, require_auth: bool, access_rules: &str) -> Option<Fixture> {
        let tools = require_tools(test, &["skopeo", "docker-registry"])?;
        let skopeo_program = tools[0].clone();
        let (origin, image, work) = blocking(move || {
            let origin = Origin::start(&tools[1]);
            let work = work_dir("wharf-interop-tls-");
            let mut layout = Layout::create(&work.path().join("generated"));
            let image = layout.add_image(&ImageSpec::linux(
                "amd64",
                11,
                &[gzip_layer(4096), gzip_layer(300_000)],
            ));
            layout.tag(&image.manifest, TAG);
            Skopeo::new(&tools[0]).push_layout(layout.root(), TAG, &origin, REPO, false);
            (origin, image, work)
        })
        .await;

        let ca = Ca::new("wharf interop CA");
        let cert_dir = work.path().join("certs");
        ca.write_cert_dir(&cert_dir);
        let files = TlsFiles::in_dir(work.path());
        files.write(&ca.server_cert(&["localhost", "127.0.0.1"]));
        let wharf = TlsWharf::start(
            &files,
            &format!("http://{}", origin.host()),
            require_auth,
            access_rules,
        )
        .await;
        Some(Fixture {
            origin,
            image,
            skopeo: IsolatedSkopeo::new(&skopeo_program),
            wharf,
            cert_dir,
            work,
        })
    }

    /// `docker://127.0.0.1:<wharf>/origin.test/test/app:v1`
    fn source(&self) -> String {
        format!("docker://{}/{UPSTREAM}/{REPO}:{TAG}", self.wharf.addr)
    }

    fn out(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// wharf served with `serve_tls`, `require_auth = true` and user `puller`.
struct TlsWharf {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _data: TempDir,
}

impl Drop for TlsWharf {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TlsWharf {
    /// `access_rules` follow the `[access]` table, e.g. `[[access.rule]]` entries.
    async fn start(
        files: &TlsFiles,
        origin_url: &str,
        require_auth: bool,
        access_rules: &str,
    ) -> TlsWharf {
        let data = work_dir("wharf-data-");
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let hash = wharf::access::hash_password(PASSWORD).expect("hash the password");
        let text = format!(
            "data_dir = {data}\n\
             [registry]\ndefault_upstream = {up}\n\
             [[registry.upstream]]\nname = {up}\nurl = {url}\n\
             [egress]\nallow = [\"127.0.0.1\"]\n\
             [tls]\ncert = {cert}\nkey = {key}\n\
             [access]\nrequire_auth = {require_auth}\n\
             [[access.user]]\nname = {user}\npassword_hash = {hash}\n\
             {access_rules}",
            data = quote(&data.path().to_string_lossy()),
            up = quote(UPSTREAM),
            url = quote(origin_url),
            cert = quote(&files.cert.to_string_lossy()),
            key = quote(&files.key.to_string_lossy()),
            user = quote(USER),
            hash = quote(&hash),
        );
        let config = wharf::config::Config::from_toml_str(&text)
            .unwrap_or_else(|err| panic!("config rejected: {err}\n{text}"));
        let tls = wharf::server::TlsReloader::load(&files.cert, &files.key)
            .expect("load the generated certificate");
        let state = wharf::AppState::new(config).expect("AppState::new");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind wharf listener");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(wharf::serve_tls(listener, state, tls, async move {
            let _ = rx.await;
        }));
        TlsWharf {
            addr,
            shutdown: Some(tx),
            _data: data,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_logs_in_over_tls_with_the_right_password_only() {
    let Some(fx) = Fixture::start("skopeo_logs_in_over_tls_with_the_right_password_only").await
    else {
        return;
    };
    blocking(move || {
        let host = fx.wharf.addr.to_string();
        let authfile = fx.skopeo.authfile("auth.json");

        let out = fx.skopeo.login(&host, &fx.cert_dir, &authfile, "wrong");
        assert!(
            !out.status.success(),
            "login with a wrong password succeeded\n{}",
            describe(&out)
        );
        let saved = fs::read_to_string(&authfile).unwrap_or_default();
        assert!(!saved.contains(&host), "a failed login was saved: {saved}");

        let out = fx.skopeo.login(&host, &fx.cert_dir, &authfile, PASSWORD);
        assert!(out.status.success(), "login failed\n{}", describe(&out));
        let saved = fs::read_to_string(&authfile).expect("login wrote the auth file");
        assert!(
            saved.contains(&host),
            "the auth file has no entry for {host}: {saved}"
        );
        drop(fx);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_through_tls_and_auth_with_the_origins_digests() {
    let Some(fx) =
        Fixture::start("skopeo_copies_through_tls_and_auth_with_the_origins_digests").await
    else {
        return;
    };
    blocking(move || {
        let cert_dir = fx.cert_dir.to_string_lossy().into_owned();
        let source = fx.source();

        let refused = fx.out("refused");
        let out = fx.skopeo.fails(
            &[
                "copy",
                "--src-cert-dir",
                &cert_dir,
                &source,
                &format!("oci:{}:{TAG}", refused.display()),
            ],
            None,
        );
        let error = error_text(&out);
        assert!(
            error.contains("unauthorized") || error.contains("authentication required"),
            "the copy without credentials failed, but not for want of them:\n{}",
            describe(&out)
        );
        assert_eq!(
            fx.origin
                .requests("GET", &format!("/v2/{REPO}/manifests/{TAG}")),
            0,
            "an unauthenticated pull reached the origin; access log:\n{}",
            fx.origin.access_log()
        );

        let authfile = fx.skopeo.authfile("auth.json");
        let host = fx.wharf.addr.to_string();
        let login = fx.skopeo.login(&host, &fx.cert_dir, &authfile, PASSWORD);
        assert!(login.status.success(), "login failed\n{}", describe(&login));

        let out_dir = fx.out("copied");
        fx.skopeo.succeeds(
            &[
                "copy",
                "--src-cert-dir",
                &cert_dir,
                "--src-authfile",
                &authfile.to_string_lossy(),
                &source,
                &format!("oci:{}:{TAG}", out_dir.display()),
            ],
            None,
        );
        let reader = LayoutReader::open(&out_dir);
        assert_eq!(
            reader.resolve(TAG),
            fx.image.manifest,
            "the copied manifest is the origin's, same digest"
        );
        let expected: Vec<_> = fx.image.blobs().cloned().collect();
        assert_eq!(reader.manifest_blobs(&fx.image.manifest.digest), expected);
        for blob in &expected {
            let bytes = reader.blob(&blob.digest);
            assert_eq!(bytes.len() as u64, blob.size, "size of {}", blob.digest);
        }

        let inspect = fx.skopeo.succeeds(
            &[
                "inspect",
                "--cert-dir",
                &cert_dir,
                "--authfile",
                &authfile.to_string_lossy(),
                &source,
            ],
            None,
        );
        let value: serde_json::Value =
            serde_json::from_slice(&inspect.stdout).expect("inspect prints JSON");
        assert_eq!(value["Digest"], fx.image.manifest.digest.as_str());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_skopeo_pulls_a_public_repository_when_a_rule_protects_another() {
    // `/v2/` challenges as soon as any registry rule requires auth (so `login` works); a client
    // that has no login must still be able to pull what no rule protects.
    let rule = format!(
        "[[access.rule]]\nprotocol = \"registry\"\nprefix = \"{UPSTREAM}/private/\"\nrequire_auth = true\n"
    );
    let Some(fx) = Fixture::start_with(
        "anonymous_skopeo_pulls_a_public_repository_when_a_rule_protects_another",
        false,
        &rule,
    )
    .await
    else {
        return;
    };
    blocking(move || {
        let cert_dir = fx.cert_dir.to_string_lossy().into_owned();
        let out_dir = fx.out("anonymous");
        fx.skopeo.succeeds(
            &[
                "copy",
                "--src-cert-dir",
                &cert_dir,
                &fx.source(),
                &format!("oci:{}:{TAG}", out_dir.display()),
            ],
            None,
        );
        assert_eq!(LayoutReader::open(&out_dir).resolve(TAG), fx.image.manifest);
    })
    .await;
}

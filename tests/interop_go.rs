//! The real go command against wharf's Go module proxy, with a real checksum database behind it.
//!
//! Upstream is `tests/support/gosumdb`, a Go program built here from golang.org/x/mod: it zips
//! and hashes a generated module tree exactly as the ecosystem does, serves it as a GOPROXY, and
//! runs a signed checksum database (`sum.test`) over those hashes. wharf mirrors both; the go
//! command is pointed at wharf only (GOPROXY and, through `/sumdb/sum.test/supported`, GOSUMDB).
//!
//! The module tree covers a dependency chain (app -> lib -> util), an upper-case module path and
//! version (`!` escaping), a `/v2` major version, and pre-releases. Without `go` on PATH the tests
//! print why and pass, unless `WHARF_REQUIRE_INTEROP` is set (CI sets it).

mod support;
use support::gotools;
use support::*;

use std::collections::BTreeMap;
use std::path::Path;

use gotools::{Go, GoClient, ModuleSource, Upstream};
use serde::Deserialize;
use tempfile::TempDir;

const MODULES: &[ModuleSource] = &[
    (
        "example.com/util",
        "v1.0.0",
        &[
            ("go.mod", "module example.com/util\n\ngo 1.19\n"),
            (
                "util.go",
                "package util\n\nfunc Name() string { return \"util v1.0.0\" }\n",
            ),
        ],
    ),
    (
        "example.com/util",
        "v1.1.0-rc.1",
        &[
            ("go.mod", "module example.com/util\n\ngo 1.19\n"),
            (
                "util.go",
                "package util\n\nfunc Name() string { return \"util v1.1.0-rc.1\" }\n",
            ),
        ],
    ),
    (
        "example.com/lib",
        "v1.0.0",
        &[
            (
                "go.mod",
                "module example.com/lib\n\ngo 1.19\n\nrequire example.com/util v1.0.0\n",
            ),
            (
                "lib.go",
                "package lib\n\nimport \"example.com/util\"\n\n\
                 func Name() string { return \"lib v1 + \" + util.Name() }\n",
            ),
        ],
    ),
    (
        "example.com/lib/v2",
        "v2.0.0",
        &[
            (
                "go.mod",
                "module example.com/lib/v2\n\ngo 1.19\n\nrequire example.com/Upper/thing v1.0.0\n",
            ),
            (
                "lib.go",
                "package lib\n\nimport \"example.com/Upper/thing\"\n\n\
                 func Name() string { return \"lib v2 + \" + thing.Name() }\n",
            ),
        ],
    ),
    (
        "example.com/Upper/thing",
        "v1.0.0",
        &[
            ("go.mod", "module example.com/Upper/thing\n\ngo 1.19\n"),
            (
                "thing.go",
                "package thing\n\nfunc Name() string { return \"thing v1.0.0\" }\n",
            ),
        ],
    ),
    (
        "example.com/Upper/thing",
        "v1.1.0-Pre.1",
        &[
            ("go.mod", "module example.com/Upper/thing\n\ngo 1.19\n"),
            (
                "thing.go",
                "package thing\n\nfunc Name() string { return \"thing v1.1.0-Pre.1\" }\n",
            ),
        ],
    ),
    (
        "example.com/app",
        "v1.0.0",
        &[
            (
                "go.mod",
                "module example.com/app\n\ngo 1.19\n\nrequire example.com/lib v1.0.0\n",
            ),
            (
                "app.go",
                "package app\n\nimport \"example.com/lib\"\n\n\
                 func Name() string { return \"app -> \" + lib.Name() }\n",
            ),
        ],
    ),
];

/// The module being built: not published, it requires the pre-releases directly so minimal
/// version selection picks them over what lib and lib/v2 ask for. No go.sum: `-mod=mod` writes
/// it, checking every line against the checksum database.
const MAIN_GO_MOD: &str = "module example.com/main

go 1.19

require (
\texample.com/app v1.0.0
\texample.com/lib/v2 v2.0.0
\texample.com/Upper/thing v1.1.0-Pre.1
\texample.com/util v1.1.0-rc.1
)
";
const MAIN_GO: &str = "package main

import (
\t\"fmt\"

\t\"example.com/app\"
\tlibv2 \"example.com/lib/v2\"
)

func main() { fmt.Println(app.Name() + \" | \" + libv2.Name()) }
";
const MAIN_OUTPUT: &str = "app -> lib v1 + util v1.1.0-rc.1 | lib v2 + thing v1.1.0-Pre.1\n";

/// Writes every `MODULES` entry as `<src>/<path>@<version>/`.
fn write_module_sources(src: &Path) {
    for (path, version, files) in MODULES {
        let dir = src.join(format!("{path}@{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in *files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}

fn all_versions() -> Vec<String> {
    MODULES.iter().map(|(p, v, _)| format!("{p}@{v}")).collect()
}

fn wharf_config(data_dir: &Path, up: &Upstream) -> WharfConfig {
    WharfConfig::new(data_dir)
        .go(&up.url("/mod"))
        .sumdb("sum.test", &up.vkey, &up.url("/sumdb"))
        .egress("connect_timeout = \"2s\"\nread_timeout = \"10s\"")
}

/// go, the built helper, the generated module sources, an upstream, and wharf in front of it.
struct Setup {
    go: Go,
    up: Upstream,
    wharf: support::Wharf,
    goproxy: String,
    work: TempDir,
}

impl Setup {
    /// `None` when the test is skipped (no go on PATH).
    async fn start(test: &str, tamper: &[&str]) -> Option<Setup> {
        Setup::start_with(test, tamper, false).await
    }

    /// With `socket`, wharf's Go source is the helper's module tree on a Unix socket.
    async fn start_with(test: &str, tamper: &[&str], socket: bool) -> Option<Setup> {
        let go = gotools::find_go(test)?;
        let work = work_dir("wharf-interop-go-");
        let helper = go.build_helper(&work.path().join("helper")).await;
        let src = work.path().join("modules");
        write_module_sources(&src);
        let sock = work.path().join("goproxy.sock");
        let up = Upstream::start_with(&helper, &src, tamper, socket.then_some(&*sock)).await;
        let data = work.path().join("wharf-data");
        std::fs::create_dir_all(&data).unwrap();
        let mut config = wharf_config(&data, &up);
        if socket {
            let url = format!("unix://{}", sock.display());
            let entry = format!("unix:{}", sock.display());
            config = config
                .go(&url)
                .sumdb("sum.test", &up.vkey, &up.url("/sumdb"))
                .allow(&["127.0.0.1", &entry]);
        }
        let wharf = Wharf::serve(config).await;
        let goproxy = wharf.url("/go");
        eprintln!("{test}: {}; upstream {}", go.version, up.addr);
        Some(Setup {
            go,
            up,
            wharf,
            goproxy,
            work,
        })
    }

    /// A go command with a fresh module cache, reaching modules only through wharf.
    fn client(&self) -> GoClient {
        GoClient::new(&self.go, &self.goproxy, &self.up.vkey)
    }
}

/// One object of `go mod download -json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Downloaded {
    path: String,
    version: String,
    error: Option<String>,
    zip: Option<String>,
    go_mod: Option<String>,
    sum: Option<String>,
    go_mod_sum: Option<String>,
}

fn parse_downloads(stdout: &str) -> BTreeMap<String, Downloaded> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Downloaded>()
        .map(|d| {
            let d = d.unwrap_or_else(|e| panic!("go mod download -json printed bad JSON: {e}"));
            (format!("{}@{}", d.path, d.version), d)
        })
        .collect()
}

/// `go mod download -json` of every published version, from outside any module (no go.sum, so
/// every hash comes from the checksum database through wharf): each must match the helper's.
async fn download_all_and_check(s: &Setup, client: &GoClient) {
    let versions = all_versions();
    let mut args = vec!["mod", "download", "-json"];
    args.extend(versions.iter().map(String::as_str));
    let run = client.run(&client.outside_module(), &args).await;
    let got = parse_downloads(&run.stdout);
    let errors: Vec<&str> = got.values().filter_map(|d| d.error.as_deref()).collect();
    assert!(
        run.success && errors.is_empty(),
        "`{}` failed for {} module(s):\n{}\n--- stderr\n{}\n--- upstream requests\n{}",
        run.command,
        errors.len(),
        errors.join("\n"),
        run.stderr,
        s.up.requests()
    );
    for key in &versions {
        let d = got
            .get(key)
            .unwrap_or_else(|| panic!("no JSON for {key} in\n{}", run.stdout));
        assert_eq!(d.error, None, "{key}");
        let published = s.up.module(key);
        published.assert_sums(d.sum.as_deref(), d.go_mod_sum.as_deref(), key);
        for file in [&d.zip, &d.go_mod] {
            let file = file
                .as_deref()
                .unwrap_or_else(|| panic!("{key}: no file path in {d:?}"));
            assert!(Path::new(file).is_file(), "{key}: {file} missing");
        }
    }
    // The hashes were checked against sum.test, and the go command could only read it through
    // wharf: `sum.test` has no URL of its own and does not resolve.
    let lookup = client
        .modcache()
        .join("cache/download/sumdb/sum.test/lookup/example.com/!upper/thing@v1.1.0-!pre.1");
    assert!(
        lookup.is_file(),
        "the go command did not consult the checksum database ({} missing)",
        lookup.display()
    );
}

/// Writes the main module into `dir`, builds it, runs it, and returns what it printed.
async fn build_main(client: &GoClient, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("go.mod"), MAIN_GO_MOD).unwrap();
    std::fs::write(dir.join("main.go"), MAIN_GO).unwrap();
    let bin = dir.join("bin");
    let bin_arg = format!("{}/", bin.display());
    client
        .run(dir, &["build", "-o", &bin_arg, "./..."])
        .await
        .ok();
    let out = tokio::process::Command::new(bin.join("main"))
        .output()
        .await
        .expect("run the built program");
    assert!(out.status.success(), "the built program failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_command_downloads_builds_and_verifies_through_wharf_and_again_without_upstream() {
    let Some(mut s) = Setup::start("go_interop", &[]).await else {
        return;
    };

    // 1. Every published version, hashes checked against the checksum database.
    let first = s.client();
    download_all_and_check(&s, &first).await;

    // 2. Version lists, pre-releases included, escaped paths and versions alike.
    for (module, expected) in [
        ("example.com/util", "example.com/util v1.0.0 v1.1.0-rc.1"),
        (
            "example.com/Upper/thing",
            "example.com/Upper/thing v1.0.0 v1.1.0-Pre.1",
        ),
        ("example.com/lib/v2", "example.com/lib/v2 v2.0.0"),
    ] {
        let run = first
            .run(
                &first.outside_module(),
                &["list", "-m", "-versions", module],
            )
            .await
            .ok();
        assert_eq!(run.stdout.trim(), expected, "{}", run.describe());
    }

    // 3. A real build: the go command resolves the graph, writes go.sum from the checksum
    //    database, compiles every module, and the program shows which versions were selected.
    let builder = s.client();
    let main_dir = s.work.path().join("main");
    assert_eq!(build_main(&builder, &main_dir).await, MAIN_OUTPUT);
    let go_sum = std::fs::read_to_string(main_dir.join("go.sum")).unwrap();
    let mut checked = 0;
    for line in go_sum.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [module, version, hash] = fields[..] else {
            panic!("odd go.sum line {line:?}");
        };
        let (version, want) = match version.strip_suffix("/go.mod") {
            Some(v) => (v, &s.up.module(&format!("{module}@{v}")).go_mod),
            None => (version, &s.up.module(&format!("{module}@{version}")).zip),
        };
        assert_eq!(hash, want, "go.sum line for {module}@{version}");
        checked += 1;
    }
    assert!(checked >= 10, "go.sum has only {checked} lines:\n{go_sum}");
    let verify = builder.run(&main_dir, &["mod", "verify"]).await.ok();
    assert!(
        verify.stdout.contains("all modules verified"),
        "{}",
        verify.describe()
    );

    // 4. Upstream gone: a fresh client still gets everything (module files and checksum
    //    database reads) from wharf's cache, and the build still works.
    s.up.kill().await;
    let offline = s.client();
    download_all_and_check(&s, &offline).await;
    let run = offline
        .run(
            &offline.outside_module(),
            &["list", "-m", "-versions", "example.com/util"],
        )
        .await
        .ok();
    assert_eq!(run.stdout.trim(), "example.com/util v1.0.0 v1.1.0-rc.1");
    let offline_main = s.work.path().join("main-offline");
    std::fs::create_dir_all(&offline_main).unwrap();
    std::fs::copy(main_dir.join("go.sum"), offline_main.join("go.sum")).unwrap();
    assert_eq!(build_main(&offline, &offline_main).await, MAIN_OUTPUT);
    assert_eq!(
        std::fs::read_to_string(offline_main.join("go.sum")).unwrap(),
        go_sum,
        "go.sum changed when built from wharf's cache alone"
    );

    s.wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_that_does_not_match_the_checksum_database_is_refused_and_never_stored() {
    const TAMPERED: &str = "example.com/lib@v1.0.0";
    let Some(s) = Setup::start("go_interop_tamper", &[TAMPERED]).await else {
        return;
    };
    let published = s.up.module(TAMPERED).clone();
    assert!(published.tampered);

    let client = s.client();
    let run = client
        .run(
            &client.outside_module(),
            &["mod", "download", "-json", TAMPERED],
        )
        .await;
    assert!(!run.success, "{}", run.describe());
    let got = parse_downloads(&run.stdout);
    let error = got
        .get(TAMPERED)
        .and_then(|d| d.error.clone())
        .unwrap_or_else(|| panic!("no error for {TAMPERED}: {}", run.describe()));
    // wharf refuses the bytes itself, with a status and its reason, which the go command
    // prints; had it served the tampered zip, the go command's own check would have caught it
    // ("SECURITY ERROR").
    let reason = format!(
        "server response: wharf: {TAMPERED}.zip: checksum mismatch: sum.test says {}, \
         upstream served h1:",
        published.zip
    );
    assert!(
        !error.contains("SECURITY ERROR") && error.contains("502 Bad Gateway"),
        "wharf served the tampered zip; the go command caught it:\n{error}"
    );
    assert!(error.contains(&reason), "{reason:?} not in:\n{error}");
    // Without -json the go command prints the same reason on stderr.
    let client = s.client();
    let run = client
        .run(&client.outside_module(), &["mod", "download", TAMPERED])
        .await;
    assert!(
        !run.success && run.stderr.contains(&reason),
        "{reason:?} not on stderr: {}",
        run.describe()
    );

    // Asked directly, wharf answers 502 with that one line.
    let http = support::client();
    let zip_url = s.wharf.url("/go/example.com/lib/@v/v1.0.0.zip");
    let resp = http.get(&zip_url).sent().await;
    assert_eq!(resp.status(), 502);
    let text = support::read_text(resp).await;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("checksum mismatch: sum.test says"), "{text}");

    // The genuine go.mod of the same version passed verification and is cached.
    let resp = http
        .get(s.wharf.url("/go/example.com/lib/@v/v1.0.0.mod"))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "HIT");

    // Nothing in wharf's data directory holds the tampered zip.
    let stored: Vec<_> = support::files_under(&s.wharf.data_dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|bytes| {
                support::sha256(&bytes) == format!("sha256:{}", published.zip_sha256)
            })
        })
        .collect();
    assert!(
        stored.is_empty(),
        "the tampered zip is stored in wharf's data dir: {stored:?}"
    );
}

/// The downloads of `go mod download -json <modules>` run by `client` outside any module:
/// `path@version` -> error, if any.
async fn download_errors(client: &GoClient, modules: &[&str]) -> BTreeMap<String, Option<String>> {
    let mut args = vec!["mod", "download", "-json"];
    args.extend(modules);
    let run = client.run(&client.outside_module(), &args).await;
    let got = parse_downloads(&run.stdout);
    modules
        .iter()
        .map(|m| {
            let d = got
                .get(*m)
                .unwrap_or_else(|| panic!("no JSON for {m}: {}", run.describe()));
            (m.to_string(), d.error.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_command_works_with_the_environment_client_config_prints() {
    const PRIVATE: &str = "example.com/util";
    let Some(go) = gotools::find_go("go_client_config") else {
        return;
    };
    let work = work_dir("wharf-interop-go-client-config-");
    let helper = go.build_helper(&work.path().join("helper")).await;
    let src = work.path().join("modules");
    write_module_sources(&src);
    let up = Upstream::start(&helper, &src, &[]).await;
    let data = work.path().join("wharf-data");
    // `example.com/util` is private: wharf fetches it from its own source and refuses checksum
    // database lookups for it.
    let config = wharf_config(&data, &up).tables(&format!(
        "[[go.private]]\npattern = {}\nurl = {}\n",
        quote(PRIVATE),
        quote(&up.url("/mod"))
    ));
    let wharf = Wharf::serve(config.clone()).await;
    let file = config.write(&work.path().join("wharf.toml"));
    let out_dir = work.path().join("client-config");
    let run = wharf_command_async()
        .args(["client-config", "--config"])
        .arg(&file)
        .arg("--url")
        .arg(wharf.url(""))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .await
        .expect("run wharf client-config");
    assert!(run.status.success(), "{}", describe(&run));
    let env_file = out_dir.join("go.env");
    let text = std::fs::read_to_string(&env_file).unwrap();
    let vars: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .collect();
    let goproxy = wharf.url("/go");
    assert_eq!(
        vars,
        [
            ("GOPROXY", goproxy.as_str()),
            ("GOSUMDB", up.vkey.as_str()),
            ("GONOSUMDB", PRIVATE),
        ],
        "{text}"
    );

    // The go command reads the file as its own env file.
    let client = GoClient::with_vars(&go, &vars);
    let names = ["GOPROXY", "GOSUMDB", "GONOSUMDB", "GONOPROXY"];
    let env = client.env_from_file(&env_file, &names).await.ok();
    let lines: Vec<&str> = env.stdout.lines().collect();
    assert_eq!(
        lines,
        [goproxy.as_str(), up.vkey.as_str(), PRIVATE, ""],
        "{}",
        env.describe()
    );

    // With those settings a public module (checked against sum.test through wharf) and the
    // private one (never looked up there) both come through wharf.
    let public = "example.com/app@v1.0.0";
    let private = "example.com/util@v1.0.0";
    let errors = download_errors(&client, &[public, private]).await;
    assert_eq!(errors[public], None, "{errors:?}");
    assert_eq!(errors[private], None, "{errors:?}");
    let lookups = client
        .modcache()
        .join("cache/download/sumdb/sum.test/lookup/example.com");
    assert!(
        lookups.join("app@v1.0.0").is_file(),
        "public module not checked"
    );
    assert!(
        !lookups.join("util@v1.0.0").exists(),
        "the go command asked the checksum database about the private module"
    );

    // Without GONOSUMDB the go command asks about the private module, and wharf refuses.
    let without = GoClient::with_vars(&go, &vars[..2]);
    let errors = download_errors(&without, &[private]).await;
    assert!(
        errors[private]
            .as_deref()
            .is_some_and(|e| e.contains("403 Forbidden") && e.contains("Set GONOSUMDB")),
        "{errors:?}"
    );
    // GOPRIVATE alone also means GONOPROXY: the go command bypasses wharf (and, with VCS access
    // off, gets nothing). With GONOPROXY=none it goes through wharf again.
    let gopriv = GoClient::with_vars(&go, &[vars[0], vars[1], ("GOPRIVATE", PRIVATE)]);
    let errors = download_errors(&gopriv, &[private]).await;
    assert!(
        errors[private]
            .as_deref()
            .is_some_and(|e| e.contains("go-get=1")),
        "GOPRIVATE alone did not go direct: {errors:?}"
    );
    let gopriv_none = GoClient::with_vars(
        &go,
        &[
            vars[0],
            vars[1],
            ("GOPRIVATE", PRIVATE),
            ("GONOPROXY", "none"),
        ],
    );
    let errors = download_errors(&gopriv_none, &[private]).await;
    assert_eq!(errors[private], None, "{errors:?}");
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_source_on_a_unix_socket_is_downloaded_and_verified_through_wharf() {
    let Some(s) = Setup::start_with("go_unix_source", &[], true).await else {
        return;
    };
    // Module files come only over the socket (the helper's TCP port serves them under /mod,
    // which wharf is not told about); hashes are checked against sum.test over TCP.
    download_all_and_check(&s, &s.client()).await;
    let requests = s.up.requests();
    assert!(
        requests.contains("/example.com/util/@v/v1.0.0.zip") && !requests.contains("/mod/"),
        "the zips came over the socket:\n{requests}"
    );
    let health = get(s.wharf.url("/healthz")).await.body_text().await;
    assert!(health.contains("goproxy.sock"), "{health}");

    // The same socket without its own egress entry: refused, the helper never asked.
    let data = s.work.path().join("refused-data");
    std::fs::create_dir_all(&data).unwrap();
    let sock = s.work.path().join("goproxy.sock");
    let refused = Wharf::serve(
        WharfConfig::new(&data)
            .go(&format!("unix://{}", sock.display()))
            .allow(&["127.0.0.1", "localhost"]),
    )
    .await;
    let before = s.up.requests().lines().count();
    let r = get(refused.url("/go/example.com/lib/@v/list")).await;
    assert_eq!(r.status(), 502);
    let body = r.body_text().await;
    assert!(body.contains("egress.allow"), "{body}");
    assert_eq!(
        s.up.requests().lines().count(),
        before,
        "no request reached the socket"
    );
}

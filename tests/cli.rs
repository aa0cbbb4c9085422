//! The `wharf` binary as operators run it: `check-config`, `serve` stopped by SIGTERM (drains)
//! and by SIGKILL (leaves nothing half-written), `fsck` finding and repairing damage, and
//! `gc` / `stats` reaching a running server with the admin secret (and its pinned certificate).
//! Each test drives the real executable against a fake upstream in this process.

mod support;
use support::oci;
use support::tlsgen;
use support::*;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run wharf")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fsck(config: &Path, repair: bool) -> Output {
    let mut cmd = wharf_command();
    cmd.arg("fsck").arg("--config").arg(config);
    if repair {
        cmd.arg("--repair");
    }
    run(&mut cmd)
}

/// Writes the standard test config (upstream `fake.test` at `upstream_url`) into `dir`.
fn write_config(dir: &Path, upstream_url: &str, data_dir: &Path) -> PathBuf {
    WharfConfig::fake(upstream_url, data_dir).write(&dir.join("wharf.toml"))
}

/// The committed file of `digest` under `data_dir`.
fn blob_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Polls (at most 10 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn check_config_reports_the_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flag_data = dir.path().join("from-flag");
    let config = dir.path().join("wharf.toml");
    fs::write(
        &config,
        format!(
            r#"listen = "0.0.0.0:5999"
data_dir = "{}"
[registry]
default_upstream = "ghcr.io"
tag_ttl = "90s"
max_manifest_size = "8MiB"
[[registry.upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
username = "mirrorbot"
password_env = "WHARF_TEST_GHCR_TOKEN"
[egress]
allow = ["ghcr.io", "pkg-containers.githubusercontent.com"]
connect_timeout = "3s"
read_timeout = "2m"
"#,
            data.display()
        ),
    )
    .unwrap();

    let out = run(wharf_command()
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .env("WHARF_TEST_GHCR_TOKEN", "hunter2-do-not-print"));
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = text(&out.stdout);
    for expected in [
        "config OK",
        "listen                     = 0.0.0.0:5999",
        &format!("data_dir                   = {}", data.display()),
        "registry.tag_ttl           = 1m 30s",
        "registry.max_manifest_size = 8MiB",
        "registry.default_upstream  = ghcr.io",
        "registry.upstream ghcr.io",
        "https://ghcr.io (user mirrorbot, password from $WHARF_TEST_GHCR_TOKEN)",
        "egress.allow               = ghcr.io, pkg-containers.githubusercontent.com",
        "connect 3s, read 2m",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?}:\n{}",
            describe(&out)
        );
    }
    assert!(
        !stdout.contains("docker.io"),
        "an explicit upstream list replaces the default: {stdout}"
    );
    assert!(!format!("{stdout}{}", text(&out.stderr)).contains("hunter2"));

    // Flags win over the file.
    let out = run(wharf_command()
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&flag_data));
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(
        &out,
        &format!("data_dir                   = {}", flag_data.display()),
    );
    assert!(
        !data.exists() && !flag_data.exists(),
        "check-config must not create the data directory"
    );
}

#[test]
fn check_config_rejects_unknown_keys_with_the_key_name() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("listn = \"0.0.0.0:5000\"\n", "listn"),
        ("[egress]\nconect_timeout = \"5s\"\n", "conect_timeout"),
        (
            "[[registry.upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\npassword = \"x\"\n",
            "password",
        ),
    ] {
        let config = dir.path().join("wharf.toml");
        fs::write(&config, toml).unwrap();
        let out = run(wharf_command()
            .arg("check-config")
            .arg("--config")
            .arg(&config));
        assert!(
            !out.status.success(),
            "accepted {toml:?}: {}",
            describe(&out)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("unknown field `{key}`")),
            "stderr does not name {key:?}: {}",
            describe(&out)
        );
        assert!(
            stderr.contains(&config.display().to_string()),
            "stderr does not name the file: {}",
            describe(&out)
        );
        assert!(
            !text(&out.stdout).contains("config OK"),
            "{}",
            describe(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_in_flight_download_and_exits_zero() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(2 << 20, 7);
    let digest = up.put_blob(&blob);
    // 32 chunks of 64 KiB, 50 ms apart: about 1.6 s in flight.
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(50)));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &up.url(), &data);
    let mut server = Server::start(&config, &dir.path().join("serve.log")).await;

    let resp = get(server.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(resp.status(), 200, "{}", server.logs());
    let download = tokio::spawn(async move { resp.bytes().await });

    // The response has started; now ask the server to stop.
    server.signal("TERM");
    let body = tokio::time::timeout(Duration::from_secs(15), download)
        .await
        .expect("the download finishes")
        .unwrap()
        .unwrap_or_else(|e| panic!("download cut by SIGTERM: {e}\n{}", server.logs()));
    assert_eq!(body.len(), blob.len());
    assert_eq!(sha256(&body), digest);

    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "exit after draining: {status}\n{}",
        server.logs()
    );
    assert!(
        blob_path(&data, &digest).is_file(),
        "the drained download was committed"
    );
    let out = fsck(&config, false);
    assert!(out.status.success(), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_fill_leaves_nothing_half_written_visible() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(2 << 20, 9);
    let digest = up.put_blob(&blob);
    up.set_blob_mode(BlobMode::Slow(Duration::from_millis(50)));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &up.url(), &data);
    let path = format!("/v2/team/app/blobs/{digest}");

    let mut server = Server::start(&config, &dir.path().join("serve-1.log")).await;
    let mut resp = get(server.url(&path)).await;
    assert_eq!(resp.status(), 200, "{}", server.logs());
    let first = resp.chunk().await.unwrap().expect("some bytes arrive");
    assert!(first.len() < blob.len(), "the fill is still running");
    assert!(
        !fill_files(&data).is_empty(),
        "a fill in progress lives in spare/ or tmp/"
    );

    server.signal("KILL");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "SIGKILL is not a clean exit: {status}");
    assert!(
        resp.bytes().await.is_err(),
        "the client must see the download fail, never a clean end"
    );
    assert_eq!(
        files_under(&data.join("blobs")),
        Vec::<PathBuf>::new(),
        "nothing may be committed by a killed fill"
    );
    assert!(
        !fill_files(&data).is_empty(),
        "the partial fill is left behind for the next start to sweep"
    );

    // A new process on the same data directory sweeps tmp/ and fills the blob again.
    up.set_blob_mode(BlobMode::Normal);
    let server = Server::start(&config, &dir.path().join("serve-2.log")).await;
    assert_eq!(
        fill_files(&data),
        Vec::<PathBuf>::new(),
        "tmp/ and spare/ are swept on start"
    );
    let resp = get(server.url(&path)).await;
    assert_eq!(resp.status(), 200, "{}", server.logs());
    let body = read_body(resp).await;
    assert_eq!(sha256(&body), digest);
    assert_eq!(
        up.count("GET", "/blobs/"),
        2,
        "fetched again after the crash"
    );
    // Clients get their last bytes before the fsync and rename: the commit follows shortly.
    let committed = blob_path(&data, &digest);
    eventually("committed on the second try", || {
        fs::read(&committed).ok().as_deref() == Some(&blob[..])
    })
    .await;
    server.stop().await;

    let out = fsck(&config, false);
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, "clean");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let up = FakeRegistry::start().await;
    let digest = up.put_blob(&bytes_of(10_000, 17));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url(), &dir.path().join("data"));
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let resp = get(server.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(resp.status(), 200, "{}", server.logs());
    read_body(resp).await;
    let logs = server.logs();
    server.stop().await;
    assert!(logs.contains("listening"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in a log file:\n{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_beside_a_running_server_says_so_in_one_line() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &up.url(), &data);
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let out = fsck(&config, false);
    server.stop().await;
    assert!(!out.status.success(), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("is in use by another wharf process")
            && err.contains(&*data.to_string_lossy()),
        "{err}"
    );
    assert!(
        !err.contains("sled") && !err.contains("acquire lock"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_explicit_data_dir_is_where_import_goes_even_with_a_server_running() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url(), &dir.path().join("data"));
    // The server listens at the config's address, keeping its own directory.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("listen = \"{addr}\"\n{text}")).unwrap();
    let server = Server::start_on(&config, &dir.path().join("serve.log"), addr).await;

    let mut layout = oci::Layout::create(&dir.path().join("layout"));
    let image = layout.add_image(&oci::ImageSpec::linux(
        "amd64",
        3,
        &[oci::LayerSpec {
            size: 5_000,
            compression: oci::Compression::Gzip,
        }],
    ));
    layout.tag(&image.manifest, "v3");
    let other = dir.path().join("other");
    let cfg = config.to_str().unwrap();
    let args = ["--config", cfg, "--data-dir", other.to_str().unwrap()];
    let root = layout.root().to_str().unwrap().to_string();
    let mut import = vec!["import"];
    import.extend(args);
    import.extend(["--name", "fake.test/gen/app", &root]);
    let out = run_wharf(&import).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        server.logs()
    );

    let served = get(server.url("/v2/gen/app/manifests/v3")).await;
    assert_ne!(
        served.status(),
        200,
        "the import went to the running server's directory"
    );
    server.stop().await;
    let storage = wharf_storage::Storage::open(&other).unwrap();
    let tag = storage.index.get_tag("fake.test", "gen/app", "v3").unwrap();
    assert_eq!(
        tag.map(|t| t.digest.to_string()),
        Some(image.manifest.digest.clone())
    );

    let both = run_wharf(&[
        "import",
        "--config",
        cfg,
        "--data-dir",
        "x",
        "--server",
        "http://127.0.0.1:9",
        &root,
    ])
    .await;
    assert!(!both.status.success(), "{}", describe(&both));
    expect_stderr(&both, "contradict");
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_reports_and_repairs_a_corrupted_store() {
    let up = FakeRegistry::start().await;
    let layer = bytes_of(300_000, 3);
    let (manifest_digest, manifest) = up.put_image("team/app", "v1", std::slice::from_ref(&layer));
    let layer_digest = sha256(&layer);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &up.url(), &data);

    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let c = client();
    let r = c
        .get(server.url("/v2/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .sent()
        .await;
    assert_eq!(r.status(), 200, "{}", server.logs());
    assert_eq!(read_body(r).await, manifest);
    let r = get(server.url(&format!("/v2/team/app/blobs/{layer_digest}"))).await;
    assert_eq!(r.status(), 200, "{}", server.logs());
    assert_eq!(read_body(r).await, layer);
    let layer_file = blob_path(&data, &layer_digest);
    eventually("the layer is committed", || layer_file.is_file()).await;
    assert!(blob_path(&data, &manifest_digest).is_file());
    server.stop().await;

    let out = fsck(&config, false);
    assert!(
        out.status.success(),
        "a fresh cache is clean: {}",
        describe(&out)
    );

    // Flip one byte of the layer (committed blobs are read-only).
    fs::set_permissions(&layer_file, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&layer_file).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&layer_file, &bytes).unwrap();

    let out = fsck(&config, false);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report = text(&out.stdout);
    assert!(report.contains(&layer_digest), "{}", describe(&out));
    assert!(report.contains("corrupt"), "{}", describe(&out));
    assert!(layer_file.exists(), "fsck without --repair changes nothing");

    let out = fsck(&config, true);
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, &layer_digest);
    assert!(!layer_file.exists(), "the corrupt blob is deleted");

    let out = fsck(&config, false);
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, "clean");
    assert!(
        blob_path(&data, &manifest_digest).is_file(),
        "intact blobs are kept"
    );

    // The repaired cache serves the layer again, fetched afresh.
    let server = Server::start(&config, &dir.path().join("serve-2.log")).await;
    let r = get(server.url(&format!("/v2/team/app/blobs/{layer_digest}"))).await;
    assert_eq!(r.status(), 200, "{}", server.logs());
    assert_eq!(read_body(r).await, layer);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_of_a_store_holding_go_modules_and_checksum_data_is_clean() {
    let go = support::GoFake::start().await;
    let go_mod = "module example.com/m\n";
    let zip = support::module_zip("example.com/m", "v1.0.0", &[("go.mod", go_mod)]);
    go.put_module("example.com/m", "v1.0.0", go_mod, zip);
    go.put(
        "lookup/example.com/m@v1.0.0",
        "7\nexample.com/m v1.0.0 h1:x=\n\nnote\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("wharf.toml");
    let toml = format!(
        r#"data_dir = "{}"
[go]
upstreams = ["{url}"]
verify = false
[[go.sumdb]]
name = "sum.golang.org"
key = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
url = "{url}"
[egress]
allow = ["127.0.0.1"]
connect_timeout = "2s"
read_timeout = "5s"
"#,
        data.display(),
        url = go.url()
    );
    fs::write(&config, toml).unwrap();

    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    for path in [
        "/go/example.com/m/@v/v1.0.0.info",
        "/go/example.com/m/@v/v1.0.0.mod",
        "/go/example.com/m/@v/v1.0.0.zip",
        "/go/sumdb/sum.golang.org/lookup/example.com/m@v1.0.0",
    ] {
        let r = get(server.url(path)).await;
        assert_eq!(r.status(), 200, "{path}: {}", server.logs());
        read_body(r).await;
    }
    server.stop().await;

    let out = fsck(&config, false);
    assert!(out.status.success(), "{}", describe(&out));
    let report = text(&out.stdout);
    assert!(
        report.contains("blobs of Go files and checksum-database records: ok"),
        "{}",
        describe(&out)
    );
    assert!(!report.contains("orphan"), "{}", describe(&out));
    assert!(report.ends_with("clean\n"), "{}", describe(&out));
}

/// A config for commands run next to `server`: its data directory and listen address.
fn cli_config(dir: &Path, name: &str, server: &Server, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        format!(
            "listen = \"{}\"\ndata_dir = \"{}\"\n{extra}",
            server.addr,
            data.display()
        ),
    )
    .unwrap();
    path
}

fn admin_secret_of(data: &Path) -> String {
    fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim_end()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_and_stats_reach_a_running_server_with_the_admin_secret_only_it_can_read() {
    let up = FakeRegistry::start().await;
    let (digest, _) = up.put_image("team/app", "v1", &[bytes_of(20_000, 5)]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &up.url(), &data);
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let r = client()
        .get(server.url("/v2/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .sent()
        .await;
    assert_eq!(r.status(), 200, "{}", server.logs());

    let token = data.join("admin.token");
    let mode = fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the admin secret is readable by others"
    );
    let cli = cli_config(dir.path(), "cli.toml", &server, &data, "");
    let out = run(wharf_command().arg("stats").arg("--config").arg(&cli));
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, "repository  fake.test/team/app");
    let out = run(wharf_command()
        .args(["gc", "--dry-run", "--target", "0", "--config"])
        .arg(&cli));
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, &digest);

    // Pointed at another data directory, the command finds no secret and says so in one line.
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let wrong = cli_config(dir.path(), "wrong.toml", &server, &other, "");
    let out = run(wharf_command().arg("stats").arg("--config").arg(&wrong));
    assert!(!out.status.success(), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("no admin secret") && err.trim_end().lines().count() == 1,
        "{}",
        describe(&out)
    );

    // A user who cannot read the data directory's secret is told what to do.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&cli, fs::Permissions::from_mode(0o644)).unwrap();
    if can_run_as_nobody(&cli) {
        let out = run(as_nobody()
            .arg(env!("CARGO_BIN_EXE_wharf"))
            .arg("stats")
            .arg("--config")
            .arg(&cli)
            .env_remove("WHARF_DATA_DIR")
            .stdin(Stdio::null()));
        assert!(!out.status.success(), "{}", describe(&out));
        let err = text(&out.stderr);
        assert!(
            err.contains("permission denied")
                && err.contains("as root")
                && err.trim_end().lines().count() == 1,
            "{}",
            describe(&out)
        );
    }

    // Each start makes a new secret: the old one opens nothing.
    let old = admin_secret_of(&data);
    server.stop().await;
    let server = Server::start(&config, &dir.path().join("serve-2.log")).await;
    // Listening is not answering: the secret is written before the first answer.
    let r = get(server.url("/healthz")).await;
    assert_eq!(r.status(), 200);
    let new = admin_secret_of(&data);
    assert_ne!(old, new);
    let stale = client()
        .get(server.url("/admin/stats"))
        .header("x-wharf-admin-token", &old)
        .sent()
        .await;
    assert_eq!(stale.status(), 403);
    let fresh = client()
        .get(server.url("/admin/stats"))
        .header("x-wharf-admin-token", &new)
        .sent()
        .await;
    assert_eq!(fresh.status(), 200);
    server.stop().await;
}

/// The blocks `stats --watch` printed (not on a terminal: one per refresh, a blank line after).
fn watch_blocks(out: &str) -> Vec<&str> {
    out.split("\n\n").filter(|b| !b.trim().is_empty()).collect()
}

/// The line of a block that starts with `label`.
fn watch_line<'a>(block: &'a str, label: &str) -> &'a str {
    block
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in\n{block}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_watch_shows_the_running_servers_requests_hit_ratio_and_rate_per_refresh() {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let up = FakeRegistry::start().await;
    let blob = bytes_of(40_000, 9);
    let digest = up.put_blob(&blob);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &up.url(), &data);
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let pull = || async {
        let r = get(server.url(&format!("/v2/app/blobs/{digest}"))).await;
        assert_eq!(read_body(r).await, blob);
    };
    // One miss, three hits.
    for _ in 0..4 {
        pull().await;
    }
    let cli = cli_config(dir.path(), "cli.toml", &server, &data, "");

    let mut watch = wharf_command_async()
        .args([
            "stats",
            "--watch",
            "--interval",
            "200ms",
            "--count",
            "5",
            "--config",
        ])
        .arg(&cli)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(watch.stdout.take().unwrap());
    // The first block ends with a blank line; then two more hits while it watches.
    let mut first = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .expect("the first block within 10 s")
            .unwrap();
        assert!(n > 0, "stats --watch ended early:\n{first}");
        if line == "\n" {
            break;
        }
        first += &line;
    }
    pull().await;
    pull().await;
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), watch.wait())
        .await
        .expect("--count 5 ends the watch")
        .unwrap();
    let mut err = String::new();
    if let Some(mut e) = watch.stderr.take() {
        e.read_to_string(&mut err).await.unwrap();
    }
    let all = format!("{first}\n{rest}");
    assert!(status.success(), "{status}\n{all}\n{err}");
    assert!(!all.contains('\x1b'), "escape codes on a pipe:\n{all}");
    let blocks = watch_blocks(&all);
    assert_eq!(blocks.len(), 5, "{all}");

    // Before the two pulls: 4 requests, 3 of them hits; no rate on the first screen.
    let requests = watch_line(blocks[0], "requests");
    assert!(
        requests.contains(" - ") && requests.contains("total 4 (0 errors)"),
        "{all}"
    );
    assert!(
        watch_line(blocks[0], "hit ratio").contains("75.0% since start"),
        "{all}"
    );
    assert!(
        watch_line(blocks[0], "bytes in").contains("39.1 KiB from upstreams"),
        "{all}"
    );
    assert!(
        blocks[0].contains("\nupstream     registry   fake.test up\n"),
        "{all}"
    );
    // Bytes of cache answers only: the watch's own scrapes of /metrics are not counted.
    assert!(
        watch_line(blocks[0], "bytes out").contains("total 156.2 KiB served"),
        "{all}"
    );
    assert!(
        watch_line(blocks[4], "bytes out").contains("total 234.4 KiB served"),
        "{all}"
    );
    watch_line(blocks[0], "disk");
    watch_line(blocks[0], "fills");
    // At the end: 6 requests, 5 hits; the two pulls showed as a rate on some refresh.
    let last = blocks[4];
    assert!(
        watch_line(last, "requests").contains("total 6 (0 errors)"),
        "{all}"
    );
    assert!(
        watch_line(last, "hit ratio").contains("83.3% since start"),
        "{all}"
    );
    assert!(
        blocks[1..].iter().any(|b| {
            let l = watch_line(b, "requests");
            !l.contains(" - ") && !l.contains(" 0.0/s")
        }),
        "no refresh showed the two pulls as a rate:\n{all}"
    );

    // Without --count it runs until Ctrl-C, and then ends cleanly.
    let mut watch = wharf_command_async()
        .args(["stats", "--watch", "--interval", "100ms", "--config"])
        .arg(&cli)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(watch.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .expect("a first line within 10 s")
        .unwrap();
    let pid = watch.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), watch.wait())
        .await
        .expect("Ctrl-C ends the watch")
        .unwrap();
    assert!(status.success(), "{status}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_watch_without_a_running_server_says_so_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let cli = dir.path().join("cli.toml");
    fs::write(
        &cli,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = run(wharf_command()
        .args(["stats", "--watch", "--count", "1", "--config"])
        .arg(&cli));
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "no wharf answers at");
    expect_stderr(&out, "--server URL");
    assert!(
        !data.exists(),
        "the data directory was opened: {}",
        describe(&out)
    );
}

/// Whether this test can run a command as `nobody` that reads `file` (the config it is given):
/// needs root and setpriv, and every directory above `file` open to others, which a machine's
/// temporary directory need not be.
fn can_run_as_nobody(file: &Path) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "0");
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && setpriv) {
        eprintln!("skipping the unreadable-secret case: needs root and setpriv");
        return false;
    }
    let readable = as_nobody()
        .args(["test", "-r"])
        .arg(file)
        .status()
        .is_ok_and(|s| s.success());
    if !readable {
        eprintln!(
            "skipping the unreadable-secret case: nobody cannot reach {} (a directory above it is closed to others)",
            file.display()
        );
    }
    readable
}

/// `setpriv` (util-linux) set up to run what follows as `nobody`, with no groups.
fn as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_trust_only_the_configured_certificate_of_their_own_tls_server() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = tlsgen::Ca::new("wharf test CA");
    // Named for the public host, as a real certificate would be: not 127.0.0.1.
    let files = tlsgen::TlsFiles::in_dir(dir.path());
    files.write(&ca.server_cert(&["wharf.test"]));
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        files.cert.display(),
        files.key.display()
    );
    let config = dir.path().join("wharf.toml");
    WharfConfig::fake(&up.url(), &data)
        .tables(&tls)
        .write(&config);
    let server = Server::start(&config, &dir.path().join("serve.log")).await;

    let cli = cli_config(dir.path(), "cli.toml", &server, &data, &tls);
    let out = run(wharf_command().arg("stats").arg("--config").arg(&cli));
    assert!(out.status.success(), "{}", describe(&out));
    expect_stdout(&out, "on disk");

    // Whoever answers on that port with another certificate (even one from the same CA) is
    // not the server: the command does not send it the admin secret, and stops.
    let impostor = tlsgen::TlsFiles::in_dir(&dir.path().join("impostor"));
    fs::create_dir(dir.path().join("impostor")).unwrap();
    impostor.write(&ca.server_cert(&["wharf.test"]));
    let other_tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        impostor.cert.display(),
        impostor.key.display()
    );
    let wrong = cli_config(dir.path(), "wrong.toml", &server, &data, &other_tls);
    let out = run(wharf_command().arg("stats").arg("--config").arg(&wrong));
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "certificate");
    server.stop().await;
}

#[test]
fn gc_shared_without_a_shared_tier_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", &dir.path().join("data"));
    let out = run(wharf_command()
        .args(["gc", "--shared", "--dry-run", "--config"])
        .arg(&config));
    assert!(!out.status.success(), "{}", describe(&out));
    expect_stderr(&out, "no [shared] is configured");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_leaves_one_info_line_with_its_outcome_bytes_and_client() {
    let up = FakeRegistry::start().await;
    let blob = bytes_of(300_000, 18);
    let digest = up.put_blob(&blob);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url(), &dir.path().join("data"));
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let path = format!("/v2/team/app/blobs/{digest}?ns=fake.test");
    for _ in 0..2 {
        let resp = get(server.url(&path)).await;
        assert_eq!(resp.status(), 200, "{}", server.logs());
        assert_eq!(read_body(resp).await.len(), blob.len());
    }
    let missing = get(server.url("/v2/team/app/manifests/nope")).await;
    assert_eq!(missing.status(), 404);
    // A line is written when its body is done; give the last one a moment.
    eventually("three request lines", || {
        server.logs().matches("wharf::access").count() >= 3
    })
    .await;
    let logs = server.logs();
    server.stop().await;
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("wharf::access"))
        .collect();
    assert_eq!(lines.len(), 3, "{logs}");
    for (line, cache) in lines[..2].iter().zip(["MISS", "HIT"]) {
        for part in [
            "INFO",
            "method=GET",
            &format!("path={path}"),
            "status=200",
            &format!("bytes={}", blob.len()),
            &format!("cache={cache}"),
            "upstream=fake.test",
            "client=127.0.0.1",
            "ms=",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
    }
    assert!(
        lines[2].contains("status=404") && lines[2].contains("cache=ERROR"),
        "{}",
        lines[2]
    );
}

/// Request threads only append to the request log: whatever reads stderr may stall (a full pipe
/// here, a busy journal in production) without holding up a response, and the lines arrive once
/// it reads again.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_log_reader_does_not_hold_up_responses() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url(), &dir.path().join("data"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = tokio::process::Command::from(wharf_command())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wharf serve");
    // Nobody reads the pipe (64 KiB) until the requests are done.
    let mut stderr = child.stderr.take().unwrap();
    let url = format!("http://{addr}/v2/");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&url).send().await.is_err() {
        assert!(Instant::now() < deadline, "wharf serve did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // About 130 bytes a line: 4,000 lines are 8 times what the pipe holds.
    const REQUESTS: usize = 4000;
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..REQUESTS {
            let resp = client.get(&url).send().await.expect("GET /v2/");
            assert_eq!(resp.status(), 200);
            resp.bytes().await.expect("body");
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "requests stalled while the log's reader was not reading"
    );
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut all = Vec::new();
        stderr.read_to_end(&mut all).await.map(|_| all)
    });
    // The last lines are written within 100 ms of reading again; then a drained stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("wharf serve stops")
        .unwrap();
    let logs = text(&reader.await.unwrap().unwrap());
    let lines = logs.matches("wharf::access").count();
    // The requests before readiness and the readiness probes count too.
    assert!(lines > REQUESTS, "{lines} request lines of {REQUESTS}");
    assert!(!logs.contains("dropped"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_lines_follow_the_json_log_format() {
    let up = FakeRegistry::start().await;
    let digest = up.put_blob(&bytes_of(1000, 19));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url(), &dir.path().join("data"));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[log]\nformat = \"json\"\n");
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    let resp = get(server.url(&format!("/v2/team/app/blobs/{digest}?ns=fake.test"))).await;
    assert_eq!(read_body(resp).await.len(), 1000);
    eventually("a request line", || server.logs().contains("wharf::access")).await;
    let logs = server.logs();
    server.stop().await;
    let line = logs
        .lines()
        .find(|l| l.contains("wharf::access"))
        .unwrap_or_else(|| panic!("{logs}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "wharf::access");
    assert_eq!(v["fields"]["status"], 200);
    assert_eq!(v["fields"]["bytes"], 1000);
    assert_eq!(v["fields"]["cache"], "MISS");
    assert!(
        v["fields"]["path"]
            .as_str()
            .unwrap()
            .ends_with("?ns=fake.test")
    );
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
}

/// A `/metrics` sample's value.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_list_is_refreshed_on_its_interval_pinned_and_counted_in_metrics() {
    let reg = FakeRegistry::start().await;
    let go = GoFake::start().await;
    let first = bytes_of(3000, 1);
    reg.put_image("test/app", "v1", std::slice::from_ref(&first));
    let module = |v: &str| {
        let zip = module_zip(
            "example.com/Mod",
            v,
            &[("go.mod", "module example.com/Mod\n")],
        );
        go.put_module("example.com/!mod", v, "module example.com/Mod\n", zip);
        go.put(
            "example.com/!mod/@latest",
            format!(r#"{{"Version":"{v}","Time":"2024-01-02T03:04:05Z"}}"#),
        );
    };
    module("v1.1.0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = WharfConfig::fakes(&reg.url(), &go.url(), &data)
        .top("prefetch_interval = \"1h\"")
        .registry("tag_ttl = \"0s\"")
        .go_keys("list_ttl = \"0s\"")
        .tables(
            "[[prefetch]]\nitems = [\"fake.test/test/app:v1\", \"example.com/Mod@latest\"]\nevery = \"1s\"\n\n[[prefetch]]\nitems = [\"fake.test/test/missing:v1\"]\n",
        )
        .write(&dir.path().join("wharf.toml"));
    let server = Server::start(&config, &dir.path().join("serve.log")).await;

    // Nobody asks: the list is fetched at start, the missing image counted as a failure.
    let first_blob = sha256(&first);
    eventually("the first run", || {
        reg.count("GET", &format!("/blobs/{first_blob}")) == 1 && go.count("v1.1.0.zip") == 1
    })
    .await;
    let metrics = || async { read_text(get(server.url("/metrics")).await).await };
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics().await;
        if metric(&text, "wharf_prefetch_runs_total").unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        metric(&text, "wharf_prefetch_last_run_items"),
        Some(3),
        "{text}"
    );
    assert_eq!(
        metric(&text, "wharf_prefetch_last_run_failures"),
        Some(1),
        "{text}"
    );
    assert!(metric(&text, "wharf_prefetch_last_run_timestamp_seconds").unwrap_or(0) > 0);
    assert!(
        server.logs().contains("fake.test/test/missing:v1"),
        "{}",
        server.logs()
    );

    // The tag moves and a module version appears: fetched on the next runs, before anyone asks.
    let second = bytes_of(4000, 2);
    reg.put_image("test/app", "v1", std::slice::from_ref(&second));
    module("v1.2.0");
    let second_blob = sha256(&second);
    eventually("the new digest and version", || {
        reg.count("GET", &format!("/blobs/{second_blob}")) == 1 && go.count("v1.2.0.zip") == 1
    })
    .await;
    // The first entry runs every second, the second only hourly: later runs try two items.
    let mut runs = 0;
    for _ in 0..200 {
        text = metrics().await;
        runs = metric(&text, "wharf_prefetch_runs_total").unwrap_or(0);
        if runs >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(runs >= 3, "{text}");
    assert_eq!(
        metric(&text, "wharf_prefetch_last_run_items"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        metric(&text, "wharf_prefetch_last_run_failures"),
        Some(0),
        "{text}"
    );

    // SIGTERM stops it with the server; what it fetched is pinned (prefetch's own pins).
    let mut server = server;
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", server.logs());
    let out = ok(run_wharf(&["stats", "--config", config.to_str().unwrap()]).await);
    let stats = stdout(&out);
    let pinned = stats
        .lines()
        .find(|l| l.starts_with("pinned"))
        .unwrap_or_default()
        .to_string();
    assert!(
        !pinned.is_empty() && !pinned.contains("in 0 objects"),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_list_is_not_run_offline_and_bad_items_are_refused_at_start() {
    let reg = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let list = "[[prefetch]]\nitems = [\"fake.test/test/app:v1\"]\nevery = \"1s\"\n";
    let config = WharfConfig::fake(&reg.url(), &data)
        .offline(true)
        .tables(list)
        .write(&dir.path().join("offline.toml"));
    let server = Server::start(&config, &dir.path().join("serve.log")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reg.count("GET", "/"), 0, "{}", server.logs());
    let text = read_text(get(server.url("/metrics")).await).await;
    assert_eq!(
        metric(&text, "wharf_prefetch_runs_total"),
        Some(0),
        "{text}"
    );
    server.stop().await;

    for (bad, why) in [
        (
            "[[prefetch]]\nitems = [\"quay.io/x/y:1\"]\n",
            "prefetch[0].items",
        ),
        (
            "[[prefetch]]\nitems = [\"a:1\"]\nplatforms = [\"linux\"]\n",
            "prefetch[0].platforms",
        ),
        ("[[prefetch]]\nitems = []\n", "prefetch[0].items is empty"),
        ("prefetch_interval = \"0s\"\n", "prefetch_interval"),
    ] {
        let path = dir.path().join("bad.toml");
        let mut text = WharfConfig::fake(&reg.url(), &data).toml();
        if bad.starts_with("prefetch_interval") {
            text = format!("{bad}{text}");
        } else {
            text.push_str(bad);
        }
        std::fs::write(&path, text).unwrap();
        let out = run_wharf(&["check-config", "--config", path.to_str().unwrap()]).await;
        assert!(!out.status.success(), "{bad}: {}", describe(&out));
        expect_stderr(&out, why);
    }
}

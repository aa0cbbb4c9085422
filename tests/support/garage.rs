//! Garage, a real distributed S3-compatible store, as a single-node cluster on loopback ports:
//! config file, `garage server`, then `layout assign` / `layout apply`, `bucket create`,
//! `key create` and `bucket allow`, as its quick-start does. Built once per machine with
//! `cargo install garage --version 2.5.0 --locked` (`.ci/run` does it when it is missing).
//!
//! Tests reach the bucket with `object_store` (to count, read and corrupt objects) and give each
//! wharf replica the `[shared]` table from `shared_table`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use tempfile::TempDir;

use super::origin::{REQUIRE_ENV, find_tool};
use super::server::free_port;

pub const BUCKET: &str = "wharf";

pub struct Garage {
    program: PathBuf,
    dir: TempDir,
    config: PathBuf,
    pub s3_port: u16,
    child: Option<Child>,
    pub key_id_file: PathBuf,
    pub secret_file: PathBuf,
    key_id: String,
    secret: String,
}

/// `garage` on PATH or in cargo's bin directory; `None` (after saying why) when it is missing
/// and `WHARF_REQUIRE_INTEROP` is unset.
pub fn find_garage(test: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin").join("garage"));
    if let Some(p) = find_tool("garage").or(cargo_bin.filter(|p| p.is_file())) {
        return Some(p);
    }
    let why = format!(
        "{test}: garage not found (build it once: cargo install garage --version 2.5.0 --locked)"
    );
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{why}; {REQUIRE_ENV} is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {why}; set {REQUIRE_ENV}=1 to make this fail instead");
    None
}

impl Garage {
    /// Starts a one-node cluster with bucket `wharf` and a key allowed to use it. Blocking.
    pub fn start(program: &Path) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("wharf-garage-")
            .tempdir()
            .expect("garage dir");
        let (s3_port, rpc_port) = (free_port(), free_port());
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let mut g = Garage {
            program: program.to_path_buf(),
            key_id_file: dir.path().join("key-id"),
            secret_file: dir.path().join("secret"),
            dir,
            config,
            s3_port,
            child: None,
            key_id: String::new(),
            secret: String::new(),
        };
        g.run_server();
        let node = g.cli(&["node", "id", "-q"]);
        let node = node
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", BUCKET]);
        let key = g.cli(&["key", "create", "wharf-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in `garage key create`:\n{key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "wharf-test",
        ]);
        std::fs::write(&g.key_id_file, &g.key_id).unwrap();
        std::fs::write(&g.secret_file, &g.secret).unwrap();
        g
    }

    fn run_server(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage server");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "garage did not listen on {}:\n{}",
                self.s3_port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let out = Command::new(&self.program)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .expect("run garage");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            // The node needs a moment before its RPC answers.
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "garage {args:?} failed: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The `[shared]` table of one replica (`id`), credentials from files.
    pub fn shared_table(&self, id: &str) -> String {
        format!(
            "[shared]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nregion = \"garage\"\n\
             access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n\
             replica_id = \"{id}\"\nsync_interval = \"200ms\"\n",
            self.endpoint(),
            self.key_id_file.display(),
            self.secret_file.display(),
        )
    }

    /// Stops the server (kill), keeping its data: `resume` starts it again on the same ports.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn resume(&mut self) {
        self.run_server();
    }

    /// A client of the bucket, for tests that look at or damage what is stored.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_bucket_name(BUCKET)
                .with_region("garage")
                .with_access_key_id(&self.key_id)
                .with_secret_access_key(&self.secret)
                .with_allow_http(true)
                .build()
                .expect("S3 client"),
        )
    }

    /// Keys under `prefix` (e.g. `blobs/`).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let c = self.client();
        let p = Key::from(prefix);
        let metas: Vec<_> = c.list(Some(&p)).try_collect().await.expect("list bucket");
        metas.into_iter().map(|m| m.location.to_string()).collect()
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.client().get(&Key::from(key)).await {
            Ok(r) => Some(r.bytes().await.expect("read object").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.client()
            .put(&Key::from(key), PutPayload::from(bytes))
            .await
            .expect("PUT object");
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

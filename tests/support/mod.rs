//! The one test harness. wharf served in-process on a loopback port (`wharf`) from the one config
//! builder (`config`), the wharf binary with a scrubbed environment (`bin`), requests and
//! assertions on answers (`http`), fake upstreams (`fake` for the registry, `gofake` for
//! GOPROXY, `sumdb` for a signed checksum database of real files), and for the interop tests
//! generated OCI layouts (`oci`), the real origin registry
//! and skopeo (`origin`), containerd and ctr (`containerd`), the go command and a reference
//! checksum database (`gotools`), and generated certificates (`tlsgen`).
//!
//! Each test binary that declares `mod support;` compiles its own copy and uses a subset of it;
//! most take the common names with `use support::*;`.
#![allow(dead_code, unused_imports)]

mod bin;
mod config;
pub mod containerd;
mod fake;
pub mod garage;
mod gofake;
pub mod gotools;
mod http;
pub mod oci;
pub mod origin;
mod server;
mod sumdb;
pub mod tlsgen;
mod wharf;

pub use bin::{
    describe, expect_stderr, expect_stdout, ok, run_wharf, stderr, stdout, wharf_command,
    wharf_command_async,
};
pub use config::{WharfConfig, quote};
pub use fake::*;
pub use gofake::*;
pub use http::{
    Answer, Body, Sent, client, error_code, expect_header, expect_status, get, header, health_of,
    raw_get, read_body, read_text, status_of,
};
pub use server::{Server, free_port};
pub use sumdb::{SumRecord, serve_sumdb};
pub use wharf::{MANIFEST_ACCEPT, Wharf};

use std::path::{Path, PathBuf};

/// A fresh temporary directory whose name starts with `prefix` (for finding it after a failure).
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create work dir")
}

/// Runs `f` on the blocking pool (skopeo, go and process management block), re-raising its
/// panic.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

/// The files of a data directory that hold something: all but `spare/` (empty files a
/// server makes ahead for its fills, whenever it likes).
pub fn stored_files(data_dir: &Path) -> Vec<PathBuf> {
    let spare = data_dir.join("spare");
    files_under(data_dir)
        .into_iter()
        .filter(|p| !p.starts_with(&spare))
        .collect()
}

/// Fills in progress or left behind: every file in `tmp/`, and every spare in `spare/` that a
/// fill has written to (the ones made ahead and not yet taken are empty).
pub fn fill_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = files_under(&data_dir.join("tmp"));
    out.extend(
        files_under(&data_dir.join("spare"))
            .into_iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0)),
    );
    out
}

/// Files under `dir` (recursively), for "nothing was written" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

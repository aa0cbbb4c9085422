//! A fake GOPROXY (and checksum database) upstream on port 0: serves files from a map, counts
//! requests, and can fail on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

#[derive(Default)]
pub struct GoFakeState {
    /// Path below the root (e.g. `example.com/m/@v/list`) -> body.
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    pub seen: Mutex<Vec<String>>,
    pub fail_with: Mutex<Option<u16>>,
    /// Status for missing files (404 or 410).
    pub missing_status: Mutex<Option<u16>>,
    /// Wait this long before answering (so concurrent requests overlap one upstream fetch).
    pub delay: Mutex<Option<std::time::Duration>>,
    /// Send bodies in 64 KiB chunks without a Content-Length.
    pub chunked: std::sync::atomic::AtomicBool,
}

pub struct GoFake {
    pub addr: SocketAddr,
    pub state: Arc<GoFakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GoFake {
    pub async fn start() -> GoFake {
        let state = Arc::new(GoFakeState::default());
        let app = axum::Router::new()
            .fallback(handler)
            .with_state(state.clone());
        let (addr, task) = super::fake::serve_router("127.0.0.1:0", app).await;
        GoFake { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.into(), body.into());
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.seen().iter().filter(|p| p.contains(needle)).count()
    }

    pub fn fail_with(&self, s: Option<u16>) {
        *self.state.fail_with.lock().unwrap() = s;
    }

    /// Answers only after `d` (None: at once).
    pub fn delay(&self, d: Option<std::time::Duration>) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Bodies without a Content-Length, so a size limit is found only while streaming.
    pub fn chunked(&self, on: bool) {
        self.state
            .chunked
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Publishes a module version: .info, .mod, .zip, and adds it to the list.
    pub fn put_module(&self, escaped_module: &str, version: &str, go_mod: &str, zip: Vec<u8>) {
        let base = format!("{escaped_module}/@v");
        self.put(
            &format!("{base}/{version}.info"),
            format!(r#"{{"Version":"{version}","Time":"2024-01-02T03:04:05Z"}}"#),
        );
        self.put(&format!("{base}/{version}.mod"), go_mod.to_string());
        self.put(&format!("{base}/{version}.zip"), zip);
        let mut files = self.state.files.lock().unwrap();
        let list = files.entry(format!("{base}/list")).or_default();
        list.extend_from_slice(format!("{version}\n").as_bytes());
    }
}

async fn handler(State(st): State<Arc<GoFakeState>>, req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/').to_string();
    st.seen.lock().unwrap().push(path.clone());
    let delay = *st.delay.lock().unwrap();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = *st.fail_with.lock().unwrap() {
        return (StatusCode::from_u16(code).unwrap(), "upstream broken").into_response();
    }
    let found = st.files.lock().unwrap().get(&path).cloned();
    match found {
        Some(body) if st.chunked.load(std::sync::atomic::Ordering::SeqCst) => {
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
                .chunks(64 * 1024)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
            )
                .into_response()
        }
        Some(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        None => {
            let code = st.missing_status.lock().unwrap().unwrap_or(404);
            (StatusCode::from_u16(code).unwrap(), "not found").into_response()
        }
    }
}

/// The four GOPROXY paths of one published version, below the module: list, info, mod, zip.
pub fn version_files(version: &str) -> [String; 4] {
    [
        "@v/list".to_owned(),
        format!("@v/{version}.info"),
        format!("@v/{version}.mod"),
        format!("@v/{version}.zip"),
    ]
}

/// A module zip with the given files under `module@version/`.
pub fn module_zip(module: &str, version: &str, files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in files {
            z.start_file(format!("{module}@{version}/{name}"), opts)
                .unwrap();
            z.write_all(body.as_bytes()).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

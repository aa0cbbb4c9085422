//! `[traces]`: request and fill spans exported to an OpenTelemetry collector (OTLP over HTTP,
//! JSON bodies), off unless configured. The exporter's requests go through wharf's own HTTP
//! client and egress policy (`TracesClient`), like every other outgoing connection. Spans are
//! the `tracing` spans wharf already makes (`request`, and `fill` for the fill a request waits
//! on); the request line's target (`wharf::access`) is never exported.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::config::{EgressConfig, TracesConfig};
use crate::upstream::EgressPolicy;

/// The provider, kept to flush what is buffered at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The `tracing` layer that exports spans to `config`'s collector, or why it cannot be built.
/// It has no filter of its own: with one, `tracing-subscriber`'s per-layer filtering lost the
/// `fill` spans (an interest every layer caches as "always"), so links from waiting requests
/// went nowhere. The request line is wharf's own writer, never a `tracing` event: nothing of
/// it is exported.
/// Longest one export may take, answer included.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn layer<S>(
    config: &TracesConfig,
    egress: &EgressConfig,
    policy: Arc<EgressPolicy>,
) -> Result<impl tracing_subscriber::Layer<S>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let client = TracesClient {
        http: crate::upstream::client::build_http(egress, policy.clone())?,
        policy,
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|_| "traces need the async runtime".to_string())?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(config.endpoint.clone())
        .build()
        .map_err(|e| format!("traces.endpoint: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("wharf");
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans still buffered (at shutdown; waits at most a few seconds).
pub fn flush() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(5))
    {
        tracing::warn!(error = %e, "could not send the last spans");
    }
}

/// The most of a collector's answer that is read (an OTLP answer is a few bytes; the rest of a
/// longer one is dropped with its connection).
const MAX_ANSWER: usize = 64 * 1024;

/// The exporter's HTTP client: wharf's, checked against the egress policy. The exporter runs
/// on a thread of its own; requests run on the server's runtime.
#[derive(Debug)]
struct TracesClient {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for TracesClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let url = reqwest::Url::parse(&request.uri().to_string())?;
        if let Err(e) = self.policy.check(&url) {
            failed(&e);
            return Err(e.into());
        }
        let (parts, body) = request.into_parts();
        let req = self
            .http
            .request(parts.method, url.clone())
            // A collector that trickles its answer cannot hold the exporter for longer.
            .timeout(EXPORT_TIMEOUT)
            .headers(parts.headers)
            .body(body);
        let target = url.clone();
        let sent = self.runtime.spawn(async move {
            let mut resp = req.send().await?;
            let status = resp.status();
            // At most `MAX_ANSWER` of it: the collector's answer is never buffered whole.
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                let room = MAX_ANSWER - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() == MAX_ANSWER {
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, Bytes::from(body)))
        });
        let (status, body) = match sent.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let e = crate::upstream::client::transport_error(e, &target);
                failed(&e);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if !status.is_success() {
            failed(&format!("the collector answered {status}"));
        }
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        Ok(resp)
    }
}

/// Logs why spans could not be sent, at most once a minute.
fn failed(why: &dyn std::fmt::Display) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::app::now_unix();
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %why, "could not send spans to traces.endpoint");
    }
}

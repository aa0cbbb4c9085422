//! The bucket: an S3 client (`object_store`) whose every request passes the egress policy, and
//! the credentials it signs with (from files or the environment, never the config file).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
};
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use reqwest::Url;

use crate::config::{EgressConfig, SharedConfig};
use crate::upstream::EgressPolicy;
use crate::upstream::client::build_http;

const KEY_ID_ENV: &str = "WHARF_SHARED_ACCESS_KEY_ID";
const SECRET_ENV: &str = "WHARF_SHARED_SECRET_ACCESS_KEY";

/// The S3 client of the shared tier.
pub type Store = Arc<dyn ObjectStore>;

/// Whether the egress policy lets wharf reach the store at all (a configuration error if not).
pub fn check_endpoint(cfg: &SharedConfig, policy: &EgressPolicy) -> Result<(), String> {
    let endpoint = Url::parse(&cfg.endpoint).map_err(|e| format!("shared.endpoint: {e}"))?;
    policy
        .check(&endpoint)
        .map_err(|e| format!("shared.endpoint: {e}"))
}

/// Builds the S3 client. Errors name the setting to fix and never carry a secret.
pub fn connect(
    cfg: &SharedConfig,
    egress: &EgressConfig,
    policy: Arc<EgressPolicy>,
) -> Result<Store, String> {
    check_endpoint(cfg, &policy)?;
    let endpoint = Url::parse(&cfg.endpoint).map_err(|e| format!("shared.endpoint: {e}"))?;
    let key_id = credential(
        cfg.access_key_id_file.as_deref(),
        KEY_ID_ENV,
        "access_key_id",
    )?;
    let secret = credential(
        cfg.secret_access_key_file.as_deref(),
        SECRET_ENV,
        "secret_access_key",
    )?;
    let http = build_http(egress, policy.clone())?;
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint.as_str().trim_end_matches('/'))
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
        .with_http_connector(Egressed { http, policy })
        // Fail fast: a store that does not answer is skipped (upstream instead), and the
        // health check takes it out of the path until a probe succeeds.
        .with_retry(RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        })
        .build()
        .map_err(|e| format!("shared: cannot build the S3 client: {e}"))?;
    Ok(Arc::new(store))
}

/// A credential from its file (trimmed), else the environment.
fn credential(file: Option<&std::path::Path>, env: &str, what: &str) -> Result<String, String> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("shared.{what}_file {}: {e}", path.display()))?,
        None => std::env::var(env).map_err(|_| {
            format!("shared: no {what}: set shared.{what}_file or the environment variable {env}")
        })?,
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(format!("shared: the {what} is empty"));
    }
    Ok(value)
}

/// The HTTP client of the S3 client: wharf's (the egress policy's resolver, its timeouts),
/// with every request's URL checked against the policy before it is sent.
#[derive(Debug, Clone)]
struct Egressed {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl HttpConnector for Egressed {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl HttpService for Egressed {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let url = Url::parse(&req.uri().to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        self.policy
            .check(&url)
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        self.http.call(req).await
    }
}

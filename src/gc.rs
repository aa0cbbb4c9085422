//! `wharf gc` and `wharf stats`. The commands go through `tools::client` like the air-gap
//! commands: to the running server (sled admits one process), else in-process on the data
//! directory; the server side is `admin::maintenance`.

use std::process::ExitCode;

use crate::admin::maintenance::{Stats, default_target};
use crate::config::{ByteSize, Config};
use crate::error::Error;
use crate::tools::client::{Body, Client, Via};

/// Largest answer read back (a gc report lists every object it removes).
const MAX_ANSWER: usize = 256 << 20;

/// One admin request through the commands' client (the running server, else the data directory
/// in-process); `None` once it has said on stderr why not.
async fn ask(config: &Config, via: Via<'_>, method: http::Method, path: &str) -> Option<Vec<u8>> {
    let client = match Client::connect(config, via).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf: {e}");
            return None;
        }
    };
    let answer = match client.request(method, path, &[], Body::Empty).await {
        Ok(reply) if reply.status.is_success() => reply.bytes(MAX_ANSWER).await,
        Ok(reply) => Err(format!(
            "{} refused: {}",
            client.describe(),
            reply.error().await
        )),
        Err(e) => Err(e),
    };
    let finished = client.finish().await;
    match answer.and_then(|a| finished.map(|()| a)) {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("wharf: {e}");
            None
        }
    }
}

/// `wharf gc [--shared] [--dry-run] [--target SIZE]`.
pub async fn command(
    config: &Config,
    shared: bool,
    dry_run: bool,
    target: Option<&str>,
) -> Result<ExitCode, Error> {
    if shared && config.shared.is_none() {
        eprintln!("wharf: gc --shared: no [shared] is configured in this config");
        return Ok(ExitCode::FAILURE);
    }
    let target = match target {
        Some(t) => {
            ByteSize::parse(t)
                .map_err(|m| {
                    Error::Config(crate::config::ConfigError::Invalid(format!(
                        "--target: {m}"
                    )))
                })?
                .0
        }
        None if shared => {
            return shared_pass(config, dry_run, "").await;
        }
        None => default_target(config),
    };
    if shared {
        return shared_pass(config, dry_run, &format!("&target={target}")).await;
    }
    if target == u64::MAX {
        eprintln!(
            "wharf: cache.max_size is 0 (no limit): nothing to evict down to; give --target SIZE"
        );
    }
    let path = format!("/admin/gc?dry_run={dry_run}&target={target}");
    let Some(report) = ask(config, Via::Auto, http::Method::POST, &path).await else {
        return Ok(ExitCode::FAILURE);
    };
    print!("{}", String::from_utf8_lossy(&report));
    Ok(ExitCode::SUCCESS)
}

/// One eviction pass over the shared tier (its budget unless `extra` gives a target).
async fn shared_pass(config: &Config, dry_run: bool, extra: &str) -> Result<ExitCode, Error> {
    if extra.is_empty() && config.shared.as_ref().is_some_and(|s| s.max_size.0 == 0) {
        eprintln!(
            "wharf: shared.max_size is 0 (no limit): nothing to evict down to; give --target SIZE"
        );
    }
    let path = format!("/admin/gc?shared=true&dry_run={dry_run}{extra}");
    let Some(report) = ask(config, Via::Auto, http::Method::POST, &path).await else {
        return Ok(ExitCode::FAILURE);
    };
    print!("{}", String::from_utf8_lossy(&report));
    Ok(ExitCode::SUCCESS)
}

/// `wharf stats [--server URL] [--json]`.
pub async fn stats_command(
    config: &Config,
    server: Option<&str>,
    json: bool,
) -> Result<ExitCode, Error> {
    let via = server.map_or(Via::Auto, Via::Server);
    let Some(body) = ask(config, via, http::Method::GET, "/admin/stats").await else {
        return Ok(ExitCode::FAILURE);
    };
    let stats = serde_json::from_slice::<Stats>(&body).map_err(|e| Error::Io {
        context: "reading the server's stats".into(),
        source: std::io::Error::other(e),
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).unwrap_or_default()
        );
    } else {
        print!("{stats}");
    }
    Ok(ExitCode::SUCCESS)
}

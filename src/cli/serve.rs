//! `wharf serve`: bind the listeners (or take systemd's), load TLS, start the scheduled prefetch
//! (`tools::sync`), serve until SIGTERM or Ctrl-C, reload the certificate on SIGHUP.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use super::ConfigArgs;
use crate::app::Checked;
use crate::config::{Config, ListenAddr, LogFormat};
pub use crate::server::listen::Activated;
use crate::server::listen::{self, Listener};

/// Runs `wharf serve`: flags over the config file, then logging, then the server, on
/// `activated` sockets when systemd passed some (`listen::from_systemd`), else on `listen`.
pub async fn command(
    config: &ConfigArgs,
    listen: Option<ListenAddr>,
    offline: bool,
    activated: Option<Activated>,
) -> Result<ExitCode, crate::Error> {
    let checked = config.check(&super::Overrides { listen, offline })?;
    init_tracing(checked.config(), checked.egress_shared())?;
    let result = serve(checked, activated).await;
    crate::traces::flush();
    result
}

async fn serve(checked: Checked, activated: Option<Activated>) -> Result<ExitCode, crate::Error> {
    let data_dir = checked.config().data_dir.clone();
    // The state first (it sweeps tmp/ and opens the index): once a port answers, wharf is ready.
    let state = crate::AppState::from_checked(checked)?;
    let listeners = match activated {
        Some(sockets) => {
            for (l, name) in &sockets {
                tracing::info!(socket = %l.describe(), name = name.as_deref().unwrap_or("-"),
                    "socket activation: serving a socket systemd passed (listen is not bound)");
            }
            sockets.into_iter().map(|(l, _)| l).collect()
        }
        None => listen::bind(&state.config).map_err(|e| crate::Error::Listen(e.0))?,
    };
    let addr = listeners
        .iter()
        .map(Listener::describe)
        .collect::<Vec<_>>()
        .join(", ");
    let tls = match &state.config.tls {
        Some(t) => Some(
            crate::server::TlsReloader::load(&t.cert, &t.key)
                .map_err(|m| crate::Error::Config(crate::config::ConfigError::Invalid(m)))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %scheme, data_dir = %data_dir.display(), "wharf listening");
    if let Some(t) = tls.clone() {
        tokio::spawn(reload_on_sighup(t));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let gateway = start_gateway(&state, stopped.clone())?;
    let sync = crate::tools::sync::spawn(state.clone(), stopped);
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    let result = crate::server::run_on(listeners, state, tls, shutdown).await;
    if let Some(task) = sync {
        let _ = task.await;
    }
    if let Some(task) = gateway {
        let _ = task.await;
    }
    result.map_err(|source| crate::Error::Io {
        context: "server error".into(),
        source,
    })?;
    tracing::info!("drained; exiting");
    Ok(ExitCode::SUCCESS)
}

/// Binds `gateway.listen` and serves the egress gateway until `stopped` turns true; `None`
/// without `[gateway]`.
fn start_gateway(
    state: &crate::AppState,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, crate::Error> {
    let invalid = |m: String| crate::Error::Config(crate::config::ConfigError::Invalid(m));
    let Some(gateway) = crate::gateway::Gateway::new(state).map_err(invalid)? else {
        return Ok(None);
    };
    let addr = state.config.gateway.as_ref().map(|g| g.listen);
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| {
            crate::Error::Listen(format!("cannot listen on gateway.listen {addr}: {e}"))
        })?;
    tracing::info!(%addr, "egress gateway listening (HTTP proxy: CONNECT and http:// requests)");
    if let Some(g) = &state.config.gateway {
        if let Some(via) = g.parent_shown(&state.config) {
            tracing::info!(%via, "the gateway reaches destinations through egress.proxy (names resolved by the proxy: egress.resolve and egress.allow_cidrs apply to IP literals only)");
        } else if let Some(p) = g.parent_passed_over(&state.config) {
            let proxy = format!("{}://{}", p.scheme(), p.host_str().unwrap_or(""));
            tracing::warn!(%proxy, "the gateway connects directly: it can go through an http:// egress.proxy only (set gateway.via_egress_proxy = false to say this is intended)");
        }
    }
    if let Some(g) = &state.config.gateway
        && g.allow_clients.is_none()
        && g.parse_clients(&state.config)
            .is_ok_and(|c| c.iter().any(crate::net::Cidr::is_everything))
    {
        tracing::warn!(
            "the gateway admits every client address (gateway.allow_clients defaults to access.allow_clients, which has a /0 range); set gateway.allow_clients to the site's ranges"
        );
    }
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    Ok(Some(tokio::spawn(
        std::sync::Arc::new(gateway).serve(listener, shutdown),
    )))
}

/// Re-reads the TLS certificate and key on every SIGHUP (certificate rotation).
async fn reload_on_sighup(tls: crate::server::TlsReloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the old certificate")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; draining in-flight requests");
}

fn init_tracing(
    config: &Config,
    policy: std::sync::Arc<crate::upstream::EgressPolicy>,
) -> Result<(), crate::Error> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&config.log.level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    // Asked of the log filter alone: the request lines follow `[log] level`.
    let lines = tracing_subscriber::registry().with(filter());
    crate::web::log::set_wanted(tracing::subscriber::with_default(
        lines,
        || tracing::enabled!(target: crate::web::log::TARGET, tracing::Level::INFO),
    ));
    let filter = filter();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(super::colour())
        .with_writer(crate::web::log::Messages);
    let fmt = match config.log.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    }
    .with_filter(filter);
    // A list, not an `Option`: each layer's own filter then keeps track of every span.
    let mut layers = vec![fmt.boxed()];
    if let Some(t) = &config.traces {
        let traces = crate::traces::layer(t, &config.egress, policy)
            .map_err(|m| crate::Error::Config(crate::config::ConfigError::Invalid(m)))?;
        layers.push(traces.boxed());
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}

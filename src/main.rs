//! The `wharf` binary: parse the command line, load config, init tracing, run the command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wharf::cli::{Cli, Command};
use wharf::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wharf: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, wharf::Error> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            offline,
        } => {
            let mut config = config.load()?;
            if let Some(l) = listen {
                config.listen = l;
            }
            config.offline |= offline;
            init_tracing(&config);
            serve(config).await
        }
        Command::CheckConfig { config } => {
            let config = config.load()?;
            print_config(&config);
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|source| wharf::Error::Io {
                    context: "cannot read the password from standard input".into(),
                    source,
                })?;
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                eprintln!(
                    "wharf: give the password on standard input, e.g. `wharf hash-password < file`"
                );
                return Ok(ExitCode::from(2));
            }
            let hash = wharf::access::hash_password(password)
                .map_err(|m| wharf::Error::Config(wharf::config::ConfigError::Invalid(m)))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckEgress { config, url } => {
            let config = config.load()?;
            check_egress(&config, &url).await
        }
        Command::Gc {
            config,
            dry_run,
            target,
        } => {
            let config = config.load()?;
            init_cli_tracing();
            wharf::gc::command(&config, dry_run, target.as_deref()).await
        }
        Command::Stats { config, json } => {
            let config = config.load()?;
            init_cli_tracing();
            wharf::gc::stats_command(&config, json).await
        }
        Command::Prefetch {
            config,
            server,
            platform,
            lists,
            items,
        } => {
            let config = config.load()?;
            init_cli_tracing();
            wharf::prefetch::command(&config, server.server.as_deref(), &items, &lists, platform)
                .await
        }
        Command::Export {
            config,
            server,
            output,
            all,
            pinned,
            lists,
            items,
        } => {
            let config = config.load()?;
            init_cli_tracing();
            let args = wharf::bundle::export::ExportArgs {
                items,
                lists,
                all,
                pinned,
                output,
            };
            wharf::bundle::export::command(&config, server.server.as_deref(), args).await
        }
        Command::Import {
            config,
            server,
            name,
            inputs,
        } => {
            let config = config.load()?;
            init_cli_tracing();
            let args = wharf::bundle::import::ImportArgs { inputs, name };
            wharf::bundle::import::command(&config, server.server.as_deref(), args).await
        }
        Command::Fsck { config, repair } => {
            let config = config.load()?;
            let storage = wharf_storage::Storage::open(&config.data_dir)?;
            let report = wharf_storage::fsck(&storage, repair)?;
            let _ =
                std::io::Write::write_all(&mut std::io::stdout(), format!("{report}\n").as_bytes());
            Ok(if report.is_clean() || repair {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

async fn serve(config: Config) -> Result<ExitCode, wharf::Error> {
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let state = wharf::AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| wharf::Error::Io {
            context: format!("cannot listen on {listen}"),
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(listen);
    let tls = match &state.config.tls {
        Some(t) => Some(
            wharf::server::TlsReloader::load(&t.cert, &t.key)
                .map_err(|m| wharf::Error::Config(wharf::config::ConfigError::Invalid(m)))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %scheme, data_dir = %data_dir.display(), "wharf listening");
    if let Some(t) = tls.clone() {
        tokio::spawn(reload_on_sighup(t));
    }
    let result = match tls {
        Some(t) => wharf::serve_tls(listener, state, t, shutdown_signal()).await,
        None => wharf::serve(listener, state, shutdown_signal()).await,
    };
    result.map_err(|source| wharf::Error::Io {
        context: "server error".into(),
        source,
    })?;
    tracing::info!("drained; exiting");
    Ok(ExitCode::SUCCESS)
}

/// Re-reads the TLS certificate and key on every SIGHUP (certificate rotation).
async fn reload_on_sighup(tls: wharf::server::TlsReloader) {
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

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Warnings and errors only, for commands whose own output is the report.
fn init_cli_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Explains the egress decision for `url`: host rule, resolved addresses and their classes.
async fn check_egress(config: &Config, url: &str) -> Result<ExitCode, wharf::Error> {
    use std::fmt::Write as _;
    let invalid = |m: String| wharf::Error::Config(wharf::config::ConfigError::Invalid(m));
    let policy = wharf::upstream::EgressPolicy::from_config(&config.egress).map_err(invalid)?;
    let url =
        reqwest::Url::parse(url).map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    let mut o = String::new();
    let _ = writeln!(o, "url:  {}", wharf::upstream::egress::redact(&url));
    let host_ok = match policy.check(&url) {
        Ok(()) => {
            let rule = policy.matching_rule(&url).unwrap_or_default();
            let _ = writeln!(o, "host: allowed by egress.allow entry {rule:?}");
            true
        }
        Err(e) => {
            let _ = writeln!(o, "host: REFUSED: {e}");
            false
        }
    };
    let mut any_addr = false;
    if let Some(host) = url.host_str() {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            let _ = writeln!(
                o,
                "addresses (IP literal; allowed only when listed in egress.allow):"
            );
            let _ = writeln!(o, "  {ip:<40} {}", wharf::upstream::egress::classify(ip));
            any_addr = host_ok;
        } else if !host_ok {
            // A refused name is never looked up: the query itself would reach the outside.
            let _ = writeln!(o, "addresses: not resolved (the host is refused)");
        } else {
            let source = if policy.is_pinned(host) {
                "egress.resolve"
            } else {
                "DNS"
            };
            match policy.resolve(host).await {
                Ok(addrs) if addrs.is_empty() => {
                    let _ = writeln!(o, "addresses ({source}): none");
                }
                Ok(addrs) => {
                    let _ = writeln!(o, "addresses ({source}):");
                    for (ip, verdict) in addrs {
                        let (class, word) = match verdict {
                            Ok(c) => (c, "allowed"),
                            Err(c) => (c, "REFUSED (egress.allow_cidrs)"),
                        };
                        any_addr |= word == "allowed";
                        let _ = writeln!(o, "  {ip:<40} {class:<45} {word}");
                    }
                }
                Err(e) => {
                    let _ = writeln!(o, "addresses ({source}): cannot resolve: {e}");
                }
            }
        }
    }
    let allowed = host_ok && any_addr;
    let _ = writeln!(
        o,
        "verdict: {}",
        if allowed { "allowed" } else { "refused" }
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), o.as_bytes());
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The effective settings, one per line; secrets are named by their source, never printed.
fn print_config(c: &Config) {
    use std::fmt::Write as _;
    let d = |t: std::time::Duration| humantime::format_duration(t).to_string();
    let mut o = String::new();
    let _ = writeln!(o, "config OK");
    let _ = writeln!(o, "listen                     = {}", c.listen);
    let _ = writeln!(o, "data_dir                   = {}", c.data_dir.display());
    let _ = writeln!(o, "offline                    = {}", c.offline);
    let _ = writeln!(
        o,
        "log                        = {:?}, level {}",
        c.log.format, c.log.level
    );
    let _ = writeln!(
        o,
        "registry.default_upstream  = {}",
        c.registry.default_upstream
    );
    let _ = writeln!(o, "registry.tag_ttl           = {}", d(c.registry.tag_ttl));
    let _ = writeln!(
        o,
        "registry.max_manifest_size = {}",
        c.registry.max_manifest_size
    );
    let _ = writeln!(o, "registry.max_blob_size = {}", c.registry.max_blob_size);
    for u in &c.registry.upstreams {
        let auth = auth_summary(&u.username, &u.password_file, &u.password_env);
        let lib = if u.library_prefix() {
            ", library/ prefix"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "registry.upstream {:<16} {} ({auth}{lib})",
            u.name, u.url
        );
    }
    let g = &c.go;
    let _ = writeln!(o, "go.enabled                 = {}", g.enabled);
    let _ = writeln!(o, "go.upstreams               = {}", g.upstreams.join(", "));
    let _ = writeln!(o, "go.list_ttl                = {}", d(g.list_ttl));
    let _ = writeln!(o, "go.not_found_ttl           = {}", d(g.not_found_ttl));
    let _ = writeln!(o, "go.verify                  = {}", g.verify);
    let _ = writeln!(o, "go.sumdb_ttl               = {}", d(g.sumdb_ttl));
    for db in &g.sumdbs {
        let _ = writeln!(o, "go.sumdb {:<25} {} (key {})", db.name, db.url(), db.key);
    }
    for p in &g.private {
        let src = match (&p.dir, &p.url) {
            (Some(dir), _) => format!("directory {}", dir.display()),
            (None, Some(url)) => format!(
                "{url} ({})",
                auth_summary(&p.username, &p.password_file, &p.password_env)
            ),
            _ => "no source".into(),
        };
        let _ = writeln!(o, "go.private {:<23} {src}", p.pattern);
    }
    let _ = writeln!(
        o,
        "egress.allow               = {}",
        c.egress.allow.join(", ")
    );
    let _ = writeln!(
        o,
        "egress                     = connect {}, read {}, max {} redirects, down after {} failures, probe every {}",
        d(c.egress.connect_timeout),
        d(c.egress.read_timeout),
        c.egress.max_redirects,
        c.egress.failure_threshold,
        d(c.egress.probe_interval)
    );
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), o.as_bytes());
}

fn auth_summary(
    user: &Option<String>,
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
) -> String {
    match (user, file, env) {
        (Some(u), Some(f), _) => format!("user {u}, password from file {}", f.display()),
        (Some(u), _, Some(v)) => format!("user {u}, password from ${v}"),
        (Some(u), None, None) => format!("user {u}, no password"),
        _ => "anonymous".into(),
    }
}

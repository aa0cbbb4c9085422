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
        Command::Serve { config, listen } => {
            let mut config = config.load()?;
            if let Some(l) = listen {
                config.listen = l;
            }
            init_tracing(&config);
            serve(config).await
        }
        Command::CheckConfig { config } => {
            let config = config.load()?;
            print_config(&config);
            Ok(ExitCode::SUCCESS)
        }
        Command::Fsck { config, repair } => {
            let config = config.load()?;
            let storage = wharf_storage::Storage::open(&config.data_dir)?;
            let report = wharf_storage::fsck(&storage, repair)?;
            println!("{report}");
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
    tracing::info!(%addr, data_dir = %data_dir.display(), "wharf listening");
    wharf::serve(listener, state, shutdown_signal())
        .await
        .map_err(|source| wharf::Error::Io {
            context: "server error".into(),
            source,
        })?;
    tracing::info!("drained; exiting");
    Ok(ExitCode::SUCCESS)
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

fn print_config(c: &Config) {
    println!("config OK");
    println!("listen            = {}", c.listen);
    println!("data_dir          = {}", c.data_dir.display());
    println!(
        "tag_ttl           = {}",
        humantime::format_duration(c.registry.tag_ttl)
    );
    println!("max_manifest_size = {}", c.registry.max_manifest_size);
    println!("default_upstream  = {}", c.registry.default_upstream);
    for u in &c.registry.upstreams {
        let auth = match (&u.username, &u.password_file, &u.password_env) {
            (Some(user), Some(f), _) => format!("user {user}, password from file {}", f.display()),
            (Some(user), _, Some(v)) => format!("user {user}, password from ${v}"),
            (Some(user), None, None) => format!("user {user}, no password"),
            _ => "anonymous".into(),
        };
        println!(
            "upstream {:<16} {} ({auth}{})",
            u.name,
            u.url,
            if u.library_prefix() {
                ", library/ prefix"
            } else {
                ""
            }
        );
    }
    println!("egress.allow      = {}", c.egress.allow.join(", "));
    println!(
        "egress timeouts   = connect {}, read {}",
        humantime::format_duration(c.egress.connect_timeout),
        humantime::format_duration(c.egress.read_timeout)
    );
}

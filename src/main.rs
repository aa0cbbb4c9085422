//! The `wharf` binary: parse the command line, start the runtime, hand each command to the module
//! that runs it (`wharf::cli` for the server and the checks).

use std::process::ExitCode;

use clap::Parser;
use wharf::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Sockets from systemd are taken before any thread exists: taking them edits the
    // environment (`LISTEN_FDS`, `LISTEN_PID`).
    let activated = match &cli.command {
        Command::Serve { .. } => match wharf::server::listen::from_systemd() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("wharf: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
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
    let result = runtime.block_on(run(cli, activated));
    // Messages the server buffered go out before the last word.
    wharf::web::flush_log();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wharf: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, activated: Option<cli::serve::Activated>) -> Result<ExitCode, wharf::Error> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            offline,
        } => cli::serve::command(&config, listen, offline, activated).await,
        Command::CheckConfig { config } => {
            cli::check::print_config(&config.check(&cli::Overrides::default())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => cli::hash_password(),
        Command::CheckEgress { config, url } => {
            cli::check::check_egress(&config.check(&cli::Overrides::default())?, &url).await
        }
        Command::Gc {
            config,
            shared,
            dry_run,
            target,
        } => {
            let config = cli::load_for_tool(&config)?;
            wharf::gc::command(&config, shared, dry_run, target.as_deref()).await
        }
        Command::Stats {
            config,
            server,
            json,
            watch,
            interval,
            count,
        } => {
            let config = cli::load_for_tool(&config)?;
            if watch {
                let args = wharf::tools::watch::WatchArgs { interval, count };
                return Ok(wharf::tools::watch::command(&config, server.as_deref(), args).await);
            }
            wharf::gc::stats_command(&config, server.as_deref(), json).await
        }
        Command::Prefetch {
            config,
            server,
            platform,
            referrers,
            lists,
            items,
        } => {
            let via = via(&config, &server)?;
            let config = cli::load_for_tool(&config)?;
            wharf::tools::prefetch::command(&config, via, &items, &lists, platform, referrers).await
        }
        Command::Export {
            config,
            server,
            output,
            compress,
            check,
            all,
            pinned,
            lists,
            items,
        } => {
            if let Some(bundle) = check {
                let config = cli::load_for_tool(&config)?;
                return Ok(wharf::tools::check::command(&config, &bundle).await);
            }
            let via = via(&config, &server)?;
            let config = cli::load_for_tool(&config)?;
            let output = output.unwrap_or_default();
            let codec = match compress.as_deref() {
                Some(c) => wharf::tools::source::Codec::parse(c),
                None => Ok(wharf::tools::source::Codec::of_name(&output)),
            };
            let codec = match codec {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("wharf: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let args = wharf::tools::export::ExportArgs {
                items,
                lists,
                all,
                pinned,
                output,
                codec,
            };
            wharf::tools::export::command(&config, via, args).await
        }
        Command::Import {
            config,
            server,
            name,
            inputs,
        } => {
            let via = via(&config, &server)?;
            let config = cli::load_for_tool(&config)?;
            let args = wharf::tools::import::ImportArgs { inputs, name };
            wharf::tools::import::command(&config, via, args).await
        }
        Command::ClientConfig {
            config,
            url,
            ca,
            out,
        } => {
            let name = config_name(&config);
            let config = cli::load_for_tool(&config)?;
            wharf::tools::client_config::command(
                &config,
                &name,
                url.as_deref(),
                ca.as_deref(),
                out.as_deref(),
            )
        }
        Command::Doctor {
            url,
            config,
            ca,
            user,
            password_file,
            token_file,
        } => {
            let (url, url_note) = match url {
                Some(u) => (u, None),
                None => doctor_url(&config)?,
            };
            let args = wharf::tools::doctor::DoctorArgs {
                url,
                url_note,
                ca,
                user,
                password_file,
                token_file,
            };
            let report = wharf::tools::doctor::run(&args).await;
            let _ = std::io::Write::write_all(&mut std::io::stdout(), report.render().as_bytes());
            Ok(if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Fsck { config, repair } => cli::fsck(&config.load()?, repair),
    }
}

/// The URL `wharf doctor` checks when none is given: this config's, with where it came from.
fn doctor_url(config: &cli::ConfigArgs) -> Result<(String, Option<String>), wharf::Error> {
    let name = config_name(config);
    let config = cli::load_for_tool(config)?;
    let ep = wharf::tools::client_config::Endpoint::of(
        &config,
        None,
        wharf::tools::client_config::host_name,
    )
    .map_err(|m| wharf::Error::Config(wharf::config::ConfigError::Invalid(m)))?;
    let mut note = format!("from {name}");
    for n in &ep.notes {
        note += &format!("; {n}");
    }
    Ok((ep.base, Some(note)))
}

/// The config file a command read, for messages.
fn config_name(config: &cli::ConfigArgs) -> String {
    config.config.as_ref().map_or_else(
        || "the built-in defaults".into(),
        |p| p.display().to_string(),
    )
}

/// Where an air-gap command works, from `--server` and an explicit `--data-dir`.
fn via<'a>(
    config: &cli::ConfigArgs,
    server: &'a cli::ServerArg,
) -> Result<wharf::tools::client::Via<'a>, wharf::Error> {
    wharf::tools::client::Via::of(server.server.as_deref(), config.data_dir.is_some())
        .map_err(|m| wharf::Error::Config(wharf::config::ConfigError::Invalid(m)))
}

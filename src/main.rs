//! The `wharf` binary: parse the command line, start the runtime, hand each command to the module
//! that runs it (`wharf::cli` for the server and the checks).

use std::process::ExitCode;

use clap::Parser;
use wharf::cli::{self, Cli, Command};

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
        } => cli::serve::command(&config, listen, offline).await,
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
        Command::Stats { config, json } => {
            let config = cli::load_for_tool(&config)?;
            wharf::gc::stats_command(&config, json).await
        }
        Command::Prefetch {
            config,
            server,
            platform,
            lists,
            items,
        } => {
            let via = via(&config, &server)?;
            let config = cli::load_for_tool(&config)?;
            wharf::tools::prefetch::command(&config, via, &items, &lists, platform).await
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
            let via = via(&config, &server)?;
            let config = cli::load_for_tool(&config)?;
            let args = wharf::tools::export::ExportArgs {
                items,
                lists,
                all,
                pinned,
                output,
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
        Command::Fsck { config, repair } => cli::fsck(&config.load()?, repair),
    }
}

/// Where an air-gap command works, from `--server` and an explicit `--data-dir`.
fn via<'a>(
    config: &cli::ConfigArgs,
    server: &'a cli::ServerArg,
) -> Result<wharf::tools::client::Via<'a>, wharf::Error> {
    wharf::tools::client::Via::of(server.server.as_deref(), config.data_dir.is_some())
        .map_err(|m| wharf::Error::Config(wharf::config::ConfigError::Invalid(m)))
}

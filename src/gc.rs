//! Eviction and statistics (being written).

use std::process::ExitCode;

use crate::config::Config;
use crate::error::Error;

pub async fn command(config: &Config, dry_run: bool, target: Option<&str>) -> Result<ExitCode, Error> {
    let _ = (config, dry_run, target);
    Ok(ExitCode::SUCCESS)
}

pub async fn stats_command(config: &Config, json: bool) -> Result<ExitCode, Error> {
    let _ = (config, json);
    Ok(ExitCode::SUCCESS)
}

//! Command line: clap derive, how flags override the config file (flags win), and the commands
//! that are not a client of the server (`serve`, the checks, `hash-password`, `fsck`). `main.rs`
//! only dispatches: it sits above every command, which `tests/architecture.rs` requires of
//! whatever calls `prefetch` and the bundle tools (the same layer as `cli`).
//!
//! | module  | owns                                                           |
//! |---------|----------------------------------------------------------------|
//! | `serve` | `wharf serve`: listener, TLS and its reload, shutdown, logging |
//! | `check` | `check-config` and `check-egress` reports                      |

pub mod check;
pub mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::Checked;
use crate::config::{Config, ConfigError};
use crate::error::Error;

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "A pull-through mirror for container images and Go modules"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args, Clone, Default)]
pub struct ConfigArgs {
    /// Config file (TOML). Without one, built-in defaults are used.
    #[arg(long, short, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, env = "WHARF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mirror.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on (overrides `listen`), e.g. 0.0.0.0:5000 or
        /// unix:/run/wharf/wharf.sock. Under socket activation the inherited sockets are used.
        #[arg(long, env = "WHARF_LISTEN")]
        listen: Option<crate::config::ListenAddr>,
        /// Never contact an upstream; serve only what is cached (overrides `offline`).
        #[arg(long)]
        offline: bool,
    },
    /// Load and validate the config, then print the effective settings.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print an argon2 hash of a password (read from standard input) for access.user.password_hash.
    HashPassword,
    /// Show what the egress policy decides for a URL, and why.
    CheckEgress {
        #[command(flatten)]
        config: ConfigArgs,
        /// The URL wharf would fetch, e.g. https://ghcr.io/v2/.
        url: String,
    },
    /// Evict least-recently-used unpinned content down to the cache budget (cache.max_size), or
    /// with --shared from the shared tier's bucket (shared.max_size).
    Gc {
        #[command(flatten)]
        config: ConfigArgs,
        /// Evict from the shared tier's bucket instead of this data directory.
        #[arg(long)]
        shared: bool,
        /// Print what would be removed and how much it would free, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evict down to this size instead of the configured low watermark (e.g. 10GiB).
        #[arg(long)]
        target: Option<String>,
    },
    /// Print what the cache holds: bytes, objects, pinned, per-upstream and top content; or,
    /// with --watch, the running server's live numbers until Ctrl-C.
    Stats {
        #[command(flatten)]
        config: ConfigArgs,
        /// The running wharf to ask (default: the config's listen address).
        #[arg(long, env = "WHARF_SERVER")]
        server: Option<String>,
        /// Machine-readable output.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Keep showing the running server's request rate, hit ratio, bytes in and out, fills,
        /// connections, disk and upstream states, refreshed every --interval (read from its
        /// /metrics), until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes, e.g. 1s or 500ms.
        #[arg(long, default_value = "1s", value_parser = crate::tools::watch::parse_interval)]
        interval: std::time::Duration,
        /// Stop --watch after this many refreshes (tests, scripts).
        #[arg(long, hide = true, requires = "watch")]
        count: Option<u64>,
    },
    /// Fetch images and Go modules into the cache now, and pin them (works while wharf serves).
    Prefetch {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        server: ServerArg,
        /// Only this platform of multi-platform images, e.g. linux/amd64 (default: all).
        #[arg(long)]
        platform: Option<crate::bundle::Platform>,
        /// Also each image's referrers: signatures, SBOMs and attestations (the OCI referrers
        /// API and cosign's sha256-<hex>.sig/.att/.sbom tags), fetched, verified and pinned.
        #[arg(long)]
        referrers: bool,
        /// A file listing images and module@version, one a line (# comments).
        #[arg(long = "file", short = 'f')]
        lists: Vec<PathBuf>,
        /// Images (docker.io/library/alpine:3.20), modules (golang.org/x/text@v0.14.0), or the
        /// path of a go.mod or go.sum whose modules to fetch.
        items: Vec<String>,
    },
    /// Write cached images and modules into one bundle file for an air-gapped wharf.
    Export {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        server: ServerArg,
        /// The bundle file to write: a tar, compressed by its name (`.tar.zst`, `.tar.gz`) or
        /// by --compress.
        #[arg(
            long,
            short,
            required_unless_present = "check",
            conflicts_with = "check"
        )]
        output: Option<PathBuf>,
        /// Compression of the bundle: zstd, gzip or none (default: from the file name).
        #[arg(long, value_name = "zstd|gzip|none")]
        compress: Option<String>,
        /// Check a bundle file as `wharf import` would, without importing it; nothing else.
        #[arg(long, value_name = "BUNDLE")]
        check: Option<PathBuf>,
        /// Every tag and module version in the cache.
        #[arg(long)]
        all: bool,
        /// Everything pinned (what prefetch and import brought).
        #[arg(long)]
        pinned: bool,
        /// A file listing images and module@version, one a line.
        #[arg(long = "file", short = 'f')]
        lists: Vec<PathBuf>,
        /// Images and module@version to export (or a go.mod / go.sum).
        items: Vec<String>,
    },
    /// Verify and load a bundle, OCI layout, go module cache directory or docker save tarball.
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        server: ServerArg,
        /// For OCI layouts whose image names are bare tags: the image to file them under, e.g.
        /// docker.io/library/alpine.
        #[arg(long)]
        name: Option<String>,
        /// What to import: files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Print the client configuration for this wharf (containerd hosts.toml, registries.conf,
    /// Docker's daemon.json, the Go environment), or write it into a directory.
    ClientConfig {
        #[command(flatten)]
        config: ConfigArgs,
        /// The URL clients reach wharf at (default: listen, https with [tls]; for 0.0.0.0 or
        /// [::], this machine's host name).
        #[arg(long)]
        url: Option<String>,
        /// wharf's CA certificate (PEM), for clients to trust when it is a private CA.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Write the files under this directory (new or empty) instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check, from a client machine, that wharf can be used from here: connection, TLS,
    /// authentication, upstreams, the checksum-database route, the go command's settings.
    Doctor {
        /// wharf's URL (default: from the config, as client-config derives it).
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
        /// A CA certificate (PEM) to trust besides the system's, for a private CA.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A wharf user (also WHARF_USER); the password comes from --password-file or
        /// WHARF_PASSWORD.
        #[arg(long)]
        user: Option<String>,
        /// A file holding the user's password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// A file holding a wharf token (also WHARF_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Check every indexed blob against its digest; report orphans and dangling records.
    Fsck {
        #[command(flatten)]
        config: ConfigArgs,
        /// Rebuild blob records from disk and drop records whose blob is gone or corrupt.
        #[arg(long)]
        repair: bool,
    },
}

/// Where the air-gap commands find the server.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct ServerArg {
    /// A running wharf to work through (default: the config's listen address, if one answers
    /// there; otherwise the data directory is opened directly).
    #[arg(long, env = "WHARF_SERVER")]
    pub server: Option<String>,
}

impl ConfigArgs {
    /// The config file (or defaults) with these flags applied, validated: for the commands that
    /// need no runtime objects.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config = self.merged(&Overrides::default())?;
        config.validate()?;
        Ok(config)
    }

    /// The config with these flags applied, checked once with its runtime objects built: what
    /// `serve`, `check-config` and `check-egress` run on.
    pub fn check(&self, o: &Overrides) -> Result<Checked, Error> {
        Checked::new(self.merged(o)?)
    }

    /// The one place flags meet the file: every flag applied, not yet validated.
    fn merged(&self, o: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::read(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(l) = &o.listen {
            config.listen = crate::config::Listen(vec![l.clone()]);
        }
        config.offline |= o.offline;
        Ok(config)
    }
}

/// Flags of `wharf serve` that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<crate::config::ListenAddr>,
    pub offline: bool,
}

/// The config of a command whose own output is the report, with logging for warnings only.
pub fn load_for_tool(args: &ConfigArgs) -> Result<Config, Error> {
    let config = args.load()?;
    init_cli_tracing();
    Ok(config)
}

/// `wharf hash-password`: an argon2 hash of the password on standard input.
pub fn hash_password() -> Result<ExitCode, Error> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|source| Error::Io {
            context: "cannot read the password from standard input".into(),
            source,
        })?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("wharf: give the password on standard input, e.g. `wharf hash-password < file`");
        return Ok(ExitCode::from(2));
    }
    let hash = crate::access::hash_password(password)
        .map_err(|m| Error::Config(ConfigError::Invalid(m)))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// `wharf fsck`: the report on standard output; failure if it found problems it did not repair.
pub fn fsck(config: &Config, repair: bool) -> Result<ExitCode, Error> {
    let storage = wharf_storage::Storage::open(&config.data_dir)?;
    let report = wharf_storage::fsck(&storage, repair)?;
    let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("{report}\n").as_bytes());
    Ok(if report.is_clean() || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Warnings and errors only, for commands whose own output is the report.
fn init_cli_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Colour codes in logs only on a terminal, never under the journal (`JOURNAL_STREAM`) or in a
/// file, and not when `NO_COLOR` is set.
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
        && std::env::var_os("JOURNAL_STREAM").is_none()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

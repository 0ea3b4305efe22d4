//! Command-line interface: subcommands, and flags that override
//! configuration fields.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use conclave_config::{Config, ConfigSources, EXAMPLE_TOML};
use conclave_server::secrets::ServerSecrets;

/// Exit code for an invalid configuration, distinct from runtime failure so
/// scripts can tell "fix your config" from "the server crashed".
const EXIT_INVALID_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "conclave",
    version,
    about = "Conclave: self-hosted messaging, collaborative documents and secure calls in one server",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (embedded SQLite in ./conclave-data unless configured otherwise).
    Serve(ServeArgs),
    /// Write a complete, commented example configuration to FILE ('-' for stdout).
    GenerateConfig {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a configuration file; report every problem with its field.
    ValidateConfig { file: PathBuf },
    /// Print the effective configuration (file + environment + flags), secrets redacted.
    ShowConfig(ConfigArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate(ConfigArgs),
    /// Talk to a running server: register, log in, call routes, listen to events.
    Client(crate::client_cli::ClientArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Development mode: debug-level, human-readable (pretty) logs.
    #[arg(long, conflicts_with = "quiet")]
    pub dev: bool,
    /// Log warnings and errors only.
    #[arg(long)]
    pub quiet: bool,
}

/// The configuration file and the flags that override its fields.
#[derive(Args, Debug, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "CONCLAVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address all listeners bind to [server.bind].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// HTTP port: API, WebSocket, documents, files [server.http_port].
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Operations port: /health, /ready, /metrics [server.admin_port].
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,
    /// gRPC port [server.grpc_port].
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// TCP + Noise port [server.tcp_port].
    #[arg(long, value_name = "PORT")]
    pub tcp_port: Option<u16>,
    /// QUIC port (UDP) [server.quic_port].
    #[arg(long, value_name = "PORT")]
    pub quic_port: Option<u16>,
    /// Log level or filter directives [log.level].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format [log.format].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Concurrent client connections [server.max_connections].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormatArg {
    Pretty,
    Compact,
    Json,
}

impl LogFormatArg {
    fn as_str(self) -> &'static str {
        match self {
            LogFormatArg::Pretty => "pretty",
            LogFormatArg::Compact => "compact",
            LogFormatArg::Json => "json",
        }
    }
}

impl ConfigArgs {
    /// The layers to merge: this file, the process environment, these flags.
    fn sources(&self) -> ConfigSources {
        let mut sources = ConfigSources {
            file: self.config.clone(),
            env: std::env::vars().collect(),
            flags: Vec::new(),
        };
        if let Some(dir) = &self.data_dir {
            sources.flag("data_dir", "--data-dir", dir.display().to_string());
        }
        if let Some(bind) = self.bind {
            sources.flag("server.bind", "--bind", bind.to_string());
        }
        let ports = [
            ("server.http_port", "--http-port", self.http_port),
            ("server.admin_port", "--admin-port", self.admin_port),
            ("server.grpc_port", "--grpc-port", self.grpc_port),
            ("server.tcp_port", "--tcp-port", self.tcp_port),
            ("server.quic_port", "--quic-port", self.quic_port),
        ];
        for (field, flag, port) in ports {
            if let Some(port) = port {
                sources.flag(field, flag, i64::from(port));
            }
        }
        if let Some(level) = &self.log_level {
            sources.flag("log.level", "--log-level", level.clone());
        }
        if let Some(format) = self.log_format {
            sources.flag("log.format", "--log-format", format.as_str());
        }
        if let Some(max) = self.max_connections {
            sources.flag(
                "server.max_connections",
                "--max-connections",
                i64::from(max),
            );
        }
        sources
    }
}

pub fn run(cli: Cli, dotenv_loaded: bool) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Client(args) => crate::client_cli::run(args),
        Command::GenerateConfig { file, force } => generate_config(&file, force),
        Command::ValidateConfig { file } => Ok(validate_config(&file)),
        Command::ShowConfig(args) => {
            let Some(config) = load_or_report(args.sources()) else {
                return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
            };
            show_config(&config);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            let Some(config) = load_or_report(args.sources()) else {
                return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
            };
            runtime()?.block_on(migrate(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let mut sources = args.config.sources();
            // --dev and --quiet are shorthands; explicit --log-* flags win.
            if args.dev {
                if args.config.log_level.is_none() {
                    sources.flag("log.level", "--dev", "debug");
                }
                if args.config.log_format.is_none() {
                    sources.flag("log.format", "--dev", "pretty");
                }
            }
            if args.quiet && args.config.log_level.is_none() {
                sources.flag("log.level", "--quiet", "warn");
            }
            let Some(config) = load_or_report(sources) else {
                return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
            };
            conclave_server::logging::init(&config.log)?;
            if dotenv_loaded {
                tracing::debug!("loaded variables from .env");
            }
            runtime()?.block_on(conclave_server::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("conclave")
        .build()
        .context("starting the async runtime")
}

fn load_or_report(sources: ConfigSources) -> Option<Config> {
    match conclave_config::load(&sources) {
        Ok(config) => Some(config),
        Err(errors) => {
            eprint!("{errors}");
            None
        }
    }
}

fn generate_config(file: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if file == Path::new("-") {
        print!("{EXAMPLE_TOML}");
        return Ok(ExitCode::SUCCESS);
    }
    if file.exists() && !force {
        eprintln!(
            "error: {} exists; pass --force to replace it",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    std::fs::write(file, EXAMPLE_TOML).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// Validates the file on its own (over the defaults), so the verdict does
/// not depend on the shell it is run from.
fn validate_config(file: &Path) -> ExitCode {
    let sources = ConfigSources {
        file: Some(file.to_path_buf()),
        ..ConfigSources::default()
    };
    match conclave_config::load(&sources) {
        Ok(_) => {
            println!("{} is valid", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{}: {errors}", file.display());
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

fn show_config(config: &Config) {
    print!("{}", config.to_redacted_toml());
    // Fingerprints only: enough to tell whether two nodes or two starts use
    // the same keys, useless to an attacker.
    match ServerSecrets::peek(&config.data_dir) {
        Some(secrets) => {
            println!();
            println!("# secrets in {}/secrets", config.data_dir.display());
            println!(
                "# token key fingerprint: {}",
                secrets.token_key_fingerprint()
            );
            println!("# noise public key: {}", secrets.noise_public_hex());
        }
        None => {
            println!();
            println!(
                "# secrets: not generated yet (first `conclave serve` creates them in {}/secrets)",
                config.data_dir.display()
            );
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let storage = conclave_server::open_storage(config).await?;
    let applied = storage.applied_migrations().await?;
    println!(
        "database {} ({}) is up to date:",
        config.database_url(),
        storage.backend()
    );
    for migration in applied {
        println!("  {:>4}  {}", migration.version, migration.description);
    }
    storage.close().await;
    Ok(())
}

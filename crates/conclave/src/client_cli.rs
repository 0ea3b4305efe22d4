//! `conclave client`: talk to a running server from a terminal, over the
//! same protocol and SDK the applications use.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use conclave_client::{ClientError, Connection, Encoding, HttpClient};

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Server HTTP address.
    #[arg(
        long,
        env = "CONCLAVE_CLIENT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create an account; prints the tokens as JSON.
    Register {
        #[arg(long)]
        username: String,
        #[arg(long, env = "CONCLAVE_CLIENT_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Log in as a new device; prints the tokens as JSON.
    Login {
        #[arg(long)]
        username: String,
        #[arg(long, env = "CONCLAVE_CLIENT_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Call any route with a JSON body; prints the response body.
    Call {
        /// The route, e.g. `account/user/detail`.
        route: String,
        /// The request body as JSON (default `{}`).
        body: Option<String>,
        #[arg(long, env = "CONCLAVE_CLIENT_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Connect and print pushed events, one JSON object per line.
    Listen {
        #[arg(long, env = "CONCLAVE_CLIENT_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, value_enum, default_value = "json")]
        encoding: EncodingArg,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds without an event.
        #[arg(long)]
        idle_secs: Option<u64>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum EncodingArg {
    Json,
    Binary,
}

pub fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let http = HttpClient::new(&args.server);
    let outcome = match args.command {
        ClientCommand::Register {
            username,
            password,
            device_name,
        } => http
            .register(&username, &password, device_name.as_deref())
            .await
            .map(|grant| serde_json::to_value(grant).unwrap_or_default()),
        ClientCommand::Login {
            username,
            password,
            device_name,
        } => http
            .login(&username, &password, device_name.as_deref())
            .await
            .map(|grant| serde_json::to_value(grant).unwrap_or_default()),
        ClientCommand::Call { route, body, token } => {
            let body: serde_json::Value = match body.as_deref() {
                Some(text) => serde_json::from_str(text).context("the body is not valid JSON")?,
                None => serde_json::json!({}),
            };
            let http = match token {
                Some(token) => http.with_token(token),
                None => http,
            };
            http.call_raw(&route, body).await
        }
        ClientCommand::Listen {
            token,
            encoding,
            count,
            idle_secs,
        } => return listen(&args.server, &token, encoding, count, idle_secs).await,
    };
    Ok(report(outcome))
}

async fn listen(
    server: &str,
    token: &str,
    encoding: EncodingArg,
    count: Option<u64>,
    idle_secs: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let encoding = match encoding {
        EncodingArg::Json => Encoding::Json,
        EncodingArg::Binary => Encoding::Binary,
    };
    let mut connection = match Connection::connect_ws(server, token, encoding).await {
        Ok(connection) => connection,
        Err(err) => return Ok(report(Err(err))),
    };
    eprintln!("listening for events (Ctrl-C to stop)");
    let mut seen = 0u64;
    // Without --idle-secs, wait as long as the connection lives.
    let idle = Duration::from_secs(idle_secs.unwrap_or(u64::MAX / 4));
    while count.is_none_or(|max| seen < max) {
        let event = tokio::select! {
            event = connection.next_event_timeout(idle) => event,
            _ = tokio::signal::ctrl_c() => break,
        };
        match event {
            Ok(Some(event)) => {
                let line = serde_json::json!({
                    "event": event.name,
                    "channel_id": event.channel_id,
                    "pts": event.pts,
                    "body": event.raw_body,
                });
                println!("{line}");
                seen += 1;
            }
            Ok(None) => {
                if let Some(goaway) = connection.goaway() {
                    eprintln!("closed by the server: {} ({})", goaway.code, goaway.message);
                }
                return Ok(ExitCode::FAILURE);
            }
            Err(ClientError::Timeout(_)) => break,
            Err(err) => return Ok(report(Err(err))),
        }
    }
    connection.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Prints a result as JSON: the body on stdout, or the error on stderr
/// (exit status 1).
fn report(outcome: Result<serde_json::Value, ClientError>) -> ExitCode {
    match outcome {
        Ok(body) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            let shown = match &err {
                ClientError::Api { code, message, .. } => serde_json::json!({
                    "error": { "code": code, "message": message }
                }),
                other => {
                    serde_json::json!({ "error": { "code": "client_error", "message": other.to_string() } })
                }
            };
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    }
}

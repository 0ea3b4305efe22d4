//! `conclave-bench`: the load generator. See the crate documentation and
//! BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use conclave_bench::scenarios::catchup::{self, CatchupOptions};
use conclave_bench::scenarios::connections::{self, ConnectionsOptions};
use conclave_bench::scenarios::direct::{self, DirectOptions};
use conclave_bench::scenarios::docs::{self, DocsOptions};
use conclave_bench::scenarios::group::{self, GroupOptions};
use conclave_bench::{Outcome, Progress, Report, Target};
use serde::Serialize;

/// mimalloc, like the server: the generator shares the machine with the
/// server, and glibc's malloc made it a heavier neighbour than it need be.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when a run lost, duplicated or reordered messages (or a
/// call failed).
const EXIT_FAILED_VERIFICATION: u8 = 1;
/// Exit status when the run could not be set up or its report written.
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "conclave-bench",
    version,
    about = "Load generator for a running Conclave server",
    long_about = "Drives a running Conclave server over the real protocol (HTTP, WebSocket, \
                  TCP+Noise) through the client SDK. Prints a results table, writes the raw \
                  numbers with the exact configuration to a JSON file (and SVG charts beside \
                  it), and exits non-zero on any lost, duplicated or out-of-order message."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N idle authenticated connections: server memory per connection and
    /// idle CPU.
    Connections {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        options: ConnectionsOptions,
    },
    /// 1:1 messages between pairs of users: latency (send->ack,
    /// send->delivery) and persisted+delivered messages per second.
    Direct {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        options: DirectOptions,
    },
    /// Offline devices reconnect at once and catch up by sync: time until
    /// every device is current.
    Catchup {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        options: CatchupOptions,
    },
    /// Fan-out in group channels: every member listens, some send;
    /// latency (send->ack, send->delivery at every member) and delivered
    /// events per second.
    Group {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        options: GroupOptions,
    },
    /// Collaborative documents: clients edit shared Yjs documents over
    /// y-websocket (`/collab/<name>`); update latency at every other
    /// client, updates and deliveries per second, server memory per
    /// loaded document.
    Docs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        options: DocsOptions,
    },
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize)]
struct Common {
    /// The server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's TCP+Noise address (for `--transport tcp`).
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// The server's operations URL, to read `/metrics` (memory, CPU,
    /// connection count), e.g. http://127.0.0.1:9090.
    #[arg(long)]
    admin: Option<String>,
    /// The server's process id, to read its memory and CPU from /proc
    /// (preferred over --admin for those two).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Where to write the JSON results (default: conclave-bench-<scenario>.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to write the SVG charts (default: beside --out).
    #[arg(long)]
    chart_dir: Option<PathBuf>,
    /// No progress bars (e.g. in CI logs).
    #[arg(long)]
    no_progress: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.scenario).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED_VERIFICATION),
        Err(err) => {
            eprintln!("conclave-bench: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Runs a scenario; `Ok(false)` when it ran but failed verification.
async fn run(scenario: Scenario) -> anyhow::Result<bool> {
    match scenario {
        Scenario::Connections { common, options } => {
            let target = target(&common).await?;
            let progress = Progress::new(!common.no_progress);
            let result = connections::run(&target, &options, &progress).await?;
            finish(&common, &options, &target, &result)
        }
        Scenario::Direct { common, options } => {
            let target = target(&common).await?;
            let progress = Progress::new(!common.no_progress);
            let result = direct::run(&target, &options, &progress).await?;
            finish(&common, &options, &target, &result)
        }
        Scenario::Catchup { common, options } => {
            let target = target(&common).await?;
            let progress = Progress::new(!common.no_progress);
            let result = catchup::run(&target, &options, &progress).await?;
            finish(&common, &options, &target, &result)
        }
        Scenario::Group { common, options } => {
            let target = target(&common).await?;
            let progress = Progress::new(!common.no_progress);
            let result = group::run(&target, &options, &progress).await?;
            finish(&common, &options, &target, &result)
        }
        Scenario::Docs { common, options } => {
            let target = target(&common).await?;
            let progress = Progress::new(!common.no_progress);
            let result = docs::run(&target, &options, &progress).await?;
            finish(&common, &options, &target, &result)
        }
    }
}

async fn target(common: &Common) -> anyhow::Result<Target> {
    Target::connect(
        &common.server,
        common.tcp,
        common.admin.clone(),
        common.server_pid,
    )
    .await
}

/// Prints the table, writes the JSON and the charts, and says whether the
/// run passed.
fn finish<O: Serialize, R: Outcome>(
    common: &Common,
    options: &O,
    target: &Target,
    result: &R,
) -> anyhow::Result<bool> {
    let config = serde_json::json!({
        "common": common,
        "scenario": options,
    });
    let mut report = Report::new(config, target.facts(), result);
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("conclave-bench-{}.json", result.scenario())));
    report.write(&out, common.chart_dir.as_deref())?;
    print!("{}", report.render());
    println!("results: {}", out.display());
    for chart in &report.charts {
        println!("chart:   {}", Path::new(chart).display());
    }
    if !report.passed {
        eprint!("{}", conclave_bench::report::loud_failure(&report.failures));
    }
    Ok(report.passed)
}

//! Every scenario at a tiny size against a real server started in process:
//! no loss, and numbers that make sense. Also writes a report (JSON and
//! charts) the way the binary does.

use std::time::Duration;

use conclave_bench::scenarios::catchup::{self, CatchupOptions};
use conclave_bench::scenarios::connections::{self, ConnectionsOptions};
use conclave_bench::scenarios::direct::{self, DirectOptions};
use conclave_bench::scenarios::docs::{self, DocsOptions};
use conclave_bench::scenarios::group::{self, GroupOptions};
use conclave_bench::scenarios::traffic::{Pacing, Traffic};
use conclave_bench::{Outcome, Progress, Report, Target, Transport};
use conclave_config::Config;
use conclave_server::ServerHandle;

/// How long the server may take to stop at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole smoke run, bounded so a hang fails instead of stalling CI.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(120);

/// The in-process servers of these tests share the process-wide metrics
/// registry, and the connections scenario checks `conclave_connections`
/// there: the tests run one at a time.
static ONE_SERVER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct TestServer {
    handle: ServerHandle,
    target: Target,
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = Config {
            data_dir: data_dir.path().join("data"),
            ..Config::default()
        };
        config.server.bind = [127, 0, 0, 1].into();
        config.server.http_port = 0;
        config.server.admin_port = 0;
        config.server.grpc_port = 0;
        config.server.tcp_port = 0;
        config.server.quic_port = 0;
        config.auth.password_hash_memory_kib = 64;
        config.auth.password_hash_iterations = 1;
        config.auth.max_devices_per_user = 100;
        config.limits.requests_per_ip_per_sec = 1_000_000;
        config.limits.requests_per_ip_burst = 1_000_000;
        config.limits.requests_per_user_per_sec = 1_000_000;
        config.limits.requests_per_user_burst = 1_000_000;
        let handle = conclave_server::start(config)
            .await
            .expect("the server starts");
        let target = Target::connect(
            &format!("http://{}", handle.http_addr),
            Some(handle.tcp_addr),
            Some(format!("http://{}", handle.admin_addr)),
            None,
        )
        .await
        .expect("the server answers /v1/server-info");
        Self {
            handle,
            target,
            _data_dir: data_dir,
        }
    }

    async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(STOP_TIMEOUT, self.handle.stopped())
            .await
            .expect("the server stops");
    }
}

fn assert_passed(outcome: &impl Outcome) {
    let failures = outcome.failures();
    assert!(failures.is_empty(), "{}: {failures:#?}", outcome.scenario());
}

/// Writes the report of a passed run as the binary does, checks it and its
/// two charts, and returns the JSON.
fn write_report(
    target: &Target,
    outcome: &impl Outcome,
    config: serde_json::Value,
) -> serde_json::Value {
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    let out = out_dir.path().join(format!("{}.json", outcome.scenario()));
    let mut report = Report::new(config, target.facts(), outcome);
    report.write(&out, None).expect("the report is written");
    assert!(report.passed);
    assert_eq!(report.charts.len(), 2);
    for chart in &report.charts {
        let svg = std::fs::read_to_string(chart).expect("the chart");
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    }
    assert!(report.render().contains("PASSED"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the JSON file"))
            .expect("valid JSON");
    assert_eq!(json["server"]["name"], "conclave");
    assert!(json["machine"]["nproc"].as_u64().is_some_and(|n| n >= 1));
    json
}

/// `pacing` as fast as the server answers.
fn flat_out(pacing: &Pacing) -> Pacing {
    Pacing {
        rate: None,
        max: true,
        ..pacing.clone()
    }
}

/// Something was acknowledged, and every acknowledged message reached each
/// of `receivers` listeners and is persisted.
fn assert_all_delivered(traffic: &Traffic, receivers: u64) {
    assert!(traffic.acked > 0, "{traffic:?}");
    assert_eq!(traffic.delivered, traffic.acked * receivers);
    assert_eq!(traffic.persisted, traffic.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_small_without_loss() {
    let _alone = ONE_SERVER_AT_A_TIME.lock().await;
    tokio::time::timeout(SMOKE_TIMEOUT, smoke())
        .await
        .expect("the smoke run finishes in time");
}

async fn smoke() {
    let server = TestServer::start().await;
    let target = &server.target;
    let quiet = Progress::hidden();

    // 20 idle connections, half over a chosen source address.
    let idle = connections::run(
        target,
        &ConnectionsOptions {
            count: 20,
            transport: Transport::Ws,
            users: 2,
            devices_per_user: 3,
            hold_secs: 1,
            connect_concurrency: 8,
            source_ips: 2,
            settle_secs: 0,
            keepalive_secs: 20,
        },
        &quiet,
    )
    .await
    .expect("connections runs");
    assert_passed(&idle);
    assert_eq!(idle.opened, 20);
    assert_eq!(idle.source_ips, ["127.0.0.2", "127.0.0.3"]);
    assert!(idle.connect_latency.count == 20 && idle.connect_latency.max_ms > 0.0);
    assert!(
        idle.server_open
            .open_connections
            .is_some_and(|open| open >= 20),
        "{:?}",
        idle.server_open
    );
    assert!(idle.server_rss_per_connection_bytes.is_some());
    assert!(idle.server_rss_per_held_connection_bytes.is_some());

    // The same over TCP+Noise.
    let idle_tcp = connections::run(
        target,
        &ConnectionsOptions {
            count: 6,
            transport: Transport::Tcp,
            users: 1,
            devices_per_user: 2,
            hold_secs: 0,
            connect_concurrency: 4,
            source_ips: 1,
            settle_secs: 0,
            keepalive_secs: 20,
        },
        &quiet,
    )
    .await
    .expect("connections over tcp runs");
    assert_passed(&idle_tcp);
    assert_eq!(idle_tcp.opened, 6);

    // 2 pairs x 1 s at 160 msg/s over WebSocket, then as fast as it goes
    // over TCP. The texts are long enough that the 80 messages of a
    // channel do not fit in one sync/get_difference response: verification
    // must page around the server's 256 KiB limit.
    let paced = DirectOptions {
        pairs: 2,
        transport: Transport::Ws,
        pacing: Pacing {
            rate: Some(160.0),
            max: false,
            duration_secs: 1,
            window: 4,
            text_bytes: 4000,
            drain_secs: 5,
        },
    };
    let direct_ws = direct::run(target, &paced, &quiet)
        .await
        .expect("direct runs");
    assert_passed(&direct_ws);
    let traffic = &direct_ws.traffic;
    assert_eq!(traffic.sent, 160);
    assert_eq!(traffic.acked, 160);
    assert_eq!(traffic.delivered, 160);
    assert_eq!(traffic.persisted, 160);
    // 4 KB texts overflow a count-sized page; the server pages by size
    // instead of refusing, so the harness never has to shrink its pages.
    assert_eq!(traffic.oversized_pages, 0, "{direct_ws:?}");
    let delivery = traffic.delivery_latency;
    assert_eq!(delivery.count, 160);
    assert!(
        delivery.p50_ms > 0.0 && delivery.p50_ms <= delivery.max_ms,
        "{delivery:?}"
    );
    assert!(traffic.delivered_per_sec > 10.0, "{direct_ws:?}");
    assert_eq!(traffic.timelines.delivered.total(), 160);
    // One sender per channel: nothing is pushed to the sending sessions.
    assert_eq!((traffic.sender_pushes, traffic.echoes), (0, 0));

    let flat_out = DirectOptions {
        transport: Transport::Tcp,
        pacing: Pacing {
            text_bytes: 16,
            ..flat_out(&paced.pacing)
        },
        ..paced
    };
    let direct_tcp = direct::run(target, &flat_out, &quiet)
        .await
        .expect("direct --max runs");
    assert_passed(&direct_tcp);
    assert_all_delivered(&direct_tcp.traffic, 1);

    // The report is written as the binary writes it.
    let json = write_report(target, &direct_ws, serde_json::json!({"pairs": 2}));
    assert_eq!(json["results"]["acked"], 160);

    // 5 devices x 50 messages.
    let catch = catchup::run(
        target,
        &CatchupOptions {
            devices: 5,
            events: 50,
            devices_per_user: 3,
            page_size: 7,
            transport: Transport::Ws,
            connect_concurrency: 5,
            writers: 4,
            source_ips: 0,
            request_timeout_secs: 30,
            timeout_secs: 30,
        },
        &quiet,
    )
    .await
    .expect("catchup runs");
    assert_passed(&catch);
    assert_eq!(catch.devices_current, 5);
    assert_eq!(catch.users, 2);
    assert_eq!(catch.channels, 1);
    // Every device fetched all 50 messages of the one channel, in pages.
    assert_eq!(catch.events_fetched, 5 * 50);
    assert!(catch.difference_calls >= 5 * (50 / 7), "{catch:?}");
    assert!(catch.all_current_secs.is_some_and(|s| s > 0.0));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_fan_out_without_loss() {
    let _alone = ONE_SERVER_AT_A_TIME.lock().await;
    tokio::time::timeout(SMOKE_TIMEOUT, group_smoke())
        .await
        .expect("the group run finishes in time");
}

async fn group_smoke() {
    let server = TestServer::start().await;
    let target = &server.target;
    let quiet = Progress::hidden();

    // 2 groups x 4 members, 2 senders each, 40 msg/s over all 4 senders
    // for 2 s: 80 messages, each delivered to the 4 members of its group.
    let paced = GroupOptions {
        groups: 2,
        members: 4,
        senders: 2,
        pacing: Pacing {
            rate: Some(40.0),
            max: false,
            duration_secs: 2,
            window: 4,
            text_bytes: 32,
            drain_secs: 5,
        },
    };
    let fan_out = group::run(target, &paced, &quiet)
        .await
        .expect("group runs");
    assert_passed(&fan_out);
    let traffic = &fan_out.traffic;
    assert_eq!((traffic.senders, traffic.listeners), (4, 8));
    assert_eq!(fan_out.receivers_per_message, 4);
    assert_eq!(fan_out.pushes_per_message, 5);
    assert_eq!(traffic.sent, 80);
    assert_eq!(traffic.acked, 80);
    assert_eq!(traffic.persisted, 80);
    assert_eq!(traffic.delivered, traffic.acked * 4);
    assert_eq!(traffic.delivery_latency.count, 80 * 4);
    assert_eq!(traffic.timelines.delivered.total(), 80 * 4);
    assert_eq!(traffic.check, Default::default());
    // The sending sessions got the other sender's messages, never their own.
    assert!(traffic.sender_pushes > 0, "{fan_out:?}");
    assert_eq!(traffic.echoes, 0);
    assert!(
        (fan_out.messages_per_sec * 4.0 - traffic.delivered_per_sec).abs() < 1e-6,
        "{fan_out:?}"
    );

    let json = write_report(target, &fan_out, serde_json::json!({"groups": 2}));
    assert_eq!(json["results"]["delivered"], 320);
    assert_eq!(json["results"]["receivers_per_message"], 4);

    // As fast as it goes, for a second.
    let flat_out = GroupOptions {
        pacing: Pacing {
            duration_secs: 1,
            ..flat_out(&paced.pacing)
        },
        ..paced
    };
    let fastest = group::run(target, &flat_out, &quiet)
        .await
        .expect("group --max runs");
    assert_passed(&fastest);
    assert_all_delivered(&fastest.traffic, 4);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_edited_without_loss() {
    let _alone = ONE_SERVER_AT_A_TIME.lock().await;
    tokio::time::timeout(SMOKE_TIMEOUT, docs_smoke())
        .await
        .expect("the docs run finishes in time");
}

async fn docs_smoke() {
    let server = TestServer::start().await;
    let target = &server.target;
    let quiet = Progress::hidden();

    // 2 documents x 3 clients, 20 updates/s each for 1 s: 120 updates,
    // each relayed to the 2 other clients of its document.
    let paced = DocsOptions {
        docs: 2,
        clients_per_doc: 3,
        rate: Some(20.0),
        max: false,
        duration_secs: 1,
        chunk_bytes: 24,
        window: 4,
        drain_secs: 5,
        connect_concurrency: 4,
        source_ips: 2,
    };
    let edited = docs::run(target, &paced, &quiet).await.expect("docs runs");
    assert_passed(&edited);
    assert_eq!(edited.clients, 6);
    assert_eq!(edited.sent, 120);
    assert_eq!(edited.deliveries, 240);
    let verified = &edited.verification;
    assert_eq!(verified.docs_checked, 2);
    assert_eq!(
        (verified.texts_differ, verified.server_copy_differs),
        (0, 0)
    );
    assert_eq!(verified.text.expected, 120);
    assert_eq!(verified.text.found, 120);
    assert_eq!(verified.expected_deliveries, 240);
    assert_eq!(edited.delivery_latency.count, 240);
    assert!(
        edited.delivery_latency.p50_ms > 0.0
            && edited.delivery_latency.p50_ms <= edited.delivery_latency.max_ms,
        "{:?}",
        edited.delivery_latency
    );
    assert!(edited.updates_per_sec > 10.0, "{edited:?}");
    assert!(edited.deliveries_per_sec > 20.0, "{edited:?}");
    assert_eq!(edited.timelines.sent.total(), 120);
    assert_eq!(edited.timelines.delivered.total(), 240);
    assert_eq!(edited.source_ips, ["127.0.0.2", "127.0.0.3"]);
    // Each text holds the 60 chunks of its document, 24 bytes each.
    assert!((edited.memory.text_bytes_per_doc - 60.0 * 24.0).abs() < 1e-9);
    assert!(edited.memory.server_docs_loaded.rss_bytes.is_some());
    // Every update was appended to the document's log before it was relayed.
    let appends = edited
        .db_operations
        .iter()
        .find(|op| op.op == "append_update")
        .map_or(0, |op| op.count);
    assert!(appends >= 120, "{:?}", edited.db_operations);

    let json = write_report(target, &edited, serde_json::json!({"docs": 2}));
    assert_eq!(json["results"]["sent"], 120);
    assert_eq!(json["results"]["verification"]["missing_deliveries"], 0);

    // As fast as the server relays, for a second, one document of two.
    let flat_out = DocsOptions {
        docs: 1,
        clients_per_doc: 2,
        rate: None,
        max: true,
        source_ips: 0,
        ..paced
    };
    let fastest = docs::run(target, &flat_out, &quiet)
        .await
        .expect("docs --max runs");
    assert_passed(&fastest);
    assert!(fastest.sent > 0, "{fastest:?}");
    assert_eq!(fastest.deliveries, fastest.sent);
    assert_eq!(fastest.verification.text.found, fastest.sent);

    server.stop().await;
}

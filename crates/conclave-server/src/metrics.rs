//! Prometheus metrics for the server, registered in the process-wide
//! registry (which also carries the `process_*` collector and the storage
//! layer's database histograms).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// Request latency buckets: 100 µs to 10 s.
const REQUEST_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Transports that hold client connections, so every series exists from the
/// first scrape (a missing series reads as "no data", not as zero).
const TRANSPORTS: &[&str] = &["http", "websocket", "tcp", "quic"];

pub(crate) struct Metrics {
    pub connections: IntGaugeVec,
    pub connections_rejected: IntCounterVec,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub documents_open: IntGauge,
    pub bus_dropped: IntCounter,
}

impl Metrics {
    /// The process's series. Several servers in one process (tests) share
    /// them, as they share the registry that `/metrics` renders: a series
    /// of its own would count what no scrape ever shows.
    pub fn shared() -> std::sync::Arc<Self> {
        static SHARED: std::sync::OnceLock<std::sync::Arc<Metrics>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| std::sync::Arc::new(Self::new()))
            .clone()
    }

    fn new() -> Self {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "conclave_build_info",
                "Always 1; labels carry the build's version.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let connections = IntGaugeVec::new(
            Opts::new(
                "conclave_connections",
                "Open client connections, by transport.",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "conclave_connections_rejected_total",
                "Connections refused because server.max_connections was reached.",
            ),
            &["transport"],
        )
        .expect("valid metric");
        for transport in TRANSPORTS {
            connections.with_label_values(&[transport]).set(0);
            connections_rejected
                .with_label_values(&[transport])
                .inc_by(0);
        }
        let requests = IntCounterVec::new(
            Opts::new(
                "conclave_requests_total",
                "Requests handled, by transport, route and outcome (ok, client_error, server_error).",
            ),
            &["transport", "route", "outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "conclave_request_duration_seconds",
                "Time from a request's arrival to its response, by transport and route.",
            )
            .buckets(REQUEST_BUCKETS_SECONDS.to_vec()),
            &["transport", "route"],
        )
        .expect("valid metric");

        let documents_open = IntGauge::new(
            "conclave_documents_open",
            "Collaborative documents loaded in memory (at least one connection each).",
        )
        .expect("valid metric");

        let bus_dropped = IntCounter::new(
            "conclave_cluster_bus_dropped_total",
            "Messages to other nodes dropped because the cluster bus was backed up or down.",
        )
        .expect("valid metric");

        // Registered once: `shared` builds these once per process.
        let registry = prometheus::default_registry();
        let _ = registry.register(Box::new(build_info));
        let _ = registry.register(Box::new(connections.clone()));
        let _ = registry.register(Box::new(connections_rejected.clone()));
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(request_duration.clone()));
        let _ = registry.register(Box::new(documents_open.clone()));
        let _ = registry.register(Box::new(bus_dropped.clone()));
        conclave_storage::register_metrics();
        Self {
            connections,
            connections_rejected,
            requests,
            request_duration,
            documents_open,
            bus_dropped,
        }
    }

    /// Everything in the registry, in the Prometheus text format.
    pub fn render() -> String {
        TextEncoder::new()
            .encode_to_string(&prometheus::gather())
            .unwrap_or_else(|err| format!("# encoding failed: {err}\n"))
    }
}

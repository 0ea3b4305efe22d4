//! Database latency, exported through the process-wide Prometheus registry.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec};

/// Buckets from 50 µs to 2.5 s: SQLite answers in microseconds, a loaded
/// PostgreSQL in milliseconds, and anything past a second is an incident.
const BUCKETS_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

static QUERY_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let histogram = HistogramVec::new(
        HistogramOpts::new(
            "conclave_db_query_duration_seconds",
            "Time spent in database operations, by backend, operation and outcome.",
        )
        .buckets(BUCKETS_SECONDS.to_vec()),
        &["backend", "op", "outcome"],
    )
    .expect("static histogram definition is valid");
    // Registration fails only if the name is taken, which would be a bug
    // caught by the metrics test; the histogram still works unregistered.
    let _ = prometheus::register(Box::new(histogram.clone()));
    histogram
});

static SEND_BATCH: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    let histogram = prometheus::Histogram::with_opts(
        HistogramOpts::new(
            "conclave_db_send_batch_size",
            "Messages stored per group-commit transaction.",
        )
        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
    )
    .expect("static histogram definition is valid");
    let _ = prometheus::register(Box::new(histogram.clone()));
    histogram
});

static BATCH_RETRIES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    let counter = prometheus::IntCounter::new(
        "conclave_db_batch_retries_total",
        "Group commits run again with a savepoint per write, after a write was refused midway.",
    )
    .expect("static counter definition is valid");
    let _ = prometheus::register(Box::new(counter.clone()));
    counter
});

/// Counts a group commit that had to run again with savepoints.
pub(crate) fn count_batch_retry() {
    BATCH_RETRIES.inc();
}

/// Records how many sends one group commit stored.
pub(crate) fn observe_send_batch(size: usize) {
    SEND_BATCH.observe(size as f64);
}

/// Records how long `op` took and whether it failed.
pub(crate) async fn timed<T, E>(
    backend: &'static str,
    op: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = work.await;
    observe(backend, op, result.is_ok(), started);
    result
}

/// Records that `op`, started at `started`, just finished.
pub(crate) fn observe(backend: &'static str, op: &'static str, ok: bool, started: Instant) {
    let outcome = if ok { "ok" } else { "error" };
    QUERY_DURATION
        .with_label_values(&[backend, op, outcome])
        .observe(started.elapsed().as_secs_f64());
}

/// Makes the histogram appear in `/metrics` before the first query.
pub fn register() {
    LazyLock::force(&QUERY_DURATION);
    LazyLock::force(&SEND_BATCH);
    LazyLock::force(&BATCH_RETRIES);
}

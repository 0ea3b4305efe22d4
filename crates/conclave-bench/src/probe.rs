//! What the server process and the machine look like: memory and CPU of the
//! server (from `/proc/<pid>` or its Prometheus `/metrics`), and the facts a
//! report records about the machine.

use std::time::Duration;

use serde::Serialize;

use crate::common::Target;

/// How long a `/metrics` scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Kernel clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on
/// every Linux architecture this runs on).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessSample {
    /// Resident memory.
    pub rss_bytes: Option<u64>,
    /// User + system CPU time since the process started.
    pub cpu_seconds: Option<f64>,
    /// Open client connections the server reports (`conclave_connections`,
    /// all transports).
    pub open_connections: Option<u64>,
    /// Where the memory and CPU figures came from: `proc` or `metrics`.
    pub source: Option<&'static str>,
}

impl ProcessSample {
    /// CPU used between `self` and `later`, as a percentage of one core,
    /// over `elapsed`.
    #[must_use]
    pub fn cpu_percent_until(&self, later: &Self, elapsed: Duration) -> Option<f64> {
        let used = later.cpu_seconds? - self.cpu_seconds?;
        let secs = elapsed.as_secs_f64();
        (secs > 0.0).then(|| 100.0 * used / secs)
    }
}

/// Reads the server: `/proc/<pid>` when its pid is known, `/metrics` for the
/// connection count (and for memory and CPU without a pid).
pub async fn sample_server(target: &Target) -> ProcessSample {
    let mut sample = ProcessSample::default();
    if let Some(admin) = &target.admin_url
        && let Some(text) = scrape(admin).await
    {
        let metrics = parse_metrics(&text);
        sample.rss_bytes = metrics.rss_bytes;
        sample.cpu_seconds = metrics.cpu_seconds;
        sample.open_connections = metrics.open_connections;
        if sample.rss_bytes.is_some() {
            sample.source = Some("metrics");
        }
    }
    if let Some(pid) = target.server_pid
        && let Some((rss, cpu)) = read_proc(&pid.to_string())
    {
        sample.rss_bytes = Some(rss);
        sample.cpu_seconds = Some(cpu);
        sample.source = Some("proc");
    }
    sample
}

/// Reads this process (the load generator) from `/proc/self`.
#[must_use]
pub fn sample_self() -> ProcessSample {
    let mut sample = ProcessSample::default();
    if let Some((rss, cpu)) = read_proc("self") {
        sample.rss_bytes = Some(rss);
        sample.cpu_seconds = Some(cpu);
        sample.source = Some("proc");
    }
    sample
}

async fn scrape(admin: &str) -> Option<String> {
    let url = format!("{admin}/metrics");
    let client = reqwest::Client::new();
    let fetch = async {
        let response = client.get(&url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .ok()
        .flatten()
}

/// RSS (bytes) and CPU seconds of `/proc/{pid}`.
fn read_proc(pid: &str) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, but ends at
    // the last ')'): state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((rss_kib * 1024, (utime + stime) / CLOCK_TICKS_PER_SEC))
}

#[derive(Debug, Default, PartialEq)]
struct Metrics {
    rss_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    open_connections: Option<u64>,
}

/// The few series we read from the Prometheus text format.
fn parse_metrics(text: &str) -> Metrics {
    let mut metrics = Metrics::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let series = name.split('{').next().unwrap_or_default();
        match series {
            "process_resident_memory_bytes" => metrics.rss_bytes = Some(value as u64),
            "process_cpu_seconds_total" => metrics.cpu_seconds = Some(value),
            "conclave_connections" => {
                *metrics.open_connections.get_or_insert(0) += value as u64;
            }
            _ => {}
        }
    }
    metrics
}

/// The server's histogram of database operation times.
const DB_DURATION: &str = "conclave_db_query_duration_seconds";

/// Time the server spent in one kind of database operation, from its
/// `conclave_db_query_duration_seconds` histogram (summed over backends
/// and outcomes). A call's time includes waiting for the database's write
/// lock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DbOperation {
    pub op: String,
    pub count: u64,
    pub total_secs: f64,
}

impl DbOperation {
    /// Mean time per call, in milliseconds.
    #[must_use]
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            1000.0 * self.total_secs / self.count as f64
        }
    }
}

/// The server's database operations so far, from the admin `/metrics`;
/// `None` without `--admin` or when the scrape fails.
pub async fn db_operations(target: &Target) -> Option<Vec<DbOperation>> {
    let text = scrape(target.admin_url.as_ref()?).await?;
    Some(parse_db_operations(&text))
}

/// What happened between two [`db_operations`] readings: operations that
/// ran in between, most time first.
#[must_use]
pub fn db_operations_between(before: &[DbOperation], after: &[DbOperation]) -> Vec<DbOperation> {
    let mut between: Vec<DbOperation> = after
        .iter()
        .filter_map(|now| {
            let earlier = before.iter().find(|then| then.op == now.op);
            let count = now.count - earlier.map_or(0, |then| then.count.min(now.count));
            (count > 0).then(|| DbOperation {
                op: now.op.clone(),
                count,
                total_secs: now.total_secs - earlier.map_or(0.0, |then| then.total_secs),
            })
        })
        .collect();
    between.sort_by(|a, b| b.total_secs.total_cmp(&a.total_secs));
    between
}

fn parse_db_operations(text: &str) -> Vec<DbOperation> {
    let mut ops: std::collections::BTreeMap<String, DbOperation> = Default::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        let Some(field) = name.strip_prefix(DB_DURATION) else {
            continue;
        };
        let Some(op) = label(series, "op") else {
            continue;
        };
        let entry = ops.entry(op.to_owned()).or_insert_with(|| DbOperation {
            op: op.to_owned(),
            ..DbOperation::default()
        });
        match field {
            "_sum" => entry.total_secs += value,
            "_count" => entry.count += value as u64,
            _ => {}
        }
    }
    ops.into_values().collect()
}

/// The value of label `name` in a series like `x{a="1",b="2"}` (values
/// without commas or quotes, as the server's are).
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let labels = series.split_once('{')?.1.strip_suffix('}')?;
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub memory_total_bytes: Option<u64>,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    /// The load generator's soft limit on open files (`ulimit -n`).
    pub open_files_limit: Option<u64>,
    /// `/proc/loadavg` when the report was written: other work on the
    /// machine (e.g. a compiler) skews every number.
    pub load_average: Option<String>,
    pub load_generator_pid: u32,
}

impl Machine {
    #[must_use]
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let memory_total_bytes = read("/proc/meminfo").and_then(|text| {
            let kib: u64 = text
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kib * 1024)
        });
        let cpu_model = read("/proc/cpuinfo").and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        });
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            memory_total_bytes,
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").map(|text| text.trim().to_owned()),
            open_files_limit: open_files_limit(),
            load_average: read("/proc/loadavg").map(|text| text.trim().to_owned()),
            load_generator_pid: std::process::id(),
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
#[must_use]
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_series_it_needs() {
        let text = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
            # TYPE process_resident_memory_bytes gauge\n\
            process_resident_memory_bytes 1.2345e7\n\
            process_cpu_seconds_total 3.25\n\
            conclave_connections{transport=\"http\"} 0\n\
            conclave_connections{transport=\"websocket\"} 7\n\
            conclave_connections{transport=\"tcp\"} 2\n\
            conclave_requests_total{transport=\"http\",route=\"x\",outcome=\"ok\"} 9\n";
        assert_eq!(
            parse_metrics(text),
            Metrics {
                rss_bytes: Some(12_345_000),
                cpu_seconds: Some(3.25),
                open_connections: Some(9),
            }
        );
    }

    #[test]
    fn reads_database_times_by_operation() {
        let before = "# TYPE conclave_db_query_duration_seconds histogram\n\
            conclave_db_query_duration_seconds_bucket{backend=\"sqlite\",op=\"append_update\",outcome=\"ok\",le=\"0.001\"} 3\n\
            conclave_db_query_duration_seconds_sum{backend=\"sqlite\",op=\"append_update\",outcome=\"ok\"} 0.5\n\
            conclave_db_query_duration_seconds_count{backend=\"sqlite\",op=\"append_update\",outcome=\"ok\"} 10\n\
            conclave_db_query_duration_seconds_sum{backend=\"sqlite\",op=\"load_document\",outcome=\"ok\"} 0.25\n\
            conclave_db_query_duration_seconds_count{backend=\"sqlite\",op=\"load_document\",outcome=\"ok\"} 2\n";
        let after = format!(
            "{before}conclave_db_query_duration_seconds_sum{{backend=\"sqlite\",op=\"append_update\",outcome=\"error\"}} 2.5\n\
             conclave_db_query_duration_seconds_count{{backend=\"sqlite\",op=\"append_update\",outcome=\"error\"}} 40\n"
        );
        let before = parse_db_operations(before);
        assert_eq!(before.len(), 2);
        assert_eq!(before[0].op, "append_update");
        assert_eq!(before[0].count, 10);
        assert!((before[0].mean_ms() - 50.0).abs() < 1e-9);
        let between = db_operations_between(&before, &parse_db_operations(&after));
        assert_eq!(between.len(), 1, "load_document did not run: {between:?}");
        assert_eq!(between[0].count, 40);
        assert!((between[0].total_secs - 2.5).abs() < 1e-9);
    }

    #[test]
    fn reads_its_own_process() {
        let me = sample_self();
        assert!(me.rss_bytes.is_some_and(|rss| rss > 0), "{me:?}");
        assert!(me.cpu_seconds.is_some(), "{me:?}");
        assert!(open_files_limit().is_some());
        let machine = Machine::detect();
        assert!(machine.nproc >= 1);
    }

    #[test]
    fn cpu_percent_is_per_core() {
        let before = ProcessSample {
            cpu_seconds: Some(1.0),
            ..ProcessSample::default()
        };
        let after = ProcessSample {
            cpu_seconds: Some(1.5),
            ..ProcessSample::default()
        };
        let percent = before.cpu_percent_until(&after, Duration::from_secs(10));
        assert!(percent.is_some_and(|p| (p - 5.0).abs() < 1e-9));
    }
}

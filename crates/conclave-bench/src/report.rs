//! What a run leaves behind: a results table on standard output, a JSON file
//! with the raw numbers and the exact configuration, and SVG charts.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

use crate::common::ServerFacts;
use crate::probe::Machine;

/// The result of one scenario.
pub trait Outcome: Serialize {
    /// The scenario's name, as on the command line.
    fn scenario(&self) -> &'static str;

    /// Every way the run went wrong: lost, duplicated or out-of-order
    /// messages, failed calls, dropped connections. Empty when it passed.
    fn failures(&self) -> Vec<String>;

    /// The rows of the results table.
    fn table(&self) -> Vec<(String, String)>;

    /// Charts to write: a name (used in the file name) and the SVG.
    fn charts(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// A run, as written to the JSON file.
#[derive(Debug, Serialize)]
pub struct Report<'a, R: Serialize> {
    pub scenario: &'static str,
    /// False on any loss, duplicate, out-of-order delivery or failed call.
    pub passed: bool,
    pub failures: Vec<String>,
    /// Every flag of the run, as given or defaulted.
    pub config: serde_json::Value,
    pub server: ServerFacts,
    pub machine: Machine,
    pub finished_at_unix_secs: u64,
    /// The charts written for this run.
    pub charts: Vec<PathBuf>,
    pub results: &'a R,
}

impl<'a, R: Outcome> Report<'a, R> {
    #[must_use]
    pub fn new(config: serde_json::Value, server: ServerFacts, results: &'a R) -> Self {
        let failures = results.failures();
        Self {
            scenario: results.scenario(),
            passed: failures.is_empty(),
            failures,
            config,
            server,
            machine: Machine::detect(),
            finished_at_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            charts: Vec::new(),
            results,
        }
    }

    /// Writes the charts into `chart_dir` as `{stem}-{name}.svg`, where
    /// `stem` is the JSON file's name without its extension, then the JSON
    /// file itself (which lists the charts).
    ///
    /// # Errors
    ///
    /// When a file cannot be written.
    pub fn write(&mut self, out: &Path, chart_dir: Option<&Path>) -> anyhow::Result<()> {
        let stem = out
            .file_stem()
            .map_or_else(|| "results".into(), |s| s.to_string_lossy().into_owned());
        let dir = chart_dir
            .map(Path::to_path_buf)
            .or_else(|| out.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Some(parent) = out.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        for (name, svg) in self.results.charts() {
            let path = dir.join(format!("{stem}-{name}.svg"));
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            self.charts.push(path);
        }
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }

    /// The results table, with the verdict under it.
    #[must_use]
    pub fn render(&self) -> String {
        let mut rows = vec![
            ("scenario".to_owned(), self.scenario.to_owned()),
            (
                "server".to_owned(),
                format!(
                    "{} {} at {}",
                    self.server.name, self.server.version, self.server.base_url
                ),
            ),
            (
                "machine".to_owned(),
                format!(
                    "{} cpu, {:.1} GiB, load average {}",
                    self.machine.nproc,
                    self.machine.memory_total_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64,
                    self.machine.load_average.as_deref().unwrap_or("n/a")
                ),
            ),
        ];
        rows.extend(self.results.table());
        let mut text = render_table(&rows);
        if self.passed {
            text.push_str("PASSED: every message accounted for.\n");
        } else {
            text.push_str(&loud_failure(&self.failures));
        }
        text
    }
}

/// Two aligned columns.
#[must_use]
pub fn render_table(rows: &[(String, String)]) -> String {
    let width = rows
        .iter()
        .map(|(key, _)| key.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let rule = format!("{}\n", "-".repeat(width + 40));
    out.push_str(&rule);
    for (key, value) in rows {
        out.push_str(&format!("{key:<width$}  {value}\n"));
    }
    out.push_str(&rule);
    out
}

/// The banner printed when a run failed verification.
#[must_use]
pub fn loud_failure(failures: &[String]) -> String {
    let mut text = String::from(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! BENCHMARK FAILED: a benchmark that loses messages has no throughput !!\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
    );
    for failure in failures {
        text.push_str(&format!("  - {failure}\n"));
    }
    text
}

/// A count with thousands separators, for tables.
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in a readable unit.
#[must_use]
pub fn bytes(n: f64) -> String {
    const KIB: f64 = 1024.0;
    if n.abs() >= KIB * KIB * KIB {
        format!("{:.2} GiB", n / (KIB * KIB * KIB))
    } else if n.abs() >= KIB * KIB {
        format!("{:.1} MiB", n / (KIB * KIB))
    } else if n.abs() >= KIB {
        format!("{:.2} KiB", n / KIB)
    } else {
        format!("{n:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(5.0 * 1024.0), "5.00 KiB");
        assert_eq!(bytes(100.0), "100 B");
    }

    #[test]
    fn the_table_aligns() {
        let table = render_table(&[
            ("a".to_owned(), "1".to_owned()),
            ("long key".to_owned(), "2".to_owned()),
        ]);
        assert!(table.contains("a         1\n"), "{table}");
        assert!(loud_failure(&["lost 3".to_owned()]).contains("  - lost 3"));
    }
}

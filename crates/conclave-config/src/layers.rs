//! Merging the configuration layers and reporting every error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use toml::{Table, Value};

use crate::ENV_PREFIX;
use crate::schema::Config;
use crate::validate::validate;

/// Environment variables outside the `CONCLAVE_` prefix that set a field,
/// because every deployment tool already knows them.
const WELL_KNOWN_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "cluster.redis_url"),
    ("NATS_URL", "cluster.nats_url"),
];

/// `CONCLAVE_*` variables that are not configuration fields: the config file
/// location itself, the `conclave client` settings, and variables that point
/// the test suite at services.
const RESERVED_ENV_PREFIXES: &[&str] = &["CONCLAVE_CONFIG", "CONCLAVE_CLIENT_", "CONCLAVE_TEST_"];

/// Upper bound on error-collection passes; each pass removes one bad field,
/// so this is also the most errors reported at once.
const ERRORS_REPORTED_MAX: usize = 64;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field (`server.http_port`), or `(file)` for
    /// problems with the file as a whole.
    pub field: String,
    pub origin: Origin,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (from {})", self.field, self.reason, self.origin)
    }
}

/// Every problem found, in the order found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(
            f,
            "invalid configuration ({count} error{}):",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            writeln!(f, "  - {error}")?;
        }
        Ok(())
    }
}

/// The inputs to [`load`]. Callers gather them (read the process
/// environment, parse flags) so that this crate stays free of global state
/// and tests can supply any combination.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    /// The process environment (or a test's stand-in).
    pub env: Vec<(String, String)>,
    /// Command-line overrides: dotted field path, flag name, value.
    pub flags: Vec<(String, String, Value)>,
}

impl ConfigSources {
    pub fn flag(&mut self, field: &str, flag: &str, value: impl Into<Value>) -> &mut Self {
        self.flags
            .push((field.to_owned(), flag.to_owned(), value.into()));
        self
    }
}

/// Merges the layers (defaults < file < environment < flags) and validates
/// the result, reporting every error rather than the first.
pub fn load(sources: &ConfigSources) -> Result<Config, ConfigErrors> {
    let mut merged = Table::new();
    let mut origins: BTreeMap<String, Origin> = BTreeMap::new();
    let mut errors = Vec::new();

    if let Some(path) = &sources.file {
        match read_file(path) {
            Ok(table) => merge(
                &mut merged,
                table,
                "",
                &Origin::File(path.clone()),
                &mut origins,
            ),
            Err(error) => errors.push(error),
        }
    }
    let defaults = defaults_table();
    for (var, value) in &sources.env {
        let Some(field) = env_field(var) else {
            continue;
        };
        let typed = coerce_env_value(&defaults, &field, value);
        set_path(&mut merged, &field, typed);
        origins.insert(field, Origin::Env(var.clone()));
    }
    for (field, flag, value) in &sources.flags {
        set_path(&mut merged, field, value.clone());
        origins.insert(field.clone(), Origin::Flag(flag.clone()));
    }

    let origin_of = |field: &str| -> Origin {
        origins
            .iter()
            .rev()
            .find(|(path, _)| field == *path || field.starts_with(&format!("{path}.")))
            .or_else(|| {
                origins
                    .iter()
                    .find(|(path, _)| path.starts_with(&format!("{field}.")))
            })
            .map(|(_, origin)| origin.clone())
            .unwrap_or(Origin::Default)
    };

    let mut config = None;
    for _ in 0..ERRORS_REPORTED_MAX {
        match serde_path_to_error::deserialize::<_, Config>(Value::Table(merged.clone())) {
            Ok(parsed) => {
                config = Some(parsed);
                break;
            }
            Err(error) => {
                let reason = error.inner().to_string();
                let path = error.path().to_string();
                let field = offending_field(&merged, &path, &reason);
                errors.push(ConfigError {
                    field: field.clone(),
                    origin: origin_of(&field),
                    reason,
                });
                // Drop the bad field and try again so that the next error,
                // if any, is found too.
                if !remove_path(&mut merged, &field) {
                    break;
                }
            }
        }
    }

    if let Some(config) = &config {
        for (field, reason) in validate(config) {
            if errors.iter().any(|e| e.field == field) {
                continue;
            }
            errors.push(ConfigError {
                origin: origin_of(&field),
                field,
                reason,
            });
        }
    }
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}

fn read_file(path: &PathBuf) -> Result<Table, ConfigError> {
    let origin = Origin::File(path.clone());
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        field: "(file)".to_owned(),
        origin: origin.clone(),
        reason: format!("cannot read: {err}"),
    })?;
    text.parse::<Table>().map_err(|err| ConfigError {
        field: "(file)".to_owned(),
        origin,
        reason: format!("not valid TOML: {}", err.to_string().trim_end()),
    })
}

fn defaults_table() -> Table {
    match Value::try_from(Config::default()) {
        Ok(Value::Table(table)) => table,
        _ => Table::new(),
    }
}

/// Maps `CONCLAVE_SERVER__HTTP_PORT` to `server.http_port` (double
/// underscore separates sections, single underscores stay in names).
fn env_field(var: &str) -> Option<String> {
    if let Some((_, field)) = WELL_KNOWN_ENV.iter().find(|(name, _)| *name == var) {
        return Some((*field).to_owned());
    }
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if rest.is_empty() || RESERVED_ENV_PREFIXES.iter().any(|p| var.starts_with(p)) {
        return None;
    }
    Some(
        rest.to_ascii_lowercase()
            .split("__")
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Environment values are text; give them the type the schema expects so
/// that `CONCLAVE_SERVER__HTTP_PORT=8080` is an integer while
/// `CONCLAVE_LOG__LEVEL=1` stays a string (and fails as a bad level).
fn coerce_env_value(defaults: &Table, field: &str, raw: &str) -> Value {
    let text = Value::String(raw.to_owned());
    match get_path(defaults, field) {
        Some(Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .unwrap_or(text),
        Some(Value::Float(_)) => raw.trim().parse::<f64>().map(Value::Float).unwrap_or(text),
        Some(Value::Boolean(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Boolean(true),
            "false" | "0" | "no" | "off" => Value::Boolean(false),
            _ => text,
        },
        Some(Value::Array(_)) => format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(text),
        _ => text,
    }
}

fn merge(
    into: &mut Table,
    from: Table,
    prefix: &str,
    origin: &Origin,
    origins: &mut BTreeMap<String, Origin>,
) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => {
                merge(existing, incoming, &path, origin, origins);
            }
            (_, Value::Table(incoming)) => {
                let mut fresh = Table::new();
                merge(&mut fresh, incoming, &path, origin, origins);
                into.insert(key, Value::Table(fresh));
                origins.entry(path).or_insert_with(|| origin.clone());
            }
            (_, value) => {
                into.insert(key, value);
                origins.insert(path, origin.clone());
            }
        }
    }
}

fn get_path<'a>(table: &'a Table, field: &str) -> Option<&'a Value> {
    let mut segments = field.split('.');
    let mut current = table.get(segments.next()?)?;
    for segment in segments {
        current = current.as_table()?.get(segment)?;
    }
    Some(current)
}

fn set_path(table: &mut Table, field: &str, value: Value) {
    let segments: Vec<&str> = field.split('.').collect();
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry((*segment).to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            // A scalar where a section belongs: replace it so the flag or
            // variable still lands; the scalar was an error anyway.
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert((*last).to_owned(), value);
}

fn remove_path(table: &mut Table, field: &str) -> bool {
    let segments: Vec<&str> = field.split('.').collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = table;
    for segment in parents {
        match current.get_mut(*segment) {
            Some(Value::Table(next)) => current = next,
            _ => return false,
        }
    }
    current.remove(*last).is_some()
}

/// The dotted path of the field an error is about. serde reports an unknown
/// key at its parent's path, with the key's name in the message.
fn offending_field(merged: &Table, path: &str, reason: &str) -> String {
    let path = if path == "." { "" } else { path };
    if let Some(unknown) = reason
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
    {
        let candidate = if path.is_empty() {
            unknown.to_owned()
        } else if path.ends_with(&format!(".{unknown}")) || path == unknown {
            path.to_owned()
        } else {
            format!("{path}.{unknown}")
        };
        if get_path(merged, &candidate).is_some() {
            return candidate;
        }
    }
    path.to_owned()
}

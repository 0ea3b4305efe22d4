//! Conclave's configuration.
//!
//! One schema ([`Config`]) with defaults, filled from four layers in rising
//! precedence: defaults < TOML file < environment < command-line flags. The
//! layers are merged as TOML tables first and deserialized once, so every
//! layer is validated by the same rules and every error can name the field
//! and the layer it came from.
//!
//! Secrets ([`Secret`], [`SecretUrl`]) never serialize in clear, so printing
//! a `Config` (as `show-config` does) cannot leak them.

mod layers;
mod schema;
mod secret;
mod validate;

pub use layers::{ConfigError, ConfigErrors, ConfigSources, Origin, load};
pub use schema::{
    AuthConfig, BusKind, ClusterConfig, Config, DatabaseConfig, DocumentsConfig, FileConfig,
    LimitsConfig, LogConfig, LogFormat, ServerConfig, StorageKind, StorageSourceConfig, TlsConfig,
};
pub use secret::{Secret, SecretUrl};

/// A complete, commented configuration file holding every default value.
/// `conclave generate-config` writes it; a test proves it parses to
/// [`Config::default`].
pub const EXAMPLE_TOML: &str = include_str!("example.toml");

/// Prefix of environment variables that set configuration fields.
pub const ENV_PREFIX: &str = "CONCLAVE_";

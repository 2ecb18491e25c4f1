//! The agent's TOML file (`--config`): one key per flag, and `[[targets]]`
//! for several servers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::OneOrMany;

/// Which databases' counters a target sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DatabasesValue")]
pub enum Databases {
    /// Every database that allows connections, including ones created later.
    #[default]
    All,
    /// Only these.
    Only(Vec<String>),
}

/// `databases` as TOML writes it: "*" or a list of names.
#[derive(Deserialize)]
#[serde(untagged)]
enum DatabasesValue {
    Text(String),
    List(Vec<String>),
}

impl TryFrom<DatabasesValue> for Databases {
    type Error = String;

    fn try_from(v: DatabasesValue) -> Result<Self, String> {
        match v {
            DatabasesValue::Text(t) => Databases::parse(&t),
            DatabasesValue::List(names) => Databases::from_names(names),
        }
    }
}

impl Databases {
    /// Parses "*" or a comma-separated list of names.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "*" {
            return Ok(Databases::All);
        }
        Databases::from_names(text.split(',').map(|n| n.trim().to_owned()).collect())
    }

    fn from_names(names: Vec<String>) -> Result<Self, String> {
        if names.iter().any(|n| n.is_empty() || n == "*") || names.is_empty() {
            return Err("give \"*\" for every database, or a list of database names".to_owned());
        }
        Ok(Databases::Only(names))
    }
}

/// One `[[targets]]` entry of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    /// The server, as a URL or libpq key/value string.
    pub target: Option<String>,
    /// Its name in the fleet.
    pub server_id: Option<String>,
    /// Its labels; they win over the agent's labels of the same name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Which databases' counters to send.
    pub databases: Option<Databases>,
    /// The admin console of its PgBouncer.
    pub pgbouncer: Option<String>,
    /// The CPUs of its host (see `--server-cpus`).
    pub server_cpus: Option<u32>,
}

/// The agent's config file; every top-level key matches a flag's name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// See `--collector`: one address, or a list to fail over along.
    pub collector: Option<OneOrMany>,
    /// See `--target` (for a single target; use `[[targets]]` for several).
    pub target: Option<String>,
    /// See `--server-id`.
    pub server_id: Option<String>,
    /// See `--databases`.
    pub databases: Option<Databases>,
    /// See `--pgbouncer`.
    pub pgbouncer: Option<String>,
    /// See `--server-cpus`.
    pub server_cpus: Option<u32>,
    /// See `--label`; a flag's label wins over the file's label of the same name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// See `--interval`.
    pub interval: Option<String>,
    /// See `--statement-timeout`.
    pub statement_timeout: Option<String>,
    /// See `--statements-interval`.
    pub statements_interval: Option<String>,
    /// See `--query-text`.
    pub query_text: Option<String>,
    /// See `--pool-reporter-listen`.
    pub pool_reporter_listen: Option<String>,
    /// See `--agent-id`.
    pub agent_id: Option<String>,
    /// See `--spool-max-bytes`.
    pub spool_max_bytes: Option<u64>,
    /// See `--spool-dir`.
    pub spool_dir: Option<PathBuf>,
    /// See `--token-file`.
    pub token_file: Option<PathBuf>,
    /// See `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// See `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// See `--tls-server-name`.
    pub tls_server_name: Option<String>,
    /// See `--compression`.
    pub compression: Option<String>,
    /// Several servers to watch, each with its own server_id and labels.
    #[serde(default)]
    pub targets: Vec<TargetFile>,
}

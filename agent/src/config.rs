//! The agent's settings: flags, then `PGFLEET_*` variables, then the TOML file named
//! by `--config`, then defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{self, SettingsError};
use crate::target;

const EXAMPLES: &str = "\
Examples:
  pgfleet-agent --collector http://127.0.0.1:7600 \\
      --target 'postgres://pgfleet@db1:5432/postgres' --server-id orders-db-1 \\
      --label dc=eu1 --label cluster=orders
  PGHOST=/var/run/postgresql PGUSER=pgfleet pgfleet-agent --collector collector.internal:7600
  pgfleet-agent --config /etc/pgfleet/agent.toml

Every flag can also be set as PGFLEET_<FLAG> (PGFLEET_SERVER_ID=orders-db-1) or as a
key in the config file (server_id = \"orders-db-1\"); a flag wins over the variable,
the variable over the file. The target also honours PGHOST, PGPORT, PGUSER,
PGPASSWORD and PGDATABASE. The agent's role needs `GRANT pg_monitor TO <role>`.";

/// Command-line flags of `pgfleet-agent`.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "pgfleet-agent",
    version,
    about = "Samples PostgreSQL activity every second and streams it to a pgfleet collector.",
    after_help = EXAMPLES
)]
pub struct AgentArgs {
    /// The collector's gRPC address [default: http://127.0.0.1:7600]
    #[arg(long, env = "PGFLEET_COLLECTOR", value_name = "URL")]
    pub collector: Option<String>,
    /// The PostgreSQL server to watch, as a URL or libpq key/value string [default: from PGHOST, PGPORT, …]
    #[arg(long, env = "PGFLEET_TARGET", value_name = "DSN")]
    pub target: Option<String>,
    /// The server's name in the fleet [default: host:port of the target]
    #[arg(long, env = "PGFLEET_SERVER_ID", value_name = "NAME")]
    pub server_id: Option<String>,
    /// A label of the server, repeatable (PGFLEET_LABELS takes a comma-separated list)
    #[arg(
        long = "label",
        env = "PGFLEET_LABELS",
        value_name = "NAME=VALUE",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// How often to sample [default: 1s]
    #[arg(long, env = "PGFLEET_INTERVAL", value_name = "DURATION")]
    pub interval: Option<String>,
    /// The timeout of every statement the agent runs on the target [default: 2s]
    #[arg(long, env = "PGFLEET_STATEMENT_TIMEOUT", value_name = "DURATION")]
    pub statement_timeout: Option<String>,
    /// This agent's stable identity [default: the host name]
    #[arg(long, env = "PGFLEET_AGENT_ID", value_name = "ID")]
    pub agent_id: Option<String>,
    /// The most memory that batches awaiting the collector's ack may hold [default: 64 MiB]
    #[arg(long, env = "PGFLEET_SPOOL_MAX_BYTES", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// A TOML file with any of the settings above
    #[arg(long, env = "PGFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The agent's config file; every key matches a flag's name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// See `--collector`.
    pub collector: Option<String>,
    /// See `--target`.
    pub target: Option<String>,
    /// See `--server-id`.
    pub server_id: Option<String>,
    /// See `--label`; a flag's label wins over the file's label of the same name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// See `--interval`.
    pub interval: Option<String>,
    /// See `--statement-timeout`.
    pub statement_timeout: Option<String>,
    /// See `--agent-id`.
    pub agent_id: Option<String>,
    /// See `--spool-max-bytes`.
    pub spool_max_bytes: Option<u64>,
}

/// The agent's settings, checked and complete.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This agent's stable identity.
    pub agent_id: String,
    /// The collector's gRPC URL.
    pub collector: String,
    /// How to connect to the watched server.
    pub target: tokio_postgres::Config,
    /// The watched server's name in the fleet.
    pub server_id: String,
    /// The watched server's labels.
    pub labels: BTreeMap<String, String>,
    /// How often to sample.
    pub interval: Duration,
    /// The timeout of every statement the agent runs.
    pub statement_timeout: Duration,
    /// The most bytes of batches held while awaiting acks.
    pub spool_max_bytes: usize,
}

/// The shortest and longest sampling interval.
pub const INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

impl AgentConfig {
    /// Settings for `target` with every other setting at its default.
    pub fn new(collector: &str, target: tokio_postgres::Config) -> Self {
        AgentConfig {
            agent_id: default_agent_id(),
            collector: collector.to_owned(),
            server_id: target::default_server_id(&target),
            target,
            labels: BTreeMap::new(),
            interval: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(2),
            spool_max_bytes: 64 << 20,
        }
    }

    /// Resolves flags (and the variables clap read into them), the config file and
    /// defaults; `env` supplies the libpq variables.
    pub fn resolve(
        args: AgentArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let file: AgentFile = settings::read_toml(args.config.as_deref())?;
        let collector = settings::endpoint_url(
            "collector",
            args.collector
                .as_deref()
                .or(file.collector.as_deref())
                .unwrap_or("http://127.0.0.1:7600"),
        )?;
        let pg = target::connection_config(args.target.as_deref().or(file.target.as_deref()), env)?;
        let mut config = AgentConfig::new(&collector, pg);
        if let Some(id) = args.server_id.or(file.server_id) {
            config.server_id = non_empty("server_id", id)?;
        }
        if let Some(id) = args.agent_id.or(file.agent_id) {
            config.agent_id = non_empty("agent_id", id)?;
        }
        for (name, value) in &file.labels {
            settings::check_label(name, value)?;
        }
        config.labels = file.labels;
        config.labels.extend(settings::parse_labels(
            args.labels.iter().map(String::as_str),
        )?);
        if let Some(text) = args.interval.or(file.interval) {
            config.interval = settings::parse_duration("interval", &text, INTERVAL_RANGE)?;
        }
        if let Some(text) = args.statement_timeout.or(file.statement_timeout) {
            config.statement_timeout = settings::parse_duration(
                "statement_timeout",
                &text,
                Duration::from_millis(10)..=Duration::from_secs(60),
            )?;
        }
        if let Some(bytes) = args.spool_max_bytes.or(file.spool_max_bytes) {
            if bytes < 1 << 20 {
                return Err(SettingsError::Invalid {
                    key: "spool_max_bytes",
                    message: format!("{bytes} is too small; give at least 1048576 (1 MiB)"),
                });
            }
            config.spool_max_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        Ok(config)
    }
}

fn non_empty(key: &'static str, value: String) -> Result<String, SettingsError> {
    let value = value.trim().to_owned();
    if value.is_empty() || value.len() > settings::MAX_LABEL_BYTES {
        return Err(SettingsError::Invalid {
            key,
            message: format!(
                "must be between 1 and {} bytes long",
                settings::MAX_LABEL_BYTES
            ),
        });
    }
    Ok(value)
}

/// The host name, which identifies an agent unless `agent_id` is set.
pub fn default_agent_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgfleet-agent".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("pgfleet-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            "collector = \"c1:7600\"\nserver_id = \"from-file\"\ninterval = \"5s\"\n[labels]\ndc = \"eu1\"\nrole = \"primary\"\n",
        )
        .unwrap();
        let args = AgentArgs::parse_from([
            "pgfleet-agent",
            "--config",
            path.to_str().unwrap(),
            "--server-id",
            "from-flag",
            "--label",
            "dc=us2",
        ]);
        let c = AgentConfig::resolve(args, no_env).unwrap();
        assert_eq!(c.server_id, "from-flag");
        assert_eq!(c.collector, "http://c1:7600");
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.labels["dc"], "us2");
        assert_eq!(c.labels["role"], "primary");
        assert_eq!(c.statement_timeout, Duration::from_secs(2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = settings::parse_toml::<AgentFile>(std::path::Path::new("a.toml"), "colector = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.toml") && err.contains("colector"), "{err}");
        let args = AgentArgs::parse_from(["pgfleet-agent", "--interval", "0s"]);
        let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.starts_with("invalid `interval`"), "{err}");
        let args = AgentArgs {
            config: Some("/nonexistent/agent.toml".into()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
        assert!(
            err.contains("cannot read config file /nonexistent/agent.toml"),
            "{err}"
        );
    }
}

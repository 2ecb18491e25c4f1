//! The agent's settings: flags, then `PGFLEET_*` variables, then the TOML file named
//! by `--config`, then defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::sampler::QueryText;
use crate::target;
use pgfleet_common::settings::{self, SettingsError, Token};
use pgfleet_common::tls::{ClientTls, ClientTlsFiles};

/// A setting the config file may give as one value or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `collector = "…"`
    One(String),
    /// `collector = ["…", "…"]`
    Many(Vec<String>),
}

/// How the agent compresses its stream (gRPC message compression).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// zstd: the smallest; the agent falls back to gzip for a collector
    /// without it.
    #[default]
    Zstd,
    /// gzip, which every gRPC implementation has.
    Gzip,
    /// None, for a link where CPU is dearer than bytes.
    None,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        settings::parse_choice(
            "a compression",
            s,
            &[
                ("zstd", Self::Zstd),
                ("gzip", Self::Gzip),
                ("none", Self::None),
            ],
        )
    }
}

impl Compression {
    /// tonic's name for it.
    pub fn encoding(self) -> Option<tonic::codec::CompressionEncoding> {
        use tonic::codec::CompressionEncoding;
        match self {
            Compression::Zstd => Some(CompressionEncoding::Zstd),
            Compression::Gzip => Some(CompressionEncoding::Gzip),
            Compression::None => None,
        }
    }
}

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
    /// The collector's gRPC address; repeat it (or separate with commas) to fail over to the next when one is down [default: http://127.0.0.1:7600]
    #[arg(
        long,
        env = "PGFLEET_COLLECTOR",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub collector: Vec<String>,
    /// The PostgreSQL server to watch, as a URL or libpq key/value string [default: from PGHOST, PGPORT, …]
    #[arg(long, env = "PGFLEET_TARGET", value_name = "DSN")]
    pub target: Option<String>,
    /// The server's name in the fleet [default: host:port of the target]
    #[arg(long, env = "PGFLEET_SERVER_ID", value_name = "NAME")]
    pub server_id: Option<String>,
    /// Which databases' pg_stat_database counters to send: "*" for every database that allows connections, or a comma-separated list [default: *]
    #[arg(long, env = "PGFLEET_DATABASES", value_name = "LIST")]
    pub databases: Option<String>,
    /// The admin console of the PgBouncer in front of the target, as a URL [default: none]
    #[arg(long, env = "PGFLEET_PGBOUNCER", value_name = "DSN")]
    pub pgbouncer: Option<String>,
    /// A label of the agent, inherited by every target; repeatable (PGFLEET_LABELS takes a comma-separated list)
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
    /// What to send of query texts: masked (literals replaced by ?), raw or none [default: masked]
    #[arg(long, env = "PGFLEET_QUERY_TEXT", value_name = "MODE")]
    pub query_text: Option<String>,
    /// Where applications report their pools (the PoolReporter gRPC service), or "off" [default: 127.0.0.1:7602]
    #[arg(long, env = "PGFLEET_POOL_REPORTER_LISTEN", value_name = "ADDR")]
    pub pool_reporter_listen: Option<String>,
    /// This agent's stable identity [default: the host name]
    #[arg(long, env = "PGFLEET_AGENT_ID", value_name = "ID")]
    pub agent_id: Option<String>,
    /// The most bytes that batches awaiting the collector's ack may hold, in memory or in --spool-dir; past it the oldest are dropped [default: 64 MiB]
    #[arg(long, env = "PGFLEET_SPOOL_MAX_BYTES", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Keep batches awaiting the collector's ack in this directory, fsync'd, so that they survive a restart of the agent [default: in memory]
    #[arg(long, env = "PGFLEET_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// A file holding the bearer token to present to the collector (PGFLEET_TOKEN gives the token itself) [default: none]
    #[arg(long, env = "PGFLEET_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA (PEM) that signed an https:// collector's certificate
    #[arg(long, env = "PGFLEET_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The agent's certificate (PEM), for a collector that requires mutual TLS
    #[arg(long, env = "PGFLEET_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, env = "PGFLEET_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the collector's certificate must carry, when not the URL's host
    #[arg(long, env = "PGFLEET_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// How to compress the stream: zstd, gzip or none [default: zstd; gzip when the collector lacks zstd]
    #[arg(long, env = "PGFLEET_COMPRESSION", value_name = "ALGORITHM")]
    pub compression: Option<String>,
    /// A TOML file with any of the settings above, and [[targets]] to watch several servers
    #[arg(long, env = "PGFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sample every target once, print the samples as JSON and exit (1 if a target is down); no collector is needed
    #[arg(long)]
    pub once: bool,
}

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
    /// See `--label`; a flag's label wins over the file's label of the same name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// See `--interval`.
    pub interval: Option<String>,
    /// See `--statement-timeout`.
    pub statement_timeout: Option<String>,
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

/// One server the agent watches.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Its name in the fleet.
    pub server_id: String,
    /// How to connect to it.
    pub connection: tokio_postgres::Config,
    /// Its own labels (the agent's labels fill in the rest).
    pub labels: BTreeMap<String, String>,
    /// Which databases' counters to send.
    pub databases: Databases,
    /// The admin console of its PgBouncer, if any.
    pub pgbouncer: Option<tokio_postgres::Config>,
}

impl TargetConfig {
    /// A target named after its host and port, with no labels and every database.
    pub fn new(connection: tokio_postgres::Config) -> Self {
        TargetConfig {
            server_id: target::default_server_id(&connection),
            connection,
            labels: BTreeMap::new(),
            databases: Databases::All,
            pgbouncer: None,
        }
    }
}

/// The agent's settings, checked and complete.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This agent's stable identity.
    pub agent_id: String,
    /// The collector's gRPC URL.
    pub collector: String,
    /// Collectors to fail over to, in order, when the one in use is down.
    pub fallback_collectors: Vec<String>,
    /// The servers to watch; never empty, server_ids unique.
    pub targets: Vec<TargetConfig>,
    /// The agent's labels, inherited by every target.
    pub labels: BTreeMap<String, String>,
    /// How often to sample.
    pub interval: Duration,
    /// The timeout of every statement the agent runs.
    pub statement_timeout: Duration,
    /// What to send of query texts.
    pub query_text: QueryText,
    /// Where the PoolReporter service listens; None when off.
    pub pool_reporter: Option<SocketAddr>,
    /// The most bytes of batches held while awaiting acks.
    pub spool_max_bytes: usize,
    /// Where the spool is kept on disk; None: in memory.
    pub spool_dir: Option<PathBuf>,
    /// The bearer token presented to the collector, if any.
    pub token: Option<Token>,
    /// TLS to the collector, for an https:// collector.
    pub tls: Option<ClientTls>,
    /// How the stream is compressed.
    pub compression: Compression,
}

/// The shortest and longest sampling interval.
pub const INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// The smallest spool bound: room for a few dozen batches.
pub const MIN_SPOOL_BYTES: u64 = 64 << 10;

/// The most targets one agent watches.
pub const MAX_TARGETS: usize = 64;

/// Where the PoolReporter listens unless told otherwise.
pub const DEFAULT_POOL_REPORTER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7602);

impl AgentConfig {
    /// Settings for one `target` with every other setting at its default.
    pub fn new(collector: &str, target: tokio_postgres::Config) -> Self {
        AgentConfig {
            agent_id: default_agent_id(),
            collector: collector.to_owned(),
            fallback_collectors: Vec::new(),
            targets: vec![TargetConfig::new(target)],
            labels: BTreeMap::new(),
            interval: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(2),
            query_text: QueryText::Masked,
            pool_reporter: Some(DEFAULT_POOL_REPORTER),
            spool_max_bytes: 64 << 20,
            spool_dir: None,
            token: None,
            tls: None,
            compression: Compression::default(),
        }
    }

    /// Resolves flags (and the variables clap read into them), the config file and
    /// defaults; `env` supplies the libpq variables.
    pub fn resolve(
        args: AgentArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let file: AgentFile = settings::read_toml(args.config.as_deref())?;
        let given = if args.collector.is_empty() {
            match file.collector {
                Some(OneOrMany::One(c)) => vec![c],
                Some(OneOrMany::Many(cs)) => cs,
                None => Vec::new(),
            }
        } else {
            args.collector
        };
        let mut collectors = given
            .iter()
            .map(|c| settings::endpoint_url("collector", c))
            .collect::<Result<Vec<_>, _>>()?;
        if collectors.is_empty() {
            collectors.push(settings::endpoint_url(
                "collector",
                "http://127.0.0.1:7600",
            )?);
        }
        let https = collectors[0].starts_with("https://");
        if collectors
            .iter()
            .any(|c| c.starts_with("https://") != https)
        {
            return Err(SettingsError::Invalid {
                key: "collector",
                message: "give every collector as https://, or every one as http://".to_owned(),
            });
        }
        let collector = collectors.remove(0);
        let databases = match args.databases.as_deref() {
            Some(text) => {
                Some(
                    Databases::parse(text).map_err(|message| SettingsError::Invalid {
                        key: "databases",
                        message,
                    })?,
                )
            }
            None => file.databases,
        };
        let single = TargetFile {
            target: args.target.or(file.target),
            server_id: args.server_id.or(file.server_id),
            labels: BTreeMap::new(),
            databases,
            pgbouncer: args.pgbouncer.or(file.pgbouncer),
        };
        let target_files = if file.targets.is_empty() {
            vec![single]
        } else {
            if single.target.is_some()
                || single.server_id.is_some()
                || single.databases.is_some()
                || single.pgbouncer.is_some()
            {
                return Err(SettingsError::Invalid {
                    key: "targets",
                    message: "the config file lists [[targets]], so target, server_id, databases and pgbouncer belong inside each [[targets]] entry, not at the top or in flags".to_owned(),
                });
            }
            file.targets
        };
        if target_files.len() > MAX_TARGETS {
            return Err(SettingsError::Invalid {
                key: "targets",
                message: format!(
                    "{} targets is more than one agent watches ({MAX_TARGETS}); run another agent",
                    target_files.len()
                ),
            });
        }
        let mut targets = Vec::with_capacity(target_files.len());
        for t in target_files {
            let t = resolve_target(t, &env)?;
            if targets
                .iter()
                .any(|o: &TargetConfig| o.server_id == t.server_id)
            {
                return Err(SettingsError::Invalid {
                    key: "server_id",
                    message: format!(
                        "{:?} names two targets; give each [[targets]] entry its own server_id",
                        t.server_id
                    ),
                });
            }
            targets.push(t);
        }
        let mut config = AgentConfig::new(&collector, targets[0].connection.clone());
        config.fallback_collectors = collectors;
        config.targets = targets;
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
        if let Some(text) = args.query_text.or(file.query_text) {
            config.query_text = text.parse().map_err(|message| SettingsError::Invalid {
                key: "query_text",
                message,
            })?;
        }
        if let Some(text) = args.pool_reporter_listen.or(file.pool_reporter_listen) {
            config.pool_reporter = match text.trim() {
                "off" | "" => None,
                addr => Some(addr.parse().map_err(|_| SettingsError::Invalid {
                    key: "pool_reporter_listen",
                    message: format!(
                        "{addr:?} is not an address; write it like 127.0.0.1:7602, or \"off\""
                    ),
                })?),
            };
        }
        if let Some(bytes) = args.spool_max_bytes.or(file.spool_max_bytes) {
            if bytes < MIN_SPOOL_BYTES {
                return Err(SettingsError::Invalid {
                    key: "spool_max_bytes",
                    message: format!(
                        "{bytes} is too small; give at least {MIN_SPOOL_BYTES} (64 KiB)"
                    ),
                });
            }
            config.spool_max_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        config.spool_dir = args.spool_dir.or(file.spool_dir);
        // The file wins over PGFLEET_TOKEN; a file may hold exactly one token.
        config.token = match args.token_file.or(file.token_file) {
            Some(path) => {
                let mut tokens = settings::read_tokens("token_file", &path)?;
                if tokens.len() > 1 {
                    return Err(SettingsError::Invalid {
                        key: "token_file",
                        message: format!("{} holds more than one token", path.display()),
                    });
                }
                tokens.pop()
            }
            None => env("PGFLEET_TOKEN")
                .map(|t| Token::new("token", &t))
                .transpose()?,
        };
        let tls_ca = args.tls_ca.or(file.tls_ca);
        let tls_cert = args.tls_cert.or(file.tls_cert);
        let tls_key = args.tls_key.or(file.tls_key);
        let tls_server_name = args.tls_server_name.or(file.tls_server_name);
        config.tls = ClientTls::load(
            &config.collector,
            ClientTlsFiles {
                ca: tls_ca.as_deref(),
                cert: tls_cert.as_deref(),
                key: tls_key.as_deref(),
                server_name: tls_server_name.as_deref(),
            },
        )?;
        if let Some(text) = args.compression.or(file.compression) {
            config.compression = text.parse().map_err(|message| SettingsError::Invalid {
                key: "compression",
                message,
            })?;
        }
        Ok(config)
    }
}

fn resolve_target(
    t: TargetFile,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<TargetConfig, SettingsError> {
    let connection = target::connection_config(t.target.as_deref(), env)?;
    let mut config = TargetConfig::new(connection);
    if let Some(id) = t.server_id {
        config.server_id = non_empty("server_id", id)?;
    }
    for (name, value) in &t.labels {
        settings::check_label(name, value)?;
    }
    config.labels = t.labels;
    config.databases = t.databases.unwrap_or_default();
    if let Some(dsn) = t.pgbouncer {
        config.pgbouncer = Some(target::pgbouncer_config(&dsn)?);
    }
    Ok(config)
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
    fn collectors_to_fail_over_to_come_from_repeated_flags_or_a_list() {
        let args = AgentArgs::parse_from([
            "pgfleet-agent",
            "--collector",
            "a:7600",
            "--collector",
            "http://b:7600,c:7600",
        ]);
        let c = AgentConfig::resolve(args, no_env).unwrap();
        assert_eq!(c.collector, "http://a:7600");
        assert_eq!(c.fallback_collectors, ["http://b:7600", "http://c:7600"]);

        let dir = std::env::temp_dir().join(format!("pgfleet-failover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, "collector = [\"x:1\", \"y:2\"]\n").unwrap();
        let args = AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args, no_env).unwrap();
        assert_eq!(
            (c.collector.as_str(), c.fallback_collectors.len()),
            ("http://x:1", 1)
        );
        std::fs::remove_dir_all(dir).unwrap();

        let mixed = AgentArgs::parse_from([
            "pgfleet-agent",
            "--collector",
            "https://a:7600,http://b:7600",
        ]);
        let err = AgentConfig::resolve(mixed, no_env).unwrap_err().to_string();
        assert!(err.contains("every collector as https://"), "{err}");
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
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.targets[0].server_id, "from-flag");
        assert_eq!(c.targets[0].databases, Databases::All);
        assert_eq!(c.query_text, QueryText::Masked);
        assert_eq!(c.pool_reporter, Some(DEFAULT_POOL_REPORTER));
        assert_eq!(c.collector, "http://c1:7600");
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.labels["dc"], "us2");
        assert_eq!(c.labels["role"], "primary");
        assert_eq!(c.statement_timeout, Duration::from_secs(2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_token_comes_from_its_file_or_pgfleet_token_and_is_checked() {
        let env = |k: &str| (k == "PGFLEET_TOKEN").then(|| "env-token-0123456789abcdef".to_owned());
        let c = AgentConfig::resolve(AgentArgs::default(), env).unwrap();
        assert!(c.token.unwrap().matches(b"env-token-0123456789abcdef"));
        assert!(
            AgentConfig::resolve(AgentArgs::default(), no_env)
                .unwrap()
                .token
                .is_none()
        );

        let dir = std::env::temp_dir().join(format!("pgfleet-agent-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "file-token-0123456789abcdef\n").unwrap();
        let args = AgentArgs {
            token_file: Some(path.clone()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args, env).unwrap();
        assert!(
            c.token.unwrap().matches(b"file-token-0123456789abcdef"),
            "the file wins"
        );
        std::fs::write(
            &path,
            "file-token-0123456789abcdef\nsecond-token-0123456789ab\n",
        )
        .unwrap();
        let args = AgentArgs {
            token_file: Some(path),
            ..Default::default()
        };
        let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.contains("more than one token"), "{err}");
        let short = |k: &str| (k == "PGFLEET_TOKEN").then(|| "short".to_owned());
        let err = AgentConfig::resolve(AgentArgs::default(), short)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid `token`"), "{err}");
        assert!(!err.contains("short"), "the token never shows: {err}");
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

    fn write_config(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgfleet-agent-cfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn several_targets_each_with_their_own_settings() {
        let path = write_config(
            "multi",
            r#"
query_text = "raw"
pool_reporter_listen = "off"
[labels]
dc = "eu1"
[[targets]]
target = "postgres://mon@db1:5432/postgres"
server_id = "orders-1"
databases = ["orders", "billing"]
pgbouncer = "postgres://pgbouncer@db1:6432/pgbouncer"
[targets.labels]
role = "primary"
[[targets]]
target = "host=db2 port=5433 user=mon"
databases = "*"
"#,
        );
        let args = AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args, no_env).unwrap();
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].server_id, "orders-1");
        assert_eq!(
            c.targets[0].databases,
            Databases::Only(vec!["orders".into(), "billing".into()])
        );
        assert_eq!(c.targets[0].labels["role"], "primary");
        let bouncer = c.targets[0].pgbouncer.as_ref().unwrap();
        assert_eq!(bouncer.get_dbname(), Some("pgbouncer"));
        assert_eq!(c.targets[1].server_id, "db2:5433");
        assert_eq!(c.targets[1].databases, Databases::All);
        assert!(c.targets[1].pgbouncer.is_none());
        assert_eq!(c.labels["dc"], "eu1");
        assert_eq!(c.query_text, QueryText::Raw);
        assert_eq!(c.pool_reporter, None);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn target_lists_refuse_duplicates_and_stray_keys() {
        let dup = write_config(
            "dup",
            "[[targets]]\ntarget = \"host=a\"\nserver_id = \"x\"\n[[targets]]\ntarget = \"host=b\"\nserver_id = \"x\"\n",
        );
        let args = AgentArgs {
            config: Some(dup.clone()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.contains("\"x\" names two targets"), "{err}");
        let args = AgentArgs {
            config: Some(dup.clone()),
            target: Some("host=c".into()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.contains("inside each [[targets]]"), "{err}");
        std::fs::remove_dir_all(dup.parent().unwrap()).unwrap();
    }

    #[test]
    fn databases_query_text_and_reporter_values_are_checked() {
        assert_eq!(Databases::parse(" * "), Ok(Databases::All));
        assert_eq!(
            Databases::parse("a, b"),
            Ok(Databases::Only(vec!["a".into(), "b".into()]))
        );
        assert!(Databases::parse("a,,b").is_err());
        for (flag, value, key) in [
            ("--databases", "a,*", "databases"),
            ("--query-text", "secret", "query_text"),
            (
                "--pool-reporter-listen",
                "localhost",
                "pool_reporter_listen",
            ),
        ] {
            let args = AgentArgs::parse_from(["pgfleet-agent", flag, value]);
            let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid `{key}`")), "{err}");
        }
        let err =
            settings::parse_toml::<AgentFile>(std::path::Path::new("a.toml"), "databases = 5")
                .unwrap_err()
                .to_string();
        assert!(err.contains("databases"), "{err}");
    }
}

//! The agent's settings: flags, then `PGFLEET_*` variables, then the TOML file named
//! by `--config`, then defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::sampler::QueryText;
use crate::target;
use pgfleet_common::pgtls::PgTls;
use pgfleet_common::settings::{self, SettingsError, Token};
use pgfleet_common::tls::{ClientTls, ClientTlsFiles};

mod args;
mod file;

pub use args::{AgentArgs, Compression, OneOrMany};
pub use file::{AgentFile, Databases, TargetFile};

/// One server the agent watches.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Its name in the fleet.
    pub server_id: String,
    /// How to connect to it.
    pub connection: tokio_postgres::Config,
    /// Its TLS: `sslmode` and the files, as libpq reads them.
    pub tls: PgTls,
    /// Its own labels (the agent's labels fill in the rest).
    pub labels: BTreeMap<String, String>,
    /// Which databases' counters to send.
    pub databases: Databases,
    /// The admin console of its PgBouncer, if any.
    pub pgbouncer: Option<target::Console>,
    /// The CPUs of its host, as configured; without, the sampler takes this
    /// host's when the target is on it ([`target::local_cpus`]).
    pub cpus: Option<u32>,
}

impl TargetConfig {
    /// A target named after its host and port, with no labels and every database.
    pub fn new(connection: tokio_postgres::Config) -> Self {
        TargetConfig {
            server_id: target::default_server_id(&connection),
            connection,
            tls: PgTls::default(),
            labels: BTreeMap::new(),
            databases: Databases::All,
            pgbouncer: None,
            cpus: None,
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
    /// How often to read pg_stat_statements; None when off.
    pub statements_interval: Option<Duration>,
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

/// How often pg_stat_statements is read unless told otherwise (or less
/// often, when the sampling interval is longer).
pub const DEFAULT_STATEMENTS_INTERVAL: Duration = Duration::from_secs(60);

/// The longest interval between two reads of pg_stat_statements.
pub const MAX_STATEMENTS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

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
            statements_interval: Some(DEFAULT_STATEMENTS_INTERVAL),
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
            server_cpus: args.server_cpus.or(file.server_cpus),
        };
        let target_files = if file.targets.is_empty() {
            vec![single]
        } else {
            if single.target.is_some()
                || single.server_id.is_some()
                || single.databases.is_some()
                || single.pgbouncer.is_some()
                || single.server_cpus.is_some()
            {
                return Err(SettingsError::Invalid {
                    key: "targets",
                    message: "the config file lists [[targets]], so target, server_id, databases, pgbouncer and server_cpus belong inside each [[targets]] entry, not at the top or in flags".to_owned(),
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
        config.statements_interval = match args.statements_interval.or(file.statements_interval) {
            Some(text) => statements_interval(&text, config.interval)?,
            None => Some(DEFAULT_STATEMENTS_INTERVAL.max(config.interval)),
        };
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
        config.token = settings::client_token(
            args.token_file.or(file.token_file).as_deref(),
            env("PGFLEET_TOKEN"),
        )?;
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
    let (connection, tls) = target::connection_config(t.target.as_deref(), env)?;
    let mut config = TargetConfig::new(connection);
    config.tls = tls;
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
    config.cpus = match t.server_cpus {
        Some(0) => {
            return Err(SettingsError::Invalid {
                key: "server_cpus",
                message: "0 CPUs: give the number of CPUs of the server's host, or leave it out"
                    .to_owned(),
            });
        }
        other => other,
    };
    Ok(config)
}

/// `statements_interval`: "off", or a duration no shorter than the sampling
/// `interval` (each read is taken with a sample).
fn statements_interval(text: &str, interval: Duration) -> Result<Option<Duration>, SettingsError> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let every = settings::parse_duration(
        "statements_interval",
        text,
        *INTERVAL_RANGE.start()..=MAX_STATEMENTS_INTERVAL,
    )
    .map_err(|e| match e {
        SettingsError::Invalid { key, message } => SettingsError::Invalid {
            key,
            message: format!("{message}, or \"off\""),
        },
        other => other,
    })?;
    if every < interval {
        return Err(SettingsError::Invalid {
            key: "statements_interval",
            message: format!(
                "{text:?} is shorter than the sampling interval ({}); pg_stat_statements is read with a sample, so give at least {}, or \"off\"",
                humantime::format_duration(interval),
                humantime::format_duration(interval)
            ),
        });
    }
    Ok(Some(every))
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
mod tests;

//! The agent's flags and environment variables (clap), with `--help`'s
//! examples, and the values a flag or the file may take.

use std::path::PathBuf;

use pgfleet_common::settings;
use serde::Deserialize;

/// A setting the config file may give as one value or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `collector = "…"`
    One(String),
    /// `collector = ["…", "…"]`
    Many(Vec<String>),
}

/// How the agent compresses its stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// zstd: the smallest. Each batch goes as one zstd frame; a collector
    /// too old for those gets gRPC's zstd, and one without zstd gets gzip.
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
    /// The PostgreSQL server to watch, as a URL or libpq key/value string, with libpq's TLS settings (sslmode, sslrootcert, sslcert, sslkey) [default: from PGHOST, PGPORT, PGSSLMODE, …]
    #[arg(long, env = "PGFLEET_TARGET", value_name = "DSN")]
    pub target: Option<String>,
    /// The server's name in the fleet [default: host:port of the target]
    #[arg(long, env = "PGFLEET_SERVER_ID", value_name = "NAME")]
    pub server_id: Option<String>,
    /// Which databases' pg_stat_database counters to send: "*" for every database that allows connections, or a comma-separated list [default: *]
    #[arg(long, env = "PGFLEET_DATABASES", value_name = "LIST")]
    pub databases: Option<String>,
    /// The admin console of the PgBouncer in front of the target, as a URL (sslmode and the other TLS settings as for --target) [default: none]
    #[arg(long, env = "PGFLEET_PGBOUNCER", value_name = "DSN")]
    pub pgbouncer: Option<String>,
    /// The CPUs of the target's host, which the web UI's load chart draws as a line [default: this host's, when the target is on it (a Unix socket or a loopback address); unknown otherwise]
    #[arg(long, env = "PGFLEET_SERVER_CPUS", value_name = "N")]
    pub server_cpus: Option<u32>,
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
    /// How often to read pg_stat_statements (at least --interval), or "off"; the server needs shared_preload_libraries = 'pg_stat_statements' and CREATE EXTENSION pg_stat_statements [default: 60s]
    #[arg(long, env = "PGFLEET_STATEMENTS_INTERVAL", value_name = "DURATION")]
    pub statements_interval: Option<String>,
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
    /// How to compress the stream: zstd, gzip or none [default: zstd; gRPC's zstd for a collector too old for zstd batches, gzip for one without zstd]
    #[arg(long, env = "PGFLEET_COMPRESSION", value_name = "ALGORITHM")]
    pub compression: Option<String>,
    /// A TOML file with any of the settings above, and [[targets]] to watch several servers
    #[arg(long, env = "PGFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sample every target once, print the samples as JSON and exit (1 if a target is down); no collector is needed
    #[arg(long)]
    pub once: bool,
}

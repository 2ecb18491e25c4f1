//! The `pgfleet` command line: one module per group of commands (`fleet`:
//! servers, activity, sessions and blocking; `pools`; `metrics`; `load`: DB
//! load, top queries and churn over a range), `top` (the
//! full-screen view), `demo`, the `output` formats, and the `sandbox` of
//! throwaway PostgreSQL clusters that the demo and the end-to-end tests share.
#![forbid(unsafe_code)]

mod demo;
mod fleet;
mod load;
mod metrics;
mod output;
mod pools;
mod remote;
mod top;

pub mod sandbox;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pgfleet_common::runtime::{self, EXIT_USAGE};
use pgfleet_common::settings::{self, SettingsError};
use pgfleet_common::tls::{ClientTls, ClientTlsFiles};
use serde::Deserialize;

pub use fleet::{render_activity, render_servers};
pub use output::Output;
pub use remote::{Client, Remote, connect};

const EXAMPLES: &str = "\
Examples:
  pgfleet demo                                  # a throwaway fleet, end to end
  pgfleet top                                   # live, full screen, like pg_activity
  pgfleet top --by cluster --label dc=eu1
  pgfleet servers
  pgfleet servers --label dc=eu1 --output json
  pgfleet summary --by dc                       # the fleet per data centre
  pgfleet activity orders-db-1 --state active --min-duration 5s
  pgfleet activity orders-db-1 --wait Lock --database orders
  pgfleet activity orders-db-1 --at 2026-11-24T03:12:00Z
  pgfleet top-sessions --by xact_age --label dc=eu1
  pgfleet blocking                              # every blocker in the fleet
  pgfleet pools orders-db-1                     # slots, PgBouncer, client pools
  pgfleet databases orders-db-1
  pgfleet metrics sessions --range 1h --step 1m --by cluster
  pgfleet metrics max_xact_age_seconds --range 1d --step 1h --match dc=eu1
  pgfleet load --range 1h --by wait             # DB load, stacked by wait
  pgfleet load orders-db-1 --range 15m --step 10s --by query
  pgfleet load --range 1d --by dc --match wait_type=Lock
  pgfleet top-queries --range 1h --by mean-time --label dc=eu1
  pgfleet churn orders-db-1 --range 1h          # sessions started and ended
  pgfleet --collector http://collector.internal:7600 activity orders-db-1
  pgfleet completions bash > /etc/bash_completion.d/pgfleet

Every flag can also be set as PGFLEET_<FLAG> (PGFLEET_COLLECTOR, PGFLEET_OUTPUT) or as
a key in the file named by --config; a flag wins over the variable, the variable
over the file.";

/// `pgfleet`: ask the collector about the fleet.
#[derive(Debug, clap::Parser)]
#[command(name = "pgfleet", version, about = "Ask a pgfleet collector about your PostgreSQL fleet.", after_help = EXAMPLES)]
pub struct Cli {
    /// The collector's gRPC address [default: http://127.0.0.1:7600]
    #[arg(long, global = true, env = "PGFLEET_COLLECTOR", value_name = "URL")]
    pub collector: Option<String>,
    /// How to print results [default: table]
    #[arg(long, short = 'o', global = true, env = "PGFLEET_OUTPUT", value_enum)]
    pub output: Option<Output>,
    /// The CA (PEM) that signed an https:// collector's certificate
    #[arg(long, global = true, env = "PGFLEET_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for a collector that requires mutual TLS
    #[arg(long, global = true, env = "PGFLEET_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, global = true, env = "PGFLEET_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the collector's certificate must carry, when not the URL's host
    #[arg(
        long,
        global = true,
        env = "PGFLEET_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
    /// A file holding the read token to present, for a collector started with --read-tokens-file (PGFLEET_TOKEN gives the token itself) [default: none]
    #[arg(long, global = true, env = "PGFLEET_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How long to wait for the collector's answer to each call, like 5m [default: 2m; top: 10s]
    #[arg(long, global = true, env = "PGFLEET_TIMEOUT", value_name = "DURATION")]
    pub timeout: Option<String>,
    /// A TOML file with `collector`, `output`, `timeout` and the tls_* settings
    #[arg(long, global = true, env = "PGFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the servers the collector knows, with their status
    Servers {
        /// Only servers with this label, repeatable
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
    },
    /// Show the sessions of one server, longest-running first
    Activity {
        /// The server's server_id, as `pgfleet servers` lists it
        server: String,
        #[command(flatten)]
        filter: ActivityFilter,
    },
    /// The fleet's longest transactions (or queries, or idle-in-transaction sessions), longest first
    TopSessions {
        /// Rank by xact_age, query_age or idle_in_transaction
        #[arg(long, default_value = "xact_age", value_name = "ORDER")]
        by: String,
        /// Only servers with this label, repeatable
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
        /// How many sessions
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Who blocks whom: each root blocker and the sessions waiting on it, for one server or the whole fleet
    Blocking {
        /// One server's server_id [default: every server]
        server: Option<String>,
        /// Only servers with this label, repeatable
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
    },
    /// Add the fleet up per value of a label: servers up, down and stale, sessions, waits, the longest transaction and the most saturated server
    Summary {
        /// The label to group by, such as dc or cluster [default: the whole fleet in one row]
        #[arg(long, value_name = "LABEL")]
        by: Option<String>,
        /// Only servers with this label, repeatable
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
    },
    /// Show one server's pools: its connection slots, its PgBouncer, the agent's pool and the pools applications report
    Pools {
        /// The server's server_id, as `pgfleet servers` lists it
        server: String,
    },
    /// Show one server's pg_stat_database counters, summed since the collector first saw each database
    Databases {
        /// The server's server_id, as `pgfleet servers` lists it
        server: String,
    },
    /// A live, full-screen view of the fleet, with pg_activity's keys: F1-F5 running, waiting, blocking, pools, load by wait; / filter; s sort; +/- refresh; Enter a session's whole query; q quit
    Top(top::TopArgs),
    /// A metric over a past range, one point per step, grouped by labels: sessions by state, waits, blocked sessions, the oldest transaction, pool utilisation, commits, rollbacks and deadlocks per second
    Metrics(metrics::MetricsArgs),
    /// DB load (average active sessions) over a past range, one row per step, stacked by wait, wait_type, query, user, database, application, client, backend_type, server or a label
    Load(load::LoadArgs),
    /// The statements that loaded the servers most over a past range, with their waits and pg_stat_statements' calls, times and rows
    TopQueries(load::TopQueriesArgs),
    /// Sessions started and ended over a past range, by application, user and client host, and how long they lived
    Churn(load::ChurnArgs),
    /// Print shell completions: `pgfleet completions bash > /etc/bash_completion.d/pgfleet`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Start two throwaway PostgreSQL servers, their agents and a collector, and show what pgfleet sees
    Demo {
        /// Leave everything running and print the commands to query it, until Ctrl-C
        #[arg(long)]
        keep_running: bool,
        /// How long to show the live activity
        #[arg(long, default_value = "10s", value_name = "DURATION")]
        duration: String,
    },
}

/// Which sessions `pgfleet activity` shows.
#[derive(Debug, Default, clap::Args)]
pub struct ActivityFilter {
    /// Only sessions in this state: active, idle, idle-in-transaction, …
    #[arg(long)]
    pub state: Option<String>,
    /// Only sessions running (or idle in a transaction) at least this long, like 5s
    #[arg(long, value_name = "DURATION")]
    pub min_duration: Option<String>,
    /// Only sessions waiting on this wait_event_type: Lock, IO, LWLock, …
    #[arg(long, value_name = "TYPE")]
    pub wait: Option<String>,
    /// Only sessions of this database
    #[arg(long)]
    pub database: Option<String>,
    /// Only sessions of this role
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions of this application_name
    #[arg(long, value_name = "NAME")]
    pub application: Option<String>,
    /// Include PostgreSQL's background processes
    #[arg(long)]
    pub all: bool,
    /// The sessions as they were at this past instant, like 2026-11-24T03:12:00Z (from the collector's history)
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// The CLI's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliFile {
    /// See `--collector`.
    pub collector: Option<String>,
    /// See `--output`.
    pub output: Option<Output>,
    /// See `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// See `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// See `--tls-server-name`.
    pub tls_server_name: Option<String>,
    /// See `--token-file`.
    pub token_file: Option<PathBuf>,
    /// See `--timeout`.
    pub timeout: Option<String>,
}

/// Runs a parsed command line and returns the process's exit code: 0 on success,
/// 1 when the collector cannot answer, 2 for usage errors.
pub async fn run(cli: Cli) -> ExitCode {
    let settings = match resolve(&cli) {
        Ok(s) => s,
        Err(e) => return runtime::usage_error("pgfleet", &e),
    };
    let (collector, output) = settings;
    let result = match cli.command {
        Command::Servers { labels } => fleet::servers(&collector, output, &labels).await,
        Command::Activity { server, filter } => {
            fleet::activity(&collector, output, &server, filter).await
        }
        Command::TopSessions { by, labels, limit } => {
            fleet::top_sessions(&collector, output, &by, &labels, limit).await
        }
        Command::Blocking { server, labels } => {
            fleet::blocking(&collector, output, server.as_deref(), &labels).await
        }
        Command::Summary { by, labels } => {
            fleet::summary(&collector, output, by.as_deref(), &labels).await
        }
        Command::Pools { server } => pools::pools(&collector, output, &server).await,
        Command::Databases { server } => pools::databases(&collector, output, &server).await,
        Command::Metrics(args) => metrics::metrics(&collector, output, args).await,
        Command::Load(args) => load::load(&collector, output, args).await,
        Command::TopQueries(args) => load::top_queries(&collector, output, args).await,
        Command::Churn(args) => load::churn(&collector, output, args).await,
        Command::Top(args) => top::top(&collector, args).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "pgfleet", &mut std::io::stdout());
            Ok(())
        }
        Command::Demo {
            keep_running,
            duration,
        } => {
            runtime::init_tracing("warn");
            demo::run(keep_running, &duration, output).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgfleet: {e}");
            match e {
                CliError::Usage(_) => ExitCode::from(EXIT_USAGE),
                CliError::Failed(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// How a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The command line asked for something impossible.
    Usage(String),
    /// The command could not be done (collector unreachable, server unknown, …).
    Failed(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<SettingsError> for CliError {
    fn from(e: SettingsError) -> Self {
        CliError::Usage(e.to_string())
    }
}

fn resolve(cli: &Cli) -> Result<(Remote, Output), SettingsError> {
    let file: CliFile = settings::read_toml(cli.config.as_deref())?;
    let url = settings::endpoint_url(
        "collector",
        cli.collector
            .as_deref()
            .or(file.collector.as_deref())
            .unwrap_or("http://127.0.0.1:7600"),
    )?;
    let tls = ClientTls::load(
        &url,
        ClientTlsFiles {
            ca: cli.tls_ca.as_deref().or(file.tls_ca.as_deref()),
            cert: cli.tls_cert.as_deref().or(file.tls_cert.as_deref()),
            key: cli.tls_key.as_deref().or(file.tls_key.as_deref()),
            server_name: cli
                .tls_server_name
                .as_deref()
                .or(file.tls_server_name.as_deref()),
        },
    )?;
    // The file wins over PGFLEET_TOKEN; a file may hold exactly one token.
    let token = settings::client_token(
        cli.token_file.as_deref().or(file.token_file.as_deref()),
        std::env::var("PGFLEET_TOKEN").ok(),
    )?;
    let timeout = match cli.timeout.as_ref().or(file.timeout.as_ref()) {
        Some(text) => Some(settings::parse_duration(
            "timeout",
            text,
            Duration::from_secs(1)..=Duration::from_secs(86_400),
        )?),
        None => None,
    };
    Ok((
        Remote {
            url,
            tls,
            token,
            timeout,
        },
        cli.output.or(file.output).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/pgfleet.toml");
        let cli = <Cli as clap::Parser>::parse_from(["pgfleet", "--config", path, "servers"]);
        let (collector, output) = resolve(&cli).unwrap();
        assert_eq!(collector.url, "http://127.0.0.1:7600");
        assert_eq!(output, Output::Table);
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/pgfleet.toml");
        let cli = <Cli as clap::Parser>::parse_from([
            "pgfleet",
            "--config",
            path,
            "--output",
            "json",
            "--collector",
            "c2:7600",
            "servers",
        ]);
        let (remote, output) = resolve(&cli).unwrap();
        assert_eq!(
            (remote.url.as_str(), output),
            ("http://c2:7600", Output::Json)
        );
    }
}

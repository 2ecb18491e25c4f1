//! The collector's settings: flags, then `PGFLEET_*` variables, then the TOML file,
//! then defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgfleet_common::settings::{self, SettingsError, Token};
use pgfleet_common::tls::ServerTls;
use serde::Deserialize;

use crate::store::{DictTraining, Retention, StoreConfig};

const EXAMPLES: &str = "\
Examples:
  pgfleet-collector --listen 127.0.0.1:7600 --data-dir /var/lib/pgfleet
  pgfleet-collector --config /etc/pgfleet/collector.toml

Every flag can also be set as PGFLEET_<FLAG> (PGFLEET_LISTEN=0.0.0.0:7600) or as a key
in the config file (listen = \"0.0.0.0:7600\"); a flag wins over the variable, the
variable over the file.";

/// Command-line flags of `pgfleet-collector`.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "pgfleet-collector",
    version,
    about = "Receives pgfleet agents' streams and answers queries about the fleet.",
    after_help = EXAMPLES
)]
pub struct CollectorArgs {
    /// The gRPC address to listen on (Ingest, Query, health, reflection) [default: 127.0.0.1:7600]
    #[arg(long, env = "PGFLEET_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The HTTP address: /metrics for Prometheus, /healthz, the web UI and the JSON API (/api/v1), or "off" [default: 127.0.0.1:7601]
    #[arg(long, env = "PGFLEET_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// A second gRPC address for readers only (Query, health, reflection), served on threads of its own so that reads do not wait behind agents' batches; point pgfleet, pgfleet top and other tools at it on a large fleet, or "off" [default: off; Query is served on --listen either way]
    #[arg(long, env = "PGFLEET_QUERY_LISTEN", value_name = "ADDR")]
    pub query_listen: Option<String>,
    /// Where the collector keeps its state [default: ./pgfleet-data]
    #[arg(long, env = "PGFLEET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A file of bearer tokens, one per line; agents must present one of them [default: none, any agent may stream]
    #[arg(long, env = "PGFLEET_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// A file of read tokens, one per line; every Query call and Watch must present one of them (an agent's token does not do) [default: none, anyone who reaches the collector may read]
    #[arg(long, env = "PGFLEET_READ_TOKENS_FILE", value_name = "FILE")]
    pub read_tokens_file: Option<PathBuf>,
    /// A file of tokens, one per line, one of which a scrape of /metrics must present (/healthz stays open) [default: none, anyone may scrape]
    #[arg(long, env = "PGFLEET_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// The collector's certificate (PEM); with it, the gRPC port and the HTTP port speak TLS only [default: plaintext]
    #[arg(long, env = "PGFLEET_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, env = "PGFLEET_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A CA (PEM): every client (agents and tools) must show a certificate it signed (mutual TLS)
    #[arg(long, env = "PGFLEET_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// What to do when a second live agent claims a server_id: refuse it, or let it take the server over (for a primary/standby pair whose agents name one server) [default: refuse]
    #[arg(long, env = "PGFLEET_DUPLICATE_SERVER_ID", value_name = "POLICY")]
    pub duplicate_server_id: Option<String>,
    /// Whether to keep DB load, connection churn and statement statistics (on or off); off saves their CPU and storage, and `pgfleet load`, `top-queries` and `churn` then say so [default: on]
    #[arg(long, env = "PGFLEET_LOAD", value_name = "ON|OFF")]
    pub load: Option<String>,
    /// Whether stored frames are compressed with dictionaries the collector trains on them (on or off); on, the store grows about half as fast as without; turn it off while collectors from before dictionaries share a PostgreSQL store with this one, as they skip the frames they cannot read [default: on]
    #[arg(long, env = "PGFLEET_FRAME_DICTIONARIES", value_name = "ON|OFF")]
    pub frame_dictionaries: Option<String>,
    /// How long the history of sessions is kept, from which `activity --at` rebuilds a past instant [default: 24h]
    #[arg(long, env = "PGFLEET_RETENTION_FRAMES", value_name = "DURATION")]
    pub retention_frames: Option<String>,
    /// How long the per-minute rollups are kept, from which `pgfleet metrics` answers [default: 30d]
    #[arg(long, env = "PGFLEET_RETENTION_ROLLUPS", value_name = "DURATION")]
    pub retention_rollups: Option<String>,
    /// Where the history is kept: "sqlite" (a file in --data-dir), or a PostgreSQL URL (postgres://user@host/db?sslmode=verify-full&sslrootcert=…) that several collectors may share [default: sqlite]
    #[arg(long, env = "PGFLEET_STORE", value_name = "STORE")]
    pub store: Option<String>,
    /// This collector's name in a shared store [default: <hostname>:<gRPC port>]
    #[arg(long, env = "PGFLEET_COLLECTOR_ID", value_name = "NAME")]
    pub collector_id: Option<String>,
    /// How many threads take the agents' streams (and the gRPC port's reads when there is no --query-listen) [default: half the machine's cores, at least 1]
    #[arg(long, env = "PGFLEET_INGEST_THREADS", value_name = "N")]
    pub ingest_threads: Option<String>,
    /// A TOML file with any of the settings above
    #[arg(long, env = "PGFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The collector's config file; every key matches a flag's name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorFile {
    /// See `--listen`.
    pub listen: Option<String>,
    /// See `--http-listen`.
    pub http_listen: Option<String>,
    /// See `--query-listen`.
    pub query_listen: Option<String>,
    /// See `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// See `--tokens-file`.
    pub tokens_file: Option<PathBuf>,
    /// See `--read-tokens-file`.
    pub read_tokens_file: Option<PathBuf>,
    /// See `--metrics-token-file`.
    pub metrics_token_file: Option<PathBuf>,
    /// See `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// See `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// See `--duplicate-server-id`.
    pub duplicate_server_id: Option<String>,
    /// See `--load`.
    pub load: Option<String>,
    /// See `--frame-dictionaries`.
    pub frame_dictionaries: Option<String>,
    /// See `--retention-frames`.
    pub retention_frames: Option<String>,
    /// See `--retention-rollups`.
    pub retention_rollups: Option<String>,
    /// See `--store`.
    pub store: Option<String>,
    /// See `--collector-id`.
    pub collector_id: Option<String>,
    /// See `--ingest-threads` (a number).
    pub ingest_threads: Option<usize>,
}

/// The collector's settings, checked and complete.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The gRPC address to listen on.
    pub listen: SocketAddr,
    /// Where /metrics and /healthz are served; None: nowhere.
    pub http_listen: Option<SocketAddr>,
    /// A gRPC address for readers only, served on the reads' runtime;
    /// None: readers use `listen`.
    pub query_listen: Option<SocketAddr>,
    /// Where the collector keeps its state.
    pub data_dir: PathBuf,
    /// The bearer tokens agents may present; empty when any agent may stream.
    pub tokens: Vec<Token>,
    /// The tokens readers (the Query API, Watch) may present; empty when
    /// anyone may read.
    pub read_tokens: Vec<Token>,
    /// The tokens a scrape of /metrics may present; empty when anyone may.
    pub metrics_tokens: Vec<Token>,
    /// TLS on the gRPC port; None: plaintext.
    pub tls: Option<ServerTls>,
    /// What to do when a second live agent claims a server_id.
    pub duplicate_server_id: DuplicateServerId,
    /// Whether DB load, churn and statement statistics are kept.
    pub load: bool,
    /// How long history is kept.
    pub retention: Retention,
    /// Where history is kept.
    pub store: StoreConfig,
    /// This collector's name in a shared store.
    pub collector_id: String,
    /// When the store trains the dictionaries it compresses frames with.
    pub frame_dictionaries: DictTraining,
    /// The worker threads of the runtime that takes the agents' streams:
    /// read by `pgfleet-collector`, which builds that runtime; a collector
    /// started by `server::start` runs on its caller's runtime.
    pub ingest_threads: usize,
}

/// Where /metrics is served unless told otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7601";

/// What the collector does when a second live agent claims a server_id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DuplicateServerId {
    /// Refuse the second agent with ALREADY_EXISTS.
    #[default]
    Refuse,
    /// The newer agent takes the server over; the older one's snapshots of it
    /// are acknowledged and set aside.
    Takeover,
}

impl std::str::FromStr for DuplicateServerId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        settings::parse_choice(
            "a policy",
            s,
            &[("refuse", Self::Refuse), ("takeover", Self::Takeover)],
        )
    }
}

impl CollectorConfig {
    /// Settings with a data directory, no HTTP endpoint (so that many can run
    /// side by side in tests), and everything else at its default.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        CollectorConfig {
            listen,
            http_listen: None,
            query_listen: None,
            data_dir,
            tokens: Vec::new(),
            read_tokens: Vec::new(),
            metrics_tokens: Vec::new(),
            tls: None,
            duplicate_server_id: DuplicateServerId::default(),
            load: true,
            retention: Retention::default(),
            store: StoreConfig::Sqlite,
            collector_id: crate::store::postgres::default_collector_id(listen),
            frame_dictionaries: DictTraining::default(),
            ingest_threads: default_ingest_threads(),
        }
    }

    /// Resolves flags (and the variables clap read into them), the file and defaults.
    pub fn resolve(args: CollectorArgs) -> Result<Self, SettingsError> {
        let file: CollectorFile = settings::read_toml(args.config.as_deref())?;
        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7600".to_owned());
        let listen = listen_text
            .trim()
            .parse()
            .map_err(|_| SettingsError::Invalid {
                key: "listen",
                message: format!("{listen_text:?} is not an address like 127.0.0.1:7600"),
            })?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("pgfleet-data"));
        let tokens_of = |key, path: Option<PathBuf>| match path {
            Some(path) => settings::read_tokens(key, &path),
            None => Ok(Vec::new()),
        };
        let tokens = tokens_of("tokens_file", args.tokens_file.or(file.tokens_file))?;
        let read_tokens = tokens_of(
            "read_tokens_file",
            args.read_tokens_file.or(file.read_tokens_file),
        )?;
        let metrics_tokens = tokens_of(
            "metrics_token_file",
            args.metrics_token_file.or(file.metrics_token_file),
        )?;
        let tls = ServerTls::load(
            args.tls_cert.or(file.tls_cert).as_deref(),
            args.tls_key.or(file.tls_key).as_deref(),
            args.tls_client_ca.or(file.tls_client_ca).as_deref(),
        )?;
        let duplicate_server_id = match args.duplicate_server_id.or(file.duplicate_server_id) {
            Some(text) => text.parse().map_err(|message| SettingsError::Invalid {
                key: "duplicate_server_id",
                message,
            })?,
            None => DuplicateServerId::default(),
        };
        let on_or_off = |key, text: Option<String>| match text {
            None => Ok(true),
            Some(text) => {
                settings::parse_choice("on or off", &text, &[("on", true), ("off", false)])
                    .map_err(|message| SettingsError::Invalid { key, message })
            }
        };
        let load = on_or_off("load", args.load.or(file.load))?;
        let frame_dictionaries = DictTraining {
            enabled: on_or_off(
                "frame_dictionaries",
                args.frame_dictionaries.or(file.frame_dictionaries),
            )?,
            ..DictTraining::default()
        };
        let http_text = args
            .http_listen
            .or(file.http_listen)
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
        let http_listen = address_or_off("http_listen", &http_text, DEFAULT_HTTP_LISTEN)?;
        let query_listen = match args.query_listen.or(file.query_listen) {
            None => None,
            Some(text) => address_or_off("query_listen", &text, "127.0.0.1:7602")?,
        };
        // Port 0 is any free port, which two listeners may both ask for.
        if query_listen
            .is_some_and(|q: SocketAddr| q.port() != 0 && (q == listen || Some(q) == http_listen))
        {
            return Err(SettingsError::Invalid {
                key: "query_listen",
                message: "give an address of its own, not that of listen or http_listen".to_owned(),
            });
        }
        let defaults = Retention::default();
        let retention = Retention {
            frames: retention_setting(
                "retention_frames",
                args.retention_frames.or(file.retention_frames),
                defaults.frames,
            )?,
            rollups: retention_setting(
                "retention_rollups",
                args.retention_rollups.or(file.retention_rollups),
                defaults.rollups,
            )?,
        };
        let store = match args.store.or(file.store) {
            None => StoreConfig::Sqlite,
            Some(text) => parse_store(&text)?,
        };
        let collector_id = match args.collector_id.or(file.collector_id) {
            None => crate::store::postgres::default_collector_id(listen),
            Some(id) => {
                let id = id.trim().to_owned();
                if id.is_empty() || id.len() > 200 {
                    return Err(SettingsError::Invalid {
                        key: "collector_id",
                        message: "give a name of 1 to 200 bytes, unique among the collectors that share a store".to_owned(),
                    });
                }
                id
            }
        };
        let ingest_threads = match args
            .ingest_threads
            .or(file.ingest_threads.map(|n| n.to_string()))
        {
            None => default_ingest_threads(),
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n @ 1..=MAX_INGEST_THREADS) => n,
                _ => {
                    return Err(SettingsError::Invalid {
                        key: "ingest_threads",
                        message: format!(
                            "{text:?} is not a number of threads from 1 to {MAX_INGEST_THREADS}"
                        ),
                    });
                }
            },
        };
        Ok(CollectorConfig {
            listen,
            http_listen,
            query_listen,
            data_dir,
            tokens,
            read_tokens,
            metrics_tokens,
            tls,
            duplicate_server_id,
            load,
            retention,
            store,
            collector_id,
            frame_dictionaries,
            ingest_threads,
        })
    }
}

/// The most threads `--ingest-threads` may ask for.
const MAX_INGEST_THREADS: usize = 256;

/// Half the machine's cores, at least one: the aggregator, the history's
/// writer and the readers' threads run beside the ingest threads, and an
/// ingest thread that finds nothing to do parks and is woken again for the
/// next batch, which costs more than the batch where cores are few. Side by
/// side on 2 cores (BENCHMARKS.md, "Collector side by side"), one thread
/// took 0.97× the CPU per batch of two.
fn default_ingest_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// An address (`example` shows one), or "off" for none.
fn address_or_off(
    key: &'static str,
    text: &str,
    example: &str,
) -> Result<Option<SocketAddr>, SettingsError> {
    match text.trim() {
        "off" => Ok(None),
        text => text.parse().map(Some).map_err(|_| SettingsError::Invalid {
            key,
            message: format!("{text:?} is not an address like {example}, or \"off\""),
        }),
    }
}

/// `sqlite`, or a PostgreSQL URL.
fn parse_store(text: &str) -> Result<StoreConfig, SettingsError> {
    let text = text.trim();
    if text == "sqlite" {
        Ok(StoreConfig::Sqlite)
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(StoreConfig::Postgres(text.to_owned()))
    } else {
        Err(SettingsError::Invalid {
            key: "store",
            message: format!(
                "{:?} is neither \"sqlite\" nor a URL like postgres://pgfleet@db.internal/pgfleet",
                text.split('@').next_back().unwrap_or(text)
            ),
        })
    }
}

/// A retention: between a minute and ten years.
fn retention_setting(
    key: &'static str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, SettingsError> {
    match text {
        Some(text) => settings::parse_duration(
            key,
            &text,
            Duration::from_secs(60)..=Duration::from_secs(10 * 365 * 24 * 3600),
        ),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A directory of this process's own named after `name`, and in it a
    /// collector.toml of `text`.
    fn config_file(name: &str, text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pgfleet-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let (dir, path) = config_file(
            "col-cfg",
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/srv/pgfleet\"\n",
        );
        let args = CollectorArgs::parse_from([
            "pgfleet-collector",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7700",
        ]);
        let c = CollectorConfig::resolve(args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7700".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/srv/pgfleet"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/collector.toml");
        let args = CollectorArgs {
            config: Some(path.into()),
            ..Default::default()
        };
        let c = CollectorConfig::resolve(args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/pgfleet"));
        assert_eq!(c.retention, Retention::default());
        assert_eq!(c.store, StoreConfig::Sqlite);
        assert_eq!(c.frame_dictionaries, DictTraining::default());
    }

    #[test]
    fn frame_dictionaries_are_on_unless_turned_off() {
        let resolve = |text: Option<&str>| {
            CollectorConfig::resolve(CollectorArgs {
                frame_dictionaries: text.map(str::to_owned),
                ..Default::default()
            })
        };
        assert!(resolve(None).unwrap().frame_dictionaries.enabled);
        assert!(resolve(Some("on")).unwrap().frame_dictionaries.enabled);
        assert!(!resolve(Some("off")).unwrap().frame_dictionaries.enabled);
        let e = resolve(Some("maybe")).unwrap_err().to_string();
        assert!(
            e.contains("frame_dictionaries") && e.contains("on or off"),
            "{e}"
        );
    }

    #[test]
    fn the_store_is_sqlite_or_a_postgres_url() {
        let c = CollectorConfig::resolve(CollectorArgs {
            store: Some("postgres://fleet:pw@history/pgfleet".into()),
            collector_id: Some(" eu1-a ".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Postgres("postgres://fleet:pw@history/pgfleet".into())
        );
        assert_eq!(c.collector_id, "eu1-a");
        let c = CollectorConfig::resolve(CollectorArgs::default()).unwrap();
        assert!(c.collector_id.ends_with(":7600"), "{}", c.collector_id);
        let e = CollectorConfig::resolve(CollectorArgs {
            store: Some("mysql://fleet:secret@history/pgfleet".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("postgres://") && !e.contains("secret"), "{e}");
        let e = CollectorConfig::resolve(CollectorArgs {
            collector_id: Some("  ".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("collector_id"), "{e}");
    }

    #[test]
    fn retentions_are_read_and_checked() {
        let c = CollectorConfig::resolve(CollectorArgs {
            retention_frames: Some("2h".into()),
            retention_rollups: Some("90d".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.retention.frames, Duration::from_secs(7200));
        assert_eq!(c.retention.rollups, Duration::from_secs(90 * 86_400));
        for bad in ["10s", "forever"] {
            let e = CollectorConfig::resolve(CollectorArgs {
                retention_rollups: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("retention_rollups") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_metrics_address_defaults_and_can_be_turned_off() {
        let c = CollectorConfig::resolve(CollectorArgs::default()).unwrap();
        assert_eq!(c.http_listen, Some(DEFAULT_HTTP_LISTEN.parse().unwrap()));
        let off = CollectorArgs::parse_from(["pgfleet-collector", "--http-listen", "off"]);
        assert_eq!(CollectorConfig::resolve(off).unwrap().http_listen, None);
        let bad = CollectorArgs::parse_from(["pgfleet-collector", "--http-listen", "nowhere"]);
        let err = CollectorConfig::resolve(bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid `http_listen`"), "{err}");
    }

    #[test]
    fn the_readers_address_is_off_unless_given_and_must_be_its_own() {
        let c = CollectorConfig::resolve(CollectorArgs::default()).unwrap();
        assert_eq!(c.query_listen, None);
        let on = CollectorArgs::parse_from(["pgfleet-collector", "--query-listen", "0.0.0.0:7602"]);
        assert_eq!(
            CollectorConfig::resolve(on).unwrap().query_listen,
            Some("0.0.0.0:7602".parse().unwrap())
        );
        let off = CollectorArgs::parse_from(["pgfleet-collector", "--query-listen", "off"]);
        assert_eq!(CollectorConfig::resolve(off).unwrap().query_listen, None);
        for bad in ["nowhere", "127.0.0.1:7600", "127.0.0.1:7601"] {
            let args = CollectorArgs::parse_from(["pgfleet-collector", "--query-listen", bad]);
            let err = CollectorConfig::resolve(args).unwrap_err().to_string();
            assert!(err.starts_with("invalid `query_listen`"), "{err}");
        }
    }

    #[test]
    fn the_ingest_threads_are_half_the_cores_unless_given() {
        let c = CollectorConfig::resolve(CollectorArgs::default()).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.ingest_threads, (cores / 2).max(1));
        let three = CollectorArgs::parse_from(["pgfleet-collector", "--ingest-threads", " 3 "]);
        assert_eq!(CollectorConfig::resolve(three).unwrap().ingest_threads, 3);
        for bad in ["0", "-1", "two", "257"] {
            let flag = format!("--ingest-threads={bad}");
            let args = CollectorArgs::parse_from(["pgfleet-collector", flag.as_str()]);
            let err = CollectorConfig::resolve(args).unwrap_err().to_string();
            assert!(err.starts_with("invalid `ingest_threads`"), "{err}");
            assert!(err.contains("from 1 to 256"), "{err}");
        }
        // The file's key is a number; a flag wins over it.
        let (dir, path) = config_file("ingest", "ingest_threads = 4\n");
        let file =
            CollectorArgs::parse_from(["pgfleet-collector", "--config", path.to_str().unwrap()]);
        assert_eq!(CollectorConfig::resolve(file).unwrap().ingest_threads, 4);
        let both = CollectorArgs::parse_from([
            "pgfleet-collector",
            "--config",
            path.to_str().unwrap(),
            "--ingest-threads",
            "2",
        ]);
        assert_eq!(CollectorConfig::resolve(both).unwrap().ingest_threads, 2);
        std::fs::write(&path, "ingest_threads = 0\n").unwrap();
        let zero =
            CollectorArgs::parse_from(["pgfleet-collector", "--config", path.to_str().unwrap()]);
        let err = CollectorConfig::resolve(zero).unwrap_err().to_string();
        assert!(err.starts_with("invalid `ingest_threads`"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        let args = CollectorArgs::parse_from(["pgfleet-collector", "--listen", "nowhere"]);
        let err = CollectorConfig::resolve(args).unwrap_err().to_string();
        assert!(err.starts_with("invalid `listen`"), "{err}");
    }
}

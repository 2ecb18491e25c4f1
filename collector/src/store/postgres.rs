//! The history in PostgreSQL (`--store postgres://…`), for fleets that
//! outgrow one machine: the model of the SQLite store in schema `pgfleet`,
//! with frames and rollups partitioned by day, written with binary COPY, and
//! kept by dropping whole days.
//!
//! Several collectors may share one such store. Each names itself in the
//! servers it streams (`servers.collector`), and each follows what the
//! others write into its own view (`crate::follow`, through [`Reader::elsewhere`]
//! and [`Reader::advance`]), so that any of them
//! answers for the whole fleet. An agent that moves from one collector to
//! another resumes where the store says it stopped ([`Reader::resume`]): its
//! last stored sequence, and its servers as stored then, so that the deltas
//! it sends next find their base.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pgfleet_proto::time::{Micros, now_micros};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use tracing::{info, warn};

use super::{
    Elsewhere, Loaded, Op, Rebuilt, Resume, Retention, Sink, Store, StoreError, StoredServer,
    ZSTD_LEVEL,
};
use crate::rollup::{MINUTE_US, Minute};

const DAY_US: Micros = 86_400_000_000;

/// The longest any statement of the store may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections serve reads.
const READERS: usize = 4;

/// Taken while the schema or a partition is created, so that collectors
/// starting together do not trip on each other.
const DDL_LOCK: i64 = 0x0070_6766_6c65_6574; // "pgfleet"

const SCHEMA: &str = "
    CREATE SCHEMA IF NOT EXISTS pgfleet;
    CREATE TABLE IF NOT EXISTS pgfleet.agents (
        agent_id text PRIMARY KEY,
        last_seq bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS pgfleet.servers (
        server_id text PRIMARY KEY,
        agent_id text NOT NULL,
        labels text NOT NULL,
        interval_ms bigint NOT NULL,
        collector text NOT NULL,
        connected boolean NOT NULL);
    CREATE TABLE IF NOT EXISTS pgfleet.frames (
        server_id text NOT NULL,
        at bigint NOT NULL,
        keyframe boolean NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (server_id, at)) PARTITION BY RANGE (at);
    CREATE TABLE IF NOT EXISTS pgfleet.rollups (
        minute bigint NOT NULL,
        server_id text NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (minute, server_id)) PARTITION BY RANGE (minute);";

/// The partitioned tables, each with its partition key.
const PARTITIONED: [&str; 2] = ["frames", "rollups"];

/// The settings for the store's connections: the URL's, with this
/// collector's application_name (unless the URL gives one) and a statement
/// timeout; and the URL without its password, for messages.
fn settings(url: &str) -> Result<(tokio_postgres::Config, String), StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::new(
            "--store",
            format!("{e}; give a URL like postgres://pgfleet@db.internal/pgfleet"),
        )
    })?;
    let place = format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(h, p)| match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
            })
            .collect::<Vec<_>>()
            .join(","),
        config.get_dbname().unwrap_or("")
    );
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(StoreError::new(
            &place,
            "sslmode=require: this collector does not speak TLS to its store yet; reach it over a trusted network (sslmode=disable or prefer), or keep the history in SQLite",
        ));
    }
    if config.get_application_name().is_none() {
        config.application_name("pgfleet-collector");
    }
    let options = format!(
        "{} -c statement_timeout={}",
        config.get_options().unwrap_or(""),
        STATEMENT_TIMEOUT.as_millis()
    );
    config.options(options.trim());
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok((config, place))
}

/// Opens the store: creates its schema if need be, reads back what it holds,
/// and starts the writer.
pub(super) async fn open(
    url: &str,
    retention: Retention,
    collector_id: String,
) -> Result<(Store, Loaded), StoreError> {
    let (config, place) = settings(url)?;
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(READERS)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .wait_timeout(Some(STATEMENT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::new(&place, e))?;
    let reader = Reader {
        pool,
        collector_id: collector_id.into(),
        written: Arc::default(),
    };
    let loaded = async {
        let mut client = reader.client().await?;
        async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await?;
            let now = now_micros();
            for table in PARTITIONED {
                for day in [day_of(now), day_of(now) + 1] {
                    create_partition(&mut client, table, day).await?;
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await
        .map_err(|e| pgfleet_common::error::chain(&e))?;
        drop(client);
        reader.load().await
    }
    .await
    .map_err(|e| StoreError::new(&place, e))?;
    // What the store holds now is what this collector's memory starts from.
    if let Ok(mut written) = reader.written.lock() {
        written.clone_from(&loaded.agents);
    }
    info!(
        store = %place,
        collector = %reader.collector_id,
        agents = loaded.agents.len(),
        servers = loaded.servers.len(),
        "History store opened."
    );
    let sink = PgSink {
        config,
        collector_id: reader.collector_id.to_string(),
        runtime: None,
        writer: None,
        zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
        days: HashSet::new(),
        duplicates: Arc::new(AtomicU64::new(0)),
        written: reader.written.clone(),
    };
    let store = Store::start(sink, super::Reader::Postgres(reader), place, retention)?;
    Ok((store, loaded))
}

/// The day (since 1970, UTC) that holds `at`.
fn day_of(at: Micros) -> i64 {
    at.div_euclid(DAY_US)
}

/// The partition of `table` that holds `day`: `frames_20261125`.
fn partition_name(table: &str, day: i64) -> Option<String> {
    let secs = u64::try_from(day).ok()?.checked_mul(86_400)?;
    let date =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    Some(format!("{table}_{}", date.get(..10)?.replace('-', "")))
}

/// The day a partition's name holds, if it is one of ours.
fn partition_day(table: &str, name: &str) -> Option<i64> {
    let date = name.strip_prefix(table)?.strip_prefix('_')?;
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let at = humantime::parse_rfc3339(&format!(
        "{}-{}-{}T00:00:00Z",
        &date[..4],
        &date[4..6],
        &date[6..]
    ))
    .ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(secs as i64 / 86_400)
}

/// Creates `table`'s partition for `day` unless it exists.
async fn create_partition(
    client: &mut Client,
    table: &str,
    day: i64,
) -> Result<(), tokio_postgres::Error> {
    let Some(name) = partition_name(table, day) else {
        return Ok(());
    };
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS pgfleet.{name} PARTITION OF pgfleet.{table} FOR VALUES FROM ({}) TO ({})",
        day * DAY_US,
        (day + 1) * DAY_US
    ))
    .await?;
    tx.commit().await
}

/// Drops `table`'s partitions whose every row is older than `cutoff`; how
/// many went.
async fn drop_partitions(
    client: &mut Client,
    table: &str,
    cutoff: Micros,
) -> Result<usize, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = format('pgfleet.%I', $1::text)::regclass",
            &[&table],
        )
        .await?;
    let mut dropped = 0;
    for row in rows {
        let name: String = row.get(0);
        if partition_day(table, &name).is_some_and(|day| (day + 1) * DAY_US <= cutoff) {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
                .await?;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS pgfleet.{name}"))
                .await?;
            tx.commit().await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// The writer: its own connection, on its own thread's runtime.
struct PgSink {
    config: tokio_postgres::Config,
    collector_id: String,
    runtime: Option<tokio::runtime::Runtime>,
    writer: Option<Writer>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// The days whose partitions are known to exist.
    days: HashSet<(&'static str, i64)>,
    /// Frames already stored when written again.
    duplicates: Arc<AtomicU64>,
    /// Each agent's last sequence as this collector committed it (shared
    /// with the reader).
    written: Written,
}

/// Each agent's last sequence as this collector knows the store holds it:
/// loaded at start, then what it commits. When the store says the same at
/// an agent's Hello, no other collector has streamed the agent since, and
/// the aggregator's memory needs nothing from the store.
type Written = Arc<std::sync::Mutex<HashMap<String, u64>>>;

/// The writer's connection and its statements.
struct Writer {
    client: Client,
    agents: Statement,
    server: Statement,
    disconnected: Statement,
}

impl Writer {
    async fn connect(config: &tokio_postgres::Config) -> Result<Writer, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "The history store's connection ended.");
            }
        });
        client
            .batch_execute(
                "CREATE TEMP TABLE frames_in (server_id text, at bigint, keyframe boolean, body bytea)
                     ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE rollups_in (minute bigint, server_id text, body bytea)
                     ON COMMIT DELETE ROWS;",
            )
            .await?;
        Ok(Writer {
            agents: client
                .prepare(
                    "INSERT INTO pgfleet.agents (agent_id, last_seq)
                     SELECT * FROM unnest($1::text[], $2::bigint[])
                     ON CONFLICT (agent_id) DO UPDATE
                         SET last_seq = greatest(agents.last_seq, excluded.last_seq)",
                )
                .await?,
            server: client
                .prepare(
                    "INSERT INTO pgfleet.servers
                         (server_id, agent_id, labels, interval_ms, collector, connected)
                     VALUES ($1, $2, $3, $4, $5, true)
                     ON CONFLICT (server_id) DO UPDATE SET agent_id = excluded.agent_id,
                         labels = excluded.labels, interval_ms = excluded.interval_ms,
                         collector = excluded.collector, connected = true",
                )
                .await?,
            disconnected: client
                .prepare(
                    "UPDATE pgfleet.servers SET connected = false
                     WHERE server_id = ANY($1) AND collector = $2",
                )
                .await?,
            client,
        })
    }
}

impl PgSink {
    async fn commit(
        writer: &mut Writer,
        collector_id: &str,
        ops: &[(u64, Op)],
        bodies: Vec<(&str, Micros, bool, Vec<u8>)>,
        days: &mut HashSet<(&'static str, i64)>,
        duplicates: &AtomicU64,
    ) -> Result<(), tokio_postgres::Error> {
        let rollups = super::last_by_key(ops.iter().filter_map(|(_, op)| match op {
            Op::Minute { server_id, minute } => {
                Some(((minute.start, server_id.as_str()), minute.encode()))
            }
            _ => None,
        }));
        let needed: Vec<_> = bodies
            .iter()
            .map(|(_, at, _, _)| ("frames", day_of(*at)))
            .chain(
                rollups
                    .iter()
                    .map(|((start, _), _)| ("rollups", day_of(*start))),
            )
            .collect();
        for (table, day) in needed {
            if !days.contains(&(table, day)) {
                create_partition(&mut writer.client, table, day).await?;
                days.insert((table, day));
            }
        }
        let agents = super::last_by_key(ops.iter().filter_map(|(_, op)| match op {
            Op::Applied { agent_id, seq, .. } => Some((agent_id.as_str(), *seq as i64)),
            _ => None,
        }));
        let tx = writer.client.transaction().await?;
        if !bodies.is_empty() {
            let sink = tx
                .copy_in(
                    "COPY frames_in (server_id, at, keyframe, body) FROM STDIN (FORMAT binary)",
                )
                .await?;
            let mut copy = std::pin::pin!(BinaryCopyInWriter::new(
                sink,
                &[Type::TEXT, Type::INT8, Type::BOOL, Type::BYTEA],
            ));
            for (server_id, at, keyframe, body) in &bodies {
                copy.as_mut()
                    .write(&[server_id as &(dyn ToSql + Sync), at, keyframe, body])
                    .await?;
            }
            copy.finish().await?;
            let stored = tx
                .execute(
                    "INSERT INTO pgfleet.frames SELECT * FROM frames_in ON CONFLICT DO NOTHING",
                    &[],
                )
                .await?;
            let again = bodies.len() as u64 - stored;
            if again > 0 {
                duplicates.fetch_add(again, Ordering::Relaxed);
                warn!(
                    frames = again,
                    "Frames already in the store were written again, and not stored twice."
                );
            }
        }
        if !agents.is_empty() {
            let (ids, seqs): (Vec<&str>, Vec<i64>) = agents.into_iter().unzip();
            tx.execute(&writer.agents, &[&ids, &seqs]).await?;
        }
        for (_, op) in ops {
            match op {
                Op::Server {
                    server_id,
                    agent_id,
                    labels,
                    interval_ms,
                } => {
                    let labels = super::labels_text(labels);
                    tx.execute(
                        &writer.server,
                        &[
                            server_id,
                            agent_id,
                            &labels,
                            &(*interval_ms as i64),
                            &collector_id,
                        ],
                    )
                    .await?;
                }
                Op::Disconnected { server_ids } => {
                    tx.execute(&writer.disconnected, &[server_ids, &collector_id])
                        .await?;
                }
                Op::Applied { .. } | Op::Minute { .. } | Op::Flush(_) => {}
            }
        }
        if !rollups.is_empty() {
            let sink = tx
                .copy_in("COPY rollups_in (minute, server_id, body) FROM STDIN (FORMAT binary)")
                .await?;
            let mut copy = std::pin::pin!(BinaryCopyInWriter::new(
                sink,
                &[Type::INT8, Type::TEXT, Type::BYTEA],
            ));
            for ((start, server_id), body) in &rollups {
                copy.as_mut()
                    .write(&[start as &(dyn ToSql + Sync), server_id, body])
                    .await?;
            }
            copy.finish().await?;
            tx.execute(
                "INSERT INTO pgfleet.rollups SELECT * FROM rollups_in
                 ON CONFLICT (minute, server_id) DO UPDATE SET body = excluded.body",
                &[],
            )
            .await?;
        }
        tx.commit().await
    }

    /// The thread's runtime and a live connection, made if need be.
    fn ready(&mut self) -> Result<(&tokio::runtime::Runtime, &mut Writer), String> {
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let runtime = self.runtime.as_ref().ok_or("no runtime")?;
        if self.writer.as_ref().is_none_or(|w| w.client.is_closed()) {
            self.writer = None;
            self.writer = Some(
                runtime
                    .block_on(Writer::connect(&self.config))
                    .map_err(|e| pgfleet_common::error::chain(&e))?,
            );
        }
        let writer = self.writer.as_mut().ok_or("no connection")?;
        Ok((runtime, writer))
    }
}

impl Sink for PgSink {
    fn commit(&mut self, ops: &[(u64, Op)]) -> Result<(), String> {
        let mut bodies = Vec::new();
        for (_, op) in ops {
            if let Op::Applied { frames, .. } = op {
                for f in frames {
                    bodies.push((
                        f.server_id.as_str(),
                        f.at,
                        f.keyframe,
                        super::encode(f, &mut self.zstd),
                    ));
                }
            }
        }
        let collector_id = self.collector_id.clone();
        let duplicates = self.duplicates.clone();
        let mut days = std::mem::take(&mut self.days);
        let result = self.ready().and_then(|(runtime, writer)| {
            runtime
                .block_on(Self::commit(
                    writer,
                    &collector_id,
                    ops,
                    bodies,
                    &mut days,
                    &duplicates,
                ))
                .map_err(|e| pgfleet_common::error::chain(&e))
        });
        self.days = days;
        if result.is_ok()
            && let Ok(mut written) = self.written.lock()
        {
            for (_, op) in ops {
                if let Op::Applied { agent_id, seq, .. } = op {
                    let last = written.entry(agent_id.clone()).or_insert(0);
                    *last = (*last).max(*seq);
                }
            }
        }
        result
    }

    fn prune(&mut self, retention: Retention, now: Micros) -> Result<(usize, usize), String> {
        let (runtime, writer) = self.ready()?;
        let client = &mut writer.client;
        runtime
            .block_on(async {
                for table in PARTITIONED {
                    create_partition(client, table, day_of(now) + 1).await?;
                }
                let frames =
                    drop_partitions(client, "frames", now - retention.frames.as_micros() as i64)
                        .await?;
                let rollups = drop_partitions(
                    client,
                    "rollups",
                    now - retention.rollups.as_micros() as i64,
                )
                .await?;
                Ok((frames, rollups))
            })
            .map_err(|e: tokio_postgres::Error| pgfleet_common::error::chain(&e))
    }
}

/// Reads, through a small pool of connections.
#[derive(Clone)]
pub(super) struct Reader {
    pool: Pool,
    /// What this collector wrote of each agent.
    written: Written,
    /// This collector, as the servers it streams name it.
    collector_id: Arc<str>,
}

/// Why a read failed.
type ReadError = String;

fn read_error(e: tokio_postgres::Error) -> ReadError {
    pgfleet_common::error::chain(&e)
}

impl Reader {
    async fn client(&self) -> Result<deadpool_postgres::Object, ReadError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => pgfleet_common::error::chain(&e),
            e => e.to_string(),
        })
    }

    async fn load(&self) -> Result<Loaded, ReadError> {
        let client = self.client().await?;
        let mut loaded = Loaded::default();
        for row in client
            .query("SELECT agent_id, last_seq FROM pgfleet.agents", &[])
            .await
            .map_err(read_error)?
        {
            loaded
                .agents
                .insert(row.get(0), row.get::<_, i64>(1).max(0) as u64);
        }
        drop(client);
        loaded.servers = self.servers(None).await?;
        Ok(loaded)
    }

    /// The stored servers (those of `ids`, or every one), each rebuilt.
    async fn servers(&self, ids: Option<&[String]>) -> Result<Vec<StoredServer>, ReadError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT server_id, agent_id, labels, interval_ms FROM pgfleet.servers
                 WHERE $1::text[] IS NULL OR server_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(read_error)?;
        // Each server's recent minutes (the last wins).
        let since = now_micros() - 2 * MINUTE_US;
        let mut recent: HashMap<String, Minute> = HashMap::new();
        for row in client
            .query(
                "SELECT minute, server_id, body FROM pgfleet.rollups
                 WHERE minute >= $1 AND ($2::text[] IS NULL OR server_id = ANY($2))
                 ORDER BY minute",
                &[&since, &ids],
            )
            .await
            .map_err(read_error)?
        {
            let server_id: String = row.get(1);
            if let Some(minute) = Minute::decode(row.get(0), row.get(2)) {
                recent.insert(server_id, minute);
            }
        }
        drop(client);
        let mut out = Vec::new();
        for row in rows {
            let server_id: String = row.get(0);
            let labels: String = row.get(2);
            out.push(StoredServer {
                activity: self.rebuild(&server_id, Micros::MAX).await?,
                minute: recent.remove(&server_id),
                agent_id: row.get(1),
                labels: super::stored_labels(&labels),
                interval: super::stored_interval(row.get(3)),
                server_id,
            });
        }
        Ok(out)
    }

    /// The minutes that start in `[start, end)`, oldest first.
    pub(super) async fn minutes(
        &self,
        start: Micros,
        end: Micros,
    ) -> Result<Vec<(String, Minute)>, ReadError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT minute, server_id, body FROM pgfleet.rollups
                 WHERE minute >= $1 AND minute < $2 ORDER BY minute",
                &[&start, &end],
            )
            .await
            .map_err(read_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (start, server_id): (i64, String) = (row.get(0), row.get(1));
            match Minute::decode(start, row.get(2)) {
                Some(minute) => out.push((server_id, minute)),
                None => {
                    warn!(server.id = %server_id, minute = start, "Skipped a rollup that does not decode.")
                }
            }
        }
        Ok(out)
    }

    /// The server at `at`: its last keyframe at or before it, and every delta
    /// after that keyframe up to `at`.
    pub(super) async fn rebuild(
        &self,
        server_id: &str,
        at: Micros,
    ) -> Result<Option<Rebuilt>, ReadError> {
        let client = self.client().await?;
        let start: Option<i64> = client
            .query_one(
                "SELECT max(at) FROM pgfleet.frames WHERE server_id = $1 AND keyframe AND at <= $2",
                &[&server_id, &at],
            )
            .await
            .map_err(read_error)?
            .get(0);
        let Some(start) = start else {
            return Ok(None);
        };
        let rows = client
            .query(
                "SELECT at, keyframe, body FROM pgfleet.frames
                 WHERE server_id = $1 AND at >= $2 AND at <= $3 ORDER BY at",
                &[&server_id, &start, &at],
            )
            .await
            .map_err(read_error)?;
        Ok(super::replay(
            server_id,
            None,
            rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))),
        ))
    }

    /// Where the store says `agent_id` stopped.
    pub(super) async fn resume(
        &self,
        agent_id: &str,
        server_ids: &[String],
    ) -> Result<Resume, ReadError> {
        let client = self.client().await?;
        let last_seq = client
            .query_opt(
                "SELECT last_seq FROM pgfleet.agents WHERE agent_id = $1",
                &[&agent_id],
            )
            .await
            .map_err(read_error)?
            .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        drop(client);
        // Nothing new since this collector's own writes (the common case: a
        // new agent, or one that reconnects here): one query is enough.
        let ours = self
            .written
            .lock()
            .map(|w| w.get(agent_id).copied().unwrap_or(0))
            .unwrap_or(0);
        if last_seq <= ours {
            return Ok(Resume {
                last_seq,
                servers: Vec::new(),
            });
        }
        Ok(Resume {
            last_seq,
            servers: self.servers(Some(server_ids)).await?,
        })
    }

    /// The servers that other collectors stream, as the store lists them.
    pub(super) async fn elsewhere(&self) -> Result<Vec<Elsewhere>, ReadError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT server_id, agent_id, labels, interval_ms, collector, connected
                 FROM pgfleet.servers WHERE collector <> $1",
                &[&&*self.collector_id],
            )
            .await
            .map_err(read_error)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let labels: String = row.get(2);
                Elsewhere {
                    server_id: row.get(0),
                    agent_id: row.get(1),
                    labels: super::stored_labels(&labels),
                    interval: super::stored_interval(row.get(3)),
                    collector: row.get::<_, String>(4).into(),
                    connected: row.get(5),
                }
            })
            .collect())
    }

    /// Each server's frames stored after its base, applied to the base;
    /// only the servers with such frames, None where a delta does not apply.
    pub(super) async fn advance(
        &self,
        bases: Vec<(String, Rebuilt)>,
    ) -> Result<Vec<(String, Option<Rebuilt>)>, ReadError> {
        if bases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, ats): (Vec<&str>, Vec<i64>) =
            bases.iter().map(|(id, b)| (id.as_str(), b.at)).unzip();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT f.server_id, f.at, f.keyframe, f.body
                 FROM unnest($1::text[], $2::bigint[]) AS w(server_id, after)
                 JOIN pgfleet.frames f ON f.server_id = w.server_id AND f.at > w.after
                 ORDER BY f.server_id, f.at",
                &[&ids, &ats],
            )
            .await
            .map_err(read_error)?;
        let mut frames: HashMap<String, Vec<(Micros, bool, Vec<u8>)>> = HashMap::new();
        for row in rows {
            frames
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), row.get(2), row.get(3)));
        }
        Ok(bases
            .into_iter()
            .filter_map(|(server_id, base)| {
                let new = frames.remove(&server_id)?;
                let state = super::replay(&server_id, Some(base), new);
                Some((server_id, state))
            })
            .collect())
    }
}

/// This collector's name in a shared store, unless `--collector-id` gives
/// one: the host's name and the gRPC port.
pub fn default_collector_id(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "collector" } else { host };
    format!("{host}:{}", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_day_and_read_back() {
        let day = day_of(1_795_564_800_000_000); // 2026-11-25T00:00:00Z
        assert_eq!(
            partition_name("frames", day).as_deref(),
            Some("frames_20261125")
        );
        assert_eq!(partition_day("frames", "frames_20261125"), Some(day));
        assert_eq!(partition_day("frames", "rollups_20261125"), None);
        assert_eq!(partition_day("frames", "frames_default"), None);
        assert_eq!(day_of(day * DAY_US - 1), day - 1);
    }

    #[test]
    fn store_urls_are_checked_and_their_password_kept_out_of_messages() {
        let (config, place) = settings("postgres://fleet:secret@db.internal:6432/history").unwrap();
        assert_eq!(place, "postgres://fleet@db.internal:6432/history");
        assert_eq!(config.get_application_name(), Some("pgfleet-collector"));
        assert!(
            config
                .get_options()
                .is_some_and(|o| o.contains("statement_timeout=30000"))
        );
        let e = settings("postgres://db/x?sslmode=require").unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let e = settings("postgres://db:notaport/x").unwrap_err();
        assert!(e.to_string().contains("postgres://pgfleet@"), "{e}");
    }
}

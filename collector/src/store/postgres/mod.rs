//! The history in PostgreSQL (`--store postgres://…`), for fleets that
//! outgrow one machine: the model of the SQLite store in schema `pgfleet`,
//! with frames and rollups partitioned by day, written with binary COPY, and
//! kept by dropping whole days.
//!
//! Several collectors may share one such store. Each names itself in the
//! servers it streams (`servers.collector`), and each follows what the
//! others write into its own view (`crate::follow`, through `Reader::elsewhere`
//! and `Reader::advance`), so that any of them
//! answers for the whole fleet. An agent that moves from one collector to
//! another resumes where the store says it stopped (`Reader::resume`): its
//! last stored sequence, and its servers as stored then, so that the deltas
//! it sends next find their base.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pgfleet_common::pgtls::{self, PgTls};
use pgfleet_proto::time::{Micros, now_micros};
use tokio_postgres::Client;
use tracing::info;

mod reader;
mod writer;

pub(super) use reader::Reader;
use writer::{PgSink, Written};

use super::frame_dict::{DictTraining, FrameCoder, FrameDicts};
use super::{FORMAT, Loaded, Retention, Store, StoreError};

pub(super) const DAY_US: Micros = 86_400_000_000;

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
        PRIMARY KEY (minute, server_id)) PARTITION BY RANGE (minute);
    CREATE TABLE IF NOT EXISTS pgfleet.load (
        server_id text NOT NULL,
        minute bigint NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (server_id, minute)) PARTITION BY RANGE (minute);
    CREATE TABLE IF NOT EXISTS pgfleet.load_hours (
        server_id text NOT NULL,
        hour bigint NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (server_id, hour)) PARTITION BY RANGE (hour);
    CREATE TABLE IF NOT EXISTS pgfleet.statements (
        server_id text NOT NULL,
        at bigint NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (server_id, at)) PARTITION BY RANGE (at);
    CREATE TABLE IF NOT EXISTS pgfleet.load_keys (
        server_id text NOT NULL,
        id bigint NOT NULL,
        hour bigint NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (server_id, id, hour)) PARTITION BY RANGE (hour);
    CREATE TABLE IF NOT EXISTS pgfleet.queries (
        fingerprint bigint PRIMARY KEY,
        text text NOT NULL);
    CREATE TABLE IF NOT EXISTS pgfleet.frame_dicts (
        id bigint PRIMARY KEY,
        made bigint NOT NULL,
        used bigint NOT NULL,
        body bytea NOT NULL);
    -- The store's format (see `store::FORMAT`): the highest of the
    -- collectors that opened it.
    CREATE TABLE IF NOT EXISTS pgfleet.meta (
        name text PRIMARY KEY,
        value bigint NOT NULL);";

/// The store's format now (None: no collector with formats has opened it).
const FORMAT_NOW: &str = "SELECT value FROM pgfleet.meta WHERE name = 'format'";

/// The partitioned tables.
const PARTITIONED: [&str; 6] = [
    "frames",
    "rollups",
    "load",
    "load_hours",
    "statements",
    "load_keys",
];

/// The settings for the store's connections: the URL's (TLS included, as
/// libpq reads `sslmode` and the `PGSSL*` variables), with this collector's
/// application_name (unless the URL gives one) and a statement timeout; and
/// the URL without its password, for messages.
fn settings(url: &str) -> Result<(tokio_postgres::Config, PgTls, String), StoreError> {
    let (mut config, tls) = pgtls::parse("store", url, |k| std::env::var(k).ok()).map_err(|e| {
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
    Ok((config, tls, place))
}

/// Opens the store: creates its schema if need be, reads back what it holds,
/// and starts the writer.
pub(super) async fn open(
    url: &str,
    retention: Retention,
    collector_id: String,
    dictionaries: DictTraining,
) -> Result<(Store, Loaded), StoreError> {
    let (config, tls, place) = settings(url)?;
    let manager = Manager::from_config(
        config.clone(),
        tls.connector(),
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
        tls: tls.clone(),
        place: place.as_str().into(),
        dicts: FrameDicts::default(),
    };
    let (newer, loaded) = async {
        let mut client = reader.client().await?;
        let newer = async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            let found: Option<i64> = tx.query_opt(FORMAT_NOW, &[]).await?.map(|r| r.get(0));
            tx.execute(
                "INSERT INTO pgfleet.meta (name, value) VALUES ('format', $1)
                 ON CONFLICT (name) DO UPDATE SET value = greatest(meta.value, excluded.value)",
                &[&FORMAT],
            )
            .await?;
            tx.commit().await?;
            let now = now_micros();
            for table in PARTITIONED {
                for day in [day_of(now), day_of(now) + 1] {
                    create_partition(&mut client, table, day).await?;
                }
            }
            Ok::<_, tokio_postgres::Error>(found.filter(|f| *f > FORMAT))
        }
        .await
        .map_err(|e| pgfleet_common::error::chain(&e))?;
        drop(client);
        Ok::<_, String>((newer, reader.loaded().await?))
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
    let sink = PgSink::new(
        config,
        tls,
        reader.collector_id.to_string(),
        reader.written.clone(),
        FrameCoder::new(dictionaries, reader.dicts.clone()),
    );
    let store = Store::start(sink, super::Reader::Postgres(reader), place, retention)?;
    if let Some(found) = newer {
        super::say_newer_format(&store.reads, &store.place, found);
    }
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
/// many went. One a read holds for over a second is left for the next round.
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
            // A long read of the table holds a lock the drop waits for, and
            // the writer's inserts would queue behind the drop: it gives up
            // soon, and the partition is left for the next round.
            tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
            match tx
                .batch_execute(&format!("DROP TABLE IF EXISTS pgfleet.{name}"))
                .await
            {
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    tracing::debug!(partition = %name, "A read holds the partition; dropping it waits for the next round.");
                    continue;
                }
                result => result?,
            }
            tx.commit().await?;
            dropped += 1;
        }
    }
    Ok(dropped)
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
        let (config, _, place) =
            settings("postgres://fleet:secret@db.internal:6432/history").unwrap();
        assert_eq!(place, "postgres://fleet@db.internal:6432/history");
        assert_eq!(config.get_application_name(), Some("pgfleet-collector"));
        assert!(
            config
                .get_options()
                .is_some_and(|o| o.contains("statement_timeout=30000"))
        );
        // TLS as libpq reads it; a bad sslmode or a missing file is named.
        let (config, tls, _) = settings("postgres://db/x?sslmode=require").unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(tls.mode, pgtls::SslMode::Require);
        let e = settings("postgres://db/x?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
        let e = settings("postgres://db:notaport/x").unwrap_err();
        assert!(e.to_string().contains("postgres://pgfleet@"), "{e}");
    }
}

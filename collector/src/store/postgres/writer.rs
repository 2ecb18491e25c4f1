//! The writer of a PostgreSQL store: one connection on the store's thread,
//! frames written with binary COPY, partitions made ahead and dropped whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pgfleet_common::pgtls::PgTls;
use pgfleet_proto::time::{Micros, now_micros};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};
use tracing::warn;

use super::super::frame_dict::{DictWrites, DictsStored, FrameCoder, KEPT_PAST_RETENTION};
use super::super::{Op, Pruned, Retention, Sink};
use crate::load::dictionaries::Dictionaries;

use super::{DAY_US, PARTITIONED, create_partition, day_of, drop_partitions};

/// Rows sent as arrays: server_ids, times and bodies.
type Columns<'a> = (Vec<&'a str>, (Vec<i64>, Vec<&'a [u8]>));

/// The writer: its own connection, on its own thread's runtime.
pub(super) struct PgSink {
    config: tokio_postgres::Config,
    tls: PgTls,
    collector_id: String,
    runtime: Option<tokio::runtime::Runtime>,
    writer: Option<Writer>,
    /// Each server's dictionary of strings for the hour being written.
    keys: Dictionaries,
    /// The days whose partitions are known to exist.
    days: HashSet<(&'static str, i64)>,
    /// Frames already stored when written again.
    duplicates: Arc<AtomicU64>,
    /// Each agent's last sequence as this collector committed it (shared
    /// with the reader).
    written: Written,
    /// What frames are compressed with.
    frames: FrameCoder,
}

/// Each agent's last sequence as this collector knows the store holds it:
/// loaded at start, then what it commits. When the store says the same at
/// an agent's Hello, no other collector has streamed the agent since, and
/// the aggregator's memory needs nothing from the store.
pub(super) type Written = Arc<std::sync::Mutex<HashMap<String, u64>>>;

/// The writer's connection and its statements.
struct Writer {
    client: Client,
    agents: Statement,
    server: Statement,
    disconnected: Statement,
}

impl Writer {
    async fn connect(
        config: &tokio_postgres::Config,
        tls: &PgTls,
    ) -> Result<Writer, tokio_postgres::Error> {
        let (client, connection) = config.connect(tls.connector()).await?;
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
    /// The writer for the store `config` reaches, as `collector_id`; it
    /// connects on its first commit, on the store's thread.
    pub(super) fn new(
        config: tokio_postgres::Config,
        tls: PgTls,
        collector_id: String,
        written: Written,
        frames: FrameCoder,
    ) -> PgSink {
        PgSink {
            config,
            tls,
            collector_id,
            runtime: None,
            writer: None,
            keys: Dictionaries::default(),
            days: HashSet::new(),
            duplicates: Arc::new(AtomicU64::new(0)),
            written,
            frames,
        }
    }

    async fn commit(
        writer: &mut Writer,
        collector_id: &str,
        ops: &[(u64, Op)],
        bodies: Vec<(&str, Micros, bool, Vec<u8>)>,
        keys: &mut Dictionaries,
        days: &mut HashSet<(&'static str, i64)>,
        duplicates: &AtomicU64,
    ) -> Result<(), tokio_postgres::Error> {
        let rollups = super::super::last_by_key(ops.iter().filter_map(|(_, op)| match op {
            Op::Minute { server_id, minute } => {
                Some(((minute.start, server_id.as_str()), minute.encode()))
            }
            _ => None,
        }));
        let load = super::super::last_by_key(ops.iter().filter_map(|(_, op)| match op {
            Op::Load {
                server_id, minute, ..
            } => {
                let body = super::super::load_row(keys, server_id, minute)?;
                Some((("load", server_id.as_str(), minute.start()), body))
            }
            _ => None,
        }))
        .into_iter()
        .chain(super::super::last_by_key(ops.iter().filter_map(
            |(_, op)| match op {
                Op::Load {
                    server_id, hour, ..
                } => Some((
                    ("load_hours", server_id.as_str(), hour.start),
                    hour.encode(),
                )),
                _ => None,
            },
        )))
        .collect::<Vec<_>>();
        let statements = super::super::last_by_key(ops.iter().filter_map(|(_, op)| match op {
            Op::Statements {
                server_id,
                at,
                read,
            } => Some((
                (server_id.as_str(), *at),
                keys.statements(server_id, *at, read),
            )),
            _ => None,
        }));
        let dictionaries = keys.unwritten();
        let texts = super::super::last_by_key(ops.iter().flat_map(|(_, op)| match op {
            Op::Texts(texts) => texts.iter().map(|(f, t)| (*f as i64, t.as_str())).collect(),
            _ => Vec::new(),
        }));
        let needed: Vec<_> = bodies
            .iter()
            .map(|(_, at, _, _)| ("frames", day_of(*at)))
            .chain(
                rollups
                    .iter()
                    .map(|((start, _), _)| ("rollups", day_of(*start))),
            )
            .chain(
                load.iter()
                    .map(|((table, _, start), _)| (*table, day_of(*start))),
            )
            .chain(
                statements
                    .iter()
                    .map(|((_, at), _)| ("statements", day_of(*at))),
            )
            .chain(dictionaries.iter().map(|k| ("load_keys", day_of(k.hour))))
            .collect();
        for (table, day) in needed {
            if !days.contains(&(table, day)) {
                create_partition(&mut writer.client, table, day).await?;
                days.insert((table, day));
            }
        }
        let agents = super::super::last_by_key(ops.iter().filter_map(|(_, op)| match op {
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
                    let labels = super::super::labels_text(labels);
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
                Op::Applied { .. }
                | Op::Minute { .. }
                | Op::Load { .. }
                | Op::Statements { .. }
                | Op::Texts(_)
                | Op::Flush(_) => {}
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
        for (table, key) in [("load", "minute"), ("load_hours", "hour")] {
            let (ids, (starts, bodies)): Columns = load
                .iter()
                .filter(|((t, _, _), _)| *t == table)
                .map(|((_, id, start), body)| (*id, (*start, body.as_slice())))
                .unzip();
            if !ids.is_empty() {
                tx.execute(
                    &format!(
                        "INSERT INTO pgfleet.{table} (server_id, {key}, body)
                         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
                         ON CONFLICT (server_id, {key}) DO UPDATE SET body = excluded.body"
                    ),
                    &[&ids, &starts, &bodies],
                )
                .await?;
            }
        }
        if !statements.is_empty() {
            let (ids, (ats, bodies)): Columns = statements
                .iter()
                .map(|((id, at), body)| (*id, (*at, body.as_slice())))
                .unzip();
            tx.execute(
                "INSERT INTO pgfleet.statements (server_id, at, body)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
                 ON CONFLICT (server_id, at) DO UPDATE SET body = excluded.body",
                &[&ids, &ats, &bodies],
            )
            .await?;
        }
        if !dictionaries.is_empty() {
            let ids: Vec<&str> = dictionaries.iter().map(|k| k.server_id.as_str()).collect();
            let numbers: Vec<i64> = dictionaries.iter().map(|k| k.id).collect();
            let hours: Vec<i64> = dictionaries.iter().map(|k| k.hour).collect();
            let bodies: Vec<&[u8]> = dictionaries.iter().map(|k| k.body.as_slice()).collect();
            tx.execute(
                "INSERT INTO pgfleet.load_keys (server_id, id, hour, body)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])
                 ON CONFLICT (server_id, id, hour) DO UPDATE SET body = excluded.body",
                &[&ids, &numbers, &hours, &bodies],
            )
            .await?;
        }
        if !texts.is_empty() {
            let (fingerprints, texts): (Vec<i64>, Vec<&str>) = texts.into_iter().unzip();
            tx.execute(
                "INSERT INTO pgfleet.queries (fingerprint, text)
                 SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING",
                &[&fingerprints, &texts],
            )
            .await?;
        }
        tx.commit().await
    }

    /// Writes the frame dictionaries of [`DictWrites`] in a transaction of
    /// their own, before the frames that may name them; whether the store
    /// holds each as itself.
    async fn write_dicts(
        writer: &mut Writer,
        writes: &DictWrites,
        now: Micros,
    ) -> Result<DictsStored, tokio_postgres::Error> {
        let tx = writer.client.transaction().await?;
        let mut answers = Vec::new();
        for (id, bytes) in writes.all() {
            let (id, bytes): (i64, &[u8]) = (i64::from(*id), bytes);
            tx.execute(
                "INSERT INTO pgfleet.frame_dicts (id, made, used, body) VALUES ($1, $2, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET used = excluded.used
                 WHERE frame_dicts.body = excluded.body",
                &[&id, &now, &bytes],
            )
            .await?;
            // Another collector's of the same id stays, and this one is not used.
            let same: bool = tx
                .query_one(
                    "SELECT body = $2 FROM pgfleet.frame_dicts WHERE id = $1",
                    &[&id, &bytes],
                )
                .await?
                .get(0);
            answers.push(same);
        }
        tx.commit().await?;
        Ok(DictsStored::from_answers(writes, &answers))
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
            self.frames.write_again();
            self.writer = Some(
                runtime
                    .block_on(Writer::connect(&self.config, &self.tls))
                    .map_err(|e| pgfleet_common::error::chain(&e))?,
            );
        }
        let writer = self.writer.as_mut().ok_or("no connection")?;
        Ok((runtime, writer))
    }
}

impl Sink for PgSink {
    fn commit(&mut self, ops: &[(u64, Op)]) -> Result<(), String> {
        // Connected first: a new connection has the dictionary in use
        // written again.
        self.ready()?;
        let now = now_micros();
        let writes = self.frames.writes(now);
        if writes.all().next().is_some() {
            let written = self.ready().and_then(|(runtime, writer)| {
                runtime
                    .block_on(Self::write_dicts(writer, &writes, now))
                    .map_err(|e| pgfleet_common::error::chain(&e))
            });
            self.frames.committed(written.as_ref().ok(), now);
            written?;
        }
        let mut bodies = Vec::new();
        for (_, op) in ops {
            if let Op::Applied { frames, .. } = op {
                for f in frames {
                    bodies.push((
                        f.server_id.as_str(),
                        f.at,
                        f.keyframe,
                        super::super::compress(f, &mut self.frames),
                    ));
                }
            }
        }
        let collector_id = self.collector_id.clone();
        let duplicates = self.duplicates.clone();
        let mut days = std::mem::take(&mut self.days);
        let mut keys = std::mem::take(&mut self.keys);
        let result = self.ready().and_then(|(runtime, writer)| {
            runtime
                .block_on(Self::commit(
                    writer,
                    &collector_id,
                    ops,
                    bodies,
                    &mut keys,
                    &mut days,
                    &duplicates,
                ))
                .map_err(|e| pgfleet_common::error::chain(&e))
        });
        self.days = days;
        if result.is_ok() {
            keys.committed();
        }
        self.keys = keys;
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

    fn prune(&mut self, retention: Retention, now: Micros) -> Result<Pruned, String> {
        let (runtime, writer) = self.ready()?;
        let client = &mut writer.client;
        runtime
            .block_on(async {
                for table in PARTITIONED {
                    create_partition(client, table, day_of(now) + 1).await?;
                }
                let cutoff = now - retention.frames.as_micros() as i64;
                let frames = drop_partitions(client, "frames", cutoff).await?;
                // The frames kept start at the day of the cutoff (whole days
                // go); a dictionary goes a day after the last use before it.
                client
                    .execute(
                        "DELETE FROM pgfleet.frame_dicts WHERE used < $1",
                        &[&(day_of(cutoff) * DAY_US - KEPT_PAST_RETENTION)],
                    )
                    .await?;
                let mut rollups = 0;
                for table in ["rollups", "load", "load_hours", "statements", "load_keys"] {
                    rollups +=
                        drop_partitions(client, table, now - retention.rollups.as_micros() as i64)
                            .await?;
                }
                Ok(Pruned { frames, rollups })
            })
            .map_err(|e: tokio_postgres::Error| pgfleet_common::error::chain(&e))
    }

    /// The store's format now: a newer collector that shares the store may
    /// have raised it. Only on the connection the commits keep.
    fn format(&mut self) -> Option<i64> {
        let (runtime, writer) = (self.runtime.as_ref()?, self.writer.as_mut()?);
        let row = runtime
            .block_on(writer.client.query_opt(super::FORMAT_NOW, &[]))
            .ok()??;
        row.try_get(0).ok()
    }

    /// The store's database, whichever collectors write it: its files'
    /// sizes, which the server adds up without reading them. Only on the
    /// connection the commits keep: none is made for it.
    fn size(&mut self) -> Option<u64> {
        let (runtime, writer) = (self.runtime.as_ref()?, self.writer.as_mut()?);
        let row = runtime
            .block_on(
                writer
                    .client
                    .query_one("SELECT pg_database_size(current_database())", &[]),
            )
            .ok()?;
        u64::try_from(row.try_get::<_, i64>(0).ok()?).ok()
    }
}

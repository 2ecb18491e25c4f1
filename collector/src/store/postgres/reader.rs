//! The reads of a PostgreSQL store, through a small pool of connections:
//! what it holds at start, minutes, a server at an instant, where an agent
//! stopped, and what other collectors stream.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use pgfleet_common::pgtls::PgTls;
use pgfleet_proto::time::{Micros, now_micros};
use tokio_postgres::GenericClient;
use tracing::warn;

use super::super::frame_dict::{FrameDicts, Named};
use super::super::{Elsewhere, Loaded, Rebuilt, Resume, StoredServer};
use super::Written;
use crate::load::count::Closed;
use crate::load::hours::{HOUR_US, HourTotals};
use crate::load::keys::{CHUNK_ROWS, Keys, KeysCache, Parsed, Pending};
use crate::load::statements::{Read, STATEMENTS_US};
use crate::load::{MinuteLoad, Wanted};
use crate::rollup::{MINUTE_US, Minute};

/// Reads, through a small pool of connections.
#[derive(Clone)]
pub(in crate::store) struct Reader {
    pub(super) pool: Pool,
    /// What this collector wrote of each agent.
    pub(super) written: Written,
    /// This collector, as the servers it streams name it.
    pub(super) collector_id: Arc<str>,
    /// The store's TLS, and the store as messages name it.
    pub(super) tls: PgTls,
    pub(super) place: Arc<str>,
    /// The frame dictionaries loaded.
    pub(super) dicts: FrameDicts,
}

/// Why a read failed.
type ReadError = String;

fn read_error(e: tokio_postgres::Error) -> ReadError {
    pgfleet_common::error::chain(&e)
}

impl Reader {
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, ReadError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.tls.explain(&self.place, &e),
            e => e.to_string(),
        })
    }

    pub(super) async fn loaded(&self) -> Result<Loaded, ReadError> {
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
        // And what was open of their load.
        let now = now_micros();
        let ids_owned = ids.map(<[String]>::to_vec);
        let (minute, hour, interval) = (
            now - now.rem_euclid(crate::load::COARSE_US),
            now - now.rem_euclid(HOUR_US),
            now - now.rem_euclid(STATEMENTS_US),
        );
        let mut hours: HashMap<String, HourTotals> = HashMap::new();
        self.each_hour(ids_owned.clone(), hour, hour + 1, |id, h| {
            hours.insert(id.to_owned(), h.clone());
        })
        .await?;
        let mut open: HashMap<String, Vec<Closed>> = HashMap::new();
        self.each_load(
            ids_owned.clone(),
            minute,
            minute + 1,
            Wanted::All,
            |server_id, m| {
                let h = hours
                    .remove(server_id)
                    .unwrap_or_else(|| HourTotals::holding(minute));
                open.entry(server_id.to_owned())
                    .or_default()
                    .push(Closed::Minute(m, h));
            },
        )
        .await?;
        for (server_id, h) in hours {
            open.entry(server_id)
                .or_default()
                .push(Closed::Minute(MinuteLoad::default(), h));
        }
        self.each_statements(ids_owned, interval, interval + 1, |server_id, at, read| {
            open.entry(server_id.to_owned())
                .or_default()
                .push(Closed::Statements(at, read));
        })
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let server_id: String = row.get(0);
            let labels: String = row.get(2);
            out.push(StoredServer {
                activity: self.rebuild(&server_id, Micros::MAX).await?,
                minute: recent.remove(&server_id),
                load: open.remove(&server_id).unwrap_or_default(),
                agent_id: row.get(1),
                labels: super::super::stored_labels(&labels),
                interval: super::super::stored_interval(row.get(3)),
                server_id,
            });
        }
        Ok(out)
    }

    /// The minutes that start in `[start, end)` of `servers` (None: every
    /// server), by start and then server, as they come: a fleet's day of
    /// them is not held at once.
    ///
    /// `rollups` is keyed by minute and then server, so a few servers'
    /// minutes are each found by that key, one lookup per minute of the
    /// stored range for them all (`= ANY` on the key's second column, the
    /// first equal), rather than every server's minutes read. More servers
    /// than [`super::super::MANY_SERVERS`] are read in one pass over the
    /// range, decoding only theirs.
    pub(in crate::store) async fn fold_minutes<S>(
        &self,
        start: Micros,
        end: Micros,
        servers: Option<Vec<String>>,
        mut state: S,
        f: fn(&mut S, &str, Minute),
    ) -> Result<S, ReadError> {
        use tokio_postgres::types::ToSql;
        let few = servers
            .as_ref()
            .filter(|ids| ids.len() <= super::super::MANY_SERVERS);
        if few.is_some_and(Vec::is_empty) {
            return Ok(state);
        }
        // Every stored minute starts on a minute.
        let from = start.saturating_add((MINUTE_US - start.rem_euclid(MINUTE_US)) % MINUTE_US);
        let client = self.client().await?;
        let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) = match few {
            Some(ids) => (
                "SELECT r.minute, r.server_id, r.body
                 FROM (SELECT min(minute) AS first, max(minute) AS last FROM pgfleet.rollups) AS kept,
                      generate_series(greatest($1::bigint, kept.first), least($2::bigint - 1, kept.last),
                                      $4::bigint) AS m(minute),
                      pgfleet.rollups AS r
                 WHERE kept.first IS NOT NULL AND r.minute = m.minute AND r.server_id = ANY($3::text[])
                 ORDER BY r.minute, r.server_id",
                vec![&from, &end, ids, &MINUTE_US],
            ),
            None => (
                "SELECT minute, server_id, body FROM pgfleet.rollups
                 WHERE minute >= $1 AND minute < $2 ORDER BY minute, server_id",
                vec![&start, &end],
            ),
        };
        let rows = client.query_raw(sql, params).await.map_err(read_error)?;
        let wanted: Option<std::collections::HashSet<&str>> = servers
            .as_ref()
            .filter(|_| few.is_none())
            .map(|ids| ids.iter().map(String::as_str).collect());
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = tokio_stream::StreamExt::next(&mut rows).await {
            let row = row.map_err(read_error)?;
            let (start, server_id): (i64, &str) = (row.get(0), row.get(1));
            if wanted.as_ref().is_some_and(|w| !w.contains(server_id)) {
                continue;
            }
            if let Some(minute) = super::super::rollup(server_id, start, row.get(2)) {
                f(&mut state, server_id, minute);
            }
        }
        Ok(state)
    }

    /// Hands `f` each minute of load that starts in `[start, end)`, of
    /// `servers` (None: every server), as it is read (see
    /// [`Reader::each_parsed`]): a fleet's day is never held at once.
    /// Each minute has what `wanted` reads of it.
    pub(in crate::store) async fn each_load(
        &self,
        servers: Option<Vec<String>>,
        start: Micros,
        end: Micros,
        wanted: Wanted,
        mut f: impl FnMut(&str, MinuteLoad),
    ) -> Result<(), ReadError> {
        let rows = Rows {
            table: "load",
            key: "minute",
            servers,
            start,
            end,
        };
        let parse = |at, body: &[u8]| Some(MinuteLoad::parse(at, body)?.only(wanted));
        self.each_parsed(rows, parse, |id, _, m| f(id, m)).await
    }

    /// Hands `f` each statement interval that starts in `[start, end)`, of
    /// `servers`, as it is read (see [`Reader::each_parsed`]).
    pub(in crate::store) async fn each_statements(
        &self,
        servers: Option<Vec<String>>,
        start: Micros,
        end: Micros,
        f: impl FnMut(&str, Micros, Read),
    ) -> Result<(), ReadError> {
        let rows = Rows {
            table: "statements",
            key: "at",
            servers,
            start,
            end,
        };
        self.each_parsed(rows, |_, body| Read::parse(body), f).await
    }

    /// Hands `f` each of `rows` decoded, as they are read (see [`Chunks`]):
    /// the dictionaries each chunk names that the cache does not hold are
    /// read between chunks, on the same connection (see [`KeysCache`]).
    async fn each_parsed<P: Parsed>(
        &self,
        rows: Rows,
        parse: impl Fn(i64, &[u8]) -> Option<P>,
        mut f: impl FnMut(&str, i64, P::Row),
    ) -> Result<(), ReadError> {
        let start = rows.start;
        let client = self.client().await?;
        let mut chunks = Chunks::open(&client, rows);
        let mut cache = KeysCache::default();
        while let Some(rows) = chunks.next().await? {
            let pending = Pending::new(
                rows.iter()
                    .map(|r| {
                        let at: i64 = r.get(1);
                        (r.get(0), at, parse(at, r.get(2)))
                    })
                    .collect(),
            );
            drop(rows);
            let missing = cache.missing(&pending);
            let found = dictionaries(&**client, start, &missing).await?;
            cache.found(missing, found);
            pending.finish(&mut cache, &mut f);
        }
        Ok(())
    }

    /// Hands `f` each hour of load totals that starts in `[start, end)`,
    /// of `servers`, as it is read (see [`Chunks`]).
    pub(in crate::store) async fn each_hour(
        &self,
        servers: Option<Vec<String>>,
        start: Micros,
        end: Micros,
        mut f: impl FnMut(&str, &HourTotals),
    ) -> Result<(), ReadError> {
        let client = self.client().await?;
        let rows = Rows {
            table: "load_hours",
            key: "hour",
            servers,
            start,
            end,
        };
        let mut chunks = Chunks::open(&client, rows);
        let mut h = HourTotals::default();
        while let Some(rows) = chunks.next().await? {
            for r in rows {
                let (server_id, at, body): (&str, i64, &[u8]) = (r.get(0), r.get(1), r.get(2));
                if h.decode_from(at, body) {
                    f(server_id, &h);
                } else {
                    warn!(server.id = %server_id, hour = at, "Skipped an hour of load totals that does not decode.")
                }
            }
        }
        Ok(())
    }

    /// The texts of these fingerprints, where known.
    pub(in crate::store) async fn texts(
        &self,
        fingerprints: Vec<u64>,
    ) -> Result<HashMap<u64, String>, ReadError> {
        let client = self.client().await?;
        let keys: Vec<i64> = fingerprints.iter().map(|f| *f as i64).collect();
        let rows = client
            .query(
                "SELECT fingerprint, text FROM pgfleet.queries WHERE fingerprint = ANY($1)",
                &[&keys],
            )
            .await
            .map_err(read_error)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    /// The server at `at`: its last keyframe at or before it, and every delta
    /// after that keyframe up to `at`.
    pub(in crate::store) async fn rebuild(
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
        let frames: Vec<(Micros, bool, Vec<u8>)> = rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let named = self
            .load_dicts(&client, frames.iter().map(|f| f.2.as_slice()))
            .await?;
        Ok(super::super::replay(server_id, None, frames, &named))
    }

    /// The frame dictionaries `bodies` name, those not loaded loaded.
    async fn load_dicts<'a>(
        &self,
        client: &tokio_postgres::Client,
        bodies: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Named, ReadError> {
        let (mut named, missing) = self.dicts.named(bodies);
        if missing.is_empty() {
            return Ok(named);
        }
        let ids: Vec<i64> = missing.iter().map(|&id| i64::from(id)).collect();
        let rows = client
            .query(
                "SELECT id, body FROM pgfleet.frame_dicts WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(read_error)?;
        let mut found: HashMap<i64, &[u8]> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for id in missing {
            named.load(&self.dicts, id, found.remove(&i64::from(id)));
        }
        Ok(named)
    }

    /// Where the store says `agent_id` stopped.
    pub(in crate::store) async fn resume(
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
    pub(in crate::store) async fn elsewhere(&self) -> Result<Vec<Elsewhere>, ReadError> {
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
                    labels: super::super::stored_labels(&labels),
                    interval: super::super::stored_interval(row.get(3)),
                    collector: row.get::<_, String>(4).into(),
                    connected: row.get(5),
                }
            })
            .collect())
    }

    /// Each server's frames stored after its base, applied to the base;
    /// only the servers with such frames, None where a delta does not apply.
    pub(in crate::store) async fn advance(
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
        let named = self
            .load_dicts(&client, frames.values().flatten().map(|f| f.2.as_slice()))
            .await?;
        Ok(bases
            .into_iter()
            .filter_map(|(server_id, base)| {
                let new = frames.remove(&server_id)?;
                let state = super::super::replay(&server_id, Some(base), new, &named);
                Some((server_id, state))
            })
            .collect())
    }
}

/// The dictionaries (see [`crate::load::dictionaries`]) `named`, by server
/// and id, in one query. A row names a dictionary of its own hour or a later
/// one, so those of rows from `start` on are in the partitions from its hour
/// on.
async fn dictionaries(
    client: &impl GenericClient,
    start: Micros,
    named: &std::collections::BTreeSet<(String, i64)>,
) -> Result<HashMap<(String, i64), Keys>, ReadError> {
    let since = start - start.rem_euclid(HOUR_US);
    let mut out = HashMap::new();
    if named.is_empty() {
        return Ok(out);
    }
    let (servers, ids): (Vec<&str>, Vec<i64>) =
        named.iter().map(|(s, id)| (s.as_str(), *id)).unzip();
    let rows = client
        .query(
            "SELECT k.server_id, k.id, k.body FROM pgfleet.load_keys k
             JOIN unnest($1::text[], $2::bigint[]) AS w (server_id, id)
               ON k.server_id = w.server_id AND k.id = w.id
             WHERE k.hour >= $3",
            &[&servers, &ids, &since],
        )
        .await
        .map_err(read_error)?;
    for r in rows {
        let (server_id, id, body): (String, i64, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
        match Keys::decode(&body) {
            Some(k) => {
                out.insert((server_id, id), k);
            }
            None => {
                warn!(server.id = %server_id, keys = id, "A dictionary of load strings does not decode; the rows that name it are skipped.")
            }
        }
    }
    Ok(out)
}

/// Which rows a read takes: of `table` with `key` in `[start, end)`, of
/// `servers` (None: every server).
struct Rows {
    table: &'static str,
    key: &'static str,
    servers: Option<Vec<String>>,
    start: Micros,
    end: Micros,
}

/// A range's rows, `(server_id, key, body)`, [`CHUNK_ROWS`] at a time, each
/// chunk a statement of its own that starts after the last row of the one
/// before, in the tables' key order (server, then time), so that a fleet's
/// range is never held at once, the server sorts nothing (it walks each
/// partition's key), and no session of the store's sits idle in a
/// transaction between chunks, as it would with a portal.
struct Chunks<'a> {
    client: &'a tokio_postgres::Client,
    rows: Rows,
    /// The last row read, `(server_id, key)`.
    after: Option<(String, i64)>,
    done: bool,
}

impl<'a> Chunks<'a> {
    fn open(client: &'a tokio_postgres::Client, rows: Rows) -> Chunks<'a> {
        Chunks {
            client,
            rows,
            after: None,
            done: false,
        }
    }

    /// The next chunk of rows; None once every row is read.
    async fn next(&mut self) -> Result<Option<Vec<tokio_postgres::Row>>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let Rows {
            table,
            key,
            servers,
            start,
            end,
        } = &self.rows;
        let select = format!(
            "SELECT server_id, {key}, body FROM pgfleet.{table}
             WHERE {key} >= $1 AND {key} < $2
               AND ($3::text[] IS NULL OR server_id = ANY($3))"
        );
        let rows = match &self.after {
            None => {
                self.client
                    .query(
                        &format!("{select} ORDER BY server_id, {key} LIMIT {CHUNK_ROWS}"),
                        &[start, end, servers],
                    )
                    .await
            }
            Some((server_id, at)) => {
                self.client
                    .query(
                        &format!(
                            "{select} AND (server_id, {key}) > ($4, $5)
                             ORDER BY server_id, {key} LIMIT {CHUNK_ROWS}"
                        ),
                        &[start, end, servers, server_id, at],
                    )
                    .await
            }
        }
        .map_err(read_error)?;
        self.done = rows.len() < CHUNK_ROWS;
        if let Some(last) = rows.last() {
            self.after = Some((last.get(0), last.get(1)));
        }
        Ok((!rows.is_empty()).then_some(rows))
    }
}

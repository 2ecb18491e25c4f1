//! The embedded history: one SQLite file under `--data-dir` (WAL mode),
//! written by the store's writer thread and read through a second
//! connection.

use std::collections::HashMap;
use std::path::Path;

use pgfleet_proto::time::{Micros, now_micros};
use rusqlite::{Connection, OptionalExtension, params};
use tracing::{info, warn};

use super::{Loaded, Op, Rebuilt, Retention, Sink, StoreError, StoredServer};
use crate::load::count::Closed;
use crate::load::dictionaries::Dictionaries;
use crate::load::hours::{HOUR_US, HourTotals};
use crate::load::keys::{Keys, Pending};
use crate::load::statements::{Read, STATEMENTS_US};
use crate::load::{COARSE_US, MinuteLoad};
use crate::rollup::Minute;

/// The tables. Frames are appended in the order they are applied (rowid),
/// which keeps a second's thousands of inserts at the end of the table, and
/// found by server and time through an index of small keys.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS agents (
        agent_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS servers (
        server_id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        labels TEXT NOT NULL,
        interval_ms INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS frames (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        keyframe INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS frames_by_server ON frames (server_id, at);
    CREATE TABLE IF NOT EXISTS rollups (
        minute INTEGER NOT NULL,
        server_id TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (minute, server_id)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS load (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        minute INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS load_by_server ON load (server_id, minute);
    CREATE TABLE IF NOT EXISTS load_hours (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS load_hours_by_server ON load_hours (server_id, hour);
    DROP INDEX IF EXISTS load_hours_by_hour;
    -- A fleet's day of hours read by time from the index alone (its rows
    -- are small), not from a row of the table for each.
    CREATE INDEX IF NOT EXISTS load_hours_in_hour ON load_hours (hour, server_id, body);
    CREATE TABLE IF NOT EXISTS statements (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS statements_by_server ON statements (server_id, at);
    CREATE INDEX IF NOT EXISTS statements_by_at ON statements (at);
    CREATE TABLE IF NOT EXISTS load_keys (
        server_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (server_id, id)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS load_keys_by_hour ON load_keys (hour);
    CREATE TABLE IF NOT EXISTS queries (
        fingerprint INTEGER PRIMARY KEY,
        text TEXT NOT NULL);";

/// The writer's connection and its compressor.
pub(super) struct SqliteSink {
    db: Connection,
    /// Each server's dictionary of strings for the hour being written.
    keys: Dictionaries,
}

/// Opens (creating it if need be) `dir/pgfleet.sqlite`: the writer, a
/// connection for reads, what the file holds, and its name.
pub(super) fn open(dir: &Path) -> Result<(SqliteSink, Connection, Loaded, String), StoreError> {
    let path = dir.join("pgfleet.sqlite");
    let place = path.display().to_string();
    let fail = |e: rusqlite::Error| StoreError::new(&place, e);
    let db = connect(&path).map_err(fail)?;
    migrate(&db).map_err(fail)?;
    db.execute_batch(SCHEMA).map_err(fail)?;
    let loaded = loaded(&db, &path).map_err(fail)?;
    let reader = connect(&path).map_err(fail)?;
    info!(
        path = %place,
        agents = loaded.agents.len(),
        servers = loaded.servers.len(),
        "History store opened."
    );
    let sink = SqliteSink {
        db,
        keys: Dictionaries::default(),
    };
    Ok((sink, reader, loaded, place))
}

/// Moves frames kept by an earlier version (a table keyed by server and
/// time) into the present layout.
fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let old: Option<String> = db
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'frames'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if old.is_some_and(|sql| sql.contains("WITHOUT ROWID")) {
        info!("Moving the stored frames to the present layout.");
        db.execute_batch(&format!(
            "BEGIN;
             ALTER TABLE frames RENAME TO frames_old;
             {SCHEMA}
             INSERT INTO frames (server_id, at, keyframe, body)
                 SELECT server_id, at, keyframe, body FROM frames_old ORDER BY at;
             DROP TABLE frames_old;
             COMMIT;"
        ))?;
    }
    Ok(())
}

/// Opens a connection to the file.
///
/// The WAL is copied back into the file once it holds 16,384 pages (64 MiB),
/// not SQLite's 1,000: every server's frame dirties a page of the index each
/// second, so a checkpoint every 1,000 pages wrote the same pages to the file
/// again and again, each time with an fsync. At 2,500 servers the checkpoints
/// took 23% of the writer's CPU before and 12% after (`perf`); the WAL file
/// stays at up to about 64 MiB between checkpoints.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 5000;
         PRAGMA wal_autocheckpoint = 16384;",
    )?;
    Ok(db)
}

/// What the file holds: every agent's last sequence, and every server with
/// its state rebuilt from its frames. The servers are rebuilt on as many
/// threads as there are cores (at most [`REBUILDERS`]), each with its own
/// connection: a collector restarted under a large fleet serves no agent
/// until they are (about 1 ms each here, 10 s for 10,000 servers on one).
fn loaded(db: &Connection, path: &Path) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut agents = db.prepare("SELECT agent_id, last_seq FROM agents")?;
    let rows = agents.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (id, seq) = row?;
        loaded.agents.insert(id, seq.max(0) as u64);
    }
    let mut servers = db.prepare("SELECT server_id, agent_id, labels, interval_ms FROM servers")?;
    let rows = servers.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut recent: HashMap<String, Minute> = HashMap::new();
    let since = now_micros() - 2 * crate::rollup::MINUTE_US;
    for (server_id, minute) in minutes(db, since, Micros::MAX)? {
        recent.insert(server_id, minute);
    }
    let listed = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, REBUILDERS);
    let chunk = listed.len().div_ceil(threads).max(1);
    let rebuilt = std::thread::scope(|scope| {
        let workers: Vec<_> = listed
            .chunks(chunk)
            .map(|servers| {
                scope.spawn(move || {
                    let db = connect(path)?;
                    servers
                        .iter()
                        .map(|(server_id, ..)| {
                            Ok((
                                rebuild(&db, server_id, Micros::MAX)?,
                                open_load(&db, server_id, now_micros())?,
                            ))
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    for ((server_id, agent_id, labels, interval_ms), (activity, load)) in
        listed.into_iter().zip(rebuilt.into_iter().flatten())
    {
        loaded.servers.push(StoredServer {
            minute: recent.remove(&server_id),
            load,
            labels: super::stored_labels(&labels),
            interval: super::stored_interval(interval_ms),
            server_id,
            agent_id,
            activity,
        });
    }
    Ok(loaded)
}

/// The most threads that rebuild servers when the file is opened.
const REBUILDERS: usize = 4;

/// The minutes that start in `[start, end)`, oldest first.
pub(super) fn minutes(
    db: &Connection,
    start: Micros,
    end: Micros,
) -> rusqlite::Result<Vec<(String, Minute)>> {
    let mut rows = db.prepare_cached(
        "SELECT minute, server_id, body FROM rollups WHERE minute >= ?1 AND minute < ?2 ORDER BY minute",
    )?;
    let rows = rows.query_map(params![start, end], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (start, server_id, body) = row?;
        match Minute::decode(start, &body) {
            Some(minute) => out.push((server_id, minute)),
            None => {
                warn!(server.id = %server_id, minute = start, "Skipped a rollup that does not decode.")
            }
        }
    }
    Ok(out)
}

/// How many servers make a read of a time range scan it whole.
const MANY_SERVERS: usize = 64;

/// Rows `(server_id, start, body)` of `table` keyed by `column`, in
/// `[start, end)`, of `servers` (None: every server, reading the whole table).
fn rows(
    db: &Connection,
    table: &str,
    column: &str,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
) -> rusqlite::Result<Vec<(String, i64, Vec<u8>)>> {
    let mut out = Vec::new();
    each_row(
        db,
        table,
        column,
        servers,
        start,
        end,
        |server_id, at, body| out.push((server_id.to_owned(), at, body.to_owned())),
    )?;
    Ok(out)
}

/// Hands each row of [`rows`] to `f` as it is read, without copying it.
fn each_row(
    db: &Connection,
    table: &str,
    column: &str,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
    mut f: impl FnMut(&str, i64, &[u8]),
) -> rusqlite::Result<()> {
    let mut each = |rows: &mut rusqlite::Rows, wanted: Option<&std::collections::HashSet<&str>>| {
        while let Some(r) = rows.next()? {
            let server_id = r.get_ref(0)?.as_str()?;
            if wanted.is_none_or(|w| w.contains(server_id)) {
                f(server_id, r.get(1)?, r.get_ref(2)?.as_blob()?);
            }
        }
        rusqlite::Result::Ok(())
    };
    // Many servers of a table indexed by time: one scan of the range, kept
    // by server here, rather than a seek per server.
    if let Some(ids) = servers
        && ids.len() > MANY_SERVERS
        && table != "load"
    {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut q = db.prepare_cached(&format!(
            "SELECT server_id, {column}, body FROM {table} WHERE {column} >= ?1 AND {column} < ?2"
        ))?;
        return each(&mut q.query(params![start, end])?, Some(&wanted));
    }
    match servers {
        None => {
            let mut q = db.prepare_cached(&format!(
                "SELECT server_id, {column}, body FROM {table} WHERE {column} >= ?1 AND {column} < ?2"
            ))?;
            each(&mut q.query(params![start, end])?, None)?;
        }
        Some(servers) => {
            let mut q = db.prepare_cached(&format!(
                "SELECT server_id, {column}, body FROM {table}
                 WHERE server_id = ?1 AND {column} >= ?2 AND {column} < ?3 ORDER BY {column}"
            ))?;
            for server_id in servers {
                each(&mut q.query(params![server_id, start, end])?, None)?;
            }
        }
    }
    Ok(())
}

/// The minutes of load that start in `[start, end)`, of `servers` (None:
/// every server).
pub(super) fn load(
    db: &Connection,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
) -> rusqlite::Result<Vec<(String, MinuteLoad)>> {
    let pending = Pending::new(
        rows(db, "load", "minute", servers, start, end)?
            .into_iter()
            .map(|(server_id, at, body)| (server_id, at, MinuteLoad::parse(at, &body)))
            .collect(),
    );
    let keys = dictionaries(db, pending.named())?;
    let mut out = Vec::new();
    for (server_id, at, m) in pending.finish(&keys) {
        match m {
            Some(m) => out.push((server_id, m)),
            None => {
                warn!(server.id = %server_id, minute = at, "Skipped a minute of load that does not decode.")
            }
        }
    }
    Ok(out)
}

/// The dictionaries (see [`crate::load::dictionaries`]) `named`, by server
/// and id; one not found is left out, and the rows that name it fail their
/// decoding.
fn dictionaries(
    db: &Connection,
    named: std::collections::BTreeSet<(String, i64)>,
) -> rusqlite::Result<HashMap<(String, i64), Keys>> {
    let mut out = HashMap::new();
    let mut q = db.prepare_cached("SELECT body FROM load_keys WHERE server_id = ?1 AND id = ?2")?;
    for (server_id, id) in named {
        let body: Option<Vec<u8>> = q
            .query_row(params![server_id, id], |r| r.get(0))
            .optional()?;
        match body.as_deref().and_then(Keys::decode) {
            Some(k) => {
                out.insert((server_id, id), k);
            }
            None => {
                warn!(server.id = %server_id, keys = id, "A dictionary of load strings is missing or does not decode; the rows that name it are skipped.")
            }
        }
    }
    Ok(out)
}

/// Hands `f` each hour of load totals that starts in `[start, end)`, of
/// `servers`, as it is read (one hour's allocation serves them all).
pub(super) fn each_hour(
    db: &Connection,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
    mut f: impl FnMut(&str, &HourTotals),
) -> rusqlite::Result<()> {
    let mut h = HourTotals::default();
    each_row(
        db,
        "load_hours",
        "hour",
        servers,
        start,
        end,
        |server_id, at, body| {
            if h.decode_from(at, body) {
                f(server_id, &h);
            } else {
                warn!(server.id = %server_id, hour = at, "Skipped an hour of load totals that does not decode.")
            }
        },
    )
}

/// The statement intervals that start in `[start, end)`, of `servers`.
pub(super) fn statements(
    db: &Connection,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
) -> rusqlite::Result<Vec<(String, Micros, Read)>> {
    let pending = Pending::new(
        rows(db, "statements", "at", servers, start, end)?
            .into_iter()
            .map(|(server_id, at, body)| (server_id, at, Read::parse(&body)))
            .collect(),
    );
    let keys = dictionaries(db, pending.named())?;
    let mut out = Vec::new();
    for (server_id, at, read) in pending.finish(&keys) {
        match read {
            Some(read) => out.push((server_id, at, read)),
            None => {
                warn!(server.id = %server_id, at, "Skipped statement statistics that do not decode.")
            }
        }
    }
    Ok(out)
}

/// What a collector that stopped stored of a server's open minute, hour and
/// statement interval at `now`.
fn open_load(db: &Connection, server_id: &str, now: Micros) -> rusqlite::Result<Vec<Closed>> {
    let ids = [server_id.to_owned()];
    let minute = now - now.rem_euclid(COARSE_US);
    let hour = now - now.rem_euclid(HOUR_US);
    let interval = now - now.rem_euclid(STATEMENTS_US);
    let mut out = Vec::new();
    let mut hours = Vec::new();
    each_hour(db, Some(&ids), hour, hour + 1, |_, h| hours.push(h.clone()))?;
    for (_, m) in load(db, Some(&ids), minute, minute + 1)? {
        let h = hours
            .first()
            .cloned()
            .unwrap_or_else(|| HourTotals::holding(minute));
        out.push(Closed::Minute(m, h));
    }
    if out.is_empty()
        && let Some(h) = hours.into_iter().next()
    {
        out.push(Closed::Minute(MinuteLoad::default(), h));
    }
    for (_, at, read) in statements(db, Some(&ids), interval, interval + 1)? {
        out.push(Closed::Statements(at, read));
    }
    Ok(out)
}

/// The texts of these fingerprints, where known.
pub(super) fn texts(
    db: &Connection,
    fingerprints: &[u64],
) -> rusqlite::Result<HashMap<u64, String>> {
    let mut q = db.prepare_cached("SELECT text FROM queries WHERE fingerprint = ?1")?;
    let mut out = HashMap::new();
    for f in fingerprints {
        if let Some(text) = q
            .query_row(params![*f as i64], |r| r.get::<_, String>(0))
            .optional()?
        {
            out.insert(*f, text);
        }
    }
    Ok(out)
}

/// Deletes frames and rollups older than their retention at `now`.
fn prune(db: &Connection, retention: Retention, now: Micros) -> rusqlite::Result<(usize, usize)> {
    // Frames are in the order they were applied, so those past the cutoff
    // are the ones before the first that is not: found by reading only them.
    let frames = db.execute(
        "DELETE FROM frames WHERE id < coalesce(
             (SELECT id FROM frames WHERE at >= ?1 ORDER BY id LIMIT 1),
             (SELECT max(id) + 1 FROM frames))",
        params![now - retention.frames.as_micros() as i64],
    )?;
    let rollups_before = now - retention.rollups.as_micros() as i64;
    let rollups = db.execute(
        "DELETE FROM rollups WHERE minute < ?1",
        params![rollups_before],
    )?;
    let load = db.execute(
        "DELETE FROM load WHERE minute < ?1",
        params![rollups_before],
    )?;
    let hours = db.execute(
        "DELETE FROM load_hours WHERE hour < ?1",
        params![rollups_before - HOUR_US],
    )?;
    let statements = db.execute(
        "DELETE FROM statements WHERE at < ?1",
        params![rollups_before],
    )?;
    // The rows that name a dictionary start before the hour after its own.
    db.execute(
        "DELETE FROM load_keys WHERE hour <= ?1",
        params![rollups_before - HOUR_US],
    )?;
    Ok((frames, rollups + load + hours + statements))
}

/// The server at `at`: the last keyframe at or before it, and every delta
/// after that keyframe up to `at`.
pub(super) fn rebuild(
    db: &Connection,
    server_id: &str,
    at: Micros,
) -> rusqlite::Result<Option<Rebuilt>> {
    let Some(start): Option<i64> = db
        .query_row(
            "SELECT max(at) FROM frames WHERE server_id = ?1 AND keyframe = 1 AND at <= ?2",
            params![server_id, at],
            |r| r.get(0),
        )
        .optional()?
        .flatten()
    else {
        return Ok(None);
    };
    let mut frames = db.prepare(
        "SELECT at, keyframe, body FROM frames WHERE server_id = ?1 AND at >= ?2 AND at <= ?3 ORDER BY at",
    )?;
    let rows = frames
        .query_map(params![server_id, start, at], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(super::replay(server_id, None, rows))
}

impl Sink for SqliteSink {
    fn commit(&mut self, ops: &[(u64, Op)]) -> Result<(), String> {
        commit(&mut self.db, ops, &mut self.keys).map_err(|e| e.to_string())?;
        self.keys.committed();
        Ok(())
    }

    fn prune(&mut self, retention: Retention, now: Micros) -> Result<(usize, usize), String> {
        prune(&self.db, retention, now).map_err(|e| e.to_string())
    }
}

fn commit(db: &mut Connection, ops: &[(u64, Op)], keys: &mut Dictionaries) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut frame = tx.prepare_cached(
            "INSERT OR REPLACE INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut agent = tx.prepare_cached(
            "INSERT INTO agents (agent_id, last_seq) VALUES (?1, ?2)
             ON CONFLICT (agent_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
        )?;
        let mut server = tx.prepare_cached(
            "INSERT OR REPLACE INTO servers (server_id, agent_id, labels, interval_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut rollup = tx.prepare_cached(
            "INSERT OR REPLACE INTO rollups (minute, server_id, body) VALUES (?1, ?2, ?3)",
        )?;
        let mut load = tx.prepare_cached(
            "INSERT INTO load (server_id, minute, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (server_id, minute) DO UPDATE SET body = excluded.body",
        )?;
        let mut hour = tx.prepare_cached(
            "INSERT INTO load_hours (server_id, hour, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (server_id, hour) DO UPDATE SET body = excluded.body",
        )?;
        let mut statements = tx.prepare_cached(
            "INSERT INTO statements (server_id, at, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (server_id, at) DO UPDATE SET body = excluded.body",
        )?;
        let mut text = tx.prepare_cached(
            "INSERT INTO queries (fingerprint, text) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for (_, op) in ops {
            match op {
                Op::Applied {
                    agent_id,
                    seq,
                    frames,
                } => {
                    for f in frames {
                        let body = super::encode(f);
                        frame.execute(params![f.server_id, f.at, f.keyframe, body])?;
                    }
                    agent.execute(params![agent_id, *seq as i64])?;
                }
                Op::Server {
                    server_id,
                    agent_id,
                    labels,
                    interval_ms,
                } => {
                    let labels = super::labels_text(labels);
                    server.execute(params![server_id, agent_id, labels, *interval_ms as i64])?;
                }
                Op::Minute { server_id, minute } => {
                    rollup.execute(params![minute.start, server_id, minute.encode()])?;
                }
                Op::Load {
                    server_id,
                    minute,
                    hour: totals,
                } => {
                    if let Some(body) = super::load_row(keys, server_id, minute) {
                        load.execute(params![server_id, minute.start(), body])?;
                    }
                    hour.execute(params![server_id, totals.start, totals.encode()])?;
                }
                Op::Statements {
                    server_id,
                    at,
                    read,
                } => {
                    let body = keys.statements(server_id, *at, read);
                    statements.execute(params![server_id, at, body])?;
                }
                Op::Texts(texts) => {
                    for (f, t) in texts {
                        text.execute(params![*f as i64, t])?;
                    }
                }
                // Only this collector writes the file: whether an agent is
                // connected is in its memory.
                Op::Disconnected { .. } | Op::Flush(_) => {}
            }
        }
        let mut dictionary = tx.prepare_cached(
            "INSERT INTO load_keys (server_id, id, hour, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (server_id, id) DO UPDATE SET body = excluded.body",
        )?;
        for k in keys.unwritten() {
            dictionary.execute(params![k.server_id, k.id, k.hour, k.body])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, encode};
    use super::*;
    use pgfleet_proto::model::{Session, TargetStatus};
    use std::sync::Arc;

    fn frame() -> Frame {
        Frame {
            server_id: String::new(),
            at: 0,
            keyframe: true,
            status: TargetStatus::Up,
            sessions: Vec::new(),
            removed: Vec::new(),
            unchanged: Vec::new(),
            pools: Arc::default(),
            facts: None,
            databases: Vec::new(),
        }
    }

    #[test]
    fn history_past_its_retention_is_deleted() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        let now = 100 * 86_400_000_000;
        let hour = 3_600_000_000;
        for at in [now - 25 * hour, now - 23 * hour] {
            db.execute(
                "INSERT INTO frames (server_id, at, keyframe, body) VALUES ('a', ?1, 1, x'')",
                params![at],
            )
            .unwrap();
        }
        for minute in [now - 31 * 24 * hour, now - 29 * 24 * hour, now - hour] {
            db.execute("INSERT INTO rollups VALUES (?1, 'a', x'')", params![minute])
                .unwrap();
        }
        assert_eq!(prune(&db, Retention::default(), now).unwrap(), (1, 1));
        let count = |table: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((count("frames"), count("rollups")), (1, 2));
        let short = Retention {
            frames: std::time::Duration::from_secs(3600),
            rollups: std::time::Duration::from_secs(2 * 3600),
        };
        assert_eq!(prune(&db, short, now).unwrap(), (1, 1));
    }

    #[test]
    fn minutes_come_back_as_stored() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        let mut m = Minute::holding(90 * 60_000_000 + 5);
        m.samples = 3;
        m.covered_us = 3_000_000;
        m.values
            .insert((crate::rollup::Metric::Sessions, "active".into()), 7.0);
        db.execute(
            "INSERT INTO rollups VALUES (?1, 'a', ?2)",
            params![m.start, m.encode()],
        )
        .unwrap();
        let back = minutes(&db, m.start, m.start + 1).unwrap();
        assert_eq!(back, vec![("a".to_owned(), m.clone())]);
        assert!(minutes(&db, m.start + 1, Micros::MAX).unwrap().is_empty());
    }

    #[test]
    fn frames_of_the_earlier_layout_are_moved() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE frames (server_id TEXT NOT NULL, at INTEGER NOT NULL,
                 keyframe INTEGER NOT NULL, body BLOB NOT NULL,
                 PRIMARY KEY (server_id, at)) WITHOUT ROWID;
             INSERT INTO frames VALUES ('b', 20, 0, x'02'), ('a', 10, 1, x'01');",
        )
        .unwrap();
        migrate(&db).unwrap();
        db.execute_batch(SCHEMA).unwrap();
        let rows: Vec<(i64, String, i64)> = db
            .prepare("SELECT id, server_id, at FROM frames ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(1, "a".to_owned(), 10), (2, "b".to_owned(), 20)]);
        // A second open leaves them be.
        migrate(&db).unwrap();
        assert_eq!(
            prune(&db, Retention::default(), 20 + 3_600_000_000).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn a_delta_is_stored_without_what_its_base_holds_and_rebuilt_whole() {
        use pgfleet_proto::model::SessionState;
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        let first = Arc::new(Session {
            pid: 7,
            backend_start_us: 1,
            database: "orders".into(),
            user: "app".into(),
            application_name: "web".into(),
            query: "SELECT a_rather_long_column_list FROM orders WHERE id = ?".into(),
            state: SessionState::Idle,
            ..Default::default()
        });
        let second = Arc::new(Session {
            state: SessionState::Active,
            query_start_us: Some(5),
            ..(*first).clone()
        });
        let mask = pgfleet_proto::compact::unchanged(&second, &first);
        assert_ne!(mask, 0);
        let frames = [
            Frame {
                server_id: "a".into(),
                at: 10,
                keyframe: true,
                sessions: vec![first.clone()],
                removed: Vec::new(),
                unchanged: Vec::new(),
                ..frame()
            },
            Frame {
                server_id: "a".into(),
                at: 20,
                keyframe: false,
                sessions: vec![second.clone()],
                removed: Vec::new(),
                unchanged: vec![mask],
                ..frame()
            },
        ];
        let whole = encode(&Frame {
            unchanged: Vec::new(),
            ..frames[1].clone()
        });
        for f in &frames {
            let body = encode(f);
            db.execute(
                "INSERT INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, ?3, ?4)",
                params![f.server_id, f.at, f.keyframe, body],
            )
            .unwrap();
        }
        let stored: Vec<u8> = db
            .query_row("SELECT body FROM frames WHERE at = 20", [], |r| r.get(0))
            .unwrap();
        assert!(
            stored.len() < whole.len(),
            "{} vs {}",
            stored.len(),
            whole.len()
        );
        let state = rebuild(&db, "a", 25).unwrap().unwrap();
        assert_eq!(state.at, 20);
        assert_eq!(state.sessions.len(), 1);
        assert_eq!(*state.sessions[0], *second);
    }
}

//! The embedded history: one SQLite file under `--data-dir` (WAL mode),
//! written by the store's writer thread and read through a second
//! connection.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfleet_proto::time::{Micros, now_micros};
use rusqlite::{Connection, OptionalExtension, params};
use tracing::{info, warn};

use super::frame_dict::{
    DictTraining, DictWrites, DictsStored, FrameCoder, FrameDicts, KEPT_PAST_RETENTION,
};
use super::hours::{self, Hours};
use super::{
    FORMAT, Loaded, MANY_SERVERS, MinutesRead, Op, Pruned, Rebuilt, Retention, Sink, StoreError,
    StoredServer, newer_format,
};
use crate::load::count::Closed;
use crate::load::dictionaries::Dictionaries;
use crate::load::hours::{HOUR_US, HourTotals, PassedOver, ServerHours};
use crate::load::keys::{CHUNK_ROWS, Keys, KeysCache, Parsed, Pending};
use crate::load::statements::{Read, STATEMENTS_US};
use crate::load::{COARSE_US, MinuteLoad, Wanted};
use crate::rollup::{MINUTE_US, Minute};

/// The tables. Frames are appended in the order they are applied (rowid),
/// which keeps a second's thousands of inserts at the end of the table, and
/// found by server and time through `frame_index`, into which the writer
/// puts each server's frames every [`INDEX_EVERY`] (see [`Unindexed`]).
/// `kept` holds the frame up to which every frame is indexed
/// (`frames_indexed_to`). Public for the benches, which lay their files out
/// as the store does.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS agents (
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
    DROP INDEX IF EXISTS frames_by_server;
    CREATE TABLE IF NOT EXISTS frame_dicts (
        id INTEGER PRIMARY KEY,
        made INTEGER NOT NULL,
        used INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS frame_index (
        server_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        id INTEGER NOT NULL,
        keyframe INTEGER NOT NULL,
        PRIMARY KEY (server_id, at)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS kept (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS rollups (
        minute INTEGER NOT NULL,
        server_id TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (minute, server_id)) WITHOUT ROWID;
    -- Each server's minutes of an hour added up (see `hours`).
    CREATE TABLE IF NOT EXISTS rollup_hours (
        hour INTEGER NOT NULL,
        server_id TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (hour, server_id)) WITHOUT ROWID;
    -- Servers' hours built before a minute of theirs was written (see
    -- `hours`), and when the last was.
    CREATE TABLE IF NOT EXISTS rollup_hours_late (
        hour INTEGER NOT NULL,
        server_id TEXT NOT NULL,
        written INTEGER NOT NULL,
        PRIMARY KEY (hour, server_id)) WITHOUT ROWID;
    -- Servers' hours built before a statement interval of theirs was
    -- written: their statements are built again.
    CREATE TABLE IF NOT EXISTS statement_hours_late (
        hour INTEGER NOT NULL,
        server_id TEXT NOT NULL,
        written INTEGER NOT NULL,
        PRIMARY KEY (hour, server_id)) WITHOUT ROWID;
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
    -- Each server's minutes of load of an hour added up (store/hours.rs).
    CREATE TABLE IF NOT EXISTS load_tuple_hours (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS load_tuple_hours_by_server
        ON load_tuple_hours (server_id, hour);
    CREATE TABLE IF NOT EXISTS statements (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS statements_by_server ON statements (server_id, at);
    CREATE INDEX IF NOT EXISTS statements_by_at ON statements (at);
    -- Each server's statement intervals of an hour added up (store/hours.rs).
    CREATE TABLE IF NOT EXISTS statement_hours (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS statement_hours_by_server
        ON statement_hours (server_id, hour);
    CREATE INDEX IF NOT EXISTS statement_hours_by_hour ON statement_hours (hour);
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

/// How often the writer indexes a server's frames: those it has committed
/// since it last did.
///
/// An index of each frame by server and time, kept up as each frame is
/// written, dirtied a leaf of the index per frame: at thousands of servers a
/// commit wrote as many pages of it as it held frames, some 15 µs of the
/// writer's CPU a frame ("Stored frames: SQLite's part" in BENCHMARKS.md).
/// Indexed ten seconds at a time, in server order, each server's ten
/// entries went to one leaf together: about 5 µs a frame with the rows in a
/// new file. But an index that holds an hour or a day has a leaf of its own
/// for each server's latest entries, so each indexing of a server still
/// dirtied a leaf (and the inner pages above it), wrote it to the log and
/// copied it back at the checkpoint: in an index of an hour of 10,000
/// servers, SQLite took 12 µs a frame ten seconds at a time, 10.5 twenty,
/// 10 thirty and 9 a minute at a time ("Stored frames in a store an hour
/// old"), and the writer 0.84× the CPU a minute at a time. A minute's
/// frames of a server wait in memory, here and in [`Unindexed`]: some
/// 3 KiB of places a server sampled every second, ten times that at
/// 100 ms. With fewer commits than one every [`super::COMMIT_EVERY`], they
/// wait longer (see [`GROUPS`]).
pub(super) const INDEX_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The servers fall into this many groups (by a hash of their id), and each
/// commit indexes one group, in turn: with a commit every
/// [`super::COMMIT_EVERY`] (as under load), each server every
/// [`INDEX_EVERY`]; with fewer commits, less often, but never more than this
/// many commits' frames wait. Every server in one commit would be 600,000
/// entries at 10,000 servers, and every agent's acknowledgement would wait
/// for that commit.
const GROUPS: usize = (INDEX_EVERY.as_millis() / super::COMMIT_EVERY.as_millis()) as usize;
const _: () = assert!(GROUPS > 0, "COMMIT_EVERY must not exceed INDEX_EVERY");

/// The group `server_id` is indexed with (FNV-1a, so that a server keeps its
/// group from run to run; nothing depends on that but the evenness of
/// the groups, which a test checks).
fn group_of(server_id: &str) -> usize {
    let hash = server_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % GROUPS as u64) as usize
}

/// A frame's place, as `frame_index` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    at: Micros,
    id: i64,
    keyframe: bool,
}

/// The frames committed and not yet in `frame_index`, by server, oldest
/// first: the writer adds each commit's frames once it is committed, and
/// takes them out once their index is; reads look here first, then in the
/// file, so a frame is always found in the one or the other (or both).
#[derive(Clone, Default)]
pub(super) struct Unindexed(Arc<Mutex<HashMap<String, Vec<Place>>>>);

impl Unindexed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Place>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `server_id`'s frames at or before `at`.
    fn of(&self, server_id: &str, at: Micros) -> Vec<Place> {
        self.lock().get(server_id).map_or_else(Vec::new, |places| {
            places.iter().filter(|p| p.at <= at).copied().collect()
        })
    }
}

/// The writer's connection and its compressor.
pub(super) struct SqliteSink {
    db: Connection,
    /// Each server's dictionary of strings for the hour being written.
    keys: Dictionaries,
    /// What frames are compressed with.
    frames: FrameCoder,
    /// The frames committed and not yet indexed: the writer's own, by
    /// group, and the copy reads see.
    own: Vec<HashMap<String, Vec<Place>>>,
    unindexed: Unindexed,
    /// How many commits there were: the group whose turn it is.
    turn: usize,
    /// The last frame committed.
    last_frame: i64,
    /// Whether the next commit indexes every group (tests).
    all: bool,
    /// The round of deleting past retention under way, done a share after
    /// each commit.
    pruning: Option<Pruning>,
    /// The hours of rollups, built a share after each commit.
    hours: Hours,
    /// The time, as commits note when they wrote a minute (tests set it).
    clock: fn() -> Micros,
}

/// A round of deleting history past its retention (one every
/// `PRUNE_EVERY`), spread over the commits that follow it, a statement of at
/// most [`Pace::chunk`] rows at a time. Deleted at once, a minute of frames at
/// 10,000 servers (600,000 rows, and each server's entries in the index) held
/// the writer for some 1.6 s, in which the queue filled and the live view
/// stood still; and the minutes of load, found by reading the table whole,
/// held it longer the more the file kept.
struct Pruning {
    /// Rows of [`AGED`]'s tables before this (less each one's own shift) go.
    rollups_before: Micros,
    /// The first of [`AGED`]'s tables that may still hold such rows.
    table: usize,
    /// Frames before the first at or after this go.
    cutoff: Micros,
    /// Whether every frame before the cutoff is gone.
    frames_done: bool,
    /// The servers in the index, in the order their old entries go, and
    /// the next.
    servers: Vec<String>,
    next: usize,
    started: Instant,
    pace: Pace,
}

/// How a round goes.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// After each commit, each part of a round (the rollups' tables, the
    /// frames, the index's servers due) gets a statement that deletes; no
    /// more start once this is spent.
    budget: Duration,
    /// Rows deleted in one statement, at most.
    chunk: i64,
    /// Every server's old entries in the index are due this long into the
    /// round.
    index_over: Duration,
}

/// The writer gathers for [`super::COMMIT_EVERY`] between commits; at
/// 10,000 servers it deletes some 10,000 frames a second, about 3 µs each
/// here, and a few hundred servers' old entries in the index.
const PACE: Pace = Pace {
    budget: Duration::from_millis(25),
    chunk: 1000,
    index_over: Duration::from_secs(45),
};
/// An opened store: the writer, the readers' connections, the frames they
/// find in the writer's memory, the frame dictionaries they share, what the
/// file holds, and its name.
type Opened = (
    SqliteSink,
    Vec<Connection>,
    Unindexed,
    FrameDicts,
    Loaded,
    String,
);

/// Opens (creating it if need be) `dir/pgfleet.sqlite`, with `readers`
/// connections for reads, training frame dictionaries as `training` says.
pub(super) fn open(
    dir: &Path,
    readers: usize,
    training: DictTraining,
) -> Result<Opened, StoreError> {
    let path = dir.join("pgfleet.sqlite");
    let place = path.display().to_string();
    let fail = |e: rusqlite::Error| StoreError::new(&place, e);
    if let Some(found) = format(&path).map_err(fail)?.filter(|f| *f > FORMAT) {
        return Err(StoreError::new(&place, newer_format(found, false)));
    }
    let db = connect(&path).map_err(fail)?;
    migrate(&db).map_err(fail)?;
    let older_wrote = written_by_an_older_version(&db).map_err(fail)?;
    db.execute_batch(SCHEMA).map_err(fail)?;
    db.execute(
        "INSERT INTO kept (name, value) VALUES ('format', ?1)
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        [FORMAT],
    )
    .map_err(fail)?;
    if older_wrote {
        warn!(path = %place, "A version of pgfleet older than this file's index has written it since: its frames are indexed again.");
        db.execute_batch(
            "DELETE FROM frame_index; DELETE FROM kept WHERE name = 'frames_indexed_to';",
        )
        .map_err(fail)?;
    }
    let last_frame = index_the_rest(&db).map_err(fail)?;
    let dicts = FrameDicts::default();
    let loaded = loaded(&db, &path, &dicts).map_err(fail)?;
    let readers = (0..readers)
        .map(|_| connect(&path))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(fail)?;
    info!(
        path = %place,
        agents = loaded.agents.len(),
        servers = loaded.servers.len(),
        "History store opened."
    );
    let unindexed = Unindexed::default();
    let hours = Hours::opened(&db, now_micros()).map_err(fail)?;
    let sink = SqliteSink {
        db,
        keys: Dictionaries::default(),
        frames: FrameCoder::new(training, dicts.clone()),
        own: vec![HashMap::new(); GROUPS],
        unindexed: unindexed.clone(),
        turn: 0,
        last_frame,
        all: false,
        pruning: None,
        hours,
        clock: now_micros,
    };
    Ok((sink, readers, unindexed, dicts, loaded, place))
}

/// The store format of the collectors that opened the file at `path` (see
/// [`FORMAT`]), read on a read-only connection of its own, which changes
/// none of its tables or settings (not even its journal's mode; SQLite may
/// leave an empty log beside it); None for no file, or one from before
/// formats were kept.
fn format(path: &Path) -> rusqlite::Result<Option<i64>> {
    if !path.exists() {
        return Ok(None);
    }
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let kept: i64 = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kept'",
        [],
        |r| r.get(0),
    )?;
    if kept == 0 {
        return Ok(None);
    }
    db.query_row("SELECT value FROM kept WHERE name = 'format'", [], |r| {
        r.get(0)
    })
    .optional()
}

/// Whether a version from before `frame_index` has written the file since
/// this one did: it made its own index of the frames again, and may have
/// numbered frames again from 1 (it emptied `frames` when none were recent),
/// so `frame_index` can name rows that are now other frames.
fn written_by_an_older_version(db: &Connection) -> rusqlite::Result<bool> {
    let count: i64 = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('frames_by_server', 'frame_index')",
        [],
        |r| r.get(0),
    )?;
    Ok(count == 2)
}

/// Indexes the frames that a collector stopped before it indexed them (and,
/// the first time, every frame of a file from before `frame_index`); the
/// last frame's row (0: none), up to which every frame is then indexed.
fn index_the_rest(db: &Connection) -> rusqlite::Result<i64> {
    let from: i64 = db
        .query_row(
            "SELECT value FROM kept WHERE name = 'frames_indexed_to'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let last: i64 = db.query_row("SELECT coalesce(max(id), 0) FROM frames", [], |r| r.get(0))?;
    // At most this many (ids of pruned frames are not reused).
    let pending = last - from;
    let started = std::time::Instant::now();
    if pending > LARGE_INDEX {
        info!(
            frames_at_most = pending,
            "Indexing the stored frames by server and time before the collector starts: those of the last minute before it stopped (about a second for 10,000 servers), or, once, every frame of a file written by a version before the index, which can take minutes for a large one."
        );
    }
    let tx = db.unchecked_transaction()?;
    let indexed = tx.execute(
        "INSERT OR REPLACE INTO frame_index (server_id, at, id, keyframe)
             SELECT server_id, at, id, keyframe FROM frames WHERE id > ?1
             ORDER BY server_id, at, id",
        params![from],
    )?;
    if last > 0 {
        tx.execute(
            "INSERT OR REPLACE INTO kept (name, value) VALUES ('frames_indexed_to', ?1)",
            [last],
        )?;
    }
    tx.commit()?;
    if indexed > 0 {
        info!(
            frames = indexed,
            took = ?started.elapsed(),
            "Indexed the stored frames that were not yet."
        );
    }
    Ok(last)
}

/// How many frames to index at open make it worth saying so first.
const LARGE_INDEX: i64 = 100_000;

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
fn loaded(db: &Connection, path: &Path, dicts: &FrameDicts) -> rusqlite::Result<Loaded> {
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
    let since = now_micros() - 2 * MINUTE_US;
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
                                rebuild(&db, &Unindexed::default(), dicts, server_id, Micros::MAX)?,
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
    let mut out = Vec::new();
    each_minute(db, &MinutesRead::range(start, end), |server_id, minute| {
        out.push((server_id.to_owned(), minute))
    })?;
    Ok(out)
}

/// Hands `f` each minute that `read` wants as it is read, by start and then
/// server.
///
/// `rollups` is keyed by minute and then server. A few servers' minutes are
/// each found by that key: a day of one server is 1,440 lookups, where a
/// read of the range reads every server's minutes (1.44 million rows, some
/// 1.9 GB, for a day of 1,000 servers; "QueryMetrics over a day" in
/// BENCHMARKS.md). More servers than [`MANY_SERVERS`] are read in one pass
/// over the range, decoding only theirs; and where `read` is hourly, the
/// whole hours built (see [`hours`]) from `rollup_hours`, a row for each
/// server's hour, handed as one minute at the hour's start, except the
/// hours `read` wants by the minute and those with a minute written since
/// they were built, whose minutes are found by their key.
pub(super) fn each_minute(
    db: &Connection,
    read: &MinutesRead,
    mut f: impl FnMut(&str, Minute),
) -> rusqlite::Result<()> {
    // One snapshot for all its statements: a step of deleting or of adding
    // hours up that commits between them changes none of what it sees.
    let tx = db.unchecked_transaction()?;
    let db: &Connection = &tx;
    let (start, end) = (read.start, read.end);
    let mut decoded = |server_id: &str, start: i64, body: &[u8]| {
        if let Some(minute) = super::rollup(server_id, start, body) {
            f(server_id, minute);
        }
    };
    if let Some(ids) = &read.servers
        && ids.len() <= MANY_SERVERS
    {
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        // Only the minutes between the first and the last stored: a range
        // that reaches back years looks up none before the first.
        let Some((first, last)) = hours::minutes_kept(db)? else {
            return Ok(());
        };
        let (from, end) = (start.max(first), end.min(last.saturating_add(1)));
        if from >= end {
            return Ok(());
        }
        // Every stored minute starts on a minute.
        let mut minute = from + (MINUTE_US - from.rem_euclid(MINUTE_US)) % MINUTE_US;
        let mut by_key =
            db.prepare_cached("SELECT body FROM rollups WHERE minute = ?1 AND server_id = ?2")?;
        while minute < end {
            for id in &ids {
                if let Some(r) = by_key.query(params![minute, id])?.next()? {
                    decoded(id, minute, r.get_ref(0)?.as_blob()?);
                }
            }
            minute += MINUTE_US;
        }
        return Ok(());
    }
    let wanted: Option<std::collections::HashSet<&str>> = read
        .servers
        .as_ref()
        .map(|ids| ids.iter().map(String::as_str).collect());
    // The rows `(start, server_id, body)` of `sql` over `[a, b)`, of the
    // servers wanted but those `except` (in order).
    let scan = |sql: &str,
                a: Micros,
                b: Micros,
                except: &[String],
                decoded: &mut dyn FnMut(&str, i64, &[u8])|
     -> rusqlite::Result<()> {
        let mut q = db.prepare_cached(sql)?;
        let mut rows = q.query(params![a, b])?;
        while let Some(r) = rows.next()? {
            let server_id = r.get_ref(1)?.as_str()?;
            if wanted.as_ref().is_none_or(|w| w.contains(server_id))
                && except
                    .binary_search_by(|e| e.as_str().cmp(server_id))
                    .is_err()
            {
                decoded(server_id, r.get(0)?, r.get_ref(2)?.as_blob()?);
            }
        }
        Ok(())
    };
    let minutes = "SELECT minute, server_id, body FROM rollups WHERE minute >= ?1 AND minute < ?2
         ORDER BY minute, server_id";
    // The whole hours built within the range whose minutes are all kept.
    let whole = match read.hourly {
        true => hours::whole(db, start, end, Micros::MIN)?,
        false => None,
    };
    let Some((first, last)) = whole else {
        return scan(minutes, start, end, &[], &mut decoded);
    };
    scan(minutes, start, first, &[], &mut decoded)?;
    let mut late = hours::late_in(db, hours::MINUTES_LATE, first, last)?;
    for hour in (first..last).step_by(HOUR_US as usize) {
        let mut except = late.remove(&hour).unwrap_or_default();
        except.extend(read.by_minute.get(&hour).into_iter().flatten().cloned());
        except.sort_unstable();
        except.dedup();
        let except = &except[..];
        scan(
            "SELECT hour, server_id, body FROM rollup_hours WHERE hour >= ?1 AND hour < ?2
             ORDER BY server_id",
            hour,
            hour + 1,
            except,
            &mut decoded,
        )?;
        // Minute by minute: in the same step as the hour, so in any order.
        for server_id in except {
            if wanted
                .as_ref()
                .is_some_and(|w| !w.contains(server_id.as_str()))
            {
                continue;
            }
            hours::minutes_of_hour(db, server_id, hour, |minute, body| {
                decoded(server_id, minute, body)
            })?;
        }
    }
    scan(minutes, last, end, &[], &mut decoded)
}

/// Hands `f` each of `rows`, `(server_id, column, body)`, as it is read,
/// without copying it; the first error `f` gives ends the read.
fn each_row(
    db: &Connection,
    rows: Rows,
    mut f: impl FnMut(&str, i64, &[u8]) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let Rows {
        table,
        column,
        servers,
        start,
        end,
        skip,
    } = rows;
    let mut each = |rows: &mut rusqlite::Rows, wanted: Option<&std::collections::HashSet<&str>>| {
        while let Some(r) = rows.next()? {
            let server_id = r.get_ref(0)?.as_str()?;
            let at = r.get(1)?;
            if wanted.is_none_or(|w| w.contains(server_id))
                && !skip.is_some_and(|s| s.holds(server_id, at))
            {
                f(server_id, at, r.get_ref(2)?.as_blob()?)?;
            }
        }
        rusqlite::Result::Ok(())
    };
    // Many servers of a table of small rows: one scan of the range by time,
    // kept by server here, rather than a seek per server. Not the minutes
    // and hours of load (some 7 KB a row): such a scan reads every server's.
    if let Some(ids) = servers
        && ids.len() > MANY_SERVERS
        && !BIG_ROWS.contains(&table)
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
                // A server's hours passed over are not even stepped through.
                let Some(skip) = skip else {
                    each(&mut q.query(params![server_id, start, end])?, None)?;
                    continue;
                };
                for (from, to) in skip.gaps(server_id, start, end) {
                    each(&mut q.query(params![server_id, from, to])?, None)?;
                }
            }
        }
    }
    Ok(())
}

/// The tables whose rows are read a server at a time, never by one scan of
/// a range of time (see [`each_row`]). (`load_tuple_hours` has no index by
/// time: a read of every server, `servers` None, reads it whole. The Query
/// API always names the servers it reads.)
const BIG_ROWS: [&str; 2] = ["load", "load_tuple_hours"];

/// Hands `f` each minute of load that starts in `[start, end)`, of
/// `servers` (None: every server), as it is read (see [`each_parsed`]): a
/// fleet's day (1.44 million minutes of a thousand servers) is never held at
/// once, each with what `wanted` reads of it; none in the hours of `skip`.
///
/// With `by_hour`, the whole hours built with their tuples (see [`hours`])
/// are each handed as one minute at the hour's start with the sum of its
/// minutes' tuples, samples and coverage, from `load_tuple_hours` (a
/// fleet's day is 24,000 rows at 1,000 servers): but the hours of
/// `by_hour` (those the caller reads by the minute) and those marked late,
/// whose minutes are read. Only for `wanted` that reads no 10 s bucket,
/// which hours do not keep.
#[allow(clippy::too_many_arguments)]
pub(super) fn each_load(
    db: &Connection,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
    wanted: Wanted,
    skip: Option<&ServerHours>,
    by_hour: Option<&ServerHours>,
    mut f: impl FnMut(&str, MinuteLoad),
) -> rusqlite::Result<usize> {
    let parse = |at, body: &[u8]| Some(MinuteLoad::parse(at, body)?.only(wanted));
    let mut handed = None;
    if let (Some(by_minute), Wanted::Minutes | Wanted::Query(_) | Wanted::Churn) = (by_hour, wanted)
    {
        // An hour holds the tuples of its 60 minutes: fewer at a time.
        let rows = HourRows {
            table: "load_tuple_hours",
            late: hours::MINUTES_LATE,
            since: hours::LOAD_FROM,
            chunk_rows: CHUNK_ROWS / 16,
        };
        handed = rows.each(
            db,
            servers,
            start,
            end,
            skip,
            by_minute,
            parse,
            |id, _, mut m| {
                m.coarse.len_us = HOUR_US;
                f(id, m)
            },
        )?;
    }
    let rows = Rows::of("load", "minute", servers, start, end)
        .skipping(handed.as_ref().map(|h| &h.0).or(skip));
    each_parsed(db, rows, parse, CHUNK_ROWS, |id, _, m| f(id, m))?;
    Ok(handed.map_or(0, |h| h.1))
}

/// A table of each server's rows of an hour added up by the writer (see
/// [`hours`]), which a read of whole hours takes in place of the hour's
/// rows.
struct HourRows {
    table: &'static str,
    /// Its late marks (see [`hours::late`]).
    late: &'static str,
    /// The name in `kept` of the first hour built into it.
    since: &'static str,
    /// How many rows are parsed at a time.
    chunk_rows: usize,
}

impl HourRows {
    /// Hands `f` each row of `servers` (None: every server) of the whole
    /// hours in `[start, end)` a read may take as such (see
    /// [`hours::whole`], from the first built into the table), as it is
    /// read: but those of `skip`, those of `by_minute` (which the caller
    /// reads otherwise) and those marked late. The hours handed, with
    /// `skip`'s, and how many were handed; None when no hour may be.
    ///
    /// The hours and their late marks are read in one snapshot. A rebuild
    /// of an hour committed before the caller reads the rest is then read
    /// as it was: what made it come late, as it did.
    #[allow(clippy::too_many_arguments)]
    fn each<P: Parsed>(
        &self,
        db: &Connection,
        servers: Option<&[String]>,
        start: Micros,
        end: Micros,
        skip: Option<&ServerHours>,
        by_minute: &ServerHours,
        parse: impl Fn(i64, &[u8]) -> Option<P>,
        mut f: impl FnMut(&str, Micros, P::Row),
    ) -> rusqlite::Result<Option<(ServerHours, usize)>> {
        let tx = db.unchecked_transaction()?;
        let whole = match hours::kept_from(&tx, self.since)? {
            Some(since) => hours::whole(&tx, start, end, since)?,
            None => None,
        };
        let Some((first, last)) = whole else {
            return Ok(None);
        };
        let mut late = ServerHours::default();
        for (hour, ids) in hours::late_in(&tx, self.late, first, last)? {
            for id in ids {
                late.insert(&id, hour);
            }
        }
        let mut passed = skip.cloned().unwrap_or_default();
        let mut handed = 0;
        let rows = Rows::of(self.table, "hour", servers, first, last).skipping(skip);
        each_parsed(&tx, rows, parse, self.chunk_rows, |id, hour, row| {
            if !late.holds(id, hour) && !by_minute.holds(id, hour) {
                passed.insert(id, hour);
                handed += 1;
                f(id, hour, row)
            }
        })?;
        Ok(Some((passed, handed)))
    }
}

/// Hands `f` each statement interval that starts in `[start, end)`, of
/// `servers`, as it is read (see [`each_parsed`]); none in the hours of
/// `skip`. How many whole hours it handed as one.
///
/// With `by_hour`, the whole hours built with their statements (see
/// [`hours`]) are each handed as one read at the hour's start with the sum
/// of its intervals, from `statement_hours` (a fleet's day is 24,000 rows
/// at 1,000 servers, where its intervals are 144,000): but the hours of
/// `by_hour` (those the caller reads by the interval) and those marked
/// late, whose intervals are read.
pub(super) fn each_statements(
    db: &Connection,
    servers: Option<&[String]>,
    start: Micros,
    end: Micros,
    skip: Option<&ServerHours>,
    by_hour: Option<&ServerHours>,
    mut f: impl FnMut(&str, Micros, Read),
) -> rusqlite::Result<usize> {
    let parse = |_, body: &[u8]| Read::parse(body);
    let mut handed = None;
    if let Some(by_interval) = by_hour {
        let rows = HourRows {
            table: "statement_hours",
            late: hours::INTERVALS_LATE,
            since: hours::STATEMENTS_FROM,
            chunk_rows: CHUNK_ROWS / 16,
        };
        handed = rows.each(db, servers, start, end, skip, by_interval, parse, &mut f)?;
    }
    let rows = Rows::of("statements", "at", servers, start, end)
        .skipping(handed.as_ref().map(|h| &h.0).or(skip));
    each_parsed(db, rows, parse, CHUNK_ROWS, f)?;
    Ok(handed.map_or(0, |h| h.1))
}

/// Which rows a read takes: of `table`, with `column` in `[start, end)`, of
/// `servers` (None: every server).
struct Rows<'a> {
    table: &'a str,
    column: &'a str,
    servers: Option<&'a [String]>,
    start: Micros,
    end: Micros,
    /// Hours of servers passed over, their rows not read.
    skip: Option<&'a ServerHours>,
}

impl<'a> Rows<'a> {
    fn of(
        table: &'a str,
        column: &'a str,
        servers: Option<&'a [String]>,
        start: Micros,
        end: Micros,
    ) -> Self {
        Rows {
            table,
            column,
            servers,
            start,
            end,
            skip: None,
        }
    }

    /// The rows but those in the hours of `skip`.
    fn skipping(self, skip: Option<&'a ServerHours>) -> Self {
        Rows { skip, ..self }
    }
}

/// Hands `f` each of `rows` decoded, as they are read: `chunk_rows` are
/// parsed at a time, and the dictionaries they name that the last chunks did
/// not are read once (see [`KeysCache`]).
fn each_parsed<P: Parsed>(
    db: &Connection,
    rows: Rows,
    parse: impl Fn(i64, &[u8]) -> Option<P>,
    chunk_rows: usize,
    mut f: impl FnMut(&str, i64, P::Row),
) -> rusqlite::Result<()> {
    let mut cache = KeysCache::default();
    let mut chunk = Vec::with_capacity(chunk_rows);
    let mut flush = |chunk: &mut Vec<_>| -> rusqlite::Result<()> {
        let pending = Pending::new(std::mem::take(chunk));
        let missing = cache.missing(&pending);
        let found = dictionaries(db, &missing)?;
        cache.found(missing, found);
        pending.finish(&mut cache, &mut f);
        Ok(())
    };
    each_row(db, rows, |server_id, at, body| {
        chunk.push((server_id.to_owned(), at, parse(at, body)));
        match chunk.len() >= chunk_rows {
            true => flush(&mut chunk),
            false => Ok(()),
        }
    })?;
    flush(&mut chunk)
}

/// The dictionaries (see [`crate::load::dictionaries`]) `named`, by server
/// and id; one not found is left out, and the rows that name it fail their
/// decoding.
fn dictionaries(
    db: &Connection,
    named: &std::collections::BTreeSet<(String, i64)>,
) -> rusqlite::Result<HashMap<(String, i64), Keys>> {
    let mut out = HashMap::new();
    let mut q = db.prepare_cached("SELECT body FROM load_keys WHERE server_id = ?1 AND id = ?2")?;
    for (server_id, id) in named {
        let body: Option<Vec<u8>> = q
            .query_row(params![server_id, id], |r| r.get(0))
            .optional()?;
        match body.as_deref().and_then(Keys::decode) {
            Some(k) => {
                out.insert((server_id.clone(), *id), k);
            }
            None => {
                warn!(server.id = %server_id, keys = id, "A dictionary of load strings is missing or does not decode; the rows that name it are skipped.")
            }
        }
    }
    Ok(out)
}

/// The hours of `servers` in `[start, end)` (whole hours) a question can
/// pass over, read in one snapshot: those whose dictionaries (one at least)
/// all fail `may_hold`, with none of the server's dictionaries from then on
/// of an earlier version (which gave a row that came late the dictionary
/// of a later hour), and settled: a minute of a later hour is stored, so no
/// outage's replay is still writing into it. `f` is given the totals of
/// each whose totals list the very minutes stored of it: `passed`, the
/// hours its minutes need not be read. `unnamed` holds them all, and
/// `statements` says whether a statement interval in them starts at or
/// after `statements_from`. None of `except`'s. The dictionaries' strings
/// are decoded only for `strings`.
#[allow(clippy::too_many_arguments)]
pub(super) fn fold_passed(
    db: &Connection,
    servers: &[String],
    (start, end): (Micros, Micros),
    statements_from: Micros,
    except: &ServerHours,
    strings: bool,
    may_hold: &dyn Fn(&Keys) -> bool,
    mut f: impl FnMut(&str, &HourTotals),
) -> rusqlite::Result<PassedOver> {
    // One snapshot for the dictionaries, the minutes and the totals: the
    // writer commits between statements otherwise.
    let tx = db.unchecked_transaction()?;
    // Per server: each hour's answer (whether a dictionary of it may hold
    // what is asked), and the latest hour of a dictionary of an earlier
    // version.
    #[derive(Default)]
    struct Scan {
        may: Vec<(Micros, bool)>,
        older: Option<Micros>,
    }
    let mut scans: HashMap<String, Scan> = HashMap::new();
    let mut add = |server_id: &str, hour: Micros, body: &[u8]| {
        let scan = match scans.get_mut(server_id) {
            Some(scan) => scan,
            None => scans.entry(server_id.to_owned()).or_default(),
        };
        let keys = Keys::decode_for(body, strings);
        if keys.as_ref().is_none_or(|k| !k.own_hour()) {
            scan.older = scan.older.max(Some(hour));
        }
        if hour < end {
            // One that does not decode may hold anything.
            let yes = keys.as_ref().is_none_or(may_hold);
            match scan.may.iter_mut().rev().find(|(h, _)| *h == hour) {
                Some((_, may)) => *may |= yes,
                None => scan.may.push((hour, yes)),
            }
        }
    };
    if servers.len() <= MANY_SERVERS {
        let mut q = tx.prepare_cached(
            "SELECT hour, body FROM load_keys WHERE server_id = ?1 AND hour >= ?2 ORDER BY hour",
        )?;
        for server_id in servers {
            let mut rows = q.query(params![server_id, start])?;
            while let Some(r) = rows.next()? {
                add(server_id, r.get(0)?, r.get_ref(1)?.as_blob()?);
            }
        }
    } else {
        let wanted: std::collections::HashSet<&str> = servers.iter().map(String::as_str).collect();
        let mut q = tx.prepare_cached(
            "SELECT server_id, hour, body FROM load_keys WHERE hour >= ?1 ORDER BY hour",
        )?;
        let mut rows = q.query([start])?;
        while let Some(r) = rows.next()? {
            let server_id = r.get_ref(0)?.as_str()?;
            if wanted.contains(server_id) {
                add(server_id, r.get(1)?, r.get_ref(2)?.as_blob()?);
            }
        }
    }
    let mut out = PassedOver::default();
    let mut statements = tx.prepare_cached(
        "SELECT 1 FROM statements WHERE server_id = ?1 AND at >= ?2 AND at < ?3 LIMIT 1",
    )?;
    let mut latest = tx.prepare_cached("SELECT max(minute) FROM load WHERE server_id = ?1")?;
    let mut minutes = tx.prepare_cached(
        "SELECT minute FROM load WHERE server_id = ?1 AND minute >= ?2 AND minute < ?3",
    )?;
    let mut totals = tx.prepare_cached(
        "SELECT hour, body FROM load_hours WHERE server_id = ?1 AND hour >= ?2 AND hour < ?3",
    )?;
    let mut hour_totals = HourTotals::default();
    for (server_id, scan) in &scans {
        let settled: Option<Micros> = latest.query_row([server_id], |r| r.get(0))?;
        let Some(settled) = settled else { continue };
        let mut hours: Vec<Micros> = scan
            .may
            .iter()
            .filter(|(hour, may)| {
                !may && scan.older.is_none_or(|o| *hour > o)
                    && hour + HOUR_US <= settled
                    && !except.holds(server_id, *hour)
            })
            .map(|(hour, _)| *hour)
            .collect();
        if hours.is_empty() {
            continue;
        }
        hours.sort_unstable();
        for hour in &hours {
            out.unnamed.insert(server_id, *hour);
            if !out.statements {
                let from = (*hour).max(statements_from);
                out.statements = statements.exists(params![server_id, from, hour + HOUR_US])?;
            }
        }
        let (first, last) = (hours[0], hours[hours.len() - 1] + HOUR_US);
        // Each hour's stored minutes, a bit a minute, from the index alone.
        let mut stored: HashMap<Micros, u64> = HashMap::with_capacity(hours.len());
        let mut rows = minutes.query(params![server_id, first, last])?;
        while let Some(r) = rows.next()? {
            let minute: Micros = r.get(0)?;
            let hour = minute - minute.rem_euclid(HOUR_US);
            *stored.entry(hour).or_default() |= minute_bit(minute);
        }
        let mut rows = totals.query(params![server_id, first, last])?;
        while let Some(r) = rows.next()? {
            let hour: Micros = r.get(0)?;
            if hours.binary_search(&hour).is_err()
                || !hour_totals.decode_from(hour, r.get_ref(1)?.as_blob()?)
            {
                continue;
            }
            let listed = hour_totals
                .minutes
                .iter()
                .fold(0, |bits, m| bits | minute_bit(m.start));
            if stored.get(&hour).is_some_and(|bits| *bits == listed) {
                f(server_id, &hour_totals);
                out.totals.insert(server_id, hour);
            }
        }
    }
    Ok(out)
}

/// A minute's bit in its hour's mask.
fn minute_bit(minute: Micros) -> u64 {
    1 << (minute.rem_euclid(HOUR_US) / MINUTE_US)
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
    let rows = Rows::of("load_hours", "hour", servers, start, end);
    each_row(db, rows, |server_id, at, body| {
        if h.decode_from(at, body) {
            f(server_id, &h);
        } else {
            warn!(server.id = %server_id, hour = at, "Skipped an hour of load totals that does not decode.")
        }
        Ok(())
    })
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
    each_load(
        db,
        Some(&ids),
        minute,
        minute + 1,
        Wanted::All,
        None,
        None,
        |_, m| {
            let h = hours
                .first()
                .cloned()
                .unwrap_or_else(|| HourTotals::holding(minute));
            out.push(Closed::Minute(m, h));
        },
    )?;
    if out.is_empty()
        && let Some(h) = hours.into_iter().next()
    {
        out.push(Closed::Minute(MinuteLoad::default(), h));
    }
    each_statements(
        db,
        Some(&ids),
        interval,
        interval + 1,
        None,
        None,
        |_, at, read| out.push(Closed::Statements(at, read)),
    )?;
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

/// Deletes the oldest frames, at most `limit`, that are before the first at
/// or after `cutoff`: how many went. Frames are in the order they were
/// applied, so those past the cutoff are the ones before the first that is
/// not, found by reading only them. The last frame stays whatever its age:
/// SQLite numbers a row one past the largest, so an empty table would
/// number its frames again from 1, below `frames_indexed_to`.
fn prune_frames(db: &Connection, cutoff: Micros, limit: i64) -> rusqlite::Result<usize> {
    db.execute(
        "WITH oldest AS (SELECT id, at FROM frames ORDER BY id LIMIT ?2)
         DELETE FROM frames WHERE id < min(
             coalesce((SELECT min(id) FROM oldest WHERE at >= ?1),
                      (SELECT max(id) + 1 FROM oldest)),
             (SELECT max(id) FROM frames))",
        params![cutoff, limit],
    )
}

/// At most ?3 of a server's entries in the index before the cutoff, the
/// oldest: a server's day of them (86,400) after a downtime, or a shorter
/// retention, does not go in one statement.
const UNINDEX: &str = "DELETE FROM frame_index WHERE server_id = ?1 AND at < coalesce(
     (SELECT at FROM frame_index WHERE server_id = ?1 AND at < ?2 ORDER BY at LIMIT 1 OFFSET ?3),
     ?2)";

/// The servers in the index, each found by a step through the index to the
/// next (it is in server order), not by reading it all.
fn indexed_servers(db: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut servers = db.prepare(
        "WITH RECURSIVE s(id) AS (
             SELECT min(server_id) FROM frame_index
             UNION ALL
             SELECT (SELECT min(server_id) FROM frame_index WHERE server_id > s.id)
                 FROM s WHERE s.id IS NOT NULL)
         SELECT id FROM s WHERE id IS NOT NULL",
    )?;
    servers
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()
}

/// Load's oldest rows past the retention, at most ?2, among the ?2 written
/// first. Its minutes are written as they end, so the order written is the
/// order of time, and no index by time is kept: one built when a file of an
/// earlier version is opened read all of it first (15 GB for a day of 1,250
/// servers), and the collector serves nothing until its store is open. A
/// minute written late (an agent's spool, sent after an outage) goes once
/// those written before it have, later than its own time says, never sooner.
const OLDEST_LOAD: &str = "DELETE FROM load WHERE id IN
     (SELECT id FROM (SELECT id, minute FROM load ORDER BY id LIMIT ?2) WHERE minute < ?1)";

/// The tables kept for the rollups' retention, in the order their old rows
/// go (the rows that name a dictionary before it): a statement that deletes
/// at most ?2 rows before ?1, found by an index or, for load, among its
/// oldest rows in the order written (see [`OLDEST_LOAD`]); how much earlier than
/// the rollups' cutoff the table's own is; and by how much its statements
/// take fewer rows than [`Pace::chunk`]. An hour's totals and a dictionary
/// go once the hour after theirs has: the rows that name a dictionary start
/// before the hour after its own. A minute of load is some 7 KB, an
/// overflow page to read and free: a thousand took 36 ms from disk here, a
/// hundred 3–5 ms.
const AGED: [(&str, Micros, i64); 8] = [
    (
        "DELETE FROM rollups WHERE (minute, server_id) IN
             (SELECT minute, server_id FROM rollups WHERE minute < ?1 LIMIT ?2)",
        0,
        1,
    ),
    (OLDEST_LOAD, 0, 10),
    (
        "DELETE FROM rollup_hours WHERE (hour, server_id) IN
             (SELECT hour, server_id FROM rollup_hours WHERE hour < ?1 LIMIT ?2)",
        HOUR_US,
        1,
    ),
    (
        "DELETE FROM load_tuple_hours WHERE id IN
             (SELECT id FROM load_tuple_hours WHERE id IN
                 (SELECT id FROM load_tuple_hours ORDER BY id LIMIT ?2) AND hour < ?1)",
        HOUR_US,
        10,
    ),
    (
        "DELETE FROM statements WHERE id IN (SELECT id FROM statements WHERE at < ?1 LIMIT ?2)",
        0,
        1,
    ),
    (
        "DELETE FROM statement_hours WHERE id IN
             (SELECT id FROM statement_hours WHERE hour < ?1 LIMIT ?2)",
        HOUR_US,
        1,
    ),
    (
        "DELETE FROM load_hours WHERE id IN (SELECT id FROM load_hours WHERE hour < ?1 LIMIT ?2)",
        HOUR_US,
        1,
    ),
    (
        "DELETE FROM load_keys WHERE (server_id, id) IN
             (SELECT server_id, id FROM load_keys WHERE hour < ?1 LIMIT ?2)",
        HOUR_US - 1,
        1,
    ),
];

impl Pruning {
    /// Starts a round at `now`: the rows past the rollups' retention, the
    /// frames past theirs, and then their entries in the index go over the
    /// commits that follow ([`Pruning::step`]). The index's servers go from
    /// the first after `after` on (the last whose entries a round left
    /// unfinished went), so that none waits for ever behind the others.
    fn start(
        db: &Connection,
        retention: Retention,
        now: Micros,
        after: Option<&str>,
        pace: Pace,
    ) -> rusqlite::Result<Pruning> {
        // A dictionary goes a day after the last frames that may name it.
        db.execute(
            "DELETE FROM frame_dicts WHERE used < ?1",
            [now - retention.frames.as_micros() as i64 - KEPT_PAST_RETENTION],
        )?;
        let mut servers = indexed_servers(db)?;
        if let Some(after) = after {
            let from = servers.partition_point(|s| s.as_str() <= after);
            servers.rotate_left(from);
        }
        Ok(Pruning {
            rollups_before: now - retention.rollups.as_micros() as i64,
            table: 0,
            cutoff: now - retention.frames.as_micros() as i64,
            frames_done: false,
            servers,
            next: 0,
            started: Instant::now(),
            pace,
        })
    }

    /// A share of the round, in one transaction: the rollups' tables' old
    /// rows, then the frames, oldest first, then the index's old entries of
    /// the servers due by now; each a chunk at a time, a chunk at least
    /// (so that none waits behind another's backlog), more while the budget
    /// lasts. What went, and whether the round is over.
    fn step(&mut self, db: &Connection) -> rusqlite::Result<(Pruned, bool)> {
        let started = Instant::now();
        let (budget, chunk) = (self.pace.budget, self.pace.chunk);
        let spent = || started.elapsed() >= budget;
        let tx = db.unchecked_transaction()?;
        let mut deleted = Pruned::default();
        let mut table = self.table;
        // A statement that finds nothing costs a look in an index: the
        // first that deletes is the part's own.
        let mut went = false;
        while table < AGED.len() && (!went || !spent()) {
            let (sql, shift, fewer) = AGED[table];
            let rows = (chunk / fewer).max(1);
            let n = tx
                .prepare_cached(sql)?
                .execute(params![self.rollups_before - shift, rows])?;
            deleted.rollups += n;
            went |= n > 0;
            if (n as i64) < rows {
                table += 1;
            }
        }
        let mut frames_done = self.frames_done;
        let mut first = true;
        while !frames_done && (std::mem::take(&mut first) || !spent()) {
            let n = prune_frames(&tx, self.cutoff, chunk)?;
            deleted.frames += n;
            frames_done = (n as i64) < chunk;
        }
        let due = if self.pace.index_over.is_zero() {
            self.servers.len()
        } else {
            let share = self.started.elapsed().as_secs_f64() / self.pace.index_over.as_secs_f64();
            ((self.servers.len() as f64 * share).ceil() as usize).min(self.servers.len())
        };
        let mut next = self.next;
        if next < due {
            let mut unindex = tx.prepare_cached(UNINDEX)?;
            let mut first = true;
            while next < due && (std::mem::take(&mut first) || !spent()) {
                let n = unindex.execute(params![self.servers[next], self.cutoff, chunk])?;
                if (n as i64) < chunk {
                    next += 1;
                }
            }
        }
        tx.commit()?;
        // Only what is committed counts as done.
        self.table = table;
        self.frames_done = frames_done;
        self.next = next;
        let over = table == AGED.len() && frames_done && next == self.servers.len();
        Ok((deleted, over))
    }

    /// The last server whose old entries went, if the round left some.
    fn unfinished_after(&self) -> Option<&str> {
        (self.next > 0 && self.next < self.servers.len())
            .then(|| self.servers[self.next - 1].as_str())
    }
}

/// `server_id`'s frames in `[start, end]`, in `frame_index` and in `recent`,
/// by time; of a time stored twice (a frame written again), the later.
fn places(
    db: &Connection,
    recent: &[Place],
    server_id: &str,
    start: Micros,
    end: Micros,
) -> rusqlite::Result<std::collections::BTreeMap<Micros, Place>> {
    let mut places = std::collections::BTreeMap::new();
    let mut put = |p: Place| {
        let kept = places.entry(p.at).or_insert(p);
        if p.id > kept.id {
            *kept = p;
        }
    };
    let mut index = db.prepare_cached(
        "SELECT at, id, keyframe FROM frame_index WHERE server_id = ?1 AND at >= ?2 AND at <= ?3",
    )?;
    let rows = index.query_map(params![server_id, start, end], |r| {
        Ok(Place {
            at: r.get(0)?,
            id: r.get(1)?,
            keyframe: r.get(2)?,
        })
    })?;
    for p in rows {
        put(p?);
    }
    for p in recent.iter().filter(|p| (start..=end).contains(&p.at)) {
        put(*p);
    }
    Ok(places)
}

/// The server at `at`: the last keyframe at or before it, and every delta
/// after that keyframe up to `at`, found in `frame_index` and among the
/// frames not yet in it (looked at first: the writer takes frames out of
/// `unindexed` only once their index is committed).
pub(super) fn rebuild(
    db: &Connection,
    unindexed: &Unindexed,
    dicts: &FrameDicts,
    server_id: &str,
    at: Micros,
) -> rusqlite::Result<Option<Rebuilt>> {
    let recent = unindexed.of(server_id, at);
    // One look at the file for what follows, after the look at memory.
    let db = db.unchecked_transaction()?;
    let mut before = at;
    let places = loop {
        let stored: Option<i64> = db
            .query_row(
                "SELECT max(at) FROM frame_index WHERE server_id = ?1 AND keyframe = 1 AND at <= ?2",
                params![server_id, before],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(start) = recent
            .iter()
            .filter(|p| p.keyframe && p.at <= before)
            .map(|p| p.at)
            .chain(stored)
            .max()
        else {
            return Ok(None);
        };
        let places = places(&db, &recent, server_id, start, at)?;
        // A keyframe written again as a delta starts nothing: the one
        // before it does.
        if places.get(&start).is_some_and(|p| p.keyframe) {
            break places;
        }
        before = start - 1;
    };
    let mut body = db.prepare_cached("SELECT body FROM frames WHERE id = ?1")?;
    let mut frames = Vec::with_capacity(places.len());
    for p in places.into_values() {
        // Gone only where retention has just deleted it.
        if let Some(b) = body
            .query_row([p.id], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
        {
            frames.push((p.at, p.keyframe, b));
        }
    }
    let (mut named, missing) = dicts.named(frames.iter().map(|f| f.2.as_slice()));
    for id in missing {
        let mut dict = db.prepare_cached("SELECT body FROM frame_dicts WHERE id = ?1")?;
        // Anything but a blob does not load, as bytes that are not a
        // dictionary do not.
        let body = dict
            .query_row([id], |r| {
                Ok(r.get_ref(0)?.as_blob().ok().map(<[u8]>::to_vec))
            })
            .optional()?
            .flatten();
        named.load(dicts, id, body.as_deref());
    }
    Ok(super::replay(server_id, None, frames, &named))
}

impl Sink for SqliteSink {
    /// The file and its write-ahead log (the shared-memory index beside
    /// them is a few pages, and not the data).
    fn size(&mut self) -> Option<u64> {
        let path = self.db.path().filter(|p| !p.is_empty())?;
        let bytes = |p: &str| std::fs::metadata(p).map_or(0, |m| m.len());
        Some(bytes(path) + bytes(&format!("{path}-wal")))
    }

    fn commit(&mut self, ops: &[(u64, Op)]) -> Result<(), String> {
        let turn = self.turn % GROUPS;
        let (now, left): (Vec<usize>, Vec<usize>) =
            (0..GROUPS).partition(|&g| self.all || g == turn);
        // Every frame before the first that stays unindexed will be indexed;
        // with none left, every frame committed so far (this commit's own
        // come after them).
        let indexed_to = left
            .iter()
            .flat_map(|&g| self.own[g].values())
            .filter_map(|places| places.first())
            .map(|p| p.id - 1)
            .min()
            .unwrap_or(self.last_frame);
        let indexed: Vec<&HashMap<String, Vec<Place>>> =
            now.iter().map(|&g| &self.own[g]).collect();
        let now_at = (self.clock)();
        write_dicts(&mut self.db, &mut self.frames, now_at).map_err(|e| e.to_string())?;
        let mut fresh = Vec::new();
        commit(
            &mut self.db,
            ops,
            Coders {
                keys: &mut self.keys,
                frames: &mut self.frames,
            },
            &mut fresh,
            Index {
                groups: &indexed,
                indexed_to,
            },
            self.hours.sealed(),
            now_at,
        )
        .map_err(|e| e.to_string())?;
        self.keys.committed();
        let at = (self.clock)();
        for (_, op) in ops {
            if let Op::Minute { minute, .. } = op {
                self.hours.wrote(minute.start, at);
            }
        }
        let mut unindexed = self.unindexed.lock();
        for g in now {
            for (server_id, _) in self.own[g].drain() {
                unindexed.remove(&server_id);
            }
        }
        self.turn += 1;
        self.all = false;
        for (server_id, place) in fresh {
            self.last_frame = self.last_frame.max(place.id);
            for map in [&mut self.own[group_of(server_id)], &mut *unindexed] {
                match map.get_mut(server_id) {
                    Some(places) => places.push(place),
                    None => {
                        map.insert(server_id.to_owned(), vec![place]);
                    }
                }
            }
        }
        Ok(())
    }

    fn prune(&mut self, retention: Retention, now: Micros) -> Result<Pruned, String> {
        // What a round before left undone goes in this one, whose cutoffs
        // are later; all of it over the commits that follow.
        let after = self.pruning.as_ref().and_then(Pruning::unfinished_after);
        let round =
            Pruning::start(&self.db, retention, now, after, PACE).map_err(|e| e.to_string())?;
        self.pruning = Some(round);
        Ok(Pruned::default())
    }

    fn roll_hours(&mut self, now: Micros) -> Result<bool, String> {
        self.hours
            .step(&mut self.db, now)
            .map_err(|e| e.to_string())
    }

    fn prune_step(&mut self) -> Result<(Pruned, bool), String> {
        let Some(round) = &mut self.pruning else {
            return Ok((Pruned::default(), true));
        };
        let (deleted, over) = round.step(&self.db).map_err(|e| e.to_string())?;
        if over {
            self.pruning = None;
        }
        Ok((deleted, over))
    }
}

/// What a commit indexes: the frames of these groups' servers, committed
/// before it; and the frame up to which every frame is then indexed.
struct Index<'a> {
    groups: &'a [&'a HashMap<String, Vec<Place>>],
    indexed_to: i64,
}

/// What encodes a commit's rows: the servers' dictionaries of strings,
/// and the frames' coder.
struct Coders<'a> {
    keys: &'a mut Dictionaries,
    frames: &'a mut FrameCoder,
}

/// Writes `ops` in one transaction, and with them `index`; says where each
/// frame of `ops` went in `fresh`. A minute that starts in `sealed` (in an
/// hour built) marks its server's hour to be built again, as written at
/// `now`.
fn commit<'a>(
    db: &mut Connection,
    ops: &'a [(u64, Op)],
    coders: Coders<'_>,
    fresh: &mut Vec<(&'a str, Place)>,
    index: Index<'_>,
    sealed: Option<std::ops::Range<Micros>>,
    now: Micros,
) -> rusqlite::Result<()> {
    let Coders {
        keys,
        frames: coder,
    } = coders;
    let (mut late, mut late_intervals) = (BTreeSet::new(), BTreeSet::new());
    let tx = db.transaction()?;
    write_index(&tx, index)?;
    {
        let mut frame = tx.prepare_cached(
            "INSERT INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, ?3, ?4)",
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
                        let body = super::compress(f, coder);
                        frame.execute(params![f.server_id, f.at, f.keyframe, body])?;
                        let id = tx.last_insert_rowid();
                        let keyframe = f.keyframe;
                        fresh.push((
                            &f.server_id,
                            Place {
                                at: f.at,
                                id,
                                keyframe,
                            },
                        ));
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
                    if sealed.as_ref().is_some_and(|s| s.contains(&minute.start)) {
                        late.insert((
                            minute.start - minute.start.rem_euclid(HOUR_US),
                            server_id.clone(),
                        ));
                    }
                }
                Op::Load {
                    server_id,
                    minute,
                    hour: totals,
                } => {
                    if let Some(body) = super::load_row(keys, server_id, minute) {
                        load.execute(params![server_id, minute.start(), body])?;
                        let start = minute.start();
                        if sealed.as_ref().is_some_and(|s| s.contains(&start)) {
                            late.insert((start - start.rem_euclid(HOUR_US), server_id.clone()));
                        }
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
                    if sealed.as_ref().is_some_and(|s| s.contains(at)) {
                        late_intervals.insert((at - at.rem_euclid(HOUR_US), server_id.clone()));
                    }
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
    hours::late(&tx, hours::MINUTES_LATE, late, now)?;
    hours::late(&tx, hours::INTERVALS_LATE, late_intervals, now)?;
    tx.commit()
}

/// Writes the frame dictionaries `coder` has for a commit at `now` (see
/// [`DictWrites`]) in a transaction of their own, before the commit's
/// frames: a new one is then stored before any frame names it.
fn write_dicts(db: &mut Connection, coder: &mut FrameCoder, now: Micros) -> rusqlite::Result<()> {
    let writes: DictWrites = coder.writes(now);
    if writes.all().next().is_none() {
        return Ok(());
    }
    let written = (|| {
        let tx = db.transaction()?;
        let mut answers = Vec::new();
        for (id, bytes) in writes.all() {
            tx.execute(
                "INSERT INTO frame_dicts (id, made, used, body) VALUES (?1, ?2, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET used = excluded.used
                 WHERE frame_dicts.body = excluded.body",
                params![id, now, &**bytes],
            )?;
            answers.push(tx.query_row(
                "SELECT body = ?2 FROM frame_dicts WHERE id = ?1",
                params![id, &**bytes],
                |r| r.get(0),
            )?);
        }
        tx.commit()?;
        Ok(DictsStored::from_answers(&writes, &answers))
    })();
    coder.committed(written.as_ref().ok(), now);
    written.map(|_| ())
}

/// Indexes the frames of `index`'s groups, a server at a time in name order
/// (each server's entries then go to one leaf of the index together), and
/// notes the frame up to which every frame is indexed.
fn write_index(tx: &rusqlite::Transaction<'_>, index: Index<'_>) -> rusqlite::Result<()> {
    let mut servers: Vec<(&String, &Vec<Place>)> =
        index.groups.iter().flat_map(|g| g.iter()).collect();
    servers.sort_unstable_by_key(|(server_id, _)| *server_id);
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO frame_index (server_id, at, id, keyframe) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (server_id, places) in servers {
        let mut places = places.clone();
        // A time written twice: the later frame stands.
        places.sort_unstable_by_key(|p| (p.at, p.id));
        for p in places {
            put.execute(params![server_id, p.at, p.id, p.keyframe])?;
        }
    }
    if index.indexed_to > 0 {
        tx.execute(
            "INSERT OR REPLACE INTO kept (name, value) VALUES ('frames_indexed_to', ?1)",
            [index.indexed_to],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, compress, scratch};
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

    /// A database in memory with the store's tables.
    fn in_memory() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        db
    }

    /// Stores an empty keyframe of `server` at `at`, unindexed.
    fn empty_keyframe(db: &Connection, server: &str, at: Micros) {
        db.execute(
            "INSERT INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, 1, x'')",
            params![server, at],
        )
        .unwrap();
    }

    /// A whole round of deleting past `retention` at `now`, as the writer
    /// does it over its commits, every share at once: what went.
    fn prune(db: &Connection, retention: Retention, now: Micros) -> rusqlite::Result<Pruned> {
        let pace = Pace {
            index_over: Duration::ZERO,
            ..PACE
        };
        let mut round = Pruning::start(db, retention, now, None, pace)?;
        let mut pruned = Pruned::default();
        loop {
            let (deleted, over) = round.step(db)?;
            pruned += deleted;
            if over {
                return Ok(pruned);
            }
        }
    }

    #[test]
    fn a_round_of_deleting_goes_a_chunk_at_a_time_and_spreads_the_index_over_its_time() {
        let db = in_memory();
        let now = 100 * 86_400_000_000;
        let hour = 3_600_000_000;
        // More old frames than a chunk, over three servers; then a recent
        // one, and after it (applied later) two old ones of a server's
        // history sent late, which stay: frames go in the order applied.
        let chunk = 1000;
        let old = 2 * chunk + 500;
        for i in 0..old {
            empty_keyframe(&db, ["a", "b", "c"][i as usize % 3], now - 30 * hour + i);
        }
        empty_keyframe(&db, "a", now - hour);
        empty_keyframe(&db, "b", now - 28 * hour);
        empty_keyframe(&db, "b", now - 27 * hour);
        index_the_rest(&db).unwrap();
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };

        // No budget: a chunk of frames and one server's index a step.
        let pace = Pace {
            budget: Duration::ZERO,
            chunk,
            index_over: Duration::from_secs(3600),
        };
        let mut round = Pruning::start(&db, Retention::default(), now, None, pace).unwrap();
        assert_eq!(round.servers, ["a", "b", "c"]);
        let mut steps = Vec::new();
        while !round.frames_done {
            steps.push(round.step(&db).unwrap().0.frames);
        }
        assert_eq!(steps, [1000, 1000, 500], "the old frames, a chunk a step");
        assert_eq!(count("SELECT count(*) FROM frames"), 3);
        // The index's old entries go over the round's time: one server due
        // at its start (and at least one a step), not all.
        assert_eq!(round.next, 1);
        assert_eq!(
            count("SELECT count(*) FROM frame_index WHERE server_id = 'a'"),
            1,
            "a's old entries went"
        );
        assert!(count("SELECT count(*) FROM frame_index WHERE server_id = 'c'") > 0);

        // The next round, started before this one is over, goes on from the
        // server after the last it reached.
        let after = round.unfinished_after().map(str::to_owned);
        assert_eq!(after.as_deref(), Some("a"));
        let round = Pruning::start(&db, Retention::default(), now, after.as_deref(), pace).unwrap();
        assert_eq!(round.servers, ["b", "c", "a"]);

        // A whole round at once: what is left of the index goes.
        assert_eq!(
            prune(&db, Retention::default(), now).unwrap(),
            Pruned::default()
        );
        assert_eq!(count("SELECT count(*) FROM frame_index"), 1);
        assert_eq!(count("SELECT count(*) FROM frames"), 3);
    }

    /// Server `i`'s minute at `start`: its active sessions (a mean), the
    /// oldest transaction (a maximum) and commits (a rate).
    fn minute_of(i: usize, start: Micros) -> Minute {
        let m = (start / MINUTE_US) as usize;
        Minute {
            start,
            samples: 60,
            covered_us: 60_000_000,
            values: [
                (
                    crate::rollup::Metric::Sessions,
                    "active",
                    (i * 100 + m % 60) as f64,
                ),
                (crate::rollup::Metric::MaxXactAge, "", (m % 13) as f64),
                (crate::rollup::Metric::Commits, "", 7.0 + i as f64),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn stored_hours(db: &Connection) -> std::collections::BTreeMap<(Micros, String), Minute> {
        let mut q = db
            .prepare("SELECT hour, server_id, body FROM rollup_hours")
            .unwrap();
        q.query_map([], |r| {
            let (hour, server): (i64, String) = (r.get(0)?, r.get(1)?);
            let body: Vec<u8> = r.get(2)?;
            Ok(((hour, server), Minute::decode(hour, &body).unwrap()))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// The hour the hours tests' stores start at, and the time their writers
    /// commit at: three whole hours and ten and a half minutes of a fourth
    /// after it.
    const H0: Micros = 1_800_000_000_000_000 - 1_800_000_000_000_000 % HOUR_US;
    const H3_10: Micros = H0 + 3 * HOUR_US + 10 * MINUTE_US + 30_000_000;

    /// A store in the scratch folder `name` whose writer commits at
    /// [`H3_10`] and builds two listed servers' hours a step, and a reader
    /// of it.
    fn hours_store(name: &str) -> (std::path::PathBuf, SqliteSink, Connection) {
        let dir = scratch(name);
        let (mut sink, mut readers, _, _, _, _) = open(&dir, 1, DictTraining::default()).unwrap();
        sink.hours = std::mem::take(&mut sink.hours).with_chunk(2);
        sink.clock = || H3_10;
        (dir, sink, readers.remove(0))
    }

    #[test]
    fn hours_add_their_minutes_up_and_stand_for_them_in_hourly_reads() {
        // The commits write at `now`.
        let (dir, mut sink, reader) = hours_store("hours");
        let (h0, now) = (H0, H3_10);
        // Five servers, three whole hours and ten minutes of a fourth, each
        // server missing some minutes. s4 is not listed among the servers
        // (one since forgotten): its hours are built all the same.
        let ids: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
        let mut ops: Vec<(u64, Op)> = ids[..4]
            .iter()
            .map(|id| {
                let op = Op::Server {
                    server_id: id.clone(),
                    agent_id: "a".into(),
                    labels: Default::default(),
                    interval_ms: 1_000,
                };
                (0, op)
            })
            .collect();
        // And a minute of s0 in the hour before: the hour that holds the
        // store's oldest minute is read by its minutes (retention may have
        // taken some of them), so the hours read whole start after it.
        let first = minute_of(0, h0 - MINUTE_US);
        let mut stored = vec![("s0".to_owned(), first.clone())];
        ops.push((
            0,
            Op::Minute {
                server_id: "s0".into(),
                minute: first,
            },
        ));
        for minute in 0..190 {
            for (i, id) in ids.iter().enumerate() {
                if (i + minute) % 11 != 0 {
                    let m = minute_of(i, h0 + minute as i64 * MINUTE_US);
                    stored.push((id.clone(), m.clone()));
                    ops.push((
                        0,
                        Op::Minute {
                            server_id: id.clone(),
                            minute: m,
                        },
                    ));
                }
            }
        }
        sink.commit(&ops).unwrap();

        // Not yet due: the first hour is built two minutes after its end.
        assert!(!sink.roll_hours(h0 + hours::AFTER - 1).unwrap());
        assert_eq!(hours::built(&reader).unwrap(), None);
        let mut steps = 0;
        while sink.roll_hours(now).unwrap() {
            steps += 1;
            assert!(steps < 100, "the hours are built");
        }
        // Four listed servers, two a step: two steps an hour.
        assert_eq!(steps, 8);
        assert_eq!(
            hours::built(&reader).unwrap(),
            Some((h0 - HOUR_US, h0 + 3 * HOUR_US))
        );
        let whole = h0 + 3 * HOUR_US;
        assert_eq!(
            stored_hours(&reader),
            crate::rollup::hours_of(&stored, whole)
        );

        let read = |r: &MinutesRead| {
            let mut out = Vec::new();
            each_minute(&reader, r, |s, m| out.push((s.to_owned(), m))).unwrap();
            out
        };
        let minutes_from =
            |st: &[(String, Minute)], a: Micros, b: Micros, of: &dyn Fn(&str) -> bool| {
                let mut v: Vec<(String, Minute)> = st
                    .iter()
                    .filter(|(s, m)| m.start >= a && m.start < b && of(s))
                    .cloned()
                    .collect();
                v.sort_by_key(|(s, m)| (m.start, s.clone()));
                v
            };
        let hours_from =
            |st: &[(String, Minute)], a: Micros, b: Micros, of: &dyn Fn(&str) -> bool| {
                crate::rollup::hours_of(st, whole)
                    .into_iter()
                    .filter(|((h, s), _)| *h >= a && *h < b && of(s))
                    .map(|((_, s), m)| (s, m))
                    .collect::<Vec<_>>()
            };
        let all = |_: &str| true;
        let hourly = MinutesRead {
            hourly: true,
            ..MinutesRead::range(h0, now)
        };
        // The whole hours as rows, the rest minute by minute.
        let mut expected = hours_from(&stored, h0, whole, &all);
        expected.extend(minutes_from(&stored, whole, now, &all));
        assert_eq!(read(&hourly), expected);
        // Not hourly: every minute.
        assert_eq!(
            read(&MinutesRead::range(h0, now)),
            minutes_from(&stored, h0, now, &all)
        );
        // From within an hour: its minutes, then the hours after.
        let mid = MinutesRead {
            start: h0 + 30 * MINUTE_US,
            ..hourly.clone()
        };
        let mut expected = minutes_from(&stored, h0 + 30 * MINUTE_US, h0 + HOUR_US, &all);
        expected.extend(hours_from(&stored, h0 + HOUR_US, whole, &all));
        expected.extend(minutes_from(&stored, whole, now, &all));
        assert_eq!(read(&mid), expected);
        // s2's second hour wanted by the minute: after the hour's other rows.
        let by = MinutesRead {
            by_minute: [(h0 + HOUR_US, vec!["s2".to_owned()])].into(),
            ..hourly.clone()
        };
        let mut expected = hours_from(&stored, h0, h0 + HOUR_US, &all);
        expected.extend(hours_from(&stored, h0 + HOUR_US, h0 + 2 * HOUR_US, &|s| {
            s != "s2"
        }));
        expected.extend(minutes_from(
            &stored,
            h0 + HOUR_US,
            h0 + 2 * HOUR_US,
            &|s| s == "s2",
        ));
        expected.extend(hours_from(&stored, h0 + 2 * HOUR_US, whole, &all));
        expected.extend(minutes_from(&stored, whole, now, &all));
        assert_eq!(read(&by), expected);
        // More servers than are looked up by key: only theirs.
        let mut many: Vec<String> = (0..70).map(|i| format!("gone-{i}")).collect();
        many.extend(["s1".to_owned(), "s3".to_owned()]);
        let theirs = |s: &str| s == "s1" || s == "s3";
        let mut expected = hours_from(&stored, h0, whole, &theirs);
        expected.extend(minutes_from(&stored, whole, now, &theirs));
        assert_eq!(
            read(&MinutesRead {
                servers: Some(many),
                ..hourly.clone()
            }),
            expected
        );

        // A minute written again into an hour built, and one written late:
        // their hours are read minute by minute until built again, once no
        // minute has come into them for two minutes.
        let mut again = minute_of(1, h0 + HOUR_US + 7 * MINUTE_US);
        again
            .values
            .insert(crate::rollup::Metric::Sessions, "active", 1e6);
        let late = minute_of(3, h0 + 8 * MINUTE_US);
        assert!(
            stored
                .iter()
                .any(|(s, m)| s == "s1" && m.start == again.start)
        );
        assert!(
            !stored
                .iter()
                .any(|(s, m)| s == "s3" && m.start == late.start)
        );
        for (s, m) in &mut stored {
            if s == "s1" && m.start == again.start {
                *m = again.clone();
            }
        }
        stored.push(("s3".to_owned(), late.clone()));
        let before = stored_hours(&reader);
        sink.commit(&[
            (
                0,
                Op::Minute {
                    server_id: "s1".into(),
                    minute: again,
                },
            ),
            (
                0,
                Op::Minute {
                    server_id: "s3".into(),
                    minute: late,
                },
            ),
        ])
        .unwrap();
        assert_eq!(stored_hours(&reader), before);
        let late_hours = [(h0, "s3"), (h0 + HOUR_US, "s1")];
        let is_late = |h: Micros, s: &str| late_hours.contains(&(h, s));
        let mut expected = Vec::new();
        for h in [h0, h0 + HOUR_US, h0 + 2 * HOUR_US] {
            expected.extend(hours_from(&stored, h, h + HOUR_US, &|s| !is_late(h, s)));
            expected.extend(minutes_from(&stored, h, h + HOUR_US, &|s| is_late(h, s)));
        }
        expected.extend(minutes_from(&stored, whole, now, &all));
        assert_eq!(read(&hourly), expected);
        // Wanted by the minute as well: still once.
        let both = MinutesRead {
            by_minute: [(h0, vec!["s3".to_owned()])].into(),
            ..hourly.clone()
        };
        assert_eq!(read(&both), expected);
        // Not two minutes after: not yet built again.
        assert!(!sink.roll_hours(now + hours::AFTER - 1).unwrap());
        assert_eq!(stored_hours(&reader), before);
        assert!(sink.roll_hours(now + hours::AFTER).unwrap());
        let left: i64 = reader
            .query_row("SELECT count(*) FROM rollup_hours_late", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        let after = stored_hours(&reader);
        assert_eq!(after, crate::rollup::hours_of(&stored, whole));
        assert_eq!(
            read(&hourly)[..],
            {
                let mut e = hours_from(&stored, h0, whole, &all);
                e.extend(minutes_from(&stored, whole, now, &all));
                e
            }[..]
        );
        let changed: Vec<&(Micros, String)> = after
            .keys()
            .filter(|k| before.get(k) != after.get(k))
            .collect();
        assert_eq!(
            changed,
            [&(h0, "s3".to_owned()), &(h0 + HOUR_US, "s1".to_owned())]
        );

        // The rollups' retention has taken the first ten minutes, not yet
        // their hour: that hour is read by the minutes left.
        reader
            .execute(
                "DELETE FROM rollups WHERE minute < ?1",
                [h0 + 10 * MINUTE_US],
            )
            .unwrap();
        stored.retain(|(_, m)| m.start >= h0 + 10 * MINUTE_US);
        let mut expected = minutes_from(&stored, h0, h0 + HOUR_US, &all);
        expected.extend(hours_from(&stored, h0 + HOUR_US, whole, &all));
        expected.extend(minutes_from(&stored, whole, now, &all));
        assert_eq!(read(&hourly), expected);

        // Opened again, a minute written late at the first commit is marked:
        // the store knows the hours built before the writer's first step.
        drop(sink);
        let (mut sink, _, _, _, _, _) = open(&dir, 1, DictTraining::default()).unwrap();
        let again = minute_of(0, h0 + 2 * MINUTE_US);
        sink.commit(&[(
            0,
            Op::Minute {
                server_id: "s0".into(),
                minute: again,
            },
        )])
        .unwrap();
        let marked: Vec<(i64, String)> = reader
            .prepare("SELECT hour, server_id FROM rollup_hours_late")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(marked, [(h0, "s0".to_owned())]);
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What `read` gives of every server in one scan, which it must give
    /// server by server too (as the Query API reads, its list of `servers`
    /// naming one without rows too).
    fn two_ways<T: PartialEq + std::fmt::Debug>(
        servers: &[String],
        read: impl Fn(Option<&[String]>) -> T,
    ) -> T {
        let every = read(None);
        assert_eq!(read(Some(servers)), every, "server by server");
        every
    }

    /// One server's hour as a test adds it up, apart from the code under
    /// test: samples, coverage, each tuple's count, each churn key's
    /// counts, the lifetimes' histogram and longest, sessions established.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Summed {
        samples: u64,
        covered_us: i64,
        tuples: std::collections::BTreeMap<crate::load::Tuple, u64>,
        churn: std::collections::BTreeMap<crate::load::churn::ChurnKey, (u64, u64, i64)>,
        lifetimes: std::collections::BTreeMap<u16, u64>,
        longest: i64,
        established: std::collections::BTreeMap<String, u64>,
    }

    /// What `each_load` hands of `[start, end)`, added up by server and
    /// hour, and how many rows it handed.
    fn load_by_hour(
        db: &Connection,
        (start, end): (Micros, Micros),
        wanted: Wanted,
        skip: Option<&ServerHours>,
        by_hour: Option<&ServerHours>,
    ) -> (std::collections::BTreeMap<(String, Micros), Summed>, usize) {
        // Read two ways: every server in one scan, and server by server (as
        // the Query API reads, its list naming one without rows too).
        let servers: Vec<String> = (0..5)
            .map(|i| format!("s{i}"))
            .chain(["gone".to_owned()])
            .collect();
        let read = |servers: Option<&[String]>| {
            let mut hours: std::collections::BTreeMap<(String, Micros), Summed> =
                Default::default();
            let mut rows = 0;
            each_load(db, servers, start, end, wanted, skip, by_hour, |id, m| {
                rows += 1;
                let b = &m.coarse;
                let hour = b.start - b.start.rem_euclid(HOUR_US);
                let h = hours.entry((id.to_owned(), hour)).or_default();
                h.samples += u64::from(b.samples);
                h.covered_us += b.covered_us;
                for (t, n) in &b.tuples {
                    *h.tuples.entry(t.clone()).or_default() += u64::from(*n);
                }
                for (k, c) in &b.churn.rows {
                    let sum = h.churn.entry(k.clone()).or_default();
                    *sum = (sum.0 + c.started, sum.1 + c.ended, sum.2 + c.lifetime_us);
                }
                for (i, n) in &b.churn.lifetimes {
                    *h.lifetimes.entry(*i).or_default() += n;
                }
                h.longest = h.longest.max(b.churn.lifetime_max_us);
                for (d, n) in &b.churn.established {
                    *h.established.entry(d.to_string()).or_default() += n;
                }
            })
            .unwrap();
            (hours, rows)
        };
        two_ways(&servers, read)
    }

    #[test]
    fn hours_of_load_add_their_minutes_up_and_stand_for_them_in_reads_by_the_hour() {
        let (dir, mut sink, reader) = hours_store("load-hours");
        let now = H3_10;
        // Five servers over three hours and ten minutes, each missing some
        // minutes, each minute's users of its own; s4 is not listed among
        // the servers, and its hours are built all the same. A rollup
        // before them is the store's oldest minute.
        let ids: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
        let mut ops: Vec<(u64, Op)> = ids[..4]
            .iter()
            .map(|id| {
                let op = Op::Server {
                    server_id: id.clone(),
                    agent_id: "a".into(),
                    labels: Default::default(),
                    interval_ms: 1_000,
                };
                (0, op)
            })
            .collect();
        ops.push((
            0,
            Op::Minute {
                server_id: "s0".into(),
                minute: minute_of(0, H0 - MINUTE_US),
            },
        ));
        let load = |i: usize, minute: i64| {
            let start = H0 + minute * MINUTE_US;
            let user = format!("u{i}-{}", minute % 7);
            let mut m = crate::load::tests::minute_of(start, &["app", &user]);
            m.coarse.samples = 50 + (minute % 10) as u32;
            // Sessions started and ended by two users of the server's.
            let key = |u: &str| crate::load::churn::ChurnKey {
                database: "db".into(),
                application: "app".into(),
                user: u.into(),
                client: "10.0.0.1".into(),
            };
            let count = |n: i64| crate::load::churn::ChurnCount {
                started: (n % 3) as u64,
                ended: (n % 2) as u64,
                lifetime_us: n * 1_000,
            };
            m.coarse.churn = crate::load::Churn {
                rows: vec![(key(&user), count(minute)), (key("all"), count(minute + 1))],
                lifetimes: vec![((minute % 4) as u16, 1 + (minute % 2) as u64)],
                lifetime_max_us: minute * 1_000,
                established: vec![("db".into(), (minute % 5) as u64)],
            };
            let hour = crate::load::hours::HourTotals::holding(start);
            (
                0,
                Op::Load {
                    server_id: ids[i].clone(),
                    minute: m.pack(),
                    hour,
                },
            )
        };
        // Server i has no minute m where (i + m) % 11 == 0: how many minutes
        // of `minutes` the servers `servers` hold.
        let stored = |servers: std::ops::Range<i64>, minutes: std::ops::Range<i64>| {
            servers
                .flat_map(|i| minutes.clone().map(move |m| i + m))
                .filter(|n| n % 11 != 0)
                .count()
        };
        for minute in 0..190 {
            for (i, id) in ids.iter().enumerate() {
                if (i as i64 + minute) % 11 != 0 {
                    let start = H0 + minute * MINUTE_US;
                    let m = minute_of(i, start);
                    ops.push((
                        0,
                        Op::Minute {
                            server_id: id.clone(),
                            minute: m,
                        },
                    ));
                    ops.push(load(i, minute));
                }
            }
        }
        sink.commit(&ops).unwrap();
        let range = (H0 - 30 * MINUTE_US, now);
        let (every, minutes) = load_by_hour(&reader, range, Wanted::Minutes, None, None);
        // Nothing built yet: read by the hour, the same minutes.
        let none = ServerHours::default();
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), minutes)
        );
        let mut steps = 0;
        while sink.roll_hours(now).unwrap() {
            steps += 1;
            assert!(steps < 100, "the hours are built");
        }
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM load_tuple_hours", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 15, "five servers' three hours");
        assert_eq!(
            hours::kept_from(&reader, hours::LOAD_FROM).unwrap(),
            Some(H0 - HOUR_US)
        );

        // Read by the hour: the same sums, the three whole hours a row each.
        let tail = stored(0..5, 180..190);
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), 15 + tail)
        );
        // Not for what hours do not keep: 10 s buckets.
        assert_eq!(
            load_by_hour(&reader, range, Wanted::All, None, Some(&none)).1,
            minutes
        );
        // Churn: the hours hold it as the minutes do.
        let (churn, _) = load_by_hour(&reader, range, Wanted::Churn, None, None);
        assert!(
            churn
                .values()
                .all(|h| h.tuples.is_empty() && h.churn.len() > 2 && h.lifetimes.len() > 1)
        );
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Churn, None, Some(&none)),
            (churn, 15 + tail)
        );
        // One query's tuples: the hours hold them as the minutes do.
        let query = Wanted::Query(101);
        let (of_query, _) = load_by_hour(&reader, range, query, None, None);
        assert!(
            of_query
                .values()
                .all(|h| !h.tuples.is_empty() && h.tuples.keys().all(|t| t.query == 101))
        );
        assert_eq!(
            load_by_hour(&reader, range, query, None, Some(&none)),
            (of_query, 15 + tail)
        );
        // An hour the caller reads by the minute, and one passed over.
        let mut held = ServerHours::default();
        held.insert("s1", H0 + HOUR_US);
        let s1 = stored(1..2, 60..120);
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&held)),
            (every.clone(), 14 + s1 + tail)
        );
        let mut passed = ServerHours::default();
        passed.insert("s2", H0);
        let mut without = every.clone();
        without.remove(&("s2".to_owned(), H0));
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, Some(&passed), Some(&none)),
            (without, 14 + tail)
        );

        // A minute written late into an hour built (s2's tenth, never
        // written): its hour is read by the minute until built again, two
        // minutes after.
        assert_eq!((2 + 9) % 11, 0);
        sink.commit(&[load(2, 9)]).unwrap();
        let (every, _) = load_by_hour(&reader, range, Wanted::Minutes, None, None);
        let s2 = stored(2..3, 0..60) + 1;
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), 14 + s2 + tail)
        );
        let later = now + hours::AFTER;
        while sink.roll_hours(later).unwrap() {}
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), 15 + tail)
        );

        // Hours built before a version that adds load up (no
        // `load_tuple_hours_from`) are read by the minute; so is the hour
        // that holds the store's oldest minute.
        let load_from = |hour: Micros| {
            reader
                .execute(
                    "UPDATE kept SET value = ?1 WHERE name = 'load_tuple_hours_from'",
                    [hour],
                )
                .unwrap()
        };
        load_from(H0 + 2 * HOUR_US);
        let first_two = stored(0..5, 0..120) + 1;
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), first_two + 5 + tail)
        );
        load_from(H0 - HOUR_US);
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), 15 + tail)
        );
        reader
            .execute(
                "DELETE FROM rollups WHERE minute < ?1",
                [H0 + 30 * MINUTE_US],
            )
            .unwrap();
        let first = stored(0..5, 0..60) + 1;
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)),
            (every.clone(), first + 10 + tail),
            "the hour of the oldest minute by its minutes"
        );
        reader
            .execute("DELETE FROM kept WHERE name = 'load_tuple_hours_from'", [])
            .unwrap();
        assert_eq!(
            load_by_hour(&reader, range, Wanted::Minutes, None, Some(&none)).1,
            minutes + 1,
            "none by the hour"
        );
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One server's hour of statement statistics as a test adds it up,
    /// apart from the code under test: per fingerprint, the calls, time in
    /// µs, rows and WAL bytes.
    type StatementSums = std::collections::BTreeMap<u64, [u64; 4]>;

    /// What `each_statements` hands of `[start, end)`, added up by server
    /// and hour, and how many rows it handed; read in one scan and server
    /// by server, which must agree.
    fn statements_by_hour(
        db: &Connection,
        (start, end): (Micros, Micros),
        skip: Option<&ServerHours>,
        by_hour: Option<&ServerHours>,
    ) -> (
        std::collections::BTreeMap<(String, Micros), StatementSums>,
        usize,
    ) {
        let servers: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let read = |servers: Option<&[String]>| {
            let mut hours: std::collections::BTreeMap<(String, Micros), StatementSums> =
                Default::default();
            let mut rows = 0;
            each_statements(db, servers, start, end, skip, by_hour, |id, at, r| {
                rows += 1;
                let hour = at - at.rem_euclid(HOUR_US);
                let h = hours.entry((id.to_owned(), hour)).or_default();
                for (f, t) in &r.by_query {
                    let sum = h.entry(*f).or_default();
                    sum[0] += t.calls;
                    sum[1] += (t.time_ms * 1000.0).round() as u64;
                    sum[2] += t.rows;
                    sum[3] += t.wal_bytes;
                }
            })
            .unwrap();
            (hours, rows)
        };
        two_ways(&servers, read)
    }

    #[test]
    fn hours_of_statements_add_their_intervals_up_and_stand_for_them_in_reads_by_the_hour() {
        use crate::load::statements::{Read, Totals};
        let (dir, mut sink, reader) = hours_store("statement-hours");
        const TEN: Micros = 10 * MINUTE_US;
        let now = H3_10;
        // Three servers with load over three hours and ten minutes, and
        // their statement intervals, some missing; s3 has intervals and no
        // load (its hours are not built, and read by the interval).
        let ids: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let mut ops: Vec<(u64, Op)> = vec![(
            0,
            Op::Minute {
                server_id: "s0".into(),
                minute: minute_of(0, H0 - MINUTE_US),
            },
        )];
        for minute in 0..190 {
            let start = H0 + minute * MINUTE_US;
            for (i, id) in ids[..3].iter().enumerate() {
                let minute = Op::Minute {
                    server_id: id.clone(),
                    minute: minute_of(i, start),
                };
                let load = Op::Load {
                    server_id: id.clone(),
                    minute: crate::load::tests::minute_of(start, &["app", "u"]).pack(),
                    hour: crate::load::hours::HourTotals::holding(start),
                };
                ops.extend([(0, minute), (0, load)]);
            }
        }
        // Server i's interval k, none where (i + k) % 7 == 0: fingerprints
        // of their own and the others' (the time a quarter of a ms, which
        // adds up exactly).
        let interval = |i: usize, k: i64| {
            let at = H0 + k * TEN;
            let totals = |n: u64| Totals {
                calls: n,
                time_ms: n as f64 * 0.25,
                rows: 2 * n,
                wal_bytes: 100 * n,
                ..Totals::default()
            };
            let read = Read {
                since_us: at,
                by_query: vec![
                    (7, totals(1 + k as u64)),
                    (100 + (k % 3) as u64, totals(i as u64 + 1)),
                    (1_000 + i as u64, totals(k as u64 % 4)),
                ],
            };
            let server_id = ids[i].clone();
            (
                0,
                Op::Statements {
                    server_id,
                    at,
                    read,
                },
            )
        };
        for k in 0..20 {
            for i in 0..4 {
                if (i as i64 + k) % 7 != 0 {
                    ops.push(interval(i, k));
                }
            }
        }
        sink.commit(&ops).unwrap();
        let range = (H0 - 30 * MINUTE_US, now);
        let none = ServerHours::default();
        let (every, intervals) = statements_by_hour(&reader, range, None, None);
        assert_eq!(intervals, 20 * 4 - 11, "every interval but those missing");
        assert_eq!(every.len(), 4 * 4);
        assert_eq!(
            statements_by_hour(&reader, range, None, Some(&none)),
            (every.clone(), intervals),
            "nothing built yet"
        );
        while sink.roll_hours(now).unwrap() {}
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM statement_hours", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 9, "three servers' three hours");
        assert_eq!(
            hours::kept_from(&reader, hours::STATEMENTS_FROM).unwrap(),
            Some(H0 - HOUR_US)
        );
        // Intervals of the last hour (not built), and s3's.
        let missing = |i: i64, ks: std::ops::Range<i64>| ks.filter(|k| (i + k) % 7 == 0).count();
        let s3 = 20 - missing(3, 0..20);
        let tail = (0..3).map(|i| 2 - missing(i, 18..20)).sum::<usize>() + s3;
        assert_eq!(
            statements_by_hour(&reader, range, None, Some(&none)),
            (every.clone(), 9 + tail)
        );
        // An hour the caller reads by the interval, and one passed over.
        let mut held = ServerHours::default();
        held.insert("s1", H0 + HOUR_US);
        let s1 = 6 - missing(1, 6..12);
        assert_eq!(
            statements_by_hour(&reader, range, None, Some(&held)),
            (every.clone(), 8 + s1 + tail)
        );
        let mut passed = ServerHours::default();
        passed.insert("s2", H0);
        let mut without = every.clone();
        without.remove(&("s2".to_owned(), H0));
        assert_eq!(
            statements_by_hour(&reader, range, Some(&passed), Some(&none)),
            (without, 8 + tail)
        );
        // A range that starts within an hour reads that hour by the
        // interval.
        let (part, n) = statements_by_hour(&reader, (H0 + TEN, now), None, Some(&none));
        assert_eq!(
            part,
            statements_by_hour(&reader, (H0 + TEN, now), None, None).0
        );
        let first_hour: usize = (0..3).map(|i| 5 - missing(i, 1..6)).sum();
        assert_eq!(
            n,
            6 + tail - 1 + first_hour,
            "s3's first interval out of it"
        );

        // An interval written late into an hour built (s0's first, never
        // written): its hour is read by the interval until built again, two
        // minutes after.
        assert_eq!(7 % 7, 0, "s0 (0) has no interval 7");
        sink.commit(&[interval(0, 7)]).unwrap();
        // Marked for its statements alone: its rollups and load stay whole.
        let marks = |table: &str| -> Vec<(Micros, String)> {
            reader
                .prepare(&format!("SELECT hour, server_id FROM {table}"))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            marks(hours::INTERVALS_LATE),
            [(H0 + HOUR_US, "s0".to_owned())]
        );
        assert!(marks(hours::MINUTES_LATE).is_empty());
        let (every, _) = statements_by_hour(&reader, range, None, None);
        let s0 = 6 - missing(0, 6..12) + 1;
        assert_eq!(
            statements_by_hour(&reader, range, None, Some(&none)),
            (every.clone(), 8 + s0 + tail)
        );
        while sink.roll_hours(now + hours::AFTER).unwrap() {}
        assert!(marks(hours::INTERVALS_LATE).is_empty());
        // A minute and an interval late into one hour: its one rebuild
        // builds its statements too, and spends both marks.
        let again = Op::Minute {
            server_id: "s1".into(),
            minute: minute_of(1, H0 + 70 * MINUTE_US),
        };
        sink.commit(&[(0, again), interval(1, 8)]).unwrap();
        assert_eq!(marks(hours::INTERVALS_LATE).len(), 1);
        assert_eq!(marks(hours::MINUTES_LATE).len(), 1);
        assert!(sink.roll_hours(now + 2 * hours::AFTER).unwrap());
        assert!(marks(hours::INTERVALS_LATE).is_empty());
        assert!(marks(hours::MINUTES_LATE).is_empty());
        assert_eq!(
            statements_by_hour(&reader, range, None, Some(&none)),
            (every.clone(), 9 + tail)
        );

        // Hours built before a version that adds statements up are read by
        // the interval.
        reader
            .execute(
                "UPDATE kept SET value = ?1 WHERE name = ?2",
                params![H0 + 2 * HOUR_US, hours::STATEMENTS_FROM],
            )
            .unwrap();
        let first_two: usize = (0..3).map(|i| 12 - missing(i, 0..12)).sum::<usize>() + 1;
        assert_eq!(
            statements_by_hour(&reader, range, None, Some(&none)),
            (every.clone(), 3 + first_two + tail)
        );
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_step_of_adding_hours_up_stops_where_its_budget_is_spent() {
        let dir = scratch("hours-budget");
        let (mut sink, mut readers, _, _, _, _) = open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        // No budget: a step builds one batch of listed servers' hours of
        // load, then the rollups of the same names.
        sink.hours = std::mem::take(&mut sink.hours).with_budget(Duration::ZERO);
        let now = H0 + 2 * HOUR_US + 10 * MINUTE_US;
        sink.clock = || H0 + 2 * HOUR_US + 10 * MINUTE_US;
        // Twelve listed servers and one not listed (it sorts last).
        let ids: Vec<String> = (0..13).map(|i| format!("s{i:02}")).collect();
        let mut ops: Vec<(u64, Op)> = ids[..12]
            .iter()
            .map(|id| {
                let op = Op::Server {
                    server_id: id.clone(),
                    agent_id: "a".into(),
                    labels: Default::default(),
                    interval_ms: 1_000,
                };
                (0, op)
            })
            .collect();
        for minute in 0..130 {
            let start = H0 + minute * MINUTE_US;
            for (i, id) in ids.iter().enumerate() {
                let minute = minute_of(i, start);
                ops.push((
                    0,
                    Op::Minute {
                        server_id: id.clone(),
                        minute,
                    },
                ));
                let load = crate::load::tests::minute_of(start, &["app"]);
                let hour = crate::load::hours::HourTotals::holding(start);
                ops.push((
                    0,
                    Op::Load {
                        server_id: id.clone(),
                        minute: load.pack(),
                        hour,
                    },
                ));
            }
        }
        sink.commit(&ops).unwrap();
        let mut steps = 0;
        while sink.roll_hours(now).unwrap() {
            steps += 1;
            assert!(steps < 100, "the hours are built");
        }
        // Five, five, and the last two with every name after them: three
        // steps an hour.
        assert_eq!(steps, 6);
        let count = |sql: &str| -> i64 { reader.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM load_tuple_hours"), 2 * 13);
        assert_eq!(count("SELECT count(*) FROM rollup_hours"), 2 * 13);
        assert_eq!(hours::built(&reader).unwrap(), Some((H0, H0 + 2 * HOUR_US)));
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hours_without_a_minute_are_passed_in_one_step() {
        let dir = scratch("hours-gap");
        let (mut sink, mut readers, _, _, _, _) = open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        sink.clock = || H0 + 6 * HOUR_US + 10 * MINUTE_US;
        // The collector stopped for four hours between them.
        let minutes = [
            H0,
            H0 + MINUTE_US,
            H0 + 5 * HOUR_US,
            H0 + 6 * HOUR_US + 9 * MINUTE_US,
        ];
        let ops: Vec<(u64, Op)> = minutes
            .iter()
            .map(|&at| {
                let minute = minute_of(0, at);
                (
                    0,
                    Op::Minute {
                        server_id: "s0".into(),
                        minute,
                    },
                )
            })
            .collect();
        sink.commit(&ops).unwrap();
        let mut built = Vec::new();
        while sink.roll_hours(H0 + 6 * HOUR_US + 10 * MINUTE_US).unwrap() {
            built.push(hours::built(&reader).unwrap());
            assert!(built.len() < 10);
        }
        // The first hour, the four without a minute at once, the sixth.
        assert_eq!(
            built,
            [
                Some((H0, H0 + HOUR_US)),
                Some((H0, H0 + 5 * HOUR_US)),
                Some((H0, H0 + 6 * HOUR_US)),
            ]
        );
        assert_eq!(stored_hours(&reader).len(), 2);
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_table_s_old_rows_go_a_chunk_at_a_time_none_read_whole() {
        let db = in_memory();
        // None reads its table whole: the minutes of load did, every round,
        // some 7 KB a row. Each steps through at most its chunk of rows in a
        // scan (load's walks its oldest rows in the order written), however
        // many are kept.
        {
            let db = in_memory();
            for i in 0..200 {
                let server = format!("s{}", i % 7);
                for sql in [
                    "INSERT INTO rollups VALUES (?2, ?1, x'')",
                    "INSERT INTO load (server_id, minute, body) VALUES (?1, ?2, x'')",
                    "INSERT INTO statements (server_id, at, body) VALUES (?1, ?2, x'')",
                    "INSERT INTO load_hours (server_id, hour, body) VALUES (?1, ?2, x'')",
                    "INSERT INTO load_keys VALUES (?1, ?2, ?2, x'')",
                    "INSERT INTO frame_index VALUES (?1, ?2, ?2, 0)",
                    "INSERT INTO rollup_hours VALUES (?2, ?1, x'')",
                    "INSERT INTO load_tuple_hours (server_id, hour, body) VALUES (?1, ?2, x'')",
                    "INSERT INTO statement_hours (server_id, hour, body) VALUES (?1, ?2, x'')",
                ] {
                    db.execute(sql, params![server, 1_000 + i]).unwrap();
                }
            }
            for sql in AGED.iter().map(|(sql, ..)| *sql) {
                let mut st = db.prepare(sql).unwrap();
                st.execute(params![500, 2]).unwrap();
                let stepped = st.get_status(rusqlite::StatementStatus::FullscanStep);
                assert!(stepped <= 2, "{sql}: {stepped} rows stepped through");
            }
            let mut st = db.prepare(UNINDEX).unwrap();
            st.execute(params!["s1", 500, 2]).unwrap();
            assert_eq!(st.get_status(rusqlite::StatementStatus::FullscanStep), 0);
        }

        let now = 100 * 86_400_000_000;
        let hour = 3_600_000_000;
        let retention = Retention::default();
        let before = now - retention.rollups.as_micros() as i64;
        // Three rows past the retention in each table and one within it; an
        // hour's totals and a dictionary stay until the hour after theirs
        // is past it.
        for (i, at) in [before - 3, before - 2, before - 1, before]
            .into_iter()
            .enumerate()
        {
            let hour_at = at - hour;
            let server = ["a", "b", "c", "d"][i];
            for (sql, at) in [
                ("INSERT INTO rollups VALUES (?2, ?1, x'')", at),
                (
                    "INSERT INTO load (server_id, minute, body) VALUES (?1, ?2, x'')",
                    at,
                ),
                (
                    "INSERT INTO statements (server_id, at, body) VALUES (?1, ?2, x'')",
                    at,
                ),
                (
                    "INSERT INTO load_hours (server_id, hour, body) VALUES (?1, ?2, x'')",
                    hour_at,
                ),
                ("INSERT INTO rollup_hours VALUES (?2, ?1, x'')", hour_at),
                (
                    "INSERT INTO load_tuple_hours (server_id, hour, body) VALUES (?1, ?2, x'')",
                    hour_at,
                ),
                (
                    "INSERT INTO statement_hours (server_id, hour, body) VALUES (?1, ?2, x'')",
                    hour_at,
                ),
                // A dictionary goes once every row that may name it (those
                // before the hour after its own) has: `d`'s ends after its
                // minute, so it stays.
                ("INSERT INTO load_keys VALUES (?1, 1, ?2, x'')", hour_at + 1),
            ] {
                db.execute(sql, params![server, at]).unwrap();
            }
        }
        // A server's old entries in the index, more than a chunk.
        for i in 0..5 {
            empty_keyframe(&db, "a", now - 30 * hour + i);
        }
        empty_keyframe(&db, "a", now);
        index_the_rest(&db).unwrap();
        let count = |table: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        let tables = [
            "rollups",
            "load",
            "rollup_hours",
            "load_tuple_hours",
            "statements",
            "statement_hours",
            "load_hours",
            "load_keys",
        ];

        // No budget, chunks of two (of load, one): a statement that deletes
        // a step of each part, the rollups' tables in turn (the rows that
        // name a dictionary before it), the frames (the last stays, whatever
        // its age) and the index, none waiting behind the tables' backlog.
        let pace = Pace {
            budget: Duration::ZERO,
            chunk: 2,
            index_over: Duration::ZERO,
        };
        let mut round = Pruning::start(&db, retention, now, None, pace).unwrap();
        let mut steps = Vec::new();
        loop {
            let (deleted, over) = round.step(&db).unwrap();
            let left: Vec<i64> = tables.iter().map(|t| count(t)).collect();
            steps.push((deleted.rollups, left, deleted.frames, count("frame_index")));
            if over {
                break;
            }
        }
        assert_eq!(
            steps,
            [
                (2, vec![2, 4, 4, 4, 4, 4, 4, 4], 2, 4),
                (1, vec![1, 4, 4, 4, 4, 4, 4, 4], 2, 2),
                (1, vec![1, 3, 4, 4, 4, 4, 4, 4], 1, 1),
                (1, vec![1, 2, 4, 4, 4, 4, 4, 4], 0, 1),
                (1, vec![1, 1, 4, 4, 4, 4, 4, 4], 0, 1),
                (2, vec![1, 1, 2, 4, 4, 4, 4, 4], 0, 1),
                (1, vec![1, 1, 1, 4, 4, 4, 4, 4], 0, 1),
                (1, vec![1, 1, 1, 3, 4, 4, 4, 4], 0, 1),
                (1, vec![1, 1, 1, 2, 4, 4, 4, 4], 0, 1),
                (1, vec![1, 1, 1, 1, 4, 4, 4, 4], 0, 1),
                (2, vec![1, 1, 1, 1, 2, 4, 4, 4], 0, 1),
                (1, vec![1, 1, 1, 1, 1, 4, 4, 4], 0, 1),
                (2, vec![1, 1, 1, 1, 1, 2, 4, 4], 0, 1),
                (1, vec![1, 1, 1, 1, 1, 1, 4, 4], 0, 1),
                (2, vec![1, 1, 1, 1, 1, 1, 2, 4], 0, 1),
                (1, vec![1, 1, 1, 1, 1, 1, 1, 4], 0, 1),
                (2, vec![1, 1, 1, 1, 1, 1, 1, 2], 0, 1),
                (1, vec![1, 1, 1, 1, 1, 1, 1, 1], 0, 1),
            ]
        );
        for table in tables {
            let server: String = db
                .query_row(&format!("SELECT server_id FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(server, "d", "{table}: the row within the retention stays");
        }
    }

    #[test]
    fn history_past_its_retention_is_deleted() {
        let db = in_memory();
        let now = 100 * 86_400_000_000;
        let hour = 3_600_000_000;
        for at in [now - 25 * hour, now - 23 * hour] {
            empty_keyframe(&db, "a", at);
        }
        for minute in [now - 31 * 24 * hour, now - 29 * 24 * hour, now - hour] {
            db.execute("INSERT INTO rollups VALUES (?1, 'a', x'')", params![minute])
                .unwrap();
        }
        index_the_rest(&db).unwrap();
        assert_eq!(
            prune(&db, Retention::default(), now).unwrap(),
            Pruned {
                frames: 1,
                rollups: 1
            }
        );
        let count = |table: &str| -> i64 {
            db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            (count("frames"), count("frame_index"), count("rollups")),
            (1, 1, 2)
        );
        let short = Retention {
            frames: std::time::Duration::from_secs(3600),
            rollups: std::time::Duration::from_secs(2 * 3600),
        };
        // The last frame stays, so that the next is not numbered 1 again,
        // but not in the index.
        assert_eq!(
            prune(&db, short, now).unwrap(),
            Pruned {
                frames: 0,
                rollups: 1
            }
        );
        assert_eq!((count("frames"), count("frame_index")), (1, 0));
        empty_keyframe(&db, "a", now);
        assert_eq!(db.last_insert_rowid(), 3);
    }

    /// The rows of `sql`, three columns each.
    fn triples<A, B, C>(db: &Connection, sql: &str) -> Vec<(A, B, C)>
    where
        A: rusqlite::types::FromSql,
        B: rusqlite::types::FromSql,
        C: rusqlite::types::FromSql,
    {
        db.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A keyframe (at 0, 60 and 120 s) or delta of server `a` at `second`,
    /// whose one session has `second` as its pid.
    fn second(second: i64) -> Frame {
        let keyframe = second % 60 == 0;
        Frame {
            server_id: "a".into(),
            at: second * 1_000_000,
            keyframe,
            sessions: vec![Arc::new(Session {
                pid: second as i32 + 1,
                ..Default::default()
            })],
            unchanged: vec![0],
            removed: match keyframe {
                true => Vec::new(),
                false => vec![(second as i32, 0)],
            },
            ..frame()
        }
    }

    /// A store in a new directory named for `name`, which has committed
    /// server `a`'s frames of `seconds`, one a commit.
    fn written(
        name: &str,
        seconds: std::ops::Range<i64>,
    ) -> (std::path::PathBuf, SqliteSink, Connection, Unindexed) {
        let dir = scratch(name);
        let (mut sink, mut readers, unindexed, _, _, _) =
            open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        for s in seconds {
            sink.commit(&applied(vec![second(s)])).unwrap();
        }
        (dir, sink, reader, unindexed)
    }

    /// `n` servers' ids.
    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("db-{i}")).collect()
    }

    /// [`second`] of each of `servers`.
    fn each(servers: &[String], s: i64) -> Vec<Frame> {
        servers
            .iter()
            .map(|n| Frame {
                server_id: n.clone(),
                ..second(s)
            })
            .collect()
    }

    fn applied(frames: Vec<Frame>) -> Vec<(u64, Op)> {
        vec![(
            1,
            Op::Applied {
                agent_id: "x".into(),
                seq: 1,
                frames: frames.iter().map(Frame::encoded).collect(),
            },
        )]
    }

    /// `server_id` at `at`, as a reader rebuilds it, loading the frame
    /// dictionaries it needs from the file.
    fn rebuilt(
        db: &Connection,
        unindexed: &Unindexed,
        server_id: &str,
        at: Micros,
    ) -> Option<Rebuilt> {
        rebuild(db, unindexed, &FrameDicts::default(), server_id, at).unwrap()
    }

    /// The pid of the one session `a` had at `second`, as rebuilt.
    fn pid_at(db: &Connection, unindexed: &Unindexed, second: i64) -> Option<i32> {
        let state = rebuilt(db, unindexed, "a", second * 1_000_000)?;
        assert_eq!(state.sessions.len(), 1, "at {second} s");
        Some(state.sessions[0].pid)
    }

    #[test]
    fn frames_are_found_before_and_after_they_are_indexed_and_after_a_stop() {
        let dir = scratch("unindexed");
        let (mut sink, mut readers, unindexed, _, _, _) =
            open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        for s in 0..90 {
            sink.commit(&applied(vec![second(s)])).unwrap();
            if s == 70 {
                // Indexed with the next commit.
                sink.all = true;
            }
        }
        let in_index: i64 = reader
            .query_row("SELECT count(*) FROM frame_index", [], |r| r.get(0))
            .unwrap();
        assert_eq!(in_index, 71, "the frames before the 72nd are indexed");
        assert_eq!(unindexed.lock()["a"].len(), 19);
        for s in [0, 5, 59, 60, 70, 71, 72, 89, 1000] {
            assert_eq!(pid_at(&reader, &unindexed, s), Some(s.min(89) as i32 + 1));
        }
        // Only what is indexed is found without the writer's list.
        assert_eq!(pid_at(&reader, &Unindexed::default(), 89), Some(71));
        // The same time again: the later frame stands, before and after
        // it is indexed.
        let mut again = second(80);
        again.sessions[0] = Arc::new(Session {
            pid: 81,
            query: "again".into(),
            ..Default::default()
        });
        sink.commit(&applied(vec![again])).unwrap();
        let query_at = |db: &Connection, unindexed: &Unindexed, second: i64| {
            let state = rebuilt(db, unindexed, "a", second * 1_000_000);
            state.unwrap().sessions[0].query.to_string()
        };
        assert_eq!(query_at(&reader, &unindexed, 80), "again");
        // A collector stopped here: the file is opened again, and the
        // frames it had yet to index are indexed.
        drop((sink, reader));
        let (mut sink, mut readers, unindexed, _, loaded, _) =
            open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        assert!(loaded.servers.is_empty(), "no server was registered");
        assert!(unindexed.lock().is_empty());
        assert_eq!(pid_at(&reader, &unindexed, 89), Some(90));
        assert_eq!(query_at(&reader, &unindexed, 80), "again");
        assert_eq!(query_at(&reader, &unindexed, 79), "");
        assert_eq!(pid_at(&reader, &unindexed, 65), Some(66));
        sink.all = true;
        sink.commit(&applied(vec![second(90)])).unwrap();
        assert_eq!(pid_at(&reader, &unindexed, 95), Some(91));
        assert_eq!(pid_at(&reader, &Unindexed::default(), 95), Some(90));
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_trained_frame_dictionary_is_stored_used_read_after_a_restart_and_pruned() {
        let dir = scratch("frame-dicts");
        let quick = DictTraining {
            enabled: true,
            after: Duration::ZERO,
            frames: 300,
            every: Duration::ZERO,
        };
        let (mut sink, mut readers, unindexed, _, _, _) = open(&dir, 1, quick).unwrap();
        let reader = readers.remove(0);
        // `second`, with a session whose strings vary as a server's do.
        let frame = |s: i64| {
            let mut f = second(s);
            f.sessions[0] = Arc::new(Session {
                pid: s as i32 + 1,
                query: format!("SELECT * FROM orders_{} WHERE id = $1", s % 37).into(),
                client: format!("10.0.{}.{}:5432", s % 5, s % 251).into(),
                application_name: format!("web-{}", s % 3).into(),
                ..Default::default()
            });
            f
        };
        let dicts_stored = |db: &Connection| -> Vec<(u32, i64, Vec<u8>)> {
            let mut q = db
                .prepare("SELECT id, used, body FROM frame_dicts ORDER BY made")
                .unwrap();
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let started = Instant::now();
        // The first one trained meets another of its id in the file: it is
        // not used, and frames go on without one.
        for s in 0..300 {
            super::super::compress(&frame(s).encoded(), &mut sink.frames);
        }
        let taken = loop {
            if let Some((id, _)) = sink.frames.writes(now_micros()).new {
                break id;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no dictionary trained"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        reader
            .execute(
                "INSERT INTO frame_dicts (id, made, used, body) VALUES (?1, 0, 0, x'0102')",
                [taken],
            )
            .unwrap();
        let mut s = 0;
        sink.commit(&applied(vec![frame(s)])).unwrap();
        s += 1;
        assert_eq!(sink.frames.current(), None);
        assert_eq!(dicts_stored(&reader), [(taken, 0, vec![1, 2])]);
        reader.execute("DELETE FROM frame_dicts", []).unwrap();
        // The next one is stored, then used.
        let id = loop {
            sink.commit(&applied(vec![frame(s)])).unwrap();
            s += 1;
            if let Some(id) = sink.frames.current() {
                break id;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no dictionary used"
            );
        };
        let used_from = s;
        for _ in 0..20 {
            sink.commit(&applied(vec![frame(s)])).unwrap();
            s += 1;
        }
        assert!(
            dicts_stored(&reader).iter().any(|d| d.0 == id),
            "{id} stored"
        );
        let named = |at: i64| {
            reader
                .query_row(
                    "SELECT body FROM frames WHERE at = ?1",
                    [at * 1_000_000],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .map(|b| crate::zstd_local::dictionary_of(&b))
                .unwrap()
        };
        // The commit that stored it (in a transaction before its frames')
        // uses it; none before did.
        assert_eq!(named(0), None);
        assert_eq!(named(used_from - 1), Some(id));
        assert_eq!(named(used_from), Some(id));
        // Should its row go, the writer puts it back as it marks it used.
        let in_use = sink.frames.current().unwrap();
        reader.execute("DELETE FROM frame_dicts", []).unwrap();
        fn two_minutes_on() -> Micros {
            now_micros() + 120_000_000
        }
        sink.clock = two_minutes_on;
        sink.commit(&applied(vec![frame(s)])).unwrap();
        let back = dicts_stored(&reader);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, in_use);
        assert!(back[0].1 > now_micros() + 60_000_000, "marked used then");
        // Read with dictionaries loaded from the file, as another reader
        // would; then by a collector started again.
        let query_at = |db: &Connection, unindexed: &Unindexed, at: i64| {
            let state = rebuilt(db, unindexed, "a", at * 1_000_000).unwrap();
            (state.sessions[0].pid, state.sessions[0].query.to_string())
        };
        let last = s;
        let expected = (
            last as i32 + 1,
            format!("SELECT * FROM orders_{} WHERE id = $1", last % 37),
        );
        assert_eq!(query_at(&reader, &unindexed, last), expected);
        // Should its id hold other bytes when it is written again, it is
        // used no more.
        reader
            .execute(
                "UPDATE frame_dicts SET body = x'0102' WHERE id = ?1",
                [in_use],
            )
            .unwrap();
        fn four_minutes_on() -> Micros {
            now_micros() + 240_000_000
        }
        sink.clock = four_minutes_on;
        sink.commit(&applied(vec![frame(last + 1)])).unwrap();
        assert_eq!(sink.frames.current(), None);
        assert_eq!(named(last + 1), None);
        reader
            .execute(
                "UPDATE frame_dicts SET body = ?2 WHERE id = ?1",
                params![in_use, back[0].2],
            )
            .unwrap();
        drop((sink, reader));
        let (mut sink, mut readers, unindexed, _, _, _) =
            open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        assert_eq!(query_at(&reader, &unindexed, last), expected);
        // A row that is not a dictionary ends a read that needs it, and
        // nothing else.
        reader
            .execute("UPDATE frame_dicts SET body = 'text'", [])
            .unwrap();
        assert!(rebuilt(&reader, &unindexed, "a", last * 1_000_000).is_none());
        assert_eq!(
            query_at(&reader, &unindexed, 30),
            (31, "SELECT * FROM orders_30 WHERE id = $1".to_owned()),
            "frames from before it read"
        );
        reader
            .execute("UPDATE frame_dicts SET body = ?1", [&back[0].2])
            .unwrap();
        // Kept a day past the frames' retention from when it was last used.
        let used = back[0].1;
        let retention = Retention::default();
        let gone_at = used + retention.frames.as_micros() as i64 + KEPT_PAST_RETENTION;
        sink.prune(retention, gone_at).unwrap();
        assert!(dicts_stored(&reader).iter().any(|d| d.0 == in_use));
        sink.prune(retention, gone_at + 1).unwrap();
        assert!(!dicts_stored(&reader).iter().any(|d| d.0 == in_use));
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Minutes of load by server, then start.
    fn by_key(v: &mut [(String, MinuteLoad)]) {
        v.sort_by(|a, b| (&a.0, a.1.coarse.start).cmp(&(&b.0, b.1.coarse.start)));
    }

    #[test]
    fn hours_a_question_can_pass_over_are_those_whose_dictionaries_name_none_of_it() {
        use crate::load::hours::{HourTotals, MinuteTotals};
        let dir = scratch("passable");
        let (mut sink, mut readers, _, _, _, _) = open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        // Each minute with its hour's totals as they stand, as a counter
        // gives them.
        let mut hours: HashMap<(String, Micros), HourTotals> = HashMap::new();
        let mut load = |id: &str, minute: i64, users: &[&str]| {
            let start = H0 + minute * MINUTE_US;
            let m = crate::load::tests::minute_of(start, users);
            let hour = hours
                .entry((id.to_owned(), start - start.rem_euclid(HOUR_US)))
                .or_insert_with(|| HourTotals::holding(start));
            hour.set(MinuteTotals::of(&m.coarse));
            Op::Load {
                server_id: id.to_owned(),
                minute: m.pack(),
                hour: hour.clone(),
            }
        };
        // Four hours of four servers, and a minute of a fifth for s2 and s3:
        // s0 has the user asked for in its first hour only; s1, s2 and s3
        // never.
        let mut ops = Vec::new();
        for minute in 0..241 {
            let s0 = if minute < 60 { "wanted" } else { "app" };
            for (id, user) in [("s0", s0), ("s1", "app"), ("s2", "app"), ("s3", "app")] {
                if minute < 240 || id == "s2" || id == "s3" {
                    ops.push((0, load(id, minute, &[user, "batch"])));
                }
            }
        }
        sink.commit(&ops).unwrap();
        // Then one of s1's, in its second hour, comes late with it: a
        // dictionary of that hour of its own names it.
        sink.commit(&[(0, load("s1", 65, &["wanted"]))]).unwrap();
        // s2's third hour has a dictionary of an earlier version, whose late
        // rows may have named that of a later hour.
        let old = crate::load::keys::Keys::encode_as_before(&["app", "batch"]);
        sink.db
            .execute(
                "UPDATE load_keys SET body = ?1 WHERE server_id = 's2' AND hour = ?2",
                params![old, H0 + 2 * HOUR_US],
            )
            .unwrap();
        // s3's first hour lost a minute's row (its totals list it).
        sink.db
            .execute(
                "DELETE FROM load WHERE server_id = 's3' AND minute = ?1",
                [H0 + 7 * MINUTE_US],
            )
            .unwrap();
        let matchers = vec![r#"user="wanted""#.to_owned()];
        let scope = crate::load::ask::tests::scope_of(&matchers);
        let ids: Vec<String> = ["s0", "s1", "s2", "s3"].map(String::from).to_vec();
        let by_hour = |h: &ServerHours, id: &str| -> Vec<i64> {
            (0..6).filter(|i| h.holds(id, H0 + i * HOUR_US)).collect()
        };
        let mut except = ServerHours::default();
        except.insert("s0", H0 + 2 * HOUR_US);
        let fold = |strings: bool, statements_from: Micros| {
            let mut given = Vec::new();
            let out = fold_passed(
                &reader,
                &ids,
                (H0, H0 + 5 * HOUR_US),
                statements_from,
                &except,
                strings,
                &|k| scope.may_hold(k),
                |id: &str, h: &HourTotals| {
                    given.push((id.to_owned(), (h.start - H0) / HOUR_US, h.minutes.len()))
                },
            )
            .unwrap();
            (out, given)
        };
        // No statement interval anywhere yet.
        assert!(!fold(true, H0).0.statements);
        // One of s1's, in its third hour (one it passes over).
        let at = H0 + 2 * HOUR_US + 10 * MINUTE_US;
        sink.commit(&[(
            0,
            Op::Statements {
                server_id: "s1".into(),
                at,
                read: crate::load::statements::Read {
                    since_us: at,
                    by_query: vec![(7, Default::default())],
                },
            },
        )])
        .unwrap();
        assert!(fold(true, H0).0.statements);
        assert!(!fold(true, at + 1).0.statements, "before the range");
        for strings in [true, false] {
            let (out, mut given) = fold(strings, H0);
            let PassedOver {
                totals: passed,
                unnamed,
                ..
            } = out;
            if !strings {
                // Without its strings, no dictionary can be asked about a
                // user: every one may hold it.
                assert!(unnamed.is_empty() && passed.is_empty() && given.is_empty());
                continue;
            }
            // s0: not its first hour (it has the user), nor its third (held
            // open, say); s1: not its second (the late row); s2: only its
            // fourth (after the earlier version's); s3: its first is not
            // passed whole (a minute of its totals is not stored). Not the
            // last hour of any (no minute stored after it: not settled).
            assert_eq!(by_hour(&unnamed, "s0"), [1]);
            assert_eq!(by_hour(&unnamed, "s1"), [0, 2]);
            assert_eq!(by_hour(&unnamed, "s2"), [3]);
            assert_eq!(by_hour(&unnamed, "s3"), [0, 1, 2, 3]);
            assert_eq!(by_hour(&passed, "s3"), [1, 2, 3]);
            assert_eq!(by_hour(&passed, "s2"), [3]);
            assert_eq!(passed.len(), unnamed.len() - 1);
            given.sort();
            assert_eq!(given.len(), passed.len());
            assert!(
                given
                    .iter()
                    .all(|(id, h, n)| passed.holds(id, H0 + h * HOUR_US) && *n == 60)
            );
        }
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minutes_of_load_are_read_a_chunk_at_a_time_with_each_hour_s_dictionary() {
        let dir = scratch("load-chunks");
        let (mut sink, mut readers, _, _, _, _) = open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        // Three servers over three hours, each hour a dictionary of its own
        // per server, a user of each server's own in every minute.
        let ids: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
        let mut written = Vec::new();
        let mut ops = Vec::new();
        for minute in 0..180 {
            for (i, id) in ids.iter().enumerate() {
                let start = H0 + minute * MINUTE_US;
                let user = format!("u{i}-{}", minute % 7);
                let m = crate::load::tests::minute_of(start, &["app", &user]);
                written.push((id.clone(), m.clone()));
                let hour = crate::load::hours::HourTotals::holding(start);
                ops.push((
                    0,
                    Op::Load {
                        server_id: id.clone(),
                        minute: m.pack(),
                        hour,
                    },
                ));
            }
        }
        sink.commit(&ops).unwrap();
        let keys: i64 = reader
            .query_row("SELECT count(*) FROM load_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 9, "a dictionary per server and hour");
        let read = |servers: Option<&[String]>, chunk: usize| {
            let rows = Rows::of("load", "minute", servers, H0, H0 + 3 * HOUR_US);
            let mut out = Vec::new();
            each_parsed(&reader, rows, MinuteLoad::parse, chunk, |id, _, m| {
                out.push((id.to_owned(), m))
            })
            .unwrap();
            by_key(&mut out);
            out
        };
        let mut expected = written.clone();
        by_key(&mut expected);
        // By time (every server) and by server (a few), chunks that end on
        // and off an hour, and one chunk for all.
        for chunk in [1, 2, 7, 180, 4096] {
            assert_eq!(read(None, chunk), expected, "every server, {chunk} a chunk");
            assert_eq!(
                read(Some(&ids), chunk),
                expected,
                "by server, {chunk} a chunk"
            );
        }
        // Without their 10 s buckets: the same minutes.
        let mut coarse = Vec::new();
        each_load(
            &reader,
            None,
            H0,
            H0 + 3 * HOUR_US,
            Wanted::Minutes,
            None,
            None,
            |id, m| coarse.push((id.to_owned(), m)),
        )
        .unwrap();
        by_key(&mut coarse);
        assert!(expected.iter().all(|(_, m)| !m.fine.is_empty()));
        let without: Vec<_> = expected
            .iter()
            .map(|(id, m)| {
                let coarse = m.coarse.clone();
                let fine = Vec::new();
                (id.clone(), MinuteLoad { coarse, fine })
            })
            .collect();
        assert_eq!(coarse, without);
        // Churn's read: no tuples, the rest of the minute.
        let mut churn = Vec::new();
        each_load(
            &reader,
            None,
            H0,
            H0 + 3 * HOUR_US,
            Wanted::Churn,
            None,
            None,
            |id, m| churn.push((id.to_owned(), m)),
        )
        .unwrap();
        by_key(&mut churn);
        let without: Vec<_> = without
            .into_iter()
            .map(|(id, mut m)| {
                m.coarse.tuples.clear();
                (id, m)
            })
            .collect();
        assert_eq!(churn, without);
        // A dictionary that is gone: its rows are skipped, the rest read.
        reader
            .execute(
                "DELETE FROM load_keys WHERE server_id = 's1' AND hour = ?1",
                params![H0 + HOUR_US],
            )
            .unwrap();
        let mut expected: Vec<_> = expected
            .into_iter()
            .filter(|(id, m)| {
                id != "s1" || m.coarse.start < H0 + HOUR_US || m.coarse.start >= H0 + 2 * HOUR_US
            })
            .collect();
        by_key(&mut expected);
        assert_eq!(expected.len(), 3 * 180 - 60);
        for chunk in [1, 7, 4096] {
            assert_eq!(read(None, chunk), expected, "{chunk} a chunk");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minutes_come_back_as_stored() {
        let db = in_memory();
        let mut m = Minute::holding(90 * 60_000_000 + 5);
        m.samples = 3;
        m.covered_us = 3_000_000;
        m.values
            .insert(crate::rollup::Metric::Sessions, "active", 7.0);
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
        let rows: Vec<(i64, String, i64)> =
            triples(&db, "SELECT id, server_id, at FROM frames ORDER BY id");
        assert_eq!(rows, [(1, "a".to_owned(), 10), (2, "b".to_owned(), 20)]);
        // A second open leaves them be.
        migrate(&db).unwrap();
        index_the_rest(&db).unwrap();
        let indexed: Vec<(String, i64, i64)> =
            triples(&db, "SELECT server_id, at, id FROM frame_index");
        assert_eq!(indexed, [("a".to_owned(), 10, 1), ("b".to_owned(), 20, 2)]);
        assert_eq!(
            prune(&db, Retention::default(), 20 + 3_600_000_000).unwrap(),
            Pruned::default()
        );
    }

    #[test]
    fn a_frame_written_again_replaces_it_in_the_index_and_a_keyframe_so_replaced_starts_nothing() {
        let (dir, mut sink, reader, unindexed) = written("again", 0..70);
        // Indexed: 0 to 69. Then 65 again, with another query, in memory.
        sink.all = true;
        let mut again = second(65);
        Arc::make_mut(&mut again.sessions[0]).query = "again".into();
        sink.commit(&applied(vec![again])).unwrap();
        let query_at = |second: i64| {
            let state = rebuilt(&reader, &unindexed, "a", second * 1_000_000);
            state.unwrap().sessions[0].query.to_string()
        };
        assert_eq!(query_at(65), "again");
        // And once that is indexed, over the entry it replaces.
        sink.all = true;
        sink.commit(&applied(vec![second(70)])).unwrap();
        assert!(
            unindexed
                .of("a", i64::MAX)
                .iter()
                .all(|p| p.at == 70_000_000)
        );
        assert_eq!(query_at(65), "again");
        assert_eq!(query_at(66), "");
        // The keyframe at 60 written again as a delta (its session leaves,
        // another comes): the state at 62 starts from the keyframe at 0.
        let mut delta = second(60);
        delta.keyframe = false;
        delta.removed = vec![(60, 0)];
        sink.commit(&applied(vec![delta])).unwrap();
        let state = rebuilt(&reader, &unindexed, "a", 62_000_000).unwrap();
        assert_eq!(state.sessions.len(), 1);
        assert_eq!(state.sessions[0].pid, 63);
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_commit_indexes_one_group_of_servers_in_turn() {
        let (dir, mut sink, reader, unindexed) = written("turns", 0..0);
        let names = servers(10 * GROUPS);
        let groups: Vec<usize> = names.iter().map(|n| group_of(n)).collect();
        // Every group has servers, and none has many more than its share.
        let mut sizes = [0; GROUPS];
        groups.iter().for_each(|&g| sizes[g] += 1);
        assert!(sizes.iter().all(|&n| (1..=30).contains(&n)), "{sizes:?}");
        let frames = each(&names, 0);
        // The first commit (the turn of group 0) writes the frames, which
        // are indexed from the next on, a group a commit.
        sink.commit(&applied(frames)).unwrap();
        let indexed = || -> i64 {
            reader
                .query_row("SELECT count(*) FROM frame_index", [], |r| r.get(0))
                .unwrap()
        };
        let kept = || -> i64 {
            reader
                .query_row(
                    "SELECT coalesce(max(value), 0) FROM kept WHERE name = 'frames_indexed_to'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!((indexed(), kept()), (0, 0), "a commit's frames wait");
        for turn in 1..GROUPS {
            sink.commit(&[]).unwrap();
            let expected = groups.iter().filter(|&&g| (1..=turn).contains(&g)).count();
            assert_eq!(indexed() as usize, expected, "after turn {turn}");
            assert_eq!(unindexed.lock().len(), names.len() - expected);
            // Everything before the first frame left is indexed, and
            // nothing after it is said to be.
            let first_left = names
                .iter()
                .zip(1..)
                .filter(|(n, _)| !(1..=turn).contains(&group_of(n)))
                .map(|(_, id)| id)
                .min()
                .unwrap();
            assert_eq!(kept(), first_left - 1, "after turn {turn}");
        }
        // Group 0's turn again: every frame indexed, and found without the
        // writer's list.
        sink.commit(&[]).unwrap();
        assert_eq!(indexed() as usize, names.len());
        assert!(unindexed.lock().is_empty());
        assert_eq!(kept(), names.len() as i64);
        for n in &names {
            assert!(rebuilt(&reader, &Unindexed::default(), n, i64::MAX).is_some());
        }
        drop((sink, reader));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_commit_that_fails_is_done_again_whole_and_a_stop_mid_turn_loses_nothing() {
        let (dir, mut sink, reader, unindexed) = written("retried", 0..0);
        // Enough servers that some fall in the groups indexed before the stop.
        let names = servers(400);
        let n = names.len() as i64;
        let frames = |s: i64| each(&names, s);
        for s in 0..5 {
            sink.commit(&applied(frames(s))).unwrap();
        }
        // A commit that fails (a full disk, say) changes nothing; the same
        // writes done again go in once.
        sink.db
            .execute_batch(
                "CREATE TEMP TRIGGER full BEFORE INSERT ON frames
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        let ops = applied(frames(5));
        let before = (sink.turn, unindexed.lock().clone());
        assert!(sink.commit(&ops).is_err());
        assert_eq!((sink.turn, unindexed.lock().clone()), before);
        sink.db.execute_batch("DROP TRIGGER full;").unwrap();
        sink.commit(&ops).unwrap();
        let count = |sql: &str| -> i64 { reader.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM frames"), 6 * n);
        let partly = count("SELECT count(*) FROM frame_index");
        assert!(
            0 < partly && partly < 6 * n,
            "{partly} of the frames indexed"
        );
        // Stopped mid-turn: opened again, every frame is found in the file.
        drop((sink, reader));
        let (_sink, mut readers, unindexed, _, _, _) =
            open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        assert!(unindexed.lock().is_empty());
        assert_eq!(
            reader
                .query_row("SELECT count(*) FROM frame_index", [], |r| r
                    .get::<_, i64>(0))
                .unwrap(),
            6 * n
        );
        for n in &names {
            let state = rebuilt(&reader, &unindexed, n, i64::MAX).unwrap();
            assert_eq!(state.sessions[0].pid, 6, "{n}");
        }
        drop(reader);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_an_older_version_wrote_since_is_indexed_again() {
        let (dir, mut sink, reader, _) = written("older", 0..5);
        sink.all = true;
        sink.commit(&applied(vec![second(5)])).unwrap();
        drop((sink, reader));
        // An older version: its index again, every frame pruned, and new
        // frames of another server numbered from 1.
        let db = connect(&dir.join("pgfleet.sqlite")).unwrap();
        db.execute_batch(
            "CREATE UNIQUE INDEX frames_by_server ON frames (server_id, at);
             DELETE FROM frames;",
        )
        .unwrap();
        for s in 0..3 {
            let f = Frame {
                server_id: "b".into(),
                ..second(s)
            };
            db.execute(
                "INSERT INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, ?3, ?4)",
                params![
                    f.server_id,
                    f.at,
                    f.keyframe,
                    compress(&f.encoded(), &mut FrameCoder::off())
                ],
            )
            .unwrap();
        }
        drop(db);
        let (_sink, mut readers, unindexed, _, _, _) =
            open(&dir, 1, DictTraining::default()).unwrap();
        let reader = readers.remove(0);
        assert!(rebuilt(&reader, &unindexed, "a", i64::MAX).is_none());
        let b = rebuilt(&reader, &unindexed, "b", i64::MAX).unwrap();
        assert_eq!(b.sessions[0].pid, 3);
        drop(reader);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_keeps_its_format_and_refuses_a_collector_older_than_it() {
        let dir = scratch("format");
        let path = dir.join("pgfleet.sqlite");
        let stored = || -> i64 {
            Connection::open(&path)
                .unwrap()
                .query_row("SELECT value FROM kept WHERE name = 'format'", [], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        // A new file takes this collector's format.
        drop(open(&dir, 1, DictTraining::default()).unwrap());
        assert_eq!(stored(), FORMAT);
        // A file from before formats were kept takes it too.
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM kept WHERE name = 'format'", [])
            .unwrap();
        drop(open(&dir, 1, DictTraining::default()).unwrap());
        assert_eq!(stored(), FORMAT);
        // A newer collector's file is refused, and left as it was: the
        // schema is not made again (a table it lacks stays lacking).
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "UPDATE kept SET value = {} WHERE name = 'format'; DROP TABLE rollup_hours;",
                FORMAT + 1
            ))
            .unwrap();
        let Err(e) = open(&dir, 1, DictTraining::default()) else {
            panic!("a store of a newer format was opened");
        };
        let message = e.to_string();
        assert!(
            message.contains(&format!("store format {}", FORMAT + 1))
                && message.contains("newer pgfleet-collector")
                && message.contains("--data-dir"),
            "{message}"
        );
        assert_eq!(stored(), FORMAT + 1);
        let tables: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'rollup_hours'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the refused collector made its schema");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn frames_indexed_as_they_were_written_are_indexed_again_once() {
        let db = Connection::open_in_memory().unwrap();
        // The layout before `frame_index`.
        db.execute_batch(
            "CREATE TABLE frames (id INTEGER PRIMARY KEY, server_id TEXT NOT NULL,
                 at INTEGER NOT NULL, keyframe INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE UNIQUE INDEX frames_by_server ON frames (server_id, at);
             INSERT INTO frames (server_id, at, keyframe, body)
                 VALUES ('b', 20, 0, x'02'), ('a', 10, 1, x'01'), ('a', 30, 0, x'03');",
        )
        .unwrap();
        migrate(&db).unwrap();
        db.execute_batch(SCHEMA).unwrap();
        index_the_rest(&db).unwrap();
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM frame_index"), 3);
        assert_eq!(
            count("SELECT count(*) FROM sqlite_master WHERE name = 'frames_by_server'"),
            0
        );
        assert_eq!(
            count("SELECT value FROM kept WHERE name = 'frames_indexed_to'"),
            3
        );
        // Opened again, nothing is indexed again: a frame only the index
        // lacks (which no writer leaves) stays out of it.
        db.execute("DELETE FROM frame_index WHERE id = 2", [])
            .unwrap();
        index_the_rest(&db).unwrap();
        assert_eq!(count("SELECT count(*) FROM frame_index"), 2);
    }

    #[test]
    fn a_delta_is_stored_without_what_its_base_holds_and_rebuilt_whole() {
        use pgfleet_proto::model::SessionState;
        let db = in_memory();
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
        let whole = compress(
            &Frame {
                unchanged: Vec::new(),
                ..frames[1].clone()
            }
            .encoded(),
            &mut FrameCoder::off(),
        );
        for f in &frames {
            let body = compress(&f.encoded(), &mut FrameCoder::off());
            db.execute(
                "INSERT INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, ?3, ?4)",
                params![f.server_id, f.at, f.keyframe, body],
            )
            .unwrap();
        }
        index_the_rest(&db).unwrap();
        let stored: Vec<u8> = db
            .query_row("SELECT body FROM frames WHERE at = 20", [], |r| r.get(0))
            .unwrap();
        assert!(
            stored.len() < whole.len(),
            "{} vs {}",
            stored.len(),
            whole.len()
        );
        let state = rebuilt(&db, &Unindexed::default(), "a", 25).unwrap();
        assert_eq!(state.at, 20);
        assert_eq!(state.sessions.len(), 1);
        assert_eq!(*state.sessions[0], *second);
    }
}

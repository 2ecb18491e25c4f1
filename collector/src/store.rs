//! The embedded history: one SQLite file under `--data-dir` (WAL mode), kept
//! by one writer thread.
//!
//! Each applied snapshot is a frame: a keyframe (every session) or a delta
//! (sessions new or changed, whole, and the keys of those that ended), zstd-
//! compressed protobuf. Each server's minutes are rolled up (see
//! [`Minute`]) for `QueryMetrics`. The agents' last applied sequences and the
//! servers' labels are kept beside them, so that a restarted collector
//! resumes every agent where it stopped and holds the live view it had.
//! Frames and rollups older than their retention are deleted.
//!
//! Writes are batched: the writer commits what has queued, at least every
//! [`COMMIT_EVERY`]. Every write gets a ticket, and the writer says which
//! tickets it has committed ([`Durable`]): ingest acknowledges a batch only
//! once its ticket is committed, so a collector that is killed loses nothing
//! it acknowledged, and the agent resends the rest. A commit that fails is
//! retried, backing off, and nothing after it is acknowledged meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfleet_proto::model::{Session, SessionKey, Snapshot, TargetStatus};
use pgfleet_proto::time::{Micros, now_micros};
use pgfleet_proto::v1;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::aggregator::merge;
use crate::rollup::Minute;

/// The longest a frame waits to be committed.
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// How many writes may queue before ingest waits for the disk.
const QUEUE: usize = 4096;

/// How long history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Frames (keyframes and deltas), from which `GetActivity … at` rebuilds.
    pub frames: Duration,
    /// Per-minute rollups, from which `QueryMetrics` answers.
    pub rollups: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            frames: Duration::from_secs(24 * 3600),
            rollups: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// How often history past its retention is deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

const ZSTD_LEVEL: i32 = 3;

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
        PRIMARY KEY (minute, server_id)) WITHOUT ROWID;";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("history store {}: {message}", path.display())]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

/// One applied snapshot, as stored.
#[derive(Debug, Clone)]
pub struct Frame {
    pub server_id: String,
    pub at: Micros,
    pub keyframe: bool,
    /// The sessions (all of them in a keyframe; the new or changed in a delta).
    pub sessions: Vec<Arc<Session>>,
    /// The keys of the sessions that ended (deltas).
    pub removed: Vec<SessionKey>,
    /// For each session of a delta, the fields its base holds (as the agent
    /// sent it): they are left out of the stored frame, and the merge takes
    /// them back from the sessions before it. Empty: every session whole.
    pub unchanged: Vec<u32>,
}

/// What the writer is asked to do.
pub enum Op {
    /// A batch was applied: its frames and the agent's sequence.
    Applied {
        agent_id: String,
        seq: u64,
        frames: Vec<Frame>,
    },
    /// A server registered (or registered again) with these labels.
    Server {
        server_id: String,
        agent_id: String,
        labels: BTreeMap<String, String>,
        interval_ms: u64,
    },
    /// One server's minute, rolled up.
    Minute { server_id: String, minute: Minute },
    /// Commit everything queued, then answer.
    Flush(oneshot::Sender<()>),
}

/// Which of the store's writes are committed: each write gets a ticket in
/// the order queued, and the writer says the last ticket it committed.
#[derive(Debug, Clone)]
pub struct Durable {
    given: Arc<AtomicU64>,
    committed: watch::Receiver<u64>,
}

impl Durable {
    /// Nothing to wait for: a collector without a store.
    pub fn always() -> Durable {
        let (_, committed) = watch::channel(0);
        Durable {
            given: Arc::new(AtomicU64::new(0)),
            committed,
        }
    }

    /// The ticket of the last write queued so far: once it is committed, so
    /// is everything queued before now.
    pub fn ticket(&self) -> u64 {
        self.given.load(Ordering::SeqCst)
    }

    /// Waits until `ticket` is committed; false if the writer is gone first.
    pub async fn reached(&mut self, ticket: u64) -> bool {
        self.committed.wait_for(|c| *c >= ticket).await.is_ok()
    }
}

/// A server as the store last knew it.
#[derive(Debug)]
pub struct StoredServer {
    pub server_id: String,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    pub interval: Duration,
    /// Its sessions at `at`, rebuilt from the last keyframe and the deltas
    /// after it; None when no frame is kept.
    pub activity: Option<(Micros, Vec<Arc<Session>>)>,
    /// Its last stored minute, when that is recent: a collector stopped and
    /// started within a minute carries on rolling it up.
    pub minute: Option<Minute>,
}

/// What a store held when it was opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The last applied sequence of each agent.
    pub agents: HashMap<String, u64>,
    pub servers: Vec<StoredServer>,
}

/// The handle to the store: send writes, read history.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    retention: Retention,
    writes: mpsc::Sender<(u64, Op)>,
    /// The tickets given and committed.
    durable: Durable,
    /// One connection for reads, opened once (WAL lets it read while the
    /// writer writes).
    reader: Arc<Mutex<Connection>>,
}

fn fail(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.to_owned(),
        message: e.to_string(),
    }
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

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let db = Connection::open(path).map_err(|e| fail(path, e))?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(|e| fail(path, e))?;
    Ok(db)
}

impl Store {
    /// Opens (creating it if need be) `dir/pgfleet.sqlite`, reads back what
    /// it holds, and starts the writer.
    pub fn open(dir: &Path, retention: Retention) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join("pgfleet.sqlite");
        let db = connect(&path)?;
        migrate(&db).map_err(|e| fail(&path, e))?;
        db.execute_batch(SCHEMA).map_err(|e| fail(&path, e))?;
        let loaded = load(&db, &path)?;
        let reader = Arc::new(Mutex::new(connect(&path)?));
        let (writes, queue) = mpsc::channel(QUEUE);
        let (committed, durable) = watch::channel(0);
        let durable = Durable {
            given: Arc::new(AtomicU64::new(0)),
            committed: durable,
        };
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("pgfleet-store".into())
            .spawn(move || write_loop(db, queue, &writer_path, retention, committed))
            .map_err(|e| fail(&path, e))?;
        info!(
            path = %path.display(),
            agents = loaded.agents.len(),
            servers = loaded.servers.len(),
            "History store opened."
        );
        Ok((
            Store {
                path,
                retention,
                writes,
                durable,
                reader,
            },
            loaded,
        ))
    }

    /// Queues a write, waiting while the queue is full (the disk sets the pace).
    ///
    /// Only the aggregator queues writes with a ticket, one at a time, so
    /// tickets reach the writer in order; a flush (from anywhere) takes none.
    pub async fn write(&self, op: Op) {
        let ticket = match op {
            Op::Flush(_) => 0,
            _ => self.durable.given.fetch_add(1, Ordering::SeqCst) + 1,
        };
        if self.writes.send((ticket, op)).await.is_err() {
            error!(path = %self.path.display(), "The history store's writer stopped; history is not being kept.");
        }
    }

    /// Which writes are committed.
    pub fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// How long it keeps history.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Commits everything queued.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.write(Op::Flush(tx)).await;
        let _ = rx.await;
    }

    /// Every stored minute that starts in `[start, end)`, with its server.
    pub async fn minutes(
        &self,
        start: Micros,
        end: Micros,
    ) -> Result<Vec<(String, Minute)>, StoreError> {
        let path = self.path.clone();
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let db = reader.lock().map_err(|_| fail(&path, "a read panicked"))?;
            minutes(&db, start, end).map_err(|e| fail(&path, e))
        })
        .await
        .map_err(|e| fail(&self.path, e))?
    }

    /// `server_id`'s sessions as they were at `at`, with the time of the frame
    /// they come from; None when no frame at or before `at` is kept.
    pub async fn activity_at(
        &self,
        server_id: String,
        at: Micros,
    ) -> Result<Option<(Micros, Vec<Arc<Session>>)>, StoreError> {
        let path = self.path.clone();
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let db = reader.lock().map_err(|_| fail(&path, "a read panicked"))?;
            rebuild(&db, &server_id, at).map_err(|e| fail(&path, e))
        })
        .await
        .map_err(|e| fail(&self.path, e))?
    }
}

fn load(db: &Connection, path: &Path) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let mut agents = db
        .prepare("SELECT agent_id, last_seq FROM agents")
        .map_err(|e| fail(path, e))?;
    let rows = agents
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(|e| fail(path, e))?;
    for row in rows {
        let (id, seq) = row.map_err(|e| fail(path, e))?;
        loaded.agents.insert(id, seq.max(0) as u64);
    }
    let mut servers = db
        .prepare("SELECT server_id, agent_id, labels, interval_ms FROM servers")
        .map_err(|e| fail(path, e))?;
    let rows = servers
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(|e| fail(path, e))?;
    let mut recent: HashMap<String, Minute> = HashMap::new();
    let since = now_micros() - 2 * crate::rollup::MINUTE_US;
    for (server_id, minute) in minutes(db, since, Micros::MAX).map_err(|e| fail(path, e))? {
        recent.insert(server_id, minute);
    }
    for row in rows {
        let (server_id, agent_id, labels, interval_ms) = row.map_err(|e| fail(path, e))?;
        let activity = rebuild(db, &server_id, Micros::MAX).map_err(|e| fail(path, e))?;
        loaded.servers.push(StoredServer {
            minute: recent.remove(&server_id),
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            interval: Duration::from_millis(interval_ms.max(10) as u64),
            server_id,
            agent_id,
            activity,
        });
    }
    Ok(loaded)
}

/// The minutes that start in `[start, end)`, oldest first.
fn minutes(db: &Connection, start: Micros, end: Micros) -> rusqlite::Result<Vec<(String, Minute)>> {
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
    let rollups = db.execute(
        "DELETE FROM rollups WHERE minute < ?1",
        params![now - retention.rollups.as_micros() as i64],
    )?;
    Ok((frames, rollups))
}

/// The sessions at `at`: the last keyframe at or before it, and every delta
/// after that keyframe up to `at`.
fn rebuild(
    db: &Connection,
    server_id: &str,
    at: Micros,
) -> rusqlite::Result<Option<(Micros, Vec<Arc<Session>>)>> {
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
    let rows = frames.query_map(params![server_id, start, at], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut sessions: Vec<Arc<Session>> = Vec::new();
    let mut last = start;
    for row in rows {
        let (frame_at, keyframe, body) = row?;
        let Some(snapshot) = decode(&body) else {
            warn!(server.id = %server_id, at = frame_at, "Skipped a history frame that does not decode.");
            continue;
        };
        match snapshot.delta {
            Some(delta) if !keyframe => {
                // Stored deltas hold whole sessions, so the merge always holds.
                if let Some((merged, _)) = merge(&sessions, snapshot.sessions, &delta) {
                    sessions = merged;
                }
            }
            _ => sessions = crate::aggregator::by_key(snapshot.sessions),
        }
        last = frame_at;
    }
    Ok(Some((last, sessions)))
}

/// A frame as stored: its snapshot's protobuf, zstd-compressed with the
/// writer's compressor (one for the writer's life, not one per frame).
fn encode(frame: &Frame, zstd: &mut Option<zstd::bulk::Compressor<'static>>) -> Vec<u8> {
    let snapshot = Snapshot {
        status: TargetStatus::Up,
        sessions: frame.sessions.clone(),
        delta: (!frame.keyframe).then(|| pgfleet_proto::model::Delta {
            base_sampled_at_us: 0,
            removed: frame.removed.clone(),
            unchanged: Vec::new(),
        }),
        ..Snapshot::down(frame.server_id.clone(), frame.at, String::new())
    };
    let mut wire = v1::Snapshot::from(&snapshot);
    if let Some(v1::snapshot::Activity::Delta(d)) = &mut wire.activity {
        for (w, mask) in d.upserted.iter_mut().zip(&frame.unchanged) {
            pgfleet_proto::compact::strip(w, *mask);
        }
    }
    let bytes = wire.encode_to_vec();
    match zstd {
        Some(z) => z.compress(&bytes).unwrap_or(bytes),
        None => bytes,
    }
}

fn decode(body: &[u8]) -> Option<Snapshot> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let bytes = if body.starts_with(&ZSTD_MAGIC) {
        zstd::stream::decode_all(body).ok()?
    } else {
        body.to_vec()
    };
    let wire = v1::Snapshot::decode(bytes.as_slice()).ok()?;
    Snapshot::try_from(wire).ok()
}

fn write_loop(
    mut db: Connection,
    mut queue: mpsc::Receiver<(u64, Op)>,
    path: &Path,
    retention: Retention,
    committed: watch::Sender<u64>,
) {
    let mut last_prune: Option<std::time::Instant> = None;
    // Without a compressor (it could not allocate), frames are stored as
    // they are; reading tells the two apart.
    let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
    while let Some(first) = queue.blocking_recv() {
        let started = std::time::Instant::now();
        let mut ops = vec![first];
        // What else is queued, up to the commit interval.
        while started.elapsed() < COMMIT_EVERY {
            match queue.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // Until it commits: nothing after a failed commit is acknowledged,
        // so the agents keep what it held and ingest waits for the disk.
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = commit(&mut db, &ops, &mut zstd) {
            error!(path = %path.display(), error = %e, retry_in = ?backoff, "Cannot write the history store; retrying.");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        let last = ops.iter().map(|(ticket, _)| *ticket).max().unwrap_or(0);
        committed.send_if_modified(|c| {
            let newer = last > *c;
            *c = (*c).max(last);
            newer
        });
        for (_, op) in ops {
            if let Op::Flush(done) = op {
                let _ = done.send(());
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            match prune(&db, retention, now_micros()) {
                Ok((0, 0)) => {}
                Ok((frames, rollups)) => {
                    info!(frames, rollups, "Deleted history past its retention.")
                }
                Err(e) => warn!(error = %e, "Cannot delete history past its retention."),
            }
        }
    }
}

fn commit(
    db: &mut Connection,
    ops: &[(u64, Op)],
    zstd: &mut Option<zstd::bulk::Compressor<'static>>,
) -> rusqlite::Result<()> {
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
        for (_, op) in ops {
            match op {
                Op::Applied {
                    agent_id,
                    seq,
                    frames,
                } => {
                    for f in frames {
                        frame.execute(params![f.server_id, f.at, f.keyframe, encode(f, zstd)])?;
                    }
                    agent.execute(params![agent_id, *seq as i64])?;
                }
                Op::Server {
                    server_id,
                    agent_id,
                    labels,
                    interval_ms,
                } => {
                    let labels = serde_json::to_string(labels).unwrap_or_default();
                    server.execute(params![server_id, agent_id, labels, *interval_ms as i64])?;
                }
                Op::Minute { server_id, minute } => {
                    rollup.execute(params![minute.start, server_id, minute.encode()])?;
                }
                Op::Flush(_) => {}
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            frames: Duration::from_secs(3600),
            rollups: Duration::from_secs(2 * 3600),
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
        let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
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
            },
            Frame {
                server_id: "a".into(),
                at: 20,
                keyframe: false,
                sessions: vec![second.clone()],
                removed: Vec::new(),
                unchanged: vec![mask],
            },
        ];
        let whole = encode(
            &Frame {
                unchanged: Vec::new(),
                ..frames[1].clone()
            },
            &mut zstd,
        );
        for f in &frames {
            let body = encode(f, &mut zstd);
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
        let (at, sessions) = rebuild(&db, "a", 25).unwrap().unwrap();
        assert_eq!(at, 20);
        assert_eq!(sessions.len(), 1);
        assert_eq!(*sessions[0], *second);
    }
}

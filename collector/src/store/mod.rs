//! The history: keyframes and deltas of every server's sessions, per-minute
//! rollups, and where each agent stopped, kept by one writer thread.
//!
//! Two places can hold it, with one model:
//! - **SQLite** (the default): one file under `--data-dir`, WAL mode; see
//!   [`sqlite`].
//! - **PostgreSQL** (`--store postgres://…`): tables partitioned by day,
//!   written with COPY, kept by dropping whole days; several collectors can
//!   share it, each answering for the agents of the others; see [`postgres`].
//!
//! Each applied snapshot is a frame: a keyframe (every session) or a delta
//! (sessions new or changed, and the keys of those that ended), zstd-
//! compressed protobuf. Each server's minutes are rolled up (see [`Minute`])
//! for `QueryMetrics`. The agents' last applied sequences and the servers'
//! labels are kept beside them, so that a restarted collector resumes every
//! agent where it stopped and holds the live view it had.
//!
//! Writes are batched: the writer gathers what comes for [`COMMIT_EVERY`]
//! (a flush at once), then commits it in one transaction. Each commit costs
//! something of its own (the transaction, and pages that every commit
//! writes again, such as the ends of tables and the agents' sequences), so
//! gathering for the whole interval, rather than committing whenever the
//! queue ran dry, saves the collector CPU on every batch. Query texts wait in
//! memory too, where reads find them ([`Store::texts`]): DB load is counted in
//! memory, and a query's load must not show before its text can be read.
//! Every write gets a ticket, and the writer says which
//! tickets it has committed ([`Durable`]): ingest acknowledges a batch only
//! once its ticket is committed, so a collector that is killed loses nothing
//! it acknowledged, and the agent resends the rest. A commit that fails is
//! retried, backing off, and nothing after it is acknowledged meanwhile.

mod frame;
mod frame_dict;
mod hours;
pub mod postgres;
mod reads;
pub mod sqlite;

pub use frame::{Encoded, Frame, Rebuilt, bytes as frame_bytes};
use frame::{compress, replay};
pub use frame_dict::DictTraining;
use reads::Reading;
pub use reads::{ReadCounts, ReadFigures};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgfleet_proto::time::{Micros, now_micros};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::load::count::Closed;
use crate::load::dictionaries::Dictionaries;
use crate::load::hours::{HourTotals, PassedOver, ServerHours};
use crate::load::statements::Read;
use crate::load::{MinuteLoad, PackedMinute};
use crate::rollup::Minute;

/// The stored rollup `body` of `server_id`'s minute (or hour) at `start`;
/// one that does not decode is skipped, and said.
fn rollup(server_id: &str, start: Micros, body: &[u8]) -> Option<Minute> {
    let minute = Minute::decode(start, body);
    if minute.is_none() {
        warn!(server.id = %server_id, minute = start, "Skipped a rollup that does not decode.");
    }
    minute
}

/// How many servers make a read of a time range read it whole, keeping
/// theirs, rather than seek each server's rows.
const MANY_SERVERS: usize = 64;

/// How long a commit gathers writes: the longest a frame waits to be committed.
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// How long the writer sleeps while it gathers writes for a commit and none
/// is queued.
const GATHER_STEP: Duration = Duration::from_millis(5);

/// How many writes may queue before ingest waits for the disk.
const QUEUE: usize = 4096;

/// How often history past its retention is deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The layout of what this collector writes to its store. Raise it with a
/// change that writes what a collector of an earlier version cannot read
/// (rows it would skip, a table it does not know); such a change must still
/// read what earlier versions write, and only add to the schema, so that
/// an older collector sharing the store may go on writing. A store keeps
/// the highest of the collectors that opened it. A collector refuses a SQLite
/// store of a higher format than its own (no other collector writes it, so
/// it was opened by a newer version); one sharing a PostgreSQL store with
/// a newer collector says so as it opens the store and while it runs, and
/// goes on, as what it writes the newer one reads ([`newer_format`]).
pub const FORMAT: i64 = 1;

/// What a collector of [`FORMAT`] says of a store of format `found`:
/// shared with a newer collector, or written by one.
fn newer_format(found: i64, shared: bool) -> String {
    if shared {
        format!(
            "a newer pgfleet-collector shares this store (store format {found}; this one reads formats up to {FORMAT}): this one skips or misreads what that one writes, so its answers have gaps; upgrade this collector to the newest one's version"
        )
    } else {
        format!(
            "a newer pgfleet-collector has written this store (store format {found}; this one reads formats up to {FORMAT}), and this one would misread it: run that version or a later one, or give --data-dir a new directory (which starts with no history)"
        )
    }
}

/// Says that the shared store at `place` is of format `found`, newer than
/// this collector's: on `/metrics` (through `reads`) and in the log. As the
/// store opens, and as the writer finds it raised.
fn say_newer_format(reads: &ReadCounts, place: &str, found: i64) {
    reads.newer_format(found.unsigned_abs());
    error!(store = %place, "{}.", newer_format(found, true));
}

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

/// Where the history is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `pgfleet.sqlite` in the data directory.
    Sqlite,
    /// A PostgreSQL database, by its URL (`postgres://…`).
    Postgres(String),
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("history store {place}: {message}")]
pub struct StoreError {
    place: String,
    message: String,
}

impl StoreError {
    fn new(place: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            place: place.to_owned(),
            message: e.to_string(),
        }
    }
}

/// What the writer is asked to do.
pub enum Op {
    /// A batch was applied: its frames and the agent's sequence.
    Applied {
        agent_id: String,
        seq: u64,
        frames: Vec<Encoded>,
    },
    /// A server registered (or registered again) with these labels.
    Server {
        server_id: String,
        agent_id: String,
        labels: BTreeMap<String, String>,
        interval_ms: u64,
    },
    /// The agent's stream to this collector ended.
    Disconnected { server_ids: Vec<String> },
    /// One server's minute, rolled up.
    Minute { server_id: String, minute: Minute },
    /// One server's load over a minute (packed while it waits), and its
    /// hour's totals with it.
    Load {
        server_id: String,
        minute: PackedMinute,
        hour: HourTotals,
    },
    /// A server's pg_stat_statements increments over the interval that
    /// starts at `at`.
    Statements {
        server_id: String,
        at: Micros,
        read: Read,
    },
    /// Query texts by fingerprint, kept once each.
    Texts(Vec<(u64, String)>),
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

/// A server that another collector streams, as a shared store lists it.
#[derive(Debug)]
pub struct Elsewhere {
    /// Its identity.
    pub server_id: String,
    /// The agent that streams it.
    pub agent_id: String,
    /// Its labels, as registered.
    pub labels: BTreeMap<String, String>,
    /// Its agent's sampling interval.
    pub interval: Duration,
    /// The collector that streams it.
    pub collector: Arc<str>,
    /// Whether its agent is connected to that collector.
    pub connected: bool,
}

/// A server as the store last knew it.
#[derive(Debug)]
pub struct StoredServer {
    pub server_id: String,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    pub interval: Duration,
    /// Its state, rebuilt from the last keyframe and the deltas after it;
    /// None when no frame is kept.
    pub activity: Option<Rebuilt>,
    /// Its last stored minute, when that is recent: a collector stopped and
    /// started within a minute carries on rolling it up.
    pub minute: Option<Minute>,
    /// Its load of the minute, hour and statements interval that were open
    /// when it was stored last, for the same.
    pub load: Vec<Closed>,
}

/// What a store held when it was opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The last applied sequence of each agent.
    pub agents: HashMap<String, u64>,
    pub servers: Vec<StoredServer>,
}

/// Where a shared store says an agent stopped: its last sequence stored by
/// any collector, and each of its servers as stored then.
#[derive(Debug, Default)]
pub struct Resume {
    pub last_seq: u64,
    pub servers: Vec<StoredServer>,
}

/// What the writer does, for each kind of store.
trait Sink: Send + 'static {
    /// Commits `ops` in one transaction.
    fn commit(&mut self, ops: &[(u64, Op)]) -> Result<(), String>;
    /// Deletes history past `retention` at `now`, every [`PRUNE_EVERY`]:
    /// what went. A store may leave some or all of it to
    /// [`Sink::prune_step`].
    fn prune(&mut self, retention: Retention, now: Micros) -> Result<Pruned, String>;
    /// A share of what [`Sink::prune`] left, after each commit, so that no
    /// commit waits behind all of it: what went, and whether nothing is
    /// left.
    fn prune_step(&mut self) -> Result<(Pruned, bool), String> {
        Ok((Pruned::default(), true))
    }
    /// Builds a share of the hours of rollups due at `now`, after each
    /// commit, for a store that keeps them: whether it built any.
    fn roll_hours(&mut self, _now: Micros) -> Result<bool, String> {
        Ok(false)
    }
    /// The bytes the store takes on disk, for a store that can say (None:
    /// it cannot, now).
    fn size(&mut self) -> Option<u64> {
        None
    }
    /// The store's format now, for a store that other collectors share
    /// and may raise while this one runs (None: not shared, or it cannot
    /// say now).
    fn format(&mut self) -> Option<i64> {
        None
    }
}

/// Which stored minutes a read wants (QueryMetrics' is made by
/// [`crate::series::Fold::read`]).
#[derive(Debug, Clone, Default)]
pub struct MinutesRead {
    /// The minutes that start in `[start, end)`.
    pub start: Micros,
    pub end: Micros,
    /// Of these servers (None: every server).
    pub servers: Option<Vec<String>>,
    /// Whether a server's whole hour may come as one minute at its start,
    /// its minutes added up: for a reader whose steps each hold whole
    /// hours. A SQLite store reads such hours where it has built them.
    pub hourly: bool,
    /// By hour, servers whose hour comes minute by minute all the same:
    /// those whose minute the live view still holds lies in it, and wins
    /// over a stored copy of it.
    pub by_minute: BTreeMap<Micros, Vec<String>>,
}

impl MinutesRead {
    /// Every server's minutes of `[start, end)`, one by one.
    pub fn range(start: Micros, end: Micros) -> MinutesRead {
        MinutesRead {
            start,
            end,
            ..MinutesRead::default()
        }
    }
}

/// What deleting history past its retention deleted: frames, and rows of the
/// tables kept for the rollups' retention (for a store that drops them a
/// day at a time, partitions).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Pruned {
    frames: usize,
    rollups: usize,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, other: Pruned) {
        self.frames += other.frames;
        self.rollups += other.rollups;
    }
}

/// Where reads go.
#[derive(Clone)]
enum Reader {
    Sqlite(Arc<Readers>, sqlite::Unindexed, frame_dict::FrameDicts),
    Postgres(postgres::Reader),
}

/// How many connections serve a SQLite store's reads.
const SQLITE_READERS: usize = 3;

/// A SQLite store's connections for reads, opened once: a long read (a
/// fleet's day of minutes, seconds at a thousand servers) holds one, and
/// the others answer meanwhile. WAL lets each read while the writer writes.
struct Readers {
    idle: Mutex<Vec<rusqlite::Connection>>,
    free: Arc<tokio::sync::Semaphore>,
}

/// A connection lent to one read: back to the idle ones, and its permit
/// with it, when the read ends on its thread, whether it returns, panics,
/// or its caller has stopped waiting for it.
struct Lent {
    db: Option<rusqlite::Connection>,
    readers: Arc<Readers>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Its statements are reset as they drop, even when a read panics.
        if let Some(db) = self.db.take() {
            // The read's stop goes with it, and so does any transaction it
            // left open (one whose ROLLBACK the stop cut short): the next
            // read starts afresh.
            db.progress_handler(0, None::<fn() -> bool>);
            if !db.is_autocommit()
                && let Err(e) = db.execute_batch("ROLLBACK")
            {
                warn!(error = %e, "A read left its transaction open and it could not be rolled back; the next read on its connection may fail.");
            }
            self.readers.idle().push(db);
        }
    }
}

/// Held by the caller of a read: dropped before the read ended (the client
/// went, or a deadline passed), it stops it. SQLite checks every
/// [`STOP_CHECK_OPS`] steps of its statements, the read's next statement's
/// included, so the read gives its connection and its thread back at once,
/// not when it would have ended: a fleet's day of load takes tens of seconds,
/// and a page reloaded thrice would have held all three connections for that
/// long. The check is the read's own, set when its connection is lent and
/// taken off when it comes back, so no other read is stopped.
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How many steps of SQLite's machine a read runs between checks of whether
/// its caller has gone: about a microsecond, a few rows of a scan.
const STOP_CHECK_OPS: i32 = 100;

impl Readers {
    fn new(connections: Vec<rusqlite::Connection>) -> Arc<Readers> {
        Arc::new(Readers {
            free: Arc::new(tokio::sync::Semaphore::new(connections.len())),
            idle: Mutex::new(connections),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        // Nothing panics while it is held.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The handle to the store: send writes, read history.
#[derive(Clone)]
pub struct Store {
    /// The file or database, for messages.
    place: String,
    retention: Retention,
    writes: mpsc::Sender<(u64, Op)>,
    /// The tickets given and committed.
    durable: Durable,
    /// Query texts queued and not yet committed, by fingerprint.
    texts: Pending,
    reader: Reader,
    /// Its reads under way and given up (see [`ReadCounts`]).
    reads: Arc<ReadCounts>,
}

/// Query texts on their way to the store, by fingerprint: put in when
/// queued, taken out once committed (or once the writer refused them).
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<HashMap<u64, String>>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the texts of `op`, when it carries any, until [`Pending::done`].
    fn put(&self, op: &Op) {
        if let Op::Texts(texts) = op
            && !texts.is_empty()
        {
            let mut pending = self.lock();
            for (f, text) in texts {
                pending.insert(*f, text.clone());
            }
        }
    }

    /// Lets go of the texts of `op`, when it carries any.
    fn done(&self, op: &Op) {
        if let Op::Texts(texts) = op
            && !texts.is_empty()
        {
            let mut pending = self.lock();
            for (f, _) in texts {
                pending.remove(f);
            }
        }
    }
}

impl Store {
    /// Opens the history `config` names (the SQLite file under `data_dir`,
    /// or a PostgreSQL database), reads back what it holds, and starts the
    /// writer. `collector_id` names this collector in a shared store.
    pub async fn open(
        config: &StoreConfig,
        data_dir: &Path,
        retention: Retention,
        collector_id: &str,
        dictionaries: DictTraining,
    ) -> Result<(Store, Loaded), StoreError> {
        match config {
            StoreConfig::Sqlite => Self::open_sqlite(data_dir, retention, dictionaries),
            StoreConfig::Postgres(url) => {
                postgres::open(url, retention, collector_id.to_owned(), dictionaries).await
            }
        }
    }

    /// Opens (creating it if need be) `dir/pgfleet.sqlite`.
    pub fn open_sqlite(
        dir: &Path,
        retention: Retention,
        dictionaries: DictTraining,
    ) -> Result<(Store, Loaded), StoreError> {
        let (sink, readers, unindexed, dicts, loaded, place) =
            sqlite::open(dir, SQLITE_READERS, dictionaries)?;
        let store = Self::start(
            sink,
            Reader::Sqlite(Readers::new(readers), unindexed, dicts),
            place,
            retention,
        )?;
        Ok((store, loaded))
    }

    fn start(
        sink: impl Sink,
        reader: Reader,
        place: String,
        retention: Retention,
    ) -> Result<Store, StoreError> {
        let (writes, queue) = mpsc::channel(QUEUE);
        let (committed, durable) = watch::channel(0);
        let durable = Durable {
            given: Arc::new(AtomicU64::new(0)),
            committed: durable,
        };
        let writer_place = place.clone();
        let texts = Pending::default();
        let written = texts.clone();
        let reads: Arc<ReadCounts> = Arc::default();
        let counts = reads.clone();
        std::thread::Builder::new()
            .name("pgfleet-store".into())
            .spawn(move || {
                write_loop(
                    sink,
                    queue,
                    &writer_place,
                    retention,
                    committed,
                    written,
                    &counts,
                )
            })
            .map_err(|e| StoreError::new(&place, e))?;
        Ok(Store {
            place,
            retention,
            writes,
            durable,
            texts,
            reader,
            reads,
        })
    }

    /// Queues a write, waiting while the queue is full (the disk sets the
    /// pace); returns how long it waited for room (zero when there was).
    ///
    /// Only the aggregator queues writes with a ticket, one at a time, so
    /// tickets reach the writer in order; a flush (from anywhere) takes none.
    pub async fn write(&self, op: Op) -> Duration {
        let ticket = match op {
            Op::Flush(_) => 0,
            _ => self.durable.given.fetch_add(1, Ordering::SeqCst) + 1,
        };
        self.texts.put(&op);
        if let Ok(permit) = self.writes.try_reserve() {
            permit.send((ticket, op));
            return Duration::ZERO;
        }
        // Full (or the writer is gone, which the send says at once).
        let started = Instant::now();
        if let Err(refused) = self.writes.send((ticket, op)).await {
            self.texts.done(&refused.0.1);
            error!(store = %self.place, "The history store's writer stopped; history is not being kept.");
        }
        started.elapsed()
    }

    /// Queues a write only while at least half the queue is free, and gives
    /// it back otherwise: for writes that may wait (a minute's load, closed
    /// by every server at once) and should not take the room that the
    /// frames of the batches after them need.
    pub fn try_write(&self, op: Op) -> Option<Op> {
        if self.writes.capacity() <= QUEUE / 2 {
            return Some(op);
        }
        let Ok(permit) = self.writes.try_reserve() else {
            return Some(op);
        };
        let ticket = self.durable.given.fetch_add(1, Ordering::SeqCst) + 1;
        self.texts.put(&op);
        permit.send((ticket, op));
        None
    }

    /// Which writes are committed.
    pub fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// How long it keeps history.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The hours of rollups built, `[from, to)`: None before any, and for
    /// a PostgreSQL store, which reads minutes only.
    pub async fn hours_built(&self) -> Result<Option<(Micros, Micros)>, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, ..) => self.blocking(hours::built, db.clone()).await,
                Reader::Postgres(_) => Ok(None),
            }
        })
        .await
    }

    /// Whether other collectors may write it too (a PostgreSQL store).
    pub fn shared(&self) -> bool {
        matches!(self.reader, Reader::Postgres(_))
    }

    /// Commits everything queued.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.write(Op::Flush(tx)).await;
        let _ = rx.await;
    }

    /// Hands `f` every stored minute that `read` wants, with its server,
    /// by start and then server, as it is read (a fleet's day of them is
    /// never held at once): what `f` made of `state`.
    pub async fn fold_minutes<S: Send + 'static>(
        &self,
        read: MinutesRead,
        state: S,
        f: fn(&mut S, &str, Minute),
    ) -> Result<S, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, ..) => {
                    let db = db.clone();
                    self.blocking(
                        move |db: &rusqlite::Connection| {
                            let mut state = state;
                            sqlite::each_minute(db, &read, |server_id, m| {
                                f(&mut state, server_id, m)
                            })?;
                            Ok(state)
                        },
                        db,
                    )
                    .await
                }
                Reader::Postgres(pg) => pg
                    .fold_minutes(read.start, read.end, read.servers, state, f)
                    .await
                    .map_err(|e| StoreError::new(&self.place, e)),
            }
        })
        .await
    }

    /// Folds the minutes of load that start in `[start, end)`, of `servers`
    /// (None: every server), into `acc` as they are read: a fleet's day is
    /// 1.44 million minutes of a thousand servers, never held at once.
    /// Each minute has what `wanted` reads of it (a minute without its 10 s
    /// buckets decodes in some two thirds of the time). The hours of `skip`
    /// are passed over. With `by_hour`, a SQLite store hands each whole hour
    /// it has added up as one minute at the hour's start, but the hours of
    /// `by_hour`, whose minutes it hands (see `sqlite::each_load`); a
    /// PostgreSQL store hands minutes.
    #[allow(clippy::too_many_arguments)]
    pub async fn fold_load<A: Send + 'static>(
        &self,
        servers: Option<Vec<String>>,
        start: Micros,
        end: Micros,
        wanted: crate::load::Wanted,
        skip: Option<ServerHours>,
        by_hour: Option<ServerHours>,
        mut acc: A,
        mut f: impl FnMut(&mut A, &str, MinuteLoad) + Send + 'static,
    ) -> Result<A, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, ..) => {
                    let db = db.clone();
                    let (acc, whole) = self
                        .blocking(
                            move |db: &rusqlite::Connection| {
                                let whole = sqlite::each_load(
                                    db,
                                    servers.as_deref(),
                                    start,
                                    end,
                                    wanted,
                                    skip.as_ref(),
                                    by_hour.as_ref(),
                                    |id, m| f(&mut acc, id, m),
                                )?;
                                Ok((acc, whole))
                            },
                            db,
                        )
                        .await?;
                    self.reads.whole(whole);
                    Ok(acc)
                }
                Reader::Postgres(pg) => {
                    pg.each_load(servers, start, end, wanted, |id, m| {
                        if !skip.as_ref().is_some_and(|s| s.holds(id, m.coarse.start)) {
                            f(&mut acc, id, m)
                        }
                    })
                    .await
                    .map_err(|e| StoreError::new(&self.place, e))?;
                    Ok(acc)
                }
            }
        })
        .await
    }

    /// Folds the hours of `servers` in `[start, end)` (whole hours that
    /// ended) that a question whose filters `may_hold` a dictionary can pass
    /// over into `acc` with `f`, given each one's totals (see
    /// [`crate::load::dictionaries`]): the hours passed over (see
    /// [`PassedOver`]; statement intervals from `statements_from`), none of
    /// `except`. None for a PostgreSQL store, which
    /// reads every minute. The dictionaries' strings are decoded only for
    /// `strings`.
    #[allow(clippy::too_many_arguments)]
    pub async fn fold_passed<A: Send + 'static>(
        &self,
        servers: Vec<String>,
        (start, end): (Micros, Micros),
        statements_from: Micros,
        except: ServerHours,
        strings: bool,
        may_hold: impl Fn(&crate::load::keys::Keys) -> bool + Send + 'static,
        mut acc: A,
        mut f: impl FnMut(&mut A, &str, &HourTotals) + Send + 'static,
    ) -> Result<(A, Option<PassedOver>), StoreError> {
        let (acc, hours) = self
            .counted(async {
                match &self.reader {
                    Reader::Sqlite(db, ..) => {
                        self.blocking(
                            move |db: &rusqlite::Connection| {
                                let hours = sqlite::fold_passed(
                                    db,
                                    &servers,
                                    (start, end),
                                    statements_from,
                                    &except,
                                    strings,
                                    &may_hold,
                                    |id, h| f(&mut acc, id, h),
                                )?;
                                Ok((acc, Some(hours)))
                            },
                            db.clone(),
                        )
                        .await
                    }
                    Reader::Postgres(_) => Ok((acc, None)),
                }
            })
            .await?;
        if let Some(hours) = &hours {
            self.reads.passed(hours.totals.len());
        }
        Ok((acc, hours))
    }

    /// Folds the hours of load totals that start in `[start, end)`, of
    /// `servers` (None: every server), into `acc` as they are read: a
    /// fleet's day is 24,000 of them, never held at once.
    pub async fn fold_hours<A: Send + 'static>(
        &self,
        servers: Option<Vec<String>>,
        start: Micros,
        end: Micros,
        mut acc: A,
        mut f: impl FnMut(&mut A, &str, &HourTotals) + Send + 'static,
    ) -> Result<A, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, ..) => {
                    let db = db.clone();
                    self.blocking(
                        move |db: &rusqlite::Connection| {
                            sqlite::each_hour(db, servers.as_deref(), start, end, |id, h| {
                                f(&mut acc, id, h)
                            })?;
                            Ok(acc)
                        },
                        db,
                    )
                    .await
                }
                Reader::Postgres(pg) => {
                    pg.each_hour(servers, start, end, |id, h| f(&mut acc, id, h))
                        .await
                        .map_err(|e| StoreError::new(&self.place, e))?;
                    Ok(acc)
                }
            }
        })
        .await
    }

    /// Folds the statement reads taken in `[start, end)`, of `servers`
    /// (None: every server), into `acc` as they are read, but those in the
    /// hours of `skip`. With `by_hour`, a SQLite store hands the whole
    /// hours added up as one read each at the hour's start, but those of
    /// `by_hour` (see `sqlite::each_statements`).
    #[allow(clippy::too_many_arguments)]
    pub async fn fold_statements<A: Send + 'static>(
        &self,
        servers: Option<Vec<String>>,
        start: Micros,
        end: Micros,
        skip: Option<ServerHours>,
        by_hour: Option<ServerHours>,
        mut acc: A,
        mut f: impl FnMut(&mut A, &str, Micros, Read) + Send + 'static,
    ) -> Result<A, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, ..) => {
                    let db = db.clone();
                    let (acc, whole) = self
                        .blocking(
                            move |db: &rusqlite::Connection| {
                                let whole = sqlite::each_statements(
                                    db,
                                    servers.as_deref(),
                                    start,
                                    end,
                                    skip.as_ref(),
                                    by_hour.as_ref(),
                                    |id, at, r| f(&mut acc, id, at, r),
                                )?;
                                Ok((acc, whole))
                            },
                            db,
                        )
                        .await?;
                    self.reads.statements_whole(whole);
                    Ok(acc)
                }
                Reader::Postgres(pg) => {
                    pg.each_statements(servers, start, end, |id, at, r| {
                        if !skip.as_ref().is_some_and(|s| s.holds(id, at)) {
                            f(&mut acc, id, at, r)
                        }
                    })
                    .await
                    .map_err(|e| StoreError::new(&self.place, e))?;
                    Ok(acc)
                }
            }
        })
        .await
    }

    /// The texts of these fingerprints, where known: those on their way to
    /// the store first (looked at before the store, so that a text the
    /// writer commits meanwhile is found in the one or the other).
    pub async fn texts(&self, fingerprints: Vec<u64>) -> Result<HashMap<u64, String>, StoreError> {
        let mut found = HashMap::new();
        let fingerprints: Vec<u64> = {
            let pending = self.texts.lock();
            fingerprints
                .into_iter()
                .filter(|f| match pending.get(f) {
                    Some(text) => {
                        found.insert(*f, text.clone());
                        false
                    }
                    None => true,
                })
                .collect()
        };
        if fingerprints.is_empty() {
            return Ok(found);
        }
        let mut stored = self.stored_texts(fingerprints).await?;
        stored.extend(found);
        Ok(stored)
    }

    async fn stored_texts(
        &self,
        fingerprints: Vec<u64>,
    ) -> Result<HashMap<u64, String>, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, ..) => {
                    let db = db.clone();
                    self.blocking(
                        move |db: &rusqlite::Connection| sqlite::texts(db, &fingerprints),
                        db,
                    )
                    .await
                }
                Reader::Postgres(pg) => pg
                    .texts(fingerprints)
                    .await
                    .map_err(|e| StoreError::new(&self.place, e)),
            }
        })
        .await
    }

    /// `server_id` as it was at `at`, rebuilt from the frame at or before
    /// it; None when no frame at or before `at` is kept.
    pub async fn activity_at(
        &self,
        server_id: String,
        at: Micros,
    ) -> Result<Option<Rebuilt>, StoreError> {
        self.counted(async {
            match &self.reader {
                Reader::Sqlite(db, unindexed, dicts) => {
                    let (db, unindexed, dicts) = (db.clone(), unindexed.clone(), dicts.clone());
                    self.blocking(
                        move |db: &rusqlite::Connection| {
                            sqlite::rebuild(db, &unindexed, &dicts, &server_id, at)
                        },
                        db,
                    )
                    .await
                }
                Reader::Postgres(pg) => pg
                    .rebuild(&server_id, at)
                    .await
                    .map_err(|e| StoreError::new(&self.place, e)),
            }
        })
        .await
    }

    /// Where a shared store says `agent_id` stopped, for an agent that
    /// connects here after streaming to another collector; None for a store
    /// only this collector writes (what it holds in memory is the truth).
    pub async fn resume(
        &self,
        agent_id: &str,
        server_ids: &[String],
    ) -> Result<Option<Resume>, StoreError> {
        match &self.reader {
            Reader::Sqlite(..) => Ok(None),
            Reader::Postgres(pg) => pg
                .resume(agent_id, server_ids)
                .await
                .map(Some)
                .map_err(|e| StoreError::new(&self.place, e)),
        }
    }

    /// The servers other collectors stream in a shared store; none in a
    /// store only this collector writes.
    pub(crate) async fn elsewhere(&self) -> Result<Vec<Elsewhere>, StoreError> {
        match &self.reader {
            Reader::Sqlite(..) => Ok(Vec::new()),
            Reader::Postgres(pg) => pg
                .elsewhere()
                .await
                .map_err(|e| StoreError::new(&self.place, e)),
        }
    }

    /// Each server's frames stored since its base, applied to that base:
    /// only the servers with newer frames, and None for a server whose
    /// delta does not apply to its base (it is to be rebuilt whole). What
    /// a collector sharing a store follows the others by; none from a store
    /// only this collector writes.
    pub async fn advance(
        &self,
        bases: Vec<(String, Rebuilt)>,
    ) -> Result<Vec<(String, Option<Rebuilt>)>, StoreError> {
        match &self.reader {
            Reader::Sqlite(..) => Ok(Vec::new()),
            Reader::Postgres(pg) => pg
                .advance(bases)
                .await
                .map_err(|e| StoreError::new(&self.place, e)),
        }
    }

    /// Awaits `read`, counted among the reads under way until it ends, and
    /// as abandoned when its caller stops waiting for it first.
    async fn counted<T>(&self, read: impl Future<Output = T>) -> T {
        let reading = Reading::begin(&self.reads);
        let out = read.await;
        reading.finished();
        out
    }

    /// How its reads go: under way, and given up.
    pub fn reads(&self) -> Arc<ReadCounts> {
        self.reads.clone()
    }

    /// Runs `read` on a thread for blocking work, with a connection of
    /// `readers` once one is free.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
        readers: Arc<Readers>,
    ) -> Result<T, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::new(&self.place, e);
        let permit = readers
            .free
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| fail(&e))?;
        // A permit is a connection idle.
        let Some(db) = readers.idle().pop() else {
            return Err(fail(
                &"no connection to read with was idle, though a permit was free",
            ));
        };
        let gone = Arc::new(AtomicBool::new(false));
        let _abandoned = Abandoned(gone.clone());
        db.progress_handler(STOP_CHECK_OPS, Some(move || gone.load(Ordering::Relaxed)));
        let lent = Lent {
            db: Some(db),
            readers,
            _permit: permit,
        };
        let out = tokio::task::spawn_blocking(move || match &lent.db {
            Some(db) => read(db),
            None => Err(rusqlite::Error::InvalidQuery),
        })
        .await
        .map_err(|e| fail(&e))?;
        out.map_err(|e| fail(&e))
    }
}

/// How often the writer reads how much the store takes on disk, for
/// `/metrics`: after a commit, once this long has passed since the last
/// read (and as it starts, where the store can say without a connection).
const SIZE_EVERY: Duration = Duration::from_secs(10);

fn write_loop(
    mut sink: impl Sink,
    mut queue: mpsc::Receiver<(u64, Op)>,
    place: &str,
    retention: Retention,
    committed: watch::Sender<u64>,
    texts: Pending,
    counts: &ReadCounts,
) {
    let mut last_prune: Option<Instant> = None;
    // What the round under way has deleted, said when it is over (or when
    // the next starts, it left unfinished); and whether a step of it failed
    // (said once a round).
    let mut pruned = Pruned::default();
    let mut step_failed = false;
    let mut hours_failed = false;
    // When the store's size was last read (None: not yet; a store that
    // cannot say before its first commit is asked after it).
    let mut sized = sink.size().map(|bytes| {
        counts.sized(bytes);
        Instant::now()
    });
    while let Some(first) = queue.blocking_recv() {
        let started = Instant::now();
        let mut flush = matches!(first.1, Op::Flush(_));
        let mut ops = vec![first];
        // What comes within the commit interval, in one transaction; a
        // flush commits what has queued at once.
        while started.elapsed() < COMMIT_EVERY && ops.len() < QUEUE {
            match queue.try_recv() {
                Ok(op) => {
                    flush |= matches!(op.1, Op::Flush(_));
                    ops.push(op);
                }
                Err(mpsc::error::TryRecvError::Empty) if !flush => std::thread::sleep(GATHER_STEP),
                Err(_) => break,
            }
        }
        // Until it commits: nothing after a failed commit is acknowledged,
        // so the agents keep what it held and ingest waits for the disk (a
        // full one, say); reads go on. Said once, and once when it is over.
        let mut backoff = Duration::from_millis(100);
        let mut failing_since: Option<Instant> = None;
        while let Err(e) = sink.commit(&ops) {
            if failing_since.is_none() {
                failing_since = Some(Instant::now());
                error!(store = %place, error = %e, "Cannot write the history store: acknowledgements stop (agents keep their batches) and reads go on until it can; retrying with backoff.");
            } else {
                debug!(store = %place, error = %e, retry_in = ?backoff, "The history store still cannot be written.");
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        if let Some(since) = failing_since {
            info!(store = %place, after = ?since.elapsed(), "The history store takes writes again; acknowledgements resume.");
        }
        let last = ops.iter().map(|(ticket, _)| *ticket).max().unwrap_or(0);
        committed.send_if_modified(|c| {
            let newer = last > *c;
            *c = (*c).max(last);
            newer
        });
        for (_, op) in ops {
            texts.done(&op);
            if let Op::Flush(done) = op {
                let _ = done.send(());
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            say_pruned(std::mem::take(&mut pruned), false);
            step_failed = false;
            match sink.prune(retention, now_micros()) {
                Ok(deleted) => pruned = deleted,
                Err(e) => warn!(error = %e, "Cannot delete history past its retention."),
            }
            if let Some(found) = sink.format().filter(|f| *f > FORMAT) {
                say_newer_format(counts, place, found);
            }
        } else {
            match sink.prune_step() {
                Ok((deleted, over)) => {
                    pruned += deleted;
                    if over {
                        say_pruned(std::mem::take(&mut pruned), true);
                    }
                }
                Err(e) if !step_failed => {
                    step_failed = true;
                    warn!(error = %e, "Cannot delete history past its retention; trying again after the next commits.");
                }
                Err(e) => debug!(error = %e, "Still cannot delete history past its retention."),
            }
        }
        let adding = Instant::now();
        let added = sink.roll_hours(now_micros());
        counts.adding(adding.elapsed());
        match added {
            Ok(_) => hours_failed = false,
            Err(e) if !hours_failed => {
                hours_failed = true;
                warn!(error = %e, "Cannot add the rollups of an hour up; metrics by the hour read its minutes meanwhile, and it is tried again after the next commits.");
            }
            Err(e) => debug!(error = %e, "Still cannot add the rollups of an hour up."),
        }
        if sized.is_none_or(|t| t.elapsed() >= SIZE_EVERY) {
            sized = Some(Instant::now());
            if let Some(bytes) = sink.size() {
                counts.sized(bytes);
            }
        }
    }
}

/// Says what a round of deleting history past its retention deleted, if
/// anything; `over`: whether it got through all of it.
fn say_pruned(pruned: Pruned, over: bool) {
    if pruned == Pruned::default() {
        return;
    }
    let Pruned { frames, rollups } = pruned;
    if over {
        info!(frames, rollups, "Deleted history past its retention.");
    } else {
        info!(
            frames,
            rollups,
            "Deleted history past its retention; the next round goes on with what this one left."
        );
    }
}

/// A server's labels as both stores keep them: a JSON object.
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

/// Labels as stored; none when the text is not what [`labels_text`] wrote.
fn stored_labels(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A sampling interval as stored, in milliseconds (at least 10).
fn stored_interval(ms: i64) -> Duration {
    Duration::from_millis(ms.max(10) as u64)
}

/// A closed minute of load as stored, naming its server's dictionary in
/// `keys`: None when it has no samples, or (which only damaged memory would
/// do) its bytes do not read, which is logged.
fn load_row(keys: &mut Dictionaries, server_id: &str, minute: &PackedMinute) -> Option<Vec<u8>> {
    if minute.samples() == 0 {
        return None;
    }
    let body = keys.minute(server_id, minute);
    if body.is_none() {
        error!(server.id = %server_id, minute = minute.start(), "A closed minute of load did not read back; it is not stored.");
    }
    body
}

/// The last of each key, in the order first seen: a batch written as one
/// statement may name a row once only.
fn last_by_key<K: std::hash::Hash + Eq + Clone, V>(
    items: impl IntoIterator<Item = (K, V)>,
) -> Vec<(K, V)> {
    let mut at: HashMap<K, usize> = HashMap::new();
    let mut out: Vec<(K, V)> = Vec::new();
    for (k, v) in items {
        match at.get(&k) {
            Some(&i) => out[i].1 = v,
            None => {
                at.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    out
}

/// A new, empty directory under the system's temporary one, for a test's
/// store, named for `name` and the process.
#[cfg(test)]
pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that says when it begins a commit, and ends it only when let.
    struct Held {
        entered: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl Sink for Held {
        fn commit(&mut self, _: &[(u64, Op)]) -> Result<(), String> {
            let _ = self.entered.send(());
            // Until the test lets it, or is gone.
            let _ = self.go.recv();
            Ok(())
        }

        fn prune(&mut self, _: Retention, _: Micros) -> Result<Pruned, String> {
            Ok(Pruned::default())
        }
    }

    /// A store whose writer says when it begins each commit (the first
    /// receiver), and ends it only when let (the sender), reading `reader`.
    fn held_store(
        reader: rusqlite::Connection,
    ) -> (
        Store,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (entered, commits) = std::sync::mpsc::channel();
        let (go, held) = std::sync::mpsc::channel();
        let store = Store::start(
            Held { entered, go: held },
            Reader::Sqlite(
                Readers::new(vec![reader]),
                Default::default(),
                Default::default(),
            ),
            "test".into(),
            Retention::default(),
        )
        .unwrap();
        (store, commits, go)
    }

    #[tokio::test]
    async fn writes_that_may_wait_are_given_back_once_half_the_queue_is_taken() {
        let (store, commits, go) = held_store(rusqlite::Connection::open_in_memory().unwrap());
        let op = || Op::Texts(Vec::new());
        // The writer takes the first write and holds in its commit.
        store.write(op()).await;
        commits
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer commits");
        let mut taken = 0;
        while store.try_write(op()).is_none() {
            taken += 1;
            assert!(taken <= QUEUE, "never refused");
        }
        assert_eq!(taken, QUEUE / 2, "half the queue stays for the frames");
        // A write that must go still goes.
        store.write(op()).await;
        // The writer is let go: the queue drains, and there is room again.
        drop(go);
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.try_write(op()).is_some() {
            assert!(Instant::now() < deadline, "the queue never drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_write_says_how_long_it_waited_for_room() {
        let (store, commits, go) = held_store(rusqlite::Connection::open_in_memory().unwrap());
        let op = || Op::Texts(Vec::new());
        assert_eq!(store.write(op()).await, Duration::ZERO, "room at once");
        commits
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer commits");
        // The writer holds in its commit while the queue fills.
        while store.writes.capacity() > 0 {
            assert_eq!(store.write(op()).await, Duration::ZERO);
        }
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(go);
        });
        let waited = store.write(op()).await;
        letting_go.join().unwrap();
        assert!(
            waited >= Duration::from_millis(200),
            "waited {waited:?} for a writer held 300 ms"
        );
    }

    #[tokio::test]
    async fn texts_on_their_way_to_the_store_are_read_until_committed() {
        let reader = rusqlite::Connection::open_in_memory().unwrap();
        reader
            .execute_batch(
                "CREATE TABLE queries (fingerprint INTEGER PRIMARY KEY, text TEXT NOT NULL);
                 INSERT INTO queries VALUES (2, 'SELECT stored');",
            )
            .unwrap();
        let (store, commits, go) = held_store(reader);
        store
            .write(Op::Texts(vec![(1, "SELECT queued".into())]))
            .await;
        // The writer holds in the commit of that text.
        commits
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer commits");
        let texts = store.texts(vec![1, 2, 3]).await.unwrap();
        assert_eq!(
            texts,
            HashMap::from([(1, "SELECT queued".into()), (2, "SELECT stored".into())])
        );
        // Committed, it is the store's to answer for.
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.texts.lock().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the committed text stayed pending"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A read stopped at its first minute until told to go on; it says
    /// when it has reached it.
    type Stopped = (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>);

    fn stop_at_first(state: &mut Stopped, _: &str, _: Minute) {
        let _ = state.1.send(());
        let _ = state.0.recv();
    }

    fn count(n: &mut usize, _: &str, _: Minute) {
        *n += 1;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_caller_stopped_waiting_stops_at_its_next_row() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = scratch("abandoned");
        let (store, _) = Store::open_sqlite(
            &dir,
            Retention::default(),
            crate::store::DictTraining::default(),
        )
        .unwrap();
        let now = now_micros();
        let minute_us = crate::rollup::MINUTE_US;
        let first = now - now.rem_euclid(minute_us) - 400 * minute_us;
        for i in 0..400 {
            let minute = Minute {
                start: first + i * minute_us,
                samples: 1,
                ..Default::default()
            };
            let server_id = "a".into();
            store.write(Op::Minute { server_id, minute }).await;
        }
        store.flush().await;
        // A read of 400 rows at 5 ms a row, abandoned at its first.
        let seen = Arc::new(AtomicUsize::new(0));
        let (reached, entered) = std::sync::mpsc::channel();
        let long = tokio::spawn({
            let (store, seen) = (store.clone(), seen.clone());
            async move {
                fn slow(state: &mut Slow, _: &str, _: Minute) {
                    if state.0.fetch_add(1, Ordering::SeqCst) == 0 {
                        let _ = state.1.send(());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                type Slow = (Arc<AtomicUsize>, std::sync::mpsc::Sender<()>);
                store
                    .fold_minutes(MinutesRead::range(0, Micros::MAX), (seen, reached), slow)
                    .await
            }
        });
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the read reaches its first minute");
        long.abort();
        assert!(long.await.unwrap_err().is_cancelled());
        // It stops within a few rows (SQLite checks every STOP_CHECK_OPS
        // steps of its machine), and reads no more.
        let mut last = usize::MAX;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = seen.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
        }
        assert!(
            last < 50,
            "the abandoned read went on for {last} of its 400 rows"
        );
        // Its connection is back, and not interrupted: every connection reads.
        let reads = (0..SQLITE_READERS).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .fold_minutes(MinutesRead::range(0, Micros::MAX), 0, count)
                    .await
            })
        });
        for read in reads.collect::<Vec<_>>() {
            assert_eq!(read.await.unwrap().unwrap(), 400);
        }
        // /metrics counts the one given up, and the three that ended (the
        // writer's time on hours, whatever it was, aside).
        let figures = store.reads().figures();
        assert_eq!(
            figures,
            ReadFigures {
                started: 1 + SQLITE_READERS as u64,
                abandoned: 1,
                hours_adding_us: figures.hours_adding_us,
                bytes: figures.bytes,
                ..ReadFigures::default()
            }
        );
        // And the file's size, as the writer read it when it started: no
        // more than the file and its log hold now (nothing shrinks them
        // here), and at least a page.
        let on_disk = ["pgfleet.sqlite", "pgfleet.sqlite-wal"]
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .iter()
            .sum::<u64>();
        let bytes = figures.bytes.expect("the SQLite store says its size");
        assert!(
            (4096..=on_disk).contains(&bytes),
            "{bytes} bytes said, {on_disk} on disk"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_holds_one_connection_while_the_others_answer() {
        let dir = scratch("readers");
        let (store, _) = Store::open_sqlite(
            &dir,
            Retention::default(),
            crate::store::DictTraining::default(),
        )
        .unwrap();
        let start = now_micros() - now_micros().rem_euclid(crate::rollup::MINUTE_US);
        store
            .write(Op::Minute {
                server_id: "a".into(),
                minute: Minute {
                    start,
                    samples: 1,
                    ..Default::default()
                },
            })
            .await;
        store.flush().await;
        let read = |state, f| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .fold_minutes(MinutesRead::range(0, Micros::MAX), state, f)
                    .await
            })
        };
        let mut held = Vec::new();
        for i in 0..SQLITE_READERS {
            let (go, wait) = std::sync::mpsc::channel();
            let (reached, entered) = std::sync::mpsc::channel();
            held.push((go, read((wait, reached), stop_at_first)));
            entered
                .recv_timeout(Duration::from_secs(10))
                .expect("the long read reaches its minute");
            // While fewer than all are held, another read answers.
            let other = tokio::spawn({
                let store = store.clone();
                async move {
                    store
                        .fold_minutes(MinutesRead::range(0, Micros::MAX), 0, count)
                        .await
                }
            });
            if i + 1 < SQLITE_READERS {
                let n = tokio::time::timeout(Duration::from_secs(10), other)
                    .await
                    .unwrap_or_else(|_| panic!("a read waited behind {} long one(s)", i + 1))
                    .unwrap()
                    .unwrap();
                assert_eq!(n, 1);
            } else {
                // Every connection held: it waits its turn, and then reads.
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(!other.is_finished(), "a read found a connection none had");
                for (go, long) in held.drain(..) {
                    go.send(()).unwrap();
                    long.await.unwrap().unwrap();
                }
                let n = tokio::time::timeout(Duration::from_secs(10), other)
                    .await
                    .expect("the waiting read is answered")
                    .unwrap()
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
        // Reads whose callers stop waiting (a client gone, a deadline
        // passed) give their connection back when they end, more of them
        // than there are connections.
        for _ in 0..=SQLITE_READERS {
            let (go, wait) = std::sync::mpsc::channel();
            let (reached, entered) = std::sync::mpsc::channel();
            let long = read((wait, reached), stop_at_first);
            entered
                .recv_timeout(Duration::from_secs(10))
                .expect("the read reaches its minute");
            long.abort();
            assert!(long.await.unwrap_err().is_cancelled());
            go.send(()).unwrap();
        }
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            store.fold_minutes(MinutesRead::range(0, Micros::MAX), 0, count),
        )
        .await
        .expect("a read after the abandoned ones")
        .expect("a connection to read with");
        assert_eq!(n, 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

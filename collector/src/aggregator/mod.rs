//! The aggregator: one task that owns the live fleet state. Ingest and the
//! follower of a shared store talk to it over a bounded channel (`command`);
//! readers get immutable views (`view`) that it publishes after each round
//! of changes, so a slow reader never holds the writer. `apply` takes each
//! batch of snapshots into the views.

mod apply;
mod census;
mod command;
mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::{debug, info};

pub use census::{ByState, Census, HealthKind, LabelSets, Line, state_at};
pub use command::{AggregatorHandle, Command, Followed, TargetInfo};
pub use view::{DatabaseTotal, FleetView, Health, STALE_AFTER_INTERVALS, ServerView};

use crate::config::DuplicateServerId;
use crate::load::Counter;
use crate::load::count::Closed;
use crate::rollup::{Minute, Rollup};
use crate::store::{Loaded, Op as StoreOp, Rebuilt, Resume, Store, StoredServer};
use apply::sum_databases;

/// How many commands may wait for the aggregator.
const COMMAND_QUEUE: usize = 1024;

/// The most commands the aggregator applies before it publishes a view.
const MAX_COMMANDS_PER_PUBLISH: usize = 1024;

/// How often, at most, the aggregator publishes a view: every 20 ms, and
/// less often the more servers a view holds (see [`publish_every`]).
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// How long a view may wait per server it holds before it is published,
/// and the longest a view waits.
const PUBLISH_PER_SERVER: Duration = Duration::from_micros(20);
const PUBLISH_AT_MOST: Duration = Duration::from_millis(200);

/// How long after the last publish the next view is due, with `servers` in
/// it. Publishing copies the map of every server, about 0.3 µs a server:
/// every 20 ms at 5,000 servers that was 7% of a core. Spaced by the
/// fleet's size, it is about 1.5% whatever the size, and a view is at most
/// 180 ms older (at 10,000 servers) than one published every 20 ms.
pub fn publish_every(servers: usize) -> Duration {
    let servers = u32::try_from(servers).unwrap_or(u32::MAX);
    PUBLISH_PER_SERVER
        .saturating_mul(servers)
        .clamp(PUBLISH_EVERY, PUBLISH_AT_MOST)
}

/// How long the aggregator sleeps between looks at its queue while it
/// gathers commands for a view: the longest a command waits to be applied
/// beyond the round before it.
const GATHER: Duration = Duration::from_millis(5);

/// The share of the time between two publishes that the aggregator spends,
/// at most, building minutes that ended (see [`Aggregator::finish_minutes`]).
const FINISH_SHARE: u32 = 5;

/// How long after the first of them ended the minutes that ended are built
/// by, at an even pace (see [`minutes_due`]); well before the next minute
/// ends.
const FINISH_WITHIN: Duration = Duration::from_secs(40);

/// How many of `waiting` minutes that ended to build in a round that comes
/// `since` after the round before, the first of them having ended `age`
/// ago: as many as builds the last of them [`FINISH_WITHIN`] after the
/// first ended, at an even pace from here; all of them past that; and at
/// least one.
///
/// Every server's minute ends in the same second. Built as fast as the
/// aggregator's share allowed, 10,000 servers' minutes took some 15–20 s,
/// in which the collector (building them, and storing what they hold) and
/// the load generator beside it wanted more than this machine's 2 cores, and
/// the live view fell 3–4 s behind (BENCHMARKS.md, "Collector load").
fn minutes_due(waiting: usize, since: Duration, age: Duration) -> usize {
    let left = FINISH_WITHIN.saturating_sub(age);
    if waiting == 0 || since >= left {
        return waiting;
    }
    let due = (waiting as u128 * since.as_nanos()).div_ceil(left.as_nanos());
    usize::try_from(due).unwrap_or(waiting).clamp(1, waiting)
}

/// How many of the load counters' writes may wait for room in the store's
/// queue, per server (see [`Aggregator::store_later`]): a minute's load and a
/// statements interval each, with room to spare; and how long one may wait,
/// well within the time readers ask the counters for (`MINUTE_REACH`).
const LATER_PER_SERVER: usize = 4;
const LATER_AT_MOST: Duration = Duration::from_secs(30);

struct AgentState {
    /// The live stream, if any.
    conn_id: Option<u64>,
    /// The last sequence applied, and the rest of the stream's counts.
    stream: v1::StreamStats,
    /// The server_ids of its last Hello.
    servers: Vec<String>,
}

/// The single owner of fleet state.
pub struct Aggregator {
    /// What to do when a second live agent claims a server_id.
    duplicates: DuplicateServerId,
    /// The history, when kept.
    store: Option<Store>,
    /// Writes for the store from the commands being handled.
    writes: Vec<StoreOp>,
    /// What the load counters closed, for the store as its queue has room
    /// (see [`Aggregator::store_later`]); in the order closed, each with
    /// when.
    later: VecDeque<(Instant, StoreOp)>,
    /// Whether `later` must be queued whole before the next answers (the
    /// collector is stopping).
    later_now: bool,
    commands: mpsc::Receiver<Command>,
    publish: watch::Sender<Arc<FleetView>>,
    agents: HashMap<String, AgentState>,
    servers: BTreeMap<Arc<str>, Arc<ServerView>>,
    /// Each server's open load buckets (not published: readers read closed
    /// buckets from the store and from `later`, and the view's `load`).
    load: HashMap<Arc<str>, Counter>,
    /// The servers whose counters hold a minute that ended and is not yet
    /// built, in the order they ended (see [`Aggregator::finish_minutes`]).
    ending: VecDeque<Arc<str>>,
    /// When the first of `ending` was put there (None: it is empty).
    ending_since: Option<Instant>,
    /// When [`Aggregator::finish_minutes`] last ran.
    finished: Instant,
    /// Query texts known to be stored, and those to store.
    texts: Texts,
    /// Whether load, churn and statement statistics are kept (`--load`).
    keep_load: bool,
    /// When the last view was published.
    published: tokio::time::Instant,
    /// The census of the servers, brought up to date at each publish.
    census: census::Counting,
    /// How long, in all, it waited for room in the store's queue.
    store_waited: Duration,
}

/// The fingerprints whose texts the store holds (as far as this collector
/// knows), so that each text is written once; bounded, forgetting all when
/// full (a text written again is ignored by the store).
#[derive(Default)]
struct Texts {
    known: std::collections::HashSet<u64>,
    new: Vec<(u64, String)>,
}

/// The most fingerprints [`Texts`] remembers.
const KNOWN_TEXTS: usize = 100_000;

impl Texts {
    fn note(&mut self, fingerprint: u64, text: &str) {
        if fingerprint == 0 || text.is_empty() || self.known.contains(&fingerprint) {
            return;
        }
        if self.known.len() >= KNOWN_TEXTS {
            self.known.clear();
        }
        self.known.insert(fingerprint);
        self.new.push((fingerprint, text.to_owned()));
    }
}

impl Aggregator {
    /// A new aggregator that refuses a second agent of a server, and the
    /// handle to reach it.
    pub fn new() -> (Aggregator, AggregatorHandle) {
        Self::with_policy(DuplicateServerId::Refuse)
    }

    /// A new aggregator with this policy for a server_id claimed twice.
    pub fn with_policy(duplicates: DuplicateServerId) -> (Aggregator, AggregatorHandle) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (publish, view) = watch::channel(Arc::new(FleetView::default()));
        (
            Aggregator {
                duplicates,
                store: None,
                writes: Vec::new(),
                later: VecDeque::new(),
                later_now: false,
                commands: rx,
                publish,
                agents: HashMap::new(),
                servers: BTreeMap::new(),
                load: HashMap::new(),
                ending: VecDeque::new(),
                ending_since: None,
                finished: Instant::now(),
                texts: Texts::default(),
                keep_load: true,
                published: tokio::time::Instant::now(),
                census: census::Counting::default(),
                store_waited: Duration::ZERO,
            },
            AggregatorHandle { commands: tx, view },
        )
    }

    /// Keeps DB load, churn and statement statistics, or not.
    pub fn keeping_load(mut self, keep: bool) -> Self {
        self.keep_load = keep;
        self
    }

    /// Keeps history in `store`, starting from what it held: every agent
    /// resumes after the last sequence stored for it, and every server's view
    /// is what its stored frames rebuild, so that deltas resent after a
    /// restart find their base.
    pub fn with_store(mut self, store: Store, loaded: Loaded) -> Self {
        for (agent_id, last_seq) in loaded.agents {
            let servers = loaded
                .servers
                .iter()
                .filter(|s| s.agent_id == agent_id)
                .map(|s| s.server_id.clone())
                .collect();
            self.agents.insert(
                agent_id,
                AgentState {
                    conn_id: None,
                    stream: v1::StreamStats {
                        last_seq,
                        ..Default::default()
                    },
                    servers,
                },
            );
        }
        for s in loaded.servers {
            let mut view = ServerView {
                agent_id: s.agent_id,
                labels: Arc::new(s.labels),
                ..ServerView::new(&s.server_id, s.interval)
            };
            restore(&mut view, s.activity, s.minute);
            self.load
                .entry(s.server_id.as_str().into())
                .or_default()
                .restore(s.load, now_micros());
            self.servers
                .insert(view.server_id.as_str().into(), Arc::new(view));
        }
        self.publish_view();
        self.store = Some(store);
        self
    }

    /// Runs until every handle is dropped.
    ///
    /// Commands are applied as they come, in gathers [`GATHER`] apart once a
    /// round has begun, and a view is published at most
    /// every [`PUBLISH_EVERY`], and less often for a larger fleet (see
    /// [`publish_every`]): publishing copies the map of every server, so with
    /// thousands of agents one publish per command would cost more than the
    /// commands. Answers wait for the view that shows their change.
    pub async fn run(mut self) {
        let mut replies = Vec::new();
        while let Some(first) = self.commands.recv().await {
            self.handle(first, &mut replies);
            let due = self.published + publish_every(self.servers.len());
            while replies.len() < MAX_COMMANDS_PER_PUBLISH {
                let command = match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let now = tokio::time::Instant::now();
                        if now >= due {
                            break;
                        }
                        // Sleep, then take what came meanwhile: waiting on
                        // the queue would be woken by every command, a
                        // thread woken and switched to thousands of times a
                        // second.
                        tokio::time::sleep_until(due.min(now + GATHER)).await;
                        continue;
                    }
                };
                self.handle(command, &mut replies);
            }
            self.finish_minutes(publish_every(self.servers.len()) / FINISH_SHARE);
            // The history keeps pace: when the disk falls behind, ingest waits
            // (the load counters' writes, only past their bounds).
            if let Some(store) = &self.store {
                for op in self.writes.drain(..) {
                    self.store_waited += store.write(op).await;
                }
                self.store_later().await;
            } else {
                self.writes.clear();
                self.later.clear();
            }
            self.publish_view();
            // Answer only once the change is visible to readers.
            for reply in replies.drain(..) {
                reply.send();
            }
        }
        debug!("Aggregator stopped.");
    }

    /// Publishes the fleet as it is now, with its census brought up to date.
    fn publish_view(&mut self) {
        self.publish.send_replace(Arc::new(FleetView {
            servers: self.servers.clone(),
            census: self.census.refresh(&self.servers),
            store_waited: self.store_waited,
        }));
        self.published = tokio::time::Instant::now();
    }

    fn handle(&mut self, command: Command, replies: &mut Vec<Reply>) {
        match command {
            Command::Register {
                agent_id,
                conn_id,
                targets,
                interval,
                resume,
                reply,
            } => replies.push(Reply::Register(
                reply,
                self.register(agent_id, conn_id, targets, interval, resume),
            )),
            Command::Apply {
                agent_id,
                conn_id,
                seq,
                snapshots,
                frames,
                reply,
            } => replies.push(Reply::Apply(
                reply,
                self.apply_with(&agent_id, conn_id, seq, snapshots, frames),
            )),
            Command::Disconnect { agent_id, conn_id } => self.disconnect(&agent_id, conn_id),
            Command::StoreMinutes { reply } => {
                if self.store.is_some() {
                    for view in self.servers.values() {
                        if view.minute.samples > 0 {
                            self.writes.push(StoreOp::Minute {
                                server_id: view.server_id.clone(),
                                minute: (*view.minute).clone(),
                            });
                        }
                    }
                    // After what they closed before; a minute that ended is
                    // built first, once, so that its hour's totals do not
                    // come after (and overwrite) the open minute's.
                    while let Some(server_id) = self.ending.pop_front() {
                        self.finish_minute(&server_id);
                    }
                    for (server_id, counter) in &self.load {
                        close_later(&mut self.later, server_id, counter.open());
                    }
                    self.later_now = true;
                }
                replies.push(Reply::Done(reply));
            }
            Command::OpenLoad {
                server_ids,
                hours_only,
                reply,
            } => {
                // A minute that ended is built now, once, rather than for
                // this reader and again later; totals alone need no minute
                // built (`Counter::open_hours`), so a fleet-wide reader of
                // them at a minute's end does not build every server's.
                if !hours_only {
                    for server_id in &server_ids {
                        self.finish_minute(server_id);
                    }
                }
                // What was closed but is not yet queued for the store is
                // open still, as far as readers know.
                let mut later = self.closed_later(&server_ids, hours_only);
                let open = server_ids
                    .into_iter()
                    .filter_map(|id| {
                        let counter = self.load.get(id.as_str())?;
                        let open = if hours_only {
                            let hours = counter.open_hours();
                            if hours.is_empty() {
                                return None;
                            }
                            let mut hours: Vec<Closed> = hours
                                .into_iter()
                                .map(|h| Closed::Minute(crate::load::MinuteLoad::default(), h))
                                .collect();
                            // Readers take the first of an hour: the latest.
                            let waiting = later.remove(id.as_str()).unwrap_or_default();
                            hours.extend(waiting.into_iter().rev());
                            hours
                        } else {
                            let mut closed = later.remove(id.as_str()).unwrap_or_default();
                            closed.extend(counter.open());
                            closed
                        };
                        Some((id, open))
                    })
                    .collect();
                let _ = reply.send(open);
            }
            Command::Follow { servers } => self.follow(servers),
        }
    }

    /// Builds the minutes that ended (see [`crate::load::Counter::finish`]),
    /// oldest first, for the store: those due at an even pace over
    /// [`FINISH_WITHIN`] (see [`minutes_due`]), for at most `budget` (and at
    /// least one).
    ///
    /// Every server's minute ends in the same second, and building one takes
    /// 65–225 µs or more. Built at once, at 5,000 servers, they held the
    /// batches of every agent for seconds, and the live view fell 4 s
    /// behind. Readers meanwhile get an ended minute built for them
    /// (`Counter::open`), and a stopping collector builds them all
    /// (`Command::StoreMinutes`).
    fn finish_minutes(&mut self, budget: Duration) {
        let start = Instant::now();
        let since = start.saturating_duration_since(std::mem::replace(&mut self.finished, start));
        let age = self
            .ending_since
            .map_or(Duration::ZERO, |t| start.saturating_duration_since(t));
        for _ in 0..minutes_due(self.ending.len(), since, age) {
            let Some(server_id) = self.ending.pop_front() else {
                break;
            };
            self.finish_minute(&server_id);
            if start.elapsed() >= budget {
                break;
            }
        }
    }

    /// Builds the minute that ended of `server_id`'s counter, if any.
    fn finish_minute(&mut self, server_id: &str) {
        let Some(counter) = self.load.get_mut(server_id) else {
            return;
        };
        let mut closed = Vec::new();
        counter.finish(&mut closed);
        if let Some(view) = self.servers.get_mut(server_id)
            && counter.shown()
        {
            Arc::make_mut(view).load = Arc::new(counter.now().clone());
        }
        if self.store.is_some() {
            close_later(&mut self.later, server_id, closed);
        }
    }

    /// Queues for the store what the load counters closed, as far as its
    /// queue has room beside the frames.
    ///
    /// Every server closes its minute in the same second, each with a
    /// minute of load, its hour's totals and, every few minutes, statement
    /// statistics: thousands of writes at once, more than the queue holds.
    /// Waiting for room would hold up the live view for seconds. They wait
    /// here instead, at most [`LATER_PER_SERVER`] a server, and go as the
    /// writer drains the queue; past that bound, or when the collector is
    /// stopping, they are queued as any write is, waiting for room.
    async fn store_later(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        let bound = LATER_PER_SERVER * self.load.len().max(1);
        while let Some((closed_at, op)) = self.later.pop_front() {
            if self.later_now || self.later.len() >= bound || closed_at.elapsed() >= LATER_AT_MOST {
                self.store_waited += store.write(op).await;
            } else if let Some(op) = store.try_write(op) {
                self.later.push_front((closed_at, op));
                break;
            }
        }
        self.later_now = false;
    }

    /// Moves what waits in [`Aggregator::later`] of `server_ids` to the
    /// writes queued at once: another collector may stream them next, and
    /// its hour's totals must not be overwritten by older ones from here.
    fn store_later_now(&mut self, server_ids: &[String]) {
        if self.later.is_empty() {
            return;
        }
        let (now, wait): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(_, op)| {
                later_server(op).is_some_and(|id| server_ids.iter().any(|s| s == id))
            });
        self.writes.extend(now.into_iter().map(|(_, op)| op));
        self.later = wait;
    }

    /// What waits in [`Aggregator::later`] of `server_ids`, as the counters
    /// closed it, by server, in the order closed; with `hours_only`, only the
    /// hours' totals.
    fn closed_later(&self, server_ids: &[String], hours_only: bool) -> HashMap<&str, Vec<Closed>> {
        let mut by_server: HashMap<&str, Vec<Closed>> = HashMap::new();
        if self.later.is_empty() {
            return by_server;
        }
        let asked: std::collections::HashSet<&str> =
            server_ids.iter().map(String::as_str).collect();
        for (_, op) in &self.later {
            if !later_server(op).is_some_and(|id| asked.contains(id)) {
                continue;
            }
            let (server_id, closed) = match op {
                StoreOp::Load {
                    server_id, hour, ..
                } if hours_only => (
                    server_id,
                    Closed::Minute(crate::load::MinuteLoad::default(), hour.clone()),
                ),
                StoreOp::Load {
                    server_id,
                    minute,
                    hour,
                } => (
                    server_id,
                    // Packed: the reader unpacks it, on its own task.
                    Closed::Packed(minute.clone(), hour.clone()),
                ),
                StoreOp::Statements { .. } if hours_only => continue,
                StoreOp::Statements {
                    server_id,
                    at,
                    read,
                } => (server_id, Closed::Statements(*at, read.clone())),
                _ => continue,
            };
            by_server.entry(server_id).or_default().push(closed);
        }
        by_server
    }

    /// Takes into the view what other collectors stored of the servers they
    /// stream; a server streamed here is left as it is.
    fn follow(&mut self, servers: Vec<Followed>) {
        let now = now_micros();
        for Followed { server: f, state } in servers {
            let current = self.servers.get(f.server_id.as_str());
            if let Some(v) = current
                && v.via.is_none()
                && self
                    .agents
                    .get(&v.agent_id)
                    .is_some_and(|a| a.conn_id.is_some())
            {
                continue;
            }
            let base = match current {
                Some(v) => (**v).clone(),
                None => ServerView::new(&f.server_id, f.interval),
            };
            let labels = keep_or_replace(&base.labels, f.labels);
            let mut view = ServerView {
                agent_id: f.agent_id,
                agent_connected: f.connected,
                via: Some(f.collector),
                labels,
                interval: f.interval,
                ..base
            };
            if let Some((state, whole)) = state
                && (whole || state.at > view.sampled_at_us)
            {
                if !state.databases.is_empty() {
                    sum_databases(Arc::make_mut(&mut view.databases), &state.databases, now);
                }
                take_state(&mut view, state);
            }
            self.servers
                .insert(view.server_id.as_str().into(), Arc::new(view));
        }
    }

    fn register(
        &mut self,
        agent_id: String,
        conn_id: u64,
        targets: Vec<TargetInfo>,
        interval: Duration,
        resume: Option<Resume>,
    ) -> Result<u64, Status> {
        for t in &targets {
            if let Some(existing) = self.servers.get(t.server_id.as_str())
                && existing.agent_id != agent_id
                && existing.agent_connected
            {
                if self.duplicates == DuplicateServerId::Takeover {
                    info!(server.id = %t.server_id, from = %existing.agent_id, to = %agent_id, "Another agent takes the server over (--duplicate-server-id takeover).");
                    continue;
                }
                return Err(Status::already_exists(format!(
                    "server_id {:?} is already streamed by agent {:?}; give this target another server_id, stop the other agent, or start the collector with --duplicate-server-id takeover for a primary/standby pair",
                    t.server_id, existing.agent_id
                )));
            }
        }
        let agent = self.agents.entry(agent_id.clone()).or_insert(AgentState {
            conn_id: None,
            stream: v1::StreamStats::default(),
            servers: Vec::new(),
        });
        if agent.conn_id.is_some() {
            info!(agent.id = %agent_id, "Agent reconnected; its new stream replaces the old one.");
        }
        agent.conn_id = Some(conn_id);
        agent.servers = targets.iter().map(|t| t.server_id.clone()).collect();
        // Another collector sharing the store took the agent further than
        // this one saw: it resumes from there, each server as stored then.
        let mut stored: HashMap<String, StoredServer> = HashMap::new();
        if let Some(resume) = resume
            && resume.last_seq > agent.stream.last_seq
        {
            info!(agent.id = %agent_id, from = agent.stream.last_seq, to = resume.last_seq, "The agent streamed to another collector; resuming where the store says it stopped.");
            agent.stream.last_seq = resume.last_seq;
            stored = resume
                .servers
                .into_iter()
                .map(|s| (s.server_id.clone(), s))
                .collect();
        }
        let resume_after = agent.stream.last_seq;
        for t in targets {
            let mut base = match self.servers.get(t.server_id.as_str()) {
                Some(previous) => (**previous).clone(),
                None => ServerView::new(&t.server_id, interval),
            };
            if let Some(s) = stored.remove(&t.server_id) {
                restore(&mut base, s.activity, s.minute);
                // What the counter it replaces ended goes to the store first.
                self.finish_minute(&t.server_id);
                let mut counter = Counter::default();
                counter.restore(s.load, now_micros());
                self.load.insert(t.server_id.as_str().into(), counter);
            }
            if self.store.is_some() {
                self.writes.push(StoreOp::Server {
                    server_id: t.server_id.clone(),
                    agent_id: agent_id.clone(),
                    labels: t.labels.clone(),
                    interval_ms: interval.as_millis() as u64,
                });
            }
            let labels = keep_or_replace(&base.labels, t.labels);
            let view = ServerView {
                agent_id: agent_id.clone(),
                agent_connected: true,
                via: None,
                labels,
                interval,
                ..base
            };
            self.servers.insert(t.server_id.into(), Arc::new(view));
        }
        Ok(resume_after)
    }

    /// Copies the agent's stream counts into each of its servers' views.
    fn publish_stream(&mut self, agent_id: &str) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        for server_id in &agent.servers {
            if let Some(view) = self.servers.get_mut(server_id.as_str())
                && view.agent_id == agent_id
                && view.stream != agent.stream
            {
                Arc::make_mut(view).stream = agent.stream;
            }
        }
    }

    fn disconnect(&mut self, agent_id: &str, conn_id: u64) {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        if agent.conn_id != Some(conn_id) {
            return;
        }
        agent.conn_id = None;
        for server_id in &agent.servers {
            if let Some(view) = self.servers.get_mut(server_id.as_str())
                && view.agent_id == agent_id
            {
                Arc::make_mut(view).agent_connected = false;
            }
        }
        if self.store.is_some() {
            let server_ids = agent.servers.clone();
            for server_id in &server_ids {
                self.finish_minute(server_id);
            }
            self.store_later_now(&server_ids);
            self.writes.push(StoreOp::Disconnected { server_ids });
        }
    }
}

/// Keeps what a server's counter closed for the store, to go as its queue
/// has room (see [`Aggregator::store_later`]).
fn close_later(later: &mut VecDeque<(Instant, StoreOp)>, server_id: &str, closed: Vec<Closed>) {
    let now = Instant::now();
    later.extend(load_writes(server_id, closed).map(|op| (now, op)));
}

/// The server of a load counter's write.
fn later_server(op: &StoreOp) -> Option<&str> {
    match op {
        StoreOp::Load { server_id, .. } | StoreOp::Statements { server_id, .. } => Some(server_id),
        _ => None,
    }
}

/// What the store keeps of what a server's counter closed.
pub fn load_writes(server_id: &str, closed: Vec<Closed>) -> impl Iterator<Item = StoreOp> + '_ {
    closed.into_iter().map(move |c| match c {
        Closed::Minute(minute, hour) => StoreOp::Load {
            server_id: server_id.to_owned(),
            minute: minute.pack(),
            hour,
        },
        Closed::Packed(minute, hour) => StoreOp::Load {
            server_id: server_id.to_owned(),
            minute,
            hour,
        },
        Closed::Statements(at, read) => StoreOp::Statements {
            server_id: server_id.to_owned(),
            at,
            read,
        },
    })
}

/// Makes `state`, rebuilt from stored frames, the view's last snapshot.
fn take_state(view: &mut ServerView, state: Rebuilt) {
    view.last_seen_us = Some(state.at);
    view.sampled_at_us = state.at;
    view.status = state.status;
    view.rollup = Arc::new(Rollup::of(&state.sessions, state.at));
    view.sessions = Arc::new(state.sessions);
    view.pools = state.pools;
    if state.facts.is_some() {
        view.facts = state.facts;
    }
}

/// The labels a view already shares when they are the same (they seldom
/// change, and views are copied at every snapshot), or the new ones.
fn keep_or_replace(
    held: &Arc<BTreeMap<String, String>>,
    new: BTreeMap<String, String>,
) -> Arc<BTreeMap<String, String>> {
    if **held == new {
        held.clone()
    } else {
        Arc::new(new)
    }
}

/// Takes into `view` what the store held of its server, where that is newer
/// than what the view holds.
fn restore(view: &mut ServerView, activity: Option<Rebuilt>, minute: Option<Minute>) {
    if let Some(state) = activity
        && state.at > view.sampled_at_us
    {
        take_state(view, state);
    }
    if let Some(minute) = minute
        && (view.minute.samples == 0 || minute.start > view.minute.start)
    {
        view.minute = Arc::new(minute);
    }
}

/// An answer held back until the view that contains its change is published.
enum Reply {
    Done(oneshot::Sender<()>),
    Register(oneshot::Sender<Result<u64, Status>>, Result<u64, Status>),
    Apply(
        oneshot::Sender<Result<Vec<String>, Status>>,
        Result<Vec<String>, Status>,
    ),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::Done(tx) => {
                let _ = tx.send(());
            }
            Reply::Register(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Apply(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests;

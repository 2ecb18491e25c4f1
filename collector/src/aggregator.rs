//! The aggregator: one task that owns the live fleet state. Ingest talks to it over
//! a bounded channel; readers get immutable views that it publishes after each
//! round of changes, so a slow reader never holds the writer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pgfleet_proto::compact;
use pgfleet_proto::model::{Delta, Session, SessionKey, Snapshot, TargetStatus, add_counters};
use pgfleet_proto::time::{Micros, now_micros};
use pgfleet_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::{debug, info};

use crate::config::DuplicateServerId;
use crate::rollup::{Minute, Rollup};
use crate::store::{Frame, Loaded, Op as StoreOp, Rebuilt, Resume, Store, StoredServer};

/// How many commands may wait for the aggregator.
const COMMAND_QUEUE: usize = 1024;

/// The most commands the aggregator applies before it publishes a view.
const MAX_COMMANDS_PER_PUBLISH: usize = 1024;

/// How often, at most, the aggregator publishes a view.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// A server is stale after this many sampling intervals without a snapshot.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// One server as the last published view holds it.
#[derive(Debug, Clone)]
pub struct ServerView {
    /// The server's identity.
    pub server_id: String,
    /// The agent that streams it.
    pub agent_id: String,
    /// Whether that agent has a live stream now.
    pub agent_connected: bool,
    /// The collector that streams the server, when another one does and
    /// this one follows it in a shared store; None: streamed here.
    pub via: Option<Arc<str>>,
    /// The agent's labels merged with the target's (shared, as they seldom
    /// change while the view is copied at every snapshot).
    pub labels: Arc<BTreeMap<String, String>>,
    /// The agent's sampling interval.
    pub interval: Duration,
    /// When the collector last received a snapshot (None: never).
    pub last_seen_us: Option<Micros>,
    /// When the last snapshot was sampled.
    pub sampled_at_us: Micros,
    /// Up or down, as the agent last reported.
    pub status: TargetStatus,
    /// The sessions of the last snapshot.
    pub sessions: Arc<Vec<Arc<Session>>>,
    /// The client sessions (not background processes) counted, by state,
    /// waits, blocks and the oldest transaction, once when the snapshot is
    /// applied rather than at every read.
    pub rollup: Arc<Rollup>,
    /// The minute being rolled up; stored when the next one begins.
    pub minute: Arc<Minute>,
    /// The server's facts, from the last snapshot that carried them.
    pub facts: Option<Arc<v1::ServerFacts>>,
    /// The agent's counters for this server, from its last snapshot.
    pub agent: Option<v1::AgentCounters>,
    /// The agent's stream as this collector received it.
    pub stream: v1::StreamStats,
    /// The pools of the last snapshot.
    pub pools: Arc<Pools>,
    /// pg_stat_database counters summed since the collector first saw each
    /// database, by name.
    pub databases: Arc<BTreeMap<String, DatabaseTotal>>,
}

/// Every pool of one server, as last sampled.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// The server's connection slots.
    pub slots: Option<v1::ConnectionSlots>,
    /// Its PgBouncer, when the agent reads one.
    pub pgbouncer: Option<v1::PgBouncerSample>,
    /// The agent's pool, then the pools applications reported.
    pub client_pools: Vec<v1::ClientPool>,
}

/// One database's counters, summed.
#[derive(Debug, Clone)]
pub struct DatabaseTotal {
    /// When the collector first saw the database.
    pub since_us: Micros,
    /// The sums of every increment received.
    pub totals: v1::DatabaseCounters,
}

/// A server's health as readers see it at a given instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Sampled within the last three intervals.
    Up,
    /// The agent reports the server down.
    Down(String),
    /// Nothing heard for three intervals.
    Stale(String),
}

impl ServerView {
    /// A server nothing has been heard of yet.
    pub fn new(server_id: &str, interval: Duration) -> ServerView {
        ServerView {
            server_id: server_id.to_owned(),
            agent_id: String::new(),
            agent_connected: false,
            via: None,
            labels: Arc::default(),
            interval,
            last_seen_us: None,
            sampled_at_us: 0,
            status: TargetStatus::Up,
            sessions: Arc::default(),
            rollup: Arc::default(),
            minute: Arc::default(),
            facts: None,
            agent: None,
            stream: v1::StreamStats::default(),
            pools: Arc::default(),
            databases: Arc::default(),
        }
    }

    /// Whether the server carries every one of `wanted` with its value (the
    /// label filter of the query API).
    pub fn has_labels(&self, wanted: &HashMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The server's health at `now`.
    pub fn health(&self, now: Micros) -> Health {
        let limit = self.interval.as_micros() as i64 * i64::from(STALE_AFTER_INTERVALS);
        let silent = match self.last_seen_us {
            None => Some("no snapshot has arrived yet".to_owned()),
            Some(seen) if now - seen > limit => Some(format!(
                "no snapshot for {}",
                humantime::format_duration(Duration::from_secs(((now - seen) / 1_000_000) as u64))
            )),
            Some(_) => None,
        };
        match (silent, &self.status) {
            (Some(why), _) if !self.agent_connected => {
                Stale(format!("{why}; agent {} is disconnected", self.agent_id))
            }
            (Some(why), _) => Stale(format!("{why} from agent {}", self.agent_id)),
            (None, TargetStatus::Down(reason)) => Down(reason.clone()),
            (None, TargetStatus::Up) => Up,
        }
    }
}
use Health::{Down, Stale, Up};

/// An immutable view of the whole fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every known server, by server_id. The keys are shared, so that
    /// publishing a view copies no string.
    pub servers: BTreeMap<Arc<str>, Arc<ServerView>>,
}

/// A target as an agent's Hello names it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// Its server_id.
    pub server_id: String,
    /// The agent's labels merged with the target's own.
    pub labels: BTreeMap<String, String>,
}

/// What ingest asks of the aggregator.
#[derive(Debug)]
pub enum Command {
    /// A stream said Hello; answers with the last sequence applied for the agent.
    Register {
        /// The agent's identity.
        agent_id: String,
        /// This stream's id, unique in the collector's life.
        conn_id: u64,
        /// The agent's targets.
        targets: Vec<TargetInfo>,
        /// The agent's sampling interval.
        interval: Duration,
        /// Where a shared store says the agent stopped (it may have streamed
        /// to another collector since this one last saw it).
        resume: Option<Resume>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<u64, Status>>,
    },
    /// A batch arrived on a registered stream.
    Apply {
        /// The agent's identity.
        agent_id: String,
        /// The stream it came on.
        conn_id: u64,
        /// The batch's sequence number.
        seq: u64,
        /// Its decoded snapshots.
        snapshots: Vec<Snapshot>,
        /// Once applied (or recognised as a replay): the servers whose deltas
        /// had no base here, and whose next snapshot must be a keyframe.
        reply: oneshot::Sender<Result<Vec<String>, Status>>,
    },
    /// A stream ended.
    Disconnect {
        /// The agent's identity.
        agent_id: String,
        /// The stream that ended.
        conn_id: u64,
    },
    /// Store the minutes being rolled up (the collector is stopping); answers
    /// once they are queued for the store.
    StoreMinutes {
        /// Where the answer goes.
        reply: oneshot::Sender<()>,
    },
    /// What other collectors stored of the servers they stream (a shared
    /// store), for this collector's view.
    Follow {
        /// The servers, each with what is new of it.
        servers: Vec<Followed>,
    },
}

/// A server another collector streams, as a shared store holds it.
#[derive(Debug)]
pub struct Followed {
    pub server_id: String,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    pub interval: Duration,
    /// The collector that streams it.
    pub collector: Arc<str>,
    /// Whether its agent is connected to that collector.
    pub connected: bool,
    /// Its state after the frames stored since this collector's view of it,
    /// if any; with true when rebuilt from a keyframe rather than carried on
    /// from the view (it replaces the view's whatever its time).
    pub state: Option<(Rebuilt, bool)>,
}

/// The handle ingest and query handlers hold.
#[derive(Clone)]
pub struct AggregatorHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<FleetView>>,
}

impl AggregatorHandle {
    /// Sends a command, waiting for room in the queue.
    pub async fn send(&self, command: Command) -> Result<(), Status> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Status::unavailable("the collector is shutting down"))
    }

    /// The latest published view.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.borrow().clone()
    }

    /// Whether the aggregator has stopped.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// A receiver that sees every newly published view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetView>> {
        self.view.clone()
    }
}

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
    commands: mpsc::Receiver<Command>,
    publish: watch::Sender<Arc<FleetView>>,
    agents: HashMap<String, AgentState>,
    servers: BTreeMap<Arc<str>, Arc<ServerView>>,
    /// When the last view was published.
    published: tokio::time::Instant,
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
                commands: rx,
                publish,
                agents: HashMap::new(),
                servers: BTreeMap::new(),
                published: tokio::time::Instant::now(),
            },
            AggregatorHandle { commands: tx, view },
        )
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
            self.servers
                .insert(view.server_id.as_str().into(), Arc::new(view));
        }
        self.publish.send_replace(Arc::new(FleetView {
            servers: self.servers.clone(),
        }));
        self.store = Some(store);
        self
    }

    /// Runs until every handle is dropped.
    ///
    /// Commands are applied as they come, and a view is published at most
    /// every [`PUBLISH_EVERY`]: publishing copies the map of every server, so
    /// with thousands of agents one publish per command would cost more than
    /// the commands. Answers wait for the view that shows their change.
    pub async fn run(mut self) {
        let mut replies = Vec::new();
        while let Some(first) = self.commands.recv().await {
            self.handle(first, &mut replies);
            let due = self.published + PUBLISH_EVERY;
            while replies.len() < MAX_COMMANDS_PER_PUBLISH {
                let command = match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(due, self.commands.recv()).await {
                            Ok(Some(command)) => command,
                            Ok(None) | Err(_) => break,
                        }
                    }
                };
                self.handle(command, &mut replies);
            }
            // The history keeps pace: when the disk falls behind, ingest waits.
            if let Some(store) = &self.store {
                for op in self.writes.drain(..) {
                    store.write(op).await;
                }
            } else {
                self.writes.clear();
            }
            self.publish.send_replace(Arc::new(FleetView {
                servers: self.servers.clone(),
            }));
            self.published = tokio::time::Instant::now();
            // Answer only once the change is visible to readers.
            for reply in replies.drain(..) {
                reply.send();
            }
        }
        debug!("Aggregator stopped.");
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
                reply,
            } => replies.push(Reply::Apply(
                reply,
                self.apply(&agent_id, conn_id, seq, snapshots),
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
                }
                replies.push(Reply::Done(reply));
            }
            Command::Follow { servers } => self.follow(servers),
        }
    }

    /// Takes into the view what other collectors stored of the servers they
    /// stream; a server streamed here is left as it is.
    fn follow(&mut self, servers: Vec<Followed>) {
        let now = now_micros();
        for f in servers {
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
            if let Some((state, whole)) = f.state
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

    fn apply(
        &mut self,
        agent_id: &str,
        conn_id: u64,
        seq: u64,
        snapshots: Vec<Snapshot>,
    ) -> Result<Vec<String>, Status> {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return Err(Status::failed_precondition("the stream is not registered"));
        };
        if agent.conn_id != Some(conn_id) {
            return Err(Status::failed_precondition(
                "a newer stream of this agent replaced this one",
            ));
        }
        if seq <= agent.stream.last_seq {
            debug!(agent.id = %agent_id, seq, "Replayed batch acknowledged, not applied.");
            agent.stream.replayed_batches += 1;
            self.publish_stream(agent_id);
            return Ok(Vec::new());
        }
        if let Some(s) = snapshots
            .iter()
            .find(|s| !agent.servers.contains(&s.server_id))
        {
            return Err(Status::invalid_argument(format!(
                "batch {seq} has a snapshot of {:?}, which this agent's Hello did not name",
                s.server_id
            )));
        }
        let stream = &mut agent.stream;
        if stream.first_seq == 0 {
            stream.first_seq = seq;
        } else {
            stream.missing_batches += seq - stream.last_seq - 1;
        }
        stream.last_seq = seq;
        stream.applied_batches += 1;
        stream.applied_snapshots += snapshots.len() as u64;
        let now = now_micros();
        let mut keyframes_needed = Vec::new();
        let keep = self.store.is_some();
        let mut frames = Vec::new();
        for mut snapshot in snapshots {
            let Some(current) = self.servers.get_mut(snapshot.server_id.as_str()) else {
                continue;
            };
            // Another agent took the server over; this one's view is set aside.
            if current.agent_id != agent_id {
                continue;
            }
            // A snapshot of a later minute closes the one being rolled up.
            if !current.minute.holds(snapshot.sampled_at_us)
                && snapshot.sampled_at_us > current.minute.start
            {
                let open = std::mem::replace(
                    &mut Arc::make_mut(current).minute,
                    Arc::new(Minute::holding(snapshot.sampled_at_us)),
                );
                if keep && open.samples > 0 {
                    self.writes.push(StoreOp::Minute {
                        server_id: snapshot.server_id.clone(),
                        minute: Arc::unwrap_or_clone(open),
                    });
                }
            }
            // Increments add up in any order, so even an older snapshot counts.
            if snapshot.status == TargetStatus::Up {
                let view = Arc::make_mut(current);
                sum_databases(Arc::make_mut(&mut view.databases), &snapshot.databases, now);
                Arc::make_mut(&mut view.minute).add_counters(&snapshot.databases);
            }
            // Snapshots from a replay after a reconnect may be older than what is
            // held; the live view keeps the newest.
            if snapshot.sampled_at_us < current.sampled_at_us {
                continue;
            }
            // A delta applies only to the snapshot it was made against; without
            // it, nothing of the snapshot is taken, and the agent is asked for a
            // keyframe instead.
            let keyframe = snapshot.delta.is_none();
            let mut removed = Vec::new();
            let mut unchanged = Vec::new();
            let mut whole = Vec::new();
            if let Some(delta) = snapshot.delta.take() {
                if current.sampled_at_us != delta.base_sampled_at_us
                    || current.status != TargetStatus::Up
                {
                    debug!(server.id = %snapshot.server_id, "Delta without its base; asking for a keyframe.");
                    keyframes_needed.push(snapshot.server_id);
                    if let Some(agent) = self.agents.get_mut(agent_id) {
                        agent.stream.refused_deltas += 1;
                    }
                    continue;
                }
                match merge(&current.sessions, snapshot.sessions, &delta) {
                    Some((sessions, upserted)) => {
                        snapshot.sessions = sessions;
                        whole = upserted;
                        (removed, unchanged) = (delta.removed, delta.unchanged);
                    }
                    None => {
                        debug!(server.id = %snapshot.server_id, "Delta leaves out fields of a session its base lacks; asking for a keyframe.");
                        keyframes_needed.push(snapshot.server_id);
                        if let Some(agent) = self.agents.get_mut(agent_id) {
                            agent.stream.refused_deltas += 1;
                        }
                        continue;
                    }
                }
            }
            if keyframe {
                snapshot.sessions = by_key(std::mem::take(&mut snapshot.sessions));
            }
            let pools = Arc::new(Pools {
                slots: snapshot.slots,
                pgbouncer: snapshot.pgbouncer,
                client_pools: snapshot.client_pools,
            });
            let facts = snapshot.facts.map(Arc::new);
            if keep {
                frames.push(Frame {
                    server_id: snapshot.server_id.clone(),
                    at: snapshot.sampled_at_us,
                    keyframe,
                    status: snapshot.status.clone(),
                    // A keyframe's sessions; a delta's, whole, in the order
                    // of their masks.
                    sessions: if keyframe {
                        snapshot.sessions.clone()
                    } else {
                        whole
                    },
                    removed,
                    unchanged,
                    pools: pools.clone(),
                    facts: facts.clone(),
                    databases: snapshot.databases,
                });
            }
            let view = Arc::make_mut(current);
            view.last_seen_us = Some(now);
            view.sampled_at_us = snapshot.sampled_at_us;
            view.status = snapshot.status;
            view.sessions = Arc::new(snapshot.sessions);
            if facts.is_some() {
                view.facts = facts;
            }
            if snapshot.agent.is_some() {
                view.agent = snapshot.agent;
            }
            view.pools = pools;
            let rollup = Rollup::of(&view.sessions, view.sampled_at_us);
            if view.status == TargetStatus::Up {
                let interval_us = view.interval.as_micros() as i64;
                Arc::make_mut(&mut view.minute).add_sample(&rollup, &view.pools, interval_us);
            }
            view.rollup = Arc::new(rollup);
        }
        self.publish_stream(agent_id);
        if keep {
            self.writes.push(StoreOp::Applied {
                agent_id: agent_id.to_owned(),
                seq,
                frames,
            });
        }
        Ok(keyframes_needed)
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
            self.writes.push(StoreOp::Disconnected {
                server_ids: agent.servers.clone(),
            });
        }
    }
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

/// The sessions of `base` with a delta applied: the fields upserted sessions
/// left out taken from their version in `base`, `removed` and the sessions
/// that `upserted` replaces taken out, `upserted` added; and the upserted
/// sessions, now whole, in the order given. None when a session left out
/// fields that `base` does not have.
///
/// Sessions are kept in key order (see [`by_key`]), so this is one pass over
/// `base` with binary searches, rather than a hash table of it per snapshot.
pub(crate) fn merge(
    base: &[Arc<Session>],
    mut upserted: Vec<Arc<Session>>,
    delta: &Delta,
) -> Option<Merged> {
    let sorted;
    let base = if base.is_sorted_by_key(|s| s.key()) {
        base
    } else {
        sorted = by_key(base.to_vec());
        &sorted
    };
    let find = |key: SessionKey| base.binary_search_by_key(&key, |s| s.key()).ok();
    for (s, &mask) in upserted.iter_mut().zip(&delta.unchanged) {
        if mask != 0 {
            let old = &base[find(s.key())?];
            compact::fill(Arc::make_mut(s), old, mask);
        }
    }
    let whole = upserted.clone();
    let upserted = by_key(upserted);
    let mut removed = delta.removed.clone();
    removed.sort_unstable();
    let mut sessions = Vec::with_capacity(base.len() + upserted.len());
    let mut new = upserted.into_iter().peekable();
    for old in base {
        let key = old.key();
        while let Some(n) = new.next_if(|n| n.key() < key) {
            sessions.push(n);
        }
        let replaced = new.peek().is_some_and(|n| n.key() == key);
        if !replaced && removed.binary_search(&key).is_err() {
            sessions.push(old.clone());
        }
    }
    sessions.extend(new);
    Some((sessions, whole))
}

/// A merge's sessions, and the upserted ones whole in the order given.
pub(crate) type Merged = (Vec<Arc<Session>>, Vec<Arc<Session>>);

/// Sessions in key order, as the views keep them.
pub(crate) fn by_key(mut sessions: Vec<Arc<Session>>) -> Vec<Arc<Session>> {
    if !sessions.is_sorted_by_key(|s| s.key()) {
        sessions.sort_unstable_by_key(|s| s.key());
    }
    sessions
}

/// Adds one up snapshot's increments to the totals. Every up snapshot lists every
/// watched database, so one it leaves out was dropped (or is no longer watched).
fn sum_databases(
    totals: &mut BTreeMap<String, DatabaseTotal>,
    increments: &[v1::DatabaseCounters],
    now: Micros,
) {
    totals.retain(|name, _| increments.iter().any(|i| &i.database == name));
    for inc in increments {
        let total = totals
            .entry(inc.database.clone())
            .or_insert_with(|| DatabaseTotal {
                since_us: now,
                totals: v1::DatabaseCounters {
                    database: inc.database.clone(),
                    ..Default::default()
                },
            });
        add_counters(&mut total.totals, inc);
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
mod tests {
    use super::*;
    use pgfleet_proto::model::SessionState;

    fn target(id: &str) -> TargetInfo {
        TargetInfo {
            server_id: id.to_owned(),
            labels: BTreeMap::new(),
        }
    }

    fn snapshot(id: &str, at: Micros, pids: &[i32]) -> Snapshot {
        Snapshot {
            status: TargetStatus::Up,
            sessions: pids
                .iter()
                .map(|&pid| {
                    Arc::new(Session {
                        pid,
                        state: SessionState::Active,
                        ..Default::default()
                    })
                })
                .collect(),
            ..Snapshot::down(id.to_owned(), at, String::new())
        }
    }

    fn aggregator() -> Aggregator {
        Aggregator::new().0
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn replays_are_acknowledged_but_not_applied() {
        let mut a = aggregator();
        assert_eq!(
            a.register("a1".into(), 1, vec![target("db")], SECOND, None)
                .unwrap(),
            0
        );
        a.apply("a1", 1, 1, vec![snapshot("db", 10, &[1])]).unwrap();
        a.apply("a1", 1, 2, vec![snapshot("db", 20, &[1, 2])])
            .unwrap();
        // Batch 1 again, with other content: acknowledged, ignored.
        a.apply("a1", 1, 1, vec![snapshot("db", 30, &[9])]).unwrap();
        assert_eq!(a.servers["db"].sessions.len(), 2);
        assert_eq!(a.servers["db"].rollup.sessions, 2);
        let stream = a.servers["db"].stream;
        assert_eq!(
            (stream.first_seq, stream.last_seq, stream.applied_batches),
            (1, 2, 2)
        );
        assert_eq!((stream.replayed_batches, stream.missing_batches), (1, 0));
        // Batches 3 to 5 never came (the agent dropped them).
        a.apply("a1", 1, 6, vec![snapshot("db", 40, &[1])]).unwrap();
        assert_eq!(a.servers["db"].stream.missing_batches, 3);
        // A new stream of the same agent resumes after 6.
        assert_eq!(
            a.register("a1".into(), 2, vec![target("db")], SECOND, None)
                .unwrap(),
            6
        );
    }

    #[test]
    fn a_newer_stream_of_the_same_agent_replaces_the_old_one() {
        let mut a = aggregator();
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        a.register("a1".into(), 2, vec![target("db")], SECOND, None)
            .unwrap();
        let old = a
            .apply("a1", 1, 1, vec![snapshot("db", 10, &[1])])
            .unwrap_err();
        assert_eq!(old.code(), tonic::Code::FailedPrecondition);
        a.apply("a1", 2, 1, vec![snapshot("db", 10, &[1])]).unwrap();
        // The old stream's end does not mark the agent disconnected.
        a.disconnect("a1", 1);
        assert!(a.servers["db"].agent_connected);
        a.disconnect("a1", 2);
        assert!(!a.servers["db"].agent_connected);
    }

    #[test]
    fn a_second_live_agent_cannot_claim_a_server() {
        let mut a = aggregator();
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        let refused = a
            .register("a2".into(), 2, vec![target("db")], SECOND, None)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::AlreadyExists);
        assert!(refused.message().contains("a1"), "{}", refused.message());
        // Once the first agent is gone, another may take the server over.
        a.disconnect("a1", 1);
        assert!(
            a.register("a2".into(), 2, vec![target("db")], SECOND, None)
                .is_ok()
        );
    }

    #[test]
    fn with_takeover_the_newer_agent_streams_the_server() {
        let mut a = Aggregator::with_policy(DuplicateServerId::Takeover).0;
        a.register("primary".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        a.apply("primary", 1, 1, vec![snapshot("db", 10, &[1])])
            .unwrap();
        a.register("standby".into(), 2, vec![target("db")], SECOND, None)
            .unwrap();
        a.apply("standby", 2, 1, vec![snapshot("db", 20, &[7, 8])])
            .unwrap();
        // The old agent's snapshots are acknowledged and set aside.
        a.apply("primary", 1, 2, vec![snapshot("db", 30, &[1])])
            .unwrap();
        assert_eq!(a.servers["db"].agent_id, "standby");
        assert_eq!(a.servers["db"].sessions.len(), 2);
        // Its stream's end does not mark the server's agent disconnected.
        a.disconnect("primary", 1);
        assert!(a.servers["db"].agent_connected);
    }

    #[test]
    fn snapshots_of_servers_the_agent_did_not_name_are_refused() {
        let mut a = aggregator();
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        let err = a
            .apply("a1", 1, 1, vec![snapshot("other", 10, &[])])
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn health_is_up_down_or_stale_with_a_reason() {
        let mut a = aggregator();
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        let now = now_micros();
        assert!(
            matches!(a.servers["db"].health(now), Stale(r) if r.contains("no snapshot has arrived"))
        );
        a.apply("a1", 1, 1, vec![snapshot("db", 10, &[1])]).unwrap();
        assert_eq!(a.servers["db"].health(now_micros()), Up);
        let later = now_micros() + 4_000_000;
        assert!(matches!(a.servers["db"].health(later), Stale(r) if r.contains("no snapshot for")));
        let mut down = snapshot("db", 20, &[]);
        down.status = TargetStatus::Down("connection refused".into());
        a.apply("a1", 1, 2, vec![down]).unwrap();
        assert_eq!(
            a.servers["db"].health(now_micros()),
            Down("connection refused".into())
        );
        a.disconnect("a1", 1);
        assert!(matches!(a.servers["db"].health(later), Stale(r) if r.contains("disconnected")));
    }

    #[test]
    fn database_increments_are_summed_even_from_older_snapshots() {
        let mut a = aggregator();
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        let with = |at, commits| {
            let mut s = snapshot("db", at, &[]);
            s.databases = vec![v1::DatabaseCounters {
                database: "orders".into(),
                xact_commit: commits,
                ..Default::default()
            }];
            s
        };
        a.apply("a1", 1, 1, vec![with(20, 5)]).unwrap();
        a.apply("a1", 1, 2, vec![with(10, 3)]).unwrap();
        a.apply("a1", 1, 3, vec![with(30, 2)]).unwrap();
        assert_eq!(a.servers["db"].databases["orders"].totals.xact_commit, 10);
        // A database an up snapshot no longer lists is dropped.
        a.apply("a1", 1, 4, vec![snapshot("db", 40, &[])]).unwrap();
        assert!(a.servers["db"].databases.is_empty());
    }

    #[test]
    fn deltas_apply_to_their_base_and_otherwise_ask_for_a_keyframe() {
        use pgfleet_proto::model::Delta;
        let mut a = aggregator();
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap();
        a.apply("a1", 1, 1, vec![snapshot("db", 10, &[1, 2, 3])])
            .unwrap();
        let mut d = snapshot("db", 20, &[4]);
        Arc::make_mut(&mut d.sessions[0]).state = SessionState::Idle;
        d.delta = Some(Delta {
            unchanged: Vec::new(),
            base_sampled_at_us: 10,
            removed: vec![(2, 0)],
        });
        assert!(a.apply("a1", 1, 2, vec![d]).unwrap().is_empty());
        let mut pids: Vec<_> = a.servers["db"].sessions.iter().map(|s| s.pid).collect();
        pids.sort();
        assert_eq!(pids, [1, 3, 4]);

        // A delta against a snapshot this collector never applied.
        let mut lost = snapshot("db", 40, &[9]);
        lost.delta = Some(Delta {
            unchanged: Vec::new(),
            base_sampled_at_us: 30,
            removed: vec![],
        });
        assert_eq!(a.apply("a1", 1, 3, vec![lost]).unwrap(), ["db"]);
        assert_eq!(
            a.servers["db"].sampled_at_us, 20,
            "nothing of it was applied"
        );
        assert_eq!(a.servers["db"].sessions.len(), 3);
    }

    #[test]
    fn merge_replaces_removes_adds_and_fills_in_key_order() {
        let s = |pid: i32, query: &str| {
            Arc::new(Session {
                pid,
                backend_start_us: 1,
                query: query.into(),
                database: "orders".into(),
                ..Default::default()
            })
        };
        // A base out of order (as an older store may hold it).
        let base = vec![s(5, "e"), s(1, "a"), s(3, "c"), s(7, "g")];
        let changed = Arc::new(Session {
            database: "".into(),
            ..(*s(3, "c2")).clone()
        });
        let delta = Delta {
            base_sampled_at_us: 0,
            removed: vec![(7, 1), (99, 1)],
            unchanged: vec![0, compact::field::DATABASE, 0],
        };
        let (merged, whole) = merge(&base, vec![s(6, "f"), changed, s(0, "z")], &delta).unwrap();
        let shape: Vec<(i32, &str, &str)> = merged
            .iter()
            .map(|x| (x.pid, &*x.query, &*x.database))
            .collect();
        assert_eq!(
            shape,
            [
                (0, "z", "orders"),
                (1, "a", "orders"),
                (3, "c2", "orders"),
                (5, "e", "orders"),
                (6, "f", "orders")
            ]
        );
        let order: Vec<i32> = whole.iter().map(|x| x.pid).collect();
        assert_eq!(order, [6, 3, 0], "the upserted, whole, as given");
        assert_eq!(&*whole[1].database, "orders");
        // A mask for a session the base lacks cannot be filled.
        let orphan = Delta {
            unchanged: vec![compact::field::DATABASE],
            ..delta
        };
        assert!(merge(&base, vec![s(42, "x")], &orphan).is_none());
    }
}

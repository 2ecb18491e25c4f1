//! The views readers get: one immutable [`ServerView`] per server in a
//! [`FleetView`], and a server's [`Health`] at a given instant.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pgfleet_proto::model::{Session, TargetStatus};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

use super::census::Census;
use crate::load::count::LoadNow;
use crate::rollup::{Minute, Rollup};
use crate::state::Pools;

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
    pub databases: Arc<BTreeMap<Arc<str>, DatabaseTotal>>,
    /// DB load now and over the last minutes, as of the last closed 10 s.
    pub load: Arc<LoadNow>,
}

/// One database's counters, summed.
#[derive(Debug, Clone)]
pub struct DatabaseTotal {
    /// When the collector first saw the database.
    pub since_us: Micros,
    /// The sums of every increment received (without the database's name,
    /// which is the map's key).
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
            load: Arc::default(),
        }
    }

    /// Whether the server carries every one of `wanted` with its value (the
    /// label filter of the query API).
    pub fn has_labels(&self, wanted: &HashMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The server's health at `now`.
    pub fn health(&self, now: Micros) -> Health {
        let why_silent = match self.last_seen_us {
            _ if !silent(self.last_seen_us, self.interval, now) => None,
            None => Some("no snapshot has arrived yet".to_owned()),
            Some(seen) => Some(format!(
                "no snapshot for {}",
                humantime::format_duration(Duration::from_secs(((now - seen) / 1_000_000) as u64))
            )),
        };
        match (why_silent, &self.status) {
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

/// Whether a server last heard of at `last_seen_us` (None: never), sampled
/// every `interval`, is silent at `now`: nothing for three intervals.
pub(super) fn silent(last_seen_us: Option<Micros>, interval: Duration, now: Micros) -> bool {
    let limit = interval.as_micros() as i64 * i64::from(STALE_AFTER_INTERVALS);
    last_seen_us.is_none_or(|seen| now - seen > limit)
}

/// An immutable view of the whole fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every known server, by server_id. The keys are shared, so that
    /// publishing a view copies no string.
    pub servers: BTreeMap<Arc<str>, Arc<ServerView>>,
    /// What fleet-wide reads need of each server, a line each, in the order
    /// of `servers` (see [`Census`]).
    pub census: Arc<Census>,
    /// How long, in all since the collector started, the aggregator waited
    /// for room in the history store's queue (and applied nothing meanwhile).
    pub store_waited: Duration,
}

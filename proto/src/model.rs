//! The domain types: what an agent samples and what the collector holds.
//!
//! They carry no wire concerns (no dictionary ids, no deltas); `convert` maps them to
//! and from the `v1` messages. Facts, counters and pools are plain records whose
//! generated `v1` types already are the domain shape, so the model holds those
//! as they are rather than copying them field by field.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

pub use arcstr::{ArcStr, literal};

use crate::time::Micros;
use crate::v1;

/// A session's state, as pg_stat_activity's `state` column says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// `state` was NULL: a background process, or a session the role may not see.
    #[default]
    Unknown,
    /// Running a query.
    Active,
    /// Waiting for a new command.
    Idle,
    /// In a transaction, but not running a query.
    IdleInTransaction,
    /// In a failed transaction, not running a query.
    IdleInTransactionAborted,
    /// Running a fast-path function call.
    Fastpath,
    /// `track_activities` is off for this session.
    Disabled,
    /// The agent's role may not see the session (`'<insufficient privilege>'`).
    NotVisible,
}

impl SessionState {
    /// Every state with a name, for messages that list them.
    pub const NAMED: [SessionState; 7] = [
        SessionState::Active,
        SessionState::Idle,
        SessionState::IdleInTransaction,
        SessionState::IdleInTransactionAborted,
        SessionState::Fastpath,
        SessionState::Disabled,
        SessionState::NotVisible,
    ];

    /// Parses PostgreSQL's word for a state; NULL and unknown words are `Unknown`.
    pub fn from_pg(state: Option<&str>) -> Self {
        match state {
            Some("active") => Self::Active,
            Some("idle") => Self::Idle,
            Some("idle in transaction") => Self::IdleInTransaction,
            Some("idle in transaction (aborted)") => Self::IdleInTransactionAborted,
            Some("fastpath function call") => Self::Fastpath,
            Some("disabled") => Self::Disabled,
            Some("not visible") => Self::NotVisible,
            _ => Self::Unknown,
        }
    }

    /// PostgreSQL's word for this state; empty for `Unknown`, and "not visible"
    /// for sessions the agent's role may not see.
    pub fn as_pg(self) -> &'static str {
        match self {
            Self::Unknown => "",
            Self::Active => "active",
            Self::Idle => "idle",
            Self::IdleInTransaction => "idle in transaction",
            Self::IdleInTransactionAborted => "idle in transaction (aborted)",
            Self::Fastpath => "fastpath function call",
            Self::Disabled => "disabled",
            Self::NotVisible => "not visible",
        }
    }

    /// Parses a state filter as a user types it: PostgreSQL's word, with `-` or `_`
    /// accepted for spaces ("idle-in-transaction").
    pub fn parse_filter(text: &str) -> Result<Self, String> {
        let words = text.trim().to_ascii_lowercase().replace(['-', '_'], " ");
        match Self::from_pg(Some(&words)) {
            Self::Unknown => Err(format!(
                "unknown session state {text:?}; expected one of: {}",
                Self::NAMED.map(Self::as_pg).join(", ")
            )),
            state => Ok(state),
        }
    }
}

/// One row of pg_stat_activity, keyed by `(pid, backend_start_us)`. Its strings
/// are shared (`ArcStr`): most sessions look the same from one sample to the
/// next, and the agent then reuses what it read before instead of copying it.
/// The collector keeps the names among them once for its life (see
/// [`crate::names`]), so that sharing those changes no reference count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Session {
    /// The backend's process id.
    pub pid: i32,
    /// When the backend started; with `pid`, unique over the server's life.
    pub backend_start_us: Micros,
    /// The database it is connected to; empty for background processes.
    pub database: ArcStr,
    /// The role it is logged in as.
    pub user: ArcStr,
    /// The client's `application_name`.
    pub application_name: ArcStr,
    /// The client's address and port ("10.0.0.5:51234"); empty for a Unix socket.
    pub client: ArcStr,
    /// What the session is doing.
    pub state: SessionState,
    /// When its transaction began, if it is in one.
    pub xact_start_us: Option<Micros>,
    /// When its current (or last) query began.
    pub query_start_us: Option<Micros>,
    /// When `state` last changed.
    pub state_change_us: Option<Micros>,
    /// The wait event type ("Lock", "IO", …); empty when not waiting.
    pub wait_event_type: ArcStr,
    /// The wait event ("transactionid", "DataFileRead", …); empty when not waiting.
    pub wait_event: ArcStr,
    /// The current (or last) query's text.
    pub query: ArcStr,
    /// The pids that block this session, for sessions waiting on a Lock.
    pub blocked_by: Vec<i32>,
    /// "client backend", "autovacuum worker", …
    pub backend_type: ArcStr,
    /// A parallel worker's leader (PostgreSQL 13 and later).
    pub leader_pid: Option<i32>,
    /// pg_stat_activity.query_id (PostgreSQL 14 and later, with compute_query_id).
    pub query_id: Option<i64>,
    /// The hash of the masked query text; 0 when there is no text.
    pub fingerprint: u64,
}

impl Session {
    /// The session's key: unique over the server's life.
    pub fn key(&self) -> SessionKey {
        (self.pid, self.backend_start_us)
    }

    /// How long the session has been in its present condition at `at`: the query's
    /// age when active, the transaction's age when idle in a transaction, the idle
    /// time when idle. None for background processes and unknown states.
    pub fn duration_us(&self, at: Micros) -> Option<i64> {
        let since = match self.state {
            SessionState::Active | SessionState::Fastpath => self.query_start_us,
            SessionState::IdleInTransaction | SessionState::IdleInTransactionAborted => {
                self.xact_start_us
            }
            SessionState::Idle => self.state_change_us,
            SessionState::Unknown | SessionState::Disabled | SessionState::NotVisible => None,
        }?;
        Some((at - since).max(0))
    }

    /// True for PostgreSQL's own processes (checkpointer, autovacuum, …) rather than
    /// client sessions, parallel workers or WAL senders.
    pub fn is_background(&self) -> bool {
        !matches!(
            &*self.backend_type,
            "client backend" | "parallel worker" | "walsender" | ""
        )
    }
}

/// A session's key: `(pid, backend_start_us)`.
pub type SessionKey = (i32, Micros);

/// A map keyed by sessions, with a hash fit for small integer keys that come
/// from PostgreSQL (SipHash's defence against chosen keys is not needed, and
/// costs more than the rest of a lookup).
pub type SessionMap<V> = HashMap<SessionKey, V, BuildHasherDefault<KeyHasher>>;

/// FxHash: one rotate, xor and multiply per word.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.add(u64::from(n as u32));
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// Whether the agent could sample a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetStatus {
    /// The sample succeeded.
    Up,
    /// The sample failed, for this reason.
    Down(String),
}

/// Everything one sample of one target saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The target's `server_id`.
    pub server_id: String,
    /// When the sample was taken.
    pub sampled_at_us: Micros,
    /// Whether the sample succeeded; when down, `sessions` is empty.
    pub status: TargetStatus,
    /// Every session the sample saw, the agent's own excluded; in a delta, only
    /// the sessions that are new or changed. Shared: a session that did not
    /// change is the same allocation from one snapshot to the next.
    pub sessions: Vec<Arc<Session>>,
    /// Set when this snapshot is a delta against an earlier one.
    pub delta: Option<Delta>,
    /// Facts about the server (on keyframes).
    pub facts: Option<v1::ServerFacts>,
    /// pg_stat_database increments since the previous snapshot, per database.
    pub databases: Vec<v1::DatabaseCounters>,
    /// Connection slots and what uses them.
    pub slots: Option<v1::ConnectionSlots>,
    /// PgBouncer's pools and stats, when the agent reads a PgBouncer.
    pub pgbouncer: Option<v1::PgBouncerSample>,
    /// The agent's own pool and the pools applications reported.
    pub client_pools: Vec<v1::ClientPool>,
    /// The agent's counters for this target.
    pub agent: Option<v1::AgentCounters>,
    /// pg_stat_statements increments, on the snapshots taken when the agent
    /// read them.
    pub statements: Option<v1::StatementsSample>,
}

/// What makes a snapshot a delta: the snapshot it applies to, and the sessions
/// that ended since.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// The `sampled_at_us` of the snapshot it applies to.
    pub base_sampled_at_us: Micros,
    /// The keys `(pid, backend_start_us)` of sessions that ended.
    pub removed: Vec<(i32, Micros)>,
    /// For each session of the snapshot, in order, the fields it left out
    /// because its version in the base has them (see `compact::field`); empty
    /// when every session is whole.
    pub unchanged: Vec<u32>,
}

impl Snapshot {
    /// A snapshot of a target that could not be sampled.
    pub fn down(server_id: String, sampled_at_us: Micros, reason: String) -> Self {
        Snapshot {
            server_id,
            sampled_at_us,
            status: TargetStatus::Down(reason),
            sessions: Vec::new(),
            delta: None,
            facts: None,
            databases: Vec::new(),
            slots: None,
            pgbouncer: None,
            client_pools: Vec::new(),
            agent: None,
            statements: None,
        }
    }
}

/// Adds `inc` to `total`, field by field (the collector sums increments).
pub fn add_counters(total: &mut v1::DatabaseCounters, inc: &v1::DatabaseCounters) {
    total.xact_commit += inc.xact_commit;
    total.xact_rollback += inc.xact_rollback;
    total.blks_read += inc.blks_read;
    total.blks_hit += inc.blks_hit;
    total.tup_returned += inc.tup_returned;
    total.tup_fetched += inc.tup_fetched;
    total.tup_inserted += inc.tup_inserted;
    total.tup_updated += inc.tup_updated;
    total.tup_deleted += inc.tup_deleted;
    total.temp_files += inc.temp_files;
    total.temp_bytes += inc.temp_bytes;
    total.deadlocks += inc.deadlocks;
    total.conflicts += inc.conflicts;
    total.sessions += inc.sessions;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_filters_accept_what_users_type() {
        assert_eq!(
            SessionState::parse_filter("idle-in-transaction"),
            Ok(SessionState::IdleInTransaction)
        );
        assert_eq!(
            SessionState::parse_filter(" Active "),
            Ok(SessionState::Active)
        );
        let err = SessionState::parse_filter("sleeping").unwrap_err();
        assert!(err.contains("idle in transaction"), "{err}");
    }

    #[test]
    fn every_named_state_round_trips_through_postgres_words() {
        for state in SessionState::NAMED {
            assert_eq!(SessionState::from_pg(Some(state.as_pg())), state);
        }
        assert_eq!(SessionState::from_pg(None), SessionState::Unknown);
    }

    #[test]
    fn duration_depends_on_state() {
        let mut s = Session {
            state: SessionState::Active,
            xact_start_us: Some(1_000),
            query_start_us: Some(5_000),
            state_change_us: Some(5_000),
            ..Default::default()
        };
        assert_eq!(s.duration_us(9_000), Some(4_000));
        s.state = SessionState::IdleInTransaction;
        assert_eq!(s.duration_us(9_000), Some(8_000));
        s.state = SessionState::Unknown;
        assert_eq!(s.duration_us(9_000), None);
    }

    #[test]
    fn counters_add_up_field_by_field() {
        let mut total = v1::DatabaseCounters {
            xact_commit: 1,
            conflicts: 1,
            ..Default::default()
        };
        let inc = v1::DatabaseCounters {
            xact_commit: 2,
            temp_bytes: 5,
            conflicts: 2,
            ..Default::default()
        };
        add_counters(&mut total, &inc);
        assert_eq!(
            (total.xact_commit, total.temp_bytes, total.conflicts),
            (3, 5, 3)
        );
    }
}

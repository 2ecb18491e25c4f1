//! The only place where domain types and wire types meet.

use std::fmt;
use std::sync::Arc;

use crate::model::{ArcStr, Delta, Session, SessionState, Snapshot, TargetStatus};
use crate::time::{self, Micros};
use crate::v1;

/// Why a wire message could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A snapshot without a status.
    MissingStatus {
        /// The snapshot's target.
        server_id: String,
    },
    /// A snapshot of a target that is up, without activity.
    MissingActivity {
        /// The snapshot's target.
        server_id: String,
    },
    /// A session refers to a dictionary entry the stream never sent.
    UnknownReference {
        /// The snapshot's target.
        server_id: String,
        /// The entry's id.
        id: u32,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingStatus { server_id } => {
                write!(f, "snapshot of {server_id:?} has no status")
            }
            Self::UnknownReference { server_id, id } => {
                write!(
                    f,
                    "snapshot of {server_id:?} refers to dictionary entry {id}, which the stream never sent"
                )
            }
            Self::MissingActivity { server_id } => {
                write!(f, "snapshot of {server_id:?} is up but carries no activity")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// 0 on the wire means "none".
fn opt_micros(us: i64) -> Option<Micros> {
    (us != 0).then_some(us)
}

impl From<SessionState> for v1::SessionState {
    fn from(state: SessionState) -> Self {
        match state {
            SessionState::Unknown => Self::Unspecified,
            SessionState::Active => Self::Active,
            SessionState::Idle => Self::Idle,
            SessionState::IdleInTransaction => Self::IdleInTransaction,
            SessionState::IdleInTransactionAborted => Self::IdleInTransactionAborted,
            SessionState::Fastpath => Self::Fastpath,
            SessionState::Disabled => Self::Disabled,
            SessionState::NotVisible => Self::NotVisible,
        }
    }
}

impl From<v1::SessionState> for SessionState {
    fn from(state: v1::SessionState) -> Self {
        match state {
            v1::SessionState::Unspecified => Self::Unknown,
            v1::SessionState::Active => Self::Active,
            v1::SessionState::Idle => Self::Idle,
            v1::SessionState::IdleInTransaction => Self::IdleInTransaction,
            v1::SessionState::IdleInTransactionAborted => Self::IdleInTransactionAborted,
            v1::SessionState::Fastpath => Self::Fastpath,
            v1::SessionState::Disabled => Self::Disabled,
            v1::SessionState::NotVisible => Self::NotVisible,
        }
    }
}

impl From<&Session> for v1::SessionSample {
    fn from(s: &Session) -> Self {
        crate::compact::sample(s, 0)
    }
}

/// Where a sample's strings come from: the field itself (`ArcStr::from`,
/// which gives every empty one the same static string rather than an
/// allocation), or the stream's dictionary when its `*_ref` names an entry
/// (an unknown one is an error).
/// The flag says the string is a name (a database, role, application, wait
/// event or backend type) rather than a query's text or a client's address.
pub(crate) type Texts<'a> = dyn Fn(String, u32, bool) -> Result<ArcStr, u32> + 'a;

/// A sample in the model's terms, its strings from `text`.
pub(crate) fn session_from(s: v1::SessionSample, text: &Texts) -> Result<Session, u32> {
    // An unknown enum value (from a newer agent) reads as Unknown, not an error.
    let state = v1::SessionState::try_from(s.state).unwrap_or_default();
    Ok(Session {
        pid: s.pid,
        backend_start_us: s.backend_start_us,
        database: text(s.database, s.database_ref, true)?,
        user: text(s.user, s.user_ref, true)?,
        application_name: text(s.application_name, s.application_name_ref, true)?,
        client: s.client.into(),
        state: state.into(),
        xact_start_us: opt_micros(s.xact_start_us),
        query_start_us: opt_micros(s.query_start_us),
        state_change_us: opt_micros(s.state_change_us),
        wait_event_type: text(s.wait_event_type, s.wait_event_type_ref, true)?,
        wait_event: text(s.wait_event, s.wait_event_ref, true)?,
        query: text(s.query, s.query_ref, false)?,
        blocked_by: s.blocked_by,
        backend_type: text(s.backend_type, s.backend_type_ref, true)?,
        leader_pid: (s.leader_pid != 0).then_some(s.leader_pid),
        query_id: (s.query_id != 0).then_some(s.query_id),
        fingerprint: s.query_fingerprint,
    })
}

impl From<v1::SessionSample> for Session {
    /// A sample whose strings are all in place (references are read as
    /// empty; [`crate::compact::Resolver`] reads them).
    fn from(s: v1::SessionSample) -> Self {
        session_from(s, &|text, _, _| Ok(text.into())).unwrap_or_default()
    }
}

impl From<&Snapshot> for v1::Snapshot {
    /// Encodes a snapshot: a keyframe, or a delta when it is one.
    fn from(s: &Snapshot) -> Self {
        let (up, reason) = match &s.status {
            TargetStatus::Up => (true, String::new()),
            TargetStatus::Down(reason) => (false, reason.clone()),
        };
        v1::Snapshot {
            server_id: s.server_id.clone(),
            sampled_at_us: s.sampled_at_us,
            status: Some(v1::TargetStatus { up, reason }),
            activity: up.then(|| {
                // A delta's sessions without the fields its masks name.
                let mask = |i: usize| {
                    s.delta
                        .as_ref()
                        .and_then(|d| d.unchanged.get(i).copied())
                        .unwrap_or(0)
                };
                let sessions = s
                    .sessions
                    .iter()
                    .enumerate()
                    .map(|(i, s)| crate::compact::sample(s, mask(i)))
                    .collect();
                match &s.delta {
                    None => v1::snapshot::Activity::Keyframe(v1::ActivityKeyframe { sessions }),
                    Some(d) => v1::snapshot::Activity::Delta(v1::ActivityDelta {
                        base_sampled_at_us: d.base_sampled_at_us,
                        upserted: sessions,
                        removed: d
                            .removed
                            .iter()
                            .map(|&(pid, backend_start_us)| v1::SessionKey {
                                pid,
                                backend_start_us,
                            })
                            .collect(),
                    }),
                }
            }),
            facts: s.facts.clone(),
            databases: s.databases.clone(),
            slots: s.slots.clone(),
            pgbouncer: s.pgbouncer.clone(),
            client_pools: s.client_pools.clone(),
            agent: s.agent,
            statements: s.statements.clone(),
        }
    }
}

impl TryFrom<v1::Snapshot> for Snapshot {
    type Error = DecodeError;

    fn try_from(s: v1::Snapshot) -> Result<Self, DecodeError> {
        snapshot_from(s, &|text, _, _| Ok(text.into()))
    }
}

/// A snapshot in the model's terms, its sessions' strings from `text`.
pub(crate) fn snapshot_from(s: v1::Snapshot, text: &Texts) -> Result<Snapshot, DecodeError> {
    {
        let server_id = s.server_id;
        let Some(status) = s.status else {
            return Err(DecodeError::MissingStatus { server_id });
        };
        if !status.up {
            return Ok(Snapshot {
                agent: s.agent,
                ..Snapshot::down(server_id, s.sampled_at_us, status.reason)
            });
        }
        let (sessions, delta) = match s.activity {
            Some(v1::snapshot::Activity::Keyframe(k)) => {
                (sessions_from(k.sessions, text, &server_id)?, None)
            }
            Some(v1::snapshot::Activity::Delta(d)) => {
                let unchanged = if d.upserted.iter().any(|s| s.unchanged != 0) {
                    d.upserted.iter().map(|s| s.unchanged).collect()
                } else {
                    Vec::new()
                };
                (
                    sessions_from(d.upserted, text, &server_id)?,
                    Some(Delta {
                        base_sampled_at_us: d.base_sampled_at_us,
                        removed: d
                            .removed
                            .into_iter()
                            .map(|k| (k.pid, k.backend_start_us))
                            .collect(),
                        unchanged,
                    }),
                )
            }
            None => return Err(DecodeError::MissingActivity { server_id }),
        };
        Ok(Snapshot {
            server_id,
            sampled_at_us: s.sampled_at_us,
            status: TargetStatus::Up,
            sessions,
            delta,
            facts: s.facts,
            databases: s.databases,
            slots: s.slots,
            pgbouncer: s.pgbouncer,
            client_pools: s.client_pools,
            agent: s.agent,
            statements: s.statements,
        })
    }
}

/// The wire's sessions in the model's terms, in a vector of their own size:
/// `collect` would reuse the wire's allocation in place (`Vec<SessionSample>`
/// into `Vec<Arc<Session>>`) and keep all of it, so that a keyframe of 100
/// sessions held some 44 KiB where 800 bytes do, for as long as the view
/// kept it (seen in a heap profile of the collector).
fn sessions_from(
    wire: Vec<v1::SessionSample>,
    text: &Texts,
    server_id: &str,
) -> Result<Vec<Arc<Session>>, DecodeError> {
    let mut sessions = Vec::with_capacity(wire.len());
    for s in wire {
        let session = session_from(s, text).map_err(|id| DecodeError::UnknownReference {
            server_id: server_id.to_owned(),
            id,
        })?;
        sessions.push(Arc::new(session));
    }
    Ok(sessions)
}

/// A session as the query API shows it, with its duration at `sampled_at_us`.
pub fn query_session(s: &Session, sampled_at_us: Micros) -> v1::Session {
    v1::Session {
        pid: s.pid,
        backend_start: Some(time::timestamp(s.backend_start_us)),
        database: s.database.to_string(),
        user: s.user.to_string(),
        application_name: s.application_name.to_string(),
        client: s.client.to_string(),
        state: s.state.as_pg().to_owned(),
        xact_start: s.xact_start_us.map(time::timestamp),
        query_start: s.query_start_us.map(time::timestamp),
        state_change: s.state_change_us.map(time::timestamp),
        wait_event_type: s.wait_event_type.to_string(),
        wait_event: s.wait_event.to_string(),
        query: s.query.to_string(),
        blocked_by: s.blocked_by.clone(),
        backend_type: s.backend_type.to_string(),
        duration: s.duration_us(sampled_at_us).map(time::duration),
        leader_pid: s.leader_pid.unwrap_or(0),
        query_id: s.query_id.unwrap_or(0),
        fingerprint: match s.fingerprint {
            0 => String::new(),
            fp => hex16(fp, &mut [0; 16]).to_owned(),
        },
        xact_age: age(s.xact_start_us, sampled_at_us),
        query_age: age(s.query_start_us, sampled_at_us),
        state_age: age(s.state_change_us, sampled_at_us),
    }
}

/// [`query_session`]`(s, sampled_at_us)` written as field `tag` of the
/// message being built in `buf`: the same bytes prost writes for it, but no
/// string is copied into a `String` of its own first. GetActivity answers
/// over gRPC so (a read of a server's 100 sessions built eleven `String`s a
/// session and dropped them again).
pub fn encode_query_session(tag: u32, s: &Session, sampled_at_us: Micros, buf: &mut Vec<u8>) {
    use crate::compact::{encode_str, nested};
    use prost::encoding::{int32, int64, message};
    let instant = |buf: &mut Vec<u8>, tag: u32, us: Option<Micros>| {
        if let Some(us) = us {
            message::encode(tag, &time::timestamp(us), buf);
        }
    };
    let span = |buf: &mut Vec<u8>, tag: u32, d: Option<prost_types::Duration>| {
        if let Some(d) = d {
            message::encode(tag, &d, buf);
        }
    };
    nested(tag, buf, |buf| {
        if s.pid != 0 {
            int32::encode(1, &s.pid, buf);
        }
        instant(buf, 2, Some(s.backend_start_us));
        encode_str(3, &s.database, buf);
        encode_str(4, &s.user, buf);
        encode_str(5, &s.application_name, buf);
        encode_str(6, &s.client, buf);
        encode_str(7, s.state.as_pg(), buf);
        instant(buf, 8, s.xact_start_us);
        instant(buf, 9, s.query_start_us);
        instant(buf, 10, s.state_change_us);
        encode_str(11, &s.wait_event_type, buf);
        encode_str(12, &s.wait_event, buf);
        encode_str(13, &s.query, buf);
        if !s.blocked_by.is_empty() {
            int32::encode_packed(14, &s.blocked_by, buf);
        }
        encode_str(15, &s.backend_type, buf);
        span(buf, 16, s.duration_us(sampled_at_us).map(time::duration));
        match s.leader_pid {
            Some(pid) if pid != 0 => int32::encode(17, &pid, buf),
            _ => {}
        }
        match s.query_id {
            Some(id) if id != 0 => int64::encode(18, &id, buf),
            _ => {}
        }
        if s.fingerprint != 0 {
            encode_str(19, hex16(s.fingerprint, &mut [0; 16]), buf);
        }
        span(buf, 20, age(s.xact_start_us, sampled_at_us));
        span(buf, 21, age(s.query_start_us, sampled_at_us));
        span(buf, 22, age(s.state_change_us, sampled_at_us));
    });
}

/// `n` as 16 lower-case hex digits, as `format!("{n:016x}")` writes it.
fn hex16(n: u64, out: &mut [u8; 16]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

fn age(since: Option<Micros>, at: Micros) -> Option<prost_types::Duration> {
    since.map(|t| time::duration((at - t).max(0)))
}

/// The query API's view of a server's facts.
pub fn server_info(f: &v1::ServerFacts) -> v1::ServerInfo {
    v1::ServerInfo {
        version: f.version.clone(),
        version_num: f.version_num,
        system_identifier: f.system_identifier,
        in_recovery: f.in_recovery,
        start_time: (f.start_time_us != 0).then(|| time::timestamp(f.start_time_us)),
        max_connections: f.max_connections,
        superuser_reserved_connections: f.superuser_reserved_connections,
        reserved_connections: f.reserved_connections,
        cpus: f.cpus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            pid: 4242,
            backend_start_us: 1_700_000_000_000_001,
            database: "orders".into(),
            user: "app".into(),
            application_name: "checkout".into(),
            client: "10.1.2.3:5555".into(),
            state: SessionState::IdleInTransaction,
            xact_start_us: Some(1_700_000_001_000_000),
            query_start_us: Some(1_700_000_002_000_000),
            state_change_us: None,
            wait_event_type: "Client".into(),
            wait_event: "ClientRead".into(),
            query: "update t set x = $1".into(),
            blocked_by: vec![7, 8],
            backend_type: "client backend".into(),
            leader_pid: Some(4200),
            query_id: Some(-77),
            fingerprint: 0xdead_beef,
        }
    }

    #[test]
    fn empty_strings_share_one_static_string() {
        let s = Session::from(v1::SessionSample::default());
        for text in [&s.database, &s.client, &s.query, &s.backend_type] {
            assert!(ArcStr::is_static(text) && ArcStr::ptr_eq(text, &s.user));
        }
    }

    #[test]
    fn keyframe_snapshots_round_trip() {
        let snap = Snapshot {
            status: TargetStatus::Up,
            sessions: vec![Arc::new(session()), Arc::default()],
            facts: Some(v1::ServerFacts {
                version_num: 150018,
                system_identifier: u64::MAX,
                ..Default::default()
            }),
            databases: vec![v1::DatabaseCounters {
                database: "orders".into(),
                xact_commit: 5,
                ..Default::default()
            }],
            ..Snapshot::down("db-1".into(), 1_700_000_003_000_000, String::new())
        };
        let wire = v1::Snapshot::from(&snap);
        assert_eq!(Snapshot::try_from(wire), Ok(snap));
    }

    #[test]
    fn decoded_sessions_hold_no_more_room_than_they_need() {
        // The wire's sessions, in a vector with room to spare, as prost
        // leaves it after pushing them one by one.
        let mut sessions = Vec::with_capacity(128);
        sessions.extend((0..100).map(|pid| Arc::new(Session { pid, ..session() })));
        let snap = Snapshot {
            status: TargetStatus::Up,
            sessions,
            ..Snapshot::down("db-1".into(), 1_700_000_003_000_000, String::new())
        };
        let mut wire = v1::Snapshot::from(&snap);
        let Some(v1::snapshot::Activity::Keyframe(k)) = &mut wire.activity else {
            panic!("a snapshot without a delta goes as a keyframe");
        };
        k.sessions.reserve_exact(28);
        let decoded = Snapshot::try_from(wire).unwrap();
        assert_eq!(decoded.sessions.len(), 100);
        // Reused in place, the wire's allocation would give room for
        // thousands of `Arc`s.
        assert_eq!(decoded.sessions.capacity(), 100);
    }

    #[test]
    fn a_down_snapshot_keeps_its_reason_and_no_sessions() {
        let snap = Snapshot::down("db-1".into(), 1, "connection refused".into());
        let wire = v1::Snapshot::from(&snap);
        assert!(wire.activity.is_none());
        assert_eq!(Snapshot::try_from(wire), Ok(snap));
    }

    #[test]
    fn malformed_snapshots_are_refused_with_a_reason() {
        let mut wire = v1::Snapshot {
            server_id: "db-1".into(),
            ..Default::default()
        };
        assert!(matches!(
            Snapshot::try_from(wire.clone()),
            Err(DecodeError::MissingStatus { .. })
        ));
        wire.status = Some(v1::TargetStatus {
            up: true,
            reason: String::new(),
        });
        assert!(matches!(
            Snapshot::try_from(wire.clone()),
            Err(DecodeError::MissingActivity { .. })
        ));
    }

    #[test]
    fn delta_snapshots_round_trip() {
        let snap = Snapshot {
            status: TargetStatus::Up,
            sessions: vec![Arc::new(session())],
            delta: Some(Delta {
                unchanged: Vec::new(),
                base_sampled_at_us: 41,
                removed: vec![(7, 1_700_000_000_000_000)],
            }),
            ..Snapshot::down("db-1".into(), 42, String::new())
        };
        let wire = v1::Snapshot::from(&snap);
        assert!(matches!(
            wire.activity,
            Some(v1::snapshot::Activity::Delta(_))
        ));
        assert_eq!(Snapshot::try_from(wire), Ok(snap));
    }

    #[test]
    fn an_unknown_state_from_a_newer_agent_reads_as_unknown() {
        let mut wire = v1::SessionSample::from(&session());
        wire.state = 99;
        assert_eq!(Session::from(wire).state, SessionState::Unknown);
    }

    #[test]
    fn query_sessions_carry_postgres_words_and_duration() {
        let q = query_session(&session(), 1_700_000_004_000_000);
        assert_eq!(q.state, "idle in transaction");
        assert_eq!(q.duration, Some(time::duration(3_000_000)));
        assert_eq!(q.state_change, None);
        assert_eq!(q.xact_age, Some(time::duration(3_000_000)));
        assert_eq!(q.query_age, Some(time::duration(2_000_000)));
        assert_eq!(q.fingerprint, "00000000deadbeef");
        assert_eq!((q.leader_pid, q.query_id), (4200, -77));
    }

    #[test]
    fn query_sessions_encode_as_prost_encodes_them() {
        use prost::Message;
        let at = 1_700_000_004_000_000;
        let full = session();
        let bare = Session {
            pid: 0,
            backend_start_us: 0,
            database: "".into(),
            user: "".into(),
            application_name: "".into(),
            client: "".into(),
            state: SessionState::Unknown,
            xact_start_us: None,
            query_start_us: None,
            state_change_us: None,
            wait_event_type: "".into(),
            wait_event: "".into(),
            query: "".into(),
            blocked_by: vec![],
            backend_type: "".into(),
            leader_pid: Some(0),
            query_id: Some(0),
            fingerprint: 0,
        };
        let waiting = Session {
            state: SessionState::Active,
            state_change_us: Some(at + 5),
            xact_start_us: Some(-1_500_000),
            wait_event_type: "Lock".into(),
            wait_event: "transactionid".into(),
            blocked_by: vec![1, 300, -2, i32::MAX],
            leader_pid: None,
            query_id: Some(i64::MIN),
            fingerprint: u64::MAX,
            query: "SELECT 'é' || $1".repeat(20).into(),
            ..session()
        };
        for (name, s) in [("full", &full), ("bare", &bare), ("waiting", &waiting)] {
            for at in [at, 0, -1] {
                let wanted = v1::GetActivityResponse {
                    sessions: vec![query_session(s, at), query_session(s, at)],
                    ..Default::default()
                };
                let mut buf = Vec::new();
                encode_query_session(3, s, at, &mut buf);
                encode_query_session(3, s, at, &mut buf);
                assert_eq!(buf, wanted.encode_to_vec(), "{name} at {at}");
            }
        }
        assert_eq!(hex16(0xdead_beef, &mut [0; 16]), "00000000deadbeef");
        assert_eq!(hex16(u64::MAX, &mut [0; 16]), format!("{:016x}", u64::MAX));
    }
}

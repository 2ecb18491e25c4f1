//! What one server's sessions add up to: the figures `/metrics` exposes per
//! server and `FleetSummary` adds up per label value.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::Micros;

/// One server's client sessions, counted.
#[derive(Debug, Default)]
pub struct Rollup {
    /// Client sessions (background processes are not counted).
    pub sessions: u32,
    /// Client sessions by state, in PostgreSQL's words ("unknown" for NULL).
    pub by_state: BTreeMap<&'static str, u32>,
    /// Client sessions by (database, state).
    pub by_database_state: BTreeMap<(String, &'static str), u64>,
    /// The oldest open transaction per database, in seconds.
    pub max_xact_age: BTreeMap<String, f64>,
    /// The oldest open transaction of the server, in microseconds.
    pub longest_xact_us: Option<i64>,
    /// Active sessions waiting, by wait_event_type. Idle sessions wait for
    /// their client (Client:ClientRead), which is not waiting on the server.
    pub waiting_by_type: BTreeMap<String, u64>,
    /// Active sessions waiting on anything.
    pub waiting: u32,
    /// Sessions waiting for a lock another session holds.
    pub blocked: u32,
}

impl Rollup {
    /// Counts `sessions`, as sampled at `at`.
    pub fn of(sessions: &[Arc<Session>], at: Micros) -> Rollup {
        let mut r = Rollup::default();
        for s in sessions.iter().filter(|s| !s.is_background()) {
            let state = match s.state {
                SessionState::Unknown => "unknown",
                other => other.as_pg(),
            };
            r.sessions += 1;
            *r.by_state.entry(state).or_default() += 1;
            *r.by_database_state
                .entry((s.database.to_string(), state))
                .or_default() += 1;
            if let Some(start) = s.xact_start_us {
                let age_us = (at - start).max(0);
                let max = r.max_xact_age.entry(s.database.to_string()).or_default();
                *max = max.max(age_us as f64 / 1e6);
                r.longest_xact_us = Some(r.longest_xact_us.map_or(age_us, |m| m.max(age_us)));
            }
            if s.state == SessionState::Active && !s.wait_event_type.is_empty() {
                r.waiting += 1;
                *r.waiting_by_type
                    .entry(s.wait_event_type.to_string())
                    .or_default() += 1;
            }
            if !s.blocked_by.is_empty() {
                r.blocked += 1;
            }
        }
        r
    }
}

//! What one server's sessions add up to: the figures `/metrics` exposes per
//! server and `FleetSummary` adds up per label value.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;
use prost::Message;

use crate::aggregator::Pools;

/// One server's client sessions, counted.
#[derive(Debug, Default)]
pub struct Rollup {
    /// Client sessions (background processes are not counted).
    pub sessions: u32,
    /// Client sessions by state, in PostgreSQL's words ("unknown" for NULL).
    pub by_state: BTreeMap<&'static str, u32>,
    /// Client sessions by (database, state).
    pub by_database_state: BTreeMap<(Arc<str>, &'static str), u64>,
    /// The oldest open transaction per database, in seconds.
    pub max_xact_age: BTreeMap<Arc<str>, f64>,
    /// The oldest open transaction of the server, in microseconds.
    pub longest_xact_us: Option<i64>,
    /// Active sessions waiting, by wait_event_type. Idle sessions wait for
    /// their client (Client:ClientRead), which is not waiting on the server.
    pub waiting_by_type: BTreeMap<Arc<str>, u64>,
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
                .entry((s.database.clone(), state))
                .or_default() += 1;
            if let Some(start) = s.xact_start_us {
                let age_us = (at - start).max(0);
                let max = r.max_xact_age.entry(s.database.clone()).or_default();
                *max = max.max(age_us as f64 / 1e6);
                r.longest_xact_us = Some(r.longest_xact_us.map_or(age_us, |m| m.max(age_us)));
            }
            if s.state == SessionState::Active && !s.wait_event_type.is_empty() {
                r.waiting += 1;
                *r.waiting_by_type
                    .entry(s.wait_event_type.clone())
                    .or_default() += 1;
            }
            if !s.blocked_by.is_empty() {
                r.blocked += 1;
            }
        }
        r
    }
}

/// The metrics `QueryMetrics` serves from the per-minute rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Client sessions, by state.
    Sessions,
    /// Active sessions waiting, by wait_event_type.
    WaitingSessions,
    /// Sessions waiting for a lock another session holds.
    BlockedSessions,
    /// The oldest open transaction, in seconds.
    MaxXactAge,
    /// Used over capacity, by pool.
    PoolUtilisation,
    /// pg_stat_database's xact_commit, per second.
    Commits,
    /// pg_stat_database's xact_rollback, per second.
    Rollbacks,
    /// pg_stat_database's deadlocks, per second.
    Deadlocks,
}

/// How a metric's values combine over time and across servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// A count: the mean over the samples of a server, summed across servers.
    Mean,
    /// The maximum, over time and across servers.
    Max,
    /// Increments over the seconds they cover, summed across servers.
    Rate,
}

impl Metric {
    /// Every metric, in the order `QueryMetrics` lists them.
    pub const ALL: [Metric; 8] = [
        Metric::Sessions,
        Metric::WaitingSessions,
        Metric::BlockedSessions,
        Metric::MaxXactAge,
        Metric::PoolUtilisation,
        Metric::Commits,
        Metric::Rollbacks,
        Metric::Deadlocks,
    ];

    /// Its name in `QueryMetrics`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Sessions => "sessions",
            Metric::WaitingSessions => "waiting_sessions",
            Metric::BlockedSessions => "blocked_sessions",
            Metric::MaxXactAge => "max_xact_age_seconds",
            Metric::PoolUtilisation => "pool_utilisation",
            Metric::Commits => "commits_per_second",
            Metric::Rollbacks => "rollbacks_per_second",
            Metric::Deadlocks => "deadlocks_per_second",
        }
    }

    /// The name of its own label, when its values are split by one.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Metric::Sessions => Some("state"),
            Metric::WaitingSessions => Some("wait_event_type"),
            Metric::PoolUtilisation => Some("pool"),
            _ => None,
        }
    }

    /// How its values combine.
    pub fn combine(self) -> Combine {
        match self {
            Metric::Sessions | Metric::WaitingSessions | Metric::BlockedSessions => Combine::Mean,
            Metric::MaxXactAge | Metric::PoolUtilisation => Combine::Max,
            Metric::Commits | Metric::Rollbacks | Metric::Deadlocks => Combine::Rate,
        }
    }

    /// The metric named `name`, or an error that lists them all.
    pub fn parse(name: &str) -> Result<Metric, String> {
        let name = name.trim();
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                if name.is_empty() {
                    format!("name a metric: one of {}", known.join(", "))
                } else {
                    format!(
                        "unknown metric {name:?}; the metrics are {}",
                        known.join(", ")
                    )
                }
            })
    }

    fn code(self) -> u32 {
        Metric::ALL.iter().position(|m| *m == self).unwrap_or(0) as u32
    }

    fn from_code(code: u32) -> Option<Metric> {
        Metric::ALL.get(code as usize).copied()
    }
}

/// The length of a rollup.
pub const MINUTE_US: Micros = 60_000_000;

/// One server's samples in one minute: what the per-minute rollups store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// The minute's first microsecond.
    pub start: Micros,
    /// How many snapshots were sampled in it.
    pub samples: u32,
    /// The time those snapshots cover (samples × the sampling interval).
    pub covered_us: i64,
    /// By metric and its label's value ("" without one): the sum of the
    /// samples' counts (Mean), their maximum (Max) or the sum of the
    /// increments (Rate).
    pub values: BTreeMap<(Metric, String), f64>,
}

impl Minute {
    /// An empty minute that holds `at`.
    pub fn holding(at: Micros) -> Minute {
        Minute {
            start: at - at.rem_euclid(MINUTE_US),
            ..Minute::default()
        }
    }

    /// Whether `at` falls in this minute.
    pub fn holds(&self, at: Micros) -> bool {
        self.start <= at && at < self.start + MINUTE_US
    }

    fn add(&mut self, metric: Metric, label: &str, value: f64) {
        let slot = self.values.entry((metric, label.to_owned())).or_default();
        match metric.combine() {
            Combine::Mean | Combine::Rate => *slot += value,
            Combine::Max => *slot = slot.max(value),
        }
    }

    /// Adds one sampled snapshot: its sessions counted, and its pools.
    pub fn add_sample(&mut self, r: &Rollup, pools: &Pools, interval_us: i64) {
        let used = crate::query::utilisation(pools);
        self.samples += 1;
        self.covered_us += interval_us;
        for (state, n) in &r.by_state {
            self.add(Metric::Sessions, state, f64::from(*n));
        }
        for (kind, n) in &r.waiting_by_type {
            self.add(Metric::WaitingSessions, kind, *n as f64);
        }
        self.add(Metric::BlockedSessions, "", f64::from(r.blocked));
        self.add(
            Metric::MaxXactAge,
            "",
            r.longest_xact_us.unwrap_or(0) as f64 / 1e6,
        );
        if pools.slots.is_some() {
            self.add(Metric::PoolUtilisation, "slots", used.slots);
        }
        for u in &used.pgbouncer_pools {
            self.add(Metric::PoolUtilisation, "pgbouncer", *u);
        }
        for (u, pool) in used.client_pools.iter().zip(&pools.client_pools) {
            self.add(Metric::PoolUtilisation, &pool.pool_name, *u);
        }
    }

    /// Adds a snapshot's pg_stat_database increments.
    pub fn add_counters(&mut self, increments: &[v1::DatabaseCounters]) {
        let sum =
            |f: fn(&v1::DatabaseCounters) -> u64| increments.iter().map(f).sum::<u64>() as f64;
        self.add(Metric::Commits, "", sum(|d| d.xact_commit));
        self.add(Metric::Rollbacks, "", sum(|d| d.xact_rollback));
        self.add(Metric::Deadlocks, "", sum(|d| d.deadlocks));
    }

    /// The minute as the store keeps it (protobuf).
    pub fn encode(&self) -> Vec<u8> {
        StoredMinute {
            samples: self.samples,
            covered_us: self.covered_us,
            values: self
                .values
                .iter()
                .map(|((metric, label), value)| StoredValue {
                    metric: metric.code(),
                    label: label.clone(),
                    value: *value,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// A stored minute back; None when the bytes are not one.
    pub fn decode(start: Micros, bytes: &[u8]) -> Option<Minute> {
        let stored = StoredMinute::decode(bytes).ok()?;
        Some(Minute {
            start,
            samples: stored.samples,
            covered_us: stored.covered_us,
            values: stored
                .values
                .into_iter()
                .filter_map(|v| Some(((Metric::from_code(v.metric)?, v.label), v.value)))
                .collect(),
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredMinute {
    #[prost(uint32, tag = "1")]
    samples: u32,
    #[prost(int64, tag = "2")]
    covered_us: i64,
    #[prost(message, repeated, tag = "3")]
    values: Vec<StoredValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredValue {
    #[prost(uint32, tag = "1")]
    metric: u32,
    #[prost(string, tag = "2")]
    label: String,
    #[prost(double, tag = "3")]
    value: f64,
}

//! What one server's sessions add up to: the figures `/metrics` exposes per
//! server and `FleetSummary` adds up per label value.

use std::borrow::Borrow;
use std::sync::Arc;

use pgfleet_proto::model::{ArcStr, Session, SessionState};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;
use prost::Message;
use smallvec::SmallVec;

use crate::state::Pools;

/// One server's client sessions, counted.
///
/// Its counts are [`Counts`], held inline: a view's rollup is copied at every
/// sample (the published view keeps the one before). In `BTreeMap`s, copied
/// and then freed node by node, keeping the rollup took 13% of the
/// aggregator's samples in a `perf` profile at 5,000 servers; inline, 9%.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rollup {
    /// Client sessions (background processes are not counted).
    pub sessions: u32,
    /// Client sessions by state, in PostgreSQL's words ("unknown" for NULL).
    pub by_state: Counts<&'static str, u32, 6>,
    /// Client sessions by (database, state).
    pub by_database_state: Counts<(ArcStr, &'static str), u64, 6>,
    /// The oldest open transaction per database, in seconds.
    pub max_xact_age: Counts<ArcStr, f64, 2>,
    /// The oldest open transaction of the server, in microseconds.
    pub longest_xact_us: Option<i64>,
    /// Active sessions waiting, by wait_event_type. Idle sessions wait for
    /// their client (Client:ClientRead), which is not waiting on the server.
    pub waiting_by_type: Counts<ArcStr, u64, 4>,
    /// Active sessions waiting on anything.
    pub waiting: u32,
    /// Sessions waiting for a lock another session holds.
    pub blocked: u32,
    /// Per database, its open transactions and the earliest of their starts:
    /// what the ages above are counted from, and what gives
    /// [`Rollup::updated`] the next oldest when the oldest ends.
    oldest: Counts<ArcStr, Oldest, 2>,
}

impl Rollup {
    /// Counts `sessions`, as sampled at `at`.
    pub fn of(sessions: &[Arc<Session>], at: Micros) -> Rollup {
        let mut r = Rollup::default();
        for s in sessions {
            r.count(s);
        }
        r.ages(at);
        r
    }

    /// This rollup with the sessions that `left` (ended, or replaced by a
    /// new version) taken out and those that `joined` (new, or the new
    /// versions) counted, as sampled at `at`: the work of the sessions that
    /// changed rather than of every session, which [`Rollup::of`] reads again
    /// (each one a cache miss at thousands of servers). None when the
    /// earliest transactions a database's count keeps have all ended while
    /// others are open: only counting them all again finds the next oldest.
    pub fn updated(
        &self,
        left: &[Arc<Session>],
        joined: &[Arc<Session>],
        at: Micros,
    ) -> Option<Rollup> {
        let mut r = self.clone();
        // The new versions first: a session that changed is in both lists,
        // and counted in before its old version is taken out, its start
        // stays among those kept rather than leaving and coming back as one
        // left out.
        for s in joined {
            r.count(s);
        }
        for s in left {
            r.uncount(s)?;
        }
        r.ages(at);
        Some(r)
    }

    /// Counts one session in (a client session; background processes are not
    /// counted).
    fn count(&mut self, s: &Session) {
        if s.is_background() {
            return;
        }
        let state = state_of(s);
        self.sessions += 1;
        *self.by_state.entry(state) += 1;
        *self.by_database_state.entry((s.database.clone(), state)) += 1;
        if let Some(start) = s.xact_start_us {
            self.oldest.entry(s.database.clone()).began(start);
        }
        if waits(s) {
            self.waiting += 1;
            *self.waiting_by_type.entry(s.wait_event_type.clone()) += 1;
        }
        if !s.blocked_by.is_empty() {
            self.blocked += 1;
        }
    }

    /// Takes one session out; None when it was not counted in, or when the
    /// next oldest transaction of its database is not known.
    fn uncount(&mut self, s: &Session) -> Option<()> {
        if s.is_background() {
            return Some(());
        }
        let state = state_of(s);
        self.sessions = self.sessions.checked_sub(1)?;
        self.by_state.take(&state)?;
        self.by_database_state.take(&(s.database.clone(), state))?;
        if let Some(start) = s.xact_start_us {
            let oldest = self.oldest.get_mut(&*s.database)?;
            oldest.ended(start)?;
            if oldest.open == 0 {
                self.oldest.remove(&*s.database);
            }
        }
        if waits(s) {
            self.waiting = self.waiting.checked_sub(1)?;
            self.waiting_by_type.take(&*s.wait_event_type)?;
        }
        if !s.blocked_by.is_empty() {
            self.blocked = self.blocked.checked_sub(1)?;
        }
        Some(())
    }

    /// The ages of the oldest transactions at `at`.
    fn ages(&mut self, at: Micros) {
        let age = |first: Micros| (at - first).max(0);
        self.max_xact_age = self
            .oldest
            .iter()
            .filter_map(|(db, o)| Some((db.clone(), age(o.first()?) as f64 / 1e6)))
            .collect();
        self.longest_xact_us = self
            .oldest
            .values()
            .filter_map(|o| o.first())
            .map(age)
            .max();
    }
}

/// A few values by key, in key order, held inline (up to `N`; more go to
/// the heap): a server has few databases, states and wait types. In a short
/// list a key is found by `==` (given as an `ArcStr`, its pointer is
/// compared first), and its place in the order is looked for only when it
/// is new; a longer list is searched.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts<K, V, const N: usize>(SmallVec<[(K, V); N]>);

impl<K, V, const N: usize> Default for Counts<K, V, N> {
    fn default() -> Self {
        Counts(SmallVec::new())
    }
}

impl<K: Ord, V, const N: usize> Counts<K, V, N> {
    /// Where `key` is (Ok), or would go in key order (Err): found by a scan
    /// while the list is short, by a binary search once it is longer (a
    /// server with hundreds of databases).
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        const SCANNED: usize = 8;
        if self.0.len() > SCANNED {
            return self.0.binary_search_by(|(k, _)| k.borrow().cmp(key));
        }
        match self.0.iter().position(|(k, _)| k.borrow() == key) {
            Some(i) => Ok(i),
            None => Err(self.0.partition_point(|(k, _)| k.borrow() < key)),
        }
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(&mut self.0[i].1)
    }

    /// The value of `key`, added at its default (in key order) when new.
    fn entry(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (key, V::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(self.0.remove(i).1)
    }

    /// Takes one from the count of `key`, and the key when none are left;
    /// None when it had none.
    fn take<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<()>
    where
        K: Borrow<Q>,
        V: Copy + PartialOrd + From<u8> + std::ops::SubAssign,
    {
        let i = self.find(key).ok()?;
        if self.0[i].1 <= V::from(1) {
            self.0.remove(i);
        } else {
            self.0[i].1 -= V::from(1);
        }
        Some(())
    }

    /// The keys and values, in key order.
    pub fn iter(&self) -> Pairs<'_, K, V> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The values, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// The keys and values of [`Counts`], in key order.
pub type Pairs<'a, K, V> = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&(K, V)) -> (&K, &V)>;

impl<'a, K: Ord, V, const N: usize> IntoIterator for &'a Counts<K, V, N> {
    type Item = (&'a K, &'a V);
    type IntoIter = Pairs<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K, V, const N: usize> IntoIterator for Counts<K, V, N> {
    type Item = (K, V);
    type IntoIter = smallvec::IntoIter<[(K, V); N]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Pairs in key order (a key given twice keeps its last value).
impl<K: Ord, V: Default, const N: usize> FromIterator<(K, V)> for Counts<K, V, N> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut counts = Counts::default();
        for (k, v) in pairs {
            *counts.entry(k) = v;
        }
        counts
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V, const N: usize> std::ops::Index<&Q>
    for Counts<K, V, N>
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no value for the key")
    }
}

/// How many of its earliest transaction starts a database's [`Oldest`] keeps.
const OLDEST_KEPT: usize = 8;

/// A database's open transactions: how many there are, and the earliest of
/// their starts (at most [`OLDEST_KEPT`], each with how many sessions began
/// theirs then), in order. Every start not kept is later than those kept,
/// so the first kept is the oldest, and when it ends the next takes its
/// place: only when every one kept has ended while others are open must
/// the sessions be counted again. A plain array, so that the rollup copied
/// at every sample copies no allocation.
#[derive(Default, Clone)]
struct Oldest {
    /// Sessions in a transaction.
    open: u32,
    /// The earliest starts, `len` of them, in order.
    kept: [(Micros, u32); OLDEST_KEPT],
    len: usize,
}

impl Oldest {
    /// When the oldest open transaction began.
    fn first(&self) -> Option<Micros> {
        self.kept[..self.len].first().map(|&(start, _)| start)
    }

    /// Counts a transaction that began at `start`.
    fn began(&mut self, start: Micros) {
        let kept = &mut self.kept[..self.len];
        let complete = self.open == kept.iter().map(|&(_, n)| n).sum::<u32>();
        self.open += 1;
        match kept.binary_search_by_key(&start, |&(s, _)| s) {
            Ok(i) => kept[i].1 += 1,
            // Later than every start kept: kept only while nothing is left
            // out (what is left out must stay later than what is kept).
            Err(i) if i == self.len && !(complete && i < OLDEST_KEPT) => {}
            Err(i) => {
                // Earlier than one kept: the latest kept makes room if need be.
                self.len = (self.len + 1).min(OLDEST_KEPT);
                self.kept[i..self.len].rotate_right(1);
                self.kept[i] = (start, 1);
            }
        }
    }

    /// Takes out a transaction that began at `start`; None when the next
    /// oldest is not known (every start kept has ended, and others are
    /// open) or the counts disagree.
    fn ended(&mut self, start: Micros) -> Option<()> {
        let kept = &self.kept[..self.len];
        let left_out = self.open.checked_sub(kept.iter().map(|&(_, n)| n).sum())?;
        self.open = self.open.checked_sub(1)?;
        match kept.binary_search_by_key(&start, |&(s, _)| s) {
            Ok(i) => {
                self.kept[i].1 -= 1;
                if self.kept[i].1 == 0 {
                    self.kept[i..self.len].rotate_left(1);
                    self.len -= 1;
                }
            }
            // One of those left out.
            Err(i) if i == self.len && left_out > 0 => {}
            Err(_) => return None,
        }
        (self.len > 0 || self.open == 0).then_some(())
    }
}

/// The starts kept, not the room after them.
impl std::fmt::Debug for Oldest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oldest")
            .field("open", &self.open)
            .field("kept", &&self.kept[..self.len])
            .finish()
    }
}

/// Two counts agree on the oldest transaction and on how many are open;
/// which later starts each keeps depends on the order sessions came in.
impl PartialEq for Oldest {
    fn eq(&self, other: &Oldest) -> bool {
        self.open == other.open && self.kept[..self.len.min(1)] == other.kept[..other.len.min(1)]
    }
}

/// A client session's state, in PostgreSQL's words.
fn state_of(s: &Session) -> &'static str {
    state_name(s.state)
}

/// A state as a rollup counts it: PostgreSQL's word, "unknown" for NULL.
pub fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Unknown => "unknown",
        other => other.as_pg(),
    }
}

/// Whether a client session waits on the server.
fn waits(s: &Session) -> bool {
    s.state == SessionState::Active && !s.wait_event_type.is_empty()
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
    /// Requests queued for a connection, by pool: an application pool's
    /// pending requests, PgBouncer's waiting clients.
    PoolWaiting,
    /// How long PgBouncer's oldest waiting client had waited, in seconds.
    PoolMaxWait,
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
    /// New ones go last: a stored minute names its metrics by position.
    pub const ALL: [Metric; 10] = [
        Metric::Sessions,
        Metric::WaitingSessions,
        Metric::BlockedSessions,
        Metric::MaxXactAge,
        Metric::PoolUtilisation,
        Metric::Commits,
        Metric::Rollbacks,
        Metric::Deadlocks,
        Metric::PoolWaiting,
        Metric::PoolMaxWait,
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
            Metric::PoolWaiting => "pool_waiting",
            Metric::PoolMaxWait => "pool_max_wait_seconds",
        }
    }

    /// The name of its own label, when its values are split by one.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Metric::Sessions => Some("state"),
            Metric::WaitingSessions => Some("wait_event_type"),
            Metric::PoolUtilisation | Metric::PoolWaiting | Metric::PoolMaxWait => Some("pool"),
            _ => None,
        }
    }

    /// How its values combine.
    pub fn combine(self) -> Combine {
        match self {
            Metric::Sessions | Metric::WaitingSessions | Metric::BlockedSessions => Combine::Mean,
            Metric::MaxXactAge
            | Metric::PoolUtilisation
            | Metric::PoolWaiting
            | Metric::PoolMaxWait => Combine::Max,
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
    pub values: Values,
}

/// A minute's values by metric and label, in that order.
///
/// The live view copies its server's open minute at every sample (readers
/// hold the one before), so this is a short sorted list whose labels are
/// shared: a copy is one allocation, where a map keyed by `String` was an
/// allocation per value, and a value found adds none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Values(Vec<(Metric, ArcStr, f64)>);

impl Values {
    /// Where (metric, label) is, or would go.
    fn find(&self, metric: Metric, label: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(m, l, _)| (*m, &**l).cmp(&(metric, label)))
    }

    /// The value of (metric, label), 0 when it has none, to change.
    pub fn slot(&mut self, metric: Metric, label: &str) -> &mut f64 {
        let i = match self.find(metric, label) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (metric, label.into(), 0.0));
                i
            }
        };
        &mut self.0[i].2
    }

    /// Sets (metric, label) to `value`.
    pub fn insert(&mut self, metric: Metric, label: &str, value: f64) {
        *self.slot(metric, label) = value;
    }

    /// Every value, by metric and label.
    pub fn iter(&self) -> impl Iterator<Item = (Metric, &ArcStr, f64)> {
        self.0.iter().map(|(m, l, v)| (*m, l, *v))
    }

    /// `metric`'s values, by label.
    pub fn of(&self, metric: Metric) -> impl Iterator<Item = (&ArcStr, f64)> {
        let start = self.0.partition_point(|(m, ..)| *m < metric);
        self.0[start..]
            .iter()
            .take_while(move |(m, ..)| *m == metric)
            .map(|(_, l, v)| (l, *v))
    }
}

impl<'a> FromIterator<(Metric, &'a str, f64)> for Values {
    fn from_iter<I: IntoIterator<Item = (Metric, &'a str, f64)>>(values: I) -> Values {
        let mut out = Values::default();
        for (metric, label, value) in values {
            out.insert(metric, label, value);
        }
        out
    }
}

/// Each server's minutes of each hour before `before`, added up in order of
/// start: what the stores' hours are checked against.
#[cfg(test)]
pub(crate) fn hours_of(
    minutes: &[(String, Minute)],
    before: Micros,
) -> std::collections::BTreeMap<(Micros, String), Minute> {
    use crate::load::hours::HOUR_US;
    let mut sorted: Vec<&(String, Minute)> =
        minutes.iter().filter(|(_, m)| m.start < before).collect();
    sorted.sort_by_key(|(s, m)| (m.start, s.clone()));
    let mut hours = std::collections::BTreeMap::new();
    for (server, m) in sorted {
        let hour = m.start - m.start.rem_euclid(HOUR_US);
        hours
            .entry((hour, server.clone()))
            .or_insert_with(|| Minute {
                start: hour,
                ..Minute::default()
            })
            .absorb(m);
    }
    hours
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

    /// Adds `other` in, as if its samples had been this one's: counts and
    /// increments summed, maxima kept. A server's minutes of an hour so make
    /// its hour.
    pub fn absorb(&mut self, other: &Minute) {
        self.samples += other.samples;
        self.covered_us += other.covered_us;
        for (metric, label, value) in other.values.iter() {
            self.add(metric, label, value);
        }
    }

    fn add(&mut self, metric: Metric, label: &str, value: f64) {
        let slot = self.values.slot(metric, label);
        match metric.combine() {
            Combine::Mean | Combine::Rate => *slot += value,
            Combine::Max => *slot = slot.max(value),
        }
    }

    /// Adds one sampled snapshot: its sessions counted, and its pools.
    pub fn add_sample(&mut self, r: &Rollup, pools: &Pools, interval_us: i64) {
        let used = pools.utilisation();
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
            self.add(
                Metric::PoolWaiting,
                &pool.pool_name,
                f64::from(pool.pending_requests),
            );
        }
        // The queue in front of PgBouncer: its waiting clients over all its
        // pools, and the longest wait among them.
        if let Some(bouncer) = pools.pgbouncer.as_ref().filter(|b| b.up) {
            let waiting: u32 = bouncer
                .pools
                .iter()
                .map(|p| p.client_waiting_connections)
                .sum();
            let longest = bouncer
                .pools
                .iter()
                .map(|p| p.client_maxwait_seconds)
                .fold(0.0, f64::max);
            self.add(Metric::PoolWaiting, "pgbouncer", f64::from(waiting));
            self.add(Metric::PoolMaxWait, "pgbouncer", longest);
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
                .map(|(metric, label, value)| StoredValue {
                    metric: metric.code(),
                    label: label.to_string(),
                    value,
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
                .iter()
                .filter_map(|v| Some((Metric::from_code(v.metric)?, v.label.as_str(), v.value)))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_minutes_values_are_found_by_metric_and_label_in_order() {
        let mut v = Values::default();
        for (metric, label, value) in [
            (Metric::Sessions, "idle", 2.0),
            (Metric::BlockedSessions, "", 1.0),
            (Metric::Sessions, "active", 3.0),
            (Metric::Sessions, "idle", 5.0),
        ] {
            *v.slot(metric, label) += value;
        }
        assert_eq!(v.iter().count(), 3);
        // (Sessions, "idle") found and added to; no value made up.
        let sessions: Vec<(String, f64)> = v
            .of(Metric::Sessions)
            .map(|(l, x)| (l.to_string(), x))
            .collect();
        assert_eq!(sessions, [("active".into(), 3.0), ("idle".into(), 7.0)]);
        assert_eq!(v.of(Metric::MaxXactAge).count(), 0);
        let all: Vec<Metric> = v.iter().map(|(m, ..)| m).collect();
        assert!(all.is_sorted(), "{all:?}");
        // Stored and read back whole.
        let m = Minute {
            start: 60_000_000,
            samples: 1,
            covered_us: 1_000_000,
            values: v,
        };
        assert_eq!(Minute::decode(m.start, &m.encode()), Some(m));
    }

    #[test]
    fn counts_keep_their_keys_in_order_inline_and_beyond() {
        let mut c: Counts<ArcStr, u64, 2> = Counts::default();
        let names = ["orders", "billing", "web", "auth", "billing"];
        for name in names {
            // Each a string of its own: found by its text too.
            *c.entry(name.into()) += 1;
        }
        let got: Vec<(String, u64)> = c.iter().map(|(k, &n)| (k.to_string(), n)).collect();
        let want = [("auth", 1), ("billing", 2), ("orders", 1), ("web", 1)];
        assert_eq!(got, want.map(|(k, n)| (k.to_owned(), n)));
        assert_eq!(c.get("billing"), Some(&2));
        assert_eq!(c["web"], 1);
        c.take("billing").unwrap();
        c.take("web").unwrap();
        assert_eq!(c.take("web"), None, "a key with no count left is gone");
        assert_eq!(c.get("billing"), Some(&1));
        let collected: Counts<ArcStr, u64, 2> = [("b".into(), 2), ("a".into(), 1), ("b".into(), 3)]
            .into_iter()
            .collect();
        let got: Vec<(String, u64)> = collected
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        assert_eq!(got, [("a".to_owned(), 1), ("b".to_owned(), 3)]);
    }

    proptest::proptest! {
        /// Any adds and takes, of few keys or many, each key given as a
        /// string of its own: the same counts, in the same order, as a
        /// BTreeMap's.
        #[test]
        fn counts_count_as_a_btreemap_does(
            ops in proptest::collection::vec((0u8..40, proptest::bool::weighted(0.6)), 0..300),
            keys in 1u8..40,
        ) {
            let mut counts: Counts<(ArcStr, &'static str), u64, 3> = Counts::default();
            let mut model: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
            for (k, add) in ops {
                let state = if k % 2 == 0 { "active" } else { "idle" };
                let name = format!("db{}", k % keys);
                let key: (ArcStr, &'static str) = (name.as_str().into(), state);
                if add {
                    *counts.entry(key) += 1;
                    *model.entry((name, state)).or_default() += 1;
                } else {
                    let had = model.get(&(name.clone(), state)).copied();
                    proptest::prop_assert_eq!(counts.take(&key).is_some(), had.is_some());
                    match had {
                        Some(1) => { model.remove(&(name, state)); }
                        Some(_) => *model.get_mut(&(name, state)).unwrap() -= 1,
                        None => {}
                    }
                }
                let got: Vec<(String, &str, u64)> =
                    counts.iter().map(|((d, s), &n)| (d.to_string(), *s, n)).collect();
                let want: Vec<(String, &str, u64)> =
                    model.iter().map(|((d, s), &n)| (d.clone(), *s, n)).collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    fn in_transaction(pid: i32, db: &str, start: Micros) -> Arc<Session> {
        Arc::new(Session {
            pid,
            state: SessionState::IdleInTransaction,
            database: db.into(),
            xact_start_us: Some(start),
            backend_type: "client backend".into(),
            ..Default::default()
        })
    }

    #[test]
    fn the_next_oldest_transaction_is_known_without_counting_again() {
        // Twenty transactions of distinct starts end, oldest first: the
        // first seven leave an oldest the count kept; the eighth leaves
        // none kept, and the rest are counted again.
        let mut sessions: Vec<_> = (0..20)
            .map(|i| in_transaction(i, "orders", 1_000 + i64::from(i)))
            .collect();
        let mut r = Rollup::of(&sessions, 5_000);
        for ended in 0..20 {
            let left = sessions.remove(0);
            let updated = r.updated(&[left], &[], 5_000);
            assert_eq!(
                updated.is_some(),
                ended % 8 != 7,
                "after {} ended",
                ended + 1
            );
            r = updated.unwrap_or_else(|| Rollup::of(&sessions, 5_000));
            assert_eq!(r, Rollup::of(&sessions, 5_000));
            assert_eq!(
                r.longest_xact_us,
                sessions.first().map(|s| 5_000 - s.xact_start_us.unwrap())
            );
        }
    }

    #[test]
    fn a_rollup_kept_up_to_date_counts_as_counting_every_session_again() {
        // Transactions begin, end and change, up to four sessions at once,
        // in two databases, many of them at one start; a changed session
        // mostly keeps its transaction. After each change the rollup kept up
        // to date is the one counted from every session, and each database
        // keeps its earliest starts with their exact counts.
        let mut next = crate::load::tests::below(0x2545_f491_4f6c_dd1d);
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        let mut r = Rollup::default();
        let (mut recounts, mut pid) = (0, 0);
        for _ in 0..5_000 {
            let (mut left, mut joined) = (Vec::new(), Vec::new());
            for _ in 0..1 + next(4) {
                let db = ["orders", "billing"][next(2) as usize];
                let start = 1_000 + next(40) as i64;
                match next(3) {
                    0 if sessions.len() < 60 => {
                        pid += 1;
                        joined.push(in_transaction(pid, db, start));
                    }
                    1 if !sessions.is_empty() => {
                        left.push(sessions.remove(next(sessions.len() as u64) as usize));
                    }
                    _ if !sessions.is_empty() => {
                        let old = sessions.remove(next(sessions.len() as u64) as usize);
                        let mut new = (*old).clone();
                        new.state = SessionState::Active;
                        new.xact_start_us = match next(8) {
                            0 => None,
                            1 => Some(start),
                            _ => old.xact_start_us,
                        };
                        left.push(old);
                        joined.push(Arc::new(new));
                    }
                    _ => {}
                }
            }
            sessions.extend(joined.iter().cloned());
            r = r.updated(&left, &joined, 9_000).unwrap_or_else(|| {
                recounts += 1;
                Rollup::of(&sessions, 9_000)
            });
            assert_eq!(r, Rollup::of(&sessions, 9_000));
            for (db, oldest) in &r.oldest {
                let mut starts: BTreeMap<Micros, u32> = BTreeMap::new();
                for s in sessions.iter().filter(|s| &s.database == db) {
                    *starts
                        .entry(s.xact_start_us.unwrap_or(Micros::MAX))
                        .or_default() += 1;
                }
                starts.remove(&Micros::MAX);
                let earliest: Vec<_> = starts.into_iter().take(oldest.len).collect();
                assert_eq!(oldest.kept[..oldest.len], earliest[..], "{db}");
            }
        }
        assert!(
            recounts < 50,
            "counted again {recounts} times in 5,000 changes"
        );
    }

    #[test]
    fn a_busy_database_keeps_its_oldest_when_all_its_sessions_change_at_once() {
        // The eight oldest transactions' sessions all run a query in one
        // sample (a changed session is in both lists): their starts stay.
        let sessions: Vec<_> = (0..20)
            .map(|i| in_transaction(i, "orders", 1_000 + i64::from(i)))
            .collect();
        let r = Rollup::of(&sessions, 5_000);
        let changed: Vec<_> = sessions[..8]
            .iter()
            .map(|s| {
                Arc::new(Session {
                    state: SessionState::Active,
                    ..(**s).clone()
                })
            })
            .collect();
        let updated = r
            .updated(&sessions[..8], &changed, 5_000)
            .expect("the oldest is still known");
        let now: Vec<_> = changed.iter().chain(&sessions[8..]).cloned().collect();
        assert_eq!(updated, Rollup::of(&now, 5_000));
        assert_eq!(updated.oldest["orders"].len, OLDEST_KEPT);
    }

    #[test]
    fn sessions_are_counted_by_state_database_and_wait() {
        let orders: ArcStr = "orders".into();
        let s = |state, db: &ArcStr, wait: &str, xact: Option<i64>, blocked: bool| {
            Arc::new(Session {
                state,
                database: db.clone(),
                wait_event_type: wait.into(),
                xact_start_us: xact,
                blocked_by: if blocked { vec![1] } else { Vec::new() },
                backend_type: "client backend".into(),
                ..Default::default()
            })
        };
        let sessions = vec![
            s(SessionState::Active, &orders, "Lock", Some(4_000_000), true),
            s(
                SessionState::Active,
                &"orders".into(),
                "IO",
                Some(9_000_000),
                false,
            ),
            s(SessionState::Idle, &"billing".into(), "Client", None, false),
            s(
                SessionState::IdleInTransaction,
                &orders,
                "Client",
                Some(1_000_000),
                false,
            ),
            Arc::new(Session {
                backend_type: "checkpointer".into(),
                ..Default::default()
            }),
        ];
        let r = Rollup::of(&sessions, 10_000_000);
        assert_eq!(r.sessions, 4);
        assert_eq!(
            r.by_state.into_iter().collect::<Vec<_>>(),
            [("active", 2), ("idle", 1), ("idle in transaction", 1)]
        );
        let by_db: Vec<(String, &str, u64)> = r
            .by_database_state
            .into_iter()
            .map(|((d, s), n)| (d.to_string(), s, n))
            .collect();
        assert_eq!(
            by_db,
            [
                ("billing".to_owned(), "idle", 1),
                ("orders".to_owned(), "active", 2),
                ("orders".to_owned(), "idle in transaction", 1)
            ]
        );
        assert_eq!(r.max_xact_age.get("orders"), Some(&9.0));
        assert_eq!(r.longest_xact_us, Some(9_000_000));
        assert_eq!((r.waiting, r.blocked), (2, 1));
        assert_eq!(
            r.waiting_by_type
                .into_iter()
                .map(|(t, n)| (t.to_string(), n))
                .collect::<Vec<_>>(),
            [("IO".to_owned(), 1), ("Lock".to_owned(), 1)]
        );
    }
}

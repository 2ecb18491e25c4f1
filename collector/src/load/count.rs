//! Counting one server's samples into its open buckets: the aggregator keeps
//! a [`Counter`] per server and gives it every sample it applies.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::Micros;

use super::churn::host;
use super::{Bucket, COARSE_US, Class, FINE_US, Tuple};

/// How many fine buckets [`LoadNow::recent`] keeps: five minutes.
pub const RECENT: usize = 30;

/// What the live view shows of a server's load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadNow {
    /// The last closed fine bucket's load.
    pub load: f64,
    /// The same by wait type (`CPU` when not waiting), largest first.
    pub by_wait_type: Vec<(Arc<str>, f64)>,
    /// The load of the last [`RECENT`] fine buckets with samples, oldest
    /// first.
    pub recent: VecDeque<f64>,
    /// Client sessions started and ended since the collector started.
    pub sessions_started_total: u64,
    pub sessions_ended_total: u64,
}

/// One server's open buckets.
#[derive(Debug, Default)]
pub struct Counter {
    /// The open fine bucket: its samples, churn and interval, without tuples
    /// (they are counted in `counts` until it closes).
    fine: Option<Bucket>,
    /// The open fine bucket's counts, by tuple with the client as sampled
    /// (its host is taken when the bucket closes).
    counts: HashMap<Tuple, u32>,
    /// What a collector that stopped within the open fine bucket had
    /// stored of it: added to the bucket's row, not again to the coarse one.
    fine_base: Option<Bucket>,
    /// The open coarse bucket, with every closed fine bucket in it.
    coarse: Option<Bucket>,
    /// What the live view shows.
    now: LoadNow,
}

/// The class a session counts in at a sample, if any.
fn class(s: &Session) -> Option<Class> {
    match &*s.backend_type {
        "client backend" | "parallel worker" => match s.state {
            SessionState::Active | SessionState::Fastpath => Some(Class::Active),
            SessionState::IdleInTransaction | SessionState::IdleInTransactionAborted => {
                Some(Class::IdleInTransaction)
            }
            _ => None,
        },
        // Not visible to the agent's role: nothing is known of it.
        "" => None,
        // A background process at work, rather than idle in its main loop.
        _ if s.state != SessionState::Idle && &*s.wait_event_type != "Activity" => {
            Some(Class::Background)
        }
        _ => None,
    }
}

thread_local! {
    static CPU: Arc<str> = "CPU".into();
    static EMPTY: Arc<str> = "".into();
}

impl Counter {
    /// Counts one sample of a server that is up, taken at `at`: `sessions`
    /// as sampled, after `before` (both in key order), each sample covering
    /// `interval_us`. Buckets that close are added to `closed`; `text` is
    /// given each query the open bucket had not seen, with its text.
    pub fn sample(
        &mut self,
        at: Micros,
        interval_us: Micros,
        before: &[Arc<Session>],
        sessions: &[Arc<Session>],
        closed: &mut Vec<Bucket>,
        text: &mut impl FnMut(u64, &str),
    ) {
        self.advance(at, closed);
        let fine = self
            .fine
            .get_or_insert_with(|| Bucket::holding(at, FINE_US));
        fine.samples += 1;
        fine.covered_us += interval_us;
        let (started, ended) = fine.churn.diff(before, sessions, at);
        self.now.sessions_started_total += u64::from(started);
        self.now.sessions_ended_total += u64::from(ended);
        let (cpu, empty) = (CPU.with(Arc::clone), EMPTY.with(Arc::clone));
        for s in sessions {
            let Some(class) = class(s) else { continue };
            let waiting = !s.wait_event_type.is_empty();
            let tuple = Tuple {
                class,
                wait_type: if waiting {
                    s.wait_event_type.clone()
                } else {
                    cpu.clone()
                },
                wait_event: if waiting {
                    s.wait_event.clone()
                } else {
                    empty.clone()
                },
                query: s.fingerprint,
                user: s.user.clone(),
                database: s.database.clone(),
                application: s.application_name.clone(),
                client: s.client.clone(),
                backend_type: s.backend_type.clone(),
            };
            match self.counts.entry(tuple) {
                std::collections::hash_map::Entry::Occupied(mut o) => *o.get_mut() += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    text(s.fingerprint, &s.query);
                    v.insert(1);
                }
            }
        }
    }

    /// Adds the sessions PostgreSQL established by database (`increments`
    /// of an up sample at `at`, counted after [`Counter::sample`]).
    pub fn established(&mut self, at: Micros, increments: &[(String, u64)]) {
        let fine = self
            .fine
            .get_or_insert_with(|| Bucket::holding(at, FINE_US));
        for (database, n) in increments {
            fine.churn
                .establish(database, u32::try_from(*n).unwrap_or(u32::MAX));
        }
    }

    /// Closes the open buckets that end at or before `at` (a sample, up or
    /// down, at `at`), adding them to `closed`.
    pub fn advance(&mut self, at: Micros, closed: &mut Vec<Bucket>) {
        if self.fine.as_ref().is_some_and(|f| at >= f.start + f.len_us) {
            self.close_fine(closed);
        }
        if self
            .coarse
            .as_ref()
            .is_some_and(|c| at >= c.start + c.len_us)
            && let Some(mut coarse) = self.coarse.take()
        {
            coarse.bound();
            closed.push(coarse);
        }
    }

    fn close_fine(&mut self, closed: &mut Vec<Bucket>) {
        let Some(mut fine) = self.fine.take() else {
            return;
        };
        let mut by_host: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        fine.tuples = self
            .counts
            .drain()
            .map(|(mut t, n)| {
                t.client = by_host
                    .entry(t.client.clone())
                    .or_insert_with(|| host(&t.client).into())
                    .clone();
                (t, n)
            })
            .collect();
        fine.bound();
        let coarse = self
            .coarse
            .get_or_insert_with(|| Bucket::holding(fine.start, COARSE_US));
        if coarse.holds(fine.start) {
            coarse.absorb(&fine);
        }
        self.show(&fine);
        if let Some(base) = self.fine_base.take() {
            if base.start == fine.start {
                fine.absorb(&base);
                fine.bound();
            }
        }
        if fine.samples > 0 {
            closed.push(fine);
        }
    }

    fn show(&mut self, fine: &Bucket) {
        if fine.samples == 0 {
            return;
        }
        let mut by_type: Vec<(Arc<str>, f64)> = Vec::new();
        for (t, n) in fine.tuples.iter().filter(|(t, _)| t.class == Class::Active) {
            let share = f64::from(*n) / f64::from(fine.samples);
            match by_type.iter_mut().find(|(k, _)| *k == t.wait_type) {
                Some((_, v)) => *v += share,
                None => by_type.push((t.wait_type.clone(), share)),
            }
        }
        by_type.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self.now.load = by_type.iter().map(|(_, v)| v).sum();
        self.now.by_wait_type = by_type;
        if self.now.recent.len() == RECENT {
            self.now.recent.pop_front();
        }
        self.now.recent.push_back(self.now.load);
    }

    /// What the live view shows.
    pub fn now(&self) -> &LoadNow {
        &self.now
    }

    /// The open buckets as they stand, for a collector that stops: the fine
    /// one, and the coarse one with it.
    pub fn open(&self) -> Vec<Bucket> {
        let mut copy = Counter {
            fine: self.fine.clone(),
            counts: self.counts.clone(),
            fine_base: self.fine_base.clone(),
            coarse: self.coarse.clone(),
            now: LoadNow::default(),
        };
        let mut out = Vec::new();
        copy.close_fine(&mut out);
        if let Some(mut coarse) = copy.coarse.take() {
            coarse.bound();
            out.push(coarse);
        }
        out.retain(|b| b.samples > 0);
        out
    }

    /// Carries on from what a collector that stopped stored of the buckets
    /// open at `now`.
    pub fn restore(&mut self, stored: Vec<Bucket>, now: Micros) {
        for b in stored {
            if !b.holds(now) {
                continue;
            }
            if b.len_us == FINE_US {
                self.fine_base = Some(b);
            } else if b.len_us == COARSE_US {
                self.coarse = Some(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, state: SessionState, wait: (&str, &str), query: u64) -> Arc<Session> {
        Arc::new(Session {
            pid,
            backend_start_us: 1,
            state,
            wait_event_type: wait.0.into(),
            wait_event: wait.1.into(),
            fingerprint: query,
            user: "app".into(),
            database: "orders".into(),
            application_name: "web".into(),
            client: "10.0.0.7:5000".into(),
            backend_type: "client backend".into(),
            ..Default::default()
        })
    }

    #[test]
    fn active_sessions_count_by_wait_and_close_into_fine_and_coarse_buckets() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let sessions = vec![
            session(1, SessionState::Active, ("", ""), 7),
            session(2, SessionState::Active, ("Lock", "transactionid"), 8),
            session(3, SessionState::Idle, ("Client", "ClientRead"), 0),
            session(
                4,
                SessionState::IdleInTransaction,
                ("Client", "ClientRead"),
                9,
            ),
            Arc::new(Session {
                pid: 5,
                backend_type: "checkpointer".into(),
                wait_event_type: "Activity".into(),
                ..Default::default()
            }),
        ];
        let mut c = Counter::default();
        let mut closed = Vec::new();
        for s in 0..20 {
            let at = t0 + s * 1_000_000;
            c.sample(
                at,
                1_000_000,
                &sessions,
                &sessions,
                &mut closed,
                &mut |_, _| {},
            );
        }
        // Two fine buckets closed (0–10 s, 10–20 s is still open at 19 s).
        assert_eq!(closed.len(), 1);
        let fine = &closed[0];
        assert_eq!((fine.start, fine.samples), (t0, 10));
        assert_eq!(fine.average(Class::Active), 2.0);
        assert_eq!(fine.average(Class::IdleInTransaction), 1.0);
        assert_eq!(fine.average(Class::Background), 0.0);
        assert!(fine.tuples.iter().all(|(t, _)| &*t.client == "10.0.0.7"));
        let now = c.now();
        assert_eq!(now.load, 2.0);
        let types: Vec<(&str, f64)> = now.by_wait_type.iter().map(|(k, v)| (&**k, *v)).collect();
        assert_eq!(types, [("CPU", 1.0), ("Lock", 1.0)]);
        // A sample a minute later closes the rest.
        closed.clear();
        c.sample(
            t0 + COARSE_US,
            1_000_000,
            &sessions,
            &sessions,
            &mut closed,
            &mut |_, _| {},
        );
        let lens: Vec<(Micros, u32)> = closed.iter().map(|b| (b.len_us, b.samples)).collect();
        assert_eq!(lens, [(FINE_US, 10), (COARSE_US, 20)]);
        assert_eq!(closed[1].average(Class::Active), 2.0);
    }

    #[test]
    fn a_stopped_collector_carries_on_without_counting_twice() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let sessions = vec![session(1, SessionState::Active, ("", ""), 7)];
        let mut c = Counter::default();
        let mut closed = Vec::new();
        for s in 0..15 {
            c.sample(
                t0 + s * 1_000_000,
                1_000_000,
                &[],
                &sessions,
                &mut closed,
                &mut |_, _| {},
            );
        }
        let stored = c.open();
        assert_eq!(
            stored.iter().map(|b| b.samples).collect::<Vec<_>>(),
            [5, 15]
        );
        let mut after = Counter::default();
        after.restore(stored, t0 + 15_500_000);
        closed.clear();
        for s in 16..61 {
            after.sample(
                t0 + s * 1_000_000,
                1_000_000,
                &sessions,
                &sessions,
                &mut closed,
                &mut |_, _| {},
            );
        }
        let fine: Vec<u32> = closed
            .iter()
            .filter(|b| b.len_us == FINE_US)
            .map(|b| b.samples)
            .collect();
        assert_eq!(fine, [9, 10, 10, 10, 10], "the first one adds the stored 5");
        let coarse = closed.iter().find(|b| b.len_us == COARSE_US).unwrap();
        assert_eq!(
            coarse.samples, 59,
            "one sample (15 s) missed in the restart"
        );
    }
}

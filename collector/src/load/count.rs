//! Counting one server's samples into its open buckets: the aggregator keeps
//! a [`Counter`] per server and gives it every sample it applies.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::Micros;

use super::churn::host;
use super::hours::{HourTotals, MinuteTotals};
use super::statements::{Read, STATEMENTS_US};
use super::{Bucket, COARSE_US, Class, FINE_US, MinuteLoad, Tuple};

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

/// What a counter closed, for the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A minute, and its hour's totals as they stand with it.
    Minute(MinuteLoad, HourTotals),
    /// An interval of statement increments, from its start.
    Statements(Micros, Read),
}

/// How many 10 s buckets a minute holds.
const SLOTS: usize = (COARSE_US / FINE_US) as usize;

/// One server's open buckets.
#[derive(Debug, Default)]
pub struct Counter {
    /// The open minute: its 10 s buckets' samples, and its churn.
    open: Option<Open>,
    /// The open minute's counts, by tuple with the client as sampled (its
    /// host is taken when the minute closes), a count per 10 s bucket.
    counts: HashMap<Sampled, Entry, BuildHasherDefault<WordHasher>>,
    /// What a collector that stopped stored of the open minute's counts.
    restored: Option<MinuteLoad>,
    /// The open hour's minutes.
    hour: Option<HourTotals>,
    /// The open interval of statement increments.
    statements: Option<(Micros, Read)>,
    /// What the live view shows.
    now: LoadNow,
    /// Whether `now` changed since [`Counter::shown`] was last asked.
    changed: bool,
}

/// The open minute, without its counts.
#[derive(Debug, Clone)]
struct Open {
    start: Micros,
    /// Each 10 s bucket's samples and the time they cover.
    slots: [(u32, Micros); SLOTS],
    /// The bucket samples go to: those before it are closed.
    current: usize,
    churn: super::Churn,
}

impl Open {
    fn holding(at: Micros) -> Open {
        Open {
            start: at - at.rem_euclid(COARSE_US),
            slots: [(0, 0); SLOTS],
            current: 0,
            churn: super::Churn::default(),
        }
    }

    /// The 10 s bucket of the minute that holds `at`.
    fn slot(&self, at: Micros) -> usize {
        (((at - self.start).max(0) / FINE_US) as usize).min(SLOTS - 1)
    }
}

/// A tuple's counts in the open minute, one per 10 s bucket.
#[derive(Debug, Clone)]
struct Entry {
    tuple: Tuple,
    counts: [u32; SLOTS],
}

/// A tuple as sampled, by its strings' addresses rather than their bytes: a
/// stream's sessions share their strings from one sample to the next, so it
/// is found without reading or copying them (the tuple it stands for holds
/// the strings, so no address is reused while it is counted). Tuples with
/// equal strings at other addresses are summed when the bucket closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sampled {
    class: Class,
    query: u64,
    /// wait type, wait event, user, database, application, client, backend
    /// type.
    strings: [usize; 7],
}

impl std::hash::Hash for Sampled {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.query ^ self.class as u64);
        for a in self.strings {
            state.write_usize(a);
        }
    }
}

fn address(s: &Arc<str>) -> usize {
    Arc::as_ptr(s) as *const u8 as usize
}

/// A hash for keys made of a few machine words (a [`Sampled`]): a multiply and a rotate per word, where SipHash would take
/// ten times as long on every active session of every sample.
#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
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
    /// given each query the open minute had not seen, with its text.
    pub fn sample(
        &mut self,
        at: Micros,
        interval_us: Micros,
        before: &[Arc<Session>],
        sessions: &[Arc<Session>],
        closed: &mut Vec<Closed>,
        text: &mut impl FnMut(u64, &str),
    ) {
        self.advance(at, closed);
        let open = self.open.get_or_insert_with(|| Open::holding(at));
        let slot = open.slot(at);
        open.slots[slot].0 += 1;
        open.slots[slot].1 += interval_us;
        let (started, ended) = open.churn.diff(before, sessions, at);
        self.now.sessions_started_total += u64::from(started);
        self.now.sessions_ended_total += u64::from(ended);
        let (cpu, empty) = (CPU.with(Arc::clone), EMPTY.with(Arc::clone));
        for s in sessions {
            let Some(class) = class(s) else { continue };
            let (wait_type, wait_event) = if s.wait_event_type.is_empty() {
                (&cpu, &empty)
            } else {
                (&s.wait_event_type, &s.wait_event)
            };
            let key = Sampled {
                class,
                query: s.fingerprint,
                strings: [
                    address(wait_type),
                    address(wait_event),
                    address(&s.user),
                    address(&s.database),
                    address(&s.application_name),
                    address(&s.client),
                    address(&s.backend_type),
                ],
            };
            match self.counts.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().counts[slot] += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    text(s.fingerprint, &s.query);
                    let mut counts = [0; SLOTS];
                    counts[slot] = 1;
                    v.insert(Entry {
                        tuple: Tuple {
                            class,
                            wait_type: wait_type.clone(),
                            wait_event: wait_event.clone(),
                            query: s.fingerprint,
                            user: s.user.clone(),
                            database: s.database.clone(),
                            application: s.application_name.clone(),
                            client: s.client.clone(),
                            backend_type: s.backend_type.clone(),
                        },
                        counts,
                    });
                }
            }
        }
    }

    /// Adds the sessions PostgreSQL established by database (`increments`
    /// of an up sample at `at`, counted after [`Counter::sample`]).
    pub fn established(&mut self, at: Micros, increments: &[(String, u64)]) {
        let churn = &mut self.open.get_or_insert_with(|| Open::holding(at)).churn;
        for (database, n) in increments {
            churn.establish(database, u32::try_from(*n).unwrap_or(u32::MAX));
        }
    }

    /// Adds a read of pg_stat_statements taken at `at`.
    pub fn statements(&mut self, at: Micros, read: &Read, closed: &mut Vec<Closed>) {
        if let Some((start, _)) = &self.statements
            && at >= start + STATEMENTS_US
            && let Some((start, mut sum)) = self.statements.take()
        {
            sum.bound();
            closed.push(Closed::Statements(start, sum));
        }
        let (_, sum) = self
            .statements
            .get_or_insert_with(|| (at - at.rem_euclid(STATEMENTS_US), Read::default()));
        sum.absorb(read);
    }

    /// Closes the open buckets that end at or before `at` (a sample, up or
    /// down, at `at`), adding them to `closed`.
    pub fn advance(&mut self, at: Micros, closed: &mut Vec<Closed>) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        if at >= open.start + COARSE_US {
            self.close_minute(open, closed);
            return;
        }
        let slot = open.slot(at);
        while open.current < slot {
            self.show(&open, open.current);
            open.current += 1;
        }
        self.open = Some(open);
    }

    /// Closes the open minute (its last 10 s bucket shown), with its hour.
    fn close_minute(&mut self, open: Open, closed: &mut Vec<Closed>) {
        self.show(&open, open.current);
        let minute = built(&open, &self.counts, self.restored.take().as_ref());
        self.counts.clear();
        if minute.coarse.samples == 0 {
            return;
        }
        let start = minute.coarse.start;
        let hour = match &mut self.hour {
            Some(h) if h.holds(start) => h,
            slot => slot.insert(HourTotals::holding(start)),
        };
        hour.set(MinuteTotals::of(&minute.coarse));
        closed.push(Closed::Minute(minute, hour.clone()));
    }

    /// Shows the open minute's 10 s bucket `slot`, as it closes.
    fn show(&mut self, open: &Open, slot: usize) {
        let samples = open.slots[slot].0;
        if samples == 0 {
            return;
        }
        let mut by_type: Vec<(Arc<str>, f64)> = Vec::new();
        let restored = self
            .restored
            .iter()
            .flat_map(|m| &m.fine)
            .filter(|f| f.start == open.start + slot as Micros * FINE_US)
            .flat_map(|f| f.tuples.iter().map(|(t, n)| (t, *n)));
        let counted = self.counts.values().map(|e| (&e.tuple, e.counts[slot]));
        for (t, n) in counted
            .chain(restored)
            .filter(|(t, n)| *n > 0 && t.class == Class::Active)
        {
            let share = f64::from(n) / f64::from(samples);
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
        self.changed = true;
    }

    /// Whether what the live view shows changed since last asked.
    pub fn shown(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// What the live view shows.
    pub fn now(&self) -> &LoadNow {
        &self.now
    }

    /// What is open, as it stands (the minute as it would close now): for
    /// readers of the last minute, and for a collector that stops.
    pub fn open(&self) -> Vec<Closed> {
        let mut out = Vec::new();
        if let Some(open) = &self.open {
            let minute = built(open, &self.counts, self.restored.as_ref());
            if minute.coarse.samples > 0 {
                let hour = self.hour_with(MinuteTotals::of(&minute.coarse));
                out.push(Closed::Minute(minute, hour));
            }
        }
        if let Some((start, mut sum)) = self.statements.clone() {
            sum.bound();
            out.push(Closed::Statements(start, sum));
        }
        out
    }

    /// The open hour's totals as they stand, the open minute in them: what
    /// a fleet-wide reader of totals needs, without building the minute.
    pub fn open_hour(&self) -> Option<HourTotals> {
        let Some(open) = &self.open else {
            return self.hour.clone();
        };
        let mut totals = MinuteTotals {
            start: open.start,
            samples: open.slots.iter().map(|s| s.0).sum(),
            covered_us: open.slots.iter().map(|s| s.1).sum(),
            counts: [0; 3],
        };
        for e in self.counts.values() {
            totals.counts[e.tuple.class as usize] +=
                e.counts.iter().map(|n| u64::from(*n)).sum::<u64>();
        }
        for (t, n) in self.restored.iter().flat_map(|m| &m.coarse.tuples) {
            totals.counts[t.class as usize] += u64::from(*n);
        }
        Some(self.hour_with(totals))
    }

    /// The open hour's totals with the open minute's `totals` in them (when
    /// it has samples), as a copy.
    fn hour_with(&self, totals: MinuteTotals) -> HourTotals {
        let mut hour = match &self.hour {
            Some(h) if h.holds(totals.start) => h.clone(),
            _ => HourTotals::holding(totals.start),
        };
        if totals.samples > 0 {
            hour.set(totals);
        }
        hour
    }

    /// Carries on from what a collector that stopped stored of what was
    /// open at `now`.
    pub fn restore(&mut self, stored: Vec<Closed>, now: Micros) {
        for c in stored {
            match c {
                Closed::Minute(minute, hour) => {
                    if hour.holds(now) {
                        self.hour = Some(hour);
                    }
                    if minute.coarse.holds(now) {
                        let mut open = Open::holding(minute.coarse.start);
                        for f in &minute.fine {
                            let slot = open.slot(f.start);
                            open.slots[slot].0 += f.samples;
                            open.slots[slot].1 += f.covered_us;
                        }
                        open.current = open.slot(now);
                        open.churn = minute.coarse.churn.clone();
                        self.open = Some(open);
                        self.counts.clear();
                        self.restored = Some(minute);
                    }
                }
                Closed::Statements(start, read) => {
                    if start <= now && now < start + STATEMENTS_US {
                        self.statements = Some((start, read));
                    }
                }
            }
        }
    }
}

/// The minute `open` counted into `counts` (with what a stopped collector
/// stored of it), its buckets bounded: clients as hosts, equal tuples
/// summed.
fn built(
    open: &Open,
    counts: &HashMap<Sampled, Entry, BuildHasherDefault<WordHasher>>,
    restored: Option<&MinuteLoad>,
) -> MinuteLoad {
    let mut coarse = Bucket::holding(open.start, COARSE_US);
    coarse.samples = open.slots.iter().map(|s| s.0).sum();
    coarse.covered_us = open.slots.iter().map(|s| s.1).sum();
    coarse.churn = open.churn.clone();
    coarse.tuples.reserve(counts.len());
    let mut fine: Vec<Bucket> = Vec::with_capacity(SLOTS);
    let mut slot_of = [usize::MAX; SLOTS];
    for (i, (samples, covered_us)) in open.slots.iter().enumerate() {
        if *samples > 0 {
            slot_of[i] = fine.len();
            let mut b = Bucket::holding(open.start + i as Micros * FINE_US, FINE_US);
            b.samples = *samples;
            b.covered_us = *covered_us;
            fine.push(b);
        }
    }
    let mut hosts: HashMap<usize, Arc<str>, BuildHasherDefault<WordHasher>> = HashMap::default();
    for e in counts.values() {
        let mut t = e.tuple.clone();
        t.client = hosts
            .entry(address(&t.client))
            .or_insert_with(|| host(&t.client).into())
            .clone();
        for (i, n) in e.counts.iter().enumerate() {
            if let Some(b) = fine.get_mut(slot_of[i])
                && *n > 0
            {
                b.tuples.push((t.clone(), *n));
            }
        }
        coarse.tuples.push((t, e.counts.iter().sum()));
    }
    if let Some(r) = restored {
        coarse.tuples.extend(r.coarse.tuples.iter().cloned());
        for f in &r.fine {
            let i = ((f.start - open.start).max(0) / FINE_US) as usize;
            if let Some(b) = slot_of.get(i).and_then(|&j| fine.get_mut(j)) {
                b.tuples.extend(f.tuples.iter().cloned());
            }
        }
    }
    coarse.tuples.retain(|(_, n)| *n > 0);
    coarse.bound();
    for b in &mut fine {
        b.bound();
    }
    MinuteLoad { coarse, fine }
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

    fn minutes(closed: &[Closed]) -> Vec<&MinuteLoad> {
        closed
            .iter()
            .filter_map(|c| match c {
                Closed::Minute(m, _) => Some(m),
                Closed::Statements(..) => None,
            })
            .collect()
    }

    #[test]
    fn active_sessions_count_by_wait_and_close_into_minutes_of_10_s_buckets() {
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
        assert!(closed.is_empty(), "the minute is open");
        let now = c.now();
        assert_eq!(now.load, 2.0);
        let types: Vec<(&str, f64)> = now.by_wait_type.iter().map(|(k, v)| (&**k, *v)).collect();
        assert_eq!(types, [("CPU", 1.0), ("Lock", 1.0)]);
        // What readers of the last minute see.
        let open = c.open();
        assert_eq!(minutes(&open)[0].fine.len(), 2);
        let Closed::Minute(_, hour) = &open[0] else {
            panic!("{open:?}")
        };
        assert_eq!(
            c.open_hour().as_ref(),
            Some(hour),
            "the totals alone, the same"
        );
        // A sample a minute later closes it.
        c.sample(
            t0 + COARSE_US,
            1_000_000,
            &sessions,
            &sessions,
            &mut closed,
            &mut |_, _| {},
        );
        let m = minutes(&closed)[0];
        assert_eq!((m.coarse.start, m.coarse.samples), (t0, 20));
        assert_eq!(m.coarse.average(Class::Active), 2.0);
        assert_eq!(m.coarse.average(Class::IdleInTransaction), 1.0);
        assert_eq!(m.coarse.average(Class::Background), 0.0);
        assert!(
            m.coarse
                .tuples
                .iter()
                .all(|(t, _)| &*t.client == "10.0.0.7")
        );
        let fine: Vec<(Micros, u32)> = m.fine.iter().map(|b| (b.start - t0, b.samples)).collect();
        assert_eq!(fine, [(0, 10), (FINE_US, 10)]);
        assert_eq!(m.fine[1].average(Class::Active), 2.0);
        let Closed::Minute(_, hour) = &closed[0] else {
            panic!("{closed:?}")
        };
        assert_eq!(hour.minutes.len(), 1);
        assert_eq!(hour.minutes[0].count(Class::Active), 40);
        // Stored and read back, the same.
        assert_eq!(MinuteLoad::decode(t0, &m.encode()).as_ref(), Some(m));
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
        assert_eq!(minutes(&stored)[0].coarse.samples, 15);
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
        let m = minutes(&closed)[0];
        assert_eq!(
            m.coarse.samples, 59,
            "one sample (15 s) missed in the restart"
        );
        let fine: Vec<u32> = m.fine.iter().map(|b| b.samples).collect();
        assert_eq!(
            fine,
            [10, 9, 10, 10, 10, 10],
            "the second adds the stored 5"
        );
    }

    #[test]
    fn statement_reads_add_up_per_interval() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % STATEMENTS_US;
        let read = |calls| Read {
            since_us: 1,
            by_query: vec![(
                7,
                crate::load::statements::Totals {
                    calls,
                    ..Default::default()
                },
            )],
        };
        let mut c = Counter::default();
        let mut closed = Vec::new();
        for i in 0..10 {
            c.statements(t0 + i * COARSE_US, &read(2), &mut closed);
        }
        assert!(closed.is_empty());
        c.statements(t0 + STATEMENTS_US, &read(1), &mut closed);
        let [Closed::Statements(start, sum)] = &closed[..] else {
            panic!("{closed:?}")
        };
        assert_eq!((*start, sum.by_query[0].1.calls), (t0, 20));
    }
}

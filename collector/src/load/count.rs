//! Counting one server's samples into its open buckets: the aggregator keeps
//! a [`Counter`] per server and gives it every sample it applies.

use std::collections::VecDeque;
use std::sync::Arc;

use pgfleet_proto::model::{ArcStr, Session, SessionState};
use pgfleet_proto::time::Micros;

use super::churn::{host, paired};
use super::hours::{HourTotals, MinuteTotals};
use super::intern::{IdBucket, IdMinute, Ids, Interner, Sampled, WordMap, address};
use super::statements::{Read, STATEMENTS_US};
use super::{COARSE_US, Class, FINE_US, MinuteLoad, PackedMinute, Tuple};

/// How many fine buckets [`LoadNow::recent`] keeps: five minutes.
pub const RECENT: usize = 30;

/// How many minutes [`LoadNow::minutes`] keeps: an hour.
pub const HOUR_MINUTES: usize = 60;

/// What the live view shows of a server's load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadNow {
    /// The last closed fine bucket's load.
    pub load: f64,
    /// The same by wait type (`CPU` when not waiting), largest first.
    pub by_wait_type: Vec<(ArcStr, f64)>,
    /// The load of the last [`RECENT`] fine buckets with samples, oldest
    /// first.
    pub recent: VecDeque<f64>,
    /// The load of the last [`HOUR_MINUTES`] minutes with samples, oldest
    /// first.
    pub minutes: VecDeque<f64>,
    /// Client sessions started and ended since the collector started.
    pub sessions_started_total: u64,
    pub sessions_ended_total: u64,
}

/// What a counter closed, for the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A minute, and its hour's totals as they stand with it: what is open
    /// (see [`Counter::open`]), or what a store read back.
    Minute(MinuteLoad, HourTotals),
    /// A minute that ended, built and packed for the store (what
    /// [`Counter::finish`] closes, and what readers get while it waits for
    /// the store), and its hour's totals as they stand with it.
    Packed(PackedMinute, HourTotals),
    /// An interval of statement increments, from its start.
    Statements(Micros, Read),
}

impl Closed {
    /// A packed minute as tuples (as its packing made it; empty only if its
    /// bytes were damaged); anything else as it is.
    pub fn unpacked(self) -> Closed {
        match self {
            Closed::Packed(minute, hour) => {
                Closed::Minute(minute.unpack().unwrap_or_default(), hour)
            }
            c => c,
        }
    }

    /// The minute it holds, as tuples (a packed one unpacked; None if its
    /// bytes were damaged), if it holds one.
    pub fn minute(&self) -> Option<MinuteLoad> {
        match self {
            Closed::Minute(minute, _) => Some(minute.clone()),
            Closed::Packed(minute, _) => minute.unpack(),
            Closed::Statements(..) => None,
        }
    }
}

/// How many 10 s buckets a minute holds.
const SLOTS: usize = (COARSE_US / FINE_US) as usize;

/// One server's open buckets.
#[derive(Debug, Default)]
pub struct Counter {
    /// The open minute: its 10 s buckets' samples, and its churn.
    open: Option<Open>,
    /// The open minute's counts, by tuple with the client as sampled (its
    /// host is taken when the minute closes), a count per 10 s bucket; and
    /// the tuples the sessions last counted are in, even when the minute
    /// has not counted them yet.
    counts: WordMap<Key, Entry>,
    /// The strings `counts` names.
    held: Held,
    /// The sessions last counted: a sample is counted as what changed since
    /// (see [`Counter::sample`]).
    counted: Arc<Vec<Arc<Session>>>,
    /// Whether a sample was counted. The first one sets churn's baseline:
    /// its sessions were there before it (the collector started, or the
    /// server was first seen), not started at it, but for those whose
    /// backend started within its interval.
    has_baseline: bool,
    /// What a collector that stopped stored of the open minute's counts.
    restored: Option<MinuteLoad>,
    /// The minute before the open one, ended but not yet built (see
    /// [`Counter::finish`]).
    ended: Option<Box<Ended>>,
    /// The open hour's minutes.
    hour: Option<HourTotals>,
    /// The open interval of statement increments.
    statements: Option<(Micros, Read)>,
    /// What the live view shows.
    now: LoadNow,
    /// Whether `now` changed since [`Counter::shown`] was last asked.
    changed: bool,
}

/// A minute that ended, with its counts as they stood, waiting to be built.
///
/// Every server's minute ends in the same second, and building one (its
/// tuples bounded, ranked and packed for the store) takes some 50–225 µs
/// in the load bench, more on a busy collector (a few hundred µs when this
/// was written): at 5,000 servers, seconds in which the aggregator applied
/// no batch. So a minute that ends is only set aside, and the aggregator
/// builds the ended minutes a few at a time between batches.
///
/// Its tuples are a list of exactly their number, their counts settled:
/// nothing looks a tuple up once its minute has ended, and the open
/// minute's map has room for up to twice its tuples, each with the marks of
/// the open bucket. Every server's minute ends in the same second, so for a
/// while after it every server holds an ended minute beside the open one
/// (at 1,000 servers of the load bench, the peak heap was 174 MB with the
/// list against 181 with the map).
#[derive(Debug)]
struct Ended {
    open: Open,
    counts: Box<[(Key, [u32; SLOTS])]>,
    /// The strings its tuples name, by id.
    strings: Box<[ArcStr]>,
    restored: Option<MinuteLoad>,
}

/// A minute counted and not yet built, as [`built`] and [`totals`] take it:
/// its tuples, the strings they name by id, and what a stopped collector
/// stored of it.
type Unbuilt<'a> = (&'a Open, Tuples<'a>, &'a [ArcStr], Option<&'a MinuteLoad>);

/// A minute's tuples with their counts, one per 10 s bucket: the open
/// minute's map, or the list of a minute that ended.
#[derive(Debug, Clone, Copy)]
enum Tuples<'a> {
    Open(&'a Open, &'a WordMap<Key, Entry>),
    Ended(&'a [(Key, [u32; SLOTS])]),
}

impl<'a> Tuples<'a> {
    fn len(self) -> usize {
        match self {
            Tuples::Open(_, counts) => counts.len(),
            Tuples::Ended(counts) => counts.len(),
        }
    }

    fn iter(self) -> impl Iterator<Item = (&'a Key, [u32; SLOTS])> {
        let (open, ended) = match self {
            Tuples::Open(open, counts) => (Some((open, counts)), None),
            Tuples::Ended(counts) => (None, Some(counts)),
        };
        let open = open.into_iter().flat_map(|(open, counts)| {
            counts
                .iter()
                .map(|(k, e)| (k, std::array::from_fn(|i| e.count(open, i))))
        });
        let ended = ended.into_iter().flatten().map(|(k, n)| (k, *n));
        open.chain(ended)
    }
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
    /// The minute that holds `at`, its buckets before `at`'s closed.
    fn holding(at: Micros) -> Open {
        let mut open = Open {
            start: at - at.rem_euclid(COARSE_US),
            slots: [(0, 0); SLOTS],
            current: 0,
            churn: super::Churn::default(),
        };
        open.current = open.slot(at);
        open
    }

    /// The 10 s bucket of the minute that holds `at`.
    fn slot(&self, at: Micros) -> usize {
        (((at - self.start).max(0) / FINE_US) as usize).min(SLOTS - 1)
    }
}

/// The strings of a counter's open tuples, each held once under an id, so
/// that a tuple is 4 bytes a string rather than an `ArcStr`'s 8. Found by
/// address: the counter holds every string it gave an id, so no address is
/// reused meanwhile. Made again, with only the strings still in use, as each
/// minute closes.
#[derive(Debug, Default)]
struct Held {
    by_address: WordMap<usize, u32>,
    strings: Vec<ArcStr>,
}

impl Held {
    /// The id of `s`, given it if new.
    fn id(&mut self, s: &ArcStr) -> u32 {
        *self.by_address.entry(address(s)).or_insert_with(|| {
            self.strings.push(s.clone());
            (self.strings.len() - 1) as u32
        })
    }

    /// The id of the string at `address`, if it has one.
    fn find(&self, address: usize) -> Option<u32> {
        self.by_address.get(&address).copied()
    }

    fn get(&self, id: u32) -> &ArcStr {
        &self.strings[id as usize]
    }

    /// A key's strings, in the order [`Sampled::of`] takes them.
    fn strings(&self, key: &Key) -> [&ArcStr; 7] {
        named(&self.strings, key)
    }
}

/// A key's strings, from the strings its ids name.
fn named<'a>(strings: &'a [ArcStr], key: &Key) -> [&'a ArcStr; 7] {
    key.strings.map(|i| &strings[i as usize])
}

/// A tuple of a minute, its strings by id (in the order [`Sampled::of`]
/// takes them): in the counter's [`Held`] while the minute is open, then in
/// its [`Ended`]'s strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    query: u64,
    strings: [u32; 7],
    class: Class,
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let s = self.strings.map(u64::from);
        state.write_u64(self.query ^ self.class as u64);
        state.write_u64(s[0] | s[1] << 32);
        state.write_u64(s[2] | s[3] << 32);
        state.write_u64(s[4] | s[5] << 32);
        state.write_u64(s[6]);
    }
}

/// A tuple's counts in the open minute, one per 10 s bucket, and the
/// sessions in it now.
///
/// A session counts 1 at each sample it is in the tuple, so the counts of
/// a bucket are its samples' sums of `live`. They are added when `live`
/// changes and when the bucket closes, rather than at every sample: at `mark`
/// samples into the open bucket, `live` last changed, and what it counted
/// since is not yet in `counts`.
#[derive(Debug, Clone)]
struct Entry {
    counts: [u32; SLOTS],
    live: u32,
    mark: u32,
}

impl Entry {
    /// Its count in the open minute's bucket `slot`, as it stands.
    fn count(&self, open: &Open, slot: usize) -> u32 {
        let pending = if slot == open.current {
            self.live * open.slots[slot].0.saturating_sub(self.mark)
        } else {
            0
        };
        self.counts[slot] + pending
    }

    /// Adds what it counted since `mark` to the open bucket, `taken`
    /// samples into it.
    fn settle(&mut self, slot: usize, taken: u32) {
        self.counts[slot] += self.live * taken.saturating_sub(self.mark);
        self.mark = taken;
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

/// The wait of a session that does not wait, shared by every counter so that
/// its tuples' keys are the same whichever thread counts them.
static CPU: ArcStr = pgfleet_proto::model::literal!("CPU");
static EMPTY: ArcStr = ArcStr::new();

/// A session's wait: its type and event, or `CPU`.
fn wait(s: &Session) -> (&ArcStr, &ArcStr) {
    if s.wait_event_type.is_empty() {
        (&CPU, &EMPTY)
    } else {
        (&s.wait_event_type, &s.wait_event)
    }
}

/// The strings of the tuple a session counts in, in the order
/// [`Sampled::of`] takes them.
fn strings(s: &Session) -> [&ArcStr; 7] {
    let (wait_type, wait_event) = wait(s);
    [
        wait_type,
        wait_event,
        &s.user,
        &s.database,
        &s.application_name,
        &s.client,
        &s.backend_type,
    ]
}

/// The tuple a session counts in at a sample, by its strings' addresses;
/// None when it counts in none.
fn sampled(s: &Session) -> Option<Sampled> {
    Some(Sampled::of(class(s)?, s.fingerprint, strings(s)))
}

impl Counter {
    /// Counts one sample of a server that is up, taken at `at`: `sessions`
    /// as sampled (in key order), each sample covering `interval_us`.
    /// Churn is what changed since the sample last counted, so that a server
    /// that was down keeps the sessions that outlived it; of the first
    /// sample's, only those that started within its interval (see
    /// `has_baseline`). Buckets that close are added to `closed`; `text` is
    /// given each query not counted before, with its text.
    ///
    /// Only the sessions that changed since the sample last counted are
    /// looked at: a session kept from one sample to the next is the same
    /// `Arc`, and one whose tuple did not change counts on in its entry
    /// (see [`Entry`]).
    pub fn sample(
        &mut self,
        at: Micros,
        interval_us: Micros,
        sessions: &Arc<Vec<Arc<Session>>>,
        closed: &mut Vec<Closed>,
        text: &mut impl FnMut(u64, &str),
    ) {
        self.advance(at, closed);
        let open = self.open.get_or_insert_with(|| Open::holding(at));
        // A sample from before the open bucket (the clock went back) counts
        // in it: the buckets before it are closed.
        let slot = open.slot(at).max(open.current);
        let taken = open.slots[slot].0;
        open.slots[slot].0 += 1;
        open.slots[slot].1 += interval_us;
        let counted = std::mem::replace(&mut self.counted, Arc::clone(sessions));
        // Churn and the counts come from the one pass over both samples.
        // In the baseline, a session whose backend started within the
        // sample's interval did start then, and counts as started.
        let baseline = !std::mem::replace(&mut self.has_baseline, true);
        let since = at - interval_us;
        for pair in paired(&counted, sessions) {
            let (old, new) = match pair {
                (Some(o), Some(n)) if Arc::ptr_eq(o, n) => continue,
                (o, n) => {
                    let churn = !baseline || n.is_some_and(|n| n.backend_start_us > since);
                    if let Some(open) = self.open.as_mut().filter(|_| churn) {
                        let (started, ended) =
                            open.churn.pair(o.map(|o| &**o), n.map(|n| &**n), at);
                        self.now.sessions_started_total += u64::from(started);
                        self.now.sessions_ended_total += u64::from(ended);
                    }
                    (o.and_then(|o| sampled(o)), n.map(|n| (n, sampled(n))))
                }
            };
            if old == new.and_then(|(_, key)| key) {
                continue;
            }
            if let Some(key) = old {
                self.leave(key, slot, taken);
            }
            if let Some((s, Some(key))) = new {
                self.join(s, key, slot, taken, text);
            }
        }
    }

    /// A session, counted in the sample before under `key`, is no longer in
    /// that tuple.
    fn leave(&mut self, key: Sampled, slot: usize, taken: u32) {
        let mut strings = [0; 7];
        for (id, a) in strings.iter_mut().zip(key.addresses()) {
            // A string without an id is in no tuple counted.
            let Some(found) = self.held.find(a) else {
                return;
            };
            *id = found;
        }
        let key = Key {
            query: key.query(),
            strings,
            class: key.class(),
        };
        if let Some(e) = self.counts.get_mut(&key) {
            e.settle(slot, taken);
            e.live = e.live.saturating_sub(1);
        }
    }

    /// `s` is in its tuple, `key`, from this sample on.
    fn join(
        &mut self,
        s: &Session,
        key: Sampled,
        slot: usize,
        taken: u32,
        text: &mut impl FnMut(u64, &str),
    ) {
        let held = &mut self.held;
        let key = Key {
            query: key.query(),
            strings: strings(s).map(|s| held.id(s)),
            class: key.class(),
        };
        let e = self.counts.entry(key).or_insert_with(|| {
            text(s.fingerprint, &s.query);
            Entry {
                counts: [0; SLOTS],
                live: 0,
                mark: taken,
            }
        });
        e.settle(slot, taken);
        e.live += 1;
    }

    /// Adds the sessions PostgreSQL established by database (`increments`
    /// of an up sample at `at`, counted after [`Counter::sample`]).
    pub fn established(&mut self, at: Micros, increments: &[(String, u64)]) {
        let churn = &mut self.open.get_or_insert_with(|| Open::holding(at)).churn;
        for (database, n) in increments {
            churn.establish(database, *n);
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
        if open.current < slot {
            self.settle(&open);
            while open.current < slot {
                self.show(&open, open.current);
                open.current += 1;
            }
            // The bucket open now has taken no sample yet.
            for e in self.counts.values_mut() {
                e.mark = 0;
            }
        }
        self.open = Some(open);
    }

    /// Ends the open minute (its last 10 s bucket shown): its counts are set
    /// aside for [`Counter::finish`] (a minute that ended before and is not
    /// yet built is built first, into `closed`), and the next minute counts
    /// on from the tuples sessions are in now.
    fn close_minute(&mut self, open: Open, closed: &mut Vec<Closed>) {
        self.settle(&open);
        self.show(&open, open.current);
        self.finish(closed);
        let (counts, held) = self.live();
        let counts = std::mem::replace(&mut self.counts, counts);
        let held = std::mem::replace(&mut self.held, held);
        let mut list = Vec::with_capacity(counts.len());
        list.extend(Tuples::Open(&open, &counts).iter().map(|(k, n)| (*k, n)));
        self.ended = Some(Box::new(Ended {
            counts: list.into_boxed_slice(),
            strings: held.strings.into_boxed_slice(),
            open,
            restored: self.restored.take(),
        }));
    }

    /// How many tuples the open minute holds, each an entry of its map (for
    /// the load bench).
    pub fn open_tuples(&self) -> usize {
        self.counts.len()
    }

    /// Whether a minute has ended that [`Counter::finish`] has not built.
    pub fn unfinished(&self) -> bool {
        self.ended.is_some()
    }

    /// Builds the minute that ended, if any, into `closed` (packed for the
    /// store: [`Closed::Packed`]), with its hour.
    pub fn finish(&mut self, closed: &mut Vec<Closed>) {
        let Some(ended) = self.ended.take() else {
            return;
        };
        let minute = built(
            &ended.open,
            Tuples::Ended(&ended.counts),
            &ended.strings,
            ended.restored.as_ref(),
        );
        drop(ended);
        let coarse = &minute.coarse;
        if coarse.samples == 0 {
            return;
        }
        let totals = coarse.totals();
        if self.now.minutes.len() == HOUR_MINUTES {
            self.now.minutes.pop_front();
        }
        self.now.minutes.push_back(totals.average(Class::Active));
        self.changed = true;
        let hour = match &mut self.hour {
            Some(h) if h.holds(totals.start) => h,
            slot => slot.insert(HourTotals::holding(totals.start)),
        };
        hour.set(totals);
        closed.push(Closed::Packed(minute.pack(), hour.clone()));
    }

    /// The tuples sessions are in now, to count on in the next minute, and
    /// only their strings; in maps no larger than they need.
    fn live(&self) -> (WordMap<Key, Entry>, Held) {
        let mut counts = WordMap::default();
        let mut held = Held::default();
        counts.reserve(self.counts.values().filter(|e| e.live > 0).count());
        for (key, e) in &self.counts {
            if e.live > 0 {
                let key = Key {
                    strings: self.held.strings(key).map(|s| held.id(s)),
                    ..*key
                };
                let e = Entry {
                    counts: [0; SLOTS],
                    mark: 0,
                    ..*e
                };
                counts.insert(key, e);
            }
        }
        (counts, held)
    }

    /// Adds to the open bucket's counts what its tuples counted since they
    /// last changed.
    fn settle(&mut self, open: &Open) {
        let taken = open.slots[open.current].0;
        for e in self.counts.values_mut() {
            e.settle(open.current, taken);
        }
    }

    /// Shows the open minute's 10 s bucket `slot`, as it closes.
    fn show(&mut self, open: &Open, slot: usize) {
        let samples = open.slots[slot].0;
        if samples == 0 {
            return;
        }
        let mut by_type: Vec<(ArcStr, f64)> = Vec::new();
        let restored = self
            .restored
            .iter()
            .flat_map(|m| &m.fine)
            .filter(|f| f.start == open.start + slot as Micros * FINE_US)
            .flat_map(|f| f.tuples.iter().map(|(t, n)| (t, *n)));
        let held = &self.held;
        let counted = self
            .counts
            .iter()
            .map(|(k, e)| ((k.class, held.get(k.strings[0])), e.count(open, slot)));
        let restored = restored.map(|(t, n)| ((t.class, &t.wait_type), n));
        for ((_, wait_type), n) in counted
            .chain(restored)
            .filter(|((class, _), n)| *n > 0 && *class == Class::Active)
        {
            let share = f64::from(n) / f64::from(samples);
            match by_type.iter_mut().find(|(k, _)| k == wait_type) {
                Some((_, v)) => *v += share,
                None => by_type.push((wait_type.clone(), share)),
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

    /// The minutes counted and not yet built, oldest first (the one that
    /// ended, then the open one): each with its counts, their strings and
    /// what a stopped collector stored of it.
    fn unbuilt(&self) -> impl Iterator<Item = Unbuilt<'_>> {
        let ended = self.ended.iter().map(|e| {
            let counts = Tuples::Ended(&e.counts);
            (&e.open, counts, &*e.strings, e.restored.as_ref())
        });
        let open = self.open.iter().map(|o| {
            let counts = Tuples::Open(o, &self.counts);
            (o, counts, &*self.held.strings, self.restored.as_ref())
        });
        ended.chain(open)
    }

    /// What is open, as it stands (a minute that ended but is not yet built,
    /// then the minute as it would close now): for readers of the last
    /// minutes, and for a collector that stops.
    pub fn open(&self) -> Vec<Closed> {
        let mut out = Vec::new();
        let mut hour = self.hour.clone();
        for (open, counts, strings, restored) in self.unbuilt() {
            let minute = built(open, counts, strings, restored).load();
            if minute.coarse.samples > 0 {
                let with = hour_with(hour.as_ref(), MinuteTotals::of(&minute.coarse));
                hour = Some(with.clone());
                out.push(Closed::Minute(minute, with));
            }
        }
        if let Some((start, mut sum)) = self.statements.clone() {
            sum.bound();
            out.push(Closed::Statements(start, sum));
        }
        out
    }

    /// The open hours' totals as they stand, the latest first, with the
    /// minute that ended (not yet built) and the open minute in them: what
    /// a fleet-wide reader of totals needs, without building the minutes.
    pub fn open_hours(&self) -> Vec<HourTotals> {
        let mut hours: Vec<HourTotals> = Vec::new();
        for (open, counts, _, restored) in self.unbuilt() {
            let t = totals(open, counts, restored);
            if t.samples == 0 {
                continue;
            }
            let hour = hour_with(hours.last().or(self.hour.as_ref()), t);
            match hours.last_mut() {
                Some(last) if last.start == hour.start => *last = hour,
                _ => hours.push(hour),
            }
        }
        if hours.is_empty() {
            hours.extend(self.hour.clone());
        }
        hours.reverse();
        hours
    }

    /// Carries on from what a collector that stopped stored of what was
    /// open at `now`; for a new counter (one with no minute ended and not
    /// built).
    pub fn restore(&mut self, stored: Vec<Closed>, now: Micros) {
        debug_assert!(self.ended.is_none(), "restore is for a new counter");
        for c in stored {
            let (minute, hour) = match c {
                Closed::Minute(minute, hour) => (minute, hour),
                Closed::Packed(minute, hour) => (minute.unpack().unwrap_or_default(), hour),
                Closed::Statements(start, read) => {
                    if start <= now && now < start + STATEMENTS_US {
                        self.statements = Some((start, read));
                    }
                    continue;
                }
            };
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
                self.held = Held::default();
                self.counted = Arc::default();
                self.restored = Some(minute);
            }
        }
    }
}

/// `hour` (when it holds `totals`' minute; a new hour otherwise) with
/// `totals` in it (when it has samples), as a copy.
fn hour_with(hour: Option<&HourTotals>, totals: MinuteTotals) -> HourTotals {
    let mut hour = match hour {
        Some(h) if h.holds(totals.start) => h.clone(),
        _ => HourTotals::holding(totals.start),
    };
    if totals.samples > 0 {
        hour.set(totals);
    }
    hour
}

/// The totals of the minute `open` counted into `counts` (with what a
/// stopped collector stored of it), as its built minute's are.
fn totals(open: &Open, counts: Tuples<'_>, restored: Option<&MinuteLoad>) -> MinuteTotals {
    let mut totals = MinuteTotals {
        start: open.start,
        samples: open.slots.iter().map(|s| s.0).sum(),
        covered_us: open.slots.iter().map(|s| s.1).sum(),
        counts: [0; 3],
    };
    for (k, n) in counts.iter() {
        totals.counts[k.class as usize] += n.iter().map(|&n| u64::from(n)).sum::<u64>();
    }
    for (t, n) in restored.iter().flat_map(|m| &m.coarse.tuples) {
        totals.counts[t.class as usize] += u64::from(*n);
    }
    totals
}

/// The minute `open` counted into `counts` (with what a stopped collector
/// stored of it), its buckets bounded: clients as hosts, equal tuples
/// summed; its tuples as ids, so that the store's form is made from them
/// and not from tuples of strings.
fn built(
    open: &Open,
    counts: Tuples<'_>,
    names: &[ArcStr],
    restored: Option<&MinuteLoad>,
) -> IdMinute {
    let mut coarse = IdBucket {
        start: open.start,
        len_us: COARSE_US,
        samples: open.slots.iter().map(|s| s.0).sum(),
        covered_us: open.slots.iter().map(|s| s.1).sum(),
        tuples: Vec::new(),
        churn: open.churn.clone(),
    };
    let mut fine: Vec<IdBucket> = Vec::with_capacity(SLOTS);
    let mut slot_of = [usize::MAX; SLOTS];
    for (i, (samples, covered_us)) in open.slots.iter().enumerate() {
        if *samples > 0 {
            slot_of[i] = fine.len();
            fine.push(IdBucket {
                start: open.start + i as Micros * FINE_US,
                len_us: FINE_US,
                samples: *samples,
                covered_us: *covered_us,
                ..IdBucket::default()
            });
        }
    }
    // Every tuple with its strings interned (clients as hosts), then the
    // ids ordered as the strings; tuples that are then equal (clients of
    // one host, strings equal at other addresses) summed, so that the
    // buckets' tuples are distinct.
    let mut interner = Interner::default();
    let mut hosts: WordMap<u32, u32> = WordMap::default();
    let mut counted: Vec<(Ids, [u32; SLOTS])> = Vec::with_capacity(counts.len());
    let mut found: WordMap<Ids, usize> = WordMap::default();
    found.reserve(counts.len());
    for (k, n) in counts.iter() {
        let strings = named(names, k);
        let client = *hosts
            .entry(k.strings[5])
            .or_insert_with(|| interner.text(host(strings[5])));
        let ids = interner.ids_of(k.class, k.query, strings, client);
        match found.entry(ids) {
            std::collections::hash_map::Entry::Occupied(at) => {
                let sum = &mut counted[*at.get()].1;
                (0..SLOTS).for_each(|i| sum[i] += n[i]);
            }
            std::collections::hash_map::Entry::Vacant(at) => {
                at.insert(counted.len());
                counted.push((ids, n));
            }
        }
    }
    // What a stopped collector stored: its coarse tuples, and its 10 s
    // buckets' by slot.
    let mut stored: Vec<(Option<usize>, Ids, u32)> = Vec::new();
    if let Some(r) = restored {
        let mut intern = |t: &Tuple| {
            let client = interner.id(&t.client);
            interner.ids(t, client)
        };
        for (t, n) in &r.coarse.tuples {
            stored.push((None, intern(t), *n));
        }
        for f in &r.fine {
            let i = ((f.start - open.start).max(0) / FINE_US) as usize;
            if let Some(&j) = slot_of.get(i).filter(|j| **j < fine.len()) {
                for (t, n) in &f.tuples {
                    stored.push((Some(j), intern(t), *n));
                }
            }
        }
    }
    let ranked = interner.ranked();
    // The minute's bucket, the last, takes every tuple; a 10 s bucket's grow
    // as they fill (room for every tuple in each was slower, in the load
    // bench).
    let mut tuples: Vec<Vec<(Ids, u32)>> = vec![Vec::new(); fine.len()];
    tuples.push(Vec::with_capacity(counted.len()));
    for (ids, counts) in &counted {
        let ids = ranked.ranked(*ids);
        for (i, n) in counts.iter().enumerate() {
            if let Some(b) = tuples.get_mut(slot_of[i])
                && *n > 0
            {
                b.push((ids, *n));
            }
        }
        tuples[fine.len()].push((ids, counts.iter().sum()));
    }
    let distinct = stored.is_empty();
    for (j, ids, n) in stored {
        tuples[j.unwrap_or(fine.len())].push((ranked.ranked(ids), n));
    }
    // Distinct unless a stopped collector's tuples joined them.
    let bounded = |t| {
        if distinct {
            ranked.bounded_distinct(t)
        } else {
            ranked.bounded(t)
        }
    };
    let mut tuples = tuples.into_iter();
    for b in &mut fine {
        b.tuples = bounded(tuples.next().unwrap_or_default());
    }
    let mut minute: Vec<(Ids, u32)> = tuples.next().unwrap_or_default();
    minute.retain(|(_, n)| *n > 0);
    coarse.tuples = bounded(minute);
    coarse.churn.bound();
    IdMinute {
        strings: ranked.strings(),
        coarse,
        fine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Bucket, OTHER};

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

    /// The minutes in `closed`, packed ones unpacked.
    fn minutes(closed: &[Closed]) -> Vec<MinuteLoad> {
        closed.iter().filter_map(Closed::minute).collect()
    }

    #[test]
    fn active_sessions_count_by_wait_and_close_into_minutes_of_10_s_buckets() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let sessions = Arc::new(vec![
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
        ]);
        let mut c = Counter::default();
        let mut closed = Vec::new();
        for s in 0..20 {
            let at = t0 + s * 1_000_000;
            c.sample(at, 1_000_000, &sessions, &mut closed, &mut |_, _| {});
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
            c.open_hours().first(),
            Some(hour),
            "the totals alone, the same"
        );
        // A sample a minute later ends it; it is built when finished, and
        // readers meanwhile get it built for them, before the open minute.
        c.sample(
            t0 + COARSE_US,
            1_000_000,
            &sessions,
            &mut closed,
            &mut |_, _| {},
        );
        assert!(closed.is_empty() && c.unfinished());
        let open = c.open();
        let starts: Vec<Micros> = minutes(&open).iter().map(|m| m.coarse.start).collect();
        assert_eq!(starts, [t0, t0 + COARSE_US]);
        let Closed::Minute(_, hour) = &open[1] else {
            panic!("{open:?}")
        };
        assert_eq!(hour.minutes.len(), 2, "the hour has both minutes");
        assert_eq!(c.open_hours().first(), Some(hour));
        c.finish(&mut closed);
        assert!(!c.unfinished());
        assert_eq!(c.now().minutes, [2.0]);
        let built = minutes(&closed);
        let m = &built[0];
        assert_eq!(
            &minutes(&open)[0],
            m,
            "what readers got is what was built and packed"
        );
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
        let Closed::Packed(_, hour) = &closed[0] else {
            panic!("{closed:?}")
        };
        assert_eq!(hour.minutes.len(), 1);
        assert_eq!(hour.minutes[0].count(Class::Active), 40);
        // Stored and read back, the same.
        assert_eq!(MinuteLoad::decode(t0, &m.encode()).as_ref(), Some(m));
    }

    /// Minutes with more tuples than keys a dimension keeps: their buckets,
    /// built from distinct counts (and only tuples made `other` summed),
    /// are what bounding the same tuples as strings gives. With more
    /// applications than kept; more waits and queries; more tuples but no
    /// dimension over; and a hostile agent's strings and fingerprints equal
    /// to `other`'s.
    #[test]
    fn minutes_with_more_keys_than_kept_are_bounded_as_any_bucket_is() {
        let session = |i: u32, app: u32, query: u64, wait: u32| Session {
            pid: i as i32,
            backend_start_us: 1,
            state: SessionState::Active,
            fingerprint: query,
            wait_event_type: if wait == 0 { "" } else { "IO" }.into(),
            wait_event: if wait == 0 {
                String::new()
            } else {
                format!("Wait{wait:02}")
            }
            .into(),
            user: "app".into(),
            database: "orders".into(),
            application_name: format!("app-{app:02}").into(),
            client: format!("10.0.0.{}:{}", i % 3, 5000 + i).into(),
            backend_type: "client backend".into(),
            ..Default::default()
        };
        let hostile = |i: u32| {
            let mut s = session(i, i % 70, u64::from(i % 4) + 1, 0);
            if i.is_multiple_of(5) {
                s.application_name = OTHER.into();
            }
            if i.is_multiple_of(7) {
                s.fingerprint = crate::load::OTHER_QUERY;
            }
            s
        };
        let cases: [(&str, &dyn Fn(u32) -> Session); 4] = [
            ("applications", &|i| {
                session(i, i % 70, u64::from(i % 4) + 1, 0)
            }),
            ("waits and queries", &|i| {
                session(i, i % 3, u64::from(i % 60) + 1, i % 55)
            }),
            ("none over", &|i| {
                session(i, i % 40, u64::from(i % 30) + 1, 0)
            }),
            ("hostile", &hostile),
        ];
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        for (case, of) in cases {
            let sessions = Arc::new((0..120).map(|i| Arc::new(of(i))).collect::<Vec<_>>());
            let mut c = Counter::default();
            let mut closed = Vec::new();
            for s in 0..20 {
                let at = t0 + s * 1_000_000;
                c.sample(at, 1_000_000, &sessions, &mut closed, &mut |_, _| {});
            }
            c.advance(t0 + COARSE_US, &mut closed);
            c.finish(&mut closed);
            let built = minutes(&closed);
            let [m] = &built[..] else {
                panic!("{case}: {closed:?}")
            };
            // The same tuples as strings, each session's counted `samples`
            // times.
            let expected = |start: Micros, len_us: Micros, samples: u32| {
                let mut b = Bucket::holding(start, len_us);
                b.samples = samples;
                b.covered_us = Micros::from(samples) * 1_000_000;
                b.tuples = (0..120)
                    .map(|i| {
                        let s = of(i);
                        let (wait_type, wait_event) = wait(&s);
                        let tuple = Tuple {
                            class: Class::Active,
                            wait_type: wait_type.clone(),
                            wait_event: wait_event.clone(),
                            query: s.fingerprint,
                            user: s.user.clone(),
                            database: s.database.clone(),
                            application: s.application_name.clone(),
                            client: host(&s.client).into(),
                            backend_type: s.backend_type.clone(),
                        };
                        (tuple, samples)
                    })
                    .collect();
                b.bound();
                b.tuples
            };
            let named_other = m.coarse.tuples.iter().any(|(t, _)| {
                t.query == crate::load::OTHER_QUERY
                    || [&t.wait_type, &t.application]
                        .iter()
                        .any(|s| &***s == OTHER)
            });
            assert_eq!(named_other, case != "none over", "{case}: {:?}", m.coarse);
            assert_eq!(m.coarse.tuples, expected(t0, COARSE_US, 20), "{case}");
            assert_eq!(m.fine.len(), 2, "{case}");
            for f in &m.fine {
                assert_eq!(f.tuples, expected(f.start, FINE_US, 10), "{case}");
            }
        }
    }

    #[test]
    fn churn_counts_from_the_first_sample_on_and_across_a_server_down() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let s = |pid| session(pid, SessionState::Idle, ("Client", "ClientRead"), 0);
        let (a, b, c, d) = (s(1), s(2), s(3), s(4));
        let mut counter = Counter::default();
        let sample = |counter: &mut Counter, second: i64, sessions: Vec<Arc<Session>>| {
            let at = t0 + second * 1_000_000;
            let mut closed = Vec::new();
            counter.sample(
                at,
                1_000_000,
                &Arc::new(sessions),
                &mut closed,
                &mut |_, _| {},
            );
        };
        let totals = |counter: &Counter| {
            let now = counter.now();
            (now.sessions_started_total, now.sessions_ended_total)
        };
        // The sessions of the first sample were there before it (the
        // collector has just started, or first sees the server), but for
        // one whose backend started within the sample's second.
        let e = Arc::new(Session {
            pid: 5,
            backend_start_us: t0 + 500_000,
            ..(*s(5)).clone()
        });
        sample(&mut counter, 1, vec![a.clone(), b.clone(), e.clone()]);
        assert_eq!(totals(&counter), (1, 0), "e started");
        sample(&mut counter, 2, vec![a.clone(), c.clone(), e.clone()]);
        assert_eq!(totals(&counter), (2, 1), "b ended, c started");
        // The server is down for a while; when it is back, a and e outlived it.
        counter.advance(t0 + 5_000_000, &mut Vec::new());
        sample(&mut counter, 9, vec![a.clone(), d.clone(), e.clone()]);
        assert_eq!(
            totals(&counter),
            (3, 2),
            "c ended, d started, a and e did not start again"
        );
        let open = minutes(&counter.open());
        let rows = &open[0].coarse.churn.rows;
        let started: u64 = rows.iter().map(|(_, n)| n.started).sum();
        let ended: u64 = rows.iter().map(|(_, n)| n.ended).sum();
        assert_eq!((started, ended), (3, 2), "{rows:?}");
    }

    #[test]
    fn a_stopped_collector_carries_on_without_counting_twice() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let sessions = Arc::new(vec![session(1, SessionState::Active, ("", ""), 7)]);
        let mut c = Counter::default();
        let mut closed = Vec::new();
        for s in 0..15 {
            c.sample(
                t0 + s * 1_000_000,
                1_000_000,
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
                &mut closed,
                &mut |_, _| {},
            );
        }
        after.finish(&mut closed);
        let built = minutes(&closed);
        let m = &built[0];
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

    /// Counting only what changed gives what counting every session at
    /// every sample gives: sessions that change, come, go and are sent
    /// again unchanged; strings equal at other addresses; gaps, skipped
    /// buckets and a server down.
    #[test]
    fn counting_changes_counts_as_counting_every_session() {
        type Key = (Class, String, u64, String, String);
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let mut next = crate::load::tests::below(0x2545_f491_4f6c_dd1d);
        let waits: [(&str, &str); 4] = [
            ("", ""),
            ("IO", "DataFileRead"),
            ("Lock", "tuple"),
            ("Client", "ClientRead"),
        ];
        let users: Vec<ArcStr> = vec!["app".into(), "batch".into()];
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        let mut pid = 100;
        let mut counter = Counter::default();
        let mut closed = Vec::new();
        // The naive count: by minute, 10 s bucket and tuple.
        let mut expected: std::collections::BTreeMap<(Micros, Micros, Key), u32> =
            Default::default();
        let mut samples: std::collections::BTreeMap<(Micros, Micros), u32> = Default::default();
        let mut at = t0 + 3_000_000;
        let mut down = false;
        while at < t0 + 30 * COARSE_US {
            // What changes in this second.
            for _ in 0..next(6) {
                match next(5) {
                    0 if sessions.len() < 30 => {
                        pid += 1;
                        sessions.push(Arc::new(Session {
                            pid,
                            backend_start_us: at,
                            user: users[next(2) as usize].clone(),
                            database: "orders".into(),
                            application_name: "web".into(),
                            client: format!("10.0.0.{}:{}", next(3), 5000 + pid).into(),
                            backend_type: "client backend".into(),
                            ..Default::default()
                        }));
                    }
                    1 if !sessions.is_empty() => {
                        sessions.remove(next(sessions.len() as u64) as usize);
                    }
                    _ if !sessions.is_empty() => {
                        let i = next(sessions.len() as u64) as usize;
                        let mut s = (*sessions[i]).clone();
                        let (wt, we) = waits[next(4) as usize];
                        s.state = [
                            SessionState::Active,
                            SessionState::Idle,
                            SessionState::IdleInTransaction,
                        ][next(3) as usize];
                        // Equal strings, new addresses, as a keyframe sends them.
                        s.wait_event_type = wt.into();
                        s.wait_event = we.into();
                        s.user = (*s.user).into();
                        s.fingerprint = next(4);
                        sessions[i] = Arc::new(s);
                    }
                    _ => {}
                }
            }
            sessions.sort_by_key(|s| s.key());
            if next(40) == 0 {
                down = !down;
            }
            if down {
                counter.advance(at, &mut closed);
            } else {
                let now = Arc::new(sessions.clone());
                counter.sample(at, 1_000_000, &now, &mut closed, &mut |_, _| {});
                let minute = at - at.rem_euclid(COARSE_US);
                let fine = at - at.rem_euclid(FINE_US);
                *samples.entry((minute, fine)).or_default() += 1;
                for s in now.iter() {
                    let Some(class) = class(s) else { continue };
                    let (wt, we) = wait(s);
                    let key = (
                        class,
                        format!("{wt}:{we}"),
                        s.fingerprint,
                        s.user.to_string(),
                        host(&s.client).to_owned(),
                    );
                    *expected.entry((minute, fine, key)).or_default() += 1;
                }
            }
            // Ended minutes built at once, later, or only when the next ends.
            if next(3) == 0 {
                counter.finish(&mut closed);
            }
            // Mostly a second on; sometimes a gap, over buckets or minutes.
            at += match next(30) {
                0 => 1_000_000 * (2 + next(70) as i64),
                _ => 1_000_000,
            };
        }
        counter.advance(at + COARSE_US, &mut closed);
        counter.finish(&mut closed);
        let mut got: std::collections::BTreeMap<(Micros, Micros, Key), u32> = Default::default();
        let mut got_samples: std::collections::BTreeMap<(Micros, Micros), u32> = Default::default();
        for m in minutes(&closed) {
            for b in m.fine.iter().chain([&m.coarse]) {
                let mut seen = std::collections::HashSet::new();
                assert!(
                    b.tuples.iter().all(|(t, _)| seen.insert(t)),
                    "no two tuples of a bucket are equal: {:?}",
                    b.tuples
                );
            }
            for b in &m.fine {
                *got_samples.entry((m.coarse.start, b.start)).or_default() += b.samples;
                for (t, n) in &b.tuples {
                    let key = (
                        t.class,
                        format!("{}:{}", t.wait_type, t.wait_event),
                        t.query,
                        t.user.to_string(),
                        t.client.to_string(),
                    );
                    *got.entry((m.coarse.start, b.start, key)).or_default() += n;
                }
            }
            let fine: u32 = m
                .fine
                .iter()
                .flat_map(|b| b.tuples.iter().map(|(_, n)| n))
                .sum();
            let coarse: u32 = m.coarse.tuples.iter().map(|(_, n)| n).sum();
            assert_eq!(fine, coarse, "the minute sums its 10 s buckets");
        }
        assert!(
            expected.len() > 100,
            "the run counted little: {}",
            expected.len()
        );
        assert_eq!(got_samples, samples);
        assert_eq!(got, expected);
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

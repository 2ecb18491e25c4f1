//! Bounding a bucket's tuples by numbers rather than strings: each string is
//! interned once, its id ordered as the strings are, so that summing,
//! ranking and sorting the tuples ([`bounded`]) hash and compare integers.
//! A minute's seven buckets share one [`Interner`], and stay ids
//! ([`IdMinute`]) until they are packed for the store; they become
//! [`Tuple`]s again only for readers.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::LazyLock;

use pgfleet_proto::model::ArcStr;
use pgfleet_proto::time::Micros;

use super::hours::MinuteTotals;
use super::{Bucket, Churn, Class, MAX_TUPLES, MinuteLoad, OTHER, OTHER_QUERY, TOP_KEYS, Tuple};

/// [`OTHER`], shared.
static OTHER_TEXT: LazyLock<ArcStr> = LazyLock::new(|| OTHER.into());

/// A string's address: equal for the clones of one `ArcStr`.
pub(super) fn address(s: &ArcStr) -> usize {
    s.as_ptr() as usize
}

/// A hash for keys made of a few machine words: a multiply and a rotate per
/// word, where SipHash would take ten times as long.
#[derive(Default)]
pub(super) struct WordHasher(u64);

/// Maps keyed by a few machine words.
pub(super) type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

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

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A tuple by its strings' addresses rather than their bytes: found without
/// reading or copying them. A stream's sessions share their strings from
/// one sample to the next. Whoever keeps one keeps the strings too, so that no
/// address is reused meanwhile. Tuples with equal strings at other
/// addresses are other keys: where that matters, they are summed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sampled {
    class: Class,
    query: u64,
    /// wait type, wait event, user, database, application, client, backend
    /// type.
    strings: [usize; 7],
}

impl Sampled {
    pub fn of(class: Class, query: u64, strings: [&ArcStr; 7]) -> Sampled {
        Sampled {
            class,
            query,
            strings: strings.map(address),
        }
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn query(&self) -> u64 {
        self.query
    }

    /// Its strings' addresses, in the order [`Sampled::of`] takes them.
    pub fn addresses(&self) -> [usize; 7] {
        self.strings
    }
}

/// A tuple's strings, in the order [`Sampled::of`] takes them.
fn strings(t: &Tuple) -> [&ArcStr; 7] {
    [
        &t.wait_type,
        &t.wait_event,
        &t.user,
        &t.database,
        &t.application,
        &t.client,
        &t.backend_type,
    ]
}

impl std::hash::Hash for Sampled {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.query ^ self.class as u64);
        for a in self.strings {
            state.write_usize(a);
        }
    }
}

/// A [`Tuple`] with its strings as ids. Its fields are in the tuple's order,
/// so that, with ids ordered as their strings ([`Interner::ranked`]), the
/// two sort alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Ids {
    pub class: Class,
    pub wait_type: u32,
    pub wait_event: u32,
    pub query: u64,
    /// user, database, application, client, backend type.
    pub who: [u32; 5],
}

impl Ids {
    /// Whether it names `other` (the id of [`OTHER`]) or [`OTHER_QUERY`].
    fn names(&self, other: u32) -> bool {
        self.wait_type == other
            || self.wait_event == other
            || self.query == OTHER_QUERY
            || self.who.contains(&other)
    }
}

impl std::hash::Hash for Ids {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let w = |a: u32, b: u32| u64::from(a) | u64::from(b) << 32;
        state.write_u64(self.query ^ self.class as u64);
        state.write_u64(w(self.wait_type, self.wait_event));
        state.write_u64(w(self.who[0], self.who[1]));
        state.write_u64(w(self.who[2], self.who[3]));
        state.write_u32(self.who[4]);
    }
}

/// The strings of one bound's tuples, each once.
///
/// Strings are found by address first, then by text: the tuples interned
/// must outlive the interner, so that no address is reused while it is.
pub(super) struct Interner {
    by_address: WordMap<usize, u32>,
    by_text: foldhash::HashMap<ArcStr, u32>,
    strings: Vec<ArcStr>,
    /// The id of [`OTHER`].
    other: u32,
}

impl Default for Interner {
    fn default() -> Self {
        let mut i = Interner {
            by_address: WordMap::default(),
            by_text: foldhash::HashMap::default(),
            strings: Vec::new(),
            other: 0,
        };
        i.other = i.id(&OTHER_TEXT);
        i
    }
}

impl Interner {
    /// The id of `s`.
    pub fn id(&mut self, s: &ArcStr) -> u32 {
        if let Some(&i) = self.by_address.get(&address(s)) {
            return i;
        }
        // The string itself kept, not a copy of it.
        let i = match self.by_text.get(&**s) {
            Some(&i) => i,
            None => self.push(s.clone()),
        };
        self.by_address.insert(address(s), i);
        i
    }

    /// The id of the text `s`.
    pub fn text(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.by_text.get(s) {
            return i;
        }
        self.push(s.into())
    }

    /// A string not yet interned, and its new id.
    fn push(&mut self, s: ArcStr) -> u32 {
        let i = self.strings.len() as u32;
        self.strings.push(s.clone());
        self.by_text.insert(s, i);
        i
    }

    /// A tuple's ids, with `client` the id of its client as it is to be kept.
    pub fn ids(&mut self, t: &Tuple, client: u32) -> Ids {
        self.ids_of(t.class, t.query, strings(t), client)
    }

    /// The ids of a tuple given as its class, query and strings (in the
    /// order [`Sampled::of`] takes them), with `client` the id of its client
    /// as it is to be kept.
    pub fn ids_of(&mut self, class: Class, query: u64, s: [&ArcStr; 7], client: u32) -> Ids {
        Ids {
            class,
            wait_type: self.id(s[0]),
            wait_event: self.id(s[1]),
            query,
            who: [
                self.id(s[2]),
                self.id(s[3]),
                self.id(s[4]),
                client,
                self.id(s[6]),
            ],
        }
    }

    /// The strings, in order, with the new id of each id given so far: ids
    /// then order as their strings do.
    pub fn ranked(self) -> Ranked {
        let mut order: Vec<u32> = (0..self.strings.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.strings[*a as usize].cmp(&self.strings[*b as usize]));
        let mut rank = vec![0; order.len()];
        for (r, i) in order.iter().enumerate() {
            rank[*i as usize] = r as u32;
        }
        let mut strings: Vec<Option<ArcStr>> = self.strings.into_iter().map(Some).collect();
        Ranked {
            strings: order
                .iter()
                .map(|i| strings[*i as usize].take().unwrap_or_default())
                .collect(),
            other: rank[self.other as usize],
            rank,
        }
    }
}

/// The strings of an [`Interner`] in order.
pub(super) struct Ranked {
    strings: Vec<ArcStr>,
    /// The new id of each id the interner gave.
    rank: Vec<u32>,
    other: u32,
}

impl Ranked {
    /// `ids` (as the interner gave them) with their new ids.
    pub fn ranked(&self, ids: Ids) -> Ids {
        let r = |i: u32| self.rank[i as usize];
        Ids {
            class: ids.class,
            wait_type: r(ids.wait_type),
            wait_event: r(ids.wait_event),
            query: ids.query,
            who: ids.who.map(r),
        }
    }

    /// `tuples` (new ids) summed and bounded: see [`super::Bucket::bound`].
    pub fn bounded(&self, tuples: Vec<(Ids, u32)>) -> Vec<(Ids, u32)> {
        bounded(tuples, self.other, self.strings.len(), false)
    }

    /// [`Ranked::bounded`] for `tuples` no two of which are equal: they are
    /// summed only where bounding made some equal.
    pub fn bounded_distinct(&self, tuples: Vec<(Ids, u32)>) -> Vec<(Ids, u32)> {
        bounded(tuples, self.other, self.strings.len(), true)
    }

    /// The strings, in order: what new ids index.
    pub fn strings(self) -> Vec<ArcStr> {
        self.strings
    }
}

/// The tuple `ids` stand for, with `strings` what its ids index.
pub(super) fn tuple(strings: &[ArcStr], ids: &Ids) -> Tuple {
    let s = |i: u32| strings[i as usize].clone();
    Tuple {
        class: ids.class,
        wait_type: s(ids.wait_type),
        wait_event: s(ids.wait_event),
        query: ids.query,
        user: s(ids.who[0]),
        database: s(ids.who[1]),
        application: s(ids.who[2]),
        client: s(ids.who[3]),
        backend_type: s(ids.who[4]),
    }
}

/// A [`Bucket`] with its tuples as ids into its minute's strings.
#[derive(Debug, Clone, Default)]
pub(super) struct IdBucket {
    pub start: Micros,
    pub len_us: Micros,
    pub samples: u32,
    pub covered_us: Micros,
    pub tuples: Vec<(Ids, u32)>,
    pub churn: Churn,
}

impl IdBucket {
    /// Its tuples added up by class, as a minute's.
    pub fn totals(&self) -> MinuteTotals {
        let classes = self.tuples.iter().map(|(ids, n)| (ids.class, *n));
        MinuteTotals::summing(self.start, self.samples, self.covered_us, classes)
    }

    /// Its tuples' strings, as a bucket.
    fn load(&self, strings: &[ArcStr]) -> Bucket {
        Bucket {
            start: self.start,
            len_us: self.len_us,
            samples: self.samples,
            covered_us: self.covered_us,
            tuples: self
                .tuples
                .iter()
                .map(|(ids, n)| (tuple(strings, ids), *n))
                .collect(),
            churn: self.churn.clone(),
        }
    }
}

/// A [`MinuteLoad`] with its tuples as ids into one table of strings: as a
/// counter builds a minute, and as a minute is packed for the store (see
/// [`super::stored`]), so that neither makes a tuple of strings.
#[derive(Debug, Default)]
pub(super) struct IdMinute {
    pub strings: Vec<ArcStr>,
    pub coarse: IdBucket,
    pub fine: Vec<IdBucket>,
}

impl IdMinute {
    /// `m`'s tuples, interned as they are.
    pub fn of(m: &MinuteLoad) -> IdMinute {
        let mut interner = Interner::default();
        let mut bucket = |b: &Bucket| IdBucket {
            start: b.start,
            len_us: b.len_us,
            samples: b.samples,
            covered_us: b.covered_us,
            tuples: b
                .tuples
                .iter()
                .map(|(t, n)| {
                    let client = interner.id(&t.client);
                    (interner.ids(t, client), *n)
                })
                .collect(),
            churn: b.churn.clone(),
        };
        let coarse = bucket(&m.coarse);
        let fine = m.fine.iter().map(bucket).collect();
        IdMinute {
            strings: interner.strings,
            coarse,
            fine,
        }
    }

    /// The minute as tuples.
    pub fn load(&self) -> MinuteLoad {
        MinuteLoad {
            coarse: self.coarse.load(&self.strings),
            fine: self.fine.iter().map(|b| b.load(&self.strings)).collect(),
        }
    }
}

/// Sums equal tuples and keeps at most [`TOP_KEYS`] keys per dimension and
/// [`MAX_TUPLES`] tuples, largest first (ties: the smaller tuple); `other`
/// is the id of [`OTHER`], and ids are below `strings`. With `distinct`, no
/// two of `tuples` are equal, so that only those bounding makes equal need
/// summing (sorting to find equal tuples took a third of bounding).
fn bounded(
    mut tuples: Vec<(Ids, u32)>,
    other: u32,
    strings: usize,
    distinct: bool,
) -> Vec<(Ids, u32)> {
    // With no more tuples than keys a dimension may keep, none has too many:
    // only equal tuples are summed.
    if tuples.len() <= TOP_KEYS {
        return if distinct {
            by_count(tuples)
        } else {
            summed(tuples)
        };
    }
    // Whether two tuples may be equal.
    let mut equal = !distinct;
    // Each dimension's keys beyond its top ones become `other`.
    let mut totals: Vec<Option<u64>> = vec![None; strings];
    for field in 0..5 {
        totals.fill(None);
        let mut keys = Vec::with_capacity(tuples.len().min(strings));
        for (t, n) in &tuples {
            let total = &mut totals[t.who[field] as usize];
            if total.is_none() {
                keys.push(t.who[field]);
            }
            *total = Some(total.unwrap_or(0) + u64::from(*n));
        }
        if keys.len() > TOP_KEYS {
            let keep = top(keys.iter().map(|i| (*i, totals[*i as usize].unwrap_or(0))));
            for (t, _) in tuples.iter_mut() {
                if keep.binary_search(&t.who[field]).is_err() {
                    t.who[field] = other;
                }
            }
            equal = true;
        }
    }
    // The wait, as a pair, and the query.
    let mut waits: WordMap<(u32, u32), u64> = WordMap::default();
    let mut queries: WordMap<u64, u64> = WordMap::default();
    for (t, n) in &tuples {
        *waits.entry((t.wait_type, t.wait_event)).or_default() += u64::from(*n);
        *queries.entry(t.query).or_default() += u64::from(*n);
    }
    if waits.len() > TOP_KEYS {
        let keep = top(waits.into_iter());
        for (t, _) in tuples.iter_mut() {
            if keep.binary_search(&(t.wait_type, t.wait_event)).is_err() {
                (t.wait_type, t.wait_event) = (other, other);
            }
        }
        equal = true;
    }
    if queries.len() > TOP_KEYS {
        let keep = top(queries.into_iter());
        for (t, _) in tuples.iter_mut() {
            if keep.binary_search(&t.query).is_err() {
                t.query = OTHER_QUERY;
            }
        }
        equal = true;
    }
    let mut tuples = if !equal {
        by_count(tuples)
    } else if distinct {
        // Two tuples equal now were not before, so bounding made `other` of
        // a key of one at least, and both name `other` now: only tuples
        // naming `other` are summed.
        // In place: a new vector for each side grew as it filled.
        let mut others = Vec::new();
        tuples.retain(|t| {
            let keep = !t.0.names(other);
            if !keep {
                others.push(*t);
            }
            keep
        });
        tuples.extend(equal_summed(others));
        by_count(tuples)
    } else {
        summed(tuples)
    };
    if tuples.len() > MAX_TUPLES {
        // One `other` tuple per class, so that classes never mix: room is
        // left for one of each.
        let rest = tuples.split_off(MAX_TUPLES - 3);
        let mut by_class: Vec<(Class, u32)> = Vec::new();
        for (t, n) in rest {
            match by_class.iter_mut().find(|(c, _)| *c == t.class) {
                Some((_, sum)) => *sum += n,
                None => by_class.push((t.class, n)),
            }
        }
        for (class, n) in by_class {
            let ids = Ids {
                class,
                wait_type: other,
                wait_event: other,
                query: OTHER_QUERY,
                who: [other; 5],
            };
            // Into the one kept, if one is: no two tuples are equal.
            match tuples.iter_mut().find(|(t, _)| *t == ids) {
                Some((_, sum)) => *sum += n,
                None => tuples.push((ids, n)),
            }
        }
    }
    tuples
}

/// Equal tuples summed, largest first (ties: the smaller tuple).
fn summed(tuples: Vec<(Ids, u32)>) -> Vec<(Ids, u32)> {
    by_count(equal_summed(tuples))
}

/// Equal tuples summed, in tuple order.
fn equal_summed(mut tuples: Vec<(Ids, u32)>) -> Vec<(Ids, u32)> {
    tuples.sort_unstable_by_key(|(t, _)| *t);
    tuples.dedup_by(|(t, n), (kept, sum)| {
        let equal = t == kept;
        if equal {
            *sum += *n;
        }
        equal
    });
    tuples
}

/// Tuples largest first (ties: the smaller tuple).
fn by_count(mut tuples: Vec<(Ids, u32)>) -> Vec<(Ids, u32)> {
    tuples.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    tuples
}

/// The [`TOP_KEYS`] keys with the largest totals (ties: the smaller key), in
/// key order.
fn top<K: Ord + Copy>(totals: impl Iterator<Item = (K, u64)>) -> Vec<K> {
    let mut all: Vec<(K, u64)> = totals.collect();
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP_KEYS);
    let mut keys: Vec<K> = all.into_iter().map(|(k, _)| k).collect();
    keys.sort_unstable();
    keys
}

//! A server's strings and fingerprints, stored once an hour rather than in
//! every row (see [`super::dictionaries`]): the tables rows name them by
//! index in, and a dictionary as read back.

use std::collections::BTreeSet;

use pgfleet_proto::model::ArcStr;
use prost::Message;
use tracing::warn;

use super::compress::{compressed, decompressed};

/// Gives each key an index, once.
#[derive(Debug, Default)]
pub(super) struct Table<K> {
    index: foldhash::HashMap<K, u32>,
    pub(super) values: Vec<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    pub(super) fn of(&mut self, key: &K) -> u32 {
        if let Some(i) = self.index.get(key) {
            return *i;
        }
        let i = self.values.len() as u32;
        self.index.insert(key.clone(), i);
        self.values.push(key.clone());
        i
    }
}

impl Table<ArcStr> {
    /// [`Table::of`] for a string not yet shared: made an `ArcStr` only when new.
    pub(super) fn of_str(&mut self, key: &str) -> u32 {
        if let Some(i) = self.index.get(key) {
            return *i;
        }
        self.of(&ArcStr::from(key))
    }
}

/// What rows name by index: their strings and their query fingerprints.
#[derive(Debug, Default)]
pub(super) struct Tables {
    pub(super) strings: Table<ArcStr>,
    pub(super) queries: Table<u64>,
}

impl Tables {
    pub(super) fn len(&self) -> usize {
        self.strings.values.len() + self.queries.values.len()
    }

    /// The tables as a stored dictionary.
    pub(super) fn encode(&self) -> Vec<u8> {
        let stored = StoredKeys {
            strings: self.strings.values.iter().map(|s| s.to_string()).collect(),
            queries: self.queries.values.clone(),
            own_hour: true,
        };
        compressed(stored.encode_to_vec())
    }
}

/// A dictionary as read back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Keys {
    pub(super) strings: Vec<ArcStr>,
    pub(super) queries: Vec<u64>,
    /// Whether every row that names it starts in its hour (see
    /// [`super::dictionaries`]): not so for earlier versions' dictionaries.
    pub(super) own_hour: bool,
    /// Whether its strings were left unread ([`Keys::decode_for`]).
    pub(super) no_strings: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredKeys {
    #[prost(string, repeated, tag = "1")]
    strings: Vec<String>,
    #[prost(fixed64, repeated, tag = "2")]
    queries: Vec<u64>,
    #[prost(bool, tag = "3")]
    own_hour: bool,
}

impl Keys {
    /// Whether every row that names it starts in its hour.
    pub fn own_hour(&self) -> bool {
        self.own_hour
    }

    /// A dictionary as versions before `own_hour` stored it.
    #[cfg(test)]
    pub(crate) fn encode_as_before(strings: &[&str]) -> Vec<u8> {
        let stored = StoredKeys {
            strings: strings.iter().map(|s| (*s).to_owned()).collect(),
            queries: Vec::new(),
            own_hour: false,
        };
        compressed(stored.encode_to_vec())
    }

    /// A stored dictionary back with its strings only if `strings`: what a
    /// question about a query asks of it needs its fingerprints alone, and
    /// its strings were most of its decoding; None when the bytes are not
    /// one.
    pub fn decode_for(bytes: &[u8], strings: bool) -> Option<Keys> {
        if strings {
            return Keys::decode(bytes);
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Fingerprints {
            #[prost(fixed64, repeated, tag = "2")]
            queries: Vec<u64>,
            #[prost(bool, tag = "3")]
            own_hour: bool,
        }
        let bytes = decompressed(bytes)?;
        let s = Fingerprints::decode(bytes.as_ref()).ok()?;
        Some(Keys {
            strings: Vec::new(),
            queries: s.queries,
            own_hour: s.own_hour,
            no_strings: true,
        })
    }

    /// A stored dictionary back; None when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Keys> {
        let bytes = decompressed(bytes)?;
        let s = StoredKeys::decode(bytes.as_ref()).ok()?;
        Some(Keys {
            strings: s.strings.into_iter().map(ArcStr::from).collect(),
            queries: s.queries,
            own_hour: s.own_hour,
            no_strings: false,
        })
    }
}

/// A stored row read as far as the dictionary it names.
pub trait Parsed: Sized {
    /// What it decodes to.
    type Row;
    /// What a row is, for the warning when one does not decode.
    const WHAT: &'static str;
    /// The dictionary it names (0: none, its strings are its own).
    fn keys(&self) -> i64;
    /// The row, with `keys` the dictionary it names (or any, when it names
    /// none); None when it does not fit them.
    fn with(self, keys: &Keys) -> Option<Self::Row>;
}

/// The rows a store parses at a time, before it reads the dictionaries they
/// name that its [`KeysCache`] does not hold: some 3–40 MB of minutes of
/// load (a busy server's parse to some 1 KB, the load generator's to 10).
pub const CHUNK_ROWS: usize = 4096;

/// Rows a store read, `(server_id, at, parsed)` (None: not a row at all),
/// waiting for their dictionaries.
pub struct Pending<P>(Vec<(String, i64, Option<P>)>);

impl<P: Parsed> Pending<P> {
    pub fn new(rows: Vec<(String, i64, Option<P>)>) -> Self {
        Pending(rows)
    }

    /// Hands `f` each row decoded with its dictionary from `cache`, which
    /// must hold those [`KeysCache::missing`] named; a row that does not
    /// decode, or whose dictionary is not there, is skipped with a warning.
    pub fn finish(self, cache: &mut KeysCache, mut f: impl FnMut(&str, i64, P::Row)) {
        let none = Keys::default();
        let last = self.0.last().map(|(_, at, _)| *at);
        for (server_id, at, p) in self.0 {
            let row = p.and_then(|p| {
                let keys = match p.keys() {
                    0 => None,
                    id => cache.keys.get_mut(&(server_id.clone(), id)),
                };
                let keys = keys.and_then(|(k, used)| {
                    *used = at;
                    k.as_ref()
                });
                p.with(keys.unwrap_or(&none))
            });
            match row {
                Some(row) => f(&server_id, at, row),
                None => {
                    warn!(server.id = %server_id, at, "Skipped {} that does not decode.", P::WHAT)
                }
            }
        }
        if let Some(last) = last {
            cache.forget_far_from(last);
        }
    }
}

/// The dictionaries rows read in chunks name, each read once while the rows
/// near it are read: rows name their server's dictionary of their hour, so a
/// fleet's day read by time (as rows are written) holds about two hours'
/// dictionaries at a time, not the day's, and one read by server, the
/// server's. Rows in any other order read right, with more lookups.
#[derive(Default)]
pub struct KeysCache {
    /// By server and id: the dictionary (None: not found, or does not
    /// decode) and the time of the last row that named it.
    keys: std::collections::HashMap<(String, i64), (Option<Keys>, i64)>,
}

impl KeysCache {
    /// The dictionaries `rows` name that it does not hold, by server and id.
    pub fn missing<P: Parsed>(&self, rows: &Pending<P>) -> BTreeSet<(String, i64)> {
        let mut out = BTreeSet::new();
        for (server_id, _, p) in &rows.0 {
            if let Some(id) = p.as_ref().map(P::keys).filter(|id| *id != 0)
                && !self.keys.contains_key(&(server_id.clone(), id))
            {
                out.insert((server_id.clone(), id));
            }
        }
        out
    }

    /// Takes what a store found of the dictionaries `asked` for: those not
    /// found are held as missing, so that rows naming them are skipped
    /// without asking again.
    pub fn found(
        &mut self,
        asked: BTreeSet<(String, i64)>,
        mut found: std::collections::HashMap<(String, i64), Keys>,
    ) {
        for key in asked {
            let keys = found.remove(&key);
            self.keys.insert(key, (keys, i64::MIN));
        }
    }

    /// Lets go of the dictionaries no row within an hour of `at` named.
    fn forget_far_from(&mut self, at: i64) {
        self.keys
            .retain(|_, (_, used)| used.abs_diff(at) <= super::hours::HOUR_US as u64);
    }

    /// How many dictionaries it holds.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::hours::HOUR_US;

    /// A row that names dictionary `self.0` and decodes to its first query.
    struct Row(i64);

    impl Parsed for Row {
        type Row = u64;
        const WHAT: &'static str = "a test row";
        fn keys(&self) -> i64 {
            self.0
        }
        fn with(self, keys: &Keys) -> Option<u64> {
            keys.queries.first().copied()
        }
    }

    #[test]
    fn a_cache_reads_each_dictionary_once_and_holds_those_near_the_rows_read() {
        let mut cache = KeysCache::default();
        let mut read = 0;
        // Ten servers' rows by time, a chunk every 10 minutes, five hours;
        // each server names its dictionary of the hour (id: the hour + 1).
        for hour in 0..5i64 {
            for tenth in 0..6 {
                let at = hour * HOUR_US + tenth * HOUR_US / 6;
                let rows = (0..10)
                    .map(|s| (format!("s{s}"), at, Some(Row(hour + 1))))
                    .collect();
                let pending = Pending::new(rows);
                let missing = cache.missing(&pending);
                let want = if tenth == 0 { 10 } else { 0 };
                assert_eq!(
                    missing.len(),
                    want,
                    "hour {hour}, {tenth}0 min: {missing:?}"
                );
                let found = missing
                    .iter()
                    .filter(|(s, _)| s != "s3" || hour != 2)
                    .map(|(s, id)| {
                        let keys = Keys {
                            queries: vec![hour as u64],
                            ..Keys::default()
                        };
                        ((s.clone(), *id), keys)
                    })
                    .collect();
                cache.found(missing, found);
                let mut got = Vec::new();
                pending.finish(&mut cache, |s, _, q| got.push((s.to_owned(), q)));
                // s3's dictionary of hour 2 is missing: its rows are
                // skipped, and it is not asked for again.
                assert_eq!(got.len(), if hour == 2 { 9 } else { 10 });
                assert!(got.iter().all(|(_, q)| *q == hour as u64));
                read += got.len();
                assert!(
                    cache.held() <= 20,
                    "two hours' dictionaries: {}",
                    cache.held()
                );
            }
        }
        assert_eq!(read, 5 * 6 * 10 - 6);
    }
}

//! A server's strings and fingerprints, stored once an hour rather than in
//! every row (see [`super::dictionaries`]): the tables rows name them by
//! index in, and a dictionary as read back.

use pgfleet_proto::model::ArcStr;
use prost::Message;

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
        };
        compressed(stored.encode_to_vec())
    }
}

/// A dictionary as read back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Keys {
    pub(super) strings: Vec<ArcStr>,
    pub(super) queries: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredKeys {
    #[prost(string, repeated, tag = "1")]
    strings: Vec<String>,
    #[prost(fixed64, repeated, tag = "2")]
    queries: Vec<u64>,
}

impl Keys {
    /// A stored dictionary back; None when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Keys> {
        let bytes = decompressed(bytes)?;
        let s = StoredKeys::decode(bytes.as_ref()).ok()?;
        Some(Keys {
            strings: s.strings.into_iter().map(ArcStr::from).collect(),
            queries: s.queries,
        })
    }
}

/// A stored row read as far as the dictionary it names.
pub trait Parsed: Sized {
    /// What it decodes to.
    type Row;
    /// The dictionary it names (0: none, its strings are its own).
    fn keys(&self) -> i64;
    /// The row, with `keys` the dictionary it names (or any, when it names
    /// none); None when it does not fit them.
    fn with(self, keys: &Keys) -> Option<Self::Row>;
}

/// Rows a store read, `(server_id, at, parsed)` (None: not a row at all),
/// waiting for their dictionaries.
pub struct Pending<P>(Vec<(String, i64, Option<P>)>);

impl<P: Parsed> Pending<P> {
    pub fn new(rows: Vec<(String, i64, Option<P>)>) -> Self {
        Pending(rows)
    }

    /// The dictionaries they name, by server and id, each once.
    pub fn named(&self) -> std::collections::BTreeSet<(String, i64)> {
        self.0
            .iter()
            .filter_map(|(s, _, p)| Some((s.clone(), p.as_ref()?.keys())))
            .filter(|(_, id)| *id != 0)
            .collect()
    }

    /// Each row decoded with its dictionary from `keys` (None: it does not
    /// decode, or its dictionary is not there).
    pub fn finish(
        self,
        keys: &std::collections::HashMap<(String, i64), Keys>,
    ) -> Vec<(String, i64, Option<P::Row>)> {
        let none = Keys::default();
        self.0
            .into_iter()
            .map(|(server_id, at, p)| {
                let row = p.and_then(|p| {
                    let k = keys.get(&(server_id.clone(), p.keys()));
                    p.with(k.unwrap_or(&none))
                });
                (server_id, at, row)
            })
            .collect()
    }
}

//! A server's strings and fingerprints, stored once an hour rather than in
//! every row (see [`super::dictionaries`]): the tables rows name them by
//! index in, and a dictionary as read back.

use std::sync::Arc;

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

/// What rows name by index: their strings and their query fingerprints.
#[derive(Debug, Default)]
pub(super) struct Tables {
    pub(super) strings: Table<Arc<str>>,
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
    pub(super) strings: Vec<Arc<str>>,
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
            strings: s.strings.into_iter().map(Arc::from).collect(),
            queries: s.queries,
        })
    }
}

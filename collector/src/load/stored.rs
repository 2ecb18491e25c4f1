//! A minute of load as both stores keep it: its bucket in protobuf, with its
//! own table of strings and fingerprints and each tuple a row of indexes
//! into them; its 10 s buckets as counts of the minute's tuples; the whole
//! compressed with zstd.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use super::churn::{Churn, ChurnCount, ChurnKey};
use super::{Bucket, COARSE_US, Class, FINE_US, MinuteLoad, Tuple};

/// The columns of a tuple's row in [`StoredLoad::cells`].
const TUPLE_CELLS: usize = 9;

/// The columns of a churn row in [`StoredLoad::churn_cells`].
const CHURN_CELLS: usize = 6;

#[derive(Clone, PartialEq, prost::Message)]
struct StoredLoad {
    #[prost(uint32, tag = "1")]
    samples: u32,
    #[prost(int64, tag = "2")]
    covered_us: i64,
    #[prost(string, repeated, tag = "3")]
    strings: Vec<String>,
    #[prost(fixed64, repeated, tag = "4")]
    queries: Vec<u64>,
    /// Per tuple: class, wait type, wait event, query (into `queries`),
    /// user, database, application, client, backend type. (Row by row:
    /// stored column by column it compressed 5% worse.)
    #[prost(uint32, repeated, tag = "5")]
    cells: Vec<u32>,
    #[prost(uint32, repeated, tag = "6")]
    counts: Vec<u32>,
    /// Per churn row: database, application, user, client, started, ended.
    #[prost(uint32, repeated, tag = "7")]
    churn_cells: Vec<u32>,
    #[prost(int64, repeated, tag = "8")]
    churn_lifetimes_us: Vec<i64>,
    /// The lifetime histogram: index, count, index, count, …
    #[prost(uint32, repeated, tag = "9")]
    lifetimes: Vec<u32>,
    #[prost(int64, tag = "10")]
    lifetime_max_us: i64,
    /// Sessions established: database (a string), count, …
    #[prost(uint32, repeated, tag = "11")]
    established: Vec<u32>,
    /// The minute's 10 s buckets.
    #[prost(message, repeated, tag = "12")]
    fine: Vec<StoredFine>,
}

/// A 10 s bucket of a minute: its counts of the minute's tuples.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredFine {
    /// Its start, in seconds after the minute's.
    #[prost(uint32, tag = "1")]
    offset_s: u32,
    #[prost(uint32, tag = "2")]
    samples: u32,
    #[prost(int64, tag = "3")]
    covered_us: i64,
    /// Tuple (an index into the minute's), count, tuple, count, …
    #[prost(uint32, repeated, tag = "4")]
    counts: Vec<u32>,
}

/// The most bytes a stored row of load may take once decompressed.
const MAX_ROW_BYTES: usize = 16 << 20;

const ZSTD_LEVEL: i32 = 3;

/// A row as stored: `bytes` compressed with zstd (as they are, should the
/// compressor fail; reading tells the two apart).
pub(super) fn compressed(bytes: Vec<u8>) -> Vec<u8> {
    zstd::bulk::compress(&bytes, ZSTD_LEVEL).unwrap_or(bytes)
}

/// A stored row's bytes, decompressed if they were; None when they do not
/// decompress within [`MAX_ROW_BYTES`].
pub(super) fn decompressed(bytes: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if bytes.starts_with(&ZSTD_MAGIC) {
        zstd::bulk::decompress(bytes, MAX_ROW_BYTES)
            .ok()
            .map(std::borrow::Cow::Owned)
    } else {
        Some(std::borrow::Cow::Borrowed(bytes))
    }
}

impl MinuteLoad {
    /// The minute as stored: its bucket, its 10 s buckets as counts of the
    /// bucket's tuples (a tuple only a 10 s bucket has joins the minute's
    /// with no count of its own), compressed.
    pub fn encode(&self) -> Vec<u8> {
        let mut coarse = self.coarse.clone();
        let mut index: HashMap<Tuple, u32> = coarse
            .tuples
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        let mut fine = Vec::with_capacity(self.fine.len());
        for b in &self.fine {
            let mut counts = Vec::with_capacity(b.tuples.len() * 2);
            for (t, n) in &b.tuples {
                let i = match index.get(t) {
                    Some(i) => *i,
                    None => {
                        let i = coarse.tuples.len() as u32;
                        coarse.tuples.push((t.clone(), 0));
                        index.insert(t.clone(), i);
                        i
                    }
                };
                counts.extend([i, *n]);
            }
            fine.push(StoredFine {
                offset_s: ((b.start - self.coarse.start).max(0) / 1_000_000) as u32,
                samples: b.samples,
                covered_us: b.covered_us,
                counts,
            });
        }
        let mut stored = coarse.stored();
        stored.fine = fine;
        compressed(stored.encode_to_vec())
    }

    /// A stored minute back (starting at `start`); None when the bytes are
    /// not one.
    pub fn decode(start: i64, bytes: &[u8]) -> Option<MinuteLoad> {
        let bytes = decompressed(bytes)?;
        let mut stored = StoredLoad::decode(bytes.as_ref()).ok()?;
        let fine_stored = std::mem::take(&mut stored.fine);
        let mut coarse = Bucket::from_stored(start, COARSE_US, stored)?;
        let mut fine = Vec::with_capacity(fine_stored.len());
        for f in fine_stored {
            let mut tuples = Vec::with_capacity(f.counts.len() / 2);
            for pair in f.counts.chunks_exact(2) {
                tuples.push((coarse.tuples.get(pair[0] as usize)?.0.clone(), pair[1]));
            }
            fine.push(Bucket {
                start: start + i64::from(f.offset_s) * 1_000_000,
                len_us: FINE_US,
                samples: f.samples,
                covered_us: f.covered_us,
                tuples,
                churn: Churn::default(),
            });
        }
        coarse.tuples.retain(|(_, n)| *n > 0);
        Some(MinuteLoad { coarse, fine })
    }
}

impl StoredLoad {
    fn with_strings(mut self, strings: Vec<Arc<str>>) -> StoredLoad {
        self.strings = strings.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Gives each string an index, once.
#[derive(Default)]
struct Table<K> {
    index: HashMap<K, u32>,
    values: Vec<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn of(&mut self, key: &K) -> u32 {
        if let Some(i) = self.index.get(key) {
            return *i;
        }
        let i = self.values.len() as u32;
        self.index.insert(key.clone(), i);
        self.values.push(key.clone());
        i
    }
}

impl Bucket {
    /// The bucket as stored, without compression.
    pub fn encode(&self) -> Vec<u8> {
        self.stored().encode_to_vec()
    }

    fn stored(&self) -> StoredLoad {
        let mut strings: Table<Arc<str>> = Table::default();
        let mut queries: Table<u64> = Table::default();
        let mut cells = Vec::with_capacity(self.tuples.len() * TUPLE_CELLS);
        for (t, _) in &self.tuples {
            cells.extend([
                t.class as u32,
                strings.of(&t.wait_type),
                strings.of(&t.wait_event),
                queries.of(&t.query),
                strings.of(&t.user),
                strings.of(&t.database),
                strings.of(&t.application),
                strings.of(&t.client),
                strings.of(&t.backend_type),
            ]);
        }
        let mut churn_cells = Vec::with_capacity(self.churn.rows.len() * CHURN_CELLS);
        for (k, c) in &self.churn.rows {
            churn_cells.extend([
                strings.of(&k.database),
                strings.of(&k.application),
                strings.of(&k.user),
                strings.of(&k.client),
                c.started,
                c.ended,
            ]);
        }
        StoredLoad {
            samples: self.samples,
            covered_us: self.covered_us,
            queries: queries.values,
            cells,
            counts: self.tuples.iter().map(|(_, n)| *n).collect(),
            churn_cells,
            churn_lifetimes_us: self.churn.rows.iter().map(|(_, c)| c.lifetime_us).collect(),
            lifetimes: self
                .churn
                .lifetimes
                .iter()
                .flat_map(|(i, n)| [u32::from(*i), *n])
                .collect(),
            lifetime_max_us: self.churn.lifetime_max_us,
            established: self
                .churn
                .established
                .iter()
                .flat_map(|(d, n)| [strings.of(d), *n])
                .collect(),
            strings: Vec::new(),
            fine: Vec::new(),
        }
        .with_strings(strings.values)
    }

    /// A stored bucket back; None when the bytes are not one.
    pub fn decode(start: i64, len_us: i64, bytes: &[u8]) -> Option<Bucket> {
        Self::from_stored(start, len_us, StoredLoad::decode(bytes).ok()?)
    }

    fn from_stored(start: i64, len_us: i64, s: StoredLoad) -> Option<Bucket> {
        let strings: Vec<Arc<str>> = s.strings.into_iter().map(Arc::from).collect();
        let text = |i: u32| strings.get(i as usize).cloned();
        if s.cells.len() != s.counts.len() * TUPLE_CELLS
            || s.churn_cells.len() != s.churn_lifetimes_us.len() * CHURN_CELLS
        {
            return None;
        }
        let mut tuples = Vec::with_capacity(s.counts.len());
        for (row, n) in s.cells.chunks_exact(TUPLE_CELLS).zip(s.counts) {
            tuples.push((
                Tuple {
                    class: Class::from_code(row[0])?,
                    wait_type: text(row[1])?,
                    wait_event: text(row[2])?,
                    query: *s.queries.get(row[3] as usize)?,
                    user: text(row[4])?,
                    database: text(row[5])?,
                    application: text(row[6])?,
                    client: text(row[7])?,
                    backend_type: text(row[8])?,
                },
                n,
            ));
        }
        let mut rows = Vec::with_capacity(s.churn_lifetimes_us.len());
        for (row, lifetime_us) in s
            .churn_cells
            .chunks_exact(CHURN_CELLS)
            .zip(s.churn_lifetimes_us)
        {
            rows.push((
                ChurnKey {
                    database: text(row[0])?,
                    application: text(row[1])?,
                    user: text(row[2])?,
                    client: text(row[3])?,
                },
                ChurnCount {
                    started: row[4],
                    ended: row[5],
                    lifetime_us,
                },
            ));
        }
        Some(Bucket {
            start,
            len_us,
            samples: s.samples,
            covered_us: s.covered_us,
            tuples,
            churn: Churn {
                rows,
                lifetimes: s
                    .lifetimes
                    .chunks_exact(2)
                    .map(|p| (u16::try_from(p[0]).unwrap_or(u16::MAX), p[1]))
                    .collect(),
                lifetime_max_us: s.lifetime_max_us,
                established: s
                    .established
                    .chunks_exact(2)
                    .map(|p| Some((text(p[0])?, p[1])))
                    .collect::<Option<Vec<_>>>()?,
            },
        })
    }
}

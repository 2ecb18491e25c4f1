//! Statement statistics as the collector keeps them: each read of a server's
//! pg_stat_statements summed by fingerprint (over queryids, databases and
//! users), so that they join load, which knows queries by fingerprint.

use std::collections::HashMap;

use pgfleet_proto::v1;
use prost::Message;

use super::OTHER_QUERY;
use super::compress::{compressed, decompressed};
use super::keys::{Keys, Parsed, Table};

/// One statement's increments, or their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub calls: u64,
    pub time_ms: f64,
    pub rows: u64,
    pub shared_blks_hit: u64,
    pub shared_blks_read: u64,
    pub shared_blks_dirtied: u64,
    pub shared_blks_written: u64,
    pub temp_blks_read: u64,
    pub temp_blks_written: u64,
    pub wal_bytes: u64,
}

impl Totals {
    fn of(d: &v1::StatementDelta) -> Totals {
        Totals {
            calls: d.calls,
            time_ms: d.exec_time_ms.max(0.0),
            rows: d.rows,
            shared_blks_hit: d.shared_blks_hit,
            shared_blks_read: d.shared_blks_read,
            shared_blks_dirtied: d.shared_blks_dirtied,
            shared_blks_written: d.shared_blks_written,
            temp_blks_read: d.temp_blks_read,
            temp_blks_written: d.temp_blks_written,
            wal_bytes: d.wal_bytes,
        }
    }

    /// Adds `o`.
    pub fn add(&mut self, o: &Totals) {
        self.calls += o.calls;
        self.time_ms += o.time_ms;
        self.rows += o.rows;
        self.shared_blks_hit += o.shared_blks_hit;
        self.shared_blks_read += o.shared_blks_read;
        self.shared_blks_dirtied += o.shared_blks_dirtied;
        self.shared_blks_written += o.shared_blks_written;
        self.temp_blks_read += o.temp_blks_read;
        self.temp_blks_written += o.temp_blks_written;
        self.wal_bytes += o.wal_bytes;
    }

    /// As the Query API gives them.
    pub fn message(&self) -> v1::StatementTotals {
        v1::StatementTotals {
            calls: self.calls,
            total_time_ms: self.time_ms,
            mean_time_ms: if self.calls == 0 {
                0.0
            } else {
                self.time_ms / self.calls as f64
            },
            rows: self.rows,
            shared_blks_hit: self.shared_blks_hit,
            shared_blks_read: self.shared_blks_read,
            shared_blks_dirtied: self.shared_blks_dirtied,
            shared_blks_written: self.shared_blks_written,
            temp_blks_read: self.temp_blks_read,
            temp_blks_written: self.temp_blks_written,
            wal_bytes: self.wal_bytes,
        }
    }
}

/// How long the collector sums a server's statement increments for before
/// it stores them: per-read rows of a hundred statements a minute would
/// take megabytes per server per day.
pub const STATEMENTS_US: i64 = 600_000_000;

/// The most statements a stored interval keeps; the rest are summed as
/// [`OTHER_QUERY`].
pub const TOP_STATEMENTS: usize = 500;

/// One read of one server, or the reads of an interval, by fingerprint
/// ([`OTHER_QUERY`] for the sum of the statements left out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Read {
    /// When the read's increments begin.
    pub since_us: i64,
    pub by_query: Vec<(u64, Totals)>,
}

impl Read {
    /// A sample's increments summed by fingerprint, and the texts it
    /// carries; None for a first read (a baseline, without increments).
    pub fn of(sample: &v1::StatementsSample) -> Option<(Read, Vec<(u64, String)>)> {
        if sample.since_us == 0 {
            return None;
        }
        let mut sums: HashMap<u64, Totals> = HashMap::new();
        let mut texts = Vec::new();
        for d in &sample.statements {
            sums.entry(d.query_fingerprint)
                .or_default()
                .add(&Totals::of(d));
            if !d.query.is_empty() && d.query_fingerprint != 0 {
                texts.push((d.query_fingerprint, d.query.clone()));
            }
        }
        if let Some(other) = &sample.other
            && other.calls > 0
        {
            sums.entry(OTHER_QUERY).or_default().add(&Totals::of(other));
        }
        let mut by_query: Vec<(u64, Totals)> = sums.into_iter().collect();
        by_query.sort_unstable_by_key(|(f, _)| *f);
        Some((
            Read {
                since_us: sample.since_us,
                by_query,
            },
            texts,
        ))
    }

    /// Adds `other`'s increments.
    pub fn absorb(&mut self, other: &Read) {
        self.since_us = if self.since_us == 0 {
            other.since_us
        } else {
            self.since_us.min(other.since_us)
        };
        let mut sums: HashMap<u64, Totals> =
            std::mem::take(&mut self.by_query).into_iter().collect();
        for (f, t) in &other.by_query {
            sums.entry(*f).or_default().add(t);
        }
        self.by_query = sums.into_iter().collect();
        self.by_query.sort_unstable_by_key(|(f, _)| *f);
    }

    /// Keeps the [`TOP_STATEMENTS`] with the most time, the rest summed.
    pub fn bound(&mut self) {
        if self.by_query.len() <= TOP_STATEMENTS {
            return;
        }
        self.by_query
            .sort_by(|a, b| b.1.time_ms.total_cmp(&a.1.time_ms).then(a.0.cmp(&b.0)));
        let mut other = Totals::default();
        for (_, t) in self.by_query.split_off(TOP_STATEMENTS - 1) {
            other.add(&t);
        }
        match self.by_query.iter_mut().find(|(f, _)| *f == OTHER_QUERY) {
            Some((_, t)) => t.add(&other),
            None => self.by_query.push((OTHER_QUERY, other)),
        }
        self.by_query.sort_unstable_by_key(|(f, _)| *f);
    }

    /// The read as stored, with fingerprints of its own, as rows were
    /// before dictionaries: an hour's intervals added up (the store writes
    /// the intervals through [`super::dictionaries`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = self.stored();
        s.queries = self.by_query.iter().map(|(f, _)| *f).collect();
        compressed(s.encode_to_vec())
    }

    /// The read as stored, naming its fingerprints in the dictionary `keys`
    /// (whose `queries` it adds to).
    pub(super) fn encode_with(&self, keys: i64, queries: &mut Table<u64>) -> Vec<u8> {
        let mut s = self.stored();
        s.keys = keys;
        s.query_indexes = self.by_query.iter().map(|(f, _)| queries.of(f)).collect();
        compressed(s.encode_to_vec())
    }

    fn stored(&self) -> StoredRead {
        let mut s = StoredRead {
            since_us: self.since_us,
            ..Default::default()
        };
        for (_, t) in &self.by_query {
            s.times_us
                .push((t.time_ms * 1000.0).round().max(0.0) as u64);
            s.counters.extend([
                t.calls,
                t.rows,
                t.shared_blks_hit,
                t.shared_blks_read,
                t.shared_blks_dirtied,
                t.shared_blks_written,
                t.temp_blks_read,
                t.temp_blks_written,
                t.wal_bytes,
            ]);
        }
        s
    }

    /// A stored read back, with fingerprints of its own; None when the
    /// bytes are not one.
    #[cfg(test)]
    pub fn decode(bytes: &[u8]) -> Option<Read> {
        Self::parse(bytes)?.with(&Keys::default())
    }

    /// A stored read, read as far as the dictionary it needs.
    pub fn parse(bytes: &[u8]) -> Option<ParsedRead> {
        let bytes = decompressed(bytes)?;
        Some(ParsedRead(StoredRead::decode(bytes.as_ref()).ok()?))
    }
}

/// A stored read not yet given its dictionary.
pub struct ParsedRead(StoredRead);

impl Parsed for ParsedRead {
    type Row = Read;
    const WHAT: &'static str = "an interval of statement statistics";

    fn keys(&self) -> i64 {
        self.0.keys
    }

    fn with(self, keys: &Keys) -> Option<Read> {
        let s = self.0;
        let queries = if s.keys == 0 {
            s.queries
        } else {
            s.query_indexes
                .iter()
                .map(|i| keys.queries.get(*i as usize).copied())
                .collect::<Option<Vec<u64>>>()?
        };
        if queries.len() != s.times_us.len() || s.counters.len() != queries.len() * 9 {
            return None;
        }
        let by_query = queries
            .iter()
            .zip(&s.times_us)
            .zip(s.counters.chunks_exact(9))
            .map(|((f, time_us), c)| {
                (
                    *f,
                    Totals {
                        calls: c[0],
                        time_ms: *time_us as f64 / 1000.0,
                        rows: c[1],
                        shared_blks_hit: c[2],
                        shared_blks_read: c[3],
                        shared_blks_dirtied: c[4],
                        shared_blks_written: c[5],
                        temp_blks_read: c[6],
                        temp_blks_written: c[7],
                        wal_bytes: c[8],
                    },
                )
            })
            .collect();
        Some(Read {
            since_us: s.since_us,
            by_query,
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredRead {
    #[prost(int64, tag = "1")]
    since_us: i64,
    #[prost(fixed64, repeated, tag = "2")]
    queries: Vec<u64>,
    /// Execution time in whole microseconds (a varint, where a double takes
    /// eight bytes).
    #[prost(uint64, repeated, tag = "5")]
    times_us: Vec<u64>,
    /// Per query: calls, rows, the shared blocks hit, read, dirtied and
    /// written, the temp blocks read and written, and WAL bytes.
    #[prost(uint64, repeated, tag = "4")]
    counters: Vec<u64>,
    /// The server-hour's dictionary (see [`super::dictionaries`]) that
    /// `query_indexes` are into; 0: the fingerprints are in `queries`.
    #[prost(int64, tag = "6")]
    keys: i64,
    #[prost(uint32, repeated, tag = "7")]
    query_indexes: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sum_by_fingerprint_keep_texts_and_come_back_as_stored() {
        let d = |q: i64, f: u64, text: &str, calls: u64| v1::StatementDelta {
            query_id: q,
            query_fingerprint: f,
            query: text.into(),
            calls,
            exec_time_ms: calls as f64 * 2.0,
            rows: calls,
            ..Default::default()
        };
        let sample = v1::StatementsSample {
            since_us: 5,
            statements: vec![d(1, 7, "SELECT $1", 3), d(2, 7, "", 4), d(3, 9, "", 1)],
            other: Some(d(0, 0, "", 10)),
            ..Default::default()
        };
        let (read, texts) = Read::of(&sample).unwrap();
        assert_eq!(texts, [(7, "SELECT $1".to_owned())]);
        let calls: Vec<(u64, u64)> = read.by_query.iter().map(|(f, t)| (*f, t.calls)).collect();
        assert_eq!(calls, [(7, 7), (9, 1), (OTHER_QUERY, 10)]);
        assert_eq!(Read::decode(&read.encode()), Some(read));
        let baseline = v1::StatementsSample::default();
        assert!(Read::of(&baseline).is_none());
    }

    #[test]
    fn intervals_sum_reads_and_keep_the_top_statements() {
        let read = |n: u64| Read {
            since_us: 10 * n as i64,
            by_query: (1..=n)
                .map(|f| {
                    (
                        f,
                        Totals {
                            calls: 1,
                            time_ms: f as f64,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        };
        let mut sum = read(3);
        sum.absorb(&read(600));
        assert_eq!(sum.since_us, 30);
        assert_eq!(sum.by_query.len(), 600);
        sum.bound();
        assert_eq!(sum.by_query.len(), TOP_STATEMENTS);
        let calls: u64 = sum.by_query.iter().map(|(_, t)| t.calls).sum();
        assert_eq!(calls, 603, "nothing lost");
        assert!(sum.by_query.iter().any(|(f, _)| *f == 600));
        assert!(!sum.by_query.iter().any(|(f, _)| *f == 1));
    }
}

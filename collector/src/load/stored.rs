//! A minute of load as both stores keep it: its bucket in protobuf, with its
//! own table of strings and fingerprints and each tuple a row of indexes
//! into them; its 10 s buckets as counts of the minute's tuples; the whole
//! compressed with zstd.

use pgfleet_proto::model::ArcStr;
use prost::Message;

use super::churn::{Churn, ChurnCount, ChurnKey};
use super::compress::{compressed, decompressed};
use super::intern::{IdBucket, IdMinute, Ids, WordMap};
use super::keys::{Keys, Parsed, Table, Tables};
use super::{Bucket, COARSE_US, Class, FINE_US, MinuteLoad, Tuple};

/// The columns of a tuple's row in [`StoredLoad::cells`].
const TUPLE_CELLS: usize = 5;

/// The columns of a row of [`StoredLoad::who`].
const WHO_CELLS: usize = 5;

/// The columns of a tuple's row as stored before [`StoredLoad::who`].
const TUPLE_CELLS_V1: usize = 9;

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
    /// and who ran it (into `who`). (Row by row: stored column by column it
    /// compressed 5% worse.) Rows of an earlier version have nine cells and
    /// no `who`: user, database, application, client and backend type in
    /// place of the row of `who`.
    #[prost(uint32, repeated, tag = "5")]
    cells: Vec<u32>,
    /// Who ran the tuples: user, database, application, client, backend
    /// type, a row each; a minute's tuples share a few dozen, where each
    /// tuple naming its own took most of a row's bytes.
    #[prost(uint32, repeated, tag = "13")]
    who: Vec<u32>,
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
    /// The server-hour's dictionary its indexes are into (see
    /// [`super::dictionaries`]); 0: `strings` and `queries` of its own.
    #[prost(int64, tag = "14")]
    keys: i64,
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

impl StoredLoad {
    /// Holds the strings and fingerprints it names itself.
    fn own(&mut self, tables: Tables) {
        self.strings = tables
            .strings
            .values
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.queries = tables.queries.values;
    }
}

impl MinuteLoad {
    /// The minute as it waits for the store: see [`PackedMinute`].
    pub fn pack(&self) -> PackedMinute {
        IdMinute::of(self).pack()
    }

    /// The minute as stored, with strings of its own, compressed: as rows
    /// were before dictionaries (the store writes minutes through
    /// [`super::dictionaries`]), and as hours of tuples are
    /// ([`super::hours::TupleHour`]).
    pub fn encode(&self) -> Vec<u8> {
        IdMinute::of(self).encode()
    }

    /// A stored minute back (starting at `start`), with strings of its
    /// own; None when the bytes are not one.
    pub fn decode(start: i64, bytes: &[u8]) -> Option<MinuteLoad> {
        Self::parse(start, bytes)?.with(&Keys::default())
    }

    /// A stored minute, read as far as the dictionary it needs.
    pub fn parse(start: i64, bytes: &[u8]) -> Option<ParsedMinute> {
        let bytes = decompressed(bytes)?;
        Some(ParsedMinute {
            start,
            stored: StoredLoad::decode(bytes.as_ref()).ok()?,
            query: None,
        })
    }
}

impl IdMinute {
    /// The minute as it waits for the store: see [`PackedMinute`].
    pub fn pack(&self) -> PackedMinute {
        PackedMinute {
            start: self.coarse.start,
            samples: self.coarse.samples,
            bytes: self.encoded(),
        }
    }

    /// The minute as stored, with strings of its own, compressed.
    fn encode(&self) -> Vec<u8> {
        compressed(self.encoded())
    }

    /// The minute as stored, with strings of its own, not compressed.
    fn encoded(&self) -> Vec<u8> {
        let mut tables = Tables::default();
        let mut stored = self.stored(&mut tables);
        stored.own(tables);
        stored.encode_to_vec()
    }

    /// The minute as stored, before compression: its bucket, its 10 s
    /// buckets as counts of the bucket's tuples (a tuple only a 10 s bucket
    /// has joins the minute's with no count of its own).
    fn stored(&self, tables: &mut Tables) -> StoredLoad {
        let coarse = &self.coarse.tuples;
        let mut index: WordMap<Ids, u32> = coarse
            .iter()
            .enumerate()
            .map(|(i, (ids, _))| (*ids, i as u32))
            .collect();
        let mut only_fine: Vec<Ids> = Vec::new();
        let mut fine = Vec::with_capacity(self.fine.len());
        for b in &self.fine {
            let mut counts = Vec::with_capacity(b.tuples.len() * 2);
            for (ids, n) in &b.tuples {
                let next = (coarse.len() + only_fine.len()) as u32;
                let i = *index.entry(*ids).or_insert_with(|| {
                    only_fine.push(*ids);
                    next
                });
                counts.extend([i, *n]);
            }
            fine.push(StoredFine {
                offset_s: ((b.start - self.coarse.start).max(0) / 1_000_000) as u32,
                samples: b.samples,
                covered_us: b.covered_us,
                counts,
            });
        }
        let tuples = coarse
            .iter()
            .copied()
            .chain(only_fine.into_iter().map(|ids| (ids, 0)));
        let mut stored = stored_bucket(&self.strings, &self.coarse, tuples, tables);
        stored.fine = fine;
        stored
    }
}

/// A count of one minute, as stored: it fits (sums over ranges are kept in
/// 64 bits, in memory only).
fn cell(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The bucket `b` as stored, with `tuples` (its own, and any more its finer
/// buckets name) as ids into `strings`, naming strings in `tables`.
fn stored_bucket(
    strings: &[ArcStr],
    b: &IdBucket,
    tuples: impl Iterator<Item = (Ids, u32)>,
    tables: &mut Tables,
) -> StoredLoad {
    let Tables {
        strings: table,
        queries,
    } = tables;
    // Each string's index in `table`, found the first time it is named.
    let mut named = vec![u32::MAX; strings.len()];
    let mut of = |i: u32| {
        let n = &mut named[i as usize];
        if *n == u32::MAX {
            *n = table.of(&strings[i as usize]);
        }
        *n
    };
    let mut sessions: Table<[u32; WHO_CELLS]> = Table::default();
    let mut cells = Vec::with_capacity(b.tuples.len() * TUPLE_CELLS);
    let mut counts = Vec::with_capacity(b.tuples.len());
    for (ids, n) in tuples {
        let who = ids.who.map(&mut of);
        cells.extend([
            ids.class as u32,
            of(ids.wait_type),
            of(ids.wait_event),
            queries.of(&ids.query),
            sessions.of(&who),
        ]);
        counts.push(n);
    }
    let churn = &b.churn;
    let mut churn_cells = Vec::with_capacity(churn.rows.len() * CHURN_CELLS);
    for (k, c) in &churn.rows {
        churn_cells.extend([
            table.of(&k.database),
            table.of(&k.application),
            table.of(&k.user),
            table.of(&k.client),
            cell(c.started),
            cell(c.ended),
        ]);
    }
    StoredLoad {
        samples: b.samples,
        covered_us: b.covered_us,
        cells,
        counts,
        churn_cells,
        churn_lifetimes_us: churn.rows.iter().map(|(_, c)| c.lifetime_us).collect(),
        lifetimes: churn
            .lifetimes
            .iter()
            .flat_map(|(i, n)| [u32::from(*i), cell(*n)])
            .collect(),
        lifetime_max_us: churn.lifetime_max_us,
        established: churn
            .established
            .iter()
            .flat_map(|(d, n)| [table.of(d), cell(*n)])
            .collect(),
        who: sessions.values.concat(),
        strings: Vec::new(),
        queries: Vec::new(),
        fine: Vec::new(),
        keys: 0,
    }
}

/// A closed minute of load as it waits for the store, and for readers
/// meanwhile: in its stored form with strings of its own, not compressed.
///
/// Every server closes its minute in the same second, and the minutes wait
/// (in the aggregator, then in the store's queue) until the writer takes
/// them: seconds, on a large fleet. As tuples, a busy server's minute takes
/// about a hundred KB (its 10 s buckets repeat the minute's tuples), and a
/// heap profile at 1,000 servers found 40% of the collector's peak heap in
/// them; packed, a minute takes a few KB. The writer re-indexes it into
/// the server's dictionary and compresses it then; readers unpack it.
///
/// It waits uncompressed: compressing it at zstd's level 3 took a third of
/// packing (36 of 104 µs for the generator's server, 7.2 KB to 4.2 KB),
/// for bytes that wait a few seconds and that the writer decompressed and
/// compressed again.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMinute {
    start: i64,
    samples: u32,
    bytes: Vec<u8>,
}

impl PackedMinute {
    /// The minute's first microsecond.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// The samples taken in it (none: no load to store).
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// The minute as it was packed; None only if its bytes were damaged.
    pub fn unpack(&self) -> Option<MinuteLoad> {
        MinuteLoad::decode(self.start, &self.bytes)
    }

    /// A minute whose bytes are not one.
    #[cfg(test)]
    pub fn damaged(start: i64) -> PackedMinute {
        PackedMinute {
            start,
            samples: 60,
            bytes: compressed(vec![0xff; 64]),
        }
    }

    /// The bytes it holds.
    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The minute as stored, naming its strings in the dictionary `keys`
    /// (whose `tables` it adds to); None only if its bytes were damaged.
    ///
    /// Its rows are re-indexed as they are, not unpacked into tuples and
    /// encoded again: that built, hashed and found again every tuple of the
    /// minute and of its 10 s buckets, for every server of the fleet at
    /// once at a minute's end. (Each cell [`stored_bucket`] makes an index
    /// into strings or fingerprints is re-indexed here.)
    pub(super) fn encode_with(&self, keys: i64, tables: &mut Tables) -> Option<Vec<u8>> {
        let bytes = decompressed(&self.bytes)?;
        let mut s = StoredLoad::decode(bytes.as_ref()).ok()?;
        // Every field named, so that one added later is not left out.
        let StoredLoad {
            samples: _,
            covered_us: _,
            strings,
            queries,
            cells,
            who,
            counts,
            churn_cells,
            churn_lifetimes_us,
            lifetimes: _,
            lifetime_max_us: _,
            established,
            fine,
            keys: named,
        } = &mut s;
        // As `pack` makes it (strings of its own, a tuple a row of five
        // cells), checked whole before the dictionary takes any of it.
        let (texts, fingerprints) = (strings.len() as u32, queries.len() as u32);
        let (whos, tuples) = ((who.len() / WHO_CELLS) as u32, counts.len() as u32);
        let whole = *named == 0
            && cells.len() == counts.len() * TUPLE_CELLS
            && who.len().is_multiple_of(WHO_CELLS)
            && churn_cells.len() == churn_lifetimes_us.len() * CHURN_CELLS
            && established.len().is_multiple_of(2)
            && cells.chunks_exact(TUPLE_CELLS).all(|r| {
                Class::from_code(r[0]).is_some()
                    && r[1] < texts
                    && r[2] < texts
                    && r[3] < fingerprints
                    && r[4] < whos
            })
            && who.iter().all(|i| *i < texts)
            && churn_cells
                .chunks_exact(CHURN_CELLS)
                .all(|r| r[..4].iter().all(|i| *i < texts))
            && established.chunks_exact(2).all(|p| p[0] < texts)
            && fine.iter().all(|f| {
                f.counts.len().is_multiple_of(2) && f.counts.chunks_exact(2).all(|p| p[0] < tuples)
            });
        if !whole {
            return None;
        }
        let ours: Vec<u32> = std::mem::take(strings)
            .iter()
            .map(|x| tables.strings.of_str(x))
            .collect();
        let our_queries: Vec<u32> = std::mem::take(queries)
            .iter()
            .map(|q| tables.queries.of(q))
            .collect();
        let string = |i: &mut u32| *i = ours[*i as usize];
        for row in cells.chunks_exact_mut(TUPLE_CELLS) {
            string(&mut row[1]);
            string(&mut row[2]);
            row[3] = our_queries[row[3] as usize];
        }
        who.iter_mut().for_each(string);
        for row in churn_cells.chunks_exact_mut(CHURN_CELLS) {
            row[..4].iter_mut().for_each(string);
        }
        for pair in established.chunks_exact_mut(2) {
            string(&mut pair[0]);
        }
        *named = keys;
        Some(compressed(s.encode_to_vec()))
    }
}

/// A stored minute of load not yet given its dictionary.
pub struct ParsedMinute {
    start: i64,
    stored: StoredLoad,
    /// The one query whose tuples are wanted ([`Wanted::Query`]).
    query: Option<u64>,
}

/// What a read of stored minutes of load decodes of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The whole minute.
    All,
    /// The minute's tuples, without its 10 s buckets or its churn, for
    /// steps of whole minutes: the buckets hold more tuples than the minute
    /// and would go unread, and load is not churn.
    Minutes,
    /// As [`Wanted::Minutes`], with only the tuples of one query (a question
    /// about it): the others' strings are not looked up.
    Query(u64),
    /// The minute's samples, coverage and churn, without its tuples or 10 s
    /// buckets: what connection churn reads.
    Churn,
    /// The minute's tuples and churn, without its 10 s buckets: what an
    /// hour of them adds up ([`super::hours::TupleHour`]).
    Hour,
}

impl ParsedMinute {
    /// The minute with only what `wanted` reads.
    pub fn only(mut self, wanted: Wanted) -> ParsedMinute {
        if wanted != Wanted::All {
            self.stored.fine = Vec::new();
        }
        if let Wanted::Minutes | Wanted::Query(_) = wanted {
            let s = &mut self.stored;
            s.churn_cells = Vec::new();
            s.churn_lifetimes_us = Vec::new();
            s.lifetimes = Vec::new();
            s.established = Vec::new();
        }
        if let Wanted::Query(f) = wanted {
            self.query = Some(f);
        }
        if wanted == Wanted::Churn {
            self.stored.cells = Vec::new();
            self.stored.who = Vec::new();
            self.stored.counts = Vec::new();
        }
        self
    }
}

impl Parsed for ParsedMinute {
    type Row = MinuteLoad;
    const WHAT: &'static str = "a minute of load";

    fn keys(&self) -> i64 {
        self.stored.keys
    }

    fn with(self, keys: &Keys) -> Option<MinuteLoad> {
        let (start, mut stored) = (self.start, self.stored);
        let fine_stored = std::mem::take(&mut stored.fine);
        let mut coarse = Bucket::from_stored(start, COARSE_US, stored, keys, self.query)?;
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

impl Bucket {
    /// The bucket as stored, without compression, with strings of its own.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let minute = IdMinute::of(&MinuteLoad {
            coarse: self.clone(),
            fine: Vec::new(),
        });
        let mut tables = Tables::default();
        let tuples = minute.coarse.tuples.iter().copied();
        let mut stored = stored_bucket(&minute.strings, &minute.coarse, tuples, &mut tables);
        stored.own(tables);
        stored.encode_to_vec()
    }

    /// A stored bucket (with strings of its own) back; None when the bytes
    /// are not one.
    #[cfg(test)]
    pub fn decode(start: i64, len_us: i64, bytes: &[u8]) -> Option<Bucket> {
        Self::from_stored(
            start,
            len_us,
            StoredLoad::decode(bytes).ok()?,
            &Keys::default(),
            None,
        )
    }

    /// From a stored bucket, with `keys` the dictionary it names (unless
    /// its strings are its own); only the tuples of `query`, if given (the
    /// 10 s buckets, which name the minute's tuples by place, are then not
    /// to be read).
    fn from_stored(
        start: i64,
        len_us: i64,
        s: StoredLoad,
        keys: &Keys,
        query: Option<u64>,
    ) -> Option<Bucket> {
        let own;
        let (strings, queries) = if s.keys == 0 {
            own = Keys {
                strings: s.strings.into_iter().map(ArcStr::from).collect(),
                queries: s.queries,
                own_hour: false,
                no_strings: false,
            };
            (&own.strings, &own.queries)
        } else {
            (&keys.strings, &keys.queries)
        };
        let text = |i: u32| strings.get(i as usize).cloned();
        let width = if s.who.is_empty() && !s.counts.is_empty() {
            TUPLE_CELLS_V1
        } else {
            TUPLE_CELLS
        };
        if s.cells.len() != s.counts.len() * width
            || !s.who.len().is_multiple_of(WHO_CELLS)
            || s.churn_cells.len() != s.churn_lifetimes_us.len() * CHURN_CELLS
        {
            return None;
        }
        let mut tuples = Vec::with_capacity(s.counts.len());
        for (row, n) in s.cells.chunks_exact(width).zip(s.counts) {
            let fingerprint = *queries.get(row[3] as usize)?;
            if query.is_some_and(|q| q != fingerprint) {
                continue;
            }
            let who = match width {
                TUPLE_CELLS_V1 => &row[4..],
                _ => {
                    let i = row[4] as usize * WHO_CELLS;
                    s.who.get(i..i + WHO_CELLS)?
                }
            };
            tuples.push((
                Tuple {
                    class: Class::from_code(row[0])?,
                    wait_type: text(row[1])?,
                    wait_event: text(row[2])?,
                    query: fingerprint,
                    user: text(who[0])?,
                    database: text(who[1])?,
                    application: text(who[2])?,
                    client: text(who[3])?,
                    backend_type: text(who[4])?,
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
                    started: u64::from(row[4]),
                    ended: u64::from(row[5]),
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
                    .map(|p| (u16::try_from(p[0]).unwrap_or(u16::MAX), u64::from(p[1])))
                    .collect(),
                lifetime_max_us: s.lifetime_max_us,
                established: s
                    .established
                    .chunks_exact(2)
                    .map(|p| Some((text(p[0])?, u64::from(p[1]))))
                    .collect::<Option<Vec<_>>>()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute's own strings: a wait, users, databases, applications,
    /// clients and a backend type.
    const STRINGS: [&str; 7] = [
        "CPU",
        "",
        "app",
        "orders",
        "web",
        "10.0.0.7",
        "client backend",
    ];

    /// A minute of one tuple, one row of who, one churn row and a 10 s
    /// bucket, as `pack` makes them, with its own strings.
    fn one_tuple() -> StoredLoad {
        StoredLoad {
            samples: 60,
            covered_us: 60_000_000,
            strings: STRINGS.iter().map(|s| s.to_string()).collect(),
            queries: vec![0xabc],
            cells: vec![0, 0, 1, 0, 0],
            who: vec![2, 3, 4, 5, 6],
            counts: vec![42],
            churn_cells: vec![3, 4, 2, 5, 1, 1],
            churn_lifetimes_us: vec![1_000],
            established: vec![3, 1],
            fine: vec![StoredFine {
                offset_s: 0,
                samples: 10,
                covered_us: 10_000_000,
                counts: vec![0, 7],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_packed_minute_that_does_not_hold_together_is_refused_whole() {
        let whole = one_tuple();
        let packed = |s: &StoredLoad| PackedMinute {
            start: 0,
            samples: 60,
            bytes: compressed(s.encode_to_vec()),
        };
        let mut tables = Tables::default();
        assert!(packed(&whole).encode_with(9, &mut tables).is_some());
        let damaged: [&dyn Fn(&mut StoredLoad); 9] = [
            &|s| s.cells[0] = 99,
            &|s| s.cells[1] = 99,
            &|s| s.cells[3] = 1,
            &|s| s.cells[4] = 1,
            &|s| s.who[4] = 99,
            &|s| s.churn_cells[3] = 99,
            &|s| s.established[0] = 99,
            &|s| s.fine[0].counts[0] = 1,
            &|s| s.churn_lifetimes_us.push(1),
        ];
        for (i, damage) in damaged.iter().enumerate() {
            let mut s = whole.clone();
            s.strings.push("not in the dictionary before".into());
            damage(&mut s);
            let mut tables = Tables::default();
            assert_eq!(packed(&s).encode_with(9, &mut tables), None, "damage {i}");
            assert_eq!(tables.len(), 0, "damage {i}: the dictionary took nothing");
        }
        // A row of an earlier layout (nine cells a tuple) is not a packed one.
        let mut old = whole.clone();
        old.cells = vec![0, 0, 1, 0, 2, 3, 4, 5, 6];
        old.who.clear();
        assert_eq!(packed(&old).encode_with(9, &mut Tables::default()), None);
    }

    #[test]
    fn a_read_decodes_what_it_wants_of_a_minute() {
        // Two tuples of two queries, a churn row, a 10 s bucket.
        let mut stored = one_tuple();
        stored.queries.push(0xdef);
        stored.cells.extend([0, 0, 1, 1, 0]);
        stored.counts.push(18);
        stored.fine[0].counts.extend([1, 3]);
        let bytes = compressed(stored.encode_to_vec());
        let read = |wanted: Wanted| {
            let parsed = MinuteLoad::parse(0, &bytes).unwrap().only(wanted);
            parsed.with(&Keys::default()).unwrap()
        };
        let all = read(Wanted::All);
        assert_eq!(all.coarse.tuples.len(), 2);
        assert_eq!((all.fine.len(), all.coarse.churn.rows.len()), (1, 1));
        assert_eq!(all.coarse.churn.established.len(), 1);
        // Whole minutes: the tuples, not the 10 s buckets or the churn.
        let minutes = read(Wanted::Minutes);
        assert_eq!(minutes.coarse.tuples, all.coarse.tuples);
        assert!(minutes.fine.is_empty());
        assert_eq!(minutes.coarse.churn, Churn::default());
        // One query's: its tuple alone, the samples and coverage whole.
        let one = read(Wanted::Query(0xdef));
        assert_eq!(one.coarse.tuples, all.coarse.tuples[1..]);
        assert_eq!(one.coarse.tuples[0].0.query, 0xdef);
        assert_eq!(
            (one.coarse.samples, one.coarse.covered_us),
            (60, 60_000_000)
        );
        assert!(read(Wanted::Query(0x123)).coarse.tuples.is_empty());
        // Churn: its rows, no tuples.
        let churn = read(Wanted::Churn);
        assert!(churn.coarse.tuples.is_empty());
        assert_eq!(churn.coarse.churn, all.coarse.churn);
    }

    #[test]
    fn a_minute_stored_before_dictionaries_still_reads() {
        // As an earlier version wrote it: its own strings and fingerprints,
        // and nine cells a tuple.
        let old = StoredLoad {
            samples: 60,
            covered_us: 60_000_000,
            strings: STRINGS.iter().map(|s| s.to_string()).collect(),
            queries: vec![0xabc],
            cells: vec![0, 0, 1, 0, 2, 3, 4, 5, 6],
            counts: vec![42],
            ..Default::default()
        };
        let start = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let m = MinuteLoad::decode(start, &compressed(old.encode_to_vec())).unwrap();
        assert_eq!(m.coarse.samples, 60);
        let (t, n) = &m.coarse.tuples[0];
        assert_eq!(*n, 42);
        assert_eq!(
            (
                &*t.wait_type,
                t.query,
                &*t.user,
                &*t.application,
                &*t.client
            ),
            ("CPU", 0xabc, "app", "web", "10.0.0.7")
        );
        assert_eq!(t.class, Class::Active);
    }
}

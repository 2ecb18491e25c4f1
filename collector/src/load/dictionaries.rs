//! A server's strings and fingerprints, stored once an hour rather than in
//! every row: a minute of load names the same few dozen users,
//! applications, client hosts, waits and queries as the minute before, and
//! those names (and fingerprints, which do not compress) were most of a
//! stored minute's bytes.
//!
//! The store's writer keeps a [`Dictionaries`]: per server, the hour's
//! dictionary, which only grows, under an id of its own. Rows of load and
//! of statement statistics name their dictionary by id and their strings
//! by index into it; a dictionary that grew is written in the same
//! transaction as the rows that use it. Each writer (each collector, each
//! start) makes its own ids, so two collectors writing one server's hour to
//! a shared store never overwrite each other's dictionary.
//!
//! A row names a dictionary of its own hour, even one that comes late (an
//! agent's spool replayed after an outage): the writer makes such a row a
//! dictionary of that hour, beside the one of the hour it is writing. So a
//! server-hour's dictionaries name every string and fingerprint its rows
//! do, and a question about one query can pass over the hours whose
//! dictionaries do not name it (see [`super::ask::Scope::may_hold`]).
//! Dictionaries written so say it (`own_hour`); those of earlier versions,
//! which gave a late row the dictionary of the hour being written, do not.
//!
//! A row written before dictionaries holds its own strings (id 0), and
//! still reads.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, Hasher};

use pgfleet_proto::time::Micros;

use super::PackedMinute;
use super::hours::HOUR_US;
use super::keys::Tables;
use super::statements::Read;

/// A dictionary to write: the server's, its id, the hour it began in (the
/// rows that name it start before the hour after), and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct KeysRow {
    pub server_id: String,
    pub id: i64,
    pub hour: Micros,
    pub body: Vec<u8>,
}

/// One server's dictionary for the hour being written.
#[derive(Debug)]
struct Dictionary {
    id: i64,
    hour: Micros,
    tables: Tables,
    /// How many keys the store holds of it.
    written: usize,
    /// Whether it is in [`Dictionaries::grown`].
    listed: bool,
}

impl Dictionary {
    fn row(&self, server_id: &str) -> KeysRow {
        KeysRow {
            server_id: server_id.to_owned(),
            id: self.id,
            hour: self.hour,
            body: self.tables.encode(),
        }
    }

    /// A new dictionary of `hour` for `server_id`, under an id of its own.
    fn fresh(ids: &RandomState, made: &mut u64, server_id: &str, hour: Micros) -> Dictionary {
        // Random per writer, and new for every dictionary it makes (one made
        // again for an hour whose first was let go must not overwrite it);
        // never 0, which names a row's own strings.
        *made += 1;
        let mut h = ids.build_hasher();
        h.write(server_id.as_bytes());
        h.write_u64(*made);
        Dictionary {
            id: (h.finish() >> 1) as i64 | 1,
            hour,
            tables: Tables::default(),
            written: 0,
            listed: false,
        }
    }
}

/// The writer's dictionaries, a server each.
#[derive(Debug, Default)]
pub struct Dictionaries {
    servers: HashMap<String, Dictionary>,
    /// Dictionaries that grew since the last commit, and those of an hour
    /// that ended with keys not yet written.
    grown: Vec<String>,
    ended: Vec<KeysRow>,
    /// Dictionaries of earlier hours than their servers' own, for rows that
    /// came late, until the commit that writes them.
    late: HashMap<(String, Micros), Dictionary>,
    /// Where ids come from: random per writer.
    ids: RandomState,
    /// How many dictionaries it made.
    made: u64,
    /// The latest hour a row was written for, and the latest one when the
    /// dictionaries were last looked over.
    latest: Micros,
    swept: Micros,
}

impl Dictionaries {
    /// A packed minute of load as stored, naming `server_id`'s dictionary;
    /// None only if its bytes were damaged.
    pub fn minute(&mut self, server_id: &str, m: &PackedMinute) -> Option<Vec<u8>> {
        let (id, tables) = self.of(server_id, m.start());
        let body = m.encode_with(id, tables);
        self.note(server_id);
        body
    }

    /// A statements interval (starting at `at`) as stored, naming
    /// `server_id`'s dictionary.
    pub fn statements(&mut self, server_id: &str, at: Micros, read: &Read) -> Vec<u8> {
        let (id, tables) = self.of(server_id, at);
        let body = read.encode_with(id, &mut tables.queries);
        self.note(server_id);
        body
    }

    /// The dictionaries the rows encoded since the last commit need written.
    pub fn unwritten(&self) -> Vec<KeysRow> {
        let mut rows = self.ended.clone();
        for server_id in &self.grown {
            if let Some(d) = self.servers.get(server_id) {
                rows.push(d.row(server_id));
            }
        }
        for ((server_id, _), d) in &self.late {
            rows.push(d.row(server_id));
        }
        rows
    }

    /// After a commit of what [`Dictionaries::unwritten`] gave: written.
    pub fn committed(&mut self) {
        self.ended.clear();
        // Late rows that come after get a dictionary anew.
        self.late.clear();
        for server_id in self.grown.drain(..) {
            if let Some(d) = self.servers.get_mut(&server_id) {
                d.written = d.tables.len();
                d.listed = false;
            }
        }
        // Servers no longer written (gone, or streamed by another
        // collector) let go of their dictionaries once they are written and
        // two hours old: looked at once an hour, as the hours move on.
        if self.latest > self.swept {
            self.swept = self.latest;
            let latest = self.latest;
            self.servers
                .retain(|_, d| d.listed || d.hour + 2 * HOUR_US > latest);
        }
    }

    /// `server_id`'s dictionary for a row that starts at `at`: a new one
    /// (a new id) for a later hour than the one it holds, and one of the
    /// row's own hour, until the next commit, for an earlier one.
    fn of(&mut self, server_id: &str, at: Micros) -> (i64, &mut Tables) {
        let hour = at - at.rem_euclid(HOUR_US);
        self.latest = self.latest.max(hour);
        let (made, ids) = (&mut self.made, &self.ids);
        let mut fresh = || Dictionary::fresh(ids, made, server_id, hour);
        if self.servers.get(server_id).is_some_and(|d| d.hour > hour) {
            let d = self
                .late
                .entry((server_id.to_owned(), hour))
                .or_insert_with(fresh);
            return (d.id, &mut d.tables);
        }
        let d = match self.servers.entry(server_id.to_owned()) {
            Entry::Vacant(v) => v.insert(fresh()),
            Entry::Occupied(o) => {
                let d = o.into_mut();
                if d.hour < hour {
                    let old = std::mem::replace(d, fresh());
                    // Still in `grown`, should it be there.
                    d.listed = old.listed;
                    if old.tables.len() > old.written {
                        self.ended.push(old.row(server_id));
                    }
                }
                d
            }
        };
        (d.id, &mut d.tables)
    }

    fn note(&mut self, server_id: &str) {
        if let Some(d) = self.servers.get_mut(server_id)
            && d.tables.len() > d.written
            && !d.listed
        {
            d.listed = true;
            self.grown.push(server_id.to_owned());
        }
    }
}

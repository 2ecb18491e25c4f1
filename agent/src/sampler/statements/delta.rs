//! pg_stat_statements' counters into increments: what each statement did
//! between two reads, never negative, never a spike.

use std::collections::HashMap;

/// One entry of pg_stat_statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// queryid.
    pub query_id: i64,
    /// dbid.
    pub dbid: u32,
    /// userid.
    pub userid: u32,
}

/// An entry's counters, as read (totals) or as increments.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// calls.
    pub calls: u64,
    /// total_exec_time (total_time before 1.8), in milliseconds.
    pub exec_time_ms: f64,
    /// rows.
    pub rows: u64,
    /// shared_blks_hit, _read, _dirtied, _written, temp_blks_read, _written.
    pub blocks: [u64; 6],
    /// wal_bytes (0 before 1.8).
    pub wal_bytes: u64,
}

impl Counters {
    /// Whether any counter is below `before`'s: the entry was reset (or
    /// deallocated and made again) since.
    fn went_down(&self, before: &Counters) -> bool {
        self.calls < before.calls
            || self.exec_time_ms < before.exec_time_ms
            || self.rows < before.rows
            || self.wal_bytes < before.wal_bytes
            || self.blocks.iter().zip(&before.blocks).any(|(n, b)| n < b)
    }

    /// The increments from `before` to `self`, which did not go down.
    fn minus(&self, before: &Counters) -> Counters {
        Counters {
            calls: self.calls.saturating_sub(before.calls),
            exec_time_ms: (self.exec_time_ms - before.exec_time_ms).max(0.0),
            rows: self.rows.saturating_sub(before.rows),
            blocks: std::array::from_fn(|i| self.blocks[i].saturating_sub(before.blocks[i])),
            wal_bytes: self.wal_bytes.saturating_sub(before.wal_bytes),
        }
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counters) {
        self.calls = self.calls.saturating_add(other.calls);
        self.exec_time_ms += other.exec_time_ms;
        self.rows = self.rows.saturating_add(other.rows);
        for (a, b) in self.blocks.iter_mut().zip(&other.blocks) {
            *a = a.saturating_add(*b);
        }
        self.wal_bytes = self.wal_bytes.saturating_add(other.wal_bytes);
    }
}

/// pg_stat_statements_info (1.9 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// dealloc: entries deallocated since the last full reset.
    pub dealloc: u64,
    /// stats_reset, in microseconds since the epoch.
    pub stats_reset_us: i64,
}

/// One entry as read: its totals, and their hash as the server computed it
/// (see `sql::Extension::counters_sql`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    /// Which entry.
    pub key: Key,
    /// Its totals.
    pub totals: Counters,
    /// The hash of its key and calls.
    pub hash: i64,
}

/// One read of the view.
#[derive(Debug, Default)]
pub struct Read {
    /// When it was read (the snapshot's time).
    pub at_us: i64,
    /// Whether it lists every entry called at least once; otherwise only
    /// those whose hash was not among [`Tracker::next_read`]'s (new or
    /// changed since), and the others are as they were.
    pub whole: bool,
    /// The entries.
    pub entries: Vec<Entry>,
    /// pg_stat_statements_info, when the extension has it.
    pub info: Option<Info>,
}

/// What happened between two reads.
#[derive(Debug, Default)]
pub struct Increments {
    /// The earlier read's time.
    pub since_us: i64,
    /// The statistics were reset in between (see [`Tracker::update`]).
    pub reset: bool,
    /// Entries deallocated in between.
    pub deallocated: u64,
    /// The entries called in between, with their increments.
    pub entries: Vec<(Key, Counters)>,
}

impl Increments {
    /// Takes in `earlier`, the increments of the interval just before these
    /// (which did not reach the collector): these then cover both.
    pub fn absorb(&mut self, earlier: Increments) {
        self.since_us = earlier.since_us;
        self.reset |= earlier.reset;
        self.deallocated = self.deallocated.saturating_add(earlier.deallocated);
        let mut at: HashMap<Key, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect();
        for (key, counters) in earlier.entries {
            match at.get(&key) {
                Some(&i) => self.entries[i].1.add(&counters),
                None => {
                    at.insert(key, self.entries.len());
                    self.entries.push((key, counters));
                }
            }
        }
    }
}

/// The most entries remembered between reads. pg_stat_statements.max bounds
/// the view (5,000 by default); this bounds the agent whatever it is set to.
pub const MAX_TRACKED: usize = 20_000;

/// A read lists every entry at least this often (in reads: an hour at the
/// default interval), so that entries removed without a sign
/// (pg_stat_statements_reset of some of them) are forgotten. Until then they
/// cost only memory, within [`MAX_TRACKED`] (which, reached, makes the next
/// read whole), and one that comes back counts as one that went down. A
/// whole read costs the server about one and a half times a read of changes.
pub const WHOLE_EVERY: u32 = 60;

/// An entry as remembered.
#[derive(Debug, Clone, Copy)]
struct Known {
    totals: Counters,
    hash: i64,
}

/// The previous read of one server, to subtract from the next.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Each entry's totals as last read.
    previous: HashMap<Key, Known>,
    /// Whether `previous` holds every entry (not cut at [`MAX_TRACKED`]):
    /// only then is an entry missing from it new.
    complete: bool,
    /// The previous read's time and info; None before the first.
    last: Option<(i64, Option<Info>)>,
    /// Reads of changes since the last whole read.
    since_whole: u32,
    /// Entries were removed (deallocated, or reset): the next read is whole.
    removed: bool,
}

impl Tracker {
    /// Forgets everything: the next read sets a new baseline.
    pub fn clear(&mut self) {
        *self = Tracker::default();
    }

    /// Whether a read was taken to subtract from.
    pub fn has_baseline(&self) -> bool {
        self.last.is_some()
    }

    /// What the next read asks for: the hashes of every entry as known, so
    /// that it returns only the entries new or changed since (most entries
    /// do not change from one read to the next, and sending each one's
    /// counters is most of what a read costs the server); or None for a
    /// whole read. A read is whole the first time, before 1.9 (without
    /// pg_stat_statements_info, entries removed would go unnoticed), after
    /// entries were removed, when the bound cut the entries, and every
    /// [`WHOLE_EVERY`] reads.
    pub fn next_read(&self) -> Option<Vec<i64>> {
        let (_, info) = self.last?;
        info?;
        if self.removed || !self.complete || self.since_whole + 1 >= WHOLE_EVERY {
            return None;
        }
        Some(self.previous.values().map(|k| k.hash).collect())
    }

    /// Takes a read and returns the increments since the previous one; the
    /// first read only sets the baseline (None).
    ///
    /// An entry not seen before is new since the previous read (or was
    /// deallocated and made again), so its totals are its increments. An
    /// entry with any counter below its previous value was reset (or made
    /// again): its totals are its increments since then, never a negative
    /// increment, never the whole history. `reset` says the server's
    /// statistics were reset: stats_reset changed (1.9 and later), or before
    /// that, most entries went down (or none of the previous is left).
    /// Entries gone from the view are forgotten (at the next whole read).
    pub fn update(&mut self, read: Read) -> Option<Increments> {
        let Read {
            at_us,
            whole,
            entries,
            info,
        } = read;
        let first = self.last.is_none();
        let was_complete = self.complete;
        let before = if whole {
            std::mem::take(&mut self.previous)
        } else {
            HashMap::new()
        };
        let mut complete = if whole { true } else { self.complete };
        let mut common = 0usize;
        let mut went_down = 0usize;
        let mut increments = Vec::new();
        // Entries known from the previous read first, so that a view larger
        // than the bound keeps following the same ones.
        let previous = if whole { &before } else { &self.previous };
        let (known, new): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| previous.contains_key(&e.key));
        let mut changed = Vec::with_capacity(known.len() + new.len());
        for e in known {
            let was = previous[&e.key].totals;
            common += 1;
            let inc = if e.totals.went_down(&was) {
                went_down += 1;
                e.totals
            } else {
                e.totals.minus(&was)
            };
            if inc.calls > 0 {
                increments.push((e.key, inc));
            }
            changed.push(e);
        }
        let mut room = MAX_TRACKED.saturating_sub(if whole {
            changed.len()
        } else {
            self.previous.len()
        });
        for e in new {
            if room == 0 {
                complete = false;
                continue;
            }
            room -= 1;
            // New, unless the entries known could not all be held: then it
            // may be one left out, and only sets its baseline.
            if !first && was_complete && e.totals.calls > 0 {
                increments.push((e.key, e.totals));
            }
            changed.push(e);
        }
        for e in changed {
            self.previous.insert(
                e.key,
                Known {
                    totals: e.totals,
                    hash: e.hash,
                },
            );
        }
        let last = self.last.replace((at_us, info));
        self.complete = complete;
        self.since_whole = if whole { 0 } else { self.since_whole + 1 };
        let (since_us, before_info) = last?;
        let (reset, deallocated) = match (before_info, info) {
            (Some(b), Some(n)) => (
                n.stats_reset_us != b.stats_reset_us,
                if n.dealloc >= b.dealloc {
                    n.dealloc - b.dealloc
                } else {
                    n.dealloc
                },
            ),
            _ => (
                whole && (went_down * 2 > common || (common == 0 && !before.is_empty())),
                0,
            ),
        };
        self.removed = reset || deallocated > 0;
        Some(Increments {
            since_us,
            reset,
            deallocated,
            entries: increments,
        })
    }
}

/// The `n` entries with the most execution time, most first, and the others
/// summed (None when there are none).
pub fn top(
    mut entries: Vec<(Key, Counters)>,
    n: usize,
) -> (Vec<(Key, Counters)>, Option<Counters>) {
    let by_time = |a: &(Key, Counters), b: &(Key, Counters)| {
        b.1.exec_time_ms
            .total_cmp(&a.1.exec_time_ms)
            .then(b.1.calls.cmp(&a.1.calls))
            .then(a.0.cmp(&b.0))
    };
    let other = if entries.len() > n {
        if n > 0 {
            entries.select_nth_unstable_by(n - 1, by_time);
        }
        let mut sum = Counters::default();
        for (_, c) in entries.drain(n..) {
            sum.add(&c);
        }
        Some(sum)
    } else {
        None
    };
    entries.sort_unstable_by(by_time);
    (entries, other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(q: i64) -> Key {
        Key {
            query_id: q,
            dbid: 5,
            userid: 10,
        }
    }

    fn totals(calls: u64, ms: f64) -> Counters {
        Counters {
            calls,
            exec_time_ms: ms,
            rows: calls * 2,
            blocks: [calls, 1, 0, 0, 0, 0],
            wal_bytes: calls * 100,
        }
    }

    /// A whole read.
    fn read(at_us: i64, entries: &[(i64, u64, f64)], info: Option<(u64, i64)>) -> Read {
        Read {
            at_us,
            whole: true,
            entries: entries
                .iter()
                .map(|&(q, calls, ms)| Entry {
                    key: key(q),
                    totals: totals(calls, ms),
                    // As the server's: of the key and the calls.
                    hash: q * 1_000_000 + calls as i64,
                })
                .collect(),
            info: info.map(|(dealloc, stats_reset_us)| Info {
                dealloc,
                stats_reset_us,
            }),
        }
    }

    /// A read of what changed since the hashes given: as the server answers
    /// it from the whole view.
    fn changes(at_us: i64, view: &[(i64, u64, f64)], info: (u64, i64), known: &[i64]) -> Read {
        let mut r = read(at_us, view, Some(info));
        r.whole = false;
        r.entries.retain(|e| !known.contains(&e.hash));
        r
    }

    fn by_query(inc: &Increments) -> Vec<(i64, u64, f64)> {
        let mut v: Vec<_> = inc
            .entries
            .iter()
            .map(|(k, c)| (k.query_id, c.calls, c.exec_time_ms))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    #[test]
    fn the_first_read_sets_the_baseline_and_the_next_gives_increments() {
        let mut t = Tracker::default();
        assert!(
            t.update(read(100, &[(1, 10, 5.0), (2, 3, 1.0)], None))
                .is_none()
        );
        assert!(t.has_baseline());
        let inc = t
            .update(read(200, &[(1, 15, 7.5), (2, 3, 1.0), (3, 4, 2.0)], None))
            .unwrap();
        assert_eq!(inc.since_us, 100);
        assert!(!inc.reset);
        assert_eq!(
            by_query(&inc),
            [(1, 5, 2.5), (3, 4, 2.0)],
            "uncalled entries are left out; a new one counts whole"
        );
        let (_, c) = inc.entries.iter().find(|(k, _)| k.query_id == 1).unwrap();
        assert_eq!(
            (c.rows, c.blocks[0], c.blocks[1], c.wal_bytes),
            (10, 5, 0, 500)
        );
        t.clear();
        assert!(t.update(read(300, &[(1, 20, 9.0)], None)).is_none());
    }

    #[test]
    fn an_entry_that_went_down_counts_from_its_new_baseline() {
        let mut t = Tracker::default();
        t.update(read(
            1,
            &[(1, 1000, 500.0), (2, 50, 10.0), (3, 7, 1.0)],
            None,
        ));
        // 1 was reset and ran 4 times since; 2 ran on; 3 is gone.
        let inc = t
            .update(read(2, &[(1, 4, 2.0), (2, 60, 12.0)], None))
            .unwrap();
        assert_eq!(by_query(&inc), [(1, 4, 2.0), (2, 10, 2.0)]);
        assert!(!inc.reset, "one of two went down: not a reset of all");
        // 3 was forgotten: back again, it is new.
        let inc = t
            .update(read(3, &[(1, 4, 2.0), (2, 60, 12.0), (3, 2, 0.5)], None))
            .unwrap();
        assert_eq!(by_query(&inc), [(3, 2, 0.5)]);
        for (_, c) in &inc.entries {
            assert!(c.exec_time_ms >= 0.0);
        }
    }

    #[test]
    fn a_reset_is_told_by_stats_reset_or_by_most_entries_going_down() {
        // 1.9 and later: stats_reset moves; dealloc counts again from 0.
        let mut t = Tracker::default();
        t.update(read(1, &[(1, 100, 50.0), (2, 80, 9.0)], Some((7, 1_000))));
        let inc = t
            .update(read(2, &[(1, 130, 60.0), (2, 80, 9.0)], Some((10, 1_000))))
            .unwrap();
        assert!(!inc.reset);
        assert_eq!(inc.deallocated, 3);
        let inc = t
            .update(read(3, &[(1, 3, 1.0), (4, 1, 0.1)], Some((2, 5_000))))
            .unwrap();
        assert!(inc.reset);
        assert_eq!(inc.deallocated, 2, "dealloc went back to 0 at the reset");
        assert_eq!(by_query(&inc), [(1, 3, 1.0), (4, 1, 0.1)]);

        // Before 1.9: most entries went down.
        let mut t = Tracker::default();
        t.update(read(1, &[(1, 100, 50.0), (2, 80, 9.0), (3, 5, 1.0)], None));
        let inc = t
            .update(read(2, &[(1, 2, 1.0), (2, 1, 0.2), (3, 6, 1.5)], None))
            .unwrap();
        assert!(inc.reset);
        assert_eq!(inc.deallocated, 0);
        assert_eq!(by_query(&inc), [(1, 2, 1.0), (2, 1, 0.2), (3, 1, 0.5)]);
        // Or nothing of the previous read is left.
        let inc = t.update(read(3, &[(9, 1, 0.1)], None)).unwrap();
        assert!(inc.reset);
        assert_eq!(by_query(&inc), [(9, 1, 0.1)]);
    }

    #[test]
    fn past_the_bound_unknown_entries_only_set_their_baseline() {
        let mut t = Tracker::default();
        let many: Vec<_> = (0..MAX_TRACKED as i64 + 10).map(|q| (q, 1, 1.0)).collect();
        t.update(read(1, &many, None));
        assert_eq!(t.previous.len(), MAX_TRACKED);
        // Every entry ran once more: those followed give 1 call each; those
        // left out are not taken for new (which would send their history).
        let more: Vec<_> = many
            .iter()
            .map(|&(q, c, ms)| (q, c + 1, ms + 1.0))
            .collect();
        let inc = t.update(read(2, &more, None)).unwrap();
        assert_eq!(inc.entries.len(), MAX_TRACKED);
        assert!(inc.entries.iter().all(|(_, c)| c.calls == 1));
        assert_eq!(t.previous.len(), MAX_TRACKED, "memory stays bounded");
    }

    #[test]
    fn the_top_go_by_execution_time_and_the_rest_are_summed() {
        let entries: Vec<_> = (0..1000).map(|q| (key(q), totals(1, q as f64))).collect();
        let (top_500, other) = top(entries, 500);
        assert_eq!(top_500.len(), 500);
        assert_eq!(top_500[0].0.query_id, 999);
        assert_eq!(top_500[499].0.query_id, 500);
        let other = other.unwrap();
        assert_eq!(other.calls, 500);
        assert_eq!(other.exec_time_ms, (0..500).map(|q| q as f64).sum::<f64>());
        assert_eq!(other.wal_bytes, 500 * 100);
        let (few, other) = top(
            vec![(key(1), totals(1, 1.0)), (key(2), totals(1, 3.0))],
            500,
        );
        assert_eq!(few[0].0.query_id, 2);
        assert!(other.is_none());
    }

    #[test]
    fn reads_ask_only_for_what_changed_and_list_everything_now_and_then() {
        let mut t = Tracker::default();
        assert!(t.next_read().is_none(), "the first read is whole");
        let mut view = vec![(1, 10, 1.0), (2, 20, 2.0), (3, 30, 3.0)];
        t.update(read(1, &view, Some((0, 7))));
        let known = t.next_read().expect("then only what changed");
        assert_eq!(known.len(), 3);
        // 2 ran twice, 4 is new; 1 and 3 did not change and are not read.
        view[1] = (2, 22, 2.5);
        view.push((4, 1, 0.25));
        let r = changes(2, &view, (0, 7), &known);
        assert_eq!(r.entries.len(), 2);
        let inc = t.update(r).unwrap();
        assert_eq!(by_query(&inc), [(2, 2, 0.5), (4, 1, 0.25)]);
        assert!(!inc.reset);
        assert_eq!(t.previous.len(), 4, "the unchanged are kept");
        // Nothing changed: nothing read, nothing sent.
        let known = t.next_read().unwrap();
        let inc = t.update(changes(3, &view, (0, 7), &known)).unwrap();
        assert!(inc.entries.is_empty() && !inc.reset);

        // An entry deallocated (3): counted, and the next read is whole,
        // which forgets it.
        view.remove(2);
        view.push((5, 2, 0.1));
        let known = t.next_read().unwrap();
        let inc = t.update(changes(4, &view, (1, 7), &known)).unwrap();
        assert_eq!((inc.deallocated, by_query(&inc)), (1, vec![(5, 2, 0.1)]));
        assert!(t.next_read().is_none());
        t.update(read(5, &view, Some((1, 7))));
        assert_eq!(t.previous.len(), 4);
        assert!(!t.previous.contains_key(&key(3)));

        // A reset seen in a read of changes: those back count from 0.
        let known = t.next_read().unwrap();
        let view = [(1, 3, 0.3)];
        let inc = t.update(changes(6, &view, (0, 99), &known)).unwrap();
        assert!(inc.reset);
        assert_eq!(by_query(&inc), [(1, 3, 0.3)]);
        assert!(t.next_read().is_none(), "and the next read is whole");

        // Every WHOLE_EVERY reads, whole.
        let mut t = Tracker::default();
        t.update(read(0, &view, Some((0, 1))));
        let mut wholes = Vec::new();
        for at in 1..=(2 * WHOLE_EVERY as i64) {
            match t.next_read() {
                Some(known) => t.update(changes(at, &view, (0, 1), &known)),
                None => {
                    wholes.push(at);
                    t.update(read(at, &view, Some((0, 1))))
                }
            };
        }
        assert_eq!(wholes, [WHOLE_EVERY as i64, 2 * WHOLE_EVERY as i64]);

        // Before 1.9 (no pg_stat_statements_info), every read is whole.
        let mut t = Tracker::default();
        t.update(read(0, &view, None));
        assert!(t.next_read().is_none());
    }

    #[test]
    fn increments_not_delivered_fold_into_the_next() {
        let mut t = Tracker::default();
        t.update(read(1, &[(1, 10, 1.0)], Some((0, 7))));
        let lost = t
            .update(read(2, &[(1, 15, 2.0), (2, 1, 0.5)], Some((1, 7))))
            .unwrap();
        let mut next = t
            .update(read(3, &[(1, 17, 3.0), (2, 1, 0.5)], Some((3, 7))))
            .unwrap();
        next.absorb(lost);
        assert_eq!(next.since_us, 1);
        assert_eq!(next.deallocated, 3);
        assert_eq!(by_query(&next), [(1, 7, 2.0), (2, 1, 0.5)]);
    }
}

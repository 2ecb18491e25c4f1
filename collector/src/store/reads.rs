//! How the store's reads go, for `/metrics`: how many are under way, and
//! how many their callers stopped waiting for (a page left, a client's
//! deadline). A fleet-wide read of days takes tens of seconds, and a SQLite
//! store reads with three connections: reads that pile up, or that people
//! give up on, are what an operator looks for when pages wait. Beside
//! them, the time the writer spends adding minutes up into hours, the work
//! that makes long reads short.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The store's reads, counted as they start and end.
#[derive(Debug, Default)]
pub struct ReadCounts {
    started: AtomicU64,
    ended: AtomicU64,
    abandoned: AtomicU64,
    passed: AtomicU64,
    whole: AtomicU64,
    statements_whole: AtomicU64,
    adding_us: AtomicU64,
    /// The store's bytes on disk, as the writer last read them (0: not
    /// known).
    bytes: AtomicU64,
    /// A store format newer than this collector's that a collector sharing
    /// the store found it raised to (0: none).
    newer_format: AtomicU64,
}

/// What [`ReadCounts`] holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadFigures {
    /// Reads started.
    pub started: u64,
    /// Reads under way: waiting for a connection, or reading.
    pub running: u64,
    /// Reads whose caller stopped waiting before they ended. Each stopped
    /// there and gave its connection back.
    pub abandoned: u64,
    /// Server-hours of DB load that questions passed over unread, their
    /// dictionaries naming nothing asked (see `Store::fold_passed`).
    pub hours_passed: u64,
    /// Server-hours of DB load read as one row each, added up by the
    /// writer, rather than as their minutes (see `sqlite::each_load`).
    pub hours_whole: u64,
    /// Server-hours of statement statistics read as one row each, added up
    /// by the writer, rather than as their intervals (see
    /// `sqlite::each_statements`).
    pub statement_hours_whole: u64,
    /// The time the writer spent adding minutes up into hours, in µs.
    pub hours_adding_us: u64,
    /// The bytes the store takes on disk, as the writer last read them
    /// (the SQLite store's file and its write-ahead log, the PostgreSQL
    /// store's database; None until read).
    pub bytes: Option<u64>,
    /// The store's format, when a newer collector sharing the store has
    /// raised it past this one's (`store::FORMAT`) while this one runs;
    /// 0: it has not.
    pub newer_format: u64,
}

impl ReadCounts {
    /// The figures now.
    pub fn figures(&self) -> ReadFigures {
        // Ended before started, so that a read ending between the two loads
        // never makes the difference negative.
        let ended = self.ended.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        ReadFigures {
            started,
            running: started.saturating_sub(ended),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            hours_passed: self.passed.load(Ordering::Relaxed),
            hours_whole: self.whole.load(Ordering::Relaxed),
            statement_hours_whole: self.statements_whole.load(Ordering::Relaxed),
            hours_adding_us: self.adding_us.load(Ordering::Relaxed),
            bytes: Some(self.bytes.load(Ordering::Relaxed)).filter(|&b| b > 0),
            newer_format: self.newer_format.load(Ordering::Relaxed),
        }
    }

    /// Notes that the store's format is now `format`, newer than this
    /// collector's.
    pub(super) fn newer_format(&self, format: u64) {
        self.newer_format.store(format, Ordering::Relaxed);
    }

    /// Notes the store's bytes on disk.
    pub(super) fn sized(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// Counts `hours` passed over unread.
    pub(super) fn passed(&self, hours: usize) {
        self.passed.fetch_add(hours as u64, Ordering::Relaxed);
    }

    /// Counts the writer's time adding hours up.
    pub(super) fn adding(&self, took: std::time::Duration) {
        self.adding_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts `hours` of load read as one row each.
    pub(super) fn whole(&self, hours: usize) {
        self.whole.fetch_add(hours as u64, Ordering::Relaxed);
    }

    /// Counts `hours` of statement statistics read as one row each.
    pub(super) fn statements_whole(&self, hours: usize) {
        self.statements_whole
            .fetch_add(hours as u64, Ordering::Relaxed);
    }
}

/// One read under way: it ends when dropped, abandoned unless
/// [`Reading::finished`] said it ran to its end first.
pub(super) struct Reading {
    counts: Arc<ReadCounts>,
    finished: bool,
}

impl Reading {
    pub(super) fn begin(counts: &Arc<ReadCounts>) -> Reading {
        counts.started.fetch_add(1, Ordering::Relaxed);
        Reading {
            counts: counts.clone(),
            finished: false,
        }
    }

    /// The read ran to its end (with an answer or an error).
    pub(super) fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if !self.finished {
            self.counts.abandoned.fetch_add(1, Ordering::Relaxed);
        }
        self.counts.ended.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_dropped_before_its_end_is_counted_abandoned() {
        let counts = Arc::new(ReadCounts::default());
        let done = Reading::begin(&counts);
        let left = Reading::begin(&counts);
        assert_eq!(
            counts.figures(),
            ReadFigures {
                started: 2,
                running: 2,
                ..ReadFigures::default()
            }
        );
        done.finished();
        drop(left);
        assert_eq!(
            counts.figures(),
            ReadFigures {
                started: 2,
                abandoned: 1,
                ..ReadFigures::default()
            }
        );
    }
}

//! The bounded spool of batches that the collector has not yet acknowledged:
//! in memory by default, or on disk (`--spool-dir`), where it survives a
//! restart of the agent.

mod disk;

use std::collections::VecDeque;
use std::path::Path;

use pgfleet_proto::v1;
use prost::bytes::Bytes;
use tracing::{error, info, warn};

use disk::Disk;
pub use disk::SpoolError;

use crate::outgoing::Outgoing;

/// Batches awaiting the collector's ack, in sequence order, bounded in bytes. A
/// batch leaves only when acknowledged, or when the bound forces out the oldest.
/// Batches are held encoded: they are encoded once, and sent as they are.
///
/// On disk, each batch is written and fsync'd before it can be sent, so a
/// batch the collector may have seen is never lost with the process; the
/// oldest are dropped a segment (about an eighth of the bound) at a time.
#[derive(Debug)]
pub struct Spool {
    entries: VecDeque<Entry>,
    /// Encoded bytes of the batches held.
    bytes: usize,
    /// Of those, the bytes held in memory (all of them without a disk).
    memory_bytes: usize,
    max_bytes: usize,
    next_seq: u64,
    /// `entries[unsent..]` have not been sent on the current stream.
    unsent: usize,
    dropped_batches: u64,
    /// The next sequence when the spool was opened: the numbers below it were
    /// given by an earlier life of this agent (see [`Spool::restart`]).
    opened_at_seq: u64,
    welcomed: bool,
    disk: Option<Disk>,
    /// An error writing the disk was logged; the next success is logged too.
    disk_failing: bool,
    /// Batches held in memory because the disk could not take them (full,
    /// or failing), since the agent started.
    disk_failed_batches: u64,
    /// Dictionary entries not yet in the spool's dictionary file.
    unwritten_entries: Vec<v1::DictionaryEntry>,
    /// The dictionary entries a reopened spool found, for the encoder.
    recovered_dictionary: Vec<v1::DictionaryEntry>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    body: Held,
}

/// Where a batch's body (the batch without its sequence, encoded) is.
#[derive(Debug)]
enum Held {
    Memory(Bytes),
    /// In the segment holding `seq`, at `offset`, `len` bytes long.
    Disk {
        offset: u64,
        len: u32,
    },
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Memory(b) => b.len(),
            Held::Disk { len, .. } => *len as usize,
        }
    }
}

impl Spool {
    /// An empty in-memory spool holding at most `max_bytes` of encoded batches.
    pub fn new(max_bytes: usize) -> Self {
        Spool {
            entries: VecDeque::new(),
            bytes: 0,
            memory_bytes: 0,
            max_bytes,
            next_seq: 1,
            unsent: 0,
            dropped_batches: 0,
            opened_at_seq: 1,
            welcomed: false,
            disk: None,
            disk_failing: false,
            disk_failed_batches: 0,
            unwritten_entries: Vec::new(),
            recovered_dictionary: Vec::new(),
        }
    }

    /// A spool kept in `dir`, holding at most `max_bytes` of segment files,
    /// with whatever an earlier run of the agent left there unacknowledged.
    pub fn open(dir: &Path, max_bytes: usize) -> Result<Self, SpoolError> {
        let segment_bytes = (max_bytes as u64 / 8).clamp(4 << 10, 8 << 20);
        let opened = Disk::open(dir, segment_bytes)?;
        let mut spool = Spool::new(max_bytes);
        spool.next_seq = opened.next_seq;
        spool.opened_at_seq = opened.next_seq;
        for r in &opened.records {
            spool.bytes += r.len as usize;
            spool.entries.push_back(Entry {
                seq: r.seq,
                body: Held::Disk {
                    offset: r.offset,
                    len: r.len,
                },
            });
        }
        spool.disk = Some(opened.disk);
        spool.recovered_dictionary = opened.dictionary;
        if !spool.entries.is_empty() || opened.cut > 0 {
            info!(
                dir = %dir.display(),
                batches = spool.entries.len(),
                bytes = spool.bytes,
                torn_records_cut = opened.cut,
                "Reopened the spool; its unacknowledged batches will be sent."
            );
        }
        Ok(spool)
    }

    /// Adds a batch of snapshots with the next sequence number. Returns how many of
    /// the oldest batches were dropped to stay within the bound.
    #[cfg(test)]
    pub fn push(&mut self, snapshots: Vec<v1::Snapshot>) -> u64 {
        self.push_batch(snapshots, Vec::new())
    }

    /// Adds a batch of snapshots, and the dictionary entries they introduce,
    /// with the next sequence number. Returns how many of the oldest batches
    /// were dropped to stay within the bound.
    ///
    /// On disk, the entries are written to the spool's dictionary file before
    /// the batch, so that every batch on disk can be read after a restart.
    pub fn push_batch(
        &mut self,
        snapshots: Vec<v1::Snapshot>,
        additions: Vec<v1::DictionaryEntry>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.disk.is_some() {
            self.unwritten_entries.extend(additions.iter().cloned());
        }
        let body = Outgoing::batch_body(snapshots, additions);
        let unwritten = std::mem::take(&mut self.unwritten_entries);
        let held = match &mut self.disk {
            Some(disk) => match disk
                .append_dictionary(&unwritten)
                .and_then(|()| disk.append(seq, &body))
            {
                Ok(offset) => {
                    if std::mem::take(&mut self.disk_failing) {
                        info!("The spool's disk takes batches again.");
                    }
                    Held::Disk {
                        offset,
                        len: body.len() as u32,
                    }
                }
                Err(e) => {
                    // Keep the batch rather than lose it; it counts toward the
                    // same bound, and dies with the process. The entries are
                    // written before the next batch that goes to disk.
                    self.unwritten_entries = unwritten;
                    self.disk_failed_batches += 1;
                    if !std::mem::replace(&mut self.disk_failing, true) {
                        error!(error = %e, "Cannot write the spool's disk; holding batches in memory until it works again.");
                    }
                    Held::Memory(body)
                }
            },
            None => Held::Memory(body),
        };
        self.bytes += held.len();
        if let Held::Memory(b) = &held {
            self.memory_bytes += b.len();
        }
        self.entries.push_back(Entry { seq, body: held });
        let mut dropped = 0;
        while self.held_bytes() > self.max_bytes && self.entries.len() > 1 {
            match self.drop_oldest() {
                0 => break,
                n => dropped += n,
            }
        }
        self.dropped_batches += dropped;
        dropped
    }

    /// What counts toward the bound: the segment files, and batches in memory.
    fn held_bytes(&self) -> usize {
        let on_disk = self.disk.as_ref().map_or(0, |d| d.bytes() as usize);
        on_disk + self.memory_bytes
    }

    /// Drops the oldest batch, or on disk the oldest segment; returns how many
    /// batches went.
    fn drop_oldest(&mut self) -> u64 {
        let range = match (&mut self.disk, self.entries.front()) {
            (_, None) => return 0,
            (
                Some(disk),
                Some(Entry {
                    body: Held::Disk { .. },
                    ..
                }),
            ) => match disk.drop_oldest() {
                Ok(Some(range)) => range,
                Ok(None) => return 0,
                Err(e) => {
                    error!(error = %e, "Cannot delete the spool's oldest segment.");
                    return 0;
                }
            },
            (_, Some(e)) => e.seq..e.seq + 1,
        };
        let mut dropped = 0;
        while self.entries.front().is_some_and(|e| e.seq < range.end) {
            self.pop_front();
            self.unsent = self.unsent.saturating_sub(1);
            dropped += 1;
        }
        dropped
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.body.len();
            if let Held::Memory(b) = &e.body {
                self.memory_bytes -= b.len();
            }
        }
    }

    /// The oldest batch not yet sent on the current stream, ready to send. A
    /// batch that cannot be read back from disk is logged, counted as dropped
    /// and skipped.
    pub fn next_unsent(&mut self) -> Option<Outgoing> {
        loop {
            let entry = self.entries.get(self.unsent)?;
            let body = match (&entry.body, &self.disk) {
                (Held::Memory(b), _) => Ok(b.clone()),
                (Held::Disk { offset, len }, Some(disk)) => disk.read(entry.seq, *offset, *len),
                (Held::Disk { .. }, None) => Err(std::io::Error::other("no spool directory")),
            };
            match body {
                Ok(body) => {
                    return Some(Outgoing::Batch {
                        seq: entry.seq,
                        body,
                        dictionary: Bytes::new(),
                    });
                }
                Err(e) => {
                    error!(seq = entry.seq, error = %e, "Cannot read a batch back from the spool; dropped it.");
                    if let Some(e) = self.entries.remove(self.unsent) {
                        self.bytes -= e.body.len();
                    }
                    self.dropped_batches += 1;
                }
            }
        }
    }

    /// Whether a batch awaits sending on the current stream.
    pub fn has_unsent(&self) -> bool {
        self.unsent < self.entries.len()
    }

    /// Records that [`Spool::next_unsent`] was sent.
    pub fn mark_sent(&mut self) {
        self.unsent = (self.unsent + 1).min(self.entries.len());
    }

    /// Drops every batch up to and including `seq`; returns how many.
    pub fn ack(&mut self, seq: u64) -> usize {
        let mut acked = 0;
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            self.pop_front();
            acked += 1;
        }
        self.unsent = self.unsent.saturating_sub(acked);
        self.sync_state();
        acked
    }

    /// On disk: forgets the segments no longer needed, and records that every
    /// batch before the oldest held is done with (acknowledged or dropped).
    fn sync_state(&mut self) {
        let keep_from = self.entries.front().map_or(self.next_seq, |e| e.seq);
        let next_seq = self.next_seq;
        if let Some(disk) = &mut self.disk
            && let Err(e) = disk
                .release(keep_from)
                .and_then(|()| disk.write_state(keep_from - 1, next_seq))
        {
            warn!(error = %e, "Cannot record acknowledged batches in the spool directory; after a restart they are sent again, and the collector skips them.");
        }
    }

    /// Starts a new stream after the collector's Welcome: drops what it already
    /// holds and marks the rest for resending.
    ///
    /// The first Welcome may name a sequence the collector holds from an
    /// earlier life of this agent that this spool never numbered (an in-memory
    /// spool starts from 1 each run). Then the spool renumbers its batches to
    /// follow it, rather than have them taken for replays. Numbers a reopened
    /// disk spool gave are its own, and the collector's answer acknowledges
    /// them.
    pub fn restart(&mut self, resume_after_seq: u64) {
        if !self.welcomed {
            self.welcomed = true;
            let first = self.entries.front().map_or(self.next_seq, |e| e.seq);
            if resume_after_seq >= self.opened_at_seq && resume_after_seq >= first {
                let shift = resume_after_seq + 1 - first;
                if let Some(disk) = &mut self.disk
                    && let Err(e) = disk.renumber(shift)
                {
                    error!(error = %e, "Cannot renumber the spool's segments; their batches are lost.");
                    self.dropped_batches += self.entries.len() as u64;
                    self.entries.clear();
                    self.bytes = 0;
                    self.memory_bytes = 0;
                }
                for e in &mut self.entries {
                    e.seq += shift;
                }
                self.next_seq += shift;
            }
        }
        self.next_seq = self.next_seq.max(resume_after_seq + 1);
        self.ack(resume_after_seq);
        self.unsent = 0;
    }

    /// The sequence the next batch pushed gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence of the oldest batch held.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no batch awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes of the batches held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The dictionary entries that the batches a reopened spool holds may
    /// refer to (empty after the first call, and for a spool in memory).
    pub fn take_recovered_dictionary(&mut self) -> Vec<v1::DictionaryEntry> {
        std::mem::take(&mut self.recovered_dictionary)
    }

    /// True when the spool is on disk and outlives the process.
    pub fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    /// Batches dropped to stay within the bound, or lost to a disk error,
    /// since start.
    pub fn dropped_batches(&self) -> u64 {
        self.dropped_batches
    }

    /// Batches held in memory because the spool's disk could not take them
    /// (full, or failing), since start.
    pub fn disk_failed_batches(&self) -> u64 {
        self.disk_failed_batches
    }
}

#[cfg(test)]
mod tests;

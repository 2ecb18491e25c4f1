//! The bounded spool of batches that the collector has not yet acknowledged.

use std::collections::VecDeque;

use pgfleet_proto::v1;
use prost::bytes::Bytes;

use crate::outgoing::Outgoing;

/// Batches awaiting the collector's ack, in sequence order, bounded in bytes. A
/// batch leaves only when acknowledged, or when the bound forces out the oldest.
/// Batches are held encoded: they are encoded once, and sent as they are.
#[derive(Debug)]
pub struct Spool {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
    next_seq: u64,
    /// `entries[unsent..]` have not been sent on the current stream.
    unsent: usize,
    dropped_batches: u64,
    welcomed: bool,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// The batch without its sequence, encoded.
    body: Bytes,
}

impl Spool {
    /// An empty spool holding at most `max_bytes` of encoded batches.
    pub fn new(max_bytes: usize) -> Self {
        Spool {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
            next_seq: 1,
            unsent: 0,
            dropped_batches: 0,
            welcomed: false,
        }
    }

    /// Adds a batch of snapshots with the next sequence number. Returns how many of
    /// the oldest batches were dropped to stay within the bound.
    pub fn push(&mut self, snapshots: Vec<v1::Snapshot>) -> u64 {
        let body = Outgoing::batch_body(snapshots);
        self.bytes += body.len();
        self.entries.push_back(Entry {
            seq: self.next_seq,
            body,
        });
        self.next_seq += 1;
        let mut dropped = 0;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.body.len();
                self.unsent = self.unsent.saturating_sub(1);
                dropped += 1;
            }
        }
        self.dropped_batches += dropped;
        dropped
    }

    /// The oldest batch not yet sent on the current stream, ready to send.
    pub fn next_unsent(&self) -> Option<Outgoing> {
        self.entries.get(self.unsent).map(|e| Outgoing::Batch {
            seq: e.seq,
            body: e.body.clone(),
        })
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
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.body.len();
                acked += 1;
            }
        }
        self.unsent = self.unsent.saturating_sub(acked);
        acked
    }

    /// Starts a new stream after the collector's Welcome: drops what it already
    /// holds and marks the rest for resending.
    ///
    /// On the first Welcome of this process nothing has been sent yet, so if the
    /// collector already holds sequences of an earlier life of this agent, the
    /// spool renumbers its batches to follow them instead of being taken for
    /// replays.
    pub fn restart(&mut self, resume_after_seq: u64) {
        if !self.welcomed {
            self.welcomed = true;
            let first = self.entries.front().map_or(self.next_seq, |e| e.seq);
            if resume_after_seq >= first {
                let shift = resume_after_seq + 1 - first;
                for e in &mut self.entries {
                    e.seq += shift;
                }
                self.next_seq += shift;
            }
        }
        self.ack(resume_after_seq);
        self.next_seq = self.next_seq.max(resume_after_seq + 1);
        self.unsent = 0;
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no batch awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Batches dropped to stay within the bound, since start.
    pub fn dropped_batches(&self) -> u64 {
        self.dropped_batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str) -> Vec<v1::Snapshot> {
        vec![v1::Snapshot {
            server_id: id.into(),
            ..Default::default()
        }]
    }

    fn sent_seqs(spool: &mut Spool) -> Vec<u64> {
        let mut seqs = vec![];
        while let Some(b) = spool.next_unsent() {
            let Outgoing::Batch { seq, .. } = b else {
                panic!("the spool holds batches")
            };
            seqs.push(seq);
            spool.mark_sent();
        }
        seqs
    }

    #[test]
    fn batches_leave_only_when_acknowledged() {
        let mut s = Spool::new(1 << 20);
        for _ in 0..3 {
            s.push(snap("a"));
        }
        assert_eq!(sent_seqs(&mut s), [1, 2, 3]);
        assert_eq!(s.ack(2), 2);
        assert_eq!(s.len(), 1);
        // A new stream resends what is unacknowledged.
        s.restart(2);
        assert_eq!(sent_seqs(&mut s), [3]);
        assert_eq!(s.ack(3), 1);
        assert!(s.is_empty() && s.bytes() == 0);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_them() {
        let one = {
            let mut s = Spool::new(usize::MAX);
            s.push(snap("abc"));
            s.bytes()
        };
        let mut s = Spool::new(one * 3);
        for _ in 0..5 {
            s.push(snap("abc"));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.dropped_batches(), 2);
        assert_eq!(sent_seqs(&mut s), [3, 4, 5]);
    }

    #[test]
    fn a_fresh_agent_follows_the_sequences_of_its_earlier_life() {
        let mut s = Spool::new(1 << 20);
        s.push(snap("a"));
        s.push(snap("a"));
        s.restart(500);
        assert_eq!(sent_seqs(&mut s), [501, 502]);
        s.push(snap("a"));
        assert_eq!(sent_seqs(&mut s), [503]);
    }

    #[test]
    fn a_collector_that_lost_its_state_gets_everything_unacknowledged() {
        let mut s = Spool::new(1 << 20);
        s.push(snap("a"));
        s.restart(0);
        assert_eq!(sent_seqs(&mut s), [1]);
        s.ack(1);
        s.push(snap("a"));
        s.push(snap("a"));
        // The collector restarted without history: it asks from 0.
        s.restart(0);
        assert_eq!(sent_seqs(&mut s), [2, 3]);
    }
}

//! The spool: in memory and on disk, its cap, and what survives a restart.

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

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfleet-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn bodies(spool: &mut Spool) -> Vec<(u64, Bytes)> {
    let mut out = vec![];
    while let Some(Outgoing::Batch { seq, body, .. }) = spool.next_unsent() {
        out.push((seq, body));
        spool.mark_sent();
    }
    out
}

#[test]
fn a_disk_spool_gives_back_what_was_not_acknowledged_after_a_restart() {
    let dir = temp_dir("reopen");
    let sent = {
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        assert!(s.is_durable());
        for id in ["a", "b", "c", "d"] {
            s.push(snap(id));
        }
        s.restart(0);
        let sent = bodies(&mut s);
        assert_eq!(s.ack(2), 2);
        sent
    };
    // A new process: batches 3 and 4 come back with their own numbers and
    // the very bytes that were written.
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.len(), 2);
    s.restart(2);
    assert_eq!(bodies(&mut s), sent[2..]);
    s.push(snap("e"));
    assert_eq!(sent_seqs(&mut s), [5]);
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_reopened_spool_takes_the_collectors_answer_as_an_ack_not_a_renumbering() {
    let dir = temp_dir("ack-lost");
    {
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for _ in 0..3 {
            s.push(snap("a"));
        }
    }
    // The collector applied batch 2, but its ack never reached the disk.
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    s.restart(2);
    assert_eq!(sent_seqs(&mut s), [3]);
    drop(s);
    // A collector that knows of numbers this spool never gave (its
    // directory was wiped, say): the batches follow them.
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    s.restart(100);
    assert_eq!(sent_seqs(&mut s), [101]);
    drop(s);
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    s.restart(100);
    assert_eq!(sent_seqs(&mut s), [101], "the renumbering is on disk too");
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_rest_kept() {
    let dir = temp_dir("torn");
    {
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        s.push(snap("a"));
        s.push(snap("b"));
    }
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    // A crash in the middle of writing batch 2.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.len(), 1);
    s.restart(0);
    s.push(snap("c"));
    // Batch 2 never became durable, so it was never sent: its number goes
    // to the next batch.
    let seqs: Vec<u64> = bodies(&mut s).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, [1, 2]);
    drop(s);
    // And what follows the cut is readable after another restart.
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    s.restart(0);
    assert_eq!(sent_seqs(&mut s), [1, 2]);
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_full_disk_spool_drops_its_oldest_segments_and_counts_the_batches() {
    let dir = temp_dir("cap");
    let cap = 64 << 10;
    let mut s = Spool::open(&dir, cap).unwrap();
    let big = || {
        vec![v1::Snapshot {
            server_id: "x".repeat(1000),
            ..Default::default()
        }]
    };
    for _ in 0..200 {
        s.push(big());
    }
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= cap as u64 + 100, "{on_disk} bytes on disk");
    assert!(s.dropped_batches() > 100, "{}", s.dropped_batches());
    assert_eq!(s.dropped_batches() + s.len() as u64, 200);
    s.restart(0);
    let seqs = sent_seqs(&mut s);
    assert_eq!(seqs.last(), Some(&200));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn two_agents_cannot_share_a_spool_directory() {
    let dir = temp_dir("lock");
    let first = Spool::open(&dir, 1 << 20).unwrap();
    let err = Spool::open(&dir, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("another agent"), "{err}");
    drop(first);
    assert!(Spool::open(&dir, 1 << 20).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_dictionary_is_kept_while_batches_on_disk_need_it() {
    let dir = temp_dir("dictionary");
    let entry = |id: u32, value: &str| v1::DictionaryEntry {
        id,
        value: value.into(),
    };
    {
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        s.push_batch(snap("a"), vec![entry(1, "orders"), entry(2, "app")]);
        s.push_batch(snap("b"), vec![entry(3, "SELECT ?")]);
    }
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    let got: Vec<_> = s
        .take_recovered_dictionary()
        .into_iter()
        .map(|e| (e.id, e.value))
        .collect();
    assert_eq!(
        got,
        [
            (1, "orders".to_owned()),
            (2, "app".to_owned()),
            (3, "SELECT ?".to_owned())
        ]
    );
    s.restart(0);
    let last = sent_seqs(&mut s).pop().unwrap();
    s.ack(last);
    drop(s);
    // Nothing left that needs it: the next run starts a new dictionary.
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert!(s.take_recovered_dictionary().is_empty());
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

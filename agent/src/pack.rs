//! Snapshots into batches that each fit in a message under the collector's
//! limit.

use pgfleet_proto::MAX_MESSAGE_BYTES;
use pgfleet_proto::v1;
use prost::Message;

/// The most bytes of snapshots one batch holds: the message limit, less room
/// for the dictionary twice (a batch's own additions, and the whole
/// dictionary the first batch of a stream carries on top) and for the
/// entries' framing and the envelope. A batch never exceeds the limit. A
/// snapshot is measured whole, pg_stat_statements' increments and texts
/// included; those are bounded (500 statements, 1 MiB of texts) to leave
/// most of this room to the sessions.
pub const MAX_BATCH_SNAPSHOT_BYTES: usize =
    MAX_MESSAGE_BYTES - 2 * pgfleet_proto::compact::Dictionary::MAX_BYTES - (1 << 20);

/// Splits `snapshots`, in order, into batches of at most `budget` encoded
/// bytes each; a snapshot larger than `budget` alone is left out. Returns
/// the batches and the servers whose snapshots were left out.
pub fn pack(snapshots: Vec<v1::Snapshot>, budget: usize) -> (Vec<Vec<v1::Snapshot>>, Vec<String>) {
    let mut batches: Vec<Vec<v1::Snapshot>> = Vec::new();
    let mut left_out = Vec::new();
    let mut bytes = 0;
    for s in snapshots {
        // As `Batch.snapshots` frames it: a tag, a length, the message.
        let len = s.encoded_len();
        let framed = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if framed > budget {
            left_out.push(s.server_id);
            continue;
        }
        match batches.last_mut() {
            Some(batch) if bytes + framed <= budget => batch.push(s),
            _ => {
                batches.push(vec![s]);
                bytes = 0;
            }
        }
        bytes += framed;
    }
    (batches, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_split_by_bytes_and_a_snapshot_too_large_alone_is_left_out() {
        let snapshot = |id: &str, padding: usize| v1::Snapshot {
            server_id: id.to_owned(),
            status: Some(v1::TargetStatus {
                up: false,
                reason: "x".repeat(padding),
            }),
            ..Default::default()
        };
        let framed = |s: &v1::Snapshot| {
            let len = s.encoded_len();
            1 + prost::encoding::encoded_len_varint(len as u64) + len
        };
        let small = framed(&snapshot("a", 100));
        let budget = 3 * small;
        let input = vec![
            snapshot("a", 100),
            snapshot("b", 100),
            snapshot("huge", 10 * small),
            snapshot("c", 100),
            snapshot("d", 100),
        ];
        let (batches, left_out) = pack(input, budget);
        assert_eq!(left_out, ["huge"]);
        let ids: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| b.iter().map(|s| s.server_id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            [vec!["a", "b", "c"], vec!["d"]],
            "in order, none over the budget"
        );
        for b in &batches {
            assert!(b.iter().map(framed).sum::<usize>() <= budget);
        }
        // The real budget leaves room for the dictionary twice under the limit.
        const {
            assert!(
                MAX_BATCH_SNAPSHOT_BYTES + 2 * pgfleet_proto::compact::Dictionary::MAX_BYTES
                    < MAX_MESSAGE_BYTES
            )
        };
    }

    #[test]
    fn statements_count_in_a_snapshot_s_size_and_the_largest_leaves_room_for_sessions() {
        use crate::sampler::statements::{MAX_STATEMENTS, MAX_TEXT_BYTES};
        // The largest sample: every statement with its text (together the
        // most bytes of texts a sample carries), names of PostgreSQL's
        // longest, every counter at its widest.
        let widest = v1::StatementDelta {
            query_id: i64::MIN,
            database: "d".repeat(63),
            user: "u".repeat(63),
            query_fingerprint: u64::MAX,
            calls: u64::MAX,
            exec_time_ms: f64::MAX,
            rows: u64::MAX,
            shared_blks_hit: u64::MAX,
            shared_blks_read: u64::MAX,
            shared_blks_dirtied: u64::MAX,
            shared_blks_written: u64::MAX,
            temp_blks_read: u64::MAX,
            temp_blks_written: u64::MAX,
            wal_bytes: u64::MAX,
            ..Default::default()
        };
        let statements = (0..MAX_STATEMENTS)
            .map(|_| v1::StatementDelta {
                query: "q".repeat(MAX_TEXT_BYTES / MAX_STATEMENTS),
                ..widest.clone()
            })
            .collect();
        let sample = v1::StatementsSample {
            since_us: i64::MAX,
            statements,
            other: Some(widest),
            reset: true,
            deallocated: u64::MAX,
        };
        let bare = v1::Snapshot {
            server_id: "a".to_owned(),
            ..Default::default()
        };
        let with = v1::Snapshot {
            statements: Some(sample),
            ..bare.clone()
        };
        let (bare_len, with_len) = (bare.encoded_len(), with.encoded_len());
        assert!(
            with_len - bare_len < MAX_BATCH_SNAPSHOT_BYTES / 4,
            "{with_len} bytes of statements leave most of {MAX_BATCH_SNAPSHOT_BYTES} to sessions"
        );
        // Packing measures them: room for the snapshot without its
        // statements is not room for it with them.
        let (batches, left_out) = pack(vec![with.clone()], bare_len + 16);
        assert!(batches.is_empty() && left_out == ["a"]);
        let framed = 1 + prost::encoding::encoded_len_varint(with_len as u64) + with_len;
        let (batches, left_out) = pack(vec![with, bare], framed);
        assert_eq!((batches.len(), left_out.len()), (2, 0));
    }
}

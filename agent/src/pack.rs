//! Snapshots into batches that each fit in a message under the collector's
//! limit.

use pgfleet_proto::MAX_MESSAGE_BYTES;
use pgfleet_proto::v1;
use prost::Message;

/// The most bytes of snapshots one batch holds: the message limit, less room
/// for the dictionary twice (a batch's own additions, and the whole
/// dictionary the first batch of a stream carries on top) and for the
/// entries' framing and the envelope. A batch never exceeds the limit.
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
}

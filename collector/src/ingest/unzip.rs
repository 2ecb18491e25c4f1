//! `AgentMessage.zstd_batch`: a batch the agent compressed as one zstd frame,
//! decompressed with the thread's context ([`crate::zstd_local`]); gRPC's
//! own zstd sets one up for every message, which was the largest single cost
//! of a batch.

use pgfleet_proto::v1;
use prost::Message;
use tonic::Status;

use crate::zstd_local::{Refused, decompress};

/// The batch in `frame`, which may decompress to at most `limit` bytes.
pub fn batch(frame: &[u8], limit: usize) -> Result<v1::Batch, Status> {
    let bytes = decompress(frame, limit).map_err(|e| match e {
        Refused::TooLarge { size, limit } => Status::resource_exhausted(format!(
            "a zstd_batch of {size} bytes decompressed is over this collector's limit of {limit} bytes (Welcome.config.max_message_bytes): send smaller batches"
        )),
        Refused::Unsized => Status::invalid_argument(
            "a zstd_batch whose frame does not state its content size: compress each batch as one frame, with its size",
        ),
        other => Status::invalid_argument(format!("a zstd_batch that is refused: {other}")),
    })?;
    v1::Batch::decode(bytes.as_slice()).map_err(|e| {
        Status::invalid_argument(format!(
            "a zstd_batch that is not a Batch once decompressed: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_whole_and_bad_frames_are_refused() {
        let batch = v1::Batch {
            seq: 7,
            snapshots: vec![v1::Snapshot {
                server_id: "db1".into(),
                sampled_at_us: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let frame =
            crate::zstd_local::compress(&batch.encode_to_vec(), crate::zstd_local::Level::Rows)
                .unwrap();
        assert_eq!(super::batch(&frame, 1 << 20).unwrap(), batch);
        let over = super::batch(&frame, 4).unwrap_err();
        assert_eq!(over.code(), tonic::Code::ResourceExhausted);
        assert!(over.message().contains("limit of 4 bytes"), "{over:?}");
        let garbage = super::batch(b"not zstd at all", 1 << 20).unwrap_err();
        assert!(
            garbage.message().contains("not a zstd frame"),
            "{garbage:?}"
        );
        let other =
            crate::zstd_local::compress(&[0xff; 16], crate::zstd_local::Level::Rows).unwrap();
        let e = super::batch(&other, 1 << 20).unwrap_err();
        assert!(e.message().contains("not a Batch"), "{e:?}");
    }
}

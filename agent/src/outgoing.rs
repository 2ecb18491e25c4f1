//! The agent's side of the stream, as it goes on the wire.
//!
//! A batch is encoded once, when it is spooled, and its bytes are sent as they
//! are on every (re)send: no copy of its snapshots, and no second encoding of
//! them. To a collector that takes zstd batches, those bytes are compressed
//! as they go out, on every (re)send.
//! [`Outgoing`] is wire-identical to `pgfleet.v1.AgentMessage`, which the
//! collector decodes (a test holds the two together).

use pgfleet_proto::v1;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

/// `AgentMessage.batch`'s field number.
const BATCH_FIELD: u32 = 2;
/// `AgentMessage.hello`'s field number.
const HELLO_FIELD: u32 = 1;
/// `AgentMessage.zstd_batch`'s field number.
const ZSTD_BATCH_FIELD: u32 = 3;
/// `Batch.seq`'s field number.
const SEQ_FIELD: u32 = 1;
/// `Batch.dictionary_additions`' field number.
const DICTIONARY_FIELD: u32 = 2;

/// The zstd level of batches sent as zstd frames. Level 1 rather than 3
/// (gRPC's zstd default, which the agent used before): on the agent's
/// stream of 1,000 simulated sessions it compresses in about 0.75 of the
/// time to the same bytes, within 1% (`cargo bench -p pgfleet-agent --bench
/// wire`, "Stream bytes per session per sample" in BENCHMARKS.md). The
/// batches are small, so level 3's second hash table buys nothing.
pub const ZSTD_LEVEL: i32 = 1;

/// One message of the agent's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    Hello(v1::Hello),
    /// A batch: its sequence, the rest of it (`Batch` without `seq`)
    /// encoded, and more `dictionary_additions` fields, encoded, for the first
    /// batch of a stream (see [`Outgoing::dictionary_fields`]).
    Batch {
        seq: u64,
        body: Bytes,
        dictionary: Bytes,
    },
    /// A batch as one zstd frame (`AgentMessage.zstd_batch`), for a
    /// collector that takes them.
    ZstdBatch(Bytes),
}

impl Outgoing {
    /// The body of a batch of `snapshots`: everything but its sequence, which
    /// may change before the batch is sent (see `Spool::restart`).
    pub fn batch_body(
        snapshots: Vec<v1::Snapshot>,
        dictionary_additions: Vec<v1::DictionaryEntry>,
    ) -> Bytes {
        v1::Batch {
            seq: 0,
            dictionary_additions,
            snapshots,
        }
        .encode_to_vec()
        .into()
    }

    /// `entries` as `Batch.dictionary_additions` fields, to go after a body
    /// (a repeated field may come in any number of pieces).
    pub fn dictionary_fields(entries: impl IntoIterator<Item = v1::DictionaryEntry>) -> Bytes {
        let mut buf = Vec::new();
        for e in entries {
            encoding::message::encode(DICTIONARY_FIELD, &e, &mut buf);
        }
        buf.into()
    }

    /// This batch compressed as one zstd frame with `context`; a Hello, or
    /// a batch the context fails on, as it is.
    pub fn compressed(self, context: &mut zstd::bulk::Compressor<'_>) -> Outgoing {
        let Outgoing::Batch {
            seq,
            body,
            dictionary,
        } = &self
        else {
            return self;
        };
        let mut raw = Vec::with_capacity(Self::batch_len(*seq, body, dictionary));
        Self::put_batch(*seq, body, dictionary, &mut raw);
        match context.compress(&raw) {
            Ok(frame) => Outgoing::ZstdBatch(frame.into()),
            Err(_) => self,
        }
    }

    /// A batch's fields, as `Batch` encodes them.
    fn put_batch(seq: u64, body: &Bytes, dictionary: &Bytes, buf: &mut impl BufMut) {
        if seq != 0 {
            encoding::uint64::encode(SEQ_FIELD, &seq, buf);
        }
        buf.put_slice(body);
        buf.put_slice(dictionary);
    }

    fn batch_len(seq: u64, body: &Bytes, dictionary: &Bytes) -> usize {
        let seq_len = if seq == 0 {
            0
        } else {
            encoding::uint64::encoded_len(SEQ_FIELD, &seq)
        };
        seq_len + body.len() + dictionary.len()
    }
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing::Batch {
            seq: 0,
            body: Bytes::new(),
            dictionary: Bytes::new(),
        }
    }
}

impl Message for Outgoing {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Outgoing::Hello(hello) => encoding::message::encode(HELLO_FIELD, hello, buf),
            Outgoing::Batch {
                seq,
                body,
                dictionary,
            } => {
                encoding::encode_key(BATCH_FIELD, WireType::LengthDelimited, buf);
                encoding::encode_varint(Self::batch_len(*seq, body, dictionary) as u64, buf);
                Self::put_batch(*seq, body, dictionary, buf);
            }
            Outgoing::ZstdBatch(frame) => encoding::bytes::encode(ZSTD_BATCH_FIELD, frame, buf),
        }
    }

    /// The agent never reads its own messages: every field is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Outgoing::Hello(hello) => encoding::message::encoded_len(HELLO_FIELD, hello),
            Outgoing::Batch {
                seq,
                body,
                dictionary,
            } => {
                let len = Self::batch_len(*seq, body, dictionary);
                encoding::key_len(BATCH_FIELD) + encoding::encoded_len_varint(len as u64) + len
            }
            Outgoing::ZstdBatch(frame) => encoding::bytes::encoded_len(ZSTD_BATCH_FIELD, frame),
        }
    }

    fn clear(&mut self) {
        *self = Outgoing::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfleet_proto::v1::agent_message::Msg;

    #[test]
    fn batches_and_hellos_decode_as_agent_messages() {
        let snapshots = vec![
            v1::Snapshot {
                server_id: "db1".into(),
                sampled_at_us: 42,
                ..Default::default()
            },
            v1::Snapshot {
                server_id: "db2".into(),
                ..Default::default()
            },
        ];
        let entry = |id: u32, value: &str| v1::DictionaryEntry {
            id,
            value: value.into(),
        };
        let mut context = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        for seq in [0, 1, 300, u64::MAX] {
            let out = Outgoing::Batch {
                seq,
                body: Outgoing::batch_body(snapshots.clone(), vec![entry(3, "orders")]),
                dictionary: Outgoing::dictionary_fields([entry(1, "app"), entry(2, "web")]),
            };
            let wire = out.encode_to_vec();
            assert_eq!(wire.len(), out.encoded_len());
            let decoded = v1::AgentMessage::decode(wire.as_slice()).unwrap();
            let want = v1::Batch {
                seq,
                // The body's additions, then the appended ones.
                dictionary_additions: vec![entry(3, "orders"), entry(1, "app"), entry(2, "web")],
                snapshots: snapshots.clone(),
            };
            assert_eq!(decoded.msg, Some(Msg::Batch(want.clone())));
            // The same batch as a zstd frame that states its size.
            let zipped = out.compressed(&mut context).encode_to_vec();
            let Some(Msg::ZstdBatch(frame)) =
                v1::AgentMessage::decode(zipped.as_slice()).unwrap().msg
            else {
                panic!("not a zstd_batch");
            };
            let size = zstd::zstd_safe::get_frame_content_size(&frame)
                .unwrap()
                .unwrap();
            let raw = zstd::bulk::decompress(&frame, size as usize).unwrap();
            assert_eq!(v1::Batch::decode(raw.as_slice()).unwrap(), want);
        }
        let hello = v1::Hello {
            agent_id: "vm".into(),
            sample_interval_ms: 1000,
            ..Default::default()
        };
        let wire = Outgoing::Hello(hello.clone()).encode_to_vec();
        let decoded = v1::AgentMessage::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded.msg, Some(Msg::Hello(hello)));
    }
}

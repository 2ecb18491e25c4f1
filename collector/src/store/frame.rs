//! Frames: each applied snapshot as the store keeps it (a keyframe, or a
//! delta against the frame before), how a frame is encoded (protobuf, zstd),
//! and how frames replay into a server's state.

use std::sync::Arc;

use pgfleet_proto::model::{Session, SessionKey, Snapshot, TargetStatus};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;
use prost::Message;
use tracing::warn;

use crate::state::{Pools, by_key, merge};

/// One applied snapshot, as stored.
#[derive(Debug, Clone)]
pub struct Frame {
    pub server_id: String,
    pub at: Micros,
    pub keyframe: bool,
    /// Up, or down and why.
    pub status: TargetStatus,
    /// The sessions (all of them in a keyframe; the new or changed in a delta).
    pub sessions: Vec<Arc<Session>>,
    /// The keys of the sessions that ended (deltas).
    pub removed: Vec<SessionKey>,
    /// For each session of a delta, the fields its base holds (as the agent
    /// sent it): they are left out of the stored frame, and the merge takes
    /// them back from the sessions before it. Empty: every session whole.
    pub unchanged: Vec<u32>,
    /// The pools as sampled.
    pub pools: Arc<Pools>,
    /// The server's facts, when the snapshot carried them.
    pub facts: Option<Arc<v1::ServerFacts>>,
    /// pg_stat_database increments since the snapshot before.
    pub databases: Vec<v1::DatabaseCounters>,
}

/// A server's state rebuilt from its frames.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The time of the last frame applied.
    pub at: Micros,
    /// Up, or down, as of that frame.
    pub status: TargetStatus,
    /// The sessions, in key order.
    pub sessions: Vec<Arc<Session>>,
    /// The pools of that frame.
    pub pools: Arc<Pools>,
    /// The facts of the last frame that carried them.
    pub facts: Option<Arc<v1::ServerFacts>>,
    /// The database increments of the frames applied, in order.
    pub databases: Vec<v1::DatabaseCounters>,
}

/// A frame as stored: its snapshot's protobuf, zstd-compressed with the
/// thread's context (one for the writer's life, not one per frame); as it
/// is, should the context not allocate (reading tells the two apart).
pub(super) fn encode(frame: &Frame) -> Vec<u8> {
    let snapshot = Snapshot {
        server_id: frame.server_id.clone(),
        sampled_at_us: frame.at,
        status: frame.status.clone(),
        sessions: frame.sessions.clone(),
        delta: (!frame.keyframe).then(|| pgfleet_proto::model::Delta {
            base_sampled_at_us: 0,
            removed: frame.removed.clone(),
            unchanged: frame.unchanged.clone(),
        }),
        facts: frame.facts.as_deref().cloned(),
        databases: frame.databases.clone(),
        slots: frame.pools.slots.clone(),
        pgbouncer: frame.pools.pgbouncer.clone(),
        client_pools: frame.pools.client_pools.clone(),
        agent: None,
        statements: None,
    };
    let bytes = v1::Snapshot::from(&snapshot).encode_to_vec();
    crate::zstd_local::compress(&bytes, crate::zstd_local::Level::Frames).unwrap_or(bytes)
}

/// The most bytes a stored frame is decompressed to with the thread's
/// context: a frame holds every string whole (on the wire, texts go by
/// dictionary), so a larger one is not refused but read the slow way.
const MAX_FRAME_BYTES: usize = pgfleet_proto::MAX_MESSAGE_BYTES;

fn decode(body: &[u8]) -> Option<Snapshot> {
    let bytes = if crate::zstd_local::is_frame(body) {
        // The thread's context; a frame without its size (none is written
        // so), or past the limit, the slow way: the collector wrote it.
        match crate::zstd_local::decompress(body, MAX_FRAME_BYTES) {
            Ok(bytes) => bytes,
            Err(
                crate::zstd_local::Refused::Unsized | crate::zstd_local::Refused::TooLarge { .. },
            ) => zstd::stream::decode_all(body).ok()?,
            Err(_) => return None,
        }
    } else {
        body.to_vec()
    };
    let wire = v1::Snapshot::decode(bytes.as_slice()).ok()?;
    Snapshot::try_from(wire).ok()
}

/// Applies stored frames, oldest first, to `state` (None: the first must be
/// a keyframe). A frame that does not decode is skipped; a delta that does
/// not apply ends the replay, which returns None.
pub(super) fn replay(
    server_id: &str,
    mut state: Option<Rebuilt>,
    frames: impl IntoIterator<Item = (Micros, bool, Vec<u8>)>,
) -> Option<Rebuilt> {
    for (at, keyframe, body) in frames {
        let Some(snapshot) = decode(&body) else {
            warn!(server.id = %server_id, at, "Skipped a history frame that does not decode.");
            continue;
        };
        let pools = Arc::new(Pools {
            slots: snapshot.slots,
            pgbouncer: snapshot.pgbouncer,
            client_pools: snapshot.client_pools,
        });
        let (sessions, facts, mut databases) = match (snapshot.delta, state.take()) {
            (Some(delta), Some(before)) if !keyframe => {
                let merged = merge(&before.sessions, snapshot.sessions, &delta)?;
                (merged.sessions, before.facts, before.databases)
            }
            (_, before) if keyframe => (
                by_key(snapshot.sessions),
                before.as_ref().and_then(|b| b.facts.clone()),
                before.map(|b| b.databases).unwrap_or_default(),
            ),
            _ => return None,
        };
        databases.extend(snapshot.databases);
        state = Some(Rebuilt {
            at,
            status: snapshot.status,
            sessions,
            pools,
            facts: snapshot.facts.map(Arc::new).or(facts),
            databases,
        });
    }
    state
}

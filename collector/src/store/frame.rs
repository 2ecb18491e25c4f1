//! Frames: each applied snapshot as the store keeps it (a keyframe, or a
//! delta against the frame before), how a frame is encoded (protobuf, zstd),
//! and how frames replay into a server's state.

use std::sync::Arc;

use pgfleet_proto::model::{Delta, Session, SessionKey, Snapshot, TargetStatus};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;
use prost::Message;
use tracing::warn;

use super::frame_dict::{FrameCoder, Named};
use crate::state::{Pools, by_key, merge};

/// One applied snapshot, built field by field (tests build frames so). The
/// collector writes each frame from its snapshot as it came ([`bytes`]).
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

impl Frame {
    /// The snapshot the frame stores (its base's time is not stored).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            server_id: self.server_id.clone(),
            sampled_at_us: self.at,
            status: self.status.clone(),
            sessions: self.sessions.clone(),
            delta: (!self.keyframe).then(|| Delta {
                base_sampled_at_us: 0,
                removed: self.removed.clone(),
                unchanged: self.unchanged.clone(),
            }),
            facts: self.facts.as_deref().cloned(),
            databases: self.databases.clone(),
            slots: self.pools.slots.clone(),
            pgbouncer: self.pools.pgbouncer.clone(),
            client_pools: self.pools.client_pools.clone(),
            agent: None,
            statements: None,
        }
    }

    /// The frame as the writer takes it.
    pub fn encoded(&self) -> Encoded {
        Encoded {
            server_id: self.server_id.clone(),
            at: self.at,
            keyframe: self.keyframe,
            bytes: bytes(&self.snapshot()),
        }
    }
}

/// One applied snapshot as the writer takes it: the protobuf of its
/// `v1::Snapshot` ([`bytes`]), which the writer compresses and stores.
///
/// Ingest writes it on the thread that has just decoded the snapshot. The
/// writer, which encoded each frame until stop 58, took 0.76× the CPU
/// without it, and the collector 0.99×: a profile had put most of the
/// writer's encoding in the loads of each session and of its strings'
/// lengths, out of the cache by then, and they cost nearly as much
/// wherever the frame is written. What the writer keeps of each frame
/// until its commit is these bytes, rather than the frame's sessions.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub server_id: String,
    pub at: Micros,
    pub keyframe: bool,
    pub bytes: Vec<u8>,
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
/// thread's context (one for the writer's life, not one per frame) and the
/// coder's dictionary, if it has one; as it is, should the context not
/// allocate (reading tells the two apart).
pub(super) fn compress(frame: &Encoded, coder: &mut FrameCoder) -> Vec<u8> {
    let whole = frame.bytes.len() > MAX_FRAME_BYTES;
    coder.compress(&frame.bytes, whole)
}

/// The frame of `snapshot`, as it came from its agent, as the protobuf of a
/// `v1::Snapshot`: a delta's sessions without the fields their masks name;
/// left out, the delta's base time (a frame's base is the frame before),
/// the agent's own counters and the statement statistics (stored apart).
/// It is written field by field: the bytes prost writes for
/// `v1::Snapshot::from` the snapshot less those, without first copying every
/// string and pool of it into that message.
///
/// A delta's sessions as they came lack the fields their masks name, which
/// `state::merge` then fills in from the base (`compact::fill`). The frame
/// leaves out the same fields (`compact::encode_sample`), so it is the same
/// whether written before the merge or after, from the sessions made whole;
/// a test holds the two to the same bytes. A keyframe's sessions are
/// written in the order they came: a replay puts them in key order.
pub fn bytes(snapshot: &Snapshot) -> Vec<u8> {
    use pgfleet_proto::compact::{encode_sample, encode_str, nested};
    use prost::encoding::{int64, message};
    let mut buf = Vec::with_capacity(128 + 192 * snapshot.sessions.len());
    encode_str(1, &snapshot.server_id, &mut buf);
    if snapshot.sampled_at_us != 0 {
        int64::encode(2, &snapshot.sampled_at_us, &mut buf);
    }
    // The reason is copied only for a frame of a server down.
    let status = match &snapshot.status {
        TargetStatus::Up => v1::TargetStatus {
            up: true,
            reason: String::new(),
        },
        TargetStatus::Down(reason) => v1::TargetStatus {
            up: false,
            reason: reason.clone(),
        },
    };
    message::encode(3, &status, &mut buf);
    if status.up {
        match &snapshot.delta {
            None => nested(4, &mut buf, |buf| {
                for s in &snapshot.sessions {
                    encode_sample(1, s, 0, buf);
                }
            }),
            Some(delta) => nested(5, &mut buf, |buf| {
                let mask = |i: usize| delta.unchanged.get(i).copied().unwrap_or(0);
                for (i, s) in snapshot.sessions.iter().enumerate() {
                    encode_sample(2, s, mask(i), buf);
                }
                for &(pid, backend_start_us) in &delta.removed {
                    let key = v1::SessionKey {
                        pid,
                        backend_start_us,
                    };
                    message::encode(3, &key, buf);
                }
            }),
        }
    }
    if let Some(facts) = &snapshot.facts {
        message::encode(6, facts, &mut buf);
    }
    for d in &snapshot.databases {
        message::encode(7, d, &mut buf);
    }
    if let Some(slots) = &snapshot.slots {
        message::encode(8, slots, &mut buf);
    }
    if let Some(pgbouncer) = &snapshot.pgbouncer {
        message::encode(9, pgbouncer, &mut buf);
    }
    for pool in &snapshot.client_pools {
        message::encode(10, pool, &mut buf);
    }
    buf
}

/// The most bytes a stored frame is decompressed to with the thread's
/// context: a frame holds every string whole (on the wire, texts go by
/// dictionary), so a larger one is not refused but read the slow way (and
/// is written without a trained dictionary, which that way does not take).
const MAX_FRAME_BYTES: usize = pgfleet_proto::MAX_MESSAGE_BYTES;

/// Why a stored frame was skipped.
#[derive(Debug, thiserror::Error)]
enum Undecoded {
    #[error("it names frame dictionary {0}, which the store does not hold")]
    NoDictionary(u32),
    #[error("it does not decompress: {0}")]
    Refused(#[from] crate::zstd_local::Refused),
    #[error("it is not a snapshot: {0}")]
    NotSnapshot(String),
}

fn decode(body: &[u8], dicts: &Named) -> Result<Snapshot, Undecoded> {
    let bytes = if crate::zstd_local::is_frame(body) {
        let dictionary = match crate::zstd_local::dictionary_of(body) {
            Some(id) => Some(dicts.get(id).ok_or(Undecoded::NoDictionary(id))?),
            None => None,
        };
        // The thread's context; a frame without its size (none is written
        // so), or past the limit, the slow way: the collector wrote it.
        match crate::zstd_local::decompress_with(body, MAX_FRAME_BYTES, dictionary) {
            Ok(bytes) => bytes,
            Err(
                crate::zstd_local::Refused::Unsized | crate::zstd_local::Refused::TooLarge { .. },
            ) if dictionary.is_none() => zstd::stream::decode_all(body)
                .map_err(|e| Undecoded::Refused(crate::zstd_local::Refused::Corrupt(e)))?,
            Err(e) => return Err(e.into()),
        }
    } else {
        body.to_vec()
    };
    let wire = v1::Snapshot::decode(bytes.as_slice())
        .map_err(|e| Undecoded::NotSnapshot(e.to_string()))?;
    Snapshot::try_from(wire).map_err(|e| Undecoded::NotSnapshot(e.to_string()))
}

/// Applies stored frames, oldest first, to `state` (None: the first must be
/// a keyframe), with the dictionaries they name in `dicts`. A frame that
/// does not decode is skipped; one whose dictionary is not there, or a
/// delta that does not apply, ends the replay, which returns None (the
/// frames after it would apply to a wrong base).
pub(super) fn replay(
    server_id: &str,
    mut state: Option<Rebuilt>,
    frames: impl IntoIterator<Item = (Micros, bool, Vec<u8>)>,
    dicts: &Named,
) -> Option<Rebuilt> {
    for (at, keyframe, body) in frames {
        let snapshot = match decode(&body, dicts) {
            Ok(snapshot) => snapshot,
            Err(e @ Undecoded::NoDictionary(_)) => {
                warn!(server.id = %server_id, at, error = %e, "A history frame does not decode; the server's state is not rebuilt past it.");
                return None;
            }
            Err(e) => {
                warn!(server.id = %server_id, at, error = %e, "Skipped a history frame that does not decode.");
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::frame_dict::{DictTraining, DictsStored, FrameDicts};
    use pgfleet_proto::compact::field;
    use pgfleet_proto::model::{Delta, SessionState};

    /// The frame's snapshot as prost writes it: what [`bytes`] must write
    /// without building that message.
    fn by_prost(frame: &Frame) -> Vec<u8> {
        v1::Snapshot::from(&frame.snapshot()).encode_to_vec()
    }

    fn session(pid: i32, state: SessionState) -> Arc<Session> {
        Arc::new(Session {
            pid,
            backend_start_us: 1_000 + i64::from(pid),
            database: "orders".into(),
            user: "app".into(),
            application_name: "web".into(),
            client: "10.0.0.1:5000".into(),
            state,
            xact_start_us: Some(2_000),
            query_start_us: Some(2_500),
            state_change_us: Some(2_600),
            wait_event_type: "Lock".into(),
            wait_event: "transactionid".into(),
            query: "UPDATE t SET a = $1".into(),
            blocked_by: vec![pid + 1, pid + 2],
            backend_type: "client backend".into(),
            leader_pid: Some(3),
            query_id: Some(-5),
            fingerprint: 77,
        })
    }

    #[test]
    fn a_frame_is_written_as_prost_writes_its_snapshot() {
        let pools = Arc::new(Pools {
            slots: Some(v1::ConnectionSlots {
                max_connections: 100,
                used: 7,
                ..Default::default()
            }),
            pgbouncer: Some(v1::PgBouncerSample {
                up: false,
                reason: "refused".into(),
                ..Default::default()
            }),
            client_pools: vec![v1::ClientPool {
                pool_name: "web".into(),
                max: 10,
                ..Default::default()
            }],
        });
        let keyframe = Frame {
            server_id: "db-1".into(),
            at: 1_700_000_000_000_000,
            keyframe: true,
            status: TargetStatus::Up,
            sessions: vec![
                session(1, SessionState::Active),
                session(2, SessionState::Idle),
                Arc::new(Session::default()),
            ],
            removed: Vec::new(),
            unchanged: Vec::new(),
            pools: pools.clone(),
            facts: Some(Arc::new(v1::ServerFacts {
                version: "15.4".into(),
                version_num: 150004,
                ..Default::default()
            })),
            databases: vec![v1::DatabaseCounters {
                database: "orders".into(),
                sessions: 3,
                ..Default::default()
            }],
        };
        let delta = Frame {
            keyframe: false,
            sessions: vec![
                session(2, SessionState::Active),
                session(9, SessionState::Idle),
            ],
            removed: vec![(1, 1_001), (0, 0), (-3, -7)],
            // The first session changed its state alone: the rest is its
            // base's. The second is new.
            unchanged: vec![field::ALL & !field::STATE, 0],
            facts: None,
            ..keyframe.clone()
        };
        let frames = [
            keyframe.clone(),
            delta.clone(),
            Frame {
                unchanged: Vec::new(),
                ..delta.clone()
            },
            Frame {
                sessions: Vec::new(),
                removed: Vec::new(),
                unchanged: Vec::new(),
                ..delta.clone()
            },
            Frame {
                sessions: Vec::new(),
                pools: Arc::default(),
                databases: Vec::new(),
                ..keyframe.clone()
            },
            // A keyframe's sessions are whole, whatever `unchanged` says.
            Frame {
                unchanged: vec![field::ALL, 1],
                facts: Some(Arc::default()),
                ..keyframe.clone()
            },
            Frame {
                status: TargetStatus::Down("connection refused".into()),
                sessions: Vec::new(),
                ..keyframe.clone()
            },
            Frame {
                server_id: String::new(),
                at: 0,
                status: TargetStatus::Down(String::new()),
                ..delta.clone()
            },
        ];
        for frame in &frames {
            assert_eq!(bytes(&frame.snapshot()), by_prost(frame), "{frame:?}");
        }
        // And it reads back: the delta, replayed onto the keyframe.
        let mut coder = FrameCoder::off();
        let bodies =
            [&keyframe, &delta].map(|f| (f.at, f.keyframe, compress(&f.encoded(), &mut coder)));
        let rebuilt = replay("db-1", None, bodies, &Named::default())
            .expect("the delta applies to the keyframe");
        let pids: Vec<i32> = rebuilt.sessions.iter().map(|s| s.pid).collect();
        // Sessions 1 and 0 ended; 2 changed, taking back its base's strings.
        assert_eq!(pids, [2, 9]);
        assert_eq!(*rebuilt.sessions[0], *session(2, SessionState::Active));
    }

    #[test]
    fn a_delta_as_it_came_is_the_frame_of_its_sessions_made_whole() {
        let base = by_key(vec![
            session(1, SessionState::Active),
            session(2, SessionState::Idle),
            session(3, SessionState::Idle),
        ]);
        // Session 2 changed its state and query, 4 is new, 3 ended.
        let changed = vec![
            Arc::new(Session {
                query: "SELECT 2".into(),
                ..(*session(2, SessionState::Active)).clone()
            }),
            session(4, SessionState::Active),
        ];
        let unchanged = vec![pgfleet_proto::compact::unchanged(&changed[0], &base[1]), 0];
        assert_ne!(unchanged[0], 0);
        let sent = Snapshot {
            server_id: "db-1".into(),
            sampled_at_us: 20,
            status: TargetStatus::Up,
            sessions: changed,
            delta: Some(Delta {
                base_sampled_at_us: 10,
                removed: vec![base[2].key()],
                unchanged: unchanged.clone(),
            }),
            facts: None,
            databases: vec![v1::DatabaseCounters {
                database: "orders".into(),
                sessions: 3,
                ..Default::default()
            }],
            slots: Some(v1::ConnectionSlots {
                max_connections: 100,
                used: 3,
                ..Default::default()
            }),
            pgbouncer: None,
            client_pools: Vec::new(),
            agent: None,
            statements: None,
        };
        // As ingest has it: without the fields the masks name.
        let came = Snapshot::try_from(v1::Snapshot::from(&sent)).unwrap();
        assert!(came.sessions[0].user.is_empty(), "{:?}", came.sessions[0]);
        let delta = came.delta.as_ref().unwrap();
        let merged = merge(&base, came.sessions.clone(), delta).unwrap();
        // The merge made session 2 whole again.
        assert!(merged.sessions.iter().any(|s| **s == *sent.sessions[0]));
        let made_whole = Frame {
            server_id: "db-1".into(),
            at: 20,
            keyframe: false,
            status: TargetStatus::Up,
            sessions: sent.sessions.clone(),
            removed: delta.removed.clone(),
            unchanged,
            pools: Arc::new(Pools {
                slots: sent.slots.clone(),
                pgbouncer: None,
                client_pools: Vec::new(),
            }),
            facts: None,
            databases: sent.databases.clone(),
        };
        // Its base's time (10) is not stored.
        let bytes = bytes(&came);
        assert_eq!(bytes, made_whole.encoded().bytes);
        // And it replays onto its base as the merge made it.
        let keyframe = Frame {
            at: 10,
            keyframe: true,
            sessions: base,
            removed: Vec::new(),
            unchanged: Vec::new(),
            ..made_whole.clone()
        };
        let mut coder = FrameCoder::off();
        let bodies = [
            (10, true, compress(&keyframe.encoded(), &mut coder)),
            (20, false, coder.compress(&bytes, false)),
        ];
        let rebuilt = replay("db-1", None, bodies, &Named::default()).unwrap();
        assert_eq!(rebuilt.sessions, merged.sessions);
    }

    /// Seconds `seconds` of a server's frames as the load generator's
    /// vary: a keyframe at the first, then deltas of a few sessions whose
    /// queries, clients and times move.
    fn varied(seconds: std::ops::Range<usize>) -> Vec<Frame> {
        let texts = [
            "SELECT * FROM orders WHERE customer_id = $1 AND status = $2",
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
            "INSERT INTO events (kind, payload, at) VALUES ($1, $2, now())",
            "SELECT count(*) FROM line_items li JOIN orders o ON o.id = li.order_id",
        ];
        let first = seconds.start;
        seconds
            .map(|i| {
                let sessions = (0..if i == first { 40 } else { 4 })
                    .map(|k| {
                        let pid = 100 + ((i * 7 + k * 13) % 40) as i32;
                        Arc::new(Session {
                            client: format!("10.1.{}.{}:{}", pid % 7, pid, 40_000 + i % 97).into(),
                            query: texts[(i + k) % texts.len()].into(),
                            query_start_us: Some(1_700_000_000_000_000 + (i * 1_000_003) as i64),
                            state_change_us: Some(1_700_000_000_000_000 + (i * 999_983) as i64),
                            fingerprint: ((i + k) % texts.len()) as u64 * 0x9e37_79b9,
                            blocked_by: Vec::new(),
                            ..(*session(pid, SessionState::Active)).clone()
                        })
                    })
                    .collect();
                Frame {
                    server_id: "db-7".into(),
                    at: 1_700_000_000_000_000 + i as i64 * 1_000_000,
                    keyframe: i == first,
                    status: TargetStatus::Up,
                    sessions,
                    removed: Vec::new(),
                    unchanged: Vec::new(),
                    pools: Arc::default(),
                    facts: None,
                    databases: Vec::new(),
                }
            })
            .collect()
    }

    #[test]
    fn frames_compressed_with_a_trained_dictionary_are_smaller_and_read_back() {
        let training = DictTraining {
            enabled: true,
            after: std::time::Duration::ZERO,
            frames: 1_000,
            every: std::time::Duration::from_secs(3600),
        };
        let dicts = FrameDicts::default();
        let mut coder = FrameCoder::new(training, dicts.clone());
        for f in &varied(0..1_500) {
            compress(&f.encoded(), &mut coder);
        }
        let started = std::time::Instant::now();
        let id = loop {
            if let Some((id, _)) = coder.writes(0).new {
                break id;
            }
            assert!(started.elapsed().as_secs() < 60, "no dictionary trained");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        // Frames not among those it was trained on.
        let frames = varied(5_000..5_300);
        // Not used until a commit stored it: a commit that failed writes it
        // again, one that found another of its id in the store drops it.
        assert_eq!(
            crate::zstd_local::dictionary_of(&compress(&frames[1].encoded(), &mut coder)),
            None
        );
        coder.committed(None, 0);
        assert_eq!(coder.writes(0).new.map(|d| d.0), Some(id));
        coder.committed(
            Some(&DictsStored {
                new: Some(true),
                current: None,
            }),
            0,
        );
        assert_eq!(coder.current(), Some(id));
        assert!(coder.writes(0).new.is_none());
        // Written again, to be marked used, a minute later.
        assert!(coder.writes(59_000_000).current.is_none());
        assert_eq!(coder.writes(60_000_000).current.map(|d| d.0), Some(id));

        let mut plain = FrameCoder::off();
        let with: Vec<_> = frames
            .iter()
            .map(|f| (f.at, f.keyframe, compress(&f.encoded(), &mut coder)))
            .collect();
        let without: Vec<_> = frames
            .iter()
            .map(|f| (f.at, f.keyframe, compress(&f.encoded(), &mut plain)))
            .collect();
        assert!(
            with.iter()
                .all(|(_, _, b)| crate::zstd_local::dictionary_of(b) == Some(id))
        );
        let bytes = |v: &[(Micros, bool, Vec<u8>)]| v.iter().map(|f| f.2.len()).sum::<usize>();
        assert!(
            bytes(&with) * 10 < bytes(&without) * 7,
            "{} bytes with the dictionary, {} without",
            bytes(&with),
            bytes(&without)
        );
        // A reader that loads the dictionary reads what was written; one
        // that does not have it stops at the first frame that names it.
        let expected = replay("db-7", None, without, &Named::default()).unwrap();
        let readers = FrameDicts::default();
        let (mut named, missing) = readers.named(with.iter().map(|f| f.2.as_slice()));
        assert_eq!(missing, [id]);
        let stored = coder_bytes(&coder);
        assert!(readers.insert(id ^ 1, &stored).is_none());
        named.load(&readers, id, Some(&stored));
        let read = replay("db-7", None, with.clone(), &named).unwrap();
        assert_eq!(read.at, expected.at);
        assert_eq!(read.sessions, expected.sessions);
        let (_, missing) = readers.named(with.iter().map(|f| f.2.as_slice()));
        assert!(missing.is_empty(), "loaded for the reads after");
        assert!(replay("db-7", None, with, &Named::default()).is_none());
        // The writer's own reads have it already.
        let (_, missing) = dicts.named([compress(&frames[2].encoded(), &mut coder).as_slice()]);
        assert!(missing.is_empty());
        // A frame too large for the thread's context is read the slow way,
        // which takes no dictionary: it is written without one.
        let big = coder.compress(&vec![7; MAX_FRAME_BYTES + 1], true);
        assert_eq!(crate::zstd_local::dictionary_of(&big), None);
    }

    fn coder_bytes(coder: &FrameCoder) -> Vec<u8> {
        coder.current_bytes().expect("a dictionary in use").to_vec()
    }
}

//! Snapshots as they travel: each target's activity as a keyframe (every
//! session) or a delta against the previous snapshot sent (new and changed
//! sessions, and the keys of those that ended).
//!
//! The sampler hands over either every session of its target or, mostly, only
//! what changed since its previous snapshot (a [`Delta`]). The encoder keeps
//! the target's whole activity as the agent knows it, so that it can send a
//! keyframe whenever one is due without the sampler reading everything again.
//!
//! A keyframe goes first after every (re)connect, after a target was down, when
//! the collector asks for one, and every [`KEYFRAME_EVERY`] snapshots, so a
//! collector that lost its state recovers within a minute even if it never asks.
//! Server facts go with every keyframe, and with any snapshot where they changed.

use std::collections::HashMap;
use std::sync::Arc;

use pgfleet_proto::compact::{self, Dictionary};
use pgfleet_proto::model::{Delta, Session, SessionKey, SessionMap, Snapshot, TargetStatus};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

/// A target's activity is sent whole at least this often (in snapshots).
pub const KEYFRAME_EVERY: u32 = 60;

/// One target's activity as the agent knows it, and what the collector holds.
#[derive(Default)]
struct Sent {
    /// The target's sessions as of `at`, by key, with the snapshot that last
    /// listed them (for snapshots that list every session).
    sessions: SessionMap<(Arc<Session>, u64)>,
    /// Snapshots encoded for this target.
    generation: u64,
    /// The time of the last snapshot applied; None when there is none.
    at: Option<Micros>,
    /// Whether the collector holds the sessions as of `at`, so that the next
    /// snapshot may be a delta.
    collector_has: bool,
    /// Snapshots since the last keyframe.
    since_keyframe: u32,
    /// The facts last sent.
    facts: Option<v1::ServerFacts>,
}

impl Sent {
    /// Takes `snapshot`'s sessions into the target's activity, and returns the
    /// sessions that are new or changed and the keys of those that ended.
    /// Each new or changed session comes with its previous version, if the
    /// target had it.
    fn apply(&mut self, snapshot: &mut Snapshot) -> (Vec<Changed>, Vec<SessionKey>) {
        let sessions = std::mem::take(&mut snapshot.sessions);
        self.generation += 1;
        let generation = self.generation;
        match snapshot.delta.take() {
            Some(delta) => {
                if self.at != Some(delta.base_sampled_at_us) {
                    // The sampler guarantees this cannot happen (it lists every
                    // session after a snapshot of its was lost, and every
                    // KEYFRAME_EVERY snapshots). Should it, the whole activity
                    // is sent, and the sampler's next full list mends it.
                    tracing::error!(
                        server.id = %snapshot.server_id,
                        base = delta.base_sampled_at_us,
                        "A delta does not follow the previous snapshot; sending a keyframe."
                    );
                    self.collector_has = false;
                }
                let changed = sessions
                    .into_iter()
                    .map(|s| {
                        let before = self.sessions.insert(s.key(), (s.clone(), generation));
                        (s, before.map(|(b, _)| b))
                    })
                    .collect();
                for key in &delta.removed {
                    self.sessions.remove(key);
                }
                (changed, delta.removed)
            }
            None => {
                let mut changed = Vec::new();
                for s in sessions {
                    match self.sessions.get_mut(&s.key()) {
                        Some((before, seen)) => {
                            if !(Arc::ptr_eq(before, &s) || **before == *s) {
                                let old = std::mem::replace(before, s.clone());
                                changed.push((s, Some(old)));
                            }
                            *seen = generation;
                        }
                        None => {
                            changed.push((s.clone(), None));
                            self.sessions.insert(s.key(), (s, generation));
                        }
                    }
                }
                let mut removed = Vec::new();
                self.sessions.retain(|key, (_, seen)| {
                    let live = *seen == generation;
                    if !live {
                        removed.push(*key);
                    }
                    live
                });
                (changed, removed)
            }
        }
    }
}

/// A new or changed session, and its version in the previous snapshot.
type Changed = (Arc<Session>, Option<Arc<Session>>);

/// The encoder of one agent's stream.
#[derive(Default)]
pub struct Encoder {
    targets: HashMap<String, Sent>,
    /// The strings sent as references (see `compact`).
    dictionary: Dictionary,
}

impl Encoder {
    /// Encodes `snapshot`, a sample of its target (every session, or a delta
    /// against the target's previous snapshot), as the collector needs it.
    /// Sessions are moved and shared, never copied.
    pub fn encode(&mut self, mut snapshot: Snapshot) -> v1::Snapshot {
        let sent = self.targets.entry(snapshot.server_id.clone()).or_default();
        if snapshot.status != TargetStatus::Up {
            *sent = Sent::default();
            return v1::Snapshot::from(&snapshot);
        }
        let base = sent.at.filter(|_| sent.collector_has);
        let (changed, removed) = sent.apply(&mut snapshot);
        // (`apply` clears `collector_has` when a delta does not follow.)
        let keyframe =
            base.is_none() || !sent.collector_has || sent.since_keyframe + 1 >= KEYFRAME_EVERY;
        let (sessions, previous): (Vec<_>, Vec<_>) = if keyframe {
            (
                sent.sessions.values().map(|(s, _)| s.clone()).collect(),
                Vec::new(),
            )
        } else {
            changed.into_iter().unzip()
        };
        let upserted = sessions.len();
        if !keyframe {
            // What the collector holds of each changed session, left out.
            let unchanged = sessions
                .iter()
                .zip(&previous)
                .map(|(new, old)| old.as_ref().map_or(0, |old| compact::unchanged(new, old)))
                .collect();
            snapshot.delta = Some(Delta {
                unchanged,
                base_sampled_at_us: base.unwrap_or_default(),
                removed,
            });
        }
        sent.since_keyframe = if keyframe { 0 } else { sent.since_keyframe + 1 };
        sent.at = Some(snapshot.sampled_at_us);
        sent.collector_has = true;
        if !keyframe && snapshot.facts == sent.facts {
            snapshot.facts = None;
        } else if snapshot.facts.is_some() {
            sent.facts = snapshot.facts.clone();
        }
        tracing::debug!(
            server.id = %snapshot.server_id,
            keyframe,
            sessions = sent.sessions.len(),
            upserted,
            removed = snapshot.delta.as_ref().map_or(0, |d| d.removed.len()),
            "Snapshot encoded."
        );
        snapshot.sessions = sessions;
        let mut wire = v1::Snapshot::from(&snapshot);
        self.compact(&mut wire);
        wire
    }

    /// Puts repeated strings in the dictionary.
    fn compact(&mut self, wire: &mut v1::Snapshot) {
        let sessions = match &mut wire.activity {
            Some(v1::snapshot::Activity::Delta(d)) => &mut d.upserted,
            Some(v1::snapshot::Activity::Keyframe(k)) => &mut k.sessions,
            None => return,
        };
        for w in sessions {
            self.dictionary.compact(w);
        }
    }

    /// The dictionary entries made since the last call: they go with the
    /// batch of the snapshots just encoded.
    pub fn take_dictionary_additions(&mut self) -> Vec<v1::DictionaryEntry> {
        self.dictionary.take_added()
    }

    /// The whole dictionary, which the first batch of each stream carries.
    pub fn dictionary(&self) -> &Dictionary {
        &self.dictionary
    }

    /// Takes back the dictionary a disk spool kept from an earlier run, so
    /// that the batches it holds can be read.
    pub fn restore_dictionary(&mut self, entries: Vec<v1::DictionaryEntry>) {
        self.dictionary.restore(entries);
    }

    /// The next snapshot of every target is a keyframe (a new stream).
    pub fn keyframe_all(&mut self) {
        for sent in self.targets.values_mut() {
            sent.collector_has = false;
        }
    }

    /// The next snapshot of each of these targets is a keyframe (the collector
    /// asked for it).
    pub fn keyframe(&mut self, server_ids: &[String]) {
        for id in server_ids {
            if let Some(sent) = self.targets.get_mut(id) {
                sent.collector_has = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfleet_proto::model::SessionState;

    fn session(pid: i32, state: SessionState) -> Arc<Session> {
        Arc::new(Session {
            pid,
            backend_start_us: 1000 + i64::from(pid),
            state,
            query: "select ?".into(),
            ..Default::default()
        })
    }

    fn snapshot(at: Micros, sessions: Vec<Arc<Session>>) -> Snapshot {
        Snapshot {
            status: TargetStatus::Up,
            sessions,
            facts: Some(v1::ServerFacts {
                version_num: 150018,
                ..Default::default()
            }),
            ..Snapshot::down("db".into(), at, String::new())
        }
    }

    fn delta(wire: &v1::Snapshot) -> Option<&v1::ActivityDelta> {
        match &wire.activity {
            Some(v1::snapshot::Activity::Delta(d)) => Some(d),
            _ => None,
        }
    }

    #[test]
    fn unchanged_sessions_are_not_sent_again() {
        let mut e = Encoder::default();
        let a = session(1, SessionState::Active);
        let b = session(2, SessionState::Idle);
        let first = e.encode(snapshot(10, vec![a.clone(), b.clone()]));
        assert!(delta(&first).is_none(), "the first snapshot is a keyframe");
        assert!(first.facts.is_some());

        let mut b2 = b.clone();
        Arc::make_mut(&mut b2).state = SessionState::Active;
        let c = session(3, SessionState::Active);
        let second = e.encode(snapshot(20, vec![a.clone(), b2, c]));
        let d = delta(&second).expect("then deltas");
        assert_eq!(d.base_sampled_at_us, 10);
        let pids: Vec<_> = d.upserted.iter().map(|s| s.pid).collect();
        assert_eq!(pids, [2, 3], "the changed and the new session");
        assert!(d.removed.is_empty());
        assert!(
            second.facts.is_none(),
            "unchanged facts wait for a keyframe"
        );

        let third = e.encode(snapshot(30, vec![a]));
        let d = delta(&third).unwrap();
        assert_eq!(d.base_sampled_at_us, 20);
        assert!(d.upserted.is_empty());
        let mut removed: Vec<_> = d.removed.iter().map(|k| k.pid).collect();
        removed.sort();
        assert_eq!(removed, [2, 3]);
    }

    #[test]
    fn keyframes_come_periodically_on_request_and_after_a_target_was_down() {
        let mut e = Encoder::default();
        let s = || vec![session(1, SessionState::Idle)];
        let mut kinds = Vec::new();
        for i in 0..(KEYFRAME_EVERY as i64 * 2) {
            kinds.push(delta(&e.encode(snapshot(i, s()))).is_none());
        }
        let keyframes: Vec<_> = kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(keyframes, [0, KEYFRAME_EVERY as usize]);

        e.keyframe(&["db".to_owned()]);
        assert!(delta(&e.encode(snapshot(500, s()))).is_none());
        assert!(delta(&e.encode(snapshot(501, s()))).is_some());
        e.encode(Snapshot::down("db".into(), 502, "gone".into()));
        assert!(delta(&e.encode(snapshot(503, s()))).is_none());
        e.keyframe_all();
        assert!(delta(&e.encode(snapshot(504, s()))).is_none());
    }

    fn delta_from(
        at: Micros,
        base: Micros,
        changed: Vec<Arc<Session>>,
        removed: &[i32],
    ) -> Snapshot {
        Snapshot {
            delta: Some(Delta {
                unchanged: Vec::new(),
                base_sampled_at_us: base,
                removed: removed
                    .iter()
                    .map(|&pid| (pid, 1000 + i64::from(pid)))
                    .collect(),
            }),
            ..snapshot(at, changed)
        }
    }

    fn keyframe_pids(wire: &v1::Snapshot) -> Option<Vec<i32>> {
        match &wire.activity {
            Some(v1::snapshot::Activity::Keyframe(k)) => {
                let mut pids: Vec<_> = k.sessions.iter().map(|s| s.pid).collect();
                pids.sort();
                Some(pids)
            }
            _ => None,
        }
    }

    #[test]
    fn the_samplers_deltas_pass_through_and_keyframes_come_from_what_they_built() {
        let mut e = Encoder::default();
        let (a, b) = (
            session(1, SessionState::Idle),
            session(2, SessionState::Idle),
        );
        let first = e.encode(snapshot(10, vec![a.clone(), b.clone()]));
        assert_eq!(keyframe_pids(&first), Some(vec![1, 2]));

        // The sampler's delta: b changed, c is new.
        let mut b2 = b.clone();
        Arc::make_mut(&mut b2).state = SessionState::Active;
        let c = session(3, SessionState::Active);
        let second = e.encode(delta_from(20, 10, vec![b2, c], &[]));
        let d = delta(&second).expect("a delta stays a delta");
        assert_eq!((d.base_sampled_at_us, d.upserted.len()), (10, 2));

        let third = e.encode(delta_from(30, 20, vec![], &[2]));
        let d = delta(&third).unwrap();
        assert_eq!(d.removed.iter().map(|k| k.pid).collect::<Vec<_>>(), [2]);

        // A new stream: the keyframe holds what the deltas built, without the
        // sampler listing anything.
        e.keyframe_all();
        let fourth = e.encode(delta_from(40, 30, vec![], &[]));
        assert_eq!(keyframe_pids(&fourth), Some(vec![1, 3]));
        assert!(delta(&e.encode(delta_from(50, 40, vec![], &[]))).is_some());

        // A delta that does not follow (a lost snapshot the sampler did not
        // notice): never sent as a delta against the wrong base.
        let lost = e.encode(delta_from(70, 60, vec![], &[]));
        assert_eq!(keyframe_pids(&lost), Some(vec![1, 3]));
        assert!(delta(&e.encode(delta_from(80, 70, vec![], &[]))).is_some());
    }

    #[test]
    fn changed_facts_are_sent_at_once() {
        let mut e = Encoder::default();
        e.encode(snapshot(1, vec![]));
        let mut promoted = snapshot(2, vec![]);
        promoted.facts.as_mut().unwrap().in_recovery = true;
        let wire = e.encode(promoted);
        assert!(delta(&wire).is_some());
        assert!(wire.facts.unwrap().in_recovery);
    }

    #[test]
    fn deltas_leave_out_unchanged_fields_and_strings_travel_once() {
        use pgfleet_proto::compact::{Resolver, field};
        let mut e = Encoder::default();
        let a = Arc::new(Session {
            database: "orders".into(),
            application_name: "web".into(),
            ..(*session(1, SessionState::Idle)).clone()
        });
        let first = e.encode(snapshot(10, vec![a.clone()]));
        let additions = e.take_dictionary_additions();
        assert_eq!(additions.len(), 3, "{additions:?}");
        let mut resolver = Resolver::default();
        resolver.add(additions).unwrap();
        assert_eq!(keyframe_pids(&first), Some(vec![1]));
        let read = resolver.snapshot(first).unwrap();
        assert_eq!(&*read.sessions[0].database, "orders");

        let mut a2 = a.clone();
        Arc::make_mut(&mut a2).state = SessionState::Active;
        let second = e.encode(snapshot(20, vec![a2]));
        assert!(e.take_dictionary_additions().is_empty(), "no new strings");
        let d = delta(&second).unwrap();
        let s = &d.upserted[0];
        assert_eq!(s.unchanged & field::STATE, 0, "the state changed");
        assert_ne!(s.unchanged & field::DATABASE, 0);
        assert!(s.database.is_empty() && s.database_ref == 0 && s.query_ref == 0);
        assert_eq!(s.state, v1::SessionState::Active as i32);
    }
}

//! Agents' minutes recorded once and replayed by many.
//!
//! Simulating every agent's server (`Sim::step`) and encoding its snapshots
//! with the agent's own encoder took about a fifth of the generator's CPU,
//! and the generator shares the machine with the collector it measures. So
//! the generator records a few dozen agents' minutes once: what `Sim` and the
//! agent's `Encoder` make, a keyframe and then 59 deltas, as an agent sends
//! them between keyframes ([`KEYFRAME_EVERY`]). Each simulated agent replays
//! one of them over and over, as its own: its servers' ids, its times (the
//! sessions' times moved with them), its sequence numbers and counters. It
//! then compresses each batch itself, as an agent does, so that the
//! collector gets what an agent would send it, at the same cost.
//!
//! What a replay leaves out: a recording's minute starts again with its
//! keyframe, so a session that reconnected within the minute (none with the
//! generator's defaults) is back as it was; and an agent's server changes as
//! one of [`RECORDED`] others does, not in a way of its own.

use std::sync::Arc;

use pgfleet_agent::encode::{Encoder, KEYFRAME_EVERY};
use pgfleet_proto::model::{Delta, Snapshot, TargetStatus};
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

use crate::wire_sim::{self, Sim};

/// How many agents' minutes are recorded; agents take them in turn.
pub const RECORDED: usize = 64;

const SECOND: Micros = 1_000_000;
/// When a recording's minute starts: a replay moves its times to the agent's.
const T0: Micros = wire_sim::T0;
/// Seconds in a recording: from one keyframe to the last delta before the
/// next.
const SECONDS: usize = KEYFRAME_EVERY as usize;

/// One agent's minute, as its encoder sent it.
#[derive(Debug)]
pub struct Recording {
    /// Every entry of the agent's dictionary that the snapshots refer to: a
    /// stream's first batch carries them all, as an agent's first batch
    /// carries its whole dictionary.
    pub dictionary: Vec<v1::DictionaryEntry>,
    /// For each second of the minute, a snapshot of each of the agent's
    /// servers: in the first second keyframes, then deltas.
    seconds: Vec<Vec<v1::Snapshot>>,
}

impl Recording {
    /// The minute of an agent watching `servers` servers of `sessions`
    /// sessions, of which `changed` change each second; `seed` picks them.
    pub fn new(seed: u64, servers: usize, sessions: usize, changed: usize) -> Recording {
        let mut sims = simulated(seed, servers, sessions, changed);
        let mut encoder = Encoder::default();
        let mut seconds = Vec::with_capacity(SECONDS);
        for second in 0..SECONDS {
            let at = T0 + second as Micros * SECOND;
            let n = second as u64 + 1;
            let wires = sims
                .iter_mut()
                .enumerate()
                .map(|(k, sim)| {
                    let snapshot = if second == 0 {
                        sim.step(at);
                        sim.snapshot(at, n)
                    } else {
                        let (sessions, removed) = sim.step(at);
                        Snapshot {
                            status: TargetStatus::Up,
                            sessions,
                            delta: Some(Delta {
                                base_sampled_at_us: at - SECOND,
                                removed,
                                unchanged: Vec::new(),
                            }),
                            slots: Some(v1::ConnectionSlots {
                                max_connections: 200,
                                reserved: 3,
                                used: sessions_used(sim),
                                ..Default::default()
                            }),
                            databases: wire_sim::databases(n),
                            agent: Some(v1::AgentCounters {
                                samples_total: n,
                                ..Default::default()
                            }),
                            ..Snapshot::down(String::new(), at, String::new())
                        }
                    };
                    encoder.encode(Snapshot {
                        server_id: format!("recorded-{k}"),
                        sampled_at_us: at,
                        ..snapshot
                    })
                })
                .collect();
            seconds.push(wires);
        }
        Recording {
            dictionary: encoder.dictionary().entries().collect(),
            seconds,
        }
    }
}

/// The servers a recording of `seed` simulates, as at its minute's start:
/// `servers` servers of `sessions` sessions, of which `changed` change each
/// second (a fiftieth of those new backends).
fn simulated(seed: u64, servers: usize, sessions: usize, changed: usize) -> Vec<Sim> {
    (0..servers as u64)
        .map(|k| Sim::with(sessions, changed, changed / 50, seed * 7919 + k + 1, T0))
        .collect()
}

/// The connections a simulated server's slots count: its sessions and the
/// agent's own.
fn sessions_used(sim: &Sim) -> u32 {
    sim.sessions.len() as u32 + 1
}

/// One agent's stream, replaying a recording.
#[derive(Debug)]
pub struct Replay {
    recording: Arc<Recording>,
    /// The second of the recording each server sends next (0: its keyframe).
    next: Vec<usize>,
    /// How far the stream's first snapshot moved the recording's times: the
    /// sessions' backend starts (a part of their keys) are moved by this for
    /// the stream's life, so that a session stays the same session.
    backends: Option<Micros>,
    /// The time of the snapshots sent last: the base of the next deltas.
    previous: Option<Micros>,
}

impl Replay {
    pub fn new(recording: Arc<Recording>, servers: usize) -> Replay {
        Replay {
            recording,
            next: vec![0; servers],
            backends: None,
            previous: None,
        }
    }

    /// The snapshots of the agent's servers (`ids`, as many as it was made
    /// for) sampled at `at`, in its `n`th batch: the recording's next second,
    /// moved to `at`.
    pub fn next(&mut self, ids: &[String], at: Micros, n: u64) -> Vec<v1::Snapshot> {
        let backends = *self.backends.get_or_insert(at - T0);
        let previous = self.previous.replace(at);
        ids.iter()
            .zip(&mut self.next)
            .enumerate()
            .map(|(k, (id, next))| {
                let second = *next;
                *next = (second + 1) % SECONDS;
                let mut wire = self.recording.seconds[second][k].clone();
                // The recording's second, moved to `at`.
                let times = at - (T0 + second as Micros * SECOND);
                wire.server_id.clone_from(id);
                wire.sampled_at_us = at;
                match &mut wire.activity {
                    Some(v1::snapshot::Activity::Keyframe(keyframe)) => {
                        for s in &mut keyframe.sessions {
                            moved(s, backends, times);
                        }
                    }
                    Some(v1::snapshot::Activity::Delta(delta)) => {
                        delta.base_sampled_at_us = previous.unwrap_or_default();
                        for s in &mut delta.upserted {
                            moved(s, backends, times);
                        }
                        for key in &mut delta.removed {
                            key.backend_start_us += backends;
                        }
                    }
                    None => {}
                }
                if let Some(agent) = &mut wire.agent {
                    agent.samples_total = n;
                }
                wire
            })
            .collect()
    }

    /// The collector asked for keyframes of `requested`: those of the
    /// agent's servers (`ids`) start the recording again.
    pub fn keyframe(&mut self, ids: &[String], requested: &[String]) {
        for (id, next) in ids.iter().zip(&mut self.next) {
            if requested.contains(id) {
                *next = 0;
            }
        }
    }
}

/// A session's times moved: its backend's start by `backends`, the rest by
/// `times`. A time of 0 is none (or, in a delta, its base's), and stays so.
fn moved(s: &mut v1::SessionSample, backends: Micros, times: Micros) {
    let by = |t: &mut i64, d: Micros| {
        if *t != 0 {
            *t += d;
        }
    };
    by(&mut s.backend_start_us, backends);
    by(&mut s.xact_start_us, times);
    by(&mut s.query_start_us, times);
    by(&mut s.state_change_us, times);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfleet_collector::state::{by_key, merge};
    use pgfleet_proto::compact::Resolver;
    use pgfleet_proto::model::Session;

    /// The sessions of `sims` at their last step, as a replay moved them.
    fn expected(sims: &[Sim], backends: Micros, times: Micros) -> Vec<Vec<Session>> {
        let some = |t: Option<Micros>| t.map(|t| t + times);
        sims.iter()
            .map(|sim| {
                let mut sessions: Vec<Session> = sim
                    .sessions
                    .iter()
                    .map(|s| Session {
                        backend_start_us: s.backend_start_us + backends,
                        xact_start_us: some(s.xact_start_us),
                        query_start_us: some(s.query_start_us),
                        state_change_us: some(s.state_change_us),
                        ..(**s).clone()
                    })
                    .collect();
                sessions.sort_by_key(Session::key);
                sessions
            })
            .collect()
    }

    /// A replayed stream, decoded and applied as the collector does, holds
    /// at every second the simulated servers' sessions at the recording's
    /// second, with their times moved: across the minute's end, where the
    /// recording starts again, and after the collector asks for keyframes.
    #[test]
    fn a_replay_is_the_simulated_servers_moved_to_the_agents_times() {
        const SERVERS: usize = 2;
        let (sessions, changed, seed) = (40, 6, 3);
        let recording = Arc::new(Recording::new(seed, SERVERS, sessions, changed));
        let ids: Vec<String> = vec!["db-a".into(), "db-b".into()];
        let mut replay = Replay::new(recording.clone(), SERVERS);
        let mut resolver = Resolver::default();
        resolver
            .add(recording.dictionary.clone())
            .expect("the recording's dictionary is one an agent may send");
        // What the collector holds of each server.
        let mut held: Vec<Vec<Arc<Session>>> = vec![Vec::new(); SERVERS];
        let start: Micros = 1_800_000_000_000_000;
        // The simulation the replay should match, the recording's second
        // it is at, and when the replay last sent that second's keyframe.
        let mut sims = Vec::new();
        let mut second = 0;
        let mut keyframe_at = start;
        for n in 1..=150u64 {
            let at = start + (n as Micros - 1) * SECOND;
            if n == 100 {
                replay.keyframe(
                    &ids,
                    &["db-c".to_owned(), "db-b".to_owned(), "db-a".to_owned()],
                );
                second = 0;
            }
            if second == 0 {
                keyframe_at = at;
                sims = simulated(seed, SERVERS, sessions, changed);
            }
            for sim in &mut sims {
                sim.step(T0 + second as Micros * SECOND);
            }
            for (k, wire) in replay.next(&ids, at, n).into_iter().enumerate() {
                assert_eq!(
                    (wire.server_id.as_str(), wire.sampled_at_us),
                    (&*ids[k], at)
                );
                assert_eq!(wire.agent.as_ref().map(|a| a.samples_total), Some(n));
                let snapshot = resolver.snapshot(wire).expect("every reference resolves");
                held[k] = match &snapshot.delta {
                    Some(delta) => {
                        assert_ne!(second, 0, "n {n}: a delta where a keyframe is due");
                        assert_eq!(delta.base_sampled_at_us, at - SECOND);
                        merge(&held[k], snapshot.sessions, delta)
                            .expect("each delta applies to the snapshot before")
                            .sessions
                    }
                    None => {
                        assert_eq!(second, 0, "n {n}: a keyframe mid-minute");
                        by_key(snapshot.sessions)
                    }
                };
            }
            // Every time of a minute is moved by as much as its keyframe's,
            // and backends' starts by the stream's first.
            let want = expected(&sims, start - T0, keyframe_at - T0);
            for (k, sessions) in held.iter().enumerate() {
                let got: Vec<Session> = sessions.iter().map(|s| (**s).clone()).collect();
                assert_eq!(got, want[k], "n {n}, server {k}");
            }
            second = (second + 1) % SECONDS;
        }
    }
}

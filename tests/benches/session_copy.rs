//! `cargo bench -p pgfleet-tests --bench session_copy`: what keeping a
//! server's sessions up to date costs per sample, as the aggregator keeps them
//! and as plain data would, over `PGFLEET_BENCH_SERVERS` servers (2,500).
//!
//! The load generator's server (100 sessions, 10 changing a second, one of
//! them a new backend) is simulated for each server. Each round, every server's
//! delta is made first (not timed). Then, timed, every server's sessions are
//! brought up to date in turn, the old version dropped, two ways:
//! - **arcs**, as the aggregator does: a vector of `Arc<Session>` merged with
//!   the delta by `pgfleet_collector::state::merge`, each session a heap
//!   allocation of its own (as decoded);
//! - **plain**: a vector of fixed-size sessions whose strings are interned
//!   ids (`u32`), copied and patched with the delta in one pass.
//!
//! The two alternate, round by round, which goes first. With thousands of
//! servers no server's sessions are in the caches when its turn comes, as in
//! a collector. What the plain way leaves out, a design that used it would
//! pay elsewhere: its decode would give ids rather than `Arc<str>`s (a lookup
//! per string reference, as the stream's dictionary is now), and each reader
//! would look its strings up by id.
//!
//! Prints one JSON object: the median over rounds of each way's ns per
//! server sample.

#[path = "../../agent/benches/support/wire_sim.rs"]
mod wire_sim;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pgfleet_collector::state::{by_key, merge};
use pgfleet_proto::model::{Delta, Session, SessionKey};

const SESSIONS: usize = 100;
const SECOND: i64 = 1_000_000;

/// One server's second: the sessions changed, as each way holds them, and
/// the delta.
type Step = (Vec<Arc<Session>>, Vec<Plain>, Delta);

/// A session as plain data: its strings as ids into one table.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plain {
    pid: i32,
    backend_start_us: i64,
    /// database, user, application_name, client, wait_event_type,
    /// wait_event, query, backend_type.
    strings: [u32; 8],
    state: u8,
    xact_start_us: i64,
    query_start_us: i64,
    state_change_us: i64,
    leader_pid: i32,
    query_id: i64,
    fingerprint: u64,
    /// Where its blockers are kept (0: none).
    blocked_by: u32,
}

impl Plain {
    fn key(&self) -> SessionKey {
        (self.pid, self.backend_start_us)
    }
}

/// Strings to ids, each string once.
#[derive(Default)]
struct Interner(HashMap<Arc<str>, u32>);

impl Interner {
    fn id(&mut self, s: &Arc<str>) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(s.clone()).or_insert(next)
    }

    fn plain(&mut self, s: &Session) -> Plain {
        Plain {
            pid: s.pid,
            backend_start_us: s.backend_start_us,
            strings: [
                &s.database,
                &s.user,
                &s.application_name,
                &s.client,
                &s.wait_event_type,
                &s.wait_event,
                &s.query,
                &s.backend_type,
            ]
            .map(|t| self.id(t)),
            state: s.state as u8,
            xact_start_us: s.xact_start_us.unwrap_or(0),
            query_start_us: s.query_start_us.unwrap_or(0),
            state_change_us: s.state_change_us.unwrap_or(0),
            leader_pid: s.leader_pid.unwrap_or(0),
            query_id: s.query_id.unwrap_or(0),
            fingerprint: s.fingerprint,
            blocked_by: 0,
        }
    }
}

/// `base` with `upserted` (in key order) put in and `removed` (in key order)
/// taken out: one pass, each session copied.
fn plain_merge(base: &[Plain], upserted: &[Plain], removed: &[SessionKey]) -> Vec<Plain> {
    let mut out = Vec::with_capacity(base.len() + upserted.len());
    let mut new = upserted.iter().peekable();
    for old in base {
        let key = old.key();
        while let Some(n) = new.next_if(|n| n.key() < key) {
            out.push(*n);
        }
        if let Some(n) = new.next_if(|n| n.key() == key) {
            out.push(*n);
        } else if removed.binary_search(&key).is_err() {
            out.push(*old);
        }
    }
    out.extend(new);
    out
}

/// A copy of each session in an allocation of its own, as ingest decodes them.
fn decoded(sessions: &[Arc<Session>]) -> Vec<Arc<Session>> {
    sessions.iter().map(|s| Arc::new((**s).clone())).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let servers: usize = std::env::var("PGFLEET_BENCH_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_500);
    let rounds: usize = std::env::var("PGFLEET_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let t0 = 1_700_000_000 * SECOND;
    let mut interner = Interner::default();
    let mut sims: Vec<wire_sim::Sim> = (0..servers)
        .map(|i| wire_sim::Sim::with(SESSIONS, SESSIONS / 10, 1, 0x51ed + i as u64, t0))
        .collect();
    let mut arcs: Vec<Vec<Arc<Session>>> =
        sims.iter().map(|s| by_key(decoded(&s.sessions))).collect();
    let mut plains: Vec<Vec<Plain>> = arcs
        .iter()
        .map(|v| v.iter().map(|s| interner.plain(s)).collect())
        .collect();
    let (mut arc_ns, mut plain_ns) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let at = t0 + round as i64 * SECOND;
        let deltas: Vec<Step> = sims
            .iter_mut()
            .map(|sim| {
                let (changed, mut removed) = sim.step(at);
                removed.sort_unstable();
                let changed = by_key(decoded(&changed));
                let plain = changed.iter().map(|s| interner.plain(s)).collect();
                let delta = Delta {
                    base_sampled_at_us: at - SECOND,
                    removed,
                    unchanged: Vec::new(),
                };
                (changed, plain, delta)
            })
            .collect();
        let mut arc_way = |deltas: &[Step]| {
            let started = Instant::now();
            for (view, (changed, _, delta)) in arcs.iter_mut().zip(deltas) {
                let merged = merge(view, changed.clone(), delta).expect("a delta on its own base");
                *view = merged.sessions;
            }
            started.elapsed().as_nanos() as f64 / servers as f64
        };
        let mut plain_way = |deltas: &[Step]| {
            let started = Instant::now();
            for (view, (_, changed, delta)) in plains.iter_mut().zip(deltas) {
                *view = plain_merge(view, changed, &delta.removed);
            }
            started.elapsed().as_nanos() as f64 / servers as f64
        };
        if round % 2 == 0 {
            arc_ns.push(arc_way(&deltas));
            plain_ns.push(plain_way(&deltas));
        } else {
            plain_ns.push(plain_way(&deltas));
            arc_ns.push(arc_way(&deltas));
        }
        drop(deltas);
    }
    // Both ways hold the same sessions.
    for (arc, plain) in arcs.iter().zip(&plains) {
        assert_eq!(arc.len(), plain.len());
        for (a, p) in arc.iter().zip(plain) {
            assert_eq!(interner.plain(a), *p);
        }
    }
    let (arc, plain) = (median(arc_ns), median(plain_ns));
    println!(
        "{{\"servers\": {servers}, \"rounds\": {rounds}, \"sessions\": {SESSIONS}, \
         \"arc_ns_per_sample\": {arc:.0}, \"plain_ns_per_sample\": {plain:.0}, \
         \"plain_bytes\": {}, \"session_bytes\": {}}}",
        std::mem::size_of::<Plain>(),
        std::mem::size_of::<Session>()
    );
}

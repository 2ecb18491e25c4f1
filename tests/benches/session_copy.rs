//! `cargo bench -p pgfleet-tests --bench session_copy`: what keeping a
//! server's sessions up to date costs per sample, as the aggregator keeps them
//! and as plain data would, over `PGFLEET_BENCH_SERVERS` servers (2,500).
//!
//! The load generator's server (100 sessions, 10 changing a second, one of
//! them a new backend) is simulated for each server. Each round, every server's
//! delta is made first (not timed), as the agent sends it and ingest decodes
//! it: a changed session without the fields its base holds (its mask). Then,
//! timed, every server's sessions are brought up to date in turn, three
//! ways:
//! - **arcs**: a vector of `Arc<Session>` merged with the delta by
//!   `pgfleet_collector::state::merge` (which fills in what the masks left
//!   out), each session a heap allocation of its own, as the aggregator did
//!   until stop 39;
//! - **arcs, warmed**: the same, with the vector read by
//!   `pgfleet_collector::state::warm` before it is merged, as the aggregator
//!   does now;
//! - **plain**: a vector of fixed-size sessions whose strings are interned
//!   ids (`u32`), copied, the changed ones filled in from their base.
//!
//! The arcs ways drop the vectors they replaced as the collector's publish
//! drops them: together, every so many servers' samples (`per_publish`).
//!
//! The sessions are first allocated a server's session at a time round the
//! fleet, so that no server's sessions lie together, and `WARMUP` seconds
//! pass before any is timed. Each round starts with the next way. With thousands of servers no server's sessions are in the
//! caches when its turn comes, as in a collector. What the plain way leaves
//! out, a design that used it would pay elsewhere: its decode would give ids
//! rather than `ArcStr`s (a lookup per string reference, as the stream's
//! dictionary is now), each reader would look its strings up by id, and the
//! sessions that left and joined (which the rollup and the load count take)
//! are not listed.
//!
//! Prints one JSON object: the median over rounds of each way's ns per
//! server sample.

#[path = "../../agent/benches/support/wire_sim.rs"]
mod wire_sim;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pgfleet_collector::aggregator::publish_every;
use pgfleet_collector::state::{self, by_key, merge};
use pgfleet_proto::compact::{self, field};
use pgfleet_proto::model::{ArcStr, Delta, Session, SessionKey};

/// The collector's allocator: with the system's, a vector of plain sessions
/// allocated after the arcs way freed its sessions waited for malloc to
/// gather the small blocks freed (1.6 µs a sample going first, 8 µs after).
/// `bench/session_copy.py` runs it with `MIMALLOC_PURGE_DELAY=-1`, as the
/// collector sets mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 100;
const SECOND: i64 = 1_000_000;
/// Seconds simulated before any is timed.
const WARMUP: usize = 10;

/// One server's second: the sessions changed, as each way holds them, and
/// the delta (with each changed session's mask).
type Step = ([Vec<Arc<Session>>; ARC_WAYS], Vec<Plain>, Delta);

/// The ways that keep `Arc<Session>`s: merged as they are, and read first
/// ([`WARMED`]).
const ARC_WAYS: usize = 2;
/// The arcs way whose vectors `state::warm` reads before each merge, as the
/// aggregator does.
const WARMED: usize = 1;

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
struct Interner(HashMap<ArcStr, u32>);

impl Interner {
    fn id(&mut self, s: &ArcStr) -> u32 {
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

/// `new` with the fields `mask` names taken from `old`, its base.
fn plain_fill(new: &mut Plain, old: &Plain, mask: u32) {
    use field::*;
    let has = |b: u32| mask & b != 0;
    let strings = [
        DATABASE,
        USER,
        APPLICATION_NAME,
        CLIENT,
        WAIT_EVENT_TYPE,
        WAIT_EVENT,
        QUERY,
        BACKEND_TYPE,
    ];
    for (i, b) in strings.into_iter().enumerate() {
        if has(b) {
            new.strings[i] = old.strings[i];
        }
    }
    let take = |b: u32, n: &mut i64, o: i64| {
        if has(b) {
            *n = o;
        }
    };
    take(XACT_START, &mut new.xact_start_us, old.xact_start_us);
    take(QUERY_START, &mut new.query_start_us, old.query_start_us);
    take(STATE_CHANGE, &mut new.state_change_us, old.state_change_us);
    take(QUERY_ID, &mut new.query_id, old.query_id);
    if has(STATE) {
        new.state = old.state;
    }
    if has(BLOCKED_BY) {
        new.blocked_by = old.blocked_by;
    }
    if has(LEADER_PID) {
        new.leader_pid = old.leader_pid;
    }
    if has(FINGERPRINT) {
        new.fingerprint = old.fingerprint;
    }
}

/// `base` with `upserted` (in key order, each with its mask in `masks`) put
/// in and `removed` (in key order) taken out: one pass, each session copied.
fn plain_merge(
    base: &[Plain],
    upserted: &[Plain],
    masks: &[u32],
    removed: &[SessionKey],
) -> Vec<Plain> {
    let mut out = Vec::with_capacity(base.len() + upserted.len());
    let mut new = upserted.iter().zip(masks).peekable();
    for old in base {
        let key = old.key();
        while let Some((n, _)) = new.next_if(|(n, _)| n.key() < key) {
            out.push(*n);
        }
        if let Some((n, &mask)) = new.next_if(|(n, _)| n.key() == key) {
            let mut n = *n;
            plain_fill(&mut n, old, mask);
            out.push(n);
        } else if removed.binary_search(&key).is_err() {
            out.push(*old);
        }
    }
    out.extend(new.map(|(n, _)| *n));
    out
}

/// `s` as ingest decodes it, in an allocation of its own, without the
/// fields `mask` names.
fn decoded(s: &Session, mask: u32) -> Arc<Session> {
    Arc::new(Session::from(compact::sample(s, mask)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How many servers' samples the collector applies between two publishes,
/// which drop the sessions those samples replaced: every server samples
/// once a second.
fn per_publish(servers: usize) -> usize {
    let every = publish_every(servers).as_secs_f64();
    ((servers as f64 * every) as usize).max(1)
}

/// Every server's sessions brought up to date with its delta, the arcs way,
/// the replaced vectors dropped every `per` servers as a publish drops them;
/// with `warm`, each vector is read by `state::warm` before it is merged, as
/// the aggregator does. ns per server sample.
fn arc_way(
    views: &mut [Vec<Arc<Session>>],
    deltas: &mut [Step],
    way: usize,
    per: usize,
    warm: bool,
) -> f64 {
    let started = Instant::now();
    let mut replaced = Vec::with_capacity(per);
    for (view, step) in views.iter_mut().zip(deltas.iter_mut()) {
        if warm {
            state::warm(view);
        }
        let sent = std::mem::take(&mut step.0[way]);
        let merged = merge(view, sent, &step.2).expect("a delta on its own base");
        replaced.push(std::mem::replace(view, merged.sessions));
        if replaced.len() == per {
            replaced.clear();
        }
    }
    drop(replaced);
    started.elapsed().as_nanos() as f64 / views.len() as f64
}

fn main() {
    let servers = pgfleet_tests::env_usize("PGFLEET_BENCH_SERVERS", 2_500);
    let rounds = pgfleet_tests::env_usize("PGFLEET_BENCH_ROUNDS", 20);
    let per = per_publish(servers);
    let t0 = 1_700_000_000 * SECOND;
    let mut interner = Interner::default();
    let mut sims: Vec<wire_sim::Sim> = (0..servers)
        .map(|i| wire_sim::Sim::with(SESSIONS, SESSIONS / 10, 1, 0x51ed + i as u64, t0))
        .collect();
    // A server's sessions apart on the heap: the first of every server's
    // (for each arcs way), then the second, and so on.
    let mut arcs: [Vec<Vec<Arc<Session>>>; ARC_WAYS] =
        std::array::from_fn(|_| vec![Vec::new(); servers]);
    for i in 0..SESSIONS {
        for (k, sim) in sims.iter().enumerate() {
            for way in arcs.iter_mut() {
                way[k].push(decoded(&sim.sessions[i], 0));
            }
        }
    }
    let mut arcs = arcs.map(|way| way.into_iter().map(by_key).collect::<Vec<_>>());
    let mut plains: Vec<Vec<Plain>> = arcs[0]
        .iter()
        .map(|v| v.iter().map(|s| interner.plain(s)).collect())
        .collect();
    let mut ns: [Vec<f64>; ARC_WAYS + 1] = Default::default();
    for round in 1..=WARMUP + rounds {
        let at = t0 + round as i64 * SECOND;
        let mut deltas: Vec<Step> = sims
            .iter_mut()
            .zip(&arcs[0])
            .map(|(sim, base)| {
                let (mut changed, mut removed) = sim.step(at);
                removed.sort_unstable();
                changed.sort_by_key(|s| s.key());
                // Each changed session without what its base holds, as sent.
                let unchanged: Vec<u32> = changed
                    .iter()
                    .map(|s| match base.binary_search_by_key(&s.key(), |b| b.key()) {
                        Ok(i) => compact::unchanged(s, &base[i]),
                        Err(_) => 0,
                    })
                    .collect();
                // Decoded once for each arcs way, as each is merged.
                let sent: [Vec<Arc<Session>>; ARC_WAYS] = std::array::from_fn(|_| {
                    changed
                        .iter()
                        .zip(&unchanged)
                        .map(|(s, &mask)| decoded(s, mask))
                        .collect()
                });
                let plain = sent[0].iter().map(|s| interner.plain(s)).collect();
                let delta = Delta {
                    base_sampled_at_us: at - SECOND,
                    removed,
                    unchanged,
                };
                (sent, plain, delta)
            })
            .collect();
        let mut plain_way = |deltas: &[Step]| {
            let started = Instant::now();
            for (view, (_, sent, delta)) in plains.iter_mut().zip(deltas) {
                *view = plain_merge(view, sent, &delta.unchanged, &delta.removed);
            }
            started.elapsed().as_nanos() as f64 / servers as f64
        };
        // Each round starts with the next way.
        let mut took = [0.0; ARC_WAYS + 1];
        for k in 0..=ARC_WAYS {
            let way = (round + k) % (ARC_WAYS + 1);
            took[way] = match way {
                ARC_WAYS => plain_way(&deltas),
                _ => arc_way(&mut arcs[way], &mut deltas, way, per, way == WARMED),
            };
        }
        if round > WARMUP {
            for (n, t) in ns.iter_mut().zip(took) {
                n.push(t);
            }
        }
        drop(deltas);
    }
    // Every way holds the same sessions.
    for (k, plain) in plains.iter().enumerate() {
        for way in &arcs {
            assert_eq!(way[k].len(), plain.len());
            for (a, p) in way[k].iter().zip(plain) {
                assert_eq!(interner.plain(a), *p);
            }
        }
    }
    let [arc, warmed, plain] = ns.map(median);
    println!(
        "{{\"servers\": {servers}, \"rounds\": {rounds}, \"sessions\": {SESSIONS}, \
         \"per_publish\": {per}, \"arc_ns_per_sample\": {arc:.0}, \
         \"warmed_ns_per_sample\": {warmed:.0}, \"plain_ns_per_sample\": {plain:.0}, \
         \"plain_bytes\": {}, \"session_bytes\": {}}}",
        std::mem::size_of::<Plain>(),
        std::mem::size_of::<Session>()
    );
}

//! `cargo bench -p pgfleet-tests --bench fleet_read`: what a fleet-wide read
//! of the live view costs at 10,000 servers (`PGFLEET_BENCH_SERVERS`).
//!
//! The aggregator is fed as ingest feeds it: every server registered, then a
//! keyframe of 100 sessions for each (the load generator's server), three
//! times round the fleet, each second with a tenth of the sessions changed, so
//! that the views and their sessions lie on the heap as a running collector's
//! do; labelled as the load generator labels them (dc, cluster, role). Then
//! FleetSummary's work (`summarise`) is timed over the published
//! view, for the whole fleet and grouped by dc, each call after 64 MiB of
//! other memory has been read: under load the caches hold what ingest
//! touched, not the last query's servers.
//!
//! Prints one JSON object: each read's p50 and p99 in µs over `ROUNDS` calls,
//! and the p50 per server in ns.

#[path = "../../agent/benches/support/wire_sim.rs"]
mod wire_sim;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pgfleet_collector::aggregator::{Aggregator, AggregatorHandle, Command, TargetInfo};
use pgfleet_collector::query::summarise;
use pgfleet_proto::time::now_micros;
use tokio::sync::oneshot;

const DCS: &[&str] = &["eu1", "eu2", "us1", "us2", "ap1"];
const SESSIONS: usize = 100;
const SECOND: i64 = 1_000_000;
/// Calls made before those timed.
const WARMUP: usize = 10;

/// Server `i`'s labels, as the load generator gives them: five dcs, and
/// clusters of four servers, a primary and three replicas.
fn labels(i: usize) -> BTreeMap<String, String> {
    let role = if i.is_multiple_of(4) {
        "primary"
    } else {
        "replica"
    };
    BTreeMap::from([
        ("dc".to_owned(), DCS[i % DCS.len()].to_owned()),
        ("cluster".to_owned(), format!("c{:03}", i / 4)),
        ("role".to_owned(), role.to_owned()),
    ])
}

/// Reads `memory` whole, so that the caches hold none of what was read before.
fn evict(memory: &[u64]) -> u64 {
    memory.iter().step_by(8).fold(0, |a, &v| a ^ v)
}

/// Sends the command `command` makes with where its answer goes, and gives
/// back where to wait for the answer (the aggregator answers a round of
/// commands at once, when it publishes).
async fn ask<T>(
    handle: &AggregatorHandle,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> oneshot::Receiver<T> {
    let (reply, answer) = oneshot::channel();
    handle
        .send(command(reply))
        .await
        .expect("the aggregator runs");
    answer
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let servers = pgfleet_tests::env_usize("PGFLEET_BENCH_SERVERS", 10_000);
    let rounds = pgfleet_tests::env_usize("PGFLEET_BENCH_ROUNDS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (aggregator, handle) = Aggregator::new();
    runtime.spawn(aggregator.run());

    let built = Instant::now();
    let t0 = now_micros() - 10 * SECOND;
    let mut sims: Vec<wire_sim::Sim> = (0..servers)
        .map(|i| wire_sim::Sim::with(SESSIONS, SESSIONS / 10, 1, 0x51ed + i as u64, t0))
        .collect();
    runtime.block_on(async {
        let mut replies = Vec::new();
        for i in 0..servers {
            replies.push(
                ask(&handle, |reply| Command::Register {
                    agent_id: format!("agent-{i}"),
                    conn_id: i as u64 + 1,
                    targets: vec![TargetInfo {
                        server_id: format!("db-{i}"),
                        labels: labels(i),
                    }],
                    interval: Duration::from_secs(1),
                    resume: None,
                    reply,
                })
                .await,
            );
        }
        for answer in replies {
            answer.await.expect("an answer").expect("registered");
        }
        for second in 1..=3 {
            let at = t0 + second * SECOND;
            let mut replies = Vec::new();
            for (i, sim) in sims.iter_mut().enumerate() {
                sim.step(at);
                let mut snapshot = sim.snapshot(at, second as u64);
                snapshot.server_id = format!("db-{i}");
                replies.push(
                    ask(&handle, |reply| Command::Apply {
                        agent_id: format!("agent-{i}"),
                        conn_id: i as u64 + 1,
                        seq: second as u64,
                        snapshots: vec![snapshot],
                        frames: Vec::new(),
                        reply,
                    })
                    .await,
                );
            }
            for answer in replies {
                answer.await.expect("an answer").expect("applied");
            }
        }
    });
    drop(sims);
    let memory: Vec<u64> = (0..64 << 17).map(|i| i as u64).collect();
    let view = handle.view();
    assert_eq!(view.servers.len(), servers, "every server is in the view");
    eprintln!(
        "{servers} servers fed in {:.1} s",
        built.elapsed().as_secs_f64()
    );

    let mut sink = 0u64;
    let mut read = |group_by: &str| -> (f64, f64) {
        let mut us = Vec::with_capacity(rounds);
        // The first calls are left out: in either build the first six or so
        // after the fleet was fed took 3–5 ms more than the rest, whatever
        // their work, and not for page faults (counted) or the allocator
        // (mimalloc did the same).
        for round in 0..WARMUP + rounds {
            sink ^= evict(&memory);
            let now = now_micros();
            let start = Instant::now();
            let rows = summarise(&view.census, &HashMap::new(), group_by, now);
            if round >= WARMUP {
                us.push(start.elapsed().as_secs_f64() * 1e6);
            }
            let counted: u32 = rows.iter().map(|r| r.servers).sum();
            assert_eq!(counted as usize, servers, "every server is summed once");
            sink ^= u64::from(rows[0].sessions);
        }
        us.sort_by(f64::total_cmp);
        (percentile(&us, 0.5), percentile(&us, 0.99))
    };
    let (all_p50, all_p99) = read("");
    let (dc_p50, dc_p99) = read("dc");
    let per_server = |us: f64| us * 1_000.0 / servers as f64;
    println!(
        "{}",
        serde_json::json!({
            "servers": servers,
            "rounds": rounds,
            "fleet_summary_us": {"p50": all_p50, "p99": all_p99},
            "fleet_summary_by_dc_us": {"p50": dc_p50, "p99": dc_p99},
            "fleet_summary_ns_per_server": per_server(all_p50),
            "fleet_summary_by_dc_ns_per_server": per_server(dc_p50),
            "sink": sink % 2,
        })
    );
}

//! `cargo bench -p pgfleet-tests --bench load`: what keeping DB load costs
//! in storage, and how fast `QueryLoad` answers. `bench/load.py` runs it and
//! writes BENCHMARKS.md.
//!
//! 1. **Storage.** One server of 100 sessions, about 10 changing a second
//!    (the load generator's mix of waits, queries, users, applications and
//!    client hosts), counted for a day of 1 Hz samples into its buckets,
//!    with a pg_stat_statements read every minute of `STATEMENTS` statements.
//!    Everything is written to an empty SQLite store; the bytes it grew by
//!    are the storage per server per day.
//! 2. **QueryLoad.** A store of `SERVERS` servers (five dcs) holding a day of
//!    1-minute buckets and an hour of 10-second buckets each, as the day
//!    above made them; a collector opened on it answers `QueryLoad` over
//!    gRPC: one server over an hour (10 s and 1 min steps), and the whole
//!    fleet over 24 h grouped by dc.
//!
//! Prints one JSON object.

#[path = "../../agent/benches/support/wire_sim.rs"]
#[allow(dead_code)]
mod wire_sim;

use std::time::{Duration, Instant};

use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::load::statements::{Read, Totals};
use pgfleet_collector::load::{Bucket, COARSE_US, Counter, FINE_US};
use pgfleet_collector::store::{Op, Retention, Store};
use pgfleet_proto::time::{duration, now_micros, timestamp};
use pgfleet_proto::v1;

const DAY_S: i64 = 86_400;
const STATEMENTS: usize = 100;
const DCS: &[&str] = &["eu1", "eu2", "us1", "us2", "ap1"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A day of one server's buckets, ending at `end` (a minute boundary), and
/// the CPU time counting took per sample.
fn one_day(end: i64) -> (Vec<Bucket>, f64) {
    let start = end - DAY_S * 1_000_000;
    let mut sim = wire_sim::Sim::with(100, 10, 0, 0x10ad, start);
    let mut counter = Counter::default();
    let mut buckets = Vec::new();
    let mut before = sim.sessions.clone();
    let mut spent = Duration::ZERO;
    for s in 0..=DAY_S {
        let at = start + s * 1_000_000;
        sim.step(at);
        let mut now = sim.sessions.clone();
        now.sort_by_key(|x| x.key());
        let t = Instant::now();
        counter.sample(at, 1_000_000, &before, &now, &mut buckets, &mut |_, _| {});
        spent += t.elapsed();
        before = now;
    }
    (buckets, spent.as_secs_f64() * 1e6 / DAY_S as f64)
}

/// A read of `STATEMENTS` statements' increments.
fn statements(i: u64) -> Read {
    Read {
        since_us: 1,
        by_query: (0..STATEMENTS as u64)
            .map(|q| {
                let calls = 1 + (q * 7919 + i * 31) % 5000;
                (
                    0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(q + 1),
                    Totals {
                        calls,
                        time_ms: calls as f64 * 0.37,
                        rows: calls * 3,
                        shared_blks_hit: calls * 12,
                        shared_blks_read: calls / 10,
                        shared_blks_dirtied: calls / 50,
                        shared_blks_written: calls / 200,
                        wal_bytes: calls * 120,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    }
}

fn file_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("pgfleet.sqlite")
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checkpoints the WAL into the file, so its size is what is kept.
fn checkpoint(dir: &std::path::Path) {
    let db = rusqlite::Connection::open(dir.join("pgfleet.sqlite")).unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

fn percentile(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = env_usize("PGFLEET_BENCH_SERVERS", 1000);
    let calls = env_usize("PGFLEET_BENCH_CALLS", 200);
    let now = now_micros();
    let end = now - now.rem_euclid(COARSE_US);
    let (day, count_us) = one_day(end);
    let fine: Vec<&Bucket> = day.iter().filter(|b| b.len_us == FINE_US).collect();
    let coarse: Vec<&Bucket> = day.iter().filter(|b| b.len_us == COARSE_US).collect();
    let tuples =
        |bs: &[&Bucket]| bs.iter().map(|b| b.tuples.len()).sum::<usize>() as f64 / bs.len() as f64;

    // 1. One server-day in an empty store.
    let dir = tempdir("pgfleet-bench-load-day");
    let (store, _) = Store::open_sqlite(&dir, Retention::default()).unwrap();
    store.flush().await;
    checkpoint(&dir);
    let empty = file_bytes(&dir);
    for b in &day {
        store
            .write(Op::Load {
                server_id: "orders-db-1".into(),
                bucket: (*b).clone(),
            })
            .await;
    }
    let loaded_only = {
        store.flush().await;
        checkpoint(&dir);
        file_bytes(&dir) - empty
    };
    for i in 0..(DAY_S / 60) {
        store
            .write(Op::Statements {
                server_id: "orders-db-1".into(),
                at: end - i * COARSE_US,
                read: statements(i as u64),
            })
            .await;
    }
    store.flush().await;
    checkpoint(&dir);
    let with_statements = file_bytes(&dir) - empty;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    // 2. A fleet's day, and a collector on it.
    let dir = tempdir("pgfleet-bench-load-fleet");
    std::fs::create_dir_all(dir.join("collector")).unwrap();
    let (store, _) = Store::open_sqlite(&dir.join("collector"), Retention::default()).unwrap();
    let last_hour = end - 3_600 * 1_000_000;
    let written = Instant::now();
    for i in 0..servers {
        let id = format!("db-{i:05}");
        store
            .write(Op::Server {
                server_id: id.clone(),
                agent_id: format!("agent-{id}"),
                labels: [("dc".to_owned(), DCS[i % DCS.len()].to_owned())].into(),
                interval_ms: 1000,
            })
            .await;
        for b in coarse
            .iter()
            .copied()
            .chain(fine.iter().copied().filter(|b| b.start >= last_hour))
        {
            store
                .write(Op::Load {
                    server_id: id.clone(),
                    bucket: b.clone(),
                })
                .await;
        }
    }
    store.flush().await;
    drop(store);
    let write_s = written.elapsed().as_secs_f64();
    checkpoint(&dir.join("collector"));
    let fleet_mib = file_bytes(&dir.join("collector")) as f64 / 1048576.0;
    let mut config = CollectorConfig::new(([127, 0, 0, 1], 0).into(), dir.join("collector"));
    config.http_listen = None;
    let collector = pgfleet_collector::server::start(config).await.unwrap();
    let mut client = pgfleet_cli::connect(&pgfleet_cli::Remote::plain(format!(
        "http://{}",
        collector.addr
    )))
    .await
    .unwrap();
    let mut time = async |req: v1::QueryLoadRequest, n: usize| {
        let mut took = Vec::with_capacity(n);
        let mut series = 0;
        for _ in 0..n {
            let t = Instant::now();
            let r = client.query_load(req.clone()).await.unwrap().into_inner();
            took.push(t.elapsed());
            series = r.series.len();
            assert!(!r.series.is_empty(), "{req:?}: {r:?}");
        }
        (
            percentile(took.clone(), 50.0),
            percentile(took, 99.0),
            series,
        )
    };
    let one = |step_s: i64, i: usize| v1::QueryLoadRequest {
        start: Some(timestamp(end - 3_600_000_000)),
        end: Some(timestamp(end)),
        step: Some(duration(step_s * 1_000_000)),
        group_by: "wait".into(),
        matchers: vec![format!("server_id=\"db-{:05}\"", i % servers)],
        ..Default::default()
    };
    let one_fine = time(one(10, 7), calls).await;
    let one_coarse = time(one(60, 7), calls).await;
    let fleet_req = v1::QueryLoadRequest {
        start: Some(timestamp(end - DAY_S * 1_000_000)),
        end: Some(timestamp(end)),
        group_by: "dc".into(),
        ..Default::default()
    };
    let fleet_calls = (calls / 10).max(5);
    let fleet = time(fleet_req, fleet_calls).await;
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let out = serde_json::json!({
        "servers": servers,
        "count_us_per_sample": count_us,
        "fine_buckets_per_day": fine.len(),
        "coarse_buckets_per_day": coarse.len(),
        "tuples_per_fine_bucket": tuples(&fine),
        "tuples_per_coarse_bucket": tuples(&coarse),
        "encoded_fine_bytes": fine.iter().map(|b| b.encode().len()).sum::<usize>() as f64 / fine.len() as f64,
        "encoded_coarse_bytes": coarse.iter().map(|b| b.encode().len()).sum::<usize>() as f64 / coarse.len() as f64,
        "load_bytes_per_server_day": loaded_only,
        "load_and_statements_bytes_per_server_day": with_statements,
        "statements_per_read": STATEMENTS,
        "fleet_store_mib": fleet_mib,
        "fleet_write_s": write_s,
        "one_server_1h_10s": {"p50_ms": one_fine.0, "p99_ms": one_fine.1, "series": one_fine.2, "calls": calls},
        "one_server_1h_1m": {"p50_ms": one_coarse.0, "p99_ms": one_coarse.1, "series": one_coarse.2, "calls": calls},
        "fleet_24h_by_dc": {"p50_ms": fleet.0, "p99_ms": fleet.1, "series": fleet.2, "calls": fleet_calls},
    });
    println!("{out}");
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

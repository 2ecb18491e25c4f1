//! `cargo bench -p pgfleet-tests --bench stream_bytes`: the stream's bytes on
//! the socket, end to end. A real PostgreSQL holds 1,000 client sessions, of
//! which about 100 start a query each second; three agents sample it at 1 Hz,
//! each through its own byte-counting proxy to one collector, with zstd, gzip
//! and no compression. Counted: what the agents send (TCP payload: HTTP/2,
//! gRPC and the batches), over a window long enough to hold periodic
//! keyframes. `bench/stream_bytes.py` runs it and writes BENCHMARKS.md.

use std::time::Duration;

use pgfleet_agent::config::Compression;
use pgfleet_tests::faultproxy::FaultProxy;
use pgfleet_tests::{Fleet, TempCluster, server, wait_for_status};

const SESSIONS: usize = 1000;
const QUERIES_PER_SECOND: usize = 100;

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

const TEMPLATES: &[&str] = &[
    "SELECT o.id, o.status FROM pg_class o WHERE o.oid = {} LIMIT 20",
    "SELECT pg_sleep(0.{})",
    "SELECT count(*) FROM pg_attribute WHERE attrelid = {}",
    "SELECT n.nspname FROM pg_namespace n WHERE n.oid = {} OR n.nspname = 'public'",
    "SELECT {} + 1 AS next_value",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let warmup = env_secs("PGFLEET_BENCH_WARMUP", 15);
    let window = env_secs("PGFLEET_BENCH_WINDOW", 120);
    let cluster = TempCluster::start_with(&[("max_connections", "1100")])
        .await
        .expect("a PostgreSQL to measure against");
    let mut clients = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let c = cluster
            .connect(&format!("orders-api-{}", i % 8))
            .await
            .expect("1,000 sessions");
        clients.push(std::sync::Arc::new(c));
    }
    // About 100 queries start each second, on sessions picked at random.
    let churn = {
        let clients = clients.clone();
        tokio::spawn(async move {
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut tick =
                tokio::time::interval(Duration::from_secs(1) / QUERIES_PER_SECOND as u32);
            loop {
                tick.tick().await;
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let client = clients[(state % SESSIONS as u64) as usize].clone();
                let text = TEMPLATES[(state >> 20) as usize % TEMPLATES.len()]
                    .replace("{}", &((state >> 32) % 9 + 1).to_string());
                tokio::spawn(async move {
                    let _ = client.simple_query(&text).await;
                });
            }
        })
    };

    let fleet = Fleet::start_on(cluster, "bench-host", &[]).await.unwrap();
    let upstream = fleet.url.trim_start_matches("http://").parse().unwrap();
    let mut runs = Vec::new();
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let proxy = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream)
            .await
            .unwrap();
        let id = format!("bench-{compression:?}").to_lowercase();
        let mut config = fleet.agent_config(&id, fleet.cluster.config("pgfleet-bench"));
        config.collector = format!("http://{}", proxy.addr);
        config.compression = compression;
        config.pool_reporter = None;
        let agent = fleet.start_agent_with(config).unwrap();
        runs.push((compression, id, proxy, agent));
    }
    let client = fleet.client().await.unwrap();
    for (_, id, _, _) in &runs {
        wait_for_status(&client, id, "up", Duration::from_secs(60)).await;
    }
    tokio::time::sleep(warmup).await;
    let mut c = client.clone();
    let start: Vec<(u64, u64)> = {
        let mut v = Vec::new();
        for (_, id, proxy, _) in &runs {
            let s = server(&mut c, id).await.unwrap();
            v.push((proxy.bytes_up(), s.agent.map_or(0, |a| a.samples_total)));
        }
        v
    };
    tokio::time::sleep(window).await;
    println!("| compression | sessions | samples | bytes sent | bytes per session per sample |");
    println!("|---|---|---|---|---|");
    for ((compression, id, proxy, _), (bytes0, samples0)) in runs.iter().zip(start) {
        let s = server(&mut c, id).await.unwrap();
        let samples = s.agent.map_or(0, |a| a.samples_total) - samples0;
        let bytes = proxy.bytes_up() - bytes0;
        let sessions = s.sessions as f64;
        println!(
            "| {compression:?} | {} | {samples} | {bytes} | {:.2} |",
            s.sessions,
            bytes as f64 / samples.max(1) as f64 / sessions.max(1.0)
        );
    }
    churn.abort();
    for (_, _, _, agent) in runs {
        agent.stop().await;
    }
    fleet.stop().await;
}

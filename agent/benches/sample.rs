//! `cargo bench -p pgfleet-agent`: what one sample of 1,000 sessions costs the
//! agent, phase by phase, in CPU time of this process.
//!
//! - Always: masking and fingerprinting query texts, and encoding a snapshot of
//!   1,000 synthetic sessions as a keyframe and as a delta.
//! - With `PGFLEET_BENCH_TARGET=postgres://…` (a server with many sessions,
//!   such as the one bench/agent_overhead.py fills): reading the server as the
//!   sampler does, and the whole sample.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu;

use pgfleet_agent::encode::Encoder;
use pgfleet_agent::sampler::QueryText;
use pgfleet_agent::sampler::query_text;
use pgfleet_proto::model::{Session, SessionState, Snapshot, TargetStatus};
use prost::Message;

fn report(name: &str, iterations: u32, f: &mut dyn FnMut()) {
    f(); // warm up
    let (wall, cpu0) = (Instant::now(), cpu());
    for _ in 0..iterations {
        f();
    }
    let per = (cpu() - cpu0) / iterations;
    let wall_per = wall.elapsed() / iterations;
    println!(
        "{name:<58} {:>9.1} µs CPU  {:>9.1} µs wall",
        per.as_secs_f64() * 1e6,
        wall_per.as_secs_f64() * 1e6
    );
}

fn sessions(n: i32) -> Vec<Arc<Session>> {
    (0..n)
        .map(|i| {
            Arc::new(Session {
            pid: 10_000 + i,
            backend_start_us: 1_700_000_000_000_000 + i64::from(i),
            database: "orders".into(),
            user: "app".into(),
            application_name: format!("web-{}", i % 20).into(),
            client: format!("10.0.{}.{}:{}", i / 250, i % 250, 40_000 + i).into(),
            state: if i % 10 == 0 { SessionState::Active } else { SessionState::Idle },
            xact_start_us: None,
            query_start_us: Some(1_700_000_100_000_000 + i64::from(i)),
            state_change_us: Some(1_700_000_100_000_100 + i64::from(i)),
            wait_event_type: "Client".into(),
            wait_event: "ClientRead".into(),
            query: "SELECT o.id, o.total FROM orders o WHERE o.customer_id = ? AND o.created_at > ? ORDER BY o.created_at DESC LIMIT ?".into(),
            backend_type: "client backend".into(),
            ..Default::default()
            })
        })
        .collect()
}

fn snapshot(at: i64, sessions: Vec<Arc<Session>>) -> Snapshot {
    Snapshot {
        status: TargetStatus::Up,
        sessions,
        ..Snapshot::down("bench".into(), at, String::new())
    }
}

fn main() {
    println!("one sample of 1,000 sessions, per phase:");
    let query = "SELECT o.id, o.total FROM orders o WHERE o.customer_id = 4711 AND o.created_at > '2026-11-01' ORDER BY o.created_at DESC LIMIT 50";
    report("mask + fingerprint 1,000 query texts", 200, &mut || {
        for _ in 0..1000 {
            std::hint::black_box(query_text::prepare(
                std::hint::black_box(query),
                QueryText::Masked,
            ));
        }
    });
    let base = sessions(1000);
    report(
        "encode a keyframe of 1,000 sessions (protobuf bytes)",
        200,
        &mut || {
            let mut e = Encoder::default();
            let wire = e.encode(snapshot(1, base.clone()));
            std::hint::black_box(wire.encode_to_vec());
        },
    );
    let mut e = Encoder::default();
    e.encode(snapshot(1, base.clone()));
    let mut at = 2;
    report(
        "encode a delta of 1,000 sessions, 30 changed (protobuf bytes)",
        200,
        &mut || {
            let mut next = base.clone();
            for s in next.iter_mut().step_by(33) {
                Arc::make_mut(s).state_change_us = Some(at);
            }
            at += 1;
            let wire = e.encode(snapshot(at, next));
            std::hint::black_box(wire.encode_to_vec());
        },
    );

    let Ok(target) = std::env::var("PGFLEET_BENCH_TARGET") else {
        println!("(set PGFLEET_BENCH_TARGET=postgres://… to measure reading pg_stat_activity too)");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config: tokio_postgres::Config = target.parse().expect("PGFLEET_BENCH_TARGET is a URL");
        let pool = pgfleet_agent::target::pool(
            config.clone(),
            &pgfleet_common::pgtls::PgTls::default(),
            Duration::from_secs(2),
        )
        .unwrap();
        let client = pool.get().await.unwrap();
        let sql = pgfleet_agent::sampler::activity::activity_sql(150000);
        let statement = client.prepare_cached(&sql).await.unwrap();
        let since = std::time::SystemTime::now() - Duration::from_secs(2);
        let every_database = pgfleet_agent::sampler::database::databases_param(
            &pgfleet_agent::config::Databases::All,
        );
        let read = || async {
            client
                .query(
                    &statement,
                    &[
                        &pgfleet_agent::target::APPLICATION_NAME,
                        &since,
                        &every_database,
                    ],
                )
                .await
                .unwrap()
        };
        println!(
            "the statement returns {} rows (the compact list, and the details of what changed)",
            read().await.len()
        );
        let iterations = 50;
        let cpu0 = cpu();
        for _ in 0..iterations {
            std::hint::black_box(read().await);
        }
        let per = (cpu() - cpu0) / iterations;
        println!(
            "{:<58} {:>9.1} µs CPU",
            "read pg_stat_activity, unchanged sessions (rows only)",
            per.as_secs_f64() * 1e6
        );

        // The whole sample as the agent takes it: facts, activity, counters,
        // pools, then encoded as the shipper does.
        let target = pgfleet_agent::TargetConfig::new(config);
        let pools = pgfleet_agent::reporter::AppPools::new([target.server_id.as_str()]);
        let mut sampler = pgfleet_agent::TargetSampler::new(
            &target,
            Duration::from_secs(2),
            QueryText::Masked,
            None,
            pools,
        )
        .unwrap();
        let mut encoder = Encoder::default();
        for _ in 0..3 {
            let s = sampler
                .sample(pgfleet_proto::time::now_micros())
                .await
                .unwrap();
            encoder.encode(s);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (mut sample_cpu, mut encode_cpu) = (Duration::ZERO, Duration::ZERO);
        let iterations = 20;
        for _ in 0..iterations {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let c0 = cpu();
            let s = sampler
                .sample(pgfleet_proto::time::now_micros())
                .await
                .unwrap();
            let c1 = cpu();
            std::hint::black_box(encoder.encode(s).encode_to_vec());
            encode_cpu += cpu() - c1;
            sample_cpu += c1 - c0;
        }
        let us = |d: Duration| (d / iterations).as_secs_f64() * 1e6;
        println!(
            "{:<58} {:>9.1} µs CPU",
            "TargetSampler::sample (one statement)",
            us(sample_cpu)
        );
        println!(
            "{:<58} {:>9.1} µs CPU",
            "Encoder::encode + protobuf bytes of that sample",
            us(encode_cpu)
        );
    });
}

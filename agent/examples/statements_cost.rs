//! What one read of pg_stat_statements costs the server's backend: the
//! agent's read as it runs in steady state, an exporter's
//! `SELECT * FROM pg_stat_statements`, and the floor
//! `SELECT count(*) FROM pg_stat_statements(false)`, interleaved on one
//! connection. `bench/statements_cost.py` sets up the server and runs it.
//!
//! `cargo run --release -p pgfleet-agent --example statements_cost -- URL [ROUNDS]`
//!
//! Each round runs the three reads in a rotating order, and reads the
//! backend's CPU (`/proc/<pg_backend_pid()>/schedstat`: nanoseconds, where
//! `/proc/<pid>/stat` counts 10 ms ticks) before and after each, once the
//! backend is idle again. The agent's
//! read is `Statements::read` itself, after the reads that set its baseline
//! and learn every text; the example checks that in the rounds it ran nothing
//! but its counters statement. Prints one JSON object.

use std::time::Duration;

use pgfleet_agent::sampler::QueryText;
use pgfleet_agent::sampler::statements::Statements;
use pgfleet_agent::target;
use serde_json::json;

#[path = "../benches/support/cpu.rs"]
mod cpu;

/// Nanoseconds on CPU of process `pid` (a backend has one thread).
fn backend_ns(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| fail(&format!("cannot read /proc/{pid}/schedstat")))
}

fn fail(message: &str) -> ! {
    eprintln!("statements_cost: {message}");
    std::process::exit(1);
}

/// Median and mean, in microseconds.
fn summary(mut ns: Vec<u64>) -> serde_json::Value {
    if ns.is_empty() {
        return json!({ "median_us": 0.0, "mean_us": 0.0, "reads": 0 });
    }
    ns.sort_unstable();
    let median = ns[ns.len() / 2] as f64 / 1e3;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3;
    json!({ "median_us": median, "mean_us": mean, "reads": ns.len() })
}

/// Calls so far of the statements whose text contains `needle`.
async fn calls(client: &tokio_postgres::Client, needle: &str) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements WHERE strpos(query, $1) > 0",
            &[&needle],
        )
        .await
        .unwrap_or_else(|e| fail(&e.to_string()))
        .get(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| fail("give a postgres URL (and the rounds)"));
    let rounds: usize = args.next().map_or(200, |r| r.parse().unwrap_or(200));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    rt.block_on(async {
        let (config, tls) = target::connection_config(Some(&url), |k| std::env::var(k).ok())
            .unwrap_or_else(|e| fail(&e.to_string()));
        let timeout = Duration::from_secs(10);
        let pool = target::pool(config.clone(), &tls, timeout).unwrap_or_else(|e| fail(&e.to_string()));
        let client = pool.get().await.unwrap_or_else(|e| fail(&e.to_string()));
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap_or_else(|e| fail(&e.to_string()))
            .get(0);
        let entries: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_statements(false)", &[])
            .await
            .unwrap_or_else(|e| fail(&e.to_string()))
            .get(0);
        // Every statement of the rounds runs once first, so that the warm-up
        // reads learn their texts too.
        let floor = client
            .prepare("SELECT count(*) FROM pg_stat_statements(false)")
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        let exporter = "SELECT * FROM pg_stat_statements";
        client
            .query_one(&floor, &[])
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        client
            .simple_query(exporter)
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        calls(&client, "").await;
        let every = Duration::from_secs(60);
        let mut reader = Statements::new("bench", Some(every), QueryText::Masked, timeout);
        let mut at = pgfleet_proto::time::now_micros();
        let step = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
        let mut agent_whole = Vec::new();
        let (mut agent, mut export, mut count) = (Vec::new(), Vec::new(), Vec::new());
        let mut agent_own = Duration::ZERO;
        let mut statements = 0;
        let mut exported_bytes = 0;
        let (mut texts_before, mut names_before) = (0, 0);
        // The backend's time is counted when it goes idle: let it, before
        // each reading.
        let settle = || tokio::time::sleep(Duration::from_millis(3));
        // Rounds as measured, unmeasured first: the agent's first read sets
        // its baseline, the next learn the texts of the statements run
        // between them, until a read finds nothing it has not sent.
        let mut warm = 0;
        let mut round = 0;
        while round < rounds + warm {
            let measuring = warm > 0 && round >= warm;
            if round == warm && measuring {
                texts_before = calls(&client, "left(query, $2)").await;
                names_before = calls(&client, "FROM pg_roles").await;
            }
            for k in 0..3 {
                settle().await;
                let before = backend_ns(pid);
                match (round + k) % 3 {
                    0 => {
                        let whole = reader.next_read_is_whole();
                        let own = cpu::cpu();
                        let sample = reader
                            .read(&client, at)
                            .await
                            .unwrap_or_else(|| fail(&format!("no read: {}", reader.status())));
                        let own = cpu::cpu() - own;
                        at += step;
                        settle().await;
                        let ns = backend_ns(pid) - before;
                        if !measuring {
                            let new_texts = sample.statements.iter().any(|s| !s.query.is_empty());
                            if round >= 3 && !new_texts {
                                warm = round + 1;
                            } else if round > 30 {
                                fail("the reads keep finding new statements; is something else running?");
                            }
                            continue;
                        }
                        agent_own += own;
                        statements = sample.statements.len();
                        if whole {
                            agent_whole.push(ns);
                        } else {
                            agent.push(ns);
                        }
                    }
                    1 => {
                        let rows = client
                            .simple_query(exporter)
                            .await
                            .unwrap_or_else(|e| fail(&e.to_string()));
                        exported_bytes = rows
                            .iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                                    (0..r.len())
                                        .map(|i| r.get(i).map_or(0, str::len))
                                        .sum::<usize>(),
                                ),
                                _ => None,
                            })
                            .sum::<usize>();
                        settle().await;
                        if measuring {
                            export.push(backend_ns(pid) - before);
                        }
                    }
                    _ => {
                        client
                            .query_one(&floor, &[])
                            .await
                            .unwrap_or_else(|e| fail(&e.to_string()));
                        settle().await;
                        if measuring {
                            count.push(backend_ns(pid) - before);
                        }
                    }
                }
            }
            if !measuring {
                calls(&client, "").await;
            }
            round += 1;
        }
        let texts_read = calls(&client, "left(query, $2)").await - texts_before;
        let names_read = calls(&client, "FROM pg_roles").await - names_before;
        let version: String = client
            .query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'", &[])
            .await
            .unwrap_or_else(|e| fail(&e.to_string()))
            .get(0);
        let n = (agent.len() + agent_whole.len()).max(1) as f64;
        let whole_share = agent_whole.len() as f64 / n;
        println!(
            "{}",
            json!({
                "entries": entries,
                "extension": version,
                "rounds": rounds,
                "agent": summary(agent),
                "agent_whole": summary(agent_whole),
                "agent_whole_share": whole_share,
                "whole_every": pgfleet_agent::sampler::statements::delta::WHOLE_EVERY,
                "exporter": summary(export),
                "floor": summary(count),
                "agent_process_us": agent_own.as_secs_f64() * 1e6 / n,
                "statements_per_sample": statements,
                "exporter_text_bytes": exported_bytes,
                // Besides the counters statement, in the measured rounds: 0
                // each in steady state.
                "text_reads": texts_read,
                "name_reads": names_read,
                "warm_up_rounds": warm,
            })
        );
    });
}

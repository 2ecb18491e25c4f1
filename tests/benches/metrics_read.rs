//! `cargo bench -p pgfleet-tests --bench metrics_read`: what a `QueryMetrics`
//! read of a fleet's stored minutes holds, and how long it takes.
//!
//! A SQLite store in a temporary directory is given `PGFLEET_BENCH_HOURS`
//! (24) of minutes of `PGFLEET_BENCH_SERVERS` (1,000) servers, through the
//! store's own writer, each minute with the values a server of 100 sessions
//! has (sessions by state, waits, pools, commits). Then the whole range is
//! answered fleet-wide (`sessions` by state, a step of an hour) three ways,
//! `PGFLEET_BENCH_ROUNDS` (2) times each:
//! - **fold**: whole hours read as one row each, the hours the store's
//!   writer added up, each row added up as the store reads it (QueryMetrics
//!   now; the bench first waits until the writer has added every whole hour
//!   up);
//! - **by_minute**: each minute added up as the store reads it (stop 50);
//! - **collect**: every minute of the range held first, then added up: what
//!   QueryMetrics held before stop 50, less the map of them and the range's
//!   cells per server and step it also built, so a floor of its cost.
//!
//! Then for one server (`server_id="bench-00042"`) and for ten
//! (`server_id=~"bench-0001."`), two ways each:
//! - **keyed**: each of their minutes found by its key (QueryMetrics now);
//! - **whole**: the whole range read and theirs kept (before stop 51).
//!
//! Then one server's read while a fleet-wide read runs (**one during
//! whole**), which a store with one connection for reads would make wait
//! for the rest of the fleet-wide read.
//!
//! Checks that each pair of ways gives the same series, and prints one JSON
//! object: for each way, each round's wall time and the
//! process's peak resident memory over the read less its resident memory
//! before (`VmHWM`, reset through `/proc/self/clear_refs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfleet_collector::aggregator::ServerView;
use pgfleet_collector::rollup::{MINUTE_US, Metric, Minute};
use pgfleet_collector::series::Plan;
use pgfleet_collector::store::{MinutesRead, Op, Retention, Store};
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::v1;

/// A minute of a server of 100 sessions, sampled each second.
fn minute(start: Micros, i: usize) -> Minute {
    let n = (i % 7) as f64;
    let values = [
        (Metric::Sessions, "active", 60.0 * (8.0 + n)),
        (Metric::Sessions, "idle", 60.0 * (80.0 - n)),
        (Metric::Sessions, "idle in transaction", 60.0 * 4.0),
        (Metric::Sessions, "idle in transaction (aborted)", 0.0),
        (Metric::WaitingSessions, "Lock", 60.0 * n),
        (Metric::WaitingSessions, "LWLock", 60.0),
        (Metric::WaitingSessions, "IO", 120.0),
        (Metric::WaitingSessions, "Client", 60.0 * 3.0),
        (Metric::BlockedSessions, "", 60.0 * n),
        (Metric::MaxXactAge, "", 12.0 + n),
        (Metric::PoolUtilisation, "slots", 0.35),
        (Metric::PoolUtilisation, "pgbouncer", 0.6),
        (Metric::PoolWaiting, "pgbouncer", n),
        (Metric::PoolMaxWait, "pgbouncer", 0.01 * n),
        (Metric::Commits, "", 600.0 + n),
        (Metric::Rollbacks, "", 3.0),
        (Metric::Deadlocks, "", 0.0),
    ];
    Minute {
        start,
        samples: 60,
        covered_us: 60_000_000,
        values: values.into_iter().collect(),
    }
}

/// `/proc/self/status`'s value of `field`, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// How long `read` took, and the peak resident memory over it less the
/// resident memory before it, in MiB.
async fn measured<T>(read: impl std::future::Future<Output = T>) -> (T, Duration, f64) {
    // Writing 5 resets the peak (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs is writable");
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let out = read.await;
    let took = started.elapsed();
    let peak = status_kib("VmHWM:");
    (out, took, peak.saturating_sub(before) as f64 / 1024.0)
}

fn main() {
    let servers = pgfleet_tests::env_usize("PGFLEET_BENCH_SERVERS", 1_000);
    let hours = pgfleet_tests::env_usize("PGFLEET_BENCH_HOURS", 24);
    let rounds = pgfleet_tests::env_usize("PGFLEET_BENCH_ROUNDS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("pgfleet-metrics-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let result = runtime.block_on(run(&dir, servers, hours, rounds));
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::to_string(&result).expect("JSON"));
}

async fn run(
    dir: &std::path::Path,
    servers: usize,
    hours: usize,
    rounds: usize,
) -> serde_json::Value {
    let (store, _) = Store::open_sqlite(
        dir,
        Retention::default(),
        pgfleet_collector::store::DictTraining::default(),
    )
    .expect("the store opens");
    let now = now_micros();
    let first = now - now.rem_euclid(MINUTE_US) - (hours as i64) * 60 * MINUTE_US;
    let ids: Vec<String> = (0..servers).map(|i| format!("bench-{i:05}")).collect();
    let written = Instant::now();
    for id in &ids {
        store
            .write(Op::Server {
                server_id: id.clone(),
                agent_id: id.clone(),
                labels: Default::default(),
                interval_ms: 1_000,
            })
            .await;
    }
    for m in 0..hours * 60 {
        let start = first + m as i64 * MINUTE_US;
        for (i, id) in ids.iter().enumerate() {
            store
                .write(Op::Minute {
                    server_id: id.clone(),
                    minute: minute(start, i + m),
                })
                .await;
        }
    }
    store.flush().await;
    let written_s = written.elapsed().as_secs_f64();
    // The writer adds each whole hour up once it has ended two minutes ago,
    // a share after each commit: commits until it has.
    let building = Instant::now();
    let last = first + (hours * 60 - 1) as i64 * MINUTE_US;
    pgfleet_tests::stored::hours_added_up(&store, (first, last)).await;
    let hours_s = building.elapsed().as_secs_f64();
    eprintln!("the hours added up in {hours_s:.1} s");
    eprintln!(
        "{} minutes of {servers} servers written in {:.1} s",
        hours * 60 * servers,
        written.elapsed().as_secs_f64()
    );

    let views: BTreeMap<Arc<str>, Arc<ServerView>> = ids
        .iter()
        .map(|id| {
            let view = ServerView::new(id, Duration::from_secs(1));
            (Arc::from(id.as_str()), Arc::new(view))
        })
        .collect();
    let plan = |matchers: &[&str]| {
        Plan::new(
            &v1::QueryMetricsRequest {
                metric: "sessions".into(),
                matchers: matchers.iter().map(|m| m.to_string()).collect(),
                start: Some(time::timestamp(first)),
                end: Some(time::timestamp(now)),
                step: Some(time::duration(60 * MINUTE_US)),
                ..Default::default()
            },
            now,
        )
        .expect("a valid request")
    };
    // Each read as QueryMetrics makes it (the servers the plan selects, whole
    // hours as one row each, each row added up as the store reads it), then
    // as `how` changes it.
    let fold = |plan: Plan, how: fn(&mut MinutesRead)| {
        let (views, store) = (&views, &store);
        async move {
            let fold = plan.fold(views);
            let mut read = fold.read();
            how(&mut read);
            store
                .fold_minutes(read, fold, |f, s, m| f.add(s, &m))
                .await
                .expect("a read")
                .finish()
        }
    };
    let now_way: fn(&mut MinutesRead) = |_| {};
    // Every server's minutes of the range, minute by minute (before stop 51).
    let whole_way: fn(&mut MinutesRead) = |r| {
        r.servers = None;
        r.hourly = false;
    };
    let minute_way: fn(&mut MinutesRead) = |r| r.hourly = false;
    let whole = plan(&[]);
    let mut out: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    let mut answers = Vec::new();
    let mut few: BTreeMap<&str, Vec<Vec<v1::MetricSeries>>> = BTreeMap::new();
    let mut timed = |way: &'static str, took: Duration, mib: f64| {
        out.entry(way)
            .or_default()
            .push(serde_json::json!({"s": took.as_secs_f64(), "peak_mib": mib}));
    };
    for _ in 0..rounds {
        // One server, and ten (names bench-00010 to bench-00019): each of
        // their minutes found by its key, and the whole range read for them
        // (as before this was).
        for (name, matcher) in [
            ("one", r#"server_id="bench-00042""#),
            ("ten", r#"server_id=~"bench-0001.""#),
        ] {
            let selected = plan(&[matcher]);
            let servers = selected.fold(&views).read().servers;
            assert_eq!(
                servers.as_ref().map(Vec::len),
                Some(if name == "one" { 1 } else { 10 }),
                "{matcher} selects its servers"
            );
            let (keyed, took, mib) = measured(fold(selected.clone(), now_way)).await;
            timed(
                if name == "one" {
                    "one_keyed"
                } else {
                    "ten_keyed"
                },
                took,
                mib,
            );
            let (read, took, mib) = measured(fold(selected, whole_way)).await;
            timed(
                if name == "one" {
                    "one_whole"
                } else {
                    "ten_whole"
                },
                took,
                mib,
            );
            assert!(!keyed.is_empty(), "{matcher} has series");
            few.entry(name).or_default().extend([keyed, read]);
        }

        let (series, took, mib) = measured(fold(whole.clone(), now_way)).await;
        answers.push(series);
        timed("fold", took, mib);
        let (series, took, mib) = measured(fold(whole.clone(), minute_way)).await;
        answers.push(series);
        timed("by_minute", took, mib);
    }
    // One server's day read while a fleet-wide day is being read: it takes
    // another of the store's connections.
    for _ in 0..rounds {
        let long = tokio::spawn({
            let (whole, views, store) = (whole.clone(), views.clone(), store.clone());
            async move {
                let started = Instant::now();
                let fold = whole.fold(&views);
                let read = MinutesRead::range(whole.start, whole.end);
                store
                    .fold_minutes(read, fold, |f, s, m| f.add(s, &m))
                    .await
                    .expect("a read");
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let selected = plan(&[r#"server_id="bench-00042""#]);
        let (_, took, mib) = measured(fold(selected, now_way)).await;
        assert!(!long.is_finished(), "the fleet-wide read still runs");
        timed("one_during_whole", took, mib);
        let long = long.await.expect("the fleet-wide read");
        timed("whole_beside_one", long, 0.0);
    }
    // Last: the first read that holds the range leaves the allocator some
    // 1.9 GB of blocks to gather again, which the next read would pay for
    // (0.9 s in a run where a read of one server came next, against 13 ms).
    for _ in 0..rounds {
        let (series, took, mib) = measured(async {
            let held = store
                .fold_minutes(
                    MinutesRead::range(whole.start, whole.end),
                    Vec::new(),
                    |v, s, m| v.push((s.to_owned(), m)),
                )
                .await
                .expect("a read");
            let mut fold = whole.fold(&views);
            for (s, m) in &held {
                fold.add(s, m);
            }
            fold.finish()
        })
        .await;
        answers.push(series);
        timed("collect", took, mib);
    }
    // The same, but for the order in which a step's servers were summed.
    let same = |a: &[v1::MetricSeries], b: &[v1::MetricSeries]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.labels == y.labels
                    && x.points.len() == y.points.len()
                    && x.points.iter().zip(&y.points).all(|(p, q)| {
                        p.at == q.at && (p.value - q.value).abs() <= 1e-9 * p.value.abs().max(1.0)
                    })
            })
    };
    assert!(
        answers.windows(2).all(|w| same(&w[0], &w[1])),
        "both ways give the same answer"
    );
    for (name, answers) in &few {
        assert!(
            answers.windows(2).all(|w| same(&w[0], &w[1])),
            "both ways give the same answer for {name}"
        );
    }
    serde_json::json!({
        "servers": servers,
        "hours": hours,
        "minutes": servers * hours * 60,
        "series": answers.first().map_or(0, Vec::len),
        "written_s": written_s,
        "hours_s": hours_s,
        "ways": out,
    })
}

//! DB load, statement statistics and connection churn, end to end: real
//! PostgreSQL, a real agent streaming to a collector, asked over gRPC.

use std::time::Duration;

use pgfleet_proto::time::{Micros, now_micros, timestamp};
use pgfleet_proto::v1;
use pgfleet_tests::{Client, fleet, server, wait_for};

const TEN_S: Micros = 10_000_000;

/// The first 10 s boundary at or after `at`.
fn ceil10(at: Micros) -> Micros {
    at + (TEN_S - at.rem_euclid(TEN_S)) % TEN_S
}

/// The last 10 s boundary at or before `at`.
fn floor10(at: Micros) -> Micros {
    at - at.rem_euclid(TEN_S)
}

/// Load over `[start, end)` per 10 s, grouped by `group_by`, once every
/// step of the range has its bucket stored.
async fn load(
    client: &Client,
    matchers: &[&str],
    group_by: &str,
    start: Micros,
    end: Micros,
) -> v1::QueryLoadResponse {
    let req = v1::QueryLoadRequest {
        start: Some(timestamp(start)),
        end: Some(timestamp(end)),
        step: Some(pgfleet_proto::time::duration(TEN_S)),
        group_by: group_by.into(),
        matchers: matchers.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    wait_for(
        "every step of the range to have its samples",
        Duration::from_secs(30),
        || {
            let mut c = client.clone();
            let req = req.clone();
            async move {
                let r = c
                    .query_load(req)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let thin: Vec<f64> = r
                    .coverage
                    .iter()
                    .map(|p| p.value)
                    .filter(|v| *v < 0.8)
                    .collect();
                if r.coverage.is_empty() || !thin.is_empty() {
                    return Err(format!("coverage {:?}", r.coverage));
                }
                Ok(r)
            }
        },
    )
    .await
}

/// The average of the series keyed `key`, or 0 without one.
fn average(r: &v1::QueryLoadResponse, key: &str) -> f64 {
    r.series
        .iter()
        .find(|s| s.key == key)
        .map_or(0.0, |s| s.average)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_sessions_a_lock_chain_and_a_connecting_client_show_as_load_and_churn() {
    let mut fleet = fleet("db-load", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    let setup = fleet.cluster.connect("load-setup").await.unwrap();
    setup
        .batch_execute(
            "CREATE TABLE chain (id int PRIMARY KEY, v int); INSERT INTO chain VALUES (1, 0);",
        )
        .await
        .unwrap();
    wait_for("the server up", Duration::from_secs(20), || {
        let mut c = client.clone();
        async move {
            let s = server(&mut c, "db-load").await?;
            if s.up { Ok(()) } else { Err(s.status) }
        }
    })
    .await;

    let t0 = now_micros();
    // Three sessions sleep for a minute.
    let mut sleepers = Vec::new();
    for i in 0..3 {
        let c = fleet
            .cluster
            .connect(&format!("sleeper-{i}"))
            .await
            .unwrap();
        sleepers.push(tokio::spawn(async move {
            c.simple_query("SELECT pg_sleep(60)").await.map(|_| ())
        }));
    }
    // A lock chain: one holds the row, two wait for it.
    let holder = fleet.cluster.connect("lock-holder").await.unwrap();
    holder
        .batch_execute("BEGIN; UPDATE chain SET v = v + 1 WHERE id = 1;")
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for i in 0..2 {
        let c = fleet
            .cluster
            .connect(&format!("lock-waiter-{i}"))
            .await
            .unwrap();
        waiters.push(tokio::spawn(async move {
            c.batch_execute("UPDATE chain SET v = v + 1 WHERE id = 1")
                .await
        }));
    }
    // A client that connects about five times a second, runs a statement
    // and stays a moment (idle) before it goes. Not every 200 ms exactly:
    // five of those make the agent's second, so each sample would fall at
    // the same point of the churner's cycle, and in some runs that point was
    // when none of its sessions was open (no sample ever saw one). At 190 ms,
    // the samples move through the whole cycle every 4 s.
    let config = fleet.cluster.config("churner");
    let churner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(190));
        let mut opened = 0u32;
        let until = tokio::time::Instant::now() + Duration::from_secs(58);
        while tokio::time::Instant::now() < until {
            tick.tick().await;
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok((c, conn)) = config.connect(tokio_postgres::NoTls).await {
                    let conn = tokio::spawn(conn);
                    let _ = c.simple_query("SELECT 1").await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(c);
                    let _ = conn.await;
                }
            });
            opened += 1;
        }
        opened
    });

    tokio::time::sleep(Duration::from_secs(61)).await;
    let opened = churner.await.unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    for s in sleepers {
        s.await.unwrap().unwrap();
    }
    let (start, end) = (ceil10(t0 + 3_000_000), floor10(t0 + 57_000_000));
    assert!(end - start >= 40_000_000);

    // 1. Three sleeping sessions are a load of 3 on Timeout:PgSleep.
    let by_wait = load(&client, &["server_id=\"db-load\""], "wait", start, end).await;
    let sleeping = average(&by_wait, "Timeout:PgSleep");
    assert!(
        (sleeping - 3.0).abs() <= 0.3,
        "load on Timeout:PgSleep {sleeping}: {by_wait:?}"
    );
    for s in by_wait.series.iter().filter(|s| s.key == "Timeout:PgSleep") {
        assert_eq!(s.points.len() as i64, (end - start) / TEN_S, "{s:?}");
    }
    // 2. The lock chain's waiters: the first waits for the holder's
    // transaction, and PostgreSQL queues the second behind it on the row's
    // tuple lock.
    let locked = average(&by_wait, "Lock:transactionid");
    let queued = average(&by_wait, "Lock:tuple");
    assert!(
        (locked - 1.0).abs() <= 0.15 && (queued - 1.0).abs() <= 0.15,
        "load on Lock:transactionid {locked} and Lock:tuple {queued}: {by_wait:?}"
    );
    // By application, filtered by wait: only the sleepers.
    let by_app = load(
        &client,
        &["server_id=\"db-load\"", "wait=\"Timeout:PgSleep\""],
        "application",
        start,
        end,
    )
    .await;
    let apps: Vec<&str> = by_app.series.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(apps.len(), 3, "{apps:?}");
    assert!(apps.iter().all(|a| a.starts_with("sleeper-")), "{apps:?}");

    // And pg_sleep tops the queries by load, with its wait.
    let mut c = client.clone();
    let top = c
        .top_queries(v1::TopQueriesRequest {
            start: Some(timestamp(start)),
            end: Some(timestamp(end)),
            server_id: "db-load".into(),
            order_by: "load".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = &top.queries[0];
    assert!(first.text.contains("pg_sleep"), "{top:?}");
    assert!((first.load - 3.0).abs() <= 0.3, "{first:?}");
    assert_eq!(first.waits[0].key, "Timeout:PgSleep", "{first:?}");
    assert_eq!(first.servers, ["db-load"]);

    // 4. Churn: about five sessions a second for the churner.
    let churn = c
        .get_churn(v1::GetChurnRequest {
            start: Some(timestamp(start)),
            end: Some(timestamp(end)),
            server_id: "db-load".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let row = churn
        .rows
        .iter()
        .find(|r| r.application == "churner")
        .unwrap_or_else(|| panic!("no churn row for the churner: {churn:?}"));
    assert!(
        (3.5..=6.5).contains(&row.started_per_second),
        "the churner opened {opened} in 58 s; churn says {row:?}"
    );
    assert!(
        row.seen_started > 0 && row.seen_started < row.started,
        "{row:?}"
    );
    assert!(
        churn.lifetime_p50 > 0.0 && churn.lifetime_p50 < 1.5,
        "{churn:?}"
    );
    assert!(churn.seconds >= 40.0, "{churn:?}");

    // 5. A restarted collector keeps the load history.
    fleet
        .restart_collector(Duration::from_secs(1))
        .await
        .unwrap();
    let client = fleet.client().await.unwrap();
    let again = load(&client, &["server_id=\"db-load\""], "wait", start, end).await;
    assert_eq!(
        average(&again, "Timeout:PgSleep"),
        sleeping,
        "the same load after a restart"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_two_dcs_add_up_by_dc_and_bad_requests_say_what_to_change() {
    let fleet = fleet("db-eu", &[("dc", "eu1")]).await;
    let other = pgfleet_cli::sandbox::TempCluster::start().await.unwrap();
    let agent = fleet
        .start_agent("db-us", &[("dc", "us1")], other.config("pgfleet"))
        .unwrap();
    let client = fleet.client().await.unwrap();
    for id in ["db-eu", "db-us"] {
        wait_for("both servers up", Duration::from_secs(20), || {
            let mut c = client.clone();
            async move {
                let s = server(&mut c, id).await?;
                if s.up { Ok(()) } else { Err(s.status) }
            }
        })
        .await;
    }
    let t0 = now_micros();
    let mut sleepers = Vec::new();
    for (cluster, n) in [(&fleet.cluster, 1), (&other, 2)] {
        for i in 0..n {
            let c = cluster.connect(&format!("dc-sleeper-{i}")).await.unwrap();
            sleepers.push(tokio::spawn(async move {
                c.simple_query("SELECT pg_sleep(32)").await.map(|_| ())
            }));
        }
    }
    for s in sleepers {
        s.await.unwrap().unwrap();
    }
    let (start, end) = (ceil10(t0 + 2_000_000), floor10(t0 + 31_000_000));
    let by_dc = load(&client, &["wait=\"Timeout:PgSleep\""], "dc", start, end).await;
    assert_eq!(by_dc.servers, 2);
    let (eu, us) = (average(&by_dc, "eu1"), average(&by_dc, "us1"));
    assert!(
        (eu - 1.0).abs() <= 0.15 && (us - 2.0).abs() <= 0.3,
        "{by_dc:?}"
    );
    let by_server = load(&client, &["dc=\"us1\""], "server", start, end).await;
    assert_eq!(by_server.servers, 1);
    assert_eq!(by_server.series[0].key, "db-us", "{by_server:?}");

    // Bad input: what to change.
    let mut c = client.clone();
    let ask = |f: fn(&mut v1::QueryLoadRequest)| {
        let mut req = v1::QueryLoadRequest {
            start: Some(timestamp(start)),
            end: Some(timestamp(end)),
            ..Default::default()
        };
        f(&mut req);
        req
    };
    for (req, says) in [
        (ask(|r| r.group_by = "colour".into()), "not a dimension"),
        (
            ask(|r| r.step = Some(pgfleet_proto::time::duration(5_000_000))),
            "whole number of 10 s",
        ),
        (ask(|r| r.start = None), "no start"),
        (
            ask(|r| std::mem::swap(&mut r.start, &mut r.end)),
            "inverted",
        ),
        (
            ask(|r| {
                r.start = Some(timestamp(0));
                r.step = Some(pgfleet_proto::time::duration(60_000_000));
            }),
            "at most 11000",
        ),
        (ask(|r| r.matchers = vec!["wait".into()]), "no operator"),
    ] {
        let e = c.query_load(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{says}: {e:?}");
    }
    agent.stop().await;
    other.destroy().await;
    fleet.stop().await;
}

/// Runs pgbench against `cluster`; the transactions it says it processed.
async fn pgbench(cluster: &pgfleet_cli::sandbox::TempCluster, args: &[&str]) -> u64 {
    let out = tokio::process::Command::new(cluster.bindir().join("pgbench"))
        .args(args)
        .arg(cluster.url())
        .output()
        .await
        .expect("pgbench runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench {args:?}: {text}");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("number of transactions actually processed: ")?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The top queries by calls over `[start, now + 1 min)` once `ready` holds.
async fn top_by_calls(
    client: &Client,
    server_id: &str,
    start: Micros,
    ready: impl Fn(&v1::TopQueriesResponse) -> Result<(), String>,
) -> v1::TopQueriesResponse {
    wait_for(
        "the statements' increments",
        Duration::from_secs(30),
        || {
            let mut c = client.clone();
            let ready = &ready;
            async move {
                let r = c
                    .top_queries(v1::TopQueriesRequest {
                        start: Some(timestamp(start)),
                        end: Some(timestamp(now_micros() + 60_000_000)),
                        server_id: server_id.into(),
                        order_by: "calls".into(),
                        limit: 50,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                ready(&r).map(|_| r)
            }
        },
    )
    .await
}

/// The calls of pgbench's update of pgbench_accounts.
fn account_updates(r: &v1::TopQueriesResponse) -> u64 {
    r.queries
        .iter()
        .find(|q| q.text.starts_with("UPDATE pgbench_accounts"))
        .and_then(|q| q.statistics.as_ref())
        .map_or(0, |s| s.calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_statements_join_their_load_and_a_reset_gives_no_negative_numbers() {
    pgfleet_tests::init_logs();
    let cluster = pgfleet_cli::sandbox::TempCluster::start_with(&[(
        "shared_preload_libraries",
        "pg_stat_statements",
    )])
    .await
    .unwrap();
    cluster
        .connect("setup")
        .await
        .unwrap()
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let mut fleet = pgfleet_cli::sandbox::Fleet::start_on(cluster, "db-bench", &[])
        .await
        .unwrap();
    // An agent that reads the statements every 2 s.
    fleet.agent.take().unwrap().stop().await;
    let mut config = fleet.agent_config("db-bench", fleet.cluster.config("pgfleet"));
    config.statements_interval = Some(Duration::from_secs(2));
    fleet.agent = Some(fleet.start_agent_with(config).unwrap());
    let client = fleet.client().await.unwrap();
    assert!(pgbench(&fleet.cluster, &["-i", "-s", "1", "-q"]).await == 0);
    // The first read is the baseline; pgbench's own setup is before it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = now_micros();

    // 3. pgbench's statements, with the calls pgbench reports.
    // Five seconds of it, so that samples catch its sessions at work.
    let done = pgbench(&fleet.cluster, &["-c", "4", "-j", "2", "-T", "5", "-n"]).await;
    assert!(done > 100, "pgbench ran {done} transactions");
    let top = top_by_calls(&client, "db-bench", start, |r| {
        let calls = account_updates(r);
        if calls >= done * 99 / 100 {
            Ok(())
        } else {
            Err(format!("{calls} calls so far: {r:?}"))
        }
    })
    .await;
    assert!(top.statements, "{top:?}");
    let calls = account_updates(&top);
    assert!(
        calls.abs_diff(done) * 100 <= done,
        "pgbench ran {done} updates; the statistics say {calls}"
    );
    // Statistics and load join on the fingerprint: pgbench's sessions were
    // sampled running its statements.
    assert!(
        top.queries
            .iter()
            .any(|q| q.text.contains("pgbench_") && q.load > 0.0 && q.statistics.is_some()),
        "no pgbench statement has both load and statistics: {top:?}"
    );

    // 7. A reset during a run: nothing negative, no spike. What ran between
    // the last read before the reset and the reset is lost (the server
    // forgot it); what ran after it is counted.
    let reset = fleet.cluster.connect("resetter").await.unwrap();
    let more = {
        let cluster = &fleet.cluster;
        let run = pgbench(cluster, &["-c", "2", "-j", "2", "-T", "4", "-n"]);
        let reset = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            reset
                .batch_execute("SELECT pg_stat_statements_reset()")
                .await
                .unwrap();
        };
        let (n, ()) = tokio::join!(run, reset);
        n
    };
    assert!(more > 100, "pgbench ran {more} transactions");
    top_by_calls(&client, "db-bench", start, |r| {
        if account_updates(r) > calls {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = top_by_calls(&client, "db-bench", start, |_| Ok(())).await;
    let total = account_updates(&after);
    assert!(
        total > calls && total <= calls + more,
        "{calls} before the reset, {more} run across it: {total} in all"
    );
    for q in &after.queries {
        if let Some(s) = &q.statistics {
            assert!(
                s.total_time_ms >= 0.0 && s.mean_time_ms >= 0.0 && s.calls < 1_000_000,
                "{q:?}"
            );
        }
    }
    drop(reset);
    fleet.stop().await;
}

/// A question about one query passes over the hours whose dictionaries do
/// not name it, adding their samples and coverage from their totals, and
/// answers as a read of every minute does: `query!="R"` takes the same
/// tuples as `query="Q"` where only Q and R ran, and is read whole.
/// A collector over a SQLite store in a fresh directory named for `name`,
/// given `servers`' load (`pgfleet_tests::stored::write_load`, which also
/// waits for the writer to add its hours up): the directory, the collector,
/// its HTTP address (for /metrics) and a Query client.
async fn collector_over(
    name: &str,
    servers: &[(String, &[pgfleet_collector::load::count::Closed])],
) -> (
    std::path::PathBuf,
    pgfleet_collector::server::Collector,
    String,
    v1::query_client::QueryClient<tonic::transport::Channel>,
) {
    let dir = std::env::temp_dir().join(format!("pgfleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    pgfleet_tests::stored::write_load(&dir, servers).await;
    let mut config =
        pgfleet_collector::config::CollectorConfig::new(([127, 0, 0, 1], 0).into(), dir.clone());
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    let collector = pgfleet_collector::server::start(config).await.unwrap();
    let http = collector.http_addr.unwrap().to_string();
    let client = v1::query_client::QueryClient::connect(format!("http://{}", collector.addr))
        .await
        .unwrap();
    (dir, collector, http, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_about_one_query_passes_over_the_hours_that_never_ran_it() {
    use pgfleet_tests::stored::load_of;
    const Q: u64 = 0x0000_0000_0000_0a0a;
    const R: u64 = 0x0000_0000_0000_0b0b;
    let now = now_micros();
    let end = now - now.rem_euclid(60_000_000);
    // db-a runs Q throughout, db-b never, db-c for its first three hours;
    // db-d runs Q throughout, and has no pg_stat_statements.
    let (a, b, c) = (
        load_of(end, 6, |_| Q),
        load_of(end, 6, |_| R),
        load_of(end, 6, |h| if h < 3 { Q } else { R }),
    );
    let d: Vec<_> = a
        .iter()
        .filter(|c| !matches!(c, pgfleet_collector::load::count::Closed::Statements(..)))
        .cloned()
        .collect();
    let servers = [
        ("db-a".to_owned(), &a[..]),
        ("db-b".to_owned(), &b[..]),
        ("db-c".to_owned(), &c[..]),
        ("db-d".to_owned(), &d[..]),
    ];
    let (dir, collector, http, mut client) = collector_over("pass-over", &servers).await;
    let passed = || pgfleet_tests::metric(&http, "pgfleet_collector_load_hours_passed_total");
    let mut ask = async |matcher: String, step: Micros| {
        let before = passed().await.unwrap();
        let r = client
            .query_load(v1::QueryLoadRequest {
                start: Some(timestamp(end - 6 * pgfleet_tests::stored::HOUR_US)),
                end: Some(timestamp(end)),
                step: Some(pgfleet_proto::time::duration(step)),
                group_by: "server".into(),
                matchers: vec![matcher],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (r, passed().await.unwrap() - before)
    };
    let series = |r: &v1::QueryLoadResponse| -> Vec<(String, Vec<f64>)> {
        r.series
            .iter()
            .map(|s| (s.key.clone(), s.points.iter().map(|p| p.value).collect()))
            .collect()
    };
    for step in [
        60_000_000,
        15 * 60_000_000,
        3_600_000_000,
        2 * 3_600_000_000,
    ] {
        let (passed, hours_passed) = ask(format!("query=\"{Q:016x}\""), step).await;
        let (whole, none_passed) = ask(format!("query!=\"{R:016x}\""), step).await;
        // db-b's hours that ended with a minute stored after them, and
        // db-c's once it ran R: four and two at least (the range's first and
        // last hours are parts of hours).
        assert!(
            hours_passed >= 6.0,
            "step {step}: {hours_passed} hours passed over"
        );
        assert_eq!(none_passed, 0.0, "step {step}");
        assert_eq!(series(&passed), series(&whole), "step {step}");
        assert_eq!(passed.coverage, whole.coverage, "step {step}");
        // Each step's part of the range, [a, b): steps of whole hours start
        // on an hour, so the first and the last may hold time before and
        // after the load written.
        let (first, hour) = (end - 6 * 3_600_000_000, 3_600_000_000);
        let parts: Vec<(Micros, Micros)> = passed
            .coverage
            .iter()
            .map(|p| {
                let at = pgfleet_proto::time::timestamp_micros(p.at.as_ref().unwrap());
                (at.max(first), (at + step).min(end))
            })
            .collect();
        // Every step covered as far as the load written reaches: the hours
        // passed over count.
        for (p, (a, b)) in passed.coverage.iter().zip(&parts) {
            let covered = (b - a) as f64 / step as f64;
            assert!(
                (p.value - covered).abs() < 1e-9,
                "step {step}: coverage {:?}",
                passed.coverage
            );
        }
        let of = |key: &str| {
            series(&passed)
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
        };
        assert!(of("db-b").is_none(), "step {step}: {:?}", series(&passed));
        for server in ["db-a", "db-d"] {
            let a = of(server).unwrap();
            assert!(a.iter().all(|v| (v - 10.0).abs() < 1e-9), "{server}: {a:?}");
        }
        // db-c: ten in its first three hours, nothing after; a step across
        // the change has its share (its samples of the hours passed over
        // count too).
        let c = of("db-c").unwrap();
        for (i, (v, (a, b))) in c.iter().zip(&parts).enumerate() {
            let share = ((first + 3 * hour).min(*b) - a).max(0) as f64 / (b - a) as f64;
            assert!((v - 10.0 * share).abs() < 1e-9, "step {step}, {i}: {c:?}");
        }
    }
    // The top queries of the range: Q's load and its statistics, from the
    // hours that ran it, whichever way they are asked for.
    let hour = pgfleet_tests::stored::HOUR_US;
    let mut top = async |matcher: String, servers: &str, to: Micros| {
        let before = passed().await.unwrap();
        let r = client
            .top_queries(v1::TopQueriesRequest {
                start: Some(timestamp(end - 6 * hour)),
                end: Some(timestamp(to)),
                matchers: vec![matcher, format!("server_id=~\"{servers}\"")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (r, passed().await.unwrap() - before)
    };
    let (passed, hours_passed) = top(format!("query=\"{Q:016x}\""), ".*", end).await;
    let (whole, none_passed) = top(format!("query!=\"{R:016x}\""), ".*", end).await;
    assert!(
        hours_passed >= 6.0 && none_passed == 0.0,
        "{hours_passed}, {none_passed}"
    );
    assert_eq!(passed, whole);
    let q = &passed.queries[..];
    assert_eq!(q.len(), 1, "{q:?}");
    // Ten sessions on db-a and db-d throughout, and on db-c for half the
    // range.
    assert!((q[0].load - 25.0).abs() < 1e-9, "{q:?}");
    let stats = q[0].statistics.as_ref().unwrap();
    assert!(
        stats.calls >= 10 * (9 * 60 - 20) && stats.calls <= 10 * 9 * 60,
        "nine hours of reads each minute: {stats:?}"
    );
    // Asked of db-d and db-b up to two hours ago: the statistics that
    // arrived came from db-b's hours, all passed over, and the answer says
    // they arrived all the same.
    let to = end - 2 * hour;
    let (passed, hours_passed) = top(format!("query=\"{Q:016x}\""), "db-b|db-d", to).await;
    let (whole, _) = top(format!("query!=\"{R:016x}\""), "db-b|db-d", to).await;
    assert!(hours_passed >= 4.0, "{hours_passed}");
    assert!(whole.statements, "{whole:?}");
    assert_eq!(passed, whole);
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_s_day_by_a_dimension_is_asked_by_the_hour_unless_a_step_is_given() {
    use pgfleet_tests::stored::{HOUR_US, load_of};
    // 140 servers, two of them with an hour of load: a day of 140 servers'
    // minutes is over what the collector reads one by one for a question
    // without a step, so such a question is answered by the hour; one of
    // fewer servers, a step given, or a total keep the step the points
    // pick (30 minutes for a day).
    let now = now_micros();
    let end = now - now.rem_euclid(HOUR_US);
    let a = load_of(end, 1, |_| 0x0e0e);
    let mut servers = vec![("db-a".to_owned(), &a[..]), ("db-b".to_owned(), &a[..])];
    servers.extend((0..138).map(|i| (format!("idle-{i:03}"), &[][..])));
    let (dir, collector, _, mut client) = collector_over("day-step", &servers).await;
    let mut ask = async |to: Micros, group_by: &str, matchers: &[&str], step: Option<Micros>| {
        client
            .query_load(v1::QueryLoadRequest {
                start: Some(timestamp(to - 24 * HOUR_US)),
                end: Some(timestamp(to)),
                step: step.map(pgfleet_proto::time::duration),
                group_by: group_by.into(),
                matchers: matchers.iter().map(|m| m.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let mut step_of = async |group_by: &str, matchers: &[&str], step: Option<Micros>| {
        let r = ask(end, group_by, matchers, step).await;
        assert_eq!(
            r.coverage.len() as i64 * r.step.unwrap().seconds,
            24 * 3_600
        );
        (r.servers, r.step.unwrap().seconds)
    };
    assert_eq!(step_of("wait", &[], None).await, (140, 3_600));
    assert_eq!(
        step_of("", &[r#"user=~"user-.*""#], None).await,
        (140, 3_600)
    );
    assert_eq!(
        step_of("wait", &[r#"server_id=~"db-.*""#], None).await,
        (2, 1_800)
    );
    assert_eq!(step_of("wait", &[], Some(HOUR_US / 2)).await, (140, 1_800));
    assert_eq!(step_of("server", &[], None).await, (140, 1_800));
    // A day that does not end on the hour: its steps start on the hour, the
    // first before the range.
    let to = end - 10 * 60_000_000;
    let r = ask(to, "wait", &[], None).await;
    let at = |p: &v1::MetricPoint| pgfleet_proto::time::timestamp_micros(p.at.as_ref().unwrap());
    assert_eq!(r.step.unwrap().seconds, 3_600);
    assert_eq!(r.coverage.len(), 25);
    assert_eq!(at(&r.coverage[0]), end - 25 * HOUR_US);
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_s_load_by_the_hour_reads_each_server_s_hours_added_up() {
    use pgfleet_tests::stored::{HOUR_US, load_of};
    const Q: u64 = 0x0000_0000_0000_0c0c;
    const R: u64 = 0x0000_0000_0000_0d0d;
    // Six hours that end on the hour: the writer adds the first five up
    // (the last ends less than two minutes after the last minute written,
    // and is read by its minutes). db-a runs Q throughout, db-b R, db-c Q
    // in its hours 0, 1, 2 and 4 and R in 3 and 5; ten sessions each, half
    // of them waiting on IO:DataFileRead, the rest on the CPU. (An average
    // is counts over samples: an hour read both whole and by its minutes
    // would not change db-a's, but it would db-c's share in a step that
    // holds hours of both kinds, and in the range's top queries.)
    let now = now_micros();
    let end = now - now.rem_euclid(HOUR_US);
    let start = end - 6 * HOUR_US;
    let (a, b, c) = (
        load_of(end, 6, |_| Q),
        load_of(end, 6, |_| R),
        load_of(end, 6, |h| if h == 3 || h == 5 { R } else { Q }),
    );
    // db-c's share of Q in the hours [from, to) (each of its hours wholly
    // one query or the other).
    let c_runs_q = |from: f64, to: f64| {
        let q: f64 = [0.0, 1.0, 2.0, 4.0]
            .iter()
            .map(|h: &f64| ((h + 1.0).min(to) - h.max(from)).max(0.0))
            .sum();
        q / (to - from)
    };
    let servers = [
        ("db-a".to_owned(), &a[..]),
        ("db-b".to_owned(), &b[..]),
        ("db-c".to_owned(), &c[..]),
    ];
    let (dir, collector, http, mut client) = collector_over("whole-hours", &servers).await;
    let whole = || pgfleet_tests::metric(&http, "pgfleet_collector_load_hours_whole_total");
    let mut ask = async |group_by: &str, step: Micros| {
        let before = whole().await.unwrap();
        let r = client
            .query_load(v1::QueryLoadRequest {
                start: Some(timestamp(start)),
                end: Some(timestamp(end)),
                step: Some(pgfleet_proto::time::duration(step)),
                group_by: group_by.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let series: Vec<(String, Vec<f64>)> = r
            .series
            .iter()
            .map(|s| (s.key.clone(), s.points.iter().map(|p| p.value).collect()))
            .collect();
        let coverage: Vec<f64> = r.coverage.iter().map(|p| p.value).collect();
        (series, coverage, whole().await.unwrap() - before)
    };
    let (q, r) = (format!("{Q:016x}"), format!("{R:016x}"));
    for step in [HOUR_US / 2, HOUR_US, 2 * HOUR_US] {
        let steps = (6 * HOUR_US / step) as usize;
        let (by_query, coverage, read_whole) = ask("query", step).await;
        // Whole hours for steps of whole hours: of the three servers' five
        // hours added up, all but the first, which holds the store's oldest
        // minute (retention deletes a minute's rows a chunk at a time, so
        // such an hour may have lost some since it was added up).
        let expected_whole = if step % HOUR_US == 0 { 12.0 } else { 0.0 };
        assert_eq!(read_whole, expected_whole, "step {step}");
        assert_eq!(coverage.len(), steps, "step {step}");
        assert!(
            coverage.iter().all(|v| (v - 1.0).abs() < 1e-9),
            "step {step}: {coverage:?}"
        );
        // Q: db-a's ten, and db-c's in its hours of Q (its share of a step
        // that holds hours of both); R the rest.
        let of = |key: &str| {
            by_query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("step {step}: no {key} in {by_query:?}"))
        };
        let hours_of = step as f64 / HOUR_US as f64;
        for (i, (vq, vr)) in of(&q).into_iter().zip(of(&r)).enumerate() {
            let share = c_runs_q(i as f64 * hours_of, (i + 1) as f64 * hours_of);
            assert!(
                (vq - (10.0 + 10.0 * share)).abs() < 1e-9,
                "step {step}, {i}: Q {vq}"
            );
            assert!(
                (vr - (20.0 - 10.0 * share)).abs() < 1e-9,
                "step {step}, {i}: R {vr}"
            );
        }
        let (by_wait, _, _) = ask("wait", step).await;
        assert_eq!(by_wait.len(), 2, "step {step}: {by_wait:?}");
        for (key, values) in &by_wait {
            assert!(
                values.iter().all(|v| (v - 15.0).abs() < 1e-9),
                "step {step}: {key} {values:?}"
            );
        }
    }
    // The top queries of the range: its whole hours added up, the rest by
    // the minute, and their statement statistics by the hour too, the
    // rest by the 10-minute interval.
    let statement_hours =
        || pgfleet_tests::metric(&http, "pgfleet_collector_statement_hours_whole_total");
    let before = (whole().await.unwrap(), statement_hours().await.unwrap());
    let top = client
        .top_queries(v1::TopQueriesRequest {
            start: Some(timestamp(start)),
            end: Some(timestamp(end)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole().await.unwrap() - before.0, 12.0);
    assert_eq!(statement_hours().await.unwrap() - before.1, 12.0);
    let load: std::collections::BTreeMap<String, f64> = top
        .queries
        .iter()
        .map(|t| (t.fingerprint.clone(), t.load))
        .collect();
    assert_eq!(load.len(), 2, "{top:?}");
    // db-a's ten and db-c's four sixths for Q; db-b's ten and db-c's two
    // sixths for R.
    let c = c_runs_q(0.0, 6.0);
    for (key, expected) in [(&q, 10.0 + 10.0 * c), (&r, 10.0 + 10.0 * (1.0 - c))] {
        let l = load[key];
        assert!((l - expected).abs() < 1e-9, "{key}: {l} in {top:?}");
    }
    // Each server read pg_stat_statements each minute, ten calls of its
    // hour's query taking 5 ms in all, and its counter holds the last
    // 10-minute interval (never written): 35 intervals stored of ten reads
    // each. Q: db-a's 35 and db-c's 24 (hours 0, 1, 2 and 4); R: db-b's
    // 35 and db-c's 11. An hour taken both whole and by its intervals
    // would count its calls twice.
    for (key, intervals) in [(&q, 35 + 24), (&r, 35 + 11)] {
        let t = top.queries.iter().find(|t| &t.fingerprint == key).unwrap();
        let stats = t.statistics.as_ref().unwrap();
        assert_eq!(stats.calls, intervals * 10 * 10, "{key}: {stats:?}");
        assert!(
            (stats.total_time_ms - (intervals * 10) as f64 * 5.0).abs() < 1e-6,
            "{key}: {stats:?}"
        );
    }
    // Connection churn over the range reads the same whole hours (their
    // churn added up; these sessions never come or go, so none).
    let before = whole().await.unwrap();
    let churn = client
        .get_churn(v1::GetChurnRequest {
            start: Some(timestamp(start)),
            end: Some(timestamp(end)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole().await.unwrap() - before, 12.0);
    assert!(churn.rows.is_empty(), "{churn:?}");
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

//! Every kind of pool, observed end to end through the collector: the server's
//! connection slots, a real PgBouncer, the agent's own pool, and application
//! pools reported to the agent (from Rust, and from the SQLAlchemy example).

use std::time::Duration;

use pgfleet_proto::v1::{self, pool_reporter_client::PoolReporterClient};
use pgfleet_tests::{TempPgBouncer, fleet, fleet_with, pools, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_slots_are_counted_by_state_application_user_and_database() {
    let fleet = fleet_with("db-slots", &[("max_connections", "40")]).await;
    let admin = fleet.cluster.connect("t-admin").await.unwrap();
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    admin
        .batch_execute("CREATE ROLE clerk LOGIN")
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = fleet.cluster.config("slot-holder");
        c.dbname("shop").user("clerk");
        let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        held.push(client);
    }
    let client = fleet.client().await.unwrap();
    let slots = wait_for("the slot holders", Duration::from_secs(15), || {
        let mut c = client.clone();
        async move {
            let slots = pools(&mut c, "db-slots").await?.slots.ok_or("no slots")?;
            let holders = count(&slots.by_application, "slot-holder");
            (holders == 3)
                .then_some(slots)
                .ok_or(format!("{holders} holders"))
        }
    })
    .await;
    assert_eq!(slots.max_connections, 40);
    assert_eq!(slots.reserved, 3, "superuser_reserved_connections");
    assert_eq!(count(&slots.by_user, "clerk"), 3);
    assert_eq!(count(&slots.by_database, "shop"), 3);
    assert!(count(&slots.by_state, "idle") >= 4, "{:?}", slots.by_state);
    // The agent's own connection holds a slot too, and is counted.
    assert_eq!(count(&slots.by_application, "pgfleet-agent"), 1);
    let total: u32 = slots.by_state.iter().map(|s| s.count).sum();
    assert_eq!(total, slots.used);

    // The agent's own pool: one connection at most, and it is in use or idle.
    let own = pools(&mut client.clone(), "db-slots")
        .await
        .unwrap()
        .client_pools;
    let own = own
        .iter()
        .find(|p| p.kind == v1::PoolKind::Agent as i32)
        .expect("the agent's pool is reported");
    assert_eq!((own.pool_name.as_str(), own.max), ("pgfleet-agent", 1));
    assert_eq!(own.used + own.idle, 1, "{own:?}");
    fleet.stop().await;
}

/// The PgBouncer sample of db-behind-bouncer, as the collector holds it.
async fn bouncer_sample(client: &pgfleet_tests::Client) -> Result<v1::PgBouncerSample, String> {
    pools(&mut client.clone(), "db-behind-bouncer")
        .await?
        .pgbouncer
        .ok_or_else(|| "no PgBouncer sample".to_owned())
}

fn count(counts: &[v1::SlotCount], name: &str) -> u32 {
    counts
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_clients_waiting_behind_a_small_pool_show_at_the_collector() {
    let fleet = fleet("db-bouncer", &[]).await;
    let bouncer = TempPgBouncer::start(&fleet.cluster, 1)
        .await
        .unwrap_or_else(|e| panic!("cannot start PgBouncer: {e}"));

    let mut config = fleet.agent_config("db-behind-bouncer", fleet.cluster.config("unused"));
    config.targets[0].pgbouncer =
        Some(pgfleet_agent::target::pgbouncer_config(&bouncer.admin_url()).unwrap());
    let agent = fleet.start_agent_with(config).unwrap();

    // Three clients, one server connection: two of them queue.
    let mut queries = Vec::new();
    for i in 0..3 {
        let c = bouncer.config("postgres", &format!("t-bounced-{i}"));
        queries.push(tokio::spawn(async move {
            let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client.simple_query("SELECT pg_sleep(8)").await
        }));
    }
    let client = fleet.client().await.unwrap();
    let sample = wait_for(
        "clients waiting in PgBouncer",
        Duration::from_secs(15),
        || {
            let c = client.clone();
            async move {
                let sample = bouncer_sample(&c).await?;
                let waiting: u32 = sample
                    .pools
                    .iter()
                    .map(|p| p.client_waiting_connections)
                    .sum();
                if sample.up && waiting >= 2 {
                    Ok(sample)
                } else {
                    Err(format!(
                        "up={} reason={:?} waiting={waiting}",
                        sample.up, sample.reason
                    ))
                }
            }
        },
    )
    .await;
    let pool = sample
        .pools
        .iter()
        .find(|p| p.database == "postgres" && p.user == "postgres")
        .expect("the postgres/postgres pool");
    assert_eq!(pool.server_active_connections, 1);
    assert_eq!(pool.client_active_connections, 1);
    assert_eq!(pool.pool_mode, "session");
    assert!(sample.stats.iter().any(|s| s.database == "postgres"));

    // Its maxwait grows while they wait.
    wait_for(
        "maxwait to pass one second",
        Duration::from_secs(10),
        || {
            let c = client.clone();
            async move {
                let s = bouncer_sample(&c).await?;
                let wait = s
                    .pools
                    .iter()
                    .map(|p| p.client_maxwait_seconds)
                    .fold(0.0, f64::max);
                (wait >= 1.0).then_some(()).ok_or(format!("maxwait {wait}"))
            }
        },
    )
    .await;
    // Both are kept a minute at a time, for the pool queue's timeline.
    for (metric, least) in [("pool_waiting", 2.0), ("pool_max_wait_seconds", 1.0)] {
        wait_for(metric, Duration::from_secs(10), || {
            let mut c = client.clone();
            async move {
                let now = pgfleet_proto::time::now_micros();
                let r = c
                    .query_metrics(v1::QueryMetricsRequest {
                        metric: metric.into(),
                        matchers: vec!["pool=\"pgbouncer\"".into()],
                        start: Some(pgfleet_proto::time::timestamp(now - 300_000_000)),
                        step: Some(pgfleet_proto::time::duration(60_000_000)),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let most = r
                    .series
                    .iter()
                    .flat_map(|s| &s.points)
                    .map(|p| p.value)
                    .fold(0.0, f64::max);
                (most >= least).then_some(()).ok_or(format!("{r:?}"))
            }
        })
        .await;
    }
    for q in queries {
        q.await.unwrap().unwrap();
    }
    // The queries have passed through: the totals count them.
    wait_for(
        "SHOW STATS to count the queries",
        Duration::from_secs(20),
        || {
            let c = client.clone();
            async move {
                let s = bouncer_sample(&c).await?;
                let n: u64 = s.stats.iter().map(|s| s.queries_pooled_total).sum();
                (n >= 3).then_some(()).ok_or(format!("{n} queries"))
            }
        },
    )
    .await;

    // PgBouncer going away is PgBouncer's problem, not the server's.
    drop(bouncer);
    let sample = wait_for(
        "PgBouncer to be reported down",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            async move {
                let p = pools(&mut c, "db-behind-bouncer").await?;
                let s = p.pgbouncer.ok_or("none")?;
                let server_up = p.server.is_some_and(|s| s.up);
                (!s.up && server_up)
                    .then_some(s)
                    .ok_or("still up".to_owned())
            }
        },
    )
    .await;
    assert!(sample.reason.contains("PgBouncer"), "{}", sample.reason);
    agent.stop().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_pools_reported_to_the_agent_reach_the_collector() {
    let fleet = fleet("db-app-pools", &[]).await;
    let addr = fleet.pool_reporter().expect("the reporter is on");
    let mut reporter = PoolReporterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let report = |server_id: &str, pool_name: &str| v1::ReportPoolsRequest {
        server_id: server_id.into(),
        reporter: "checkout@web-3:4711".into(),
        pools: vec![v1::ClientPool {
            pool_name: pool_name.into(),
            max: 20,
            used: 7,
            idle: 3,
            pending_requests: 2,
            timeouts: 5,
            wait_time_seconds_sum: 1.25,
            wait_time_count: 40,
            ..Default::default()
        }],
    };
    let accepted = reporter
        .report(report("db-app-pools", "checkout-main"))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 1);
    let err = reporter.report(report("nope", "x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("db-app-pools"), "{}", err.message());

    let client = fleet.client().await.unwrap();
    let pool = wait_for("the reported pool", Duration::from_secs(10), || {
        let mut c = client.clone();
        async move {
            pools(&mut c, "db-app-pools")
                .await?
                .client_pools
                .into_iter()
                .find(|p| p.pool_name == "checkout-main")
                .ok_or("not yet".to_owned())
        }
    })
    .await;
    assert_eq!(pool.kind, v1::PoolKind::Application as i32);
    assert_eq!(pool.reporter, "checkout@web-3:4711");
    assert_eq!(
        (pool.max, pool.used, pool.idle, pool.pending_requests),
        (20, 7, 3, 2)
    );
    assert_eq!((pool.timeouts, pool.wait_time_count), (5, 40));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlalchemy_example_reports_its_pool_through_a_real_agent() {
    let fleet = fleet("db-sqlalchemy", &[]).await;
    let addr = fleet.pool_reporter().expect("the reporter is on");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/python/pgfleet_pool_reporter.py"
    );
    let dsn = format!(
        "postgresql+psycopg2://postgres@127.0.0.1:{}/postgres",
        fleet.cluster.port()
    );
    let mut child = tokio::process::Command::new("python3")
        .args([
            script,
            "--dsn",
            &dsn,
            "--agent",
            &addr.to_string(),
            "--pool-name",
            "sqlalchemy-demo",
            "--pool-size",
            "5",
            "--max-overflow",
            "2",
            "--checkout",
            "3",
            "--interval",
            "0.5",
            "--duration",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let client = fleet.client().await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Ok(p) = pools(&mut client.clone(), "db-sqlalchemy").await
                && let Some(pool) = p
                    .client_pools
                    .into_iter()
                    .find(|p| p.pool_name == "sqlalchemy-demo")
            {
                return Some(pool);
            }
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let pool = match found {
        Ok(Some(pool)) => pool,
        _ => {
            let _ = child.start_kill();
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "the example's pool never reached the collector; the example said: {}{} (pip install -r deploy/examples/python/requirements.txt provides what it needs)",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    assert_eq!(pool.kind, v1::PoolKind::Application as i32);
    assert_eq!(pool.max, 7, "pool_size + max_overflow");
    assert_eq!(pool.used, 3, "three checked out");
    assert!(
        pool.reporter.contains("pgfleet_pool_reporter@"),
        "{}",
        pool.reporter
    );
    assert_eq!(pool.wait_time_count, 3, "three checkouts timed");
    // The example's connections are real sessions on the server, too.
    let sessions = pgfleet_tests::sessions(&mut client.clone(), "db-sqlalchemy")
        .await
        .unwrap();
    let n = sessions
        .iter()
        .filter(|s| s.application_name == "sqlalchemy-demo")
        .count();
    assert!(n >= 3, "{n} sessions of the example");
    let _ = child.start_kill();
    fleet.stop().await;
}

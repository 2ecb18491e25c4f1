//! One agent, several targets, and the rules that keep it harmless: few
//! connections with timeouts, skipped ticks rather than a pile-up, a dead target
//! that does not stop the others, and server facts and database counters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgfleet_agent::config::{Databases, TargetConfig};
use pgfleet_agent::{AgentConfig, target};
use pgfleet_common::error::chain;
use pgfleet_tests::{databases, fleet, server, wait_for, wait_for_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_watches_several_targets_and_a_dead_one_does_not_stop_the_others() {
    let mut fleet = fleet("db-multi-base", &[]).await;
    // Only the agent under test may connect, so its connections can be counted.
    fleet.agent.take().unwrap().stop().await;
    let admin = fleet.cluster.connect("t-admin").await.unwrap();
    admin.batch_execute("CREATE DATABASE second").await.unwrap();

    let mut first = TargetConfig::new(fleet.cluster.config("unused"));
    first.server_id = "multi-a".into();
    first.labels.insert("role".into(), "primary".into());
    let mut second_conn = fleet.cluster.config("unused");
    second_conn.dbname("second");
    let mut second = TargetConfig::new(second_conn);
    second.server_id = "multi-b".into();
    let mut dead_conn = tokio_postgres::Config::new();
    dead_conn
        .host("127.0.0.1")
        .port(pgfleet_tests::free_port().unwrap())
        .user("postgres");
    let mut dead = TargetConfig::new(dead_conn);
    dead.server_id = "multi-dead".into();

    let mut config = AgentConfig::new(&fleet.url, fleet.cluster.config("unused"));
    config.agent_id = "agent-multi".into();
    config.labels.insert("dc".into(), "eu9".into());
    config.targets = vec![first, second, dead];
    let agent = fleet.start_agent_with(config).unwrap();

    let client = fleet.client().await.unwrap();
    let a = wait_for_status(&client, "multi-a", "up", Duration::from_secs(20)).await;
    wait_for_status(&client, "multi-b", "up", Duration::from_secs(20)).await;
    let dead = wait_for_status(&client, "multi-dead", "down", Duration::from_secs(20)).await;
    assert!(
        dead.reason.contains("refused") || dead.reason.contains("connect"),
        "{}",
        dead.reason
    );
    assert_eq!(a.labels["role"], "primary");
    assert_eq!(a.labels["dc"], "eu9", "agent labels are inherited");
    assert_eq!(dead.labels["dc"], "eu9");

    // At most two connections per target: here one each, whatever the load.
    let rows = admin
        .query(
            "SELECT datname, count(*) FROM pg_stat_activity WHERE application_name = 'pgfleet-agent' GROUP BY datname",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let n: i64 = row.get(1);
        assert!(
            n <= 2,
            "{n} agent connections to {:?}",
            row.get::<_, String>(0)
        );
    }
    // The live targets carry on while the dead one stays down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = server(&mut client.clone(), "multi-a").await.unwrap();
    assert_eq!(a.status, "up");
    let samples = |id: &str| {
        agent
            .stats
            .iter()
            .find(|(s, _)| s == id)
            .unwrap()
            .1
            .samples
            .load(Ordering::Relaxed)
    };
    assert!(samples("multi-a") >= 3 && samples("multi-dead") >= 3);
    agent.stop().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_connection_has_timeouts_its_name_and_no_write_access() {
    let fleet = fleet("db-safety", &[]).await;
    let pool = target::pool(
        fleet.cluster.config("unused"),
        &pgfleet_common::pgtls::PgTls::default(),
        Duration::from_millis(1500),
    )
    .unwrap();
    let client = pool.get().await.unwrap();
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(show("statement_timeout").await, "1500ms");
    assert_eq!(show("lock_timeout").await, "1500ms");
    assert_eq!(show("default_transaction_read_only").await, "on");
    assert_eq!(show("application_name").await, "pgfleet-agent");
    let err = client
        .batch_execute("CREATE TABLE should_not_exist (x int)")
        .await
        .unwrap_err();
    let err = chain(&err);
    assert!(err.contains("read-only"), "{err}");
    let err = client
        .batch_execute("SELECT pg_sleep(5)")
        .await
        .unwrap_err();
    let err = chain(&err);
    assert!(err.contains("statement timeout"), "{err}");
    assert_eq!(pool.status().max_size, target::MAX_CONNECTIONS);
    const { assert!(target::MAX_CONNECTIONS <= 2) };
    drop(client);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_that_overruns_skips_ticks_and_counts_them() {
    let mut fleet = fleet("db-overrun-base", &[]).await;
    fleet.agent.take().unwrap().stop().await;
    let mut config = fleet.agent_config("db-overrun", fleet.cluster.config("unused"));
    config.interval = Duration::from_millis(100);
    let agent = fleet.start_agent_with(config).unwrap();
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-overrun", "up", Duration::from_secs(20)).await;

    // Freeze the agent's backend for 1.5 s: its sample waits, and the ticks it
    // misses are skipped, not queued.
    let admin = fleet.cluster.connect("t-admin").await.unwrap();
    let row = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgfleet-agent'",
            &[],
        )
        .await
        .unwrap();
    let pid: i32 = row.get(0);
    let stats = agent.stats[0].1.clone();
    let before = stats.samples.load(Ordering::Relaxed);
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(pid, "CONT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let skipped = stats.skipped_ticks.load(Ordering::Relaxed);
    let taken = stats.samples.load(Ordering::Relaxed) - before;
    assert!(skipped >= 10, "skipped {skipped}");
    assert!(
        taken < 10,
        "{taken} samples in 2 s at 100 ms: the missed ticks were not skipped"
    );
    let seen = wait_for(
        "the skips at the collector",
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            async move {
                let s = server(&mut c, "db-overrun").await?;
                let n = s.agent.map_or(0, |a| a.skipped_ticks_total);
                (n >= 10).then_some(n).ok_or(format!("{n}"))
            }
        },
    )
    .await;
    assert!(seen <= skipped);
    agent.stop().await;
    fleet.stop().await;
}

fn signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_and_database_counters_reach_the_collector_and_new_databases_are_found() {
    let fleet = fleet("db-counters", &[]).await;
    let client = fleet.client().await.unwrap();
    let up = wait_for_status(&client, "db-counters", "up", Duration::from_secs(20)).await;
    let info = up.info.expect("facts arrive with the keyframes");
    assert!(
        info.version_num >= 150000 && info.version.starts_with("15"),
        "{info:?}"
    );
    assert_ne!(info.system_identifier, 0);
    assert!(!info.in_recovery);
    assert_eq!(info.max_connections, 100);
    assert_eq!(info.superuser_reserved_connections, 3);
    assert!(info.start_time.is_some());

    let admin = fleet.cluster.connect("t-admin").await.unwrap();
    admin.batch_execute("CREATE DATABASE orders").await.unwrap();
    admin.batch_execute("CREATE DATABASE closed").await.unwrap();
    admin
        .batch_execute("ALTER DATABASE closed ALLOW_CONNECTIONS false")
        .await
        .unwrap();
    wait_for("orders to be discovered", Duration::from_secs(10), || {
        let mut c = client.clone();
        async move {
            let dbs = databases(&mut c, "db-counters").await?;
            let names: Vec<_> = dbs.iter().map(|d| d.database.clone()).collect();
            names
                .contains(&"orders".to_owned())
                .then_some(())
                .ok_or(format!("{names:?}"))
        }
    })
    .await;
    let mut orders = fleet.cluster.config("t-orders");
    orders.dbname("orders");
    let (o, conn) = orders.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    o.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    for i in 0..50 {
        o.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
    o.batch_execute("BEGIN; INSERT INTO t VALUES (0); ROLLBACK")
        .await
        .unwrap();
    // An idle backend reports its statistics only after 10 s; ask for them now.
    o.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    o.batch_execute("SELECT 1").await.unwrap();
    let totals = wait_for("the commits to be counted", Duration::from_secs(15), || {
        let mut c = client.clone();
        async move {
            let dbs = databases(&mut c, "db-counters").await?;
            let d = dbs
                .into_iter()
                .find(|d| d.database == "orders")
                .ok_or("no orders")?;
            (d.xact_commit >= 51 && d.xact_rollback >= 1)
                .then_some(d.clone())
                .ok_or(format!("{d:?}"))
        }
    })
    .await;
    assert!(totals.tup_inserted >= 50, "{totals:?}");
    let names: Vec<_> = databases(&mut client.clone(), "db-counters")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.database)
        .collect();
    assert!(!names.contains(&"template0".to_owned()), "{names:?}");
    assert!(!names.contains(&"closed".to_owned()), "{names:?}");

    // A list of databases sends only those.
    let mut config = fleet.agent_config("db-only-orders", fleet.cluster.config("unused"));
    config.targets[0].databases = Databases::Only(vec!["orders".into()]);
    let agent = fleet.start_agent_with(config).unwrap();
    wait_for_status(&client, "db-only-orders", "up", Duration::from_secs(20)).await;
    let names: Vec<_> = databases(&mut client.clone(), "db-only-orders")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.database)
        .collect();
    assert_eq!(names, ["orders"]);
    agent.stop().await;
    fleet.stop().await;
}

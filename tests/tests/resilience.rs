//! The agent rides out outages of the database and of the collector by itself.

use std::time::Duration;

use pgfleet_collector::ingest;
use pgfleet_proto::time::timestamp_micros;
use pgfleet_proto::v1::{self, agent_message, collector_message};
use pgfleet_tests::{
    Killed, agent_hello, agent_stream, by_app, fleet, sessions, wait_for, wait_for_status,
    workspace_binary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_reported_down_with_a_reason_and_comes_back() {
    let fleet = fleet("db-outage", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-outage", "up", Duration::from_secs(20)).await;

    fleet.cluster.stop_server().await.unwrap();
    let down = wait_for_status(&client, "db-outage", "down", Duration::from_secs(15)).await;
    assert!(!down.up);
    assert!(
        down.reason.contains("refused")
            || down.reason.contains("connect")
            || down.reason.contains("shutting down"),
        "the reason should name the cause: {:?}",
        down.reason
    );
    assert_eq!(down.labels["dc"], "eu1");

    fleet.cluster.start_server().await.unwrap();
    // The agent backs off while the server is down (30 s at the most), then resumes.
    let back = wait_for_status(&client, "db-outage", "up", Duration::from_secs(45)).await;
    assert!(back.up && back.reason.is_empty(), "{back:?}");
    let probe = fleet.cluster.connect("t-after-restart").await.unwrap();
    probe.simple_query("SELECT 1").await.unwrap();
    wait_for(
        "sessions after the restart",
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            async move {
                sessions(&mut c, "db-outage")
                    .await
                    .and_then(|all| by_app(&all, "t-after-restart").map(|_| ()))
            }
        },
    )
    .await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_by_itself_when_the_collector_restarts() {
    let mut fleet = fleet("db-collector-restart", &[]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(
        &client,
        "db-collector-restart",
        "up",
        Duration::from_secs(20),
    )
    .await;

    fleet
        .restart_collector(Duration::from_secs(3))
        .await
        .unwrap();
    let restarted_at = pgfleet_proto::time::now_micros();
    // A new client: the old channel's connection died with the old collector,
    // and the new collector starts with no memory of the server.
    let client = fleet.client().await.unwrap();
    let back = wait_for_status(
        &client,
        "db-collector-restart",
        "up",
        Duration::from_secs(30),
    )
    .await;
    let last_seen = timestamp_micros(&back.last_seen.expect("last_seen is set when up"));
    assert!(
        last_seen >= restarted_at,
        "last_seen {last_seen} predates the restart {restarted_at}"
    );
    let stats = &fleet
        .agent
        .as_ref()
        .expect("the same agent still runs")
        .stats[0]
        .1;
    assert!(stats.samples.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    fleet.stop().await;
}

fn batch(seq: u64, server_id: &str) -> v1::AgentMessage {
    let snapshot = v1::Snapshot {
        server_id: server_id.to_owned(),
        sampled_at_us: pgfleet_proto::time::now_micros(),
        status: Some(v1::TargetStatus {
            up: false,
            reason: "a test".into(),
        }),
        ..Default::default()
    };
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch {
            seq,
            dictionary_additions: vec![],
            snapshots: vec![snapshot],
        })),
    }
}

fn ack(m: Option<v1::CollectorMessage>) -> Option<u64> {
    match m?.msg? {
        collector_message::Msg::Ack(a) => Some(a.seq),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ack_covers_many_batches_and_a_closing_agent_gets_the_last() {
    let fleet = fleet("db-acks", &[]).await;

    // A few batches: they are applied, and their ack waits (for more batches,
    // or a few seconds) rather than waking the agent once per batch.
    let (tx, mut inbound) = agent_stream(&fleet.url, "raw-acks", None).await.unwrap();
    for seq in 1..=3 {
        tx.send(batch(seq, "raw-acks")).await.unwrap();
    }
    let early = tokio::time::timeout(Duration::from_millis(500), inbound.message()).await;
    assert!(early.is_err(), "no ack for each batch: {early:?}");
    // Closing its side (as a stopping agent does) brings the ack of all three,
    // then the end of the stream.
    drop(tx);
    let last = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the last ack comes when the agent closes its side")
        .unwrap();
    assert_eq!(ack(last), Some(3));
    assert!(inbound.message().await.unwrap().is_none());

    // Sixteen batches bring an ack without waiting.
    let (tx, mut inbound) = agent_stream(&fleet.url, "raw-acks", None).await.unwrap();
    for seq in 4..=(3 + u64::from(ingest::ACK_AFTER)) {
        tx.send(batch(seq, "raw-acks")).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(3), inbound.message())
        .await
        .expect("an ack after ACK_AFTER batches")
        .unwrap();
    assert_eq!(ack(got), Some(3 + u64::from(ingest::ACK_AFTER)));
    // Alone, a batch is acknowledged within ACK_EVERY.
    tx.send(batch(100, "raw-acks")).await.unwrap();
    let got = tokio::time::timeout(
        ingest::ACK_EVERY + Duration::from_secs(3),
        inbound.message(),
    )
    .await
    .expect("an ack within ACK_EVERY")
    .unwrap();
    assert_eq!(ack(got), Some(100));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_leaves_nothing_unacknowledged() {
    let fleet = fleet("db-drain", &[]).await;
    let port = fleet.cluster.port().to_string();
    let agent = tokio::process::Command::new(pgfleet_tests::agent_binary())
        .args([
            "--collector",
            &fleet.url,
            "--target",
            &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            "--server-id",
            "db-drain-bin",
            "--agent-id",
            "drain-bin",
            "--pool-reporter-listen",
            "off",
        ])
        .env_remove("PGFLEET_CONFIG")
        .env("PGFLEET_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-drain-bin", "up", Duration::from_secs(20)).await;
    // A few samples more, fewer than one ack covers: the collector holds them
    // unacknowledged until the agent stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(15), agent.wait_with_output())
        .await
        .expect("the agent stops")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("not acknowledged"),
        "every batch was acknowledged before the agent stopped: {stderr}"
    );
    fleet.stop().await;
}

/// An agent given two collectors moves to the second when the first stops,
/// and nothing it had not delivered is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_its_next_collector() {
    use pgfleet_cli::{Remote, connect};
    use pgfleet_collector::config::CollectorConfig;
    use pgfleet_collector::server;
    let fleet = fleet("db-failover-host", &[]).await;
    let b = server::start(CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        fleet.cluster.dir().join("collector-b"),
    ))
    .await
    .unwrap();
    let a = server::start(CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        fleet.cluster.dir().join("collector-a"),
    ))
    .await
    .unwrap();
    let mut config = fleet.agent_config("db-failover", fleet.cluster.config("pgfleet-fo"));
    config.collector = format!("http://{}", a.addr);
    config.fallback_collectors = vec![format!("http://{}", b.addr)];
    config.pool_reporter = None;
    let agent = fleet.start_agent_with(config).unwrap();
    let client_a = connect(&Remote::plain(format!("http://{}", a.addr)))
        .await
        .unwrap();
    wait_for_status(&client_a, "db-failover", "up", Duration::from_secs(20)).await;

    a.stop().await;
    let client_b = connect(&Remote::plain(format!("http://{}", b.addr)))
        .await
        .unwrap();
    let at_b = wait_for_status(&client_b, "db-failover", "up", Duration::from_secs(30)).await;
    let stream = at_b.stream.unwrap();
    assert_eq!(stream.missing_batches, 0, "{stream:?}");
    agent.stop().await;
    b.stop().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_acknowledged_survives_a_killed_collector() {
    let dir = std::env::temp_dir().join(format!("pgfleet-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = pgfleet_cli::sandbox::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let start = || {
        Killed(
            std::process::Command::new(workspace_binary("pgfleet-collector"))
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--http-listen",
                    "off",
                ])
                .arg("--data-dir")
                .arg(&dir)
                .env("PGFLEET_LOG", "warn")
                .spawn()
                .unwrap(),
        )
    };
    let hello = || {
        wait_for(
            "the collector to take a stream",
            Duration::from_secs(20),
            || async {
                agent_hello(&url, "raw-durable", None)
                    .await
                    .map_err(|s| s.to_string())
            },
        )
    };
    let collector = start();
    let ((tx, mut inbound), welcome) = hello().await;
    assert_eq!(welcome.resume_after_seq, 0);
    let last = u64::from(ingest::ACK_AFTER);

    // While the store cannot commit (another process holds its lock, as a
    // stalled disk would), batches are applied but not acknowledged.
    let lock = rusqlite::Connection::open(dir.join("pgfleet.sqlite")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for seq in 1..=last {
        tx.send(batch(seq, "raw-durable")).await.unwrap();
    }
    let early = tokio::time::timeout(Duration::from_secs(2), inbound.message()).await;
    assert!(early.is_err(), "no ack before the store commits: {early:?}");
    // Once it can, the ack follows.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let got = tokio::time::timeout(Duration::from_secs(15), inbound.message())
        .await
        .expect("an ack after ACK_AFTER batches")
        .unwrap();
    assert_eq!(ack(got), Some(last));
    // Killed the moment the ack arrived: what it acknowledged was committed.
    drop(collector);
    drop(tx);

    let collector = start();
    let (_, welcome) = hello().await;
    assert!(
        welcome.resume_after_seq >= last,
        "acknowledged {last}, but the restarted collector resumes after {}",
        welcome.resume_after_seq
    );
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The agent rides out outages of the database and of the collector by itself.

use std::time::Duration;

use pgfleet_proto::time::timestamp_micros;
use pgfleet_tests::{by_app, fleet, sessions, wait_for, wait_for_status};

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

//! The agent rides out outages of the database and of the collector by itself.

use std::time::Duration;

use pgfleet_proto::time::timestamp_micros;
use pgfleet_tests::{by_app, fleet, server, sessions, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_reported_down_with_a_reason_and_comes_back() {
    let fleet = fleet("db-outage", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    let up = || {
        let mut c = client.clone();
        async move {
            let s = server(&mut c, "db-outage").await?;
            if s.up {
                Ok(s)
            } else {
                Err(format!("{} ({})", s.status, s.reason))
            }
        }
    };
    wait_for("the server to be up", Duration::from_secs(20), up).await;

    fleet.cluster.stop_server().await.unwrap();
    let down = wait_for(
        "the server to be reported down",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            async move {
                let s = server(&mut c, "db-outage").await?;
                if s.status == "down" {
                    Ok(s)
                } else {
                    Err(format!("{} ({})", s.status, s.reason))
                }
            }
        },
    )
    .await;
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
    let back = wait_for("the server to come back", Duration::from_secs(45), up).await;
    assert!(back.reason.is_empty());
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
    let seen = || {
        let mut c = client.clone();
        async move {
            let s = server(&mut c, "db-collector-restart").await?;
            match (&s.last_seen, s.up) {
                (Some(t), true) => Ok(timestamp_micros(t)),
                _ => Err(format!("{} ({})", s.status, s.reason)),
            }
        }
    };
    wait_for("the first snapshot", Duration::from_secs(20), seen).await;

    fleet
        .restart_collector(Duration::from_secs(3))
        .await
        .unwrap();
    let restarted_at = pgfleet_proto::time::now_micros();
    // A new client: the old channel's connection died with the old collector.
    let client = fleet.client().await.unwrap();
    let last_seen = wait_for(
        "the agent to stream to the new collector",
        Duration::from_secs(30),
        || {
            let mut c = client.clone();
            async move {
                let s = server(&mut c, "db-collector-restart").await?;
                match (&s.last_seen, s.up) {
                    (Some(t), true) => Ok(timestamp_micros(t)),
                    _ => Err(format!("{} ({})", s.status, s.reason)),
                }
            }
        },
    )
    .await;
    assert!(
        last_seen >= restarted_at,
        "last_seen {last_seen} predates the restart {restarted_at}"
    );
    let stats = &fleet
        .agent
        .as_ref()
        .expect("the same agent still runs")
        .stats;
    assert!(stats.samples.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    fleet.stop().await;
}

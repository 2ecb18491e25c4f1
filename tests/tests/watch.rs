//! Watch: the matching servers first, then each change, including a server
//! going stale, which no snapshot announces.

use std::time::Duration;

use pgfleet_proto::v1::{self, watch_event::Event};
use pgfleet_tests::{fleet, wait_for_status};

/// The next event of a watch, within 20 s.
async fn next(stream: &mut tonic::Streaming<v1::WatchEvent>) -> Event {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .and_then(|e| e.event)
        .expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_view_then_each_change_even_going_stale() {
    let fleet = fleet("db-watch-1", &[("dc", "eu1")]).await;
    let mut client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-watch-1", "up", Duration::from_secs(20)).await;
    let mut stream = client
        .watch(v1::WatchRequest {
            labels: [("dc".to_owned(), "eu1".to_owned())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    match next(&mut stream).await {
        Event::Full(full) => {
            let ids: Vec<_> = full.servers.iter().map(|s| s.server_id.as_str()).collect();
            assert_eq!(ids, ["db-watch-1"]);
        }
        other => panic!("the full view comes first, not {other:?}"),
    }

    // A new server of the same dc is sent; one of another dc is not.
    let eu = fleet
        .start_agent(
            "db-watch-2",
            &[("dc", "eu1")],
            fleet.cluster.config("pgfleet"),
        )
        .unwrap();
    let us = fleet
        .start_agent(
            "db-watch-3",
            &[("dc", "us1")],
            fleet.cluster.config("pgfleet"),
        )
        .unwrap();
    loop {
        match next(&mut stream).await {
            Event::Changed(s) if s.server_id == "db-watch-2" && s.status == "up" => break,
            Event::Changed(s) => assert_ne!(s.server_id, "db-watch-3", "another dc"),
            other => panic!("unexpected {other:?}"),
        }
    }

    // Its agent stops: three intervals later the server is stale, and the
    // watcher hears of it.
    eu.stop().await;
    loop {
        match next(&mut stream).await {
            Event::Changed(s) if s.server_id == "db-watch-2" && s.status == "stale" => break,
            Event::Changed(s) => assert_ne!(s.server_id, "db-watch-3", "another dc"),
            other => panic!("unexpected {other:?}"),
        }
    }
    us.stop().await;
    fleet.stop().await;
}

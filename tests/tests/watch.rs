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

/// Sends a down snapshot of `server_id` every 10 ms for `how_long`, reading
/// the acks meanwhile; returns the last sequence sent.
async fn stream_changes(
    (tx, mut inbound): pgfleet_tests::AgentStream,
    server_id: String,
    how_long: Duration,
) -> u64 {
    use pgfleet_proto::model::Snapshot;
    use v1::agent_message::Msg;
    let acks = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let until = tokio::time::Instant::now() + how_long;
    let mut seq = 0;
    while tokio::time::Instant::now() < until {
        seq += 1;
        let at = pgfleet_proto::time::now_micros();
        let snapshot = Snapshot::down(server_id.clone(), at, format!("change {seq}"));
        let batch = v1::Batch {
            seq,
            snapshots: vec![v1::Snapshot::from(&snapshot)],
            ..Default::default()
        };
        if tx
            .send(v1::AgentMessage {
                msg: Some(Msg::Batch(batch)),
            })
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks.abort();
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_is_ended_and_ingest_goes_on() {
    use pgfleet_collector::config::CollectorConfig;
    let dir = std::env::temp_dir().join(format!("pgfleet-slow-watch-{}", std::process::id()));
    let collector = pgfleet_collector::server::start(CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        dir.clone(),
    ))
    .await
    .unwrap();
    let url = format!("http://{}", collector.addr);

    // The watcher takes little at a time, and reads nothing for now.
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .initial_stream_window_size(Some(16 << 10))
        .connect()
        .await
        .unwrap();
    let mut watcher = v1::query_client::QueryClient::new(channel)
        .watch(v1::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();

    // 32 servers, each changing every 10 ms: thousands of events a second.
    let mut agents = Vec::new();
    for i in 0..32 {
        let id = format!("slow-watch-{i}");
        let stream = pgfleet_tests::agent_stream(&url, &id, None).await.unwrap();
        agents.push(tokio::spawn(stream_changes(
            stream,
            id,
            Duration::from_secs(10),
        )));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;

    // Ingest went on meanwhile: every server was applied a moment ago.
    let mut client = v1::query_client::QueryClient::connect(url.clone())
        .await
        .unwrap();
    let servers = client
        .list_servers(v1::ListServersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .servers;
    assert_eq!(servers.len(), 32);
    let now = pgfleet_proto::time::now_micros();
    for s in &servers {
        let seen = pgfleet_proto::time::timestamp_micros(s.last_seen.as_ref().unwrap());
        assert!(
            now - seen < 2_000_000,
            "{} last seen {} ms ago",
            s.server_id,
            (now - seen) / 1000
        );
        let applied = s.stream.unwrap().last_seq;
        assert!(
            applied >= 100,
            "{} applied only {applied} batches",
            s.server_id
        );
    }

    // The watcher, reading at last, gets what was on its way, then the status.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut events = 0;
        loop {
            match watcher.message().await {
                Ok(Some(_)) => events += 1,
                Ok(None) => {
                    return Err(format!(
                        "the stream ended without a status after {events} events"
                    ));
                }
                Err(status) => return Ok((status, events)),
            }
        }
    })
    .await
    .expect("the watcher's stream ends within 30 s");
    let (status, events) = ended.unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fell 4096 events behind"),
        "{status:?}"
    );
    assert!(
        events < 4096,
        "the queue of a dropped watcher is not sent: {events}"
    );
    for a in agents {
        a.await.unwrap();
    }
    collector.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

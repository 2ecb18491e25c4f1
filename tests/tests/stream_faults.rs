//! The stream under faults, with real processes and real sockets: a collector
//! that goes away, an agent killed with batches in its disk spool, and an
//! outage longer than the spool.

use std::time::Duration;

use pgfleet_proto::v1;
use pgfleet_tests::faultproxy::{FaultProxy, Faults};
use pgfleet_tests::{Client, fleet, server, sessions, wait_for, wait_for_status};

/// The stream counts of `server_id` once `ready` holds for them.
async fn stream_when(
    client: &Client,
    server_id: &str,
    what: &str,
    limit: Duration,
    ready: impl Fn(&v1::Server) -> bool,
) -> v1::Server {
    wait_for(what, limit, || {
        let mut c = client.clone();
        let ready = &ready;
        async move {
            let s = server(&mut c, server_id).await?;
            if ready(&s) {
                Ok(s)
            } else {
                Err(format!("{:?} {:?}", s.stream, s.agent))
            }
        }
    })
    .await
}

/// Every batch that the agent numbered after `before` arrived, once and in
/// order: the new collector's first batch follows the old one's last, and no
/// number is missing from the run it applied.
fn assert_continues(before: &v1::StreamStats, after: &v1::StreamStats) {
    assert_eq!(
        after.first_seq,
        before.last_seq + 1,
        "the first batch after the outage follows the last before it; before {before:?}, after {after:?}"
    );
    assert_eq!(after.missing_batches, 0, "{after:?}");
    assert_eq!(
        after.applied_batches,
        after.last_seq - after.first_seq + 1,
        "every number applied once: {after:?}"
    );
}

/// Fault test 1: the collector is away for 30 s while the agent samples every
/// second. The batches of the outage wait in the agent's spool and all arrive,
/// each once and in order, so the collector's history has no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_away_for_30s_gets_every_batch_once_and_in_order() {
    let mut fleet = fleet("db-outage", &[]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-outage", "up", Duration::from_secs(20)).await;
    let old = fleet.collector.as_ref().unwrap().aggregator.clone();
    fleet
        .restart_collector(Duration::from_secs(30))
        .await
        .unwrap();
    // The old collector acknowledged all it applied as it stopped.
    let before = old.view().servers["db-outage"].stream;
    assert!(before.applied_batches > 0, "{before:?}");
    let client = fleet.client().await.unwrap();
    // 30 samples were taken while the collector was away (and more since).
    let after = stream_when(
        &client,
        "db-outage",
        "the outage's batches at the new collector",
        Duration::from_secs(60),
        |s| s.stream.is_some_and(|st| st.applied_batches >= 30),
    )
    .await;
    assert_continues(&before, &after.stream.unwrap());
    fleet.stop().await;
}

/// Fault test 2: the agent is killed (SIGKILL) while its disk spool holds
/// batches the collector never saw; started again, it sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_a_disk_spool_survive_a_killed_agent() {
    let mut fleet = fleet("db-spool-host", &[]).await;
    let spool = fleet.cluster.dir().join("agent-spool");
    let target = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        fleet.cluster.port()
    );
    let start_agent = |url: &str| {
        tokio::process::Command::new(pgfleet_tests::agent_binary())
            .args([
                "--collector",
                url,
                "--target",
                &target,
                "--server-id",
                "db-spooled",
                "--agent-id",
                "spooled-bin",
                "--interval",
                "200ms",
                "--pool-reporter-listen",
                "off",
                "--spool-dir",
                spool.to_str().unwrap(),
            ])
            .env_remove("PGFLEET_CONFIG")
            .env("PGFLEET_LOG", "info")
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut agent = start_agent(&fleet.url);
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-spooled", "up", Duration::from_secs(20)).await;

    // The collector goes away; the agent goes on sampling into its spool.
    let collector = fleet.collector.take().unwrap();
    let old = collector.aggregator.clone();
    collector.stop().await;
    let before = old.view().servers["db-spooled"].stream;
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.kill().await.unwrap();

    fleet.restart_collector(Duration::ZERO).await.unwrap();
    let _agent = start_agent(&fleet.url);
    let client = fleet.client().await.unwrap();
    // About 15 batches were spooled in those 3 s.
    let after = stream_when(
        &client,
        "db-spooled",
        "the spooled batches at the new collector",
        Duration::from_secs(40),
        |s| s.stream.is_some_and(|st| st.applied_batches >= 12),
    )
    .await;
    // Without the disk spool, the new agent would number from 1 again.
    assert_continues(&before, &after.stream.unwrap());
    fleet.stop().await;
}

/// Fault test 3: an outage longer than a small spool holds. The oldest
/// batches are dropped and counted, the collector shows the count, and the
/// stream resumes with keyframes: the collector's sessions are the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_spool_drops_the_oldest_and_the_collector_shows_it() {
    let fleet = fleet("db-cap-host", &[]).await;
    let upstream = fleet.url.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream)
        .await
        .unwrap();
    let mut config = fleet.agent_config("db-cap", fleet.cluster.config("pgfleet-cap"));
    config.collector = format!("http://{}", proxy.addr);
    config.interval = Duration::from_millis(100);
    config.spool_max_bytes = 64 << 10;
    config.pool_reporter = None;
    let agent = fleet.start_agent_with(config).unwrap();

    // Sessions that change at every sample, so that batches are not tiny
    // (about 35 bytes each per sample, as compact as deltas are): 12 of them
    // fill the 64 KiB spool in about 15 s of the 30 s cut.
    let mut workers = Vec::new();
    for i in 0..12 {
        let db = fleet.cluster.connect(&format!("churn-{i}")).await.unwrap();
        workers.push(tokio::spawn(async move {
            loop {
                if db.simple_query("SELECT pg_sleep(0.03)").await.is_err() {
                    return;
                }
            }
        }));
    }
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-cap", "up", Duration::from_secs(20)).await;

    proxy.set(Faults {
        cut: true,
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.set(Faults::default());

    let seen = stream_when(
        &client,
        "db-cap",
        "the drops to show at the collector",
        Duration::from_secs(60),
        // The counters travel in the snapshots, so the first ones after the
        // cut carry a drop count from before the last drops: wait until the
        // agent's count has caught up with the gaps the collector saw (it
        // must, as a batch missing at the collector was dropped by the agent;
        // a batch the collector applied but had not acknowledged when the link
        // went may be dropped by the agent too, so missing may be fewer).
        |s| {
            let dropped = s.agent.map_or(0, |a| a.spool_dropped_batches_total);
            let missing = s.stream.map_or(0, |st| st.missing_batches);
            dropped > 0 && missing > 0 && missing <= dropped
        },
    )
    .await;
    let dropped = seen.agent.unwrap().spool_dropped_batches_total;
    let missing = seen.stream.unwrap().missing_batches;
    println!(
        "spool cap 64 KiB through a 30 s cut: {dropped} batches dropped, {missing} missing at the collector"
    );

    // The deltas that followed the dropped batches had no base; keyframes
    // replaced them, and the collector holds exactly the server's sessions.
    let mut c = client.clone();
    wait_for(
        "the collector's sessions to be the server's",
        Duration::from_secs(20),
        || {
            let mut c = c.clone();
            let probe = fleet.cluster.connect("probe-cap");
            async move {
                let db = probe.await.map_err(|e| e.to_string())?;
                let rows = db
                    .query(
                        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'churn-%' ORDER BY pid",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let real: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
                let all = sessions(&mut c, "db-cap").await?;
                let mut held: Vec<i32> = all
                    .iter()
                    .filter(|s| s.application_name.starts_with("churn-"))
                    .map(|s| s.pid)
                    .collect();
                held.sort_unstable();
                if held == real && real.len() == 12 {
                    Ok(())
                } else {
                    Err(format!("collector {held:?}, server {real:?}"))
                }
            }
        },
    )
    .await;
    let after = server(&mut c, "db-cap").await.unwrap();
    assert_eq!(after.status, "up", "{after:?}");
    for w in workers {
        w.abort();
    }
    agent.stop().await;
    fleet.stop().await;
}

fn raw_batch(
    seq: u64,
    server_id: &str,
    at: i64,
    activity: v1::snapshot::Activity,
) -> v1::AgentMessage {
    raw_batch_with(seq, server_id, at, activity, vec![])
}

fn raw_batch_with(
    seq: u64,
    server_id: &str,
    at: i64,
    activity: v1::snapshot::Activity,
    dictionary_additions: Vec<v1::DictionaryEntry>,
) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Batch(v1::Batch {
            seq,
            dictionary_additions,
            snapshots: vec![v1::Snapshot {
                server_id: server_id.to_owned(),
                sampled_at_us: at,
                status: Some(v1::TargetStatus {
                    up: true,
                    reason: String::new(),
                }),
                activity: Some(activity),
                ..Default::default()
            }],
        })),
    }
}

fn sample(pid: i32, database_ref: u32) -> v1::SessionSample {
    v1::SessionSample {
        pid,
        backend_start_us: 1000 + i64::from(pid),
        state: v1::SessionState::Idle as i32,
        database_ref,
        ..Default::default()
    }
}

/// Waits for the next message that is not an ack; returns the servers a
/// KeyframeRequest names.
async fn keyframe_request(inbound: &mut tonic::Streaming<v1::CollectorMessage>) -> Vec<String> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("an answer within 5 s")
            .unwrap()
            .and_then(|m| m.msg);
        match m {
            Some(v1::collector_message::Msg::KeyframeRequest(r)) => return r.server_ids,
            Some(v1::collector_message::Msg::Ack(_)) => continue,
            other => panic!("expected a KeyframeRequest, got {other:?}"),
        }
    }
}

/// A batch dropped on purpose: the delta that follows it has no base at the
/// collector, which refuses it and asks for a keyframe, and never applies it
/// to the wrong base. A reference to a dictionary entry the stream never sent
/// is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_whose_base_was_dropped_is_refused_with_a_keyframe_request() {
    use v1::snapshot::Activity;
    let fleet = fleet("db-drop-host", &[]).await;
    let id = "raw-drop";
    let (tx, mut inbound) = pgfleet_tests::agent_stream(&fleet.url, id, None)
        .await
        .unwrap();
    let orders = v1::DictionaryEntry {
        id: 1,
        value: "orders".into(),
    };
    tx.send(raw_batch_with(
        1,
        id,
        10,
        Activity::Keyframe(v1::ActivityKeyframe {
            sessions: vec![sample(1, 1), sample(2, 1)],
        }),
        vec![orders],
    ))
    .await
    .unwrap();
    // Batch 2, a delta at 20, is dropped. Batch 3 is a delta against it.
    let mut changed = sample(3, 0);
    changed.unchanged = pgfleet_proto::compact::field::DATABASE;
    tx.send(raw_batch(
        3,
        id,
        30,
        Activity::Delta(v1::ActivityDelta {
            base_sampled_at_us: 20,
            upserted: vec![changed],
            removed: vec![],
        }),
    ))
    .await
    .unwrap();
    assert_eq!(keyframe_request(&mut inbound).await, [id]);
    let mut client = fleet.client().await.unwrap();
    let pids = |all: Vec<v1::Session>| {
        let mut p: Vec<(i32, String)> = all.into_iter().map(|s| (s.pid, s.database)).collect();
        p.sort();
        p
    };
    assert_eq!(
        pids(sessions(&mut client, id).await.unwrap()),
        [(1, "orders".into()), (2, "orders".into())],
        "nothing of the refused delta was applied"
    );

    // A keyframe that refers to a dictionary entry the stream never sent.
    tx.send(raw_batch(
        4,
        id,
        40,
        Activity::Keyframe(v1::ActivityKeyframe {
            sessions: vec![sample(1, 99)],
        }),
    ))
    .await
    .unwrap();
    assert_eq!(keyframe_request(&mut inbound).await, [id]);

    // The keyframe the agent sends then is applied.
    tx.send(raw_batch(
        5,
        id,
        50,
        Activity::Keyframe(v1::ActivityKeyframe {
            sessions: vec![sample(1, 1), sample(3, 1)],
        }),
    ))
    .await
    .unwrap();
    drop(tx);
    let s = stream_when(
        &client,
        id,
        "batch 5 applied",
        Duration::from_secs(10),
        |s| s.stream.is_some_and(|st| st.last_seq == 5),
    )
    .await
    .stream
    .unwrap();
    assert_eq!(
        pids(sessions(&mut client, id).await.unwrap()),
        [(1, "orders".into()), (3, "orders".into())]
    );
    assert_eq!((s.missing_batches, s.refused_deltas), (1, 1), "{s:?}");
    fleet.stop().await;
}

//! A buggy or hostile agent gets a status that names the bound it broke, and
//! the collector keeps nothing of what it refused: a message over the limit,
//! a snapshot dated in the future, too many sessions or snapshots, too long
//! a string.

use std::time::Duration;

use pgfleet_collector::ingest;
use pgfleet_proto::v1::{self, agent_message, collector_message};
use pgfleet_tests::{agent_stream, batch_message, fleet, server, wait_for_status};

fn batch(seq: u64, server_id: &str, sampled_at_us: i64, padding: usize) -> v1::AgentMessage {
    let snapshot = v1::Snapshot {
        server_id: server_id.to_owned(),
        sampled_at_us,
        status: Some(v1::TargetStatus {
            up: false,
            reason: "x".repeat(padding),
        }),
        ..Default::default()
    };
    batch_message(seq, vec![snapshot])
}

/// The stream's next message, which must be its end with a status.
async fn refusal(inbound: &mut tonic::Streaming<v1::CollectorMessage>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("the collector answers within 10 s")
        {
            Err(status) => return status,
            Ok(Some(v1::CollectorMessage {
                msg: Some(collector_message::Msg::Ack(_)),
            })) => continue,
            Ok(other) => panic!("a status was expected, not {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_broken_by_an_agent_is_refused_with_a_status_that_names_it() {
    let fleet = fleet("db-hostile", &[]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-hostile", "up", Duration::from_secs(20)).await;
    let now = pgfleet_proto::time::now_micros();

    // 28 MB in one message: RESOURCE_EXHAUSTED, with the limit (it used to
    // end the stream with OK, and an agent would resend it for ever).
    let (tx, mut inbound) = agent_stream(&fleet.url, "raw-big", None).await.unwrap();
    tx.send(batch(1, "raw-big", now, 28 << 20)).await.unwrap();
    let status = refusal(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains(&pgfleet_proto::MAX_MESSAGE_BYTES.to_string()),
        "{status:?}"
    );

    // Sampled in the year 146,000: INVALID_ARGUMENT, naming the clock skew.
    let (tx, mut inbound) = agent_stream(&fleet.url, "raw-future", None).await.unwrap();
    tx.send(batch(1, "raw-future", 1 << 62, 0)).await.unwrap();
    let status = refusal(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("clock skew"), "{status:?}");
    // Within the skew allowed is fine (a clock a little ahead).
    let (tx, mut inbound) = agent_stream(&fleet.url, "raw-ahead", None).await.unwrap();
    tx.send(batch(1, "raw-ahead", now + 60_000_000, 0))
        .await
        .unwrap();
    drop(tx);
    let last = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            last.and_then(|m| m.msg),
            Some(collector_message::Msg::Ack(v1::Ack { seq: 1 }))
        ),
        "a minute ahead is acknowledged"
    );

    // Every other bound, named in the status.
    let keyframe = |id: &str, sessions: usize| v1::Snapshot {
        server_id: id.to_owned(),
        sampled_at_us: now,
        status: Some(v1::TargetStatus {
            up: true,
            reason: String::new(),
        }),
        activity: Some(v1::snapshot::Activity::Keyframe(v1::ActivityKeyframe {
            sessions: (0..sessions)
                .map(|i| v1::SessionSample {
                    pid: i as i32 + 1,
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    };
    let batches = [
        (
            "raw-sessions",
            v1::Batch {
                seq: 1,
                dictionary_additions: vec![],
                snapshots: vec![keyframe(
                    "raw-sessions",
                    ingest::MAX_SESSIONS_PER_SNAPSHOT + 1,
                )],
            },
            "the number of sessions",
        ),
        (
            "raw-string",
            v1::Batch {
                seq: 1,
                dictionary_additions: vec![v1::DictionaryEntry {
                    id: 1,
                    value: "x".repeat(ingest::MAX_STRING_BYTES + 1),
                }],
                snapshots: vec![keyframe("raw-string", 1)],
            },
            "dictionary entry 1",
        ),
        (
            "raw-many",
            v1::Batch {
                seq: 1,
                dictionary_additions: vec![],
                snapshots: (0..=ingest::MAX_SNAPSHOTS_PER_BATCH)
                    .map(|_| keyframe("raw-many", 0))
                    .collect(),
            },
            "the number of snapshots",
        ),
    ];
    for (id, batch, bound) in batches {
        let (tx, mut inbound) = agent_stream(&fleet.url, id, None).await.unwrap();
        tx.send(v1::AgentMessage {
            msg: Some(agent_message::Msg::Batch(batch)),
        })
        .await
        .unwrap();
        let status = refusal(&mut inbound).await;
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{id}: {status:?}"
        );
        assert!(
            status.message().contains(bound) && status.message().contains("bound of"),
            "{id}: {status:?}"
        );
    }

    // Nothing of the refused batches was kept; everyone else is served.
    for (id, kept) in [
        ("raw-big", false),
        ("raw-future", false),
        ("raw-sessions", false),
        ("raw-string", false),
        ("raw-many", false),
        ("raw-ahead", true),
    ] {
        let s = server(&mut client.clone(), id).await.unwrap();
        assert_eq!(s.last_seen.is_some(), kept, "{id}: {s:?}");
    }
    wait_for_status(&client, "db-hostile", "up", Duration::from_secs(5)).await;
    fleet.stop().await;
}

//! The collector's history in its SQLite store: it survives a restart, the
//! agents resume where the store says they stopped, and GetActivity answers
//! for a past instant.

use std::time::Duration;

use pgfleet_proto::time::{now_micros, timestamp};
use pgfleet_proto::v1;
use pgfleet_tests::{by_app, fleet, server, sessions, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_and_answers_for_a_past_instant() {
    let mut fleet = fleet("db-hist", &[("dc", "eu1")]).await;
    let early = fleet.cluster.connect("hist-early").await.unwrap();
    let mut client = fleet.client().await.unwrap();
    wait_for(
        "hist-early at the collector",
        Duration::from_secs(20),
        || {
            let mut c = client.clone();
            async move { by_app(&sessions(&mut c, "db-hist").await?, "hist-early").map(|_| ()) }
        },
    )
    .await;
    let then = now_micros();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The session ends; the live view forgets it.
    drop(early);
    wait_for("hist-early to end", Duration::from_secs(20), || {
        let mut c = client.clone();
        async move {
            match by_app(&sessions(&mut c, "db-hist").await?, "hist-early") {
                Ok(_) => Err("still there".to_owned()),
                Err(_) => Ok(()),
            }
        }
    })
    .await;

    // A new collector on the same data directory.
    let old = fleet.collector.as_ref().unwrap().aggregator.clone();
    fleet
        .restart_collector(Duration::from_secs(2))
        .await
        .unwrap();
    let before = old.view().servers["db-hist"].stream;
    client = fleet.client().await.unwrap();
    let restored = server(&mut client, "db-hist").await.unwrap();
    assert_eq!(restored.labels["dc"], "eu1", "{restored:?}");

    // The past, from the store: hist-early was there.
    let past = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-hist".into(),
            at: Some(timestamp(then)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        by_app(&past.sessions, "hist-early").is_ok(),
        "{:?}",
        past.sessions
    );
    let sampled = pgfleet_proto::time::timestamp_micros(past.sampled_at.as_ref().unwrap());
    assert!(
        sampled <= then && then - sampled < 3_000_000,
        "{sampled} vs {then}"
    );

    // The same instant through the CLI, as a table and as CSV.
    let when = humantime::format_rfc3339_micros(pgfleet_proto::time::micros_to_system_time(then))
        .to_string();
    for (output, header) in [("table", "PID "), ("csv", "PID,")] {
        let out = std::process::Command::new(pgfleet_tests::workspace_binary("pgfleet"))
            .args(["--collector", &fleet.url, "--output", output])
            .args(["activity", "db-hist", "--at", &when])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.lines().any(|l| l.starts_with(header)) && text.contains("hist-early"),
            "{output}: {text}"
        );
    }

    // The agent resumes right after the sequence the store kept.
    let after = wait_for("the agent to resume", Duration::from_secs(40), || {
        let mut c = client.clone();
        async move {
            let s = server(&mut c, "db-hist").await?.stream.unwrap_or_default();
            if s.applied_batches > 0 {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    assert_eq!(
        after.first_seq,
        before.last_seq + 1,
        "{before:?} then {after:?}"
    );

    // Bad instants.
    let future = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-hist".into(),
            at: Some(timestamp(now_micros() + 3_600_000_000)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(future.code(), tonic::Code::InvalidArgument);
    let too_early = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-hist".into(),
            at: Some(timestamp(then - 3_600_000_000)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_early.code(), tonic::Code::NotFound, "{too_early:?}");
    fleet.stop().await;
}

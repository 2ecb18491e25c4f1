//! One session's journey: PostgreSQL → agent → collector → Query API, over real
//! sockets, against a real PostgreSQL started by the test.

use std::time::{Duration, Instant};

use pgfleet_proto::time::{duration, timestamp_micros};
use pgfleet_proto::v1;
use pgfleet_tests::{by_app, fleet, sessions, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_appears_within_three_seconds_with_its_details() {
    let fleet = fleet("db-sleep", &[("dc", "eu1")]).await;
    let mut client = fleet.client().await.unwrap();
    // Let the agent connect first, so the measured span is sampling, not start-up.
    pgfleet_tests::wait_for_status(&client, "db-sleep", "up", Duration::from_secs(20)).await;

    let sleeper = fleet.cluster.connect("t-sleeper").await.unwrap();
    let started = Instant::now();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(30)").await });
    let session = wait_for("the pg_sleep session", Duration::from_secs(3), || {
        let mut c = client.clone();
        async move {
            let all = sessions(&mut c, "db-sleep").await?;
            let s = by_app(&all, "t-sleeper")?;
            if s.state == "active" {
                Ok(s.clone())
            } else {
                Err(format!("state {:?}", s.state))
            }
        }
    })
    .await;
    let seen_after = started.elapsed();
    assert!(
        seen_after < Duration::from_secs(3),
        "seen after {seen_after:?}"
    );
    assert_eq!(
        session.query, "SELECT pg_sleep(?)",
        "literals are masked by default"
    );
    assert_eq!(session.database, "postgres");
    assert_eq!(session.user, "postgres");
    assert_eq!(session.backend_type, "client backend");
    assert_eq!(session.wait_event_type, "Timeout");
    assert_eq!(session.wait_event, "PgSleep");
    let query_start = session.query_start.expect("query_start is set");
    let now_us = pgfleet_proto::time::now_micros();
    assert!(
        (now_us - timestamp_micros(&query_start)).abs() < 10_000_000,
        "query_start {query_start:?}"
    );
    assert!(session.backend_start.is_some() && session.pid > 0);

    // The filters: a minimum duration longer than the query hides it.
    let hidden = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-sleep".into(),
            min_duration: Some(duration(3_600_000_000)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        hidden
            .sessions
            .iter()
            .all(|s| s.application_name != "t-sleeper")
    );
    let active = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-sleep".into(),
            state: "active".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        active
            .sessions
            .iter()
            .any(|s| s.application_name == "t-sleeper")
    );
    assert!(active.sessions.iter().all(|s| s.state == "active"));
    query.abort();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_and_lock_waits_show_with_their_blocker() {
    let fleet = fleet("db-locks", &[]).await;
    let mut client = fleet.client().await.unwrap();
    let setup = fleet.cluster.connect("t-setup").await.unwrap();
    setup
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);")
        .await
        .unwrap();

    let holder = fleet.cluster.connect("t-holder").await.unwrap();
    holder
        .batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id = 1;")
        .await
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let waiter = fleet.cluster.connect("t-waiter").await.unwrap();
    let waiting = tokio::spawn(async move {
        waiter
            .simple_query("UPDATE t SET v = v + 10 WHERE id = 1")
            .await
    });

    let (holder_seen, waiter_seen) =
        wait_for("the holder and the waiter", Duration::from_secs(10), || {
            let mut c = client.clone();
            async move {
                let all = sessions(&mut c, "db-locks").await?;
                let h = by_app(&all, "t-holder")?.clone();
                let w = by_app(&all, "t-waiter")?.clone();
                if w.blocked_by.is_empty() || h.state != "idle in transaction" {
                    return Err(format!(
                        "holder {:?}, waiter blocked_by {:?}",
                        h.state, w.blocked_by
                    ));
                }
                Ok((h, w))
            }
        })
        .await;
    assert_eq!(holder_seen.pid, holder_pid);
    assert_eq!(holder_seen.state, "idle in transaction");
    assert!(holder_seen.xact_start.is_some());
    assert_eq!(waiter_seen.state, "active");
    assert_eq!(waiter_seen.wait_event_type, "Lock");
    assert_eq!(waiter_seen.wait_event, "transactionid");
    assert_eq!(waiter_seen.blocked_by, vec![holder_pid]);

    // Only sessions waiting on a Lock get blockers.
    let all = sessions(&mut client, "db-locks").await.unwrap();
    for s in all.iter().filter(|s| s.wait_event_type != "Lock") {
        assert!(s.blocked_by.is_empty(), "{s:?}");
    }
    // The state filter speaks PostgreSQL's words and the CLI's.
    for filter in ["idle in transaction", "idle-in-transaction"] {
        let r = client
            .get_activity(v1::GetActivityRequest {
                server_id: "db-locks".into(),
                state: filter.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let apps: Vec<_> = r
            .sessions
            .iter()
            .map(|s| s.application_name.as_str())
            .collect();
        assert_eq!(apps, ["t-holder"], "filter {filter:?}");
    }

    holder.batch_execute("ROLLBACK").await.unwrap();
    let _ = waiting.await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_sessions_never_appear() {
    let fleet = fleet("db-self", &[]).await;
    let client = fleet.client().await.unwrap();
    // A user session that calls itself pgfleet-agent is still shown: only the
    // agent's own role is excluded, so nobody can hide behind the name.
    let imposter_role = fleet.cluster.connect("t-setup").await.unwrap();
    imposter_role
        .batch_execute("CREATE ROLE imposter LOGIN")
        .await
        .unwrap();
    let mut config = fleet.cluster.config("pgfleet-agent");
    config.user("imposter");
    let (imposter, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    imposter.simple_query("SELECT 1").await.unwrap();

    for _ in 0..5 {
        let all = wait_for("a snapshot", Duration::from_secs(10), || {
            let mut c = client.clone();
            async move {
                sessions(&mut c, "db-self").await.and_then(|s| {
                    if s.iter().any(|s| s.user == "imposter") {
                        Ok(s)
                    } else {
                        Err("no imposter yet".into())
                    }
                })
            }
        })
        .await;
        let agents: Vec<_> = all
            .iter()
            .filter(|s| s.application_name == "pgfleet-agent" && s.user == "postgres")
            .collect();
        assert!(agents.is_empty(), "the agent sees itself: {agents:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // The agent does have a session on the server, named as promised.
    let own: i64 = imposter_role
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfleet-agent' AND usename = 'postgres'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((1..=2).contains(&own), "the agent holds {own} connections");
    drop(imposter);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_clear_statuses() {
    let fleet = fleet("db-errors", &[]).await;
    let mut client = fleet.client().await.unwrap();
    let unknown = client
        .get_activity(v1::GetActivityRequest {
            server_id: "no-such-db".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("no-such-db"),
        "{}",
        unknown.message()
    );
    let bad_state = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-errors".into(),
            state: "sleeping".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_state.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_state.message().contains("idle in transaction"),
        "{}",
        bad_state.message()
    );
    let missing = client
        .get_activity(v1::GetActivityRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    fleet.stop().await;
}

//! What the agent reads of each session: the columns of the server's version,
//! parallel workers tied to their leader, fingerprints, ages, sessions the role
//! may not see, and `--once`.

use std::process::Command;
use std::time::Duration;

use pgfleet_proto::v1;
use pgfleet_tests::{agent_binary, by_app, fleet_with, sessions, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_leader_pid_query_id_fingerprint_and_ages() {
    // compute_query_id fills pg_stat_activity.query_id without pg_stat_statements.
    let fleet = fleet_with("db-columns", &[("compute_query_id", "on")]).await;
    let client = fleet.client().await.unwrap();

    let leader = fleet.cluster.connect("t-parallel").await.unwrap();
    leader
        .batch_execute("SET force_parallel_mode = on; SET parallel_setup_cost = 0")
        .await
        .unwrap();
    let _parallel = tokio::spawn(async move { leader.simple_query("SELECT pg_sleep(30)").await });
    let mut others = Vec::new();
    for (app, seconds) in [("t-sleep-a", 29), ("t-sleep-b", 28)] {
        let c = fleet.cluster.connect(app).await.unwrap();
        others.push(tokio::spawn(async move {
            c.simple_query(&format!("SELECT pg_sleep({seconds})")).await
        }));
    }

    let all = wait_for(
        "a parallel worker and its leader",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            async move {
                let all = sessions(&mut c, "db-columns").await?;
                let leader = by_app(&all, "t-parallel")?;
                if all
                    .iter()
                    .any(|s| s.backend_type == "parallel worker" && s.leader_pid == leader.pid)
                    && ["t-sleep-a", "t-sleep-b"]
                        .iter()
                        .all(|app| by_app(&all, app).is_ok_and(|s| s.state == "active"))
                {
                    Ok(all)
                } else {
                    Err(format!(
                        "{} sessions, no worker of {} yet",
                        all.len(),
                        leader.pid
                    ))
                }
            }
        },
    )
    .await;
    let leader = by_app(&all, "t-parallel").unwrap();
    assert_eq!(leader.leader_pid, 0, "a leader has no leader");
    assert_ne!(leader.query_id, 0, "query_id is sampled on PostgreSQL 14+");
    assert_eq!(leader.query, "SELECT pg_sleep(?)");
    let (a, b) = (
        by_app(&all, "t-sleep-a").unwrap(),
        by_app(&all, "t-sleep-b").unwrap(),
    );
    assert_eq!(a.fingerprint.len(), 16, "{:?}", a.fingerprint);
    assert_eq!(
        a.fingerprint, b.fingerprint,
        "same statement, other values: {a:?} {b:?}"
    );
    assert_eq!(a.fingerprint, leader.fingerprint);
    for s in [leader, a, b] {
        assert!(
            s.xact_age.is_some() && s.query_age.is_some() && s.state_age.is_some(),
            "{s:?}"
        );
    }
    let background: Vec<_> = all.iter().map(|s| s.backend_type.as_str()).collect();
    assert!(background.contains(&"checkpointer"), "{background:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_pg_monitor_reports_sessions_as_not_visible_never_idle() {
    let fleet = fleet_with("db-nopriv", &[]).await;
    let admin = fleet.cluster.connect("t-admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE watcher LOGIN")
        .await
        .unwrap();
    // An idle session of another role: a role without pg_monitor must not call
    // it idle, for it cannot know.
    let _idle = fleet.cluster.connect("t-idle-other").await.unwrap();

    let mut target = fleet.cluster.config("unused");
    target.user("watcher");
    let config = fleet.agent_config("db-as-watcher", target);
    let agent = fleet.start_agent_with(config).unwrap();

    let client = fleet.client().await.unwrap();
    let all = wait_for(
        "sessions sampled as watcher",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            async move {
                let all = sessions(&mut c, "db-as-watcher").await?;
                (all.len() > 1)
                    .then_some(all)
                    .ok_or("no sessions yet".to_owned())
            }
        },
    )
    .await;
    let hidden: Vec<_> = all.iter().filter(|s| s.state == "not visible").collect();
    assert!(!hidden.is_empty(), "{all:?}");
    assert!(
        all.iter().all(|s| s.state != "idle" || s.user == "watcher"),
        "only the role's own sessions may be called idle: {all:?}"
    );
    assert!(hidden.iter().all(|s| s.query.is_empty()), "{hidden:?}");
    let server = pgfleet_tests::server(&mut client.clone(), "db-as-watcher")
        .await
        .unwrap();
    assert!(server.agent.unwrap().not_visible_sessions > 0);

    // The fix the agent names works at once.
    admin
        .batch_execute("GRANT pg_monitor TO watcher")
        .await
        .unwrap();
    wait_for(
        "every session to be visible",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            async move {
                let all = sessions(&mut c, "db-as-watcher").await?;
                let idle = by_app(&all, "t-idle-other")?;
                match all.iter().filter(|s| s.state == "not visible").count() {
                    0 if idle.state == "idle" => Ok(()),
                    n => Err(format!("{n} not visible; t-idle-other is {:?}", idle.state)),
                }
            }
        },
    )
    .await;
    agent.stop().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_a_complete_sample_and_warns_about_the_missing_grant() {
    let fleet = fleet_with("db-once", &[]).await;
    let admin = fleet.cluster.connect("t-admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE peeker LOGIN")
        .await
        .unwrap();
    let _busy = fleet.cluster.connect("t-busy").await.unwrap();
    let port = fleet.cluster.port().to_string();

    let run_with = |user: &str, mode: &str| {
        Command::new(agent_binary())
            .args([
                "--query-text",
                mode,
                "--once",
                "--target",
                &format!("postgres://{user}@127.0.0.1:{port}/postgres"),
                "--server-id",
                "db-once",
                "--pool-reporter-listen",
                "off",
            ])
            .env_remove("PGFLEET_CONFIG")
            .env_remove("PGFLEET_LOG")
            .output()
            .unwrap()
    };
    let run = |user: &str| run_with(user, "masked");
    let out = run("postgres");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sample = &json[0];
    assert_eq!(sample["server_id"], "db-once");
    assert_eq!(sample["status"], "up");
    assert!(
        sample["info"]["version_num"].as_u64() >= Some(150000),
        "{sample}"
    );
    assert!(sample["info"]["system_identifier"].as_u64() > Some(0));
    assert!(
        sample["slots"]["used"].as_u64() >= Some(2),
        "{}",
        sample["slots"]
    );
    let apps: Vec<_> = sample["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["application_name"].as_str().unwrap_or(""))
        .collect();
    assert!(apps.contains(&"t-busy"), "{apps:?}");
    assert!(
        !apps.contains(&"pgfleet-agent"),
        "own sessions are excluded: {apps:?}"
    );
    let dbs: Vec<_> = sample["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["database"].as_str().unwrap_or(""))
        .collect();
    assert!(
        dbs.contains(&"postgres") && !dbs.contains(&"template0"),
        "{dbs:?}"
    );
    let postgres = sample["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "postgres")
        .unwrap();
    assert!(
        postgres["xact_commit"].as_u64() > Some(0),
        "totals, not increments"
    );
    assert_eq!(sample["client_pools"][0]["kind"], "agent");

    // The other query_text modes: raw text, and no text but the fingerprint.
    let busy = fleet.cluster.connect("t-literal").await.unwrap();
    let _literal =
        tokio::spawn(async move { busy.simple_query("SELECT 'secret', pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let literal = |out: &std::process::Output| {
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = json[0]["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["application_name"] == "t-literal")
            .cloned()
            .expect("the literal session");
        (
            s["query"].as_str().unwrap().to_owned(),
            s["fingerprint"].as_str().unwrap().to_owned(),
        )
    };
    let (masked, fp) = literal(&run("postgres"));
    assert_eq!(masked, "SELECT ?, pg_sleep(?)");
    let (raw, fp_raw) = literal(&run_with("postgres", "raw"));
    assert_eq!(raw, "SELECT 'secret', pg_sleep(20)");
    let (none, fp_none) = literal(&run_with("postgres", "none"));
    assert_eq!(none, "");
    assert!(
        fp.len() == 16 && fp == fp_raw && fp == fp_none,
        "{fp} {fp_raw} {fp_none}"
    );

    let out = run("peeker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("GRANT pg_monitor TO peeker;"), "{stderr}");
    assert_eq!(
        stderr.matches("GRANT pg_monitor").count(),
        1,
        "warned once: {stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<_> = json[0]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap_or(""))
        .collect();
    assert!(states.contains(&"not visible"), "{states:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_and_says_why_when_a_target_is_down() {
    let port = pgfleet_tests::free_port().unwrap();
    let out = Command::new(agent_binary())
        .args([
            "--once",
            "--target",
            &format!("postgres://nobody@127.0.0.1:{port}/postgres"),
            "--pool-reporter-listen",
            "off",
        ])
        .env_remove("PGFLEET_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["status"], "down");
    let reason = json[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused") || reason.contains("connect"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_complete_when_only_changes_are_read_and_sent() {
    let fleet = fleet_with("db-steady", &[]).await;
    let client = fleet.client().await.unwrap();
    let steady = fleet.cluster.connect("t-steady").await.unwrap();
    steady
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    steady.simple_query("SELECT 42").await.unwrap();
    let in_xact = fleet.cluster.connect("t-in-xact").await.unwrap();
    in_xact.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let long = fleet.cluster.connect("t-long").await.unwrap();
    let _long = tokio::spawn(async move { long.simple_query("SELECT pg_sleep(30)").await });
    // A lock wait that lasts: its details are read every time, for its blockers.
    in_xact.batch_execute("UPDATE t SET id = 1").await.unwrap();
    let waiter = fleet.cluster.connect("t-waiter").await.unwrap();
    let _waiter = tokio::spawn(async move {
        waiter
            .simple_query("UPDATE t SET id = 1 WHERE id = 1")
            .await
    });

    // Several samples pass: after the first, unchanged sessions are neither read
    // in full from PostgreSQL nor sent to the collector.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let all = sessions(&mut client.clone(), "db-steady").await.unwrap();
    let s = by_app(&all, "t-steady").unwrap();
    assert_eq!((s.state.as_str(), s.query.as_str()), ("idle", "SELECT ?"));
    assert_eq!(
        (s.database.as_str(), s.user.as_str()),
        ("postgres", "postgres")
    );
    assert!(s.client.starts_with("127.0.0.1:"), "{s:?}");
    assert_eq!(
        by_app(&all, "t-in-xact").unwrap().state,
        "idle in transaction"
    );
    let l = by_app(&all, "t-long").unwrap();
    assert_eq!(
        (l.state.as_str(), l.wait_event.as_str()),
        ("active", "PgSleep")
    );
    let w = by_app(&all, "t-waiter").unwrap();
    let x = by_app(&all, "t-in-xact").unwrap();
    assert_eq!(
        (w.state.as_str(), w.wait_event_type.as_str()),
        ("active", "Lock")
    );
    assert_eq!(w.blocked_by, [x.pid]);
    assert_eq!(
        (w.database.as_str(), w.query.as_str()),
        ("postgres", "UPDATE t SET id = ? WHERE id = ?")
    );

    // A change is seen at the next sample.
    steady.simple_query("SELECT 'changed', 7").await.unwrap();
    in_xact.batch_execute("COMMIT").await.unwrap();
    wait_for("the changes", Duration::from_secs(3), || {
        let mut c = client.clone();
        async move {
            let all = sessions(&mut c, "db-steady").await?;
            let s = by_app(&all, "t-steady")?;
            let x = by_app(&all, "t-in-xact")?;
            if s.query == "SELECT ?, ?" && x.state == "idle" {
                Ok(())
            } else {
                Err(format!("{:?} / {:?}", s.query, x.state))
            }
        }
    })
    .await;
    // A session that ends is removed.
    drop(steady);
    wait_for("the closed session to go", Duration::from_secs(3), || {
        let mut c = client.clone();
        async move {
            let all = sessions(&mut c, "db-steady").await?;
            by_app(&all, "t-steady").map_or(Ok(()), |_| Err("still there".to_owned()))
        }
    })
    .await;
    let stats = &fleet.agent.as_ref().unwrap().stats[0].1;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(load(&stats.samples) >= 5);
    assert_eq!(load(&stats.failed), 0, "every sample succeeded");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_holds_exactly_the_servers_sessions_through_churn() {
    let fleet = fleet_with("db-churn", &[]).await;
    let client = fleet.client().await.unwrap();
    let probe = fleet.cluster.connect("t-probe").await.unwrap();
    // Rounds of sessions opening, running, and half of them closing, across
    // samples: the agent sends only what changed, so any slip would leave a
    // session too many or too few at the collector.
    let mut open = Vec::new();
    for round in 0..4 {
        for i in 0..10 {
            let c = fleet
                .cluster
                .connect(&format!("t-churn-{round}-{i}"))
                .await
                .unwrap();
            c.simple_query("SELECT 1").await.unwrap();
            open.push(c);
        }
        open = open
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| (i % 2 == 0).then_some(c))
            .collect();
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    let server: Vec<i32> = probe
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 't-churn-%' ORDER BY pid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(server.len(), open.len());
    wait_for(
        "the collector to hold the server's sessions",
        Duration::from_secs(5),
        || {
            let mut c = client.clone();
            let server = server.clone();
            async move {
                let mut held: Vec<i32> = sessions(&mut c, "db-churn")
                    .await?
                    .iter()
                    .filter(|s| s.application_name.starts_with("t-churn-"))
                    .map(|s| s.pid)
                    .collect();
                held.sort();
                if held == server {
                    Ok(())
                } else {
                    Err(format!("held {held:?}, the server has {server:?}"))
                }
            }
        },
    )
    .await;
    drop(open);
    fleet.stop().await;
}

/// Which of `wanted` (application, state) the sessions `all` do not show: a
/// line each.
fn states_missed(all: &[v1::Session], wanted: &[(&str, &str)]) -> Result<Vec<String>, String> {
    let mut wrong = Vec::new();
    for (app, state) in wanted {
        let s = by_app(all, app)?;
        if s.state != *state {
            wrong.push(format!("{app} is {:?}, not {state:?}", s.state));
        }
    }
    Ok(wrong)
}

/// Every change of state a client session can make, each made between two
/// samples (so the agent, which reads in full only sessions whose timestamps
/// moved, must notice each one), and each seen by the collector: idle →
/// active, active → idle, idle → idle in transaction, idle in transaction →
/// active, active → idle in transaction (which moves neither query_start nor
/// xact_start), idle in transaction → idle, idle in transaction → aborted,
/// aborted → idle, and active → active with another query. Each new state
/// must show in the first sample the agent takes after the changes, not
/// merely at last (the agent reads every session in full now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_transition_between_two_samples_is_seen() {
    let fleet = fleet_with("db-moves", &[]).await;
    let client = fleet.client().await.unwrap();
    let connect = |name: &'static str| {
        let cluster = &fleet.cluster;
        async move { cluster.connect(name).await.unwrap() }
    };
    let idle_active = connect("m-idle-active").await;
    idle_active.simple_query("SELECT 1").await.unwrap();
    let idle_xact = connect("m-idle-xact").await;
    idle_xact.simple_query("SELECT 1").await.unwrap();
    let xact_active = connect("m-xact-active").await;
    xact_active.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let xact_idle = connect("m-xact-idle").await;
    xact_idle.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let xact_aborted = connect("m-xact-aborted").await;
    xact_aborted.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let aborted_idle = connect("m-aborted-idle").await;
    aborted_idle.batch_execute("BEGIN").await.unwrap();
    assert!(aborted_idle.simple_query("SELECT 1/0").await.is_err());
    // Three sessions run a query that ends by itself, 6 s from now: time for
    // the collector to see them active first.
    let active_idle = connect("m-active-idle").await;
    let active_idle = tokio::spawn(async move {
        active_idle
            .simple_query("SELECT pg_sleep(6)")
            .await
            .unwrap();
        active_idle
    });
    let active_xact = connect("m-active-xact").await;
    let active_xact = tokio::spawn(async move {
        active_xact
            .batch_execute("BEGIN; SELECT pg_sleep(6)")
            .await
            .unwrap();
        active_xact
    });
    let active_active = connect("m-active-active").await;
    let (first_ended, first_done) = tokio::sync::oneshot::channel();
    let _active_active = tokio::spawn(async move {
        active_active
            .simple_query("SELECT pg_sleep(6)")
            .await
            .unwrap();
        let _ = first_ended.send(());
        active_active
            .simple_query("SELECT pg_sleep(60), 'next'")
            .await
    });

    let first_states = [
        ("m-idle-active", "idle"),
        ("m-idle-xact", "idle"),
        ("m-xact-active", "idle in transaction"),
        ("m-xact-idle", "idle in transaction"),
        ("m-xact-aborted", "idle in transaction"),
        ("m-aborted-idle", "idle in transaction (aborted)"),
        ("m-active-idle", "active"),
        ("m-active-xact", "active"),
        ("m-active-active", "active"),
    ];
    wait_for(
        "every session in its first state",
        Duration::from_secs(4),
        || {
            let mut c = client.clone();
            async move {
                let all = sessions(&mut c, "db-moves").await?;
                let wrong = states_missed(&all, &first_states)?;
                if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(wrong.join("; "))
                }
            }
        },
    )
    .await;

    // The changes, all at once.
    let _idle_active =
        tokio::spawn(async move { idle_active.simple_query("SELECT pg_sleep(60)").await });
    idle_xact.batch_execute("BEGIN; SELECT 2").await.unwrap();
    let _xact_active =
        tokio::spawn(async move { xact_active.simple_query("SELECT pg_sleep(60)").await });
    xact_idle.batch_execute("COMMIT").await.unwrap();
    assert!(xact_aborted.simple_query("SELECT 1/0").await.is_err());
    aborted_idle.batch_execute("ROLLBACK").await.unwrap();
    let active_idle = active_idle.await.unwrap();
    let active_xact = active_xact.await.unwrap();
    first_done.await.unwrap();
    let new_states = [
        ("m-idle-active", "active"),
        ("m-idle-xact", "idle in transaction"),
        ("m-xact-active", "active"),
        ("m-xact-idle", "idle"),
        ("m-xact-aborted", "idle in transaction (aborted)"),
        ("m-aborted-idle", "idle"),
        ("m-active-idle", "idle"),
        ("m-active-xact", "idle in transaction"),
        ("m-active-active", "active"),
    ];
    // Every change in place on the server (the queries the tasks above
    // sent, and m-active-active's next one), as pg_stat_activity shows it,
    // before the time is taken.
    let watcher = connect("t-watcher").await;
    let watcher = &watcher;
    wait_for(
        "the server to show every new state",
        Duration::from_secs(10),
        || async move {
            let rows = watcher
                .query(
                    "SELECT application_name, state FROM pg_stat_activity
                     WHERE application_name LIKE 'm-%'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            let now: Vec<(String, Option<String>)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let wrong: Vec<_> = new_states
                .iter()
                .filter(|(app, state)| {
                    !now.iter()
                        .any(|(a, s)| a == app && s.as_deref() == Some(*state))
                })
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("not yet: {wrong:?}"))
            }
        },
    )
    .await;
    let changed_by = std::time::SystemTime::now();

    // The first sample taken after the changes: the agent's clock starts a
    // sample before its statement goes, so each change is in it.
    let all = wait_for(
        "a sample taken after the changes",
        Duration::from_secs(4),
        || {
            let mut c = client.clone();
            async move {
                let r = c
                    .get_activity(v1::GetActivityRequest {
                        server_id: "db-moves".to_owned(),
                        include_background: true,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("GetActivity failed: {s}"))?
                    .into_inner();
                let at = r.sampled_at.ok_or("no sampled_at")?;
                let at = std::time::SystemTime::try_from(at).map_err(|e| e.to_string())?;
                if at > changed_by {
                    Ok(r.sessions)
                } else {
                    Err(format!(
                        "the last sample is of {at:?}, before the changes ended"
                    ))
                }
            }
        },
    )
    .await;
    let wrong = states_missed(&all, &new_states).unwrap();
    assert!(
        wrong.is_empty(),
        "the first sample after the changes missed some: {}",
        wrong.join("; ")
    );
    let wait = |app: &str| {
        let s = by_app(&all, app).unwrap();
        format!("{}:{}", s.wait_event_type, s.wait_event)
    };
    assert_eq!(wait("m-idle-active"), "Timeout:PgSleep");
    assert_eq!(wait("m-active-xact"), "Client:ClientRead");
    assert_eq!(wait("m-active-idle"), "Client:ClientRead");
    let next = by_app(&all, "m-active-active").unwrap();
    assert_eq!(next.query, "SELECT pg_sleep(?), ?");
    // The state's age starts at the change, not at the query's start.
    let changed = by_app(&all, "m-active-xact").unwrap();
    let state_age = changed.state_age.unwrap_or_default();
    let query_age = changed.query_age.unwrap_or_default();
    assert!(
        state_age.seconds < query_age.seconds - 2,
        "state age {state_age:?}, query age {query_age:?}"
    );
    drop((active_idle, active_xact));
    fleet.stop().await;
}

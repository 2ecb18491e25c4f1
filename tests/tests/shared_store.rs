//! Collectors sharing one PostgreSQL store (`--store postgres://…`): each
//! answers for the agents of the others, and an agent that fails over from
//! one to the next resumes where the store says it stopped.

use std::net::SocketAddr;
use std::time::Duration;

use pgfleet_agent::{Agent, AgentConfig};
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::server::{self, Collector};
use pgfleet_collector::store::StoreConfig;
use pgfleet_proto::v1;
use pgfleet_tests::{
    Client, Killed, TempCluster, by_app, init_logs, server, sessions, wait_for, wait_for_status,
    workspace_binary,
};

/// A cluster that is both watched and the store, with a database for the
/// store.
async fn cluster_with_store() -> (TempCluster, String) {
    init_logs();
    let cluster = TempCluster::start().await.expect("a test cluster");
    let admin = cluster.connect("test-setup").await.unwrap();
    admin
        .batch_execute("CREATE DATABASE pgfleet_history")
        .await
        .unwrap();
    let url = store_url(&cluster);
    (cluster, url)
}

/// The URL of [`cluster_with_store`]'s store.
fn store_url(cluster: &TempCluster) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/pgfleet_history",
        cluster.port()
    )
}

async fn collector(cluster: &TempCluster, name: &str, store: &str) -> Collector {
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let config = CollectorConfig {
        store: StoreConfig::Postgres(store.to_owned()),
        collector_id: name.to_owned(),
        http_listen: Some(([127, 0, 0, 1], 0).into()),
        // Frames compressed with dictionaries within the tests' minutes (a
        // collector of one server of the test's writes a frame a second).
        frame_dictionaries: pgfleet_collector::store::DictTraining {
            frames: 30,
            ..QUICK_DICTIONARIES
        },
        ..CollectorConfig::new(listen, cluster.dir().join(format!("collector-{name}")))
    };
    server::start(config)
        .await
        .unwrap_or_else(|e| panic!("collector {name}: {e}"))
}

fn url(c: &Collector) -> String {
    format!("http://{}", c.addr)
}

async fn client(c: &Collector) -> Client {
    pgfleet_cli::connect(&pgfleet_cli::Remote::plain(url(c)))
        .await
        .unwrap()
}

fn agent(
    cluster: &TempCluster,
    server_id: &str,
    dc: &str,
    urls: &[String],
    interval: Duration,
) -> Agent {
    let mut config = AgentConfig::new(&urls[0], cluster.config("pgfleet"));
    config.fallback_collectors = urls[1..].to_vec();
    config.agent_id = format!("agent-{server_id}");
    config.targets[0].server_id = server_id.to_owned();
    config.labels.insert("dc".into(), dc.into());
    config.interval = interval;
    config.pool_reporter = None;
    pgfleet_agent::start(config).unwrap()
}

/// Waits until `client` shows `server_id`'s session of `app` in `state`
/// (a sample taken before the session's last statement shows it as it
/// was, and a collector may show that one first).
async fn wait_for_session(client: &Client, server_id: &str, app: &str, state: &str) -> v1::Session {
    wait_for(
        &format!("{app} on {server_id}, {state}"),
        Duration::from_secs(20),
        || {
            let mut c = client.clone();
            async move {
                let all = sessions(&mut c, server_id).await?;
                let s = by_app(&all, app)?;
                match s.state == state {
                    true => Ok(s.clone()),
                    false => Err(format!("{app} is {}", s.state)),
                }
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_sharing_a_store_each_answer_for_the_agents_of_the_other() {
    let (cluster, store) = cluster_with_store().await;
    let a = collector(&cluster, "a", &store).await;
    let b = collector(&cluster, "b", &store).await;
    let east = agent(
        &cluster,
        "east-1",
        "east",
        &[url(&a)],
        Duration::from_secs(1),
    );
    let west = agent(
        &cluster,
        "west-1",
        "west",
        &[url(&b)],
        Duration::from_secs(1),
    );
    let (ca, cb) = (client(&a).await, client(&b).await);

    // A session each collector hears of only through the other's agent.
    let probe = cluster.connect("shared-store-probe").await.unwrap();
    probe
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    let in_transaction = "idle in transaction";
    let seen_by_b = wait_for_session(&cb, "east-1", "shared-store-probe", in_transaction).await;
    let seen_by_a = wait_for_session(&ca, "west-1", "shared-store-probe", in_transaction).await;
    assert_eq!(seen_by_a.pid, seen_by_b.pid);

    // Each lists the whole fleet, up, and says who streams what.
    for (c, other, own) in [(&ca, "b", "east-1"), (&cb, "a", "west-1")] {
        let mut c = c.clone();
        let listed = wait_for("both servers up", Duration::from_secs(10), || {
            let mut c = c.clone();
            async move {
                let mut servers = c
                    .list_servers(v1::ListServersRequest::default())
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner()
                    .servers;
                servers.sort_by(|x, y| x.server_id.cmp(&y.server_id));
                if servers.len() == 2 && servers.iter().all(|s| s.status == "up") {
                    Ok(servers)
                } else {
                    Err(format!("{servers:?}"))
                }
            }
        })
        .await;
        for s in &listed {
            let expected = if s.server_id == own { "" } else { other };
            assert_eq!(s.collector, expected, "{s:?}");
        }
        let summary = c
            .fleet_summary(v1::FleetSummaryRequest {
                group_by: "dc".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let groups: Vec<_> = summary
            .rows
            .iter()
            .map(|g| (g.value.clone(), g.servers_up))
            .collect();
        assert_eq!(
            groups,
            [("east".to_owned(), 1), ("west".to_owned(), 1)],
            "{summary:?}"
        );
    }

    // The CLI says so too.
    let out = std::process::Command::new(workspace_binary("pgfleet"))
        .args(["--collector", &format!("http://{}", b.addr), "servers"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let east_row = table
        .lines()
        .find(|l| l.starts_with("east-1"))
        .unwrap_or("");
    assert!(east_row.contains("agent-east-1 via a"), "{table}");

    // What the other's agent streamed is history here too.
    let at = pgfleet_proto::time::now_micros();
    let mut past = cb
        .clone()
        .get_activity(v1::GetActivityRequest {
            server_id: "east-1".into(),
            at: Some(pgfleet_proto::time::timestamp(at)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    past.sessions
        .retain(|s| s.application_name == "shared-store-probe");
    assert_eq!(past.sessions.len(), 1, "{past:?}");

    // And its load: the probe idles in its transaction, and b reads what
    // a stored of it (10 s buckets, from the shared store), once a stores
    // the minute they are in.
    let since = pgfleet_proto::time::now_micros() - 120_000_000;
    wait_for(
        "east-1's idle-in-transaction series at b",
        Duration::from_secs(90),
        || {
            let mut c = cb.clone();
            async move {
                let r = c
                    .query_load(v1::QueryLoadRequest {
                        start: Some(pgfleet_proto::time::timestamp(since)),
                        step: Some(pgfleet_proto::time::duration(10_000_000)),
                        group_by: "application".into(),
                        matchers: vec!["server_id=\"east-1\"".into()],
                        sessions: v1::LoadSessions::IdleInTransaction as i32,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                let probe = r
                    .series
                    .iter()
                    .find(|s| s.key == "shared-store-probe")
                    .ok_or_else(|| format!("{r:?}"))?;
                if probe.points.iter().any(|p| (p.value - 1.0).abs() < 1e-9) {
                    Ok(())
                } else {
                    Err(format!("{probe:?}"))
                }
            }
        },
    )
    .await;

    // A whole minute of it, from the hours of totals a keeps in the shared
    // store (what fleet-wide questions over long ranges read).
    wait_for(
        "east-1's idle-in-transaction minute at b, from hours of totals",
        Duration::from_secs(150),
        || {
            let mut c = cb.clone();
            async move {
                let r = c
                    .query_load(v1::QueryLoadRequest {
                        start: Some(pgfleet_proto::time::timestamp(since)),
                        step: Some(pgfleet_proto::time::duration(60_000_000)),
                        group_by: "server".into(),
                        sessions: v1::LoadSessions::IdleInTransaction as i32,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                let east = r
                    .series
                    .iter()
                    .find(|s| s.key == "east-1")
                    .ok_or_else(|| format!("{r:?}"))?;
                if east.points.iter().any(|p| (p.value - 1.0).abs() < 0.02) {
                    Ok(())
                } else {
                    Err(format!("{east:?}"))
                }
            }
        },
    )
    .await;

    // And its rollups: b adds up the minutes a stored of it, streamed from
    // the shared store as read.
    wait_for(
        "east-1's idle-in-transaction minute of rollups at b",
        Duration::from_secs(90),
        || {
            let mut c = cb.clone();
            async move {
                let r = c
                    .query_metrics(v1::QueryMetricsRequest {
                        metric: "sessions".into(),
                        matchers: vec![
                            "server_id=\"east-1\"".into(),
                            "state=\"idle in transaction\"".into(),
                        ],
                        start: Some(pgfleet_proto::time::timestamp(since)),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                let whole = r
                    .series
                    .iter()
                    .flat_map(|s| &s.points)
                    .any(|p| (p.value - 1.0).abs() < 0.02);
                if whole { Ok(()) } else { Err(format!("{r:?}")) }
            }
        },
    )
    .await;

    // By now a compresses east-1's frames with a dictionary it trained,
    // and b follows them all the same: a session that comes now.
    let (db, connection) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    wait_for("east-1's frames named by a dictionary", Duration::from_secs(120), || {
        let db = &db;
        async move {
            let body: Vec<u8> = db
                .query_one(
                    "SELECT body FROM pgfleet.frames WHERE server_id = 'east-1' ORDER BY at DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            zstd::zstd_safe::get_dict_id_from_frame(&body)
                .map(|_| ())
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await;
    let late = cluster.connect("shared-store-late").await.unwrap();
    late.batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    wait_for_session(&cb, "east-1", "shared-store-late", in_transaction).await;
    drop(late);

    // An agent that stops is seen to stop by the other collector too.
    east.stop().await;
    let stale = wait_for("east-1 stale on b", Duration::from_secs(15), || {
        let mut c = cb.clone();
        async move {
            let s = server(&mut c, "east-1").await?;
            if s.status == "stale" {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    assert!(stale.reason.contains("disconnected"), "{stale:?}");
    west.stop().await;
    a.stop().await;
    b.stop().await;
    drop(probe);
    cluster.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_next_collector_with_no_gap_or_duplicate_in_the_history() {
    let (cluster, store) = cluster_with_store().await;
    // A is a process of its own, to be killed: what it committed but did not
    // acknowledge yet, the agent sends again, to B.
    let port = pgfleet_cli::sandbox::free_port().unwrap();
    let a = Killed(
        std::process::Command::new(workspace_binary("pgfleet-collector"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--http-listen",
                "off",
                "--collector-id",
                "a",
                "--store",
                &store,
            ])
            .arg("--data-dir")
            .arg(cluster.dir().join("collector-a"))
            .env("PGFLEET_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let a_url = format!("http://127.0.0.1:{port}");
    let b = collector(&cluster, "b", &store).await;
    let interval = Duration::from_millis(250);
    let ca = wait_for("collector a to answer", Duration::from_secs(20), || {
        let url = a_url.clone();
        async move {
            let mut c = pgfleet_cli::connect(&pgfleet_cli::Remote::plain(url))
                .await
                .map_err(|e| e.to_string())?;
            c.list_servers(v1::ListServersRequest::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(c)
        }
    })
    .await;
    let cb = client(&b).await;
    // A answers before the agent starts: otherwise the agent, finding it
    // not yet there, would begin with B.
    let agent = agent(&cluster, "failover-1", "east", &[a_url, url(&b)], interval);
    wait_for_status(&ca, "failover-1", "up", Duration::from_secs(20)).await;
    // Sessions come and go throughout, so that deltas carry changes.
    let churn = cluster.connect("failover-churn").await.unwrap();
    let busy = tokio::spawn(async move {
        loop {
            if churn.batch_execute("SELECT pg_sleep(0.1)").await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A is killed while the agent streams to it.
    let on_a = server(&mut ca.clone(), "failover-1").await.unwrap();
    assert_eq!(on_a.collector, "", "{on_a:?}");
    drop(a);
    let (db, connection) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let history = |db: tokio_postgres::Client| async move {
        let stored: i64 = db
            .query_one(
                "SELECT last_seq FROM pgfleet.agents WHERE agent_id = 'agent-failover-1'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (db, stored)
    };
    let (db, stored_by_a) = history(db).await;
    assert!(stored_by_a > 0, "A stored nothing");

    // The agent moves to B, which resumes it where the store says.
    let on_b = wait_for("failover-1 streamed to b", Duration::from_secs(20), || {
        let mut c = cb.clone();
        async move {
            let s = server(&mut c, "failover-1").await?;
            let stream = s.stream.unwrap_or_default();
            if s.collector.is_empty() && s.status == "up" && stream.applied_batches >= 8 {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let stream = on_b.stream.unwrap();
    // Not one batch A stored was applied again (the agent sent again those
    // A had not acknowledged), and none is missing.
    assert_eq!(stream.first_seq, stored_by_a as u64 + 1, "{stream:?}");
    assert_eq!(stream.missing_batches, 0, "{stream:?}");
    // Every delta found its base: the store gave B the server as A left it.
    assert_eq!(stream.refused_deltas, 0, "{stream:?}");

    // Every sample the agent took is in the history exactly once: a
    // snapshot counts the samples taken before it, so once the agent has
    // stopped, B's last one says how many frames there must be.
    agent.stop().await;
    busy.abort();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = server(&mut cb.clone(), "failover-1").await.unwrap();
    let samples = last.agent.unwrap_or_default().samples_total;
    b.stop().await;
    let rows = db
        .query(
            "SELECT at FROM pgfleet.frames WHERE server_id = 'failover-1' ORDER BY at",
            &[],
        )
        .await
        .unwrap();
    let ats: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let widest = ats.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert_eq!(
        ats.len() as u64,
        samples + 1,
        "frames stored against samples taken; the widest step between frames is {widest} µs"
    );
    assert!(
        widest < 2 * interval.as_micros() as i64,
        "a gap of {widest} µs in the history: {ats:?}"
    );
    let (_, stored_last) = history(db).await;
    assert!(stored_last > stored_by_a, "B stored nothing after A");
    cluster.destroy().await;
}

/// The names of every partition in the database.
async fn partitions(db: &tokio_postgres::Client) -> Vec<String> {
    let rows = db
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_past_their_retention_are_dropped_whole() {
    let (cluster, store) = cluster_with_store().await;
    // The first start makes the tables; its retention (ten years) drops
    // nothing, whenever its writer prunes.
    let keep_all = pgfleet_collector::store::Retention {
        frames: Duration::from_secs(10 * 365 * 86_400),
        rollups: Duration::from_secs(10 * 365 * 86_400),
    };
    let first = server::start(CollectorConfig {
        store: StoreConfig::Postgres(store.clone()),
        collector_id: "a".into(),
        retention: keep_all,
        ..CollectorConfig::new(
            ([127, 0, 0, 1], 0).into(),
            cluster.dir().join("collector-a"),
        )
    })
    .await
    .unwrap();
    first.stop().await;
    let (db, connection) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    const DAY: i64 = 86_400_000_000;
    let today = pgfleet_proto::time::now_micros().div_euclid(DAY);
    let partition = |table: &str, day: i64| {
        let date = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400),
        )
        .to_string();
        format!("{table}_{}", date[..10].replace('-', ""))
    };
    // Frames of three days ago, and rollups of forty.
    for (table, day) in [("frames", today - 3), ("rollups", today - 40)] {
        db.batch_execute(&format!(
            "CREATE TABLE pgfleet.{} PARTITION OF pgfleet.{table} FOR VALUES FROM ({}) TO ({})",
            partition(table, day),
            day * DAY,
            (day + 1) * DAY
        ))
        .await
        .unwrap();
    }
    db.execute(
        "INSERT INTO pgfleet.frames VALUES ('old', $1, true, '')",
        &[&((today - 3) * DAY + 5)],
    )
    .await
    .unwrap();
    // Frame dictionaries last used four days ago (past the frames' day,
    // whole days of them, and the day kept after), a day and a half ago,
    // an hour ago, and either side of the last kept: a day before the
    // first day of frames kept (which whole days go), 24 h ago.
    let now = pgfleet_proto::time::now_micros();
    let last_kept = ((now - DAY).div_euclid(DAY) - 1) * DAY;
    db.execute(
        "INSERT INTO pgfleet.frame_dicts VALUES (1, 0, $1, 'a'), (2, 0, $2, 'b'), (3, 0, $3, 'c'),
             (4, 0, $4, 'd'), (5, 0, $5, 'e')",
        &[
            &(now - 4 * DAY),
            &(now - 3 * DAY / 2),
            &(now - 3_600_000_000),
            &last_kept,
            &(last_kept - 1),
        ],
    )
    .await
    .unwrap();
    let before = partitions(&db).await;
    assert!(
        before.contains(&partition("frames", today - 3)),
        "{before:?}"
    );

    let database_size = || async {
        let row = db
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0) as f64
    };
    let size_before = database_size().await;

    // The collector's first commit prunes: the old days go whole, the
    // present and the next day stay.
    let c = collector(&cluster, "a", &store).await;
    let url = format!("http://{}", c.addr);
    let _stream = pgfleet_tests::agent_stream(&url, "retention-probe", None)
        .await
        .unwrap();
    let after = wait_for("the old partitions to go", Duration::from_secs(15), || {
        let db = &db;
        async move {
            let now = partitions(db).await;
            if now.iter().any(|p| {
                p.ends_with(&partition("", today - 3)) || p.ends_with(&partition("", today - 40))
            }) {
                Err(format!("{now:?}"))
            } else {
                Ok(now)
            }
        }
    })
    .await;
    for table in ["frames", "rollups"] {
        for day in [today, today + 1] {
            assert!(after.contains(&partition(table, day)), "{after:?}");
        }
    }
    let dictionaries: Vec<i64> = db
        .query("SELECT id FROM pgfleet.frame_dicts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        dictionaries,
        [2, 3, 4],
        "the dictionaries past their time go"
    );
    // /metrics says the database's size as the writer read it after its
    // first commit: about what it held before, give or take the pages
    // written and the partitions made and dropped since.
    let http = c.http_addr.unwrap().to_string();
    let bytes = wait_for("the store's size", Duration::from_secs(15), || {
        pgfleet_tests::metric(&http, "pgfleet_collector_store_bytes")
    })
    .await;
    assert!(
        (size_before * 0.8..=size_before * 1.2).contains(&bytes),
        "{bytes} bytes said, {size_before} before the start, {} now",
        database_size().await
    );
    c.stop().await;
    cluster.destroy().await;
}

/// A store keeps the format of the newest collector that opened it. When a
/// newer collector has raised it (as a newer version would), a collector
/// that starts on it, and one that runs, say so on `/metrics`, and go on:
/// what they write, the newer one reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_a_newer_collector_raised_is_said_by_the_older_ones() {
    use pgfleet_collector::store::FORMAT;
    let (cluster, store) = cluster_with_store().await;
    let running = collector(&cluster, "a", &store).await;
    let (db, connection) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let format = || async {
        db.query_one("SELECT value FROM pgfleet.meta WHERE name = 'format'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(format().await, FORMAT);
    let newer_format = |c: &Collector| {
        let http = c.http_addr.unwrap().to_string();
        async move { pgfleet_tests::metric(&http, "pgfleet_collector_store_newer_format").await }
    };
    assert_eq!(newer_format(&running).await, Ok(0.0));
    // A newer collector opens the store.
    db.execute(
        "UPDATE pgfleet.meta SET value = $1 WHERE name = 'format'",
        &[&(FORMAT + 1)],
    )
    .await
    .unwrap();
    // One that starts now says so at once, and streams.
    let started = collector(&cluster, "b", &store).await;
    assert_eq!(newer_format(&started).await, Ok((FORMAT + 1) as f64));
    assert_eq!(format().await, FORMAT + 1, "an older one lowers nothing");
    let _b = pgfleet_tests::agent_stream(&url(&started), "format-probe-b", None)
        .await
        .unwrap();
    wait_for(
        "the older one's writes",
        Duration::from_secs(15),
        || async {
            let rows: i64 = db
                .query_one(
                    "SELECT count(*) FROM pgfleet.servers WHERE server_id = 'format-probe-b'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if rows == 1 {
                Ok(())
            } else {
                Err(format!("{rows} rows"))
            }
        },
    )
    .await;
    // The running one's writer looks again as it prunes: at its first
    // commit (the probe's registration), then every minute.
    let _a = pgfleet_tests::agent_stream(&url(&running), "format-probe-a", None)
        .await
        .unwrap();
    let newer = wait_for(
        "the newer format on /metrics",
        Duration::from_secs(90),
        || {
            let said = newer_format(&running);
            async move {
                let n = said.await?;
                if n > 0.0 { Ok(n) } else { Err("0".to_owned()) }
            }
        },
    )
    .await;
    assert_eq!(newer, (FORMAT + 1) as f64);
    running.stop().await;
    started.stop().await;
    cluster.destroy().await;
}

/// Either store hands back a few servers' minutes, each found by its key,
/// as a read of the whole range keeps of theirs: for one server, several,
/// more than are looked up apart, none, and one it never stored; over
/// ranges that start off a minute, reach back before the first stored
/// minute, or lie after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_servers_minutes_are_found_by_their_key_in_either_store() {
    use pgfleet_collector::rollup::{MINUTE_US, Metric, Minute};
    use pgfleet_collector::store::{MinutesRead, Op, Store};

    let (cluster, pg, sqlite) = both_stores("minutes-test").await;

    // 80 servers, 30 minutes, each server missing some of them.
    let now = pgfleet_proto::time::now_micros();
    let first = now - now.rem_euclid(MINUTE_US) - 30 * MINUTE_US;
    let ids: Vec<String> = (0..80).map(|i| format!("s-{i:02}")).collect();
    let mut written = 0;
    for m in 0..30 {
        for (i, id) in ids.iter().enumerate() {
            if (i + m) % 7 == 0 {
                continue;
            }
            let minute = Minute {
                start: first + m as i64 * MINUTE_US,
                samples: 60,
                covered_us: 60_000_000,
                values: [(Metric::Sessions, "active", (i * 100 + m) as f64)]
                    .into_iter()
                    .collect(),
            };
            for store in [&pg, &sqlite] {
                store
                    .write(Op::Minute {
                        server_id: id.clone(),
                        minute: minute.clone(),
                    })
                    .await;
            }
            written += 1;
        }
    }
    pg.flush().await;
    sqlite.flush().await;

    let read = |store: &Store, servers: Option<Vec<String>>, (start, end): (i64, i64)| {
        let store = store.clone();
        async move {
            store
                .fold_minutes(
                    MinutesRead {
                        servers,
                        ..MinutesRead::range(start, end)
                    },
                    Vec::new(),
                    |v, s, m| v.push((s.to_owned(), m)),
                )
                .await
                .unwrap()
        }
    };
    let everything = (first - 86_400_000_000, now + MINUTE_US);
    let all = read(&sqlite, None, everything).await;
    assert_eq!(all.len(), written);
    assert!(
        all.windows(2)
            .all(|w| (w[0].1.start, &w[0].0) < (w[1].1.start, &w[1].0)),
        "by start and then server"
    );
    assert_eq!(read(&pg, None, everything).await, all, "both stores alike");

    let some = |range: std::ops::Range<usize>| ids[range].to_vec();
    let selections = [
        vec!["s-07".to_owned()],
        some(10..15),
        some(0..70),
        Vec::new(),
        vec!["nobody".to_owned()],
        vec!["s-03".to_owned(), "nobody".to_owned(), "s-03".to_owned()],
    ];
    let ranges = [
        everything,
        (first + 17_000_000, first + 10 * MINUTE_US + 5_000_000),
        (first - 10 * 86_400_000_000, first + 3 * MINUTE_US),
        (now + 3_600_000_000, now + 7_200_000_000),
        (first + 5 * MINUTE_US, first + 5 * MINUTE_US),
    ];
    for servers in &selections {
        for range in ranges {
            let expected: Vec<(String, Minute)> = all
                .iter()
                .filter(|(s, m)| servers.contains(s) && m.start >= range.0 && m.start < range.1)
                .cloned()
                .collect();
            for (name, store) in [("sqlite", &sqlite), ("postgres", &pg)] {
                let got = read(store, Some(servers.clone()), range).await;
                assert!(
                    got == expected,
                    "{name}, {} servers, range {range:?}: {} minutes against {}",
                    servers.len(),
                    got.len(),
                    expected.len()
                );
            }
        }
    }
    drop((pg, sqlite));
    cluster.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_s_minutes_of_load_are_read_a_chunk_at_a_time_in_either_store() {
    use pgfleet_collector::load::hours::{HOUR_US, HourTotals};
    use pgfleet_collector::load::{Bucket, COARSE_US, Class, MinuteLoad, Tuple};
    use pgfleet_collector::store::Op;

    let (_cluster, pg, sqlite) = both_stores("load-chunks-test").await;

    // Four servers over 1,100 minutes (19 hours, each a dictionary of its
    // own per server): 4,400 rows, more than a chunk of either store.
    let now = pgfleet_proto::time::now_micros();
    let first = now - now.rem_euclid(HOUR_US) - 19 * HOUR_US;
    let mut written = Vec::new();
    for m in 0..1_100 {
        for s in 0..4 {
            let server_id = format!("s-{s}");
            let start = first + m * COARSE_US;
            let mut coarse = Bucket::holding(start, COARSE_US);
            coarse.samples = 60;
            coarse.covered_us = 60_000_000;
            coarse.tuples = vec![(
                Tuple {
                    class: Class::Active,
                    wait_type: "CPU".into(),
                    wait_event: "".into(),
                    query: 1 + (m % 13) as u64,
                    user: format!("user-{s}-{}", m % 5).as_str().into(),
                    database: "orders".into(),
                    application: format!("app-{}", m / 60).as_str().into(),
                    client: "10.0.0.7".into(),
                    backend_type: "client backend".into(),
                },
                1 + (m % 60) as u32,
            )];
            let minute = MinuteLoad {
                coarse,
                fine: Vec::new(),
            };
            for store in [&pg, &sqlite] {
                store
                    .write(Op::Load {
                        server_id: server_id.clone(),
                        minute: minute.pack(),
                        hour: HourTotals::holding(start),
                    })
                    .await;
            }
            written.push((server_id, minute));
        }
    }
    pg.flush().await;
    sqlite.flush().await;
    let by_key = |v: &mut Vec<(String, MinuteLoad)>| {
        v.sort_by(|a, b| (&a.0, a.1.coarse.start).cmp(&(&b.0, b.1.coarse.start)))
    };
    by_key(&mut written);
    // Hours passed over: s-1's second and s-3's fifth and sixth.
    let mut skip = pgfleet_collector::load::hours::ServerHours::default();
    for (id, hour) in [("s-1", 1), ("s-3", 4), ("s-3", 5)] {
        skip.insert(id, first + hour * HOUR_US);
    }
    for (name, store) in [("sqlite", &sqlite), ("postgres", &pg)] {
        for (servers, skip) in [
            (None, None),
            (Some(vec!["s-1".to_owned(), "s-3".to_owned()]), None),
            (None, Some(skip.clone())),
            (
                Some(vec!["s-1".to_owned(), "s-3".to_owned()]),
                Some(skip.clone()),
            ),
        ] {
            let mut read = store
                .fold_load(
                    servers.clone(),
                    first,
                    now + COARSE_US,
                    pgfleet_collector::load::Wanted::All,
                    skip.clone(),
                    None,
                    Vec::new(),
                    |v, id, m| v.push((id.to_owned(), m)),
                )
                .await
                .unwrap();
            by_key(&mut read);
            let want: Vec<_> = written
                .iter()
                .filter(|(id, _)| servers.as_ref().is_none_or(|s| s.contains(id)))
                .filter(|(id, m)| !skip.as_ref().is_some_and(|s| s.holds(id, m.coarse.start)))
                .cloned()
                .collect();
            assert_eq!(read.len(), want.len(), "{name}, {servers:?}, {skip:?}");
            assert!(
                read == want,
                "{name}, {servers:?}, {skip:?}: the minutes read back differ"
            );
        }
    }
}

/// A PostgreSQL store (`collector_id` its writer's name) on a cluster of its
/// own, and a SQLite store in the cluster's directory, to compare.
async fn both_stores(
    collector_id: &str,
) -> (
    TempCluster,
    pgfleet_collector::store::Store,
    pgfleet_collector::store::Store,
) {
    use pgfleet_collector::store::{Retention, Store};
    let (cluster, url) = cluster_with_store().await;
    let (pg, _) = Store::open(
        &StoreConfig::Postgres(url),
        &cluster.dir().join("pg-store"),
        Retention::default(),
        collector_id,
        QUICK_DICTIONARIES,
    )
    .await
    .unwrap();
    let dir = cluster.dir().join("sqlite-store");
    std::fs::create_dir_all(&dir).unwrap();
    let (sqlite, _) = Store::open_sqlite(&dir, Retention::default(), QUICK_DICTIONARIES).unwrap();
    (cluster, pg, sqlite)
}

/// Frame dictionaries trained as soon as 300 frames have been written.
const QUICK_DICTIONARIES: pgfleet_collector::store::DictTraining =
    pgfleet_collector::store::DictTraining {
        enabled: true,
        after: Duration::ZERO,
        frames: 300,
        every: Duration::from_secs(3600),
    };

/// Frames compressed with a dictionary the writer trained read back, in
/// either store; from a PostgreSQL store, by another collector too, which
/// loads the dictionary from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_compressed_with_a_trained_dictionary_read_back_in_either_store() {
    use pgfleet_collector::state::Pools;
    use pgfleet_collector::store::{Frame, Op, Retention, Store};
    use pgfleet_proto::model::{Session, SessionState, TargetStatus};
    use std::sync::Arc;

    let (cluster, pg, sqlite) = both_stores("dictionaries").await;
    let start = pgfleet_proto::time::now_micros() - 3_600_000_000;
    // A server's seconds: a keyframe a minute, deltas whose one session's
    // query, client and times move.
    let frame = |s: i64| Frame {
        server_id: "dict-1".into(),
        at: start + s * 1_000_000,
        keyframe: s % 60 == 0,
        status: TargetStatus::Up,
        sessions: vec![Arc::new(Session {
            pid: 1000 + (s % 50) as i32,
            backend_start_us: 7,
            database: "orders".into(),
            user: "app".into(),
            application_name: format!("web-{}", s % 4).into(),
            client: format!("10.2.{}.{}:{}", s % 3, s % 200, 40_000 + s % 999).into(),
            state: SessionState::Active,
            query: format!("SELECT * FROM orders_{} WHERE customer_id = $1", s % 23).into(),
            query_start_us: Some(start + s * 999_983),
            backend_type: "client backend".into(),
            ..Session::default()
        })],
        // The session before ends: a server of one session at a time.
        removed: match s % 60 {
            0 => Vec::new(),
            _ => vec![(1000 + ((s - 1) % 50) as i32, 7)],
        },
        unchanged: Vec::new(),
        pools: Arc::new(Pools::default()),
        facts: None,
        databases: Vec::new(),
    };
    // Writes seconds `seconds` to both stores, and has them committed.
    let write = |seconds: std::ops::Range<i64>| {
        let (pg, sqlite) = (pg.clone(), sqlite.clone());
        async move {
            for store in [&pg, &sqlite] {
                for s in seconds.clone() {
                    store
                        .write(Op::Applied {
                            agent_id: "dict-agent".into(),
                            seq: s as u64 + 1,
                            frames: vec![frame(s).encoded()],
                        })
                        .await;
                }
                store.flush().await;
            }
        }
    };
    write(0..400).await;
    let (db, connection) = tokio_postgres::connect(&store_url(&cluster), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Another collector's store of the same database, with dictionaries as
    // by default (none trained within the test).
    let open_other = |name: &'static str| {
        let (url, dir) = (store_url(&cluster), cluster.dir().join(name));
        async move {
            Store::open(
                &StoreConfig::Postgres(url),
                &dir,
                Retention::default(),
                name,
                Default::default(),
            )
            .await
            .unwrap()
            .0
        }
    };
    // Trained beside the writer; stored before a commit's frames, which use it.
    let mut s = 399;
    let file =
        rusqlite::Connection::open(cluster.dir().join("sqlite-store/pgfleet.sqlite")).unwrap();
    let (id, sqlite_id) = wait_for(
        "a frame dictionary in use in both stores",
        Duration::from_secs(60),
        || {
            let (db, write, file) = (&db, &write, &file);
            s += 1;
            let at = s;
            async move {
                write(at..at + 1).await;
                let row = db
                    .query_one(
                        "SELECT body FROM pgfleet.frames WHERE server_id = 'dict-1' AND at = $1",
                        &[&(start + at * 1_000_000)],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let body: Vec<u8> = row.get(0);
                let id = zstd::zstd_safe::get_dict_id_from_frame(&body)
                    .ok_or_else(|| format!("frame {at} names no dictionary in PostgreSQL"))?;
                let body: Vec<u8> = file
                    .query_row(
                        "SELECT body FROM frames WHERE at = ?1",
                        [start + at * 1_000_000],
                        |r| r.get(0),
                    )
                    .map_err(|e| e.to_string())?;
                let in_file = zstd::zstd_safe::get_dict_id_from_frame(&body)
                    .ok_or_else(|| format!("frame {at} names no dictionary in SQLite"))?;
                Ok((id, in_file))
            }
        },
    )
    .await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM pgfleet.frame_dicts WHERE id = $1",
            &[&i64::from(id.get())],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    // The SQLite store stored its own.
    let in_file: i64 = file
        .query_row(
            "SELECT count(*) FROM frame_dicts WHERE id = ?1",
            [sqlite_id.get()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(in_file, 1);
    let last = s + 60;
    write(s + 1..last + 1).await;

    let at = start + last * 1_000_000;
    let expected = frame(last).sessions;
    for (name, store) in [("postgres", &pg), ("sqlite", &sqlite)] {
        let state = store
            .activity_at("dict-1".into(), at)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no state at the last frame"));
        assert_eq!(state.at, at, "{name}");
        assert_eq!(state.sessions, expected, "{name}");
    }
    // Another collector's reads load it from the store.
    let other = open_other("dictionaries-2").await;
    let state = other
        .activity_at("dict-1".into(), at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.sessions, expected);
    // And it follows the frames after a base, as a collector follows the
    // others' servers, loading the dictionary in a store of its own.
    let follower = open_other("dictionaries-3").await;
    let base = pg
        .activity_at("dict-1".into(), at - 30_000_000)
        .await
        .unwrap()
        .unwrap();
    let advanced = follower
        .advance(vec![("dict-1".to_owned(), base)])
        .await
        .unwrap();
    assert_eq!(advanced.len(), 1);
    let (server, state) = &advanced[0];
    let state = state
        .as_ref()
        .expect("the frames after the base apply to it");
    assert_eq!((server.as_str(), state.at), ("dict-1", at));
    assert_eq!(state.sessions, expected);
    drop(follower);

    // A writer that connects again writes the dictionary in use again, at
    // once rather than within the minute: a failover may have lost it.
    db.execute("DELETE FROM pgfleet.frame_dicts", &[])
        .await
        .unwrap();
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = 'pgfleet_history' AND pid <> pg_backend_pid()
           AND application_name = 'pgfleet-collector'",
        &[],
    )
    .await
    .unwrap();
    let mut next = last;
    wait_for(
        "the dictionary written again",
        Duration::from_secs(30),
        || {
            let (db, write) = (&db, &write);
            next += 1;
            let at = next;
            async move {
                write(at..at + 1).await;
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pgfleet.frame_dicts WHERE id = $1",
                        &[&i64::from(id.get())],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                (n == 1).then_some(()).ok_or_else(|| "not yet".to_owned())
            }
        },
    )
    .await;
    drop((pg, sqlite, other));
    cluster.destroy().await;
}

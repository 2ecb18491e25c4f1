//! Agents present bearer tokens; the collector refuses streams without one of
//! its tokens, and keeps nothing of them.

use std::time::Duration;

use pgfleet_agent::AgentConfig;
use pgfleet_cli::sandbox::TempCluster;
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::server;
use pgfleet_common::settings::Token;
use pgfleet_tests::{agent_stream, server as fleet_server, wait_for_status};

const GOOD: &str = "good-token-0123456789abcdef";

/// Opens a stream with `authorization` (if any) and says Hello as `server_id`.
async fn stream_with(
    url: &str,
    authorization: Option<&str>,
    server_id: &str,
) -> Result<(), tonic::Status> {
    agent_stream(url, server_id, authorization)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_refused_and_nothing_is_stored() {
    let cluster = TempCluster::start().await.unwrap();
    let mut config =
        CollectorConfig::new(([127, 0, 0, 1], 0).into(), cluster.dir().join("collector"));
    config.tokens = vec![
        Token::new("tokens_file", "another-token-0123456789").unwrap(),
        Token::new("tokens_file", GOOD).unwrap(),
    ];
    let collector = server::start(config).await.unwrap();
    let url = format!("http://{}", collector.addr);

    // Raw streams: no token, a wrong one, one without "Bearer".
    for (authorization, why) in [
        (None, "requires a bearer token"),
        (
            Some("Bearer good-token-0123456789abcdeX"),
            "not one this collector accepts",
        ),
        (Some(GOOD), "not one this collector accepts"),
    ] {
        let status = stream_with(&url, authorization, "db-intruder")
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }
    let bearer = format!("Bearer {GOOD}");
    stream_with(&url, Some(&bearer), "db-raw-good")
        .await
        .expect("the right token is let in");

    // A real agent with the right token streams; one with a wrong token does not.
    let agent = |server_id: &str, token: &str| {
        let mut c = AgentConfig::new(&url, cluster.config("pgfleet"));
        c.agent_id = format!("agent-{server_id}");
        c.targets[0].server_id = server_id.to_owned();
        c.pool_reporter = None;
        c.token = Some(Token::new("token", token).unwrap());
        pgfleet_agent::start(c).unwrap()
    };
    let good = agent("db-token", GOOD);
    let bad = agent("db-bad-token", "wrong-token-0123456789abcdef");
    let client = pgfleet_cli::connect(&pgfleet_cli::Remote::plain(url.clone()))
        .await
        .unwrap();
    wait_for_status(&client, "db-token", "up", Duration::from_secs(20)).await;
    // By now the other agent has tried (it starts at once and retries).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for intruder in ["db-intruder", "db-bad-token"] {
        let found = fleet_server(&mut client.clone(), intruder).await;
        assert!(
            found.is_err(),
            "nothing of a refused stream is kept: {found:?}"
        );
    }
    good.stop().await;
    bad.stop().await;
    collector.stop().await;
    cluster.destroy().await;
}

const INGEST: &str = "ingest-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef0";

/// Runs the `pgfleet` binary with `envs`, without the caller's PGFLEET_*.
fn pgfleet(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(pgfleet_tests::workspace_binary("pgfleet"))
        .args(args)
        .env_remove("PGFLEET_TOKEN")
        .env_remove("PGFLEET_TOKEN_FILE")
        .env_remove("PGFLEET_CONFIG")
        .envs(envs.iter().copied())
        .output()
        .expect("pgfleet runs")
}

/// The nice values of this process's threads named `name`.
fn nice_of_threads(name: &str) -> Vec<i64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // After the name in parentheses: state is field 3, nice 19.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            (comm.trim() == name).then(|| fields.get(16)?.parse().ok())?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_takes_a_read_token_and_an_agents_token_neither_reads_nor_the_reverse() {
    let cluster = TempCluster::start().await.unwrap();
    let mut config =
        CollectorConfig::new(([127, 0, 0, 1], 0).into(), cluster.dir().join("collector"));
    // Readers have a port of their own as well, which asks the same tokens.
    config.query_listen = Some(([127, 0, 0, 1], 0).into());
    config.tokens = vec![Token::new("tokens_file", INGEST).unwrap()];
    config.read_tokens = vec![
        Token::new("read_tokens_file", "another-read-token-0123456").unwrap(),
        Token::new("read_tokens_file", READ).unwrap(),
    ];
    let collector = server::start(config).await.unwrap();
    let url = format!("http://{}", collector.addr);
    let readers_url = format!("http://{}", collector.query_addr.unwrap());
    let remote_at = |url: &str, token: Option<&str>| pgfleet_cli::Remote {
        token: token.map(|t| Token::new("token", t).unwrap()),
        ..pgfleet_cli::Remote::plain(url.to_owned())
    };
    let remote = |token: Option<&str>| remote_at(&url, token);

    // No token, a wrong one, and an agent's: every Query call and Watch is
    // refused, saying what to set, on either port.
    for (token, why, url) in [
        (None, "--token-file", &url),
        (
            Some("wrong-read-token-0123456789"),
            "not one this collector accepts",
            &url,
        ),
        (Some(INGEST), "it is an agent's ingest token", &url),
        (None, "--token-file", &readers_url),
        (Some(INGEST), "it is an agent's ingest token", &readers_url),
    ] {
        let mut client = pgfleet_cli::connect(&remote_at(url, token)).await.unwrap();
        let status = client
            .list_servers(pgfleet_proto::v1::ListServersRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
        let status = client
            .watch(pgfleet_proto::v1::WatchRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        // GetActivity has a route of its own (its answer encoded straight
        // from the sessions): the same tokens guard it.
        let status = client
            .get_activity(pgfleet_proto::v1::GetActivityRequest {
                server_id: "db-anything".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }

    // A read token does not let a stream in, and nothing of it is kept.
    let status = stream_with(&url, Some(&format!("Bearer {READ}")), "db-read-intruder")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("it is a read token"),
        "{status:?}"
    );
    // The readers' port takes no stream at all, whatever the token.
    let bearer = format!("Bearer {INGEST}");
    let status = stream_with(&readers_url, Some(&bearer), "db-readers-port")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // An agent with the ingest token streams; the read token reads it.
    let mut agent_config = AgentConfig::new(&url, cluster.config("pgfleet"));
    agent_config.agent_id = "agent-db-read".into();
    agent_config.targets[0].server_id = "db-read".into();
    agent_config.pool_reporter = None;
    agent_config.token = Some(Token::new("token", INGEST).unwrap());
    let agent = pgfleet_agent::start(agent_config).unwrap();
    let reader = pgfleet_cli::connect(&remote(Some(READ))).await.unwrap();
    wait_for_status(&reader, "db-read", "up", Duration::from_secs(20)).await;
    assert!(
        fleet_server(&mut reader.clone(), "db-read-intruder")
            .await
            .is_err(),
        "nothing of the read token's stream is kept"
    );
    // The readers' port answers the same, from the same live fleet.
    let readers = pgfleet_cli::connect(&remote_at(&readers_url, Some(READ)))
        .await
        .unwrap();
    let there = fleet_server(&mut readers.clone(), "db-read").await.unwrap();
    assert_eq!(there.server_id, "db-read");
    let activity = readers
        .clone()
        .get_activity(pgfleet_proto::v1::GetActivityRequest {
            server_id: "db-read".into(),
            include_background: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        activity.server.map(|s| s.server_id).as_deref(),
        Some("db-read")
    );
    assert!(
        activity.sampled_at.is_some() && !activity.sessions.is_empty(),
        "{:?}",
        activity.sessions
    );
    // Watch gives its first event on either port; both stay open to the end.
    let mut watches = Vec::new();
    for client in [&reader, &readers] {
        let mut watch = client
            .clone()
            .watch(pgfleet_proto::v1::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(watch.message().await.unwrap().is_some(), "the first event");
        watches.push(watch);
    }
    // Its workers run 5 steps of nice above the test's threads, where the
    // system allows it (CI runs as root, with CAP_SYS_NICE).
    if pgfleet_common::sched::may_lower_nice() {
        let raised = nice_of_threads("pgfleet-reads")
            .into_iter()
            .filter(|&n| n == -5)
            .count();
        assert!(raised >= 2, "{:?}", nice_of_threads("pgfleet-reads"));
    }

    // Health checking and reflection stay open, on either port.
    for url in [&url, &readers_url] {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let health = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "pgfleet.v1.Query".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            health.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // The CLI: one line naming the flag without a token; the token from
    // PGFLEET_TOKEN or from --token-file.
    let out = pgfleet(&["--collector", &url, "servers"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    let out = pgfleet(
        &["--collector", &url, "servers"],
        &[("PGFLEET_TOKEN", READ)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("db-read"));
    let file = cluster.dir().join("read-token");
    std::fs::write(&file, format!("{READ}\n")).unwrap();
    let out = pgfleet(
        &[
            "--collector",
            &url,
            "--token-file",
            file.to_str().unwrap(),
            "servers",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("db-read"));

    // The example internal tool (Python, grpcio) presents it too.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/python/pgfleet_fleet_report.py"
    );
    let collector_addr = collector.addr.to_string();
    let tool = |token: Option<&str>| {
        let mut c = std::process::Command::new("python3");
        c.args([script, "--collector", &collector_addr, "--json"])
            .env_remove("PGFLEET_TOKEN");
        if let Some(t) = token {
            c.env("PGFLEET_TOKEN", t);
        }
        c.output().expect("python3 runs")
    };
    let out = tool(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("UNAUTHENTICATED"),
        "{stderr}"
    );
    let out = tool(Some(READ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["servers"][0]["server_id"], "db-read", "{report}");

    drop(watches);
    agent.stop().await;
    collector.stop().await;
    cluster.destroy().await;
}

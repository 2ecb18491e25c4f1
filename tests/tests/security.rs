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

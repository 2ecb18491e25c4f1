//! What an operator sees when the agent's target is wrong: the server is down at
//! the collector, with a reason that names the cause.

use std::time::Duration;

use pgfleet_agent::AgentConfig;
use pgfleet_tests::{PASSWORD_GROUP, fleet, free_port, server, wait_for};

async fn reason_for(
    fleet: &pgfleet_tests::Fleet,
    server_id: &str,
    target: tokio_postgres::Config,
) -> String {
    let mut config = AgentConfig::new(&fleet.url, target);
    config.agent_id = format!("agent-{server_id}");
    config.server_id = server_id.to_owned();
    let agent = pgfleet_agent::start(config).unwrap();
    let client = fleet.client().await.unwrap();
    let down = wait_for(
        "the server to be reported down",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            let id = server_id.to_owned();
            async move {
                let s = server(&mut c, &id).await?;
                if s.status == "down" {
                    Ok(s.reason)
                } else {
                    Err(format!("{} ({})", s.status, s.reason))
                }
            }
        },
    )
    .await;
    agent.stop().await;
    down
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_absent_server_are_named() {
    let fleet = fleet("db-bad-input", &[]).await;
    let admin = fleet.cluster.connect("t-setup").await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {PASSWORD_GROUP}; CREATE ROLE mon LOGIN PASSWORD 'right' IN ROLE {PASSWORD_GROUP}; GRANT pg_monitor TO mon;"
        ))
        .await
        .unwrap();

    let mut wrong = fleet.cluster.config("x");
    wrong.user("mon").password("wrong");
    let reason = reason_for(&fleet, "db-wrong-password", wrong).await;
    assert!(
        reason.contains("password authentication failed for user \"mon\""),
        "{reason}"
    );

    let mut right = fleet.cluster.config("x");
    right.user("mon").password("right");
    let mut config = AgentConfig::new(&fleet.url, right);
    config.agent_id = "agent-right".into();
    config.server_id = "db-right-password".into();
    let agent = pgfleet_agent::start(config).unwrap();
    let client = fleet.client().await.unwrap();
    wait_for(
        "the right password to work",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            async move {
                server(&mut c, "db-right-password")
                    .await
                    .and_then(|s| if s.up { Ok(()) } else { Err(s.reason) })
            }
        },
    )
    .await;
    agent.stop().await;

    let mut absent = tokio_postgres::Config::new();
    absent
        .host("127.0.0.1")
        .port(free_port().unwrap())
        .user("postgres");
    let reason = reason_for(&fleet, "db-absent", absent).await;
    assert!(reason.contains("Connection refused"), "{reason}");
    fleet.stop().await;
}

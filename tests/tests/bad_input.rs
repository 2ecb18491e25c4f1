//! What an operator sees when the agent's target is wrong: the server is down at
//! the collector, with a reason that names the cause.

use std::time::Duration;

use pgfleet_tests::{Fleet, PASSWORD_GROUP, fleet, free_port, wait_for_status};

/// The status an agent watching `target` gets at the collector, and its reason.
async fn outcome(
    fleet: &Fleet,
    server_id: &str,
    target: tokio_postgres::Config,
    status: &str,
) -> String {
    let agent = fleet.start_agent(server_id, &[], target).unwrap();
    let client = fleet.client().await.unwrap();
    let server = wait_for_status(&client, server_id, status, Duration::from_secs(15)).await;
    agent.stop().await;
    server.reason
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
    let reason = outcome(&fleet, "db-wrong-password", wrong, "down").await;
    assert!(
        reason.contains("password authentication failed for user \"mon\""),
        "{reason}"
    );

    // The same role with the right password works, so the test above is about it.
    let mut right = fleet.cluster.config("x");
    right.user("mon").password("right");
    let reason = outcome(&fleet, "db-right-password", right, "up").await;
    assert!(reason.is_empty(), "{reason}");

    let mut absent = tokio_postgres::Config::new();
    absent
        .host("127.0.0.1")
        .port(free_port().unwrap())
        .user("postgres");
    let reason = outcome(&fleet, "db-absent", absent, "down").await;
    assert!(reason.contains("Connection refused"), "{reason}");
    fleet.stop().await;
}

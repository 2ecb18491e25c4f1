//! The `pgfleet-agent` binary as an operator runs it.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgfleet-agent"));
    for var in [
        "PGFLEET_CONFIG",
        "PGFLEET_TARGET",
        "PGFLEET_COLLECTOR",
        "PGHOST",
        "PGPORT",
    ] {
        c.env_remove(var);
    }
    c
}

fn fails_with_one_line(out: Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr:?}"
    );
    for w in words {
        assert!(stderr.contains(w), "{w:?} missing from {stderr:?}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn configuration_errors_are_one_line_at_start() {
    fails_with_one_line(
        agent().arg("--frobnicate").output().unwrap(),
        &["--frobnicate"],
    );
    fails_with_one_line(
        agent().args(["--interval", "0s"]).output().unwrap(),
        &["interval"],
    );
    fails_with_one_line(
        agent().args(["--label", "dc"]).output().unwrap(),
        &["label", "name=value"],
    );
    fails_with_one_line(
        agent()
            .args(["--target", "postgres://h:port/x"])
            .output()
            .unwrap(),
        &["target"],
    );
    fails_with_one_line(
        agent().args(["--collector", "ftp://x"]).output().unwrap(),
        &["collector"],
    );
    fails_with_one_line(
        agent().env("PGFLEET_INTERVAL", "fast").output().unwrap(),
        &["interval", "fast"],
    );

    let dir = std::env::temp_dir().join(format!("pgfleet-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("agent.toml");
    std::fs::write(
        &bad,
        "target = \"postgres://x\"\nsampel_interval = \"1s\"\n",
    )
    .unwrap();
    fails_with_one_line(
        agent()
            .args(["--config", bad.to_str().unwrap()])
            .output()
            .unwrap(),
        &["agent.toml", "sampel_interval"],
    );
    fails_with_one_line(
        agent()
            .args(["--config", "/nonexistent.toml"])
            .output()
            .unwrap(),
        &["/nonexistent.toml"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_example_config_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let file: pgfleet_agent::config::AgentFile =
        pgfleet_common::settings::parse_toml(std::path::Path::new(path), &text).unwrap();
    assert!(file.collector.is_some() && file.target.is_some() && !file.labels.is_empty());
    let args = pgfleet_agent::AgentArgs {
        config: Some(path.into()),
        ..Default::default()
    };
    let config = pgfleet_agent::AgentConfig::resolve(args, |_| None).unwrap();
    assert_eq!(config.targets[0].server_id, "orders-db-1");
    assert_eq!(config.labels["dc"], "eu1");

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent-multi.toml");
    let args = pgfleet_agent::AgentArgs {
        config: Some(path.into()),
        ..Default::default()
    };
    let config = pgfleet_agent::AgentConfig::resolve(args, |_| None).unwrap();
    let ids: Vec<_> = config
        .targets
        .iter()
        .map(|t| t.server_id.as_str())
        .collect();
    assert_eq!(ids, ["orders-db-1", "billing-db-1"]);
    assert!(config.targets[0].pgbouncer.is_some());
    assert_eq!(config.targets[1].labels["role"], "replica");
}

#[test]
fn help_shows_examples_and_the_role_needed() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("GRANT pg_monitor"),
        "{text}"
    );
}

#[test]
fn an_absent_database_and_collector_are_retried_not_fatal() {
    let mut child = agent()
        .args([
            "--target",
            &format!("postgres://nobody@127.0.0.1:{}/postgres", free_port()),
            "--collector",
            &format!("127.0.0.1:{}", free_port()),
            "--interval",
            "200ms",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited during an outage"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    // Several retries in 4 s, but each cause is logged once.
    assert_eq!(logs.matches("Target is down").count(), 1, "{logs}");
    assert!(logs.contains("Connection refused"), "{logs}");
    assert_eq!(
        logs.matches("Cannot reach the collector").count(),
        1,
        "{logs}"
    );
}

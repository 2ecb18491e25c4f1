//! Settings from flags, variables and files, and what is refused.

use super::*;
use clap::Parser;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn collectors_to_fail_over_to_come_from_repeated_flags_or_a_list() {
    let args = AgentArgs::parse_from([
        "pgfleet-agent",
        "--collector",
        "a:7600",
        "--collector",
        "http://b:7600,c:7600",
    ]);
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(c.collector, "http://a:7600");
    assert_eq!(c.fallback_collectors, ["http://b:7600", "http://c:7600"]);

    let dir = std::env::temp_dir().join(format!("pgfleet-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, "collector = [\"x:1\", \"y:2\"]\n").unwrap();
    let args = AgentArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(
        (c.collector.as_str(), c.fallback_collectors.len()),
        ("http://x:1", 1)
    );
    std::fs::remove_dir_all(dir).unwrap();

    let mixed = AgentArgs::parse_from([
        "pgfleet-agent",
        "--collector",
        "https://a:7600,http://b:7600",
    ]);
    let err = AgentConfig::resolve(mixed, no_env).unwrap_err().to_string();
    assert!(err.contains("every collector as https://"), "{err}");
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let dir = std::env::temp_dir().join(format!("pgfleet-agent-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        "collector = \"c1:7600\"\nserver_id = \"from-file\"\ninterval = \"5s\"\n[labels]\ndc = \"eu1\"\nrole = \"primary\"\n",
    )
    .unwrap();
    let args = AgentArgs::parse_from([
        "pgfleet-agent",
        "--config",
        path.to_str().unwrap(),
        "--server-id",
        "from-flag",
        "--label",
        "dc=us2",
    ]);
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(c.targets.len(), 1);
    assert_eq!(c.targets[0].server_id, "from-flag");
    assert_eq!(c.targets[0].databases, Databases::All);
    assert_eq!(c.query_text, QueryText::Masked);
    assert_eq!(c.pool_reporter, Some(DEFAULT_POOL_REPORTER));
    assert_eq!(c.collector, "http://c1:7600");
    assert_eq!(c.interval, Duration::from_secs(5));
    assert_eq!(c.labels["dc"], "us2");
    assert_eq!(c.labels["role"], "primary");
    assert_eq!(c.statement_timeout, Duration::from_secs(2));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_token_comes_from_its_file_or_pgfleet_token_and_is_checked() {
    let env = |k: &str| (k == "PGFLEET_TOKEN").then(|| "env-token-0123456789abcdef".to_owned());
    let c = AgentConfig::resolve(AgentArgs::default(), env).unwrap();
    assert!(c.token.unwrap().matches(b"env-token-0123456789abcdef"));
    assert!(
        AgentConfig::resolve(AgentArgs::default(), no_env)
            .unwrap()
            .token
            .is_none()
    );

    let dir = std::env::temp_dir().join(format!("pgfleet-agent-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "file-token-0123456789abcdef\n").unwrap();
    let args = AgentArgs {
        token_file: Some(path.clone()),
        ..Default::default()
    };
    let c = AgentConfig::resolve(args, env).unwrap();
    assert!(
        c.token.unwrap().matches(b"file-token-0123456789abcdef"),
        "the file wins"
    );
    std::fs::write(
        &path,
        "file-token-0123456789abcdef\nsecond-token-0123456789ab\n",
    )
    .unwrap();
    let args = AgentArgs {
        token_file: Some(path),
        ..Default::default()
    };
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(err.contains("more than one token"), "{err}");
    let short = |k: &str| (k == "PGFLEET_TOKEN").then(|| "short".to_owned());
    let err = AgentConfig::resolve(AgentArgs::default(), short)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid `token`"), "{err}");
    assert!(!err.contains("short"), "the token never shows: {err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let err = settings::parse_toml::<AgentFile>(std::path::Path::new("a.toml"), "colector = 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.toml") && err.contains("colector"), "{err}");
    let args = AgentArgs::parse_from(["pgfleet-agent", "--interval", "0s"]);
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(err.starts_with("invalid `interval`"), "{err}");
    let args = AgentArgs {
        config: Some("/nonexistent/agent.toml".into()),
        ..Default::default()
    };
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(
        err.contains("cannot read config file /nonexistent/agent.toml"),
        "{err}"
    );
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfleet-agent-cfg-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn several_targets_each_with_their_own_settings() {
    let path = write_config(
        "multi",
        r#"
query_text = "raw"
pool_reporter_listen = "off"
[labels]
dc = "eu1"
[[targets]]
target = "postgres://mon@db1:5432/postgres"
server_id = "orders-1"
databases = ["orders", "billing"]
pgbouncer = "postgres://pgbouncer@db1:6432/pgbouncer"
[targets.labels]
role = "primary"
[[targets]]
target = "host=db2 port=5433 user=mon"
databases = "*"
"#,
    );
    let args = AgentArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(c.targets.len(), 2);
    assert_eq!(c.targets[0].server_id, "orders-1");
    assert_eq!(
        c.targets[0].databases,
        Databases::Only(vec!["orders".into(), "billing".into()])
    );
    assert_eq!(c.targets[0].labels["role"], "primary");
    let bouncer = c.targets[0].pgbouncer.as_ref().unwrap();
    assert_eq!(bouncer.config.get_dbname(), Some("pgbouncer"));
    assert_eq!(c.targets[1].server_id, "db2:5433");
    assert_eq!(c.targets[1].databases, Databases::All);
    assert!(c.targets[1].pgbouncer.is_none());
    assert_eq!(c.labels["dc"], "eu1");
    assert_eq!(c.query_text, QueryText::Raw);
    assert_eq!(c.pool_reporter, None);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn target_lists_refuse_duplicates_and_stray_keys() {
    let dup = write_config(
        "dup",
        "[[targets]]\ntarget = \"host=a\"\nserver_id = \"x\"\n[[targets]]\ntarget = \"host=b\"\nserver_id = \"x\"\n",
    );
    let args = AgentArgs {
        config: Some(dup.clone()),
        ..Default::default()
    };
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(err.contains("\"x\" names two targets"), "{err}");
    let args = AgentArgs {
        config: Some(dup.clone()),
        target: Some("host=c".into()),
        ..Default::default()
    };
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(err.contains("inside each [[targets]]"), "{err}");
    std::fs::remove_dir_all(dup.parent().unwrap()).unwrap();
}

#[test]
fn databases_query_text_and_reporter_values_are_checked() {
    assert_eq!(Databases::parse(" * "), Ok(Databases::All));
    assert_eq!(
        Databases::parse("a, b"),
        Ok(Databases::Only(vec!["a".into(), "b".into()]))
    );
    assert!(Databases::parse("a,,b").is_err());
    for (flag, value, key) in [
        ("--databases", "a,*", "databases"),
        ("--query-text", "secret", "query_text"),
        (
            "--pool-reporter-listen",
            "localhost",
            "pool_reporter_listen",
        ),
    ] {
        let args = AgentArgs::parse_from(["pgfleet-agent", flag, value]);
        let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.starts_with(&format!("invalid `{key}`")), "{err}");
    }
    let err = settings::parse_toml::<AgentFile>(std::path::Path::new("a.toml"), "databases = 5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("databases"), "{err}");
}

#[test]
fn the_statements_interval_is_a_duration_no_shorter_than_sampling_or_off() {
    let c = AgentConfig::resolve(AgentArgs::default(), no_env).unwrap();
    assert_eq!(c.statements_interval, Some(Duration::from_secs(60)));
    let args = AgentArgs::parse_from(["pgfleet-agent", "--statements-interval", "5m"]);
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(c.statements_interval, Some(Duration::from_secs(300)));
    let args = AgentArgs::parse_from(["pgfleet-agent", "--statements-interval", "OFF"]);
    assert_eq!(
        AgentConfig::resolve(args, no_env)
            .unwrap()
            .statements_interval,
        None
    );
    // Equal to the sampling interval: every sample reads it.
    let args = AgentArgs::parse_from(["pgfleet-agent", "--statements-interval", "1s"]);
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(c.statements_interval, Some(c.interval));

    let args = AgentArgs::parse_from([
        "pgfleet-agent",
        "--interval",
        "2s",
        "--statements-interval",
        "1500ms",
    ]);
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(
        err.starts_with("invalid `statements_interval`")
            && err.contains("shorter than the sampling interval (2s)")
            && err.contains("\"off\""),
        "{err}"
    );
    let args = AgentArgs::parse_from(["pgfleet-agent", "--statements-interval", "soon"]);
    let err = AgentConfig::resolve(args, no_env).unwrap_err().to_string();
    assert!(
        err.starts_with("invalid `statements_interval`") && err.contains("or \"off\""),
        "{err}"
    );

    // The default follows a sampling interval longer than it; the file's key
    // is read too.
    let path = write_config(
        "statements",
        "interval = \"2m\"\n[[targets]]\ntarget = \"host=a\"\n",
    );
    let args = AgentArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = AgentConfig::resolve(args, no_env).unwrap();
    assert_eq!(c.statements_interval, Some(Duration::from_secs(120)));
    std::fs::write(&path, "statements_interval = \"off\"\n").unwrap();
    let args = AgentArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    assert_eq!(
        AgentConfig::resolve(args, no_env)
            .unwrap()
            .statements_interval,
        None
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_targets_cpus_are_given_by_flag_or_file_and_never_zero() {
    let cpus = |argv: &[&str]| {
        let mut all = vec!["pgfleet-agent"];
        all.extend_from_slice(argv);
        AgentConfig::resolve(AgentArgs::parse_from(all), no_env).map(|c| c.targets[0].cpus)
    };
    assert_eq!(cpus(&["--target", "host=db1.example"]).unwrap(), None);
    assert_eq!(
        cpus(&["--target", "host=db1.example", "--server-cpus", "16"]).unwrap(),
        Some(16)
    );
    let err = cpus(&["--target", "host=db1.example", "--server-cpus", "0"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server_cpus") && err.contains("0 CPUs"),
        "{err}"
    );

    let path = write_config(
        "cpus",
        "[[targets]]\ntarget = \"host=a.example\"\nserver_cpus = 8\n[[targets]]\ntarget = \"host=b.example\"\n",
    );
    let c = AgentConfig::resolve(
        AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        },
        no_env,
    )
    .unwrap();
    let got: Vec<Option<u32>> = c.targets.iter().map(|t| t.cpus).collect();
    assert_eq!(got, [Some(8), None]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

//! The `pgfleet` command as a user runs it. (The `pgfleet-collector` binary's
//! own tests are in the pgfleet-collector crate.)

use std::process::{Command, Output};
use std::time::Duration;

use pgfleet_cli::sandbox::{Fleet, free_port};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("PGFLEET_COLLECTOR")
        .env_remove("PGFLEET_CONFIG")
        .env_remove("PGFLEET_OUTPUT")
        .env_remove("PGFLEET_TIMEOUT")
        .output()
        .expect("the binary runs")
}

fn pgfleet(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_pgfleet"), args)
}

/// Asserts the process failed with `code` and said exactly one line containing
/// every one of `words`.
fn fails_with_one_line(out: &Output, code: i32, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr:?}"
    );
    for w in words {
        assert!(stderr.contains(w), "{w:?} missing from {stderr:?}");
    }
}

#[test]
fn an_unreachable_collector_is_one_line_and_a_failure() {
    let url = format!("http://127.0.0.1:{}", free_port().unwrap());
    for args in [vec!["servers"], vec!["activity", "db-1"]] {
        let mut full = vec!["--collector", url.as_str()];
        full.extend(args);
        fails_with_one_line(
            &pgfleet(&full),
            1,
            &["cannot reach the collector", &url, "refused"],
        );
    }
}

#[test]
fn a_collector_that_does_not_answer_in_time_is_one_line_saying_what_to_give() {
    // It takes the connection and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let out = pgfleet(&["--collector", &url, "--timeout", "2s", "servers"]);
    fails_with_one_line(
        &out,
        1,
        &["did not answer within 2s (--timeout)", "like 5m"],
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "waited {took:?}, less than --timeout"
    );
}

#[test]
fn usage_errors_are_one_line_with_exit_code_2() {
    fails_with_one_line(
        &pgfleet(&["--timeout", "soon", "servers"]),
        2,
        &["timeout", "soon"],
    );
    fails_with_one_line(&pgfleet(&["servers", "--bogus"]), 2, &["--bogus"]);
    fails_with_one_line(
        &pgfleet(&["activity", "db-1", "--state", "sleeping"]),
        2,
        &["sleeping", "idle in transaction"],
    );
    fails_with_one_line(
        &pgfleet(&["activity", "db-1", "--min-duration", "soon"]),
        2,
        &["min-duration", "soon"],
    );
    fails_with_one_line(
        &pgfleet(&["--collector", "ftp://x", "servers"]),
        2,
        &["collector"],
    );

    let dir = std::env::temp_dir().join(format!("pgfleet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "collector = [unclosed\n").unwrap();
    fails_with_one_line(
        &pgfleet(&["--config", bad.to_str().unwrap(), "servers"]),
        2,
        &["bad.toml"],
    );
    std::fs::write(&bad, "timeout = \"soon\"\n").unwrap();
    fails_with_one_line(
        &pgfleet(&["--config", bad.to_str().unwrap(), "servers"]),
        2,
        &["timeout", "soon"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn help_shows_examples() {
    let out = pgfleet(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("PGFLEET_"),
        "{text}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    let bash = pgfleet(&["completions", "bash"]);
    assert!(bash.status.success());
    let text = String::from_utf8_lossy(&bash.stdout);
    for command in ["top", "top-sessions", "metrics", "completions"] {
        assert!(text.contains(command), "{command} missing");
    }
    // bash reads it without a syntax error.
    let mut check = Command::new("bash")
        .args(["-n", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(&bash.stdout).unwrap();
    assert!(check.wait().unwrap().success());
    for shell in ["zsh", "fish"] {
        let out = pgfleet(&["completions", shell]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("top-sessions")
        );
    }
    fails_with_one_line(&pgfleet(&["completions", "tcsh"]), 2, &["tcsh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_activity_print_tables_and_json_with_proto_field_names() {
    let fleet = Fleet::start("db-cli", &[("dc", "eu1"), ("cluster", "orders")])
        .await
        .unwrap();
    let sleeper = fleet.cluster.connect("cli-sleeper").await.unwrap();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60)").await });
    let url = fleet.url.clone();

    // Wait until the collector has the session; the CLI is then asked once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let table = loop {
        let out = tokio::task::spawn_blocking({
            let url = url.clone();
            move || pgfleet(&["--collector", &url, "activity", "db-cli"])
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The session shows idle between connecting and starting its query.
        let running = text.lines().any(|l| {
            l.contains("cli-sleeper") && l.contains("active") && l.contains("pg_sleep(?)")
        });
        if running || tokio::time::Instant::now() > deadline {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            break text;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(table.contains("PID") && table.contains("QUERY"), "{table}");
    let line = table
        .lines()
        .find(|l| l.contains("cli-sleeper"))
        .expect("the session is listed");
    for part in [
        "postgres",
        "active",
        "Timeout:PgSleep",
        "SELECT pg_sleep(?)",
    ] {
        assert!(line.contains(part), "{part} missing from {line:?}");
    }

    let servers = pgfleet(&["--collector", &url, "servers"]);
    let text = String::from_utf8_lossy(&servers.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("db-cli"))
        .expect("db-cli is listed");
    assert!(
        row.contains(" up ") && row.contains("cluster=orders,dc=eu1"),
        "{row}"
    );

    let json = pgfleet(&["--collector", &url, "--output", "json", "servers"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let server = &value.as_array().expect("an array")[0];
    let mut keys: Vec<_> = server.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent",
            "agent_id",
            "collector",
            "info",
            "labels",
            "last_seen",
            "load",
            "reason",
            "sample_interval",
            "server_id",
            "sessions",
            "status",
            "stream",
            "up"
        ]
    );
    assert_eq!(server["labels"]["dc"], "eu1");
    assert_eq!(server["up"], true);
    // Load now, by wait type, and the last 5 minutes (one per 10 s).
    assert!(
        server["load"]["load"].is_number()
            && server["load"]["by_wait_type"].is_array()
            && server["load"]["recent"]
                .as_array()
                .is_some_and(|r| r.len() <= 30),
        "{server}"
    );
    assert!(
        server["info"]["version_num"].as_u64() >= Some(100000),
        "{server}"
    );

    let json = pgfleet(&[
        "--collector",
        &url,
        "-o",
        "json",
        "activity",
        "db-cli",
        "--state",
        "active",
    ]);
    let sessions: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let s = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["application_name"] == "cli-sleeper")
        .expect("the sleeper is active");
    assert_eq!(s["query"], "SELECT pg_sleep(?)");
    assert_eq!(s["fingerprint"].as_str().map(str::len), Some(16));
    assert!(s["query_start"].as_str().unwrap().ends_with('Z'));
    assert!(s["blocked_by"].as_array().unwrap().is_empty());

    // A minimum duration longer than the query hides it; the env var works as the flag.
    let out = Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(["activity", "db-cli", "--min-duration", "1h"])
        .env("PGFLEET_COLLECTOR", &url)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cli-sleeper"));

    fails_with_one_line(
        &pgfleet(&["--collector", &url, "activity", "nope"]),
        1,
        &["no server \"nope\""],
    );

    // The pools and the database counters of the same server.
    let out = pgfleet(&["--collector", &url, "pools", "db-cli"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Connection slots:") && text.contains("cli-sleeper=1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("pgfleet-agent") && l.contains("agent")),
        "{text}"
    );
    let out = pgfleet(&["--collector", &url, "-o", "json", "databases", "db-cli"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["totals"]["database"].as_str().unwrap_or(""))
        .collect();
    assert!(names.contains(&"postgres"), "{value}");
    fails_with_one_line(
        &pgfleet(&["--collector", &url, "pools", "nope"]),
        1,
        &["no server \"nope\""],
    );
    query.abort();
    fleet.stop().await;
}

/// The path the demo said it removed, from its last line on stderr.
fn removed_dirs(stderr: &str) -> Vec<std::path::PathBuf> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("Stopped the demo and removed "))
        .unwrap_or_else(|| panic!("the demo did not say it cleaned up: {stderr}"));
    let dirs: Vec<std::path::PathBuf> = line
        .trim_start_matches("Stopped the demo and removed ")
        .trim_end_matches('.')
        .split(" and ")
        .map(Into::into)
        .collect();
    assert_eq!(dirs.len(), 2, "both servers' directories: {line}");
    dirs
}

/// Starts `pgfleet demo --keep-running`, reads what it prints up to the
/// commands it offers, and returns it with that text.
fn kept_demo() -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(["demo", "--keep-running"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        printed.push_str(&line);
        if line.contains("psql -h") {
            break;
        }
        line.clear();
    }
    (child, printed)
}

/// Sends `signal` to the demo, and checks it ends well, having removed both
/// servers' directories.
fn stops_cleanly(mut child: std::process::Child, signal: &str) {
    use std::io::Read;
    assert!(
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{signal}: {status:?}: {stderr}");
    for dir in removed_dirs(&stderr) {
        assert!(!dir.exists(), "{signal}: {} is left", dir.display());
    }
}

#[test]
fn the_demo_shows_live_sessions_and_cleans_up() {
    let out = pgfleet(&["demo", "--duration", "3s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    for seen in [
        "$ pgfleet servers",
        "demo-db-1",
        "cluster=demo,dc=demo-dc1",
        "demo-db-2",
        "cluster=demo,dc=demo-dc2",
        "$ pgfleet activity demo-db-1",
        "demo-report",
        "idle in transaction",
        "Lock:transactionid",
        "UPDATE accounts SET balance = balance - ? WHERE id = ?",
        "$ pgfleet pools demo-db-1",
        "Connection slots:",
        "demo-checkout=1",
    ] {
        assert!(stdout.contains(seen), "{seen:?} missing from:\n{stdout}");
    }
    // The waiter's BLOCKED BY names the pid of the session idle in transaction.
    let holder = stdout
        .lines()
        .find(|l| l.contains("demo-batch"))
        .expect("the holder");
    let holder_pid = holder.split_whitespace().next().unwrap();
    let waiter = stdout
        .lines()
        .find(|l| l.contains("demo-checkout"))
        .expect("the waiter");
    assert!(
        waiter.contains(&format!("Lock:transactionid  {holder_pid} ")),
        "{waiter}"
    );
    for dir in removed_dirs(&stderr) {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn a_kept_demo_answers_the_commands_it_prints_and_cleans_up_on_ctrl_c() {
    let (child, printed) = kept_demo();
    let servers_cmd = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pgfleet --collector") && l.ends_with(" servers"))
        .unwrap_or_else(|| panic!("no servers command in:\n{printed}"));
    let args: Vec<&str> = servers_cmd.split_whitespace().skip(1).collect();
    let listed = pgfleet(&args);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("demo-db-1") && text.contains("demo-db-2"),
        "{text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(printed.contains(" top"), "the demo offers top: {printed}");
    stops_cleanly(child, "-INT");
}

#[test]
fn a_kept_demo_cleans_up_when_its_terminal_closes_or_it_is_killed_politely() {
    for signal in ["-HUP", "-TERM"] {
        let (child, _) = kept_demo();
        stops_cleanly(child, signal);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_adds_the_fleet_up_per_label_value() {
    let fleet = Fleet::start("db-sum-1", &[("dc", "eu1")]).await.unwrap();
    let mut agents = Vec::new();
    for (id, dc) in [("db-sum-2", "eu1"), ("db-sum-3", "us1")] {
        let target = fleet.cluster.config("pgfleet");
        agents.push(fleet.start_agent(id, &[("dc", dc)], target).unwrap());
    }
    // A transaction left open, so that there is a longest one.
    let open = fleet.cluster.connect("sum-open-tx").await.unwrap();
    open.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let url = fleet.url.clone();
    let mut client = fleet.client().await.unwrap();
    let rows = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let rows = client
                .fleet_summary(pgfleet_proto::v1::FleetSummaryRequest {
                    group_by: "dc".into(),
                    labels: Default::default(),
                })
                .await
                .unwrap()
                .into_inner()
                .rows;
            // Every server has sampled the open transaction: two in eu1, one
            // in us1.
            let in_tx = |r: &pgfleet_proto::v1::FleetSummaryRow| {
                r.sessions_by_state
                    .iter()
                    .filter(|c| c.name == "idle in transaction")
                    .map(|c| c.count)
                    .sum::<u32>()
            };
            let ready = rows.iter().map(|r| r.servers_up).sum::<u32>() == 3
                && rows.iter().map(in_tx).collect::<Vec<_>>() == [2, 1];
            if ready || std::time::Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let values: Vec<_> = rows
        .iter()
        .map(|r| (r.value.as_str(), r.servers, r.servers_up))
        .collect();
    assert_eq!(values, [("eu1", 2, 2), ("us1", 1, 1)], "{rows:?}");
    let eu1 = &rows[0];
    assert!(eu1.sessions >= 2, "{eu1:?}");
    assert!(
        eu1.sessions_by_state
            .iter()
            .any(|c| c.name == "idle in transaction" && c.count == 2),
        "both eu1 servers see the open transaction: {eu1:?}"
    );
    assert!(eu1.longest_transaction_server.starts_with("db-sum-"));
    assert!(eu1.max_slot_utilisation > 0.0 && !eu1.most_saturated_server.is_empty());

    // The CLI prints it, and refuses a label name it cannot be.
    let out = pgfleet(&["--collector", &url, "summary", "--by", "dc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("DC "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("us1 ")), "{text}");
    fails_with_one_line(
        &pgfleet(&["--collector", &url, "summary", "--by", "data-centre"]),
        2,
        &["data-centre"],
    );
    let json = pgfleet(&["--collector", &url, "--output", "json", "summary"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value[0]["servers"], 3);
    let status = client
        .fleet_summary(pgfleet_proto::v1::FleetSummaryRequest {
            group_by: "no such label!".into(),
            labels: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for a in agents {
        a.stop().await;
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_sessions_blocking_trees_and_activity_filters_find_the_culprits() {
    use pgfleet_proto::v1;
    let fleet = Fleet::start("db-blk", &[("dc", "eu1")]).await.unwrap();
    // A report, an idle-in-transaction session holding a row lock, and a
    // session waiting for that lock (among others).
    let _workload = pgfleet_cli::sandbox::DemoWorkload::start(&fleet.cluster)
        .await
        .unwrap();
    let url = fleet.url.clone();
    let mut client = fleet.client().await.unwrap();
    let trees = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let trees = client
                .blocking_trees(v1::BlockingTreesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .trees;
            if !trees.is_empty() || std::time::Instant::now() > deadline {
                break trees;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(trees.len(), 1, "{trees:?}");
    let root = trees[0].root.as_ref().unwrap();
    let app = |n: &v1::BlockingNode| n.session.as_ref().unwrap().application_name.clone();
    assert_eq!(app(root), "demo-batch");
    assert_eq!(
        root.waiters.iter().map(app).collect::<Vec<_>>(),
        ["demo-checkout"]
    );
    assert_eq!(
        (trees[0].server_id.as_str(), trees[0].waiting),
        ("db-blk", 1)
    );

    let top = |order: &str, limit: u32| {
        let mut c = client.clone();
        let order = order.to_owned();
        async move {
            c.top_sessions(v1::TopSessionsRequest {
                order_by: order,
                labels: [("dc".to_owned(), "eu1".to_owned())].into(),
                limit,
            })
            .await
        }
    };
    let idle = top("idle_in_transaction", 5)
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert_eq!(
        idle[0].session.as_ref().unwrap().application_name,
        "demo-batch"
    );
    let oldest = top("xact_age", 2).await.unwrap().into_inner().sessions;
    assert_eq!(oldest.len(), 2);
    assert_eq!(
        top("longest", 5).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let too_many = top("xact_age", 5000).await.unwrap_err();
    assert!(too_many.message().contains("1000"), "{too_many:?}");

    let activity = |req: v1::GetActivityRequest| {
        let mut c = client.clone();
        async move {
            c.get_activity(v1::GetActivityRequest {
                server_id: "db-blk".into(),
                ..req
            })
            .await
            .unwrap()
            .into_inner()
            .sessions
            .into_iter()
            .map(|s| s.application_name)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        activity(v1::GetActivityRequest {
            wait_event_type: "Lock".into(),
            ..Default::default()
        })
        .await,
        ["demo-checkout"]
    );
    assert_eq!(
        activity(v1::GetActivityRequest {
            application_name: "demo-report".into(),
            database: "postgres".into(),
            user: "postgres".into(),
            ..Default::default()
        })
        .await,
        ["demo-report"]
    );

    // The CLI shows the same.
    let out = pgfleet(&["--collector", &url, "blocking"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let batch = lines.iter().position(|l| l.contains("demo-batch")).unwrap();
    assert!(
        lines[batch + 1].starts_with("  ") && lines[batch + 1].contains("demo-checkout"),
        "{text}"
    );
    let out = pgfleet(&[
        "--collector",
        &url,
        "top-sessions",
        "--by",
        "idle_in_transaction",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().nth(1).unwrap().starts_with("db-blk"), "{text}");
    let out = pgfleet(&["--collector", &url, "activity", "db-blk", "--wait", "Lock"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("demo-checkout") && !text.contains("demo-report"),
        "{text}"
    );

    // How full the pools are: the slots, and the agent's own pool.
    let pools = client
        .get_pools(v1::GetPoolsRequest {
            server_id: "db-blk".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let u = pools.utilisation.unwrap();
    let slots = pools.slots.unwrap();
    let expected = f64::from(slots.used) / f64::from(slots.max_connections - slots.reserved);
    assert!((u.slots - expected).abs() < 1e-9 && u.slots > 0.0, "{u:?}");
    assert_eq!(u.client_pools.len(), pools.client_pools.len());

    // CSV, for spreadsheets: the table's columns, whole query texts.
    let csv = |args: &[&str]| {
        let mut all = vec!["--collector", url.as_str(), "--output", "csv"];
        all.extend_from_slice(args);
        let out = pgfleet(&all);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = csv(&["activity", "db-blk"]);
    assert!(
        text.starts_with(
            "PID,DATABASE,USER,APPLICATION,CLIENT,STATE,WAIT,BLOCKED BY,DURATION,QUERY\r\n"
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("demo-setup") && l.contains("balance numeric NOT NULL)")),
        "the whole query text: {text}"
    );
    let text = csv(&["blocking"]);
    assert!(text.starts_with("SERVER,DEPTH,PID,"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("db-blk,1,") && l.contains("demo-checkout")),
        "{text}"
    );
    for (args, header) in [
        (vec!["servers"], "SERVER,STATUS,"),
        (vec!["summary", "--by", "dc"], "DC,SERVERS,"),
        (vec!["top-sessions"], "SERVER,PID,"),
        (vec!["pools", "db-blk"], "POOL,KIND,"),
        (vec!["databases", "db-blk"], "DATABASE,COMMITS,"),
    ] {
        let text = csv(&args);
        assert!(text.starts_with(header), "{args:?}: {text}");
        assert!(text.lines().count() >= 2, "{args:?}: {text}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_the_rollups_up_per_label_and_survive_a_restart() {
    use pgfleet_cli::sandbox::TempCluster;
    use pgfleet_proto::{time, v1};

    // Three transactions left open before any agent starts: every sample of
    // both servers (two agents watching one cluster) has exactly three.
    let cluster = TempCluster::start().await.unwrap();
    let mut open = Vec::new();
    for i in 0..3 {
        let c = cluster.connect(&format!("met-open-{i}")).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        open.push(c);
    }
    let mut fleet = Fleet::start_on(cluster, "db-met-1", &[("dc", "eu1")])
        .await
        .unwrap();
    let target = fleet.cluster.config("pgfleet");
    let other = fleet
        .start_agent("db-met-2", &[("dc", "us1")], target)
        .unwrap();
    let url = fleet.url.clone();
    let request = |metric: &str, matchers: &[&str], by: &[&str]| v1::QueryMetricsRequest {
        metric: metric.into(),
        matchers: matchers.iter().map(|m| m.to_string()).collect(),
        start: Some(time::timestamp(time::now_micros() - 10 * 60_000_000)),
        end: None,
        step: None,
        group_by: by.iter().map(|b| b.to_string()).collect(),
    };
    let in_tx = || request("sessions", &["state=\"idle in transaction\""], &["dc"]);
    let shape = |r: &v1::QueryMetricsResponse| -> Vec<(String, Vec<f64>)> {
        r.series
            .iter()
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (labels.join(","), s.points.iter().map(|p| p.value).collect())
            })
            .collect()
    };
    let mut client = fleet.client().await.unwrap();
    let before = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = client.query_metrics(in_tx()).await.unwrap().into_inner();
            if r.series.len() == 2 || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let series = shape(&before);
    let labels: Vec<&str> = series.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "dc=eu1,state=idle in transaction",
            "dc=us1,state=idle in transaction"
        ],
        "{before:?}"
    );
    for (_, points) in &series {
        assert!(points.iter().all(|v| *v == 3.0), "{series:?}");
    }
    // The whole fleet: both servers added up.
    let fleet_wide = client
        .query_metrics(request("sessions", &["state=~\"idle in.*\""], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        shape(&fleet_wide)
            .iter()
            .all(|(_, p)| p.iter().all(|v| *v == 6.0)),
        "{fleet_wide:?}"
    );
    let slots = client
        .query_metrics(request("pool_utilisation", &["pool=slots"], &["server_id"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(slots.series.len(), 2, "{slots:?}");
    assert!(
        slots
            .series
            .iter()
            .flat_map(|s| &s.points)
            .all(|p| p.value > 0.0 && p.value <= 1.0)
    );
    let age = client
        .query_metrics(request("max_xact_age_seconds", &["dc=eu1"], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        age.series[0].points.iter().any(|p| p.value > 0.0),
        "{age:?}"
    );

    // Bad input is named, not answered.
    for (req, says) in [
        (
            v1::QueryMetricsRequest {
                start: None,
                ..in_tx()
            },
            "no start",
        ),
        (request("sesions", &[], &[]), "unknown metric"),
        (request("sessions", &["dc~eu1"], &[]), "no operator"),
    ] {
        let status = client.query_metrics(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(says), "{status:?}");
    }

    // The CLI: table, CSV and JSON, and its usage errors.
    let table = pgfleet(&[
        "--collector",
        &url,
        "metrics",
        "sessions",
        "--range",
        "10m",
        "--by",
        "dc",
        "--match",
        "state=\"idle in transaction\"",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("DC   STATE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("us1  idle in transaction  ") && l.ends_with("  3")),
        "{text}"
    );
    let csv = pgfleet(&[
        "--collector",
        &url,
        "-o",
        "csv",
        "metrics",
        "blocked_sessions",
        "--range",
        "10m",
    ]);
    let text = String::from_utf8_lossy(&csv.stdout);
    assert!(
        text.starts_with("TIME,VALUE\r\n")
            && text.lines().nth(1).is_some_and(|l| l.ends_with(",0")),
        "{text}"
    );
    let json = pgfleet(&[
        "--collector",
        &url,
        "-o",
        "json",
        "metrics",
        "commits_per_second",
        "--by",
        "server_id",
    ]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["metric"], "commits_per_second");
    assert_eq!(value["series"].as_array().map(Vec::len), Some(2), "{value}");
    for (args, words) in [
        (
            vec!["metrics", "sesions"],
            vec!["unknown metric", "sessions"],
        ),
        (
            vec!["metrics", "sessions", "--step", "90s"],
            vec!["whole number of minutes"],
        ),
        (
            vec!["metrics", "sessions", "--range", "30d"],
            vec!["points per series", "at most 11000"],
        ),
        (
            vec!["metrics", "sessions", "--match", "dc~eu1"],
            vec!["dc~eu1"],
        ),
        (
            vec!["metrics", "sessions", "--end", "yesterday"],
            vec!["--end", "yesterday"],
        ),
    ] {
        let mut full = vec!["--collector", url.as_str()];
        full.extend(args);
        fails_with_one_line(&pgfleet(&full), 2, &words);
    }

    // A restarted collector still has every point it served.
    fleet.restart_collector(Duration::ZERO).await.unwrap();
    let mut client = fleet.client().await.unwrap();
    let after = client.query_metrics(in_tx()).await.unwrap().into_inner();
    let points = |r: &v1::QueryMetricsResponse| -> Vec<(String, i64, f64)> {
        r.series
            .iter()
            .flat_map(|s| {
                let dc = s.labels["dc"].clone();
                s.points.iter().map(move |p| {
                    (
                        dc.clone(),
                        time::timestamp_micros(p.at.as_ref().unwrap()),
                        p.value,
                    )
                })
            })
            .collect()
    };
    let kept = points(&after);
    for p in points(&before) {
        assert!(
            kept.contains(&p),
            "{p:?} is gone after the restart: {after:?}"
        );
    }
    other.stop().await;
    drop(open);
    fleet.stop().await;
}

/// `pgfleet` against `url`, run off the async workers (it blocks).
async fn ask(url: &str, args: &[&str]) -> Output {
    let mut full = vec!["--collector".to_owned(), url.to_owned()];
    full.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        pgfleet(&full.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_top_queries_and_churn_print_what_the_collector_counted() {
    let fleet = Fleet::start("db-load", &[("dc", "eu1")]).await.unwrap();
    let url = fleet.url.clone();

    // At once, before any bucket is stored: an answer, not an error.
    let json = stdout(&ask(&url, &["-o", "json", "load", "--range", "5m"]).await);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        value["series"].is_array()
            && value["coverage"].is_array()
            && value["step"].as_str().is_some_and(|s| s.ends_with('s')),
        "{value}"
    );

    // A server's first sample is churn's baseline (its sessions were there
    // before it): the sleeper below connects once the server is up, so that
    // the collector sees its session start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let servers = stdout(&ask(&url, &["servers"]).await);
        if servers
            .lines()
            .any(|l| l.starts_with("db-load") && l.contains(" up "))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "db-load never came up: {servers}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A session asleep in pg_sleep is load, waiting on Timeout:PgSleep, once
    // a 10 s bucket holding it is stored.
    let sleeper = fleet.cluster.connect("cli-load-sleeper").await.unwrap();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(120)").await });
    let by_wait = [
        "load", "db-load", "--range", "5m", "--step", "10s", "--by", "wait",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let table = loop {
        let text = stdout(&ask(&url, &by_wait).await);
        if text.starts_with("TIME") && text.contains("Timeout:PgSleep") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Timeout:PgSleep load: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIME  "), "{table}");
    let average = lines
        .iter()
        .find(|l| l.starts_with("average "))
        .unwrap_or_else(|| panic!("no average row: {table}"));
    assert!(
        average
            .split_whitespace()
            .skip(1)
            .all(|v| v.parse::<f64>().is_ok()),
        "{table}"
    );

    // By query: a column per fingerprint and a legend of their texts; CSV
    // has the whole fingerprint.
    let by_query = stdout(&ask(&url, &["load", "db-load", "--range", "5m", "--by", "query"]).await);
    let legend = by_query
        .lines()
        .find(|l| l.contains("SELECT pg_sleep(?)"))
        .unwrap_or_else(|| panic!("no legend: {by_query}"));
    let fingerprint = legend.split_whitespace().next().unwrap_or_default();
    assert_eq!(fingerprint.len(), 16, "{by_query}");
    assert!(
        by_query
            .lines()
            .next()
            .unwrap_or_default()
            .contains(&fingerprint[..8])
    );
    let csv = stdout(
        &ask(
            &url,
            &[
                "-o", "csv", "load", "db-load", "--range", "5m", "--by", "query",
            ],
        )
        .await,
    );
    assert!(
        csv.starts_with("TIME,KEY,VALUE\r\n") && csv.contains(&format!(",{fingerprint},")),
        "{csv}"
    );

    // The top statements: the sleep among them; without pg_stat_statements
    // on the sandbox's server, a note says how to have it.
    let top = stdout(&ask(&url, &["top-queries", "db-load", "--range", "5m"]).await);
    assert!(top.starts_with("LOAD  CALLS  TOTAL MS"), "{top}");
    let row = top
        .lines()
        .find(|l| l.contains("SELECT pg_sleep(?)"))
        .unwrap_or_else(|| panic!("no pg_sleep: {top}"));
    assert!(
        row.contains(fingerprint) && row.contains("Timeout:PgSleep"),
        "{row}"
    );
    let json = stdout(&ask(&url, &["-o", "json", "top-queries", "--range", "5m"]).await);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value["statements"] == false,
        top.contains("No pg_stat_statements statistics arrived for db-load"),
        "{value} {top}"
    );

    // Churn: the sleeper's session started in the range.
    let churn = stdout(&ask(&url, &["churn", "db-load", "--range", "5m"]).await);
    assert!(churn.starts_with("DATABASE  APPLICATION"), "{churn}");
    assert!(
        churn.lines().any(|l| l.contains("cli-load-sleeper")),
        "{churn}"
    );

    // What the collector refuses comes back as its one line, exit code 2;
    // an unknown server is exit code 1.
    for (args, words) in [
        (
            vec!["load", "--range", "5m", "--step", "5s"],
            vec!["whole number of 10 s", "10s, 30s, 1m"],
        ),
        (
            vec!["load", "--range", "5m", "--by", "nonsense"],
            vec!["\"nonsense\" is not a dimension", "wait_type", "dc"],
        ),
        (
            vec!["churn", "--range", "5m", "--match", "wait=CPU"],
            vec!["churn is kept by application, user and client"],
        ),
        (
            vec!["load", "--range", "5m", "--match", "dc~eu1"],
            vec!["dc~eu1", "no operator"],
        ),
        (vec!["load", "--range", "soon"], vec!["range", "soon"]),
        (vec!["top-queries", "--by", "often"], vec!["often", "--by"]),
    ] {
        fails_with_one_line(&ask(&url, &args).await, 2, &words);
    }
    fails_with_one_line(
        &ask(&url, &["top-queries", "nope", "--range", "5m"]).await,
        1,
        &["no server \"nope\"", "pgfleet servers"],
    );
    query.abort();
    fleet.stop().await;
}

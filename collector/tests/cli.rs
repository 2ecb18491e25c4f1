//! The `pgfleet-collector` binary as a user runs it. (The `pgfleet` command's
//! tests are in the pgfleet-cli crate.)

use std::process::{Command, Output};

use pgfleet_collector::config::CollectorConfig;

fn collector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgfleet-collector"))
        .args(args)
        .env_remove("PGFLEET_CONFIG")
        .env_remove("PGFLEET_LISTEN")
        .env_remove("PGFLEET_DATA_DIR")
        .output()
        .expect("the binary runs")
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

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfleet-collector-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn usage_errors_are_one_line_with_exit_code_2() {
    let dir = temp_dir("usage");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = [unclosed\n").unwrap();
    fails_with_one_line(
        &collector(&["--listen", "nowhere"]),
        2,
        &["listen", "nowhere"],
    );
    fails_with_one_line(
        &collector(&["--config", bad.to_str().unwrap()]),
        2,
        &["bad.toml"],
    );
    fails_with_one_line(&collector(&["--frobnicate"]), 2, &["--frobnicate"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn help_shows_examples() {
    let out = collector(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("PGFLEET_"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collector_on_the_same_data_dir_is_refused() {
    let data_dir = temp_dir("lock");
    let first = pgfleet_collector::server::start(CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        data_dir.clone(),
    ))
    .await
    .unwrap();
    let out = collector(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    fails_with_one_line(&out, 1, &["another collector is using it"]);
    first.stop().await;
    std::fs::remove_dir_all(data_dir).unwrap();
}

/// The names of `pid`'s threads, as `top -H` shows them, in order.
#[cfg(target_os = "linux")]
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn every_thread_is_named_for_its_job() {
    let data_dir = temp_dir("threads");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgfleet-collector"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .env_remove("PGFLEET_CONFIG")
        .env_remove("PGFLEET_LISTEN")
        .env_remove("PGFLEET_DATA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs");
    // Linux keeps 15 bytes of a thread's name; the main thread keeps the
    // binary's, and a thread started without a name takes its starter's.
    let wanted = [
        "pgfleet-ingest",
        "pgfleet-aggrega",
        "pgfleet-store",
        "pgfleet-reads",
    ];
    let has = |names: &[String], name: &str| names.iter().any(|n| n == name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut names = thread_names(child.id());
    while !wanted.iter().all(|w| has(&names, w)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        names = thread_names(child.id());
    }
    let exited = child.try_wait().expect("the child can be waited for");
    child.kill().ok();
    child.wait().ok();
    std::fs::remove_dir_all(data_dir).ok();
    assert!(exited.is_none(), "the collector exited: {exited:?}");
    for w in wanted {
        assert!(has(&names, w), "no thread named {w:?} among {names:?}");
    }
    // Every thread is named for its job (the dictionary's trainer comes
    // later), and only the main thread keeps the binary's name.
    for n in &names {
        assert!(
            wanted.contains(&n.as_str()) || n == "pgfleet-dict" || n == "pgfleet-collect",
            "a thread named {n:?} among {names:?}: name it for its job (and in collector/src/threads.rs)"
        );
    }
    let main = names.iter().filter(|n| *n == "pgfleet-collect").count();
    assert_eq!(main, 1, "{names:?}");
}

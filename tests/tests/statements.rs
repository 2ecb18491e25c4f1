//! pg_stat_statements as the agent reads it, from a real PostgreSQL with the
//! extension: exact increments between two reads, masked texts sent once,
//! the fingerprint pg_stat_activity's text gets, a reset that gives neither
//! a negative nor a huge increment; and a server without the extension,
//! which stays up, says why, and is read once the extension is there.

use std::time::Duration;

use pgfleet_agent::sampler::query_text::{self, QueryText};
use pgfleet_agent::{AgentConfig, TargetSampler};
use pgfleet_proto::model::{Snapshot, TargetStatus};
use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1;
use pgfleet_tests::{TempCluster, init_logs};

/// A cluster with pg_stat_statements loaded (or not) and created in
/// `postgres` (or not).
async fn cluster(preload: bool) -> TempCluster {
    init_logs();
    let settings: &[(&str, &str)] = if preload {
        &[("shared_preload_libraries", "pg_stat_statements")]
    } else {
        &[]
    };
    match TempCluster::start_with(settings).await {
        Ok(c) => c,
        Err(e) => panic!("cannot start the test cluster: {e}"),
    }
}

/// The agent's sampler of `cluster`, reading pg_stat_statements whenever a
/// second has passed since its last read.
fn sampler(cluster: &TempCluster) -> TargetSampler {
    let mut config = AgentConfig::new("http://127.0.0.1:9", cluster.config("pgfleet-agent"));
    config.statements_interval = Some(Duration::from_secs(1));
    config.pool_reporter = None;
    let (mut samplers, _) = pgfleet_agent::samplers(&config).unwrap();
    samplers.remove(0)
}

/// A sample that is up.
async fn sample(sampler: &mut TargetSampler) -> Snapshot {
    let s = sampler.sample(now_micros()).await.unwrap();
    assert_eq!(s.status, TargetStatus::Up);
    s
}

/// A sample a second after the last, so that it reads the statistics.
async fn read(sampler: &mut TargetSampler) -> (Snapshot, v1::StatementsSample) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut s = sample(sampler).await;
    let statements = s
        .statements
        .take()
        .unwrap_or_else(|| panic!("no statistics read: {}", sampler.statements_status()));
    (s, statements)
}

/// The statement whose masked text (sent the first time) or fingerprint is
/// the one given.
fn find(sample: &v1::StatementsSample, fingerprint: u64) -> Option<&v1::StatementDelta> {
    sample
        .statements
        .iter()
        .find(|s| s.query_fingerprint == fingerprint)
}

fn fingerprint(sql: &str) -> u64 {
    query_text::prepare(sql, QueryText::Masked).1
}

/// Every increment is a plausible one for `seconds` of a test's work.
fn no_spike(sample: &v1::StatementsSample, seconds: f64) {
    for s in sample.statements.iter().chain(&sample.other) {
        assert!(
            s.calls < 10_000 && s.rows < 1_000_000 && s.wal_bytes < 1 << 30,
            "{s:?}"
        );
        assert!(
            s.exec_time_ms >= 0.0 && s.exec_time_ms <= seconds * 1000.0 * 4.0,
            "{s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_increments_texts_fingerprints_and_a_reset() {
    let cluster = cluster(true).await;
    let admin = cluster.connect("t-admin").await.unwrap();
    admin
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let work = cluster.connect("t-work").await.unwrap();
    let mut sampler = sampler(&cluster);

    // The first read sets the baseline.
    let first = sample(&mut sampler).await;
    let baseline = first.statements.expect("read with the first sample");
    assert_eq!(baseline.since_us, 0);
    assert!(baseline.statements.is_empty() && baseline.other.is_none());
    assert!(
        sampler
            .statements_status()
            .starts_with("pg_stat_statements 1."),
        "{}",
        sampler.statements_status()
    );

    for _ in 0..7 {
        work.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
    }
    for _ in 0..3 {
        work.simple_query("SELECT count(*) FROM pg_class WHERE relname = 'secret_name'")
            .await
            .unwrap();
    }
    let (second, stats) = read(&mut sampler).await;
    assert_eq!(stats.since_us, first.sampled_at_us);
    assert!(!stats.reset);
    let sleep = find(&stats, fingerprint("SELECT pg_sleep(0.5)")).unwrap_or_else(|| {
        panic!("no pg_sleep among {:#?}", stats.statements);
    });
    assert_eq!(sleep.calls, 7, "exactly the calls between the reads");
    assert_eq!(sleep.rows, 7);
    assert!(sleep.exec_time_ms >= 70.0, "{sleep:?}");
    assert_eq!(
        sleep.query, "SELECT pg_sleep(?)",
        "masked, sent the first time"
    );
    assert_eq!(
        (sleep.database.as_str(), sleep.user.as_str()),
        ("postgres", "postgres")
    );
    assert_ne!(sleep.query_id, 0);
    let secret = stats
        .statements
        .iter()
        .find(|s| s.query.contains("pg_class"))
        .unwrap_or_else(|| panic!("no pg_class query among {:#?}", stats.statements));
    assert_eq!(secret.calls, 3);
    assert_eq!(
        secret.query,
        "SELECT count(*) FROM pg_class WHERE relname = ?"
    );
    assert!(!format!("{stats:?}").contains("secret_name"));
    no_spike(
        &stats,
        (second.sampled_at_us - first.sampled_at_us) as f64 / 1e6,
    );

    // The same statement as pg_stat_activity shows it, while it runs: the
    // same fingerprint.
    let sleeper = cluster.connect("t-sleeper").await.unwrap();
    let running = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(0.5)").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let during = sample(&mut sampler).await;
    let session = during
        .sessions
        .iter()
        .find(|s| &*s.application_name == "t-sleeper")
        .expect("the sleeping session is sampled");
    assert_eq!(&*session.query, "SELECT pg_sleep(?)");
    assert_eq!(
        session.fingerprint, sleep.query_fingerprint,
        "load and statistics join on the fingerprint"
    );
    running.await.unwrap().unwrap();
    for _ in 0..2 {
        work.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
    }
    // Counted once over the reads since (the sample above may have read).
    let mut later = during.statements.into_iter().collect::<Vec<_>>();
    let (_, third) = read(&mut sampler).await;
    later.push(third);
    let calls: u64 = later
        .iter()
        .filter_map(|s| find(s, sleep.query_fingerprint))
        .map(|s| s.calls)
        .sum();
    assert_eq!(calls, 3, "the 0.5 s sleep and two more: {later:#?}");
    for s in &later {
        if let Some(again) = find(s, sleep.query_fingerprint) {
            assert_eq!(again.query, "", "a text is sent once");
            assert_eq!(again.query_id, sleep.query_id);
        }
    }

    // A reset between two reads: counted from the new baseline.
    admin
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .unwrap();
    for _ in 0..4 {
        work.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
    }
    let (_, after) = read(&mut sampler).await;
    assert!(after.reset, "{after:#?}");
    let sleep_after = find(&after, sleep.query_fingerprint).expect("pg_sleep after the reset");
    assert_eq!(sleep_after.calls, 4, "{after:#?}");
    no_spike(&after, 2.0);
    cluster.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_extension_the_target_stays_up_and_is_read_once_it_is_there() {
    let cluster = cluster(false).await;
    let admin = cluster.connect("t-admin").await.unwrap();
    let mut sampler = sampler(&cluster);
    let s = sample(&mut sampler).await;
    assert!(s.statements.is_none());
    let status = sampler.statements_status();
    assert!(
        status.contains("not installed in database \"postgres\"")
            && status.contains("shared_preload_libraries = 'pg_stat_statements'")
            && status.contains("CREATE EXTENSION pg_stat_statements"),
        "{status}"
    );

    // Created, but its library is not loaded.
    admin
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let mut fresh = crate::sampler(&cluster);
    let s = sample(&mut fresh).await;
    assert!(s.statements.is_none());
    let status = fresh.statements_status();
    assert!(
        status.contains("must be loaded via shared_preload_libraries"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        sample(&mut fresh).await.statements.is_none(),
        "not looked for at every sample"
    );

    // Loaded after a restart: read from the next sample on.
    admin
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .await
        .unwrap();
    drop(admin);
    cluster.stop_server().await.unwrap();
    cluster.start_server().await.unwrap();
    let mut found = None;
    for _ in 0..20 {
        if let Ok(s) = fresh.sample(now_micros()).await
            && s.status == TargetStatus::Up
        {
            found = s.statements;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let baseline = found
        .unwrap_or_else(|| panic!("not read after the restart: {}", fresh.statements_status()));
    assert_eq!(baseline.since_us, 0, "a first read sets the baseline");
    let (_, next) = read(&mut fresh).await;
    assert_ne!(next.since_us, 0);
    cluster.destroy().await;
}

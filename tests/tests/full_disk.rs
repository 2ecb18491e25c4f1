//! Full disks lose nothing. The collector's data directory and the agent's
//! spool directory are each a small tmpfs that the test mounts (as root;
//! without root these tests say why and do nothing) and fills.
//!
//! - The collector stops acknowledging while it cannot write, serves reads,
//!   and carries on by itself when space returns; every batch of the outage
//!   is then in its history.
//! - The agent holds batches in memory within its cap, keeps streaming, and
//!   counts them (`spool_disk_failed_batches_total`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgfleet_collector::config::CollectorConfig;
use pgfleet_proto::v1::{self, collector_message};
use pgfleet_tests::{agent_stream, batch_message, fleet, server, wait_for, wait_for_status};

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one, or says why it cannot (not root, no mount).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !pgfleet_cli::sandbox::running_as_root() {
            eprintln!(
                "SKIPPED: mounting a small tmpfs to fill needs root (CI runs as root); run the tests as root to check full disks"
            );
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs at {}", dir.display());
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let mut small = vec![0u8; 512];
        while !small.is_empty() {
            if f.write_all(&small).is_err() {
                small.truncate(small.len() / 2);
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
        // The directory it was made in, left empty.
        if let Some(root) = self.0.parent() {
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// A batch whose keyframe holds one session, pid `seq`, sampled at `at`.
fn batch(seq: u64, server_id: &str, at: i64) -> v1::AgentMessage {
    batch_message(
        seq,
        vec![v1::Snapshot {
            server_id: server_id.to_owned(),
            sampled_at_us: at,
            status: Some(v1::TargetStatus {
                up: true,
                reason: String::new(),
            }),
            activity: Some(v1::snapshot::Activity::Keyframe(v1::ActivityKeyframe {
                sessions: vec![v1::SessionSample {
                    pid: seq as i32,
                    backend_start_us: 1,
                    ..Default::default()
                }],
            })),
            ..Default::default()
        }],
    )
}

/// The next ack within `limit`, if any.
async fn ack_within(
    inbound: &mut tonic::Streaming<v1::CollectorMessage>,
    limit: Duration,
) -> Option<u64> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, inbound.message()).await {
            Ok(Ok(Some(v1::CollectorMessage {
                msg: Some(collector_message::Msg::Ack(a)),
            }))) => return Some(a.seq),
            Ok(Ok(Some(_))) => continue,
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_on_a_full_disk_stops_acknowledging_serves_reads_and_carries_on() {
    let root = std::env::temp_dir().join(format!("pgfleet-full-{}", std::process::id()));
    let Some(disk) = Tmpfs::mount(&root.join("data"), "16m") else {
        return;
    };
    let collector = pgfleet_collector::server::start(CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        disk.0.clone(),
    ))
    .await
    .unwrap();
    let url = format!("http://{}", collector.addr);
    let client = pgfleet_cli::connect(&pgfleet_cli::Remote::plain(url.clone()))
        .await
        .unwrap();
    let (tx, mut inbound) = agent_stream(&url, "full-db", None).await.unwrap();
    let now = pgfleet_proto::time::now_micros();
    let at = |seq: u64| now - 60_000_000 + seq as i64 * 100_000;
    let batches = u64::from(pgfleet_collector::ingest::ACK_AFTER);

    // Acknowledged while the disk has room.
    for seq in 1..=batches {
        tx.send(batch(seq, "full-db", at(seq))).await.unwrap();
    }
    assert_eq!(
        ack_within(&mut inbound, Duration::from_secs(10)).await,
        Some(batches)
    );

    // Full: applied, answered for, but not acknowledged.
    let filler = disk.fill();
    for seq in batches + 1..=3 * batches {
        tx.send(batch(seq, "full-db", at(seq))).await.unwrap();
    }
    assert_eq!(
        ack_within(
            &mut inbound,
            pgfleet_collector::ingest::ACK_EVERY + Duration::from_secs(3)
        )
        .await,
        None,
        "no ack while the store cannot commit"
    );
    let listed = server(&mut client.clone(), "full-db").await.unwrap();
    assert_eq!(listed.server_id, "full-db", "reads go on");

    // Room again: the outage's batches are committed and acknowledged.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(
        ack_within(&mut inbound, Duration::from_secs(30)).await,
        Some(3 * batches)
    );
    // Every one of them is in the history.
    for seq in [batches + 1, 2 * batches, 3 * batches] {
        let activity = client
            .clone()
            .get_activity(v1::GetActivityRequest {
                server_id: "full-db".into(),
                at: Some(pgfleet_proto::time::timestamp(at(seq))),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let pids: Vec<i32> = activity.sessions.iter().map(|s| s.pid).collect();
        assert_eq!(pids, [seq as i32], "batch {seq} in the history");
    }
    drop(tx);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_spool_disk_is_full_holds_batches_in_memory_and_counts_them() {
    let fleet = fleet("spool-full-db", &[]).await;
    let Some(disk) = Tmpfs::mount(&fleet.cluster.dir().join("spool"), "4m") else {
        fleet.stop().await;
        return;
    };
    let mut config = fleet.agent_config("spool-full", fleet.cluster.config("unused"));
    config.agent_id = "agent-spool-full".into();
    config.interval = Duration::from_millis(200);
    config.spool_dir = Some(disk.0.clone());
    let agent = fleet.start_agent_with(config).unwrap();
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "spool-full", "up", Duration::from_secs(20)).await;

    let filler = disk.fill();
    let counted = wait_for(
        "the agent to count batches held in memory",
        Duration::from_secs(20),
        || {
            let mut c = client.clone();
            async move {
                let s = server(&mut c, "spool-full").await?;
                let n = s.agent.map_or(0, |a| a.spool_disk_failed_batches_total);
                if n > 0 && s.status == "up" {
                    Ok(n)
                } else {
                    Err(format!("{} held in memory, status {}", n, s.status))
                }
            }
        },
    )
    .await;
    // It keeps streaming meanwhile: newer snapshots arrive.
    let before = server(&mut client.clone(), "spool-full").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server(&mut client.clone(), "spool-full").await.unwrap();
    let seen = |s: &v1::Server| {
        s.last_seen
            .as_ref()
            .map_or(0, pgfleet_proto::time::timestamp_micros)
    };
    assert!(seen(&after) > seen(&before), "{before:?} {after:?}");
    // Room again: the count stops growing.
    std::fs::remove_file(filler).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = server(&mut client.clone(), "spool-full")
        .await
        .unwrap()
        .agent
        .map_or(0, |a| a.spool_disk_failed_batches_total);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = server(&mut client.clone(), "spool-full")
        .await
        .unwrap()
        .agent
        .map_or(0, |a| a.spool_disk_failed_batches_total);
    assert!(settled >= counted);
    assert_eq!(later, settled, "the disk takes batches again");
    agent.stop().await;
    drop(disk);
    fleet.stop().await;
}

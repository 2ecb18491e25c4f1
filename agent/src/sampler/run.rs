//! The sampling loop of one target: tick, sample, hand the snapshot on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use pgfleet_proto::model::{Snapshot, TargetStatus};
use pgfleet_proto::time::now_micros;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use super::activity::sample_activity;
use crate::backoff::Backoff;
use crate::error::chain;
use crate::target::CONNECT_TIMEOUT;

/// Counters of one target's sampler.
#[derive(Debug, Default)]
pub struct SamplerStats {
    /// Samples taken (up or down).
    pub samples: AtomicU64,
    /// Ticks skipped because a sample overran its interval.
    pub skipped_ticks: AtomicU64,
    /// Snapshots dropped because the shipper could not take them.
    pub dropped_snapshots: AtomicU64,
}

/// What the loop knows about a target that is down.
struct Down {
    reason: String,
    since: Instant,
    retry_at: Instant,
}

/// Spawns the sampling loop of one target; it ends when `stop` changes or `out`
/// closes. A sample that overruns the interval skips ticks rather than piling
/// them up. A target that fails is reported down at every tick, and retried with
/// capped exponential backoff.
pub fn spawn(
    server_id: String,
    pool: Pool,
    interval: Duration,
    statement_timeout: Duration,
    out: mpsc::Sender<Snapshot>,
    mut stop: watch::Receiver<bool>,
) -> (JoinHandle<()>, Arc<SamplerStats>) {
    let stats = Arc::new(SamplerStats::default());
    let task_stats = stats.clone();
    let task = tokio::spawn(async move {
        let stats = task_stats;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut backoff = Backoff::new(interval, Duration::from_secs(30).max(interval));
        let mut down: Option<Down> = None;
        let deadline = statement_timeout + CONNECT_TIMEOUT;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            let started = Instant::now();
            let sampled_at_us = now_micros();
            let result = match &down {
                Some(d) if started < d.retry_at => Err(d.reason.clone()),
                _ => match tokio::time::timeout(deadline, sample(&pool)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "the sample did not finish within {}",
                        humantime::format_duration(deadline)
                    )),
                },
            };
            let snapshot = match result {
                Ok(sessions) => {
                    if let Some(d) = down.take() {
                        info!(
                            server.id = %server_id,
                            down_for = %humantime::format_duration(secs(d.since.elapsed())),
                            "Target is back up; sampling resumed."
                        );
                    }
                    backoff.reset();
                    Snapshot {
                        server_id: server_id.clone(),
                        sampled_at_us,
                        status: TargetStatus::Up,
                        sessions,
                    }
                }
                Err(reason) => {
                    if down.as_ref().is_none_or(|d| started >= d.retry_at) {
                        let delay = backoff.next_delay();
                        let changed = down.as_ref().is_none_or(|d| d.reason != reason);
                        if changed {
                            warn!(
                                server.id = %server_id,
                                reason = %reason,
                                retry_in = %humantime::format_duration(secs(delay)),
                                "Target is down; retrying with backoff."
                            );
                        }
                        let since = down.as_ref().map_or(started, |d| d.since);
                        down = Some(Down {
                            reason: reason.clone(),
                            since,
                            retry_at: started + delay,
                        });
                    }
                    Snapshot {
                        server_id: server_id.clone(),
                        sampled_at_us,
                        status: TargetStatus::Down(reason),
                        sessions: Vec::new(),
                    }
                }
            };
            stats.samples.fetch_add(1, Ordering::Relaxed);
            let overran = started.elapsed().as_nanos() / interval.as_nanos().max(1);
            if overran > 0 {
                stats
                    .skipped_ticks
                    .fetch_add(overran as u64, Ordering::Relaxed);
            }
            match out.try_send(snapshot) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let n = stats.dropped_snapshots.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        warn!(server.id = %server_id, dropped = n, "Shipper is behind; snapshot dropped.");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    (task, stats)
}

/// Whole seconds, for log lines people read.
fn secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

async fn sample(pool: &Pool) -> Result<Vec<pgfleet_proto::model::Session>, String> {
    let client = pool.get().await.map_err(|e| chain(&e))?;
    sample_activity(&client).await.map_err(|e| chain(&e))
}

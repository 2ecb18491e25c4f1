//! The sampling loop of one target: tick, sample, hand the snapshot on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use pgfleet_proto::model::{Delta, Snapshot, TargetStatus};
use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::activity::{ActivityCache, MIN_VERSION_NUM, read_server};
use super::database::{CounterTracker, sample_facts};
use super::pgbouncer::PgBouncer;
use super::query_text::QueryText;
use super::statements::Statements;
use super::tick::Ticker;
use crate::config::{Databases, TargetConfig};
use crate::reporter::AppPools;
use crate::target::{self, CONNECT_TIMEOUT};
use pgfleet_common::backoff::Backoff;
use pgfleet_common::error::chain;
use pgfleet_common::pgtls::PgTls;
use pgfleet_common::settings::SettingsError;

/// Counters of one target's sampler.
#[derive(Debug, Default)]
pub struct SamplerStats {
    /// Samples taken (up or down).
    pub samples: AtomicU64,
    /// Samples that found the target down (or could not read it).
    pub failed: AtomicU64,
    /// Ticks skipped because a sample overran its interval.
    pub skipped_ticks: AtomicU64,
    /// Snapshots dropped because the shipper could not take them.
    pub dropped_snapshots: AtomicU64,
    /// Waits for the agent's own pool that timed out.
    pub pool_timeouts: AtomicU64,
}

/// Everything needed to sample one target, and what it remembers between samples.
pub struct TargetSampler {
    /// The target's server_id.
    pub server_id: String,
    pool: Pool,
    /// Its TLS, and where it is ("db1:5432"), to explain a failed connection.
    tls: PgTls,
    place: String,
    role: String,
    statement_timeout: Duration,
    query_text: QueryText,
    databases: Databases,
    pgbouncer: Option<PgBouncer>,
    app_pools: Arc<AppPools>,
    identity: Option<(i64, u64)>,
    version_num: Option<u32>,
    activity: ActivityCache,
    /// When the last snapshot that was up was sampled: the base of the next
    /// snapshot's delta.
    last_up_at: Option<i64>,
    counters: CounterTracker,
    statements: Statements,
    warned_not_visible: bool,
    last_duration_us: u32,
    /// The CPUs of the target's host; 0 when unknown.
    cpus: u32,
    /// The sampler's counters.
    pub stats: Arc<SamplerStats>,
}

impl TargetSampler {
    /// A sampler of `target`; opens nothing until the first sample. It
    /// reads pg_stat_statements with the samples due every
    /// `statements_interval` (None: never).
    pub fn new(
        target: &TargetConfig,
        statement_timeout: Duration,
        query_text: QueryText,
        statements_interval: Option<Duration>,
        app_pools: Arc<AppPools>,
    ) -> Result<Self, SettingsError> {
        Ok(TargetSampler {
            server_id: target.server_id.clone(),
            pool: target::pool(target.connection.clone(), &target.tls, statement_timeout)?,
            tls: target.tls.clone(),
            place: target::default_server_id(&target.connection),
            role: target.connection.get_user().unwrap_or("").to_owned(),
            statement_timeout,
            query_text,
            databases: target.databases.clone(),
            pgbouncer: target
                .pgbouncer
                .clone()
                .map(|c| PgBouncer::new(c, statement_timeout)),
            app_pools,
            identity: None,
            version_num: None,
            activity: ActivityCache::default(),
            last_up_at: None,
            counters: CounterTracker::default(),
            statements: Statements::new(
                &target.server_id,
                statements_interval,
                query_text,
                statement_timeout,
            ),
            warned_not_visible: false,
            last_duration_us: 0,
            cpus: target
                .cpus
                .or_else(|| target::local_cpus(&target.connection))
                .unwrap_or(0),
            stats: Arc::default(),
        })
    }

    /// Takes one sample: an up snapshot, or why the target cannot be sampled.
    /// Its sessions are every session, or (with `delta` set) what changed since
    /// the previous up snapshot; each snapshot must reach the encoder, or else
    /// [`TargetSampler::resend_whole`] be called.
    pub async fn sample(&mut self, sampled_at_us: i64) -> Result<Snapshot, String> {
        let started = Instant::now();
        let deadline = self.statement_timeout + CONNECT_TIMEOUT;
        let result = match tokio::time::timeout(deadline, self.sample_postgres()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the sample did not finish within {}",
                humantime::format_duration(deadline)
            )),
        };
        let postgres = match result {
            Ok(postgres) => postgres,
            Err(e) => {
                // What the failed read held cannot be built on.
                self.activity.clear();
                self.version_num = None;
                self.statements.connection_lost();
                return Err(e);
            }
        };
        let (facts, mut activity, increments, client) = postgres;
        // pg_stat_statements, when due, on the same connection; a read that
        // fails leaves it out of this sample, and only says so.
        self.statements.server_started(facts.start_time_us);
        let statements = self.statements.read(&client, sampled_at_us).await;
        drop(client);
        let delta = activity.removed.take().map(|removed| Delta {
            unchanged: Vec::new(),
            base_sampled_at_us: self.last_up_at.unwrap_or_default(),
            removed,
        });
        self.last_up_at = Some(sampled_at_us);
        activity.slots.max_connections = facts.max_connections;
        activity.slots.reserved = facts.superuser_reserved_connections + facts.reserved_connections;
        if activity.not_visible > 0 && !self.warned_not_visible {
            self.warned_not_visible = true;
            warn!(
                server.id = %self.server_id,
                role = %self.role,
                not_visible = activity.not_visible,
                fix = %format!("GRANT pg_monitor TO {};", quote_ident(&self.role)),
                "The agent's role may not see every session; they are reported as not visible. Grant it pg_monitor."
            );
        }
        let pgbouncer = match &mut self.pgbouncer {
            Some(b) => Some(b.sample().await),
            None => None,
        };
        let mut client_pools = vec![self.own_pool()];
        client_pools.extend(self.app_pools.current(&self.server_id));
        self.last_duration_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        Ok(Snapshot {
            server_id: self.server_id.clone(),
            sampled_at_us,
            status: TargetStatus::Up,
            sessions: activity.sessions,
            delta,
            facts: Some(facts),
            databases: increments,
            slots: Some(activity.slots),
            pgbouncer,
            client_pools,
            agent: Some(self.counters_message(activity.not_visible)),
            statements,
        })
    }

    /// The last snapshot did not reach the encoder: the next one lists every
    /// session.
    pub fn resend_whole(&mut self) {
        self.activity.resend_whole();
    }

    /// `snapshot`, the last this sampler took, did not reach the encoder:
    /// the next lists every session, and carries its pg_stat_statements
    /// increments and texts.
    pub fn not_delivered(&mut self, snapshot: &Snapshot) {
        self.resend_whole();
        if let Some(statements) = &snapshot.statements {
            self.statements.not_delivered(statements);
        }
    }

    /// What `--once` says of pg_stat_statements.
    pub fn statements_status(&self) -> String {
        self.statements.status()
    }

    /// A snapshot that says the target is down, and why.
    pub fn down(&self, sampled_at_us: i64, reason: String) -> Snapshot {
        Snapshot {
            agent: Some(self.counters_message(0)),
            ..Snapshot::down(self.server_id.clone(), sampled_at_us, reason)
        }
    }

    /// The TLS protocol of the agent's connection to the target ("TLSv1.3"),
    /// or "off"; for `--once`.
    pub async fn tls_in_use(&self) -> Result<String, String> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| target::pool_error(&e, &self.place, &self.tls))?;
        let row = client
            .query_opt(
                "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                &[],
            )
            .await
            .map_err(|e| chain(&e))?;
        Ok(row.map_or_else(|| "off".to_owned(), |r| r.get(0)))
    }

    /// The last readings of every database's counters, as totals.
    pub fn database_totals(&self) -> Vec<v1::DatabaseCounters> {
        self.counters.totals()
    }

    async fn sample_postgres(
        &mut self,
    ) -> Result<
        (
            v1::ServerFacts,
            super::activity::Activity,
            Vec<v1::DatabaseCounters>,
            deadpool_postgres::Client,
        ),
        String,
    > {
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, deadpool_postgres::PoolError::Timeout(_)) {
                    self.stats.pool_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                return Err(target::pool_error(&e, &self.place, &self.tls));
            }
        };
        // The first time, the facts alone say which version to write the
        // sample's statement for; after that, one statement reads everything.
        let version_num = match self.version_num {
            Some(v) => v,
            None => {
                let facts = sample_facts(&client, &mut self.identity)
                    .await
                    .map_err(|e| chain(&e))?;
                facts.version_num
            }
        };
        if version_num < MIN_VERSION_NUM {
            return Err(format!(
                "PostgreSQL {version_num} is older than 10, which pgfleet does not sample"
            ));
        }
        let read = read_server(
            &client,
            version_num,
            self.query_text,
            &self.databases,
            &mut self.identity,
            &mut self.activity,
        )
        .await
        .map_err(|e| chain(&e))?;
        let (mut facts, activity, rows) = (read.facts, read.activity, read.counters);
        facts.cpus = self.cpus;
        // A server upgraded or restored under the same address: write the query
        // for its version from the next sample on.
        self.version_num = Some(facts.version_num);
        Ok((facts, activity, self.counters.update(&rows), client))
    }

    /// The agent's own pool to the target, as a client pool.
    fn own_pool(&self) -> v1::ClientPool {
        let status = self.pool.status();
        let idle = u32::try_from(status.available).unwrap_or(0);
        v1::ClientPool {
            pool_name: target::APPLICATION_NAME.to_owned(),
            kind: v1::PoolKind::Agent.into(),
            max: u32::try_from(status.max_size).unwrap_or(u32::MAX),
            used: u32::try_from(status.size).unwrap_or(0).saturating_sub(idle),
            idle,
            pending_requests: u32::try_from(status.waiting).unwrap_or(u32::MAX),
            timeouts: self.stats.pool_timeouts.load(Ordering::Relaxed),
            ..Default::default()
        }
    }

    fn counters_message(&self, not_visible: u32) -> v1::AgentCounters {
        v1::AgentCounters {
            samples_total: self.stats.samples.load(Ordering::Relaxed),
            skipped_ticks_total: self.stats.skipped_ticks.load(Ordering::Relaxed),
            sample_duration_us: self.last_duration_us,
            not_visible_sessions: not_visible,
            // The shipper fills it in: it owns the spool.
            spool_dropped_batches_total: 0,
            oversized_snapshots_dropped_total: 0,
            spool_disk_failed_batches_total: 0,
        }
    }
}

/// A role name as SQL writes it, quoted when it must be.
fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
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
    mut sampler: TargetSampler,
    interval: Duration,
    out: mpsc::Sender<Snapshot>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stats = sampler.stats.clone();
        let server_id = sampler.server_id.clone();
        let mut ticker = Ticker::new(interval);
        let mut backoff = Backoff::new(interval, Duration::from_secs(30).max(interval));
        let mut down: Option<Down> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            let started = Instant::now();
            let sampled_at_us = now_micros();
            let result = match &down {
                Some(d) if started < d.retry_at => Err(d.reason.clone()),
                _ => sampler.sample(sampled_at_us).await,
            };
            let snapshot = match result {
                Ok(snapshot) => {
                    if let Some(d) = down.take() {
                        info!(
                            server.id = %server_id,
                            down_for = %humantime::format_duration(secs(d.since.elapsed())),
                            "Target is back up; sampling resumed."
                        );
                    }
                    backoff.reset();
                    snapshot
                }
                Err(reason) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
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
                    sampler.down(sampled_at_us, reason)
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
                Err(mpsc::error::TrySendError::Full(snapshot)) => {
                    // The next snapshot cannot build on this one.
                    sampler.not_delivered(&snapshot);
                    let n = stats.dropped_snapshots.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        warn!(server.id = %server_id, dropped = n, "Shipper is behind; snapshot dropped.");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    })
}

/// Whole seconds, for log lines people read.
fn secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_the_role_as_sql_needs_it() {
        assert_eq!(quote_ident("pgfleet"), "pgfleet");
        assert_eq!(quote_ident("Mon Itor"), "\"Mon Itor\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("1st"), "\"1st\"");
    }
}

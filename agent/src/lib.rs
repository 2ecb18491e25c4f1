//! The pgfleet agent: samples PostgreSQL and streams snapshots to a collector.
//!
//! `config` → `target` (connection and safety settings) → `sampler` (one task per
//! target) → `ship` (the stream client, owning the `encode`r and the bounded
//! `spool`); `reporter`
//! is the local PoolReporter service that applications push their pools to.
// One unsafe block, in sampler/tick.rs: registering the tick's timerfd with
// tokio, whose safe constructor is deprecated as unsound.
#![deny(unsafe_code)]

pub mod config;
pub mod encode;
pub mod once;
pub mod outgoing;
pub mod pack;
pub mod reporter;
pub mod sampler;
pub mod ship;
pub mod spool;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;

use pgfleet_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

pub use config::{AgentArgs, AgentConfig, TargetConfig};
pub use pgfleet_common::SettingsError;
pub use sampler::{SamplerStats, TargetSampler};

/// How many snapshots may wait between the samplers and the shipper.
const SNAPSHOT_QUEUE: usize = 64;

/// A running agent; dropping it stops the agent too.
pub struct Agent {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Counters of each target's sampler, by server_id, in the config's order.
    pub stats: Vec<(String, Arc<SamplerStats>)>,
    /// Where the PoolReporter service listens, when it is on.
    pub pool_reporter: Option<SocketAddr>,
}

/// The samplers of every target, sharing one registry of reported pools.
pub fn samplers(
    config: &AgentConfig,
) -> Result<(Vec<TargetSampler>, Arc<reporter::AppPools>), SettingsError> {
    let app_pools = reporter::AppPools::new(config.targets.iter().map(|t| t.server_id.as_str()));
    let samplers = config
        .targets
        .iter()
        .map(|t| {
            TargetSampler::new(
                t,
                config.statement_timeout,
                config.query_text,
                config.statements_interval,
                app_pools.clone(),
            )
        })
        .collect::<Result<_, _>>()?;
    Ok((samplers, app_pools))
}

/// Starts sampling and streaming; must be called inside a tokio runtime. Fails only
/// on settings that cannot work; an absent database or collector is retried.
pub fn start(config: AgentConfig) -> Result<Agent, SettingsError> {
    let (samplers, app_pools) = samplers(&config)?;
    let spool = match &config.spool_dir {
        Some(dir) => {
            spool::Spool::open(dir, config.spool_max_bytes).map_err(|e| SettingsError::Invalid {
                key: "spool_dir",
                message: e.to_string(),
            })?
        }
        None => spool::Spool::new(config.spool_max_bytes),
    };
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let pool_reporter = match config.pool_reporter {
        Some(addr) => {
            let (bound, task) = reporter::serve(addr, app_pools, stop_rx.clone())?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let (snapshots_tx, snapshots_rx) = mpsc::channel(SNAPSHOT_QUEUE);
    let mut stats = Vec::new();
    for sampler in samplers {
        stats.push((sampler.server_id.clone(), sampler.stats.clone()));
        tasks.push(sampler::spawn(
            sampler,
            config.interval,
            snapshots_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(snapshots_tx);
    let hello = v1::Hello {
        agent_id: config.agent_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: config.labels.clone().into_iter().collect(),
        targets: config
            .targets
            .iter()
            .map(|t| v1::Target {
                server_id: t.server_id.clone(),
                labels: t.labels.clone().into_iter().collect(),
            })
            .collect(),
        sample_interval_ms: u32::try_from(config.interval.as_millis()).unwrap_or(u32::MAX),
    };
    let link = ship::Link {
        collectors: std::iter::once(config.collector.clone())
            .chain(config.fallback_collectors.iter().cloned())
            .collect(),
        current: 0,
        token: config.token.clone(),
        tls: config.tls.clone(),
        compression: config.compression,
    };
    let shipper = ship::Shipper::new(link, hello, spool, snapshots_rx);
    tasks.push(tokio::spawn(shipper.run(stop_rx)));
    for t in &config.targets {
        info!(
            server.id = %t.server_id,
            target = %target::display(&t.connection),
            pgbouncer = t.pgbouncer.is_some(),
            "Watching target."
        );
    }
    info!(
        agent.id = %config.agent_id,
        targets = config.targets.len(),
        collector = %config.collector,
        fallback_collectors = ?config.fallback_collectors,
        tls = config.tls.is_some(),
        compression = ?config.compression,
        spool_dir = ?config.spool_dir,
        interval = %humantime::format_duration(config.interval),
        statements_interval = %config
            .statements_interval
            .map_or_else(|| "off".to_owned(), |d| humantime::format_duration(d).to_string()),
        pool_reporter = ?pool_reporter,
        "Agent started."
    );
    Ok(Agent {
        stop,
        tasks,
        stats,
        pool_reporter,
    })
}

impl Agent {
    /// Stops sampling, lets the shipper deliver what it can, and waits for all.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

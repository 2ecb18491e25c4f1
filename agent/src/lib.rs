//! The pgfleet agent: samples PostgreSQL and streams snapshots to a collector.
//!
//! `config` → `target` (connection and safety settings) → `sampler` (one task per
//! target) → `ship` (the stream client, owning the bounded `spool`).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod error;
pub mod runtime;
pub mod sampler;
pub mod settings;
pub mod ship;
pub mod spool;
pub mod target;

use std::sync::Arc;

use pgfleet_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

pub use config::{AgentArgs, AgentConfig};
pub use sampler::SamplerStats;
pub use settings::SettingsError;

/// How many snapshots may wait between the samplers and the shipper.
const SNAPSHOT_QUEUE: usize = 64;

/// A running agent; dropping it stops the agent too.
pub struct Agent {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Counters of the target's sampler.
    pub stats: Arc<SamplerStats>,
}

/// Starts sampling and streaming; must be called inside a tokio runtime. Fails only
/// on settings that cannot work; an absent database or collector is retried.
pub fn start(config: AgentConfig) -> Result<Agent, SettingsError> {
    let pool = target::pool(config.target.clone(), config.statement_timeout)?;
    let (stop, stop_rx) = watch::channel(false);
    let (snapshots_tx, snapshots_rx) = mpsc::channel(SNAPSHOT_QUEUE);
    let (sampler, stats) = sampler::spawn(
        config.server_id.clone(),
        pool,
        config.interval,
        config.statement_timeout,
        snapshots_tx,
        stop_rx.clone(),
    );
    let hello = v1::Hello {
        agent_id: config.agent_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: Default::default(),
        targets: vec![v1::Target {
            server_id: config.server_id.clone(),
            labels: config.labels.clone().into_iter().collect(),
        }],
        sample_interval_ms: u32::try_from(config.interval.as_millis()).unwrap_or(u32::MAX),
    };
    let shipper = ship::Shipper::new(
        config.collector.clone(),
        hello,
        spool::Spool::new(config.spool_max_bytes),
        snapshots_rx,
    );
    let shipper = tokio::spawn(shipper.run(stop_rx));
    info!(
        agent.id = %config.agent_id,
        server.id = %config.server_id,
        target = %target::display(&config.target),
        collector = %config.collector,
        interval = %humantime::format_duration(config.interval),
        "Agent started."
    );
    Ok(Agent {
        stop,
        tasks: vec![sampler, shipper],
        stats,
    })
}

impl Agent {
    /// Stops sampling, lets the shipper deliver what it can, and waits for both.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

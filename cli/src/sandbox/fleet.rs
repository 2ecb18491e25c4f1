//! A whole fleet of one: a throwaway cluster watched by an agent that streams to a
//! collector, all in this process but talking over real sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pgfleet_agent::{Agent, AgentConfig};

use super::{SandboxError, TempCluster};
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::server::{self, Collector};

/// A cluster, a collector on a free port and an agent watching the cluster.
pub struct Fleet {
    /// The watched PostgreSQL.
    pub cluster: TempCluster,
    /// The collector; `None` only while [`Fleet::restart_collector`] has it down.
    pub collector: Option<Collector>,
    /// The agent.
    pub agent: Option<Agent>,
    /// The collector's URL, stable across restarts.
    pub url: String,
    /// The server_id the agent gives the cluster.
    pub server_id: String,
}

impl Fleet {
    /// The collector's web UI (and /metrics), while it runs.
    pub fn web(&self) -> Option<String> {
        let http = self.collector.as_ref()?.http_addr?;
        Some(format!("http://{http}/"))
    }
}

impl Fleet {
    /// Starts a cluster, a collector, and an agent that names the cluster
    /// `server_id` with `labels`.
    pub async fn start(server_id: &str, labels: &[(&str, &str)]) -> Result<Fleet, SandboxError> {
        Self::start_on(TempCluster::start().await?, server_id, labels).await
    }

    /// As [`Fleet::start`], on a cluster the caller started (with its own settings).
    pub async fn start_on(
        cluster: TempCluster,
        server_id: &str,
        labels: &[(&str, &str)],
    ) -> Result<Fleet, SandboxError> {
        let collector = start_collector(&cluster, ([127, 0, 0, 1], 0).into()).await?;
        let target = cluster.config("pgfleet");
        let mut fleet = Fleet {
            url: format!("http://{}", collector.addr),
            cluster,
            collector: Some(collector),
            agent: None,
            server_id: server_id.to_owned(),
        };
        fleet.agent = Some(fleet.start_agent(server_id, labels, target)?);
        Ok(fleet)
    }

    /// Starts an agent (`agent-<server_id>`) that streams to this fleet's
    /// collector and watches `target` as `server_id` with `labels`.
    pub fn start_agent(
        &self,
        server_id: &str,
        labels: &[(&str, &str)],
        target: tokio_postgres::Config,
    ) -> Result<Agent, SandboxError> {
        let mut config = self.agent_config(server_id, target);
        config.targets[0].labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        self.start_agent_with(config)
    }

    /// The settings of an agent (`agent-<server_id>`) that streams to this
    /// fleet's collector and watches `target` as `server_id`, for a test to adjust
    /// and pass to [`Fleet::start_agent_with`].
    pub fn agent_config(&self, server_id: &str, target: tokio_postgres::Config) -> AgentConfig {
        let mut config = AgentConfig::new(&self.url, target);
        config.agent_id = format!("agent-{server_id}");
        config.targets[0].server_id = server_id.to_owned();
        config
    }

    /// Where the fleet's own agent listens for pool reports.
    pub fn pool_reporter(&self) -> Option<SocketAddr> {
        self.agent.as_ref().and_then(|a| a.pool_reporter)
    }

    /// Starts an agent with `config`, its PoolReporter on a free port of its own
    /// unless the config turns it off.
    pub fn start_agent_with(&self, mut config: AgentConfig) -> Result<Agent, SandboxError> {
        if config.pool_reporter.is_some() {
            config.pool_reporter = Some(([127, 0, 0, 1], 0).into());
        }
        pgfleet_agent::start(config).map_err(|e| SandboxError::Fleet(e.to_string()))
    }

    /// A Query client for the collector.
    pub async fn client(&self) -> Result<crate::Client, SandboxError> {
        crate::connect(&crate::Remote::plain(self.url.clone()))
            .await
            .map_err(|e| SandboxError::Fleet(e.to_string()))
    }

    /// Stops the collector, waits `downtime`, and starts a new one on the same
    /// address and data directory. The agent is left alone.
    pub async fn restart_collector(&mut self, downtime: Duration) -> Result<(), SandboxError> {
        let addr = match self.collector.take() {
            Some(c) => {
                let addr = c.addr;
                c.stop().await;
                addr
            }
            None => self
                .url
                .trim_start_matches("http://")
                .parse()
                .map_err(|_| SandboxError::Fleet("bad collector url".into()))?,
        };
        tokio::time::sleep(downtime).await;
        self.collector = Some(start_collector(&self.cluster, addr).await?);
        Ok(())
    }

    /// Stops the agent, the collector and the cluster, and deletes its directory.
    pub async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
        if let Some(collector) = self.collector.take() {
            collector.stop().await;
        }
        self.cluster.destroy().await;
    }
}

async fn start_collector(
    cluster: &TempCluster,
    listen: SocketAddr,
) -> Result<Collector, SandboxError> {
    let mut config = CollectorConfig::new(listen, cluster.dir().join("collector"));
    // The web UI and /metrics, on a port of their own.
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    server::start(config)
        .await
        .map_err(|e| SandboxError::Fleet(e.to_string()))
}

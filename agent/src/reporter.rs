//! The local PoolReporter service: applications push their pools' state, and
//! each target's snapshots carry the pools reported for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfleet_proto::v1::{self, pool_reporter_server::PoolReporterServer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::error;

use pgfleet_common::settings::{MAX_LABEL_BYTES, SettingsError};

/// A pool not reported for this long is dropped.
pub const REPORT_TTL: Duration = Duration::from_secs(60);

/// The most pools held for one target, over every reporter.
pub const MAX_POOLS_PER_TARGET: usize = 256;

/// The largest report the service accepts.
const MAX_REPORT_BYTES: usize = 64 << 10;

/// (reporter, pool_name)
type PoolKey = (String, String);

/// One target's reported pools, with when each was reported.
type TargetPools = HashMap<PoolKey, (Instant, v1::ClientPool)>;

/// The pools reported for each target. The lock is held only to copy a map in or
/// out, never across an await.
#[derive(Debug, Default)]
pub struct AppPools {
    targets: Mutex<HashMap<String, TargetPools>>,
}

impl AppPools {
    /// A registry for these targets.
    pub fn new<'a>(server_ids: impl IntoIterator<Item = &'a str>) -> Arc<Self> {
        Arc::new(AppPools {
            targets: Mutex::new(
                server_ids
                    .into_iter()
                    .map(|id| (id.to_owned(), HashMap::new()))
                    .collect(),
            ),
        })
    }

    /// Replaces what `reporter` said of `server_id`'s pools (empty: the only
    /// target); answers how many pools it now holds for the reporter.
    pub fn report(&self, req: v1::ReportPoolsRequest) -> Result<u32, Status> {
        let reporter = req.reporter.trim();
        if reporter.is_empty() || reporter.len() > MAX_LABEL_BYTES {
            return Err(Status::invalid_argument(format!(
                "reporter must name the application instance in 1 to {MAX_LABEL_BYTES} bytes, like \"checkout@web-3:4711\""
            )));
        }
        let mut names = Vec::with_capacity(req.pools.len());
        for p in &req.pools {
            if p.pool_name.trim().is_empty() || p.pool_name.len() > MAX_LABEL_BYTES {
                return Err(Status::invalid_argument(format!(
                    "every pool needs a pool_name of 1 to {MAX_LABEL_BYTES} bytes"
                )));
            }
            if names.contains(&p.pool_name.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "pool_name {:?} appears twice in one report",
                    p.pool_name
                )));
            }
            names.push(p.pool_name.as_str());
        }
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let server_id = if req.server_id.is_empty() && targets.len() == 1 {
            targets.keys().next().cloned().unwrap_or_default()
        } else {
            req.server_id.clone()
        };
        let known = || {
            let mut ids: Vec<_> = targets.keys().cloned().collect();
            ids.sort();
            ids.join(", ")
        };
        let Some(pools) = targets.get(&server_id) else {
            let ids = known();
            return Err(if server_id.is_empty() {
                Status::invalid_argument(format!(
                    "this agent watches several servers; set server_id to one of: {ids}"
                ))
            } else {
                Status::not_found(format!(
                    "this agent watches no server {server_id:?}; it watches: {ids}"
                ))
            });
        };
        let now = Instant::now();
        // Pools that stay: other reporters' that have not expired.
        let stays =
            |(r, _): &PoolKey, at: &Instant| r != reporter && now.duration_since(*at) < REPORT_TTL;
        let others = pools.iter().filter(|(key, (at, _))| stays(key, at)).count();
        if others + req.pools.len() > MAX_POOLS_PER_TARGET {
            return Err(Status::resource_exhausted(format!(
                "the agent holds at most {MAX_POOLS_PER_TARGET} pools per server, and this report would make {}",
                others + req.pools.len()
            )));
        }
        let pools = targets.get_mut(&server_id).expect("looked up above");
        pools.retain(|key, (at, _)| stays(key, at));
        let accepted = req.pools.len() as u32;
        for mut p in req.pools {
            p.kind = v1::PoolKind::Application.into();
            p.reporter = reporter.to_owned();
            pools.insert((reporter.to_owned(), p.pool_name.clone()), (now, p));
        }
        Ok(accepted)
    }

    /// The pools reported for `server_id` within [`REPORT_TTL`], by reporter and name.
    pub fn current(&self, server_id: &str) -> Vec<v1::ClientPool> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pools) = targets.get_mut(server_id) else {
            return Vec::new();
        };
        let now = Instant::now();
        pools.retain(|_, (at, _)| now.duration_since(*at) < REPORT_TTL);
        let mut out: Vec<_> = pools.values().map(|(_, p)| p.clone()).collect();
        out.sort_by(|a, b| (&a.reporter, &a.pool_name).cmp(&(&b.reporter, &b.pool_name)));
        out
    }
}

struct Service {
    pools: Arc<AppPools>,
}

#[tonic::async_trait]
impl v1::pool_reporter_server::PoolReporter for Service {
    async fn report(
        &self,
        request: Request<v1::ReportPoolsRequest>,
    ) -> Result<Response<v1::ReportPoolsResponse>, Status> {
        let accepted = self.pools.report(request.into_inner())?;
        Ok(Response::new(v1::ReportPoolsResponse { accepted }))
    }
}

/// Binds `addr` now, so a taken port fails the start with a clear error, and
/// serves until `stop` changes. Returns the bound address and the server task.
pub fn serve(
    addr: SocketAddr,
    pools: Arc<AppPools>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), SettingsError> {
    let invalid = |e: std::io::Error| SettingsError::Invalid {
        key: "pool_reporter_listen",
        message: format!(
            "cannot listen on {addr} for the PoolReporter service ({e}); choose another address, or \"off\""
        ),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(invalid)?;
    listener.set_nonblocking(true).map_err(invalid)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(invalid)?;
    let bound = listener.local_addr().map_err(invalid)?;
    let service =
        PoolReporterServer::new(Service { pools }).max_decoding_message_size(MAX_REPORT_BYTES);
    // Health checking and reflection, as on the collector, so that grpcurl,
    // Postman or a load balancer's probe can find the service.
    let (health, health_service) = tonic_health::server::health_reporter();
    let services = ["pgfleet.v1.PoolReporter", pgfleet_proto::reflection::HEALTH];
    let reflection_failed = |e: pgfleet_proto::reflection::Error| SettingsError::Invalid {
        key: "pool_reporter_listen",
        message: format!("cannot serve gRPC reflection: {e}"),
    };
    let (reflection, reflection_v1alpha) =
        pgfleet_proto::reflection::servers(&services).map_err(reflection_failed)?;
    let task = tokio::spawn(async move {
        health.set_serving::<PoolReporterServer<Service>>().await;
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stop.changed().await;
            })
            .await;
        if let Err(e) = result {
            error!(error = %pgfleet_common::error::chain(&e), "PoolReporter service stopped.");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, used: u32) -> v1::ClientPool {
        v1::ClientPool {
            pool_name: name.into(),
            used,
            ..Default::default()
        }
    }

    fn report(
        server_id: &str,
        reporter: &str,
        pools: Vec<v1::ClientPool>,
    ) -> v1::ReportPoolsRequest {
        v1::ReportPoolsRequest {
            server_id: server_id.into(),
            reporter: reporter.into(),
            pools,
        }
    }

    #[test]
    fn reports_replace_their_reporters_pools_only() {
        let reg = AppPools::new(["db1"]);
        assert_eq!(
            reg.report(report("", "web@a:1", vec![pool("main", 3), pool("ro", 1)]))
                .unwrap(),
            2
        );
        assert_eq!(
            reg.report(report("db1", "web@b:2", vec![pool("main", 5)]))
                .unwrap(),
            1
        );
        reg.report(report("db1", "web@a:1", vec![pool("main", 4)]))
            .unwrap();
        let now = reg.current("db1");
        let seen: Vec<_> = now
            .iter()
            .map(|p| (p.reporter.as_str(), p.pool_name.as_str(), p.used))
            .collect();
        assert_eq!(seen, [("web@a:1", "main", 4), ("web@b:2", "main", 5)]);
        assert!(
            now.iter()
                .all(|p| p.kind == v1::PoolKind::Application as i32)
        );
    }

    #[test]
    fn bad_reports_get_a_status_that_says_what_to_fix() {
        let reg = AppPools::new(["db1", "db2"]);
        let err = reg
            .report(report("", "web", vec![pool("main", 1)]))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("db1, db2"), "{}", err.message());
        let err = reg.report(report("db9", "web", vec![])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err = reg.report(report("db1", "", vec![])).unwrap_err();
        assert!(err.message().contains("reporter"), "{}", err.message());
        let err = reg
            .report(report("db1", "web", vec![pool("", 1)]))
            .unwrap_err();
        assert!(err.message().contains("pool_name"), "{}", err.message());
        let err = reg
            .report(report("db1", "web", vec![pool("a", 1), pool("a", 2)]))
            .unwrap_err();
        assert!(err.message().contains("twice"), "{}", err.message());
        let many = (0..=MAX_POOLS_PER_TARGET)
            .map(|i| pool(&format!("p{i}"), 0))
            .collect();
        let err = reg.report(report("db1", "web", many)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}

//! The Query service: answers from the aggregator's last published view (and
//! the store, for history). The handlers are here; `fleet` (summary, top
//! sessions), `blocking` (blocking trees) and `watcher` (`Watch`) hold what
//! they compute, and `grpc` how gRPC serves them.

mod blocking;
mod fleet;
mod grpc;
mod load;
mod watcher;

pub use fleet::{MAX_TOP_SESSIONS, summarise};
pub use grpc::QueryRoutes;
pub use watcher::{WATCH_QUEUE, WatchStream};

use std::sync::Arc;

use pgfleet_common::settings::check_label;
use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::{encode_query_session, query_session, server_info, v1};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::aggregator::{AggregatorHandle, Health, ServerView};
use crate::series::Plan;
use crate::store::Store;
use fleet::{TopOrder, matches};

/// The Query service.
#[derive(Clone)]
pub struct QueryService {
    aggregator: AggregatorHandle,
    store: Option<Store>,
    /// Whether the collector keeps DB load (`--load`).
    load: bool,
    /// Fires (or is dropped) when the collector stops: every Watch ends.
    shutdown: Option<watch::Receiver<()>>,
}

impl QueryService {
    /// A service that reads `aggregator`'s views.
    pub fn new(aggregator: AggregatorHandle) -> Self {
        QueryService {
            aggregator,
            store: None,
            load: true,
            shutdown: None,
        }
    }

    /// Whether the collector keeps DB load (`--load`); without it the load
    /// questions are refused, saying so.
    pub fn keeping_load(self, load: bool) -> Self {
        QueryService { load, ..self }
    }

    /// Ends every Watch stream, telling its client, when `shutdown` fires or
    /// its sender is dropped (a stopping collector would otherwise wait for
    /// watchers, which never end by themselves).
    pub fn with_shutdown(self, shutdown: watch::Receiver<()>) -> Self {
        QueryService {
            shutdown: Some(shutdown),
            ..self
        }
    }

    /// Also answers questions about the past from `store`.
    pub fn with_store(self, store: Store) -> Self {
        QueryService {
            store: Some(store),
            ..self
        }
    }

    /// How its store's reads go, when it has a store.
    pub fn store_reads(&self) -> Option<std::sync::Arc<crate::store::ReadCounts>> {
        self.store.as_ref().map(Store::reads)
    }
}

/// GetActivity's answer before it is a message: the server, the sample's
/// time and its sessions, chosen and in order. The JSON API and in-process
/// callers take it as a [`v1::GetActivityResponse`]; gRPC sends it encoded
/// straight from the sessions ([`Activity::encode`]), the same bytes.
pub(crate) struct Activity {
    server: Arc<ServerView>,
    at: Micros,
    sessions: Vec<Arc<Session>>,
}

impl Activity {
    /// As the message the Query API defines.
    fn message(self) -> v1::GetActivityResponse {
        v1::GetActivityResponse {
            server: Some(server_message(&self.server, now_micros())),
            sampled_at: (self.at != 0).then(|| time::timestamp(self.at)),
            sessions: self
                .sessions
                .iter()
                .map(|s| query_session(s, self.at))
                .collect(),
        }
    }

    /// The protobuf of [`Activity::message`], written without first copying
    /// every session's strings into it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use prost::encoding::message;
        let mut buf = Vec::with_capacity(1024 + 256 * self.sessions.len());
        message::encode(1, &server_message(&self.server, now_micros()), &mut buf);
        if self.at != 0 {
            message::encode(2, &time::timestamp(self.at), &mut buf);
        }
        for s in &self.sessions {
            encode_query_session(3, s, self.at, &mut buf);
        }
        buf
    }
}

/// The word the query API uses for a health.
pub fn status_word(health: &Health) -> &'static str {
    match health {
        Health::Up => "up",
        Health::Down(_) => "down",
        Health::Stale(_) => "stale",
    }
}

/// A server as the query API shows it at `now`.
pub fn server_message(view: &ServerView, now: Micros) -> v1::Server {
    let health = view.health(now);
    let status = status_word(&health);
    let reason = match health {
        Health::Up => String::new(),
        Health::Down(reason) | Health::Stale(reason) => reason,
    };
    v1::Server {
        server_id: view.server_id.clone(),
        agent_id: view.agent_id.clone(),
        labels: view
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        last_seen: view.last_seen_us.map(time::timestamp),
        up: status == "up",
        status: status.to_owned(),
        reason,
        sessions: view.rollup.sessions,
        sample_interval: Some(time::duration(view.interval.as_micros() as i64)),
        info: view.facts.as_deref().map(server_info),
        agent: view.agent,
        stream: Some(view.stream),
        collector: view.via.as_deref().unwrap_or_default().to_owned(),
        load: Some(load::load_now(view)),
    }
}

impl QueryService {
    /// The server a request names, or a status that says how to find one.
    fn server(&self, server_id: &str) -> Result<Arc<ServerView>, Status> {
        if server_id.is_empty() {
            return Err(Status::invalid_argument(
                "server_id is required; `pgfleet servers` lists the known servers",
            ));
        }
        self.aggregator
            .view()
            .servers
            .get(server_id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no server {server_id:?} is known to this collector; `pgfleet servers` lists the known servers"
                ))
            })
    }

    /// The sessions GetActivity answers `req` with: filtered, longest-running
    /// first, not yet put in a message (see [`Activity`]).
    pub(crate) async fn activity(&self, req: v1::GetActivityRequest) -> Result<Activity, Status> {
        let state = match req.state.trim() {
            "" => None,
            text => Some(SessionState::parse_filter(text).map_err(Status::invalid_argument)?),
        };
        let min_duration_us = match &req.min_duration {
            Some(d) if time::duration_micros(d) < 0 => {
                return Err(Status::invalid_argument(
                    "min_duration must not be negative",
                ));
            }
            Some(d) => time::duration_micros(d),
            None => 0,
        };
        let server = self.server(&req.server_id)?;
        let (at, past) = match &req.at {
            None => (server.sampled_at_us, None),
            Some(when) => {
                let when = time::timestamp_micros(when);
                if when > now_micros() {
                    return Err(Status::invalid_argument(
                        "at is in the future; give a past instant, or none for now",
                    ));
                }
                let Some(store) = &self.store else {
                    return Err(Status::failed_precondition(
                        "this collector keeps no history",
                    ));
                };
                let found = store
                    .activity_at(req.server_id.clone(), when)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                match found {
                    Some(state) => (state.at, Some(state.sessions)),
                    None => {
                        return Err(Status::not_found(format!(
                            "no history of {:?} at or before that instant (it is kept for {})",
                            req.server_id,
                            humantime::format_duration(store.retention().frames)
                        )));
                    }
                }
            }
        };
        let all: &[Arc<Session>] = past.as_deref().unwrap_or(&server.sessions);
        let mut sessions: Vec<Arc<Session>> = all
            .iter()
            .filter(|s| req.include_background || !s.is_background())
            .filter(|s| state.is_none_or(|st| s.state == st))
            .filter(|s| min_duration_us == 0 || s.duration_us(at).unwrap_or(0) >= min_duration_us)
            .filter(|s| matches(&req.wait_event_type, &s.wait_event_type))
            .filter(|s| matches(&req.database, &s.database))
            .filter(|s| matches(&req.user, &s.user))
            .filter(|s| matches(&req.application_name, &s.application_name))
            .cloned()
            .collect();
        // Longest-running first, as a DBA reads them; each duration is
        // worked out once, not at every comparison.
        sessions
            .sort_by_cached_key(|s| (std::cmp::Reverse(s.duration_us(at).unwrap_or(-1)), s.pid));
        Ok(Activity {
            server,
            at,
            sessions,
        })
    }
}

#[tonic::async_trait]
impl v1::query_server::Query for QueryService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let labels = request.into_inner().labels;
        Ok(Response::new(watcher::start(
            &self.aggregator,
            labels,
            self.shutdown.clone(),
        )))
    }

    async fn list_servers(
        &self,
        request: Request<v1::ListServersRequest>,
    ) -> Result<Response<v1::ListServersResponse>, Status> {
        let wanted = request.into_inner().labels;
        let view = self.aggregator.view();
        let now = now_micros();
        let servers = view
            .servers
            .values()
            .filter(|s| s.has_labels(&wanted))
            .map(|s| server_message(s, now))
            .collect();
        Ok(Response::new(v1::ListServersResponse { servers }))
    }

    async fn get_activity(
        &self,
        request: Request<v1::GetActivityRequest>,
    ) -> Result<Response<v1::GetActivityResponse>, Status> {
        let activity = self.activity(request.into_inner()).await?;
        Ok(Response::new(activity.message()))
    }

    async fn get_pools(
        &self,
        request: Request<v1::GetPoolsRequest>,
    ) -> Result<Response<v1::GetPoolsResponse>, Status> {
        let server = self.server(&request.into_inner().server_id)?;
        let at = server.sampled_at_us;
        let pools = &server.pools;
        Ok(Response::new(v1::GetPoolsResponse {
            server: Some(server_message(&server, now_micros())),
            sampled_at: (at != 0).then(|| time::timestamp(at)),
            slots: pools.slots.clone(),
            pgbouncer: pools.pgbouncer.clone(),
            client_pools: pools.client_pools.clone(),
            utilisation: Some(pools.utilisation()),
        }))
    }

    async fn fleet_summary(
        &self,
        request: Request<v1::FleetSummaryRequest>,
    ) -> Result<Response<v1::FleetSummaryResponse>, Status> {
        let req = request.into_inner();
        let group_by = req.group_by.trim();
        if !group_by.is_empty() {
            check_label(group_by, "").map_err(|e| {
                Status::invalid_argument(format!("group_by: {e}; give a label name such as dc"))
            })?;
        }
        // The census alone is held: were the view held, and a newer one
        // published meanwhile, this call would be the one to drop every
        // server's view (milliseconds at 10,000 servers).
        let census = self.aggregator.view().census.clone();
        Ok(Response::new(v1::FleetSummaryResponse {
            rows: summarise(&census, &req.labels, group_by, now_micros()),
        }))
    }

    async fn top_sessions(
        &self,
        request: Request<v1::TopSessionsRequest>,
    ) -> Result<Response<v1::TopSessionsResponse>, Status> {
        let req = request.into_inner();
        let order = TopOrder::parse(&req.order_by).map_err(Status::invalid_argument)?;
        let limit = match req.limit {
            0 => 20,
            n if n as usize > MAX_TOP_SESSIONS => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is more than {MAX_TOP_SESSIONS}; ask for fewer"
                )));
            }
            n => n as usize,
        };
        let view = self.aggregator.view();
        let mut ranked: Vec<(i64, &ServerView, &Arc<Session>)> = Vec::new();
        for server in view.servers.values().filter(|s| s.has_labels(&req.labels)) {
            let at = server.sampled_at_us;
            for s in server.sessions.iter().filter(|s| !s.is_background()) {
                if let Some(age) = order.age(s, at) {
                    ranked.push((age, server, s));
                }
            }
        }
        ranked.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| a.1.server_id.cmp(&b.1.server_id))
        });
        ranked.truncate(limit);
        Ok(Response::new(v1::TopSessionsResponse {
            sessions: ranked
                .into_iter()
                .map(|(_, server, s)| v1::ServerSession {
                    server_id: server.server_id.clone(),
                    session: Some(query_session(s, server.sampled_at_us)),
                })
                .collect(),
        }))
    }

    async fn blocking_trees(
        &self,
        request: Request<v1::BlockingTreesRequest>,
    ) -> Result<Response<v1::BlockingTreesResponse>, Status> {
        let req = request.into_inner();
        let servers: Vec<Arc<ServerView>> = if req.server_id.is_empty() {
            self.aggregator
                .view()
                .servers
                .values()
                .filter(|s| s.has_labels(&req.labels))
                .cloned()
                .collect()
        } else {
            vec![self.server(&req.server_id)?]
        };
        let mut trees: Vec<v1::BlockingTree> = servers
            .iter()
            .flat_map(|s| blocking::trees(&s.server_id, &s.sessions, s.sampled_at_us))
            .collect();
        trees.sort_by(|a, b| {
            b.waiting
                .cmp(&a.waiting)
                .then_with(|| a.server_id.cmp(&b.server_id))
        });
        Ok(Response::new(v1::BlockingTreesResponse { trees }))
    }

    async fn query_metrics(
        &self,
        request: Request<v1::QueryMetricsRequest>,
    ) -> Result<Response<v1::QueryMetricsResponse>, Status> {
        let plan =
            Plan::new(&request.into_inner(), now_micros()).map_err(Status::invalid_argument)?;
        let Some(store) = &self.store else {
            return Err(Status::failed_precondition(
                "this collector keeps no history",
            ));
        };
        let fold = plan.fold(&self.aggregator.view().servers);
        let fold = store
            .fold_minutes(fold.read(), fold, |fold, server_id, m| {
                fold.add(server_id, &m)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::QueryMetricsResponse {
            metric: plan.metric.name().to_owned(),
            step: Some(time::duration(plan.step_us)),
            series: fold.finish(),
        }))
    }

    async fn query_load(
        &self,
        request: Request<v1::QueryLoadRequest>,
    ) -> Result<Response<v1::QueryLoadResponse>, Status> {
        self.load_answer(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn top_queries(
        &self,
        request: Request<v1::TopQueriesRequest>,
    ) -> Result<Response<v1::TopQueriesResponse>, Status> {
        self.top_queries_answer(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_churn(
        &self,
        request: Request<v1::GetChurnRequest>,
    ) -> Result<Response<v1::GetChurnResponse>, Status> {
        self.churn_answer(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_databases(
        &self,
        request: Request<v1::GetDatabasesRequest>,
    ) -> Result<Response<v1::GetDatabasesResponse>, Status> {
        let server = self.server(&request.into_inner().server_id)?;
        Ok(Response::new(v1::GetDatabasesResponse {
            server: Some(server_message(&server, now_micros())),
            databases: server
                .databases
                .iter()
                .map(|(name, d)| v1::DatabaseTotals {
                    totals: Some(v1::DatabaseCounters {
                        database: name.to_string(),
                        ..d.totals.clone()
                    }),
                    since: Some(time::timestamp(d.since_us)),
                })
                .collect(),
        }))
    }
}

//! The Query service: answers from the aggregator's last published view.

use pgfleet_proto::model::SessionState;
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::{query_session, server_info, v1};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use std::collections::BTreeMap;

use pgfleet_agent::settings::check_label;

use crate::aggregator::{AggregatorHandle, Health, ServerView};
use crate::rollup::Rollup;

/// The Query service.
pub struct QueryService {
    aggregator: AggregatorHandle,
}

impl QueryService {
    /// A service that reads `aggregator`'s views.
    pub fn new(aggregator: AggregatorHandle) -> Self {
        QueryService { aggregator }
    }
}

/// A server as the query API shows it at `now`.
pub fn server_message(view: &ServerView, now: Micros) -> v1::Server {
    let (status, reason) = match view.health(now) {
        Health::Up => ("up", String::new()),
        Health::Down(reason) => ("down", reason),
        Health::Stale(reason) => ("stale", reason),
    };
    v1::Server {
        server_id: view.server_id.clone(),
        agent_id: view.agent_id.clone(),
        labels: view.labels.clone().into_iter().collect(),
        last_seen: view.last_seen_us.map(time::timestamp),
        up: status == "up",
        status: status.to_owned(),
        reason,
        sessions: view.client_sessions,
        sample_interval: Some(time::duration(view.interval.as_micros() as i64)),
        info: view.facts.as_deref().map(server_info),
        agent: view.agent,
        stream: Some(view.stream),
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
}

#[tonic::async_trait]
impl v1::query_server::Query for QueryService {
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
            .filter(|s| wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| server_message(s, now))
            .collect();
        Ok(Response::new(v1::ListServersResponse { servers }))
    }

    async fn get_activity(
        &self,
        request: Request<v1::GetActivityRequest>,
    ) -> Result<Response<v1::GetActivityResponse>, Status> {
        let req = request.into_inner();
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
        let at = server.sampled_at_us;
        let mut sessions: Vec<_> = server
            .sessions
            .iter()
            .filter(|s| req.include_background || !s.is_background())
            .filter(|s| state.is_none_or(|st| s.state == st))
            .filter(|s| min_duration_us == 0 || s.duration_us(at).unwrap_or(0) >= min_duration_us)
            .collect();
        // Longest-running first, as a DBA reads them.
        sessions.sort_by_key(|s| (std::cmp::Reverse(s.duration_us(at).unwrap_or(-1)), s.pid));
        Ok(Response::new(v1::GetActivityResponse {
            server: Some(server_message(&server, now_micros())),
            sampled_at: (at != 0).then(|| time::timestamp(at)),
            sessions: sessions.into_iter().map(|s| query_session(s, at)).collect(),
        }))
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
        let view = self.aggregator.view();
        Ok(Response::new(v1::FleetSummaryResponse {
            rows: summarise(
                view.servers
                    .values()
                    .filter(|s| req.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                    .map(|s| s.as_ref()),
                group_by,
                now_micros(),
            ),
        }))
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
                .values()
                .map(|d| v1::DatabaseTotals {
                    totals: Some(d.totals.clone()),
                    since: Some(time::timestamp(d.since_us)),
                })
                .collect(),
        }))
    }
}

/// The servers added up per value of `group_by` (one row for all when empty),
/// in the order of the values.
pub fn summarise<'a>(
    servers: impl Iterator<Item = &'a ServerView>,
    group_by: &str,
    now: Micros,
) -> Vec<v1::FleetSummaryRow> {
    struct Acc {
        row: v1::FleetSummaryRow,
        by_state: BTreeMap<&'static str, u32>,
        longest_us: i64,
    }
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    for s in servers {
        let value = if group_by.is_empty() {
            String::new()
        } else {
            s.labels.get(group_by).cloned().unwrap_or_default()
        };
        let acc = groups.entry(value.clone()).or_insert_with(|| Acc {
            row: v1::FleetSummaryRow {
                value,
                ..Default::default()
            },
            by_state: BTreeMap::new(),
            longest_us: -1,
        });
        let row = &mut acc.row;
        row.servers += 1;
        match s.health(now) {
            Health::Up => row.servers_up += 1,
            Health::Down(_) => row.servers_down += 1,
            Health::Stale(_) => row.servers_stale += 1,
        }
        let r = Rollup::of(&s.sessions, s.sampled_at_us);
        row.sessions += r.sessions;
        row.waiting_sessions += r.waiting;
        row.blocked_sessions += r.blocked;
        for (state, n) in r.by_state {
            *acc.by_state.entry(state).or_default() += n;
        }
        if let Some(age) = r.longest_xact_us
            && age > acc.longest_us
        {
            acc.longest_us = age;
            row.longest_transaction = Some(time::duration(age));
            row.longest_transaction_server = s.server_id.clone();
        }
        if let Some(slots) = &s.pools.slots {
            let usable = slots.max_connections.saturating_sub(slots.reserved);
            if usable > 0 {
                let share = f64::from(slots.used) / f64::from(usable);
                if share > row.max_slot_utilisation {
                    row.max_slot_utilisation = share;
                    row.most_saturated_server = s.server_id.clone();
                }
            }
        }
    }
    groups
        .into_values()
        .map(|mut acc| {
            acc.row.sessions_by_state = acc
                .by_state
                .into_iter()
                .map(|(name, count)| v1::SlotCount {
                    name: name.to_owned(),
                    count,
                })
                .collect();
            acc.row
        })
        .collect()
}

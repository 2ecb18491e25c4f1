//! The Query service: answers from the aggregator's last published view.

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::{query_session, server_info, v1};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot, watch};

use pgfleet_common::settings::check_label;

use crate::aggregator::{AggregatorHandle, Health, ServerView};
use crate::series::Plan;
use crate::store::Store;

/// The Query service.
pub struct QueryService {
    aggregator: AggregatorHandle,
    store: Option<Store>,
    /// Fires (or is dropped) when the collector stops: every Watch ends.
    shutdown: Option<watch::Receiver<()>>,
}

impl QueryService {
    /// A service that reads `aggregator`'s views.
    pub fn new(aggregator: AggregatorHandle) -> Self {
        QueryService {
            aggregator,
            store: None,
            shutdown: None,
        }
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

/// A watcher's events, or the status that ends its stream when it fell
/// behind.
pub struct WatchStream {
    events: mpsc::Receiver<v1::WatchEvent>,
    dropped: Option<oneshot::Receiver<Status>>,
    ended: bool,
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<v1::WatchEvent, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(dropped) = &mut self.dropped {
            match std::pin::Pin::new(dropped).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                // The watch ended another way: what is queued still goes.
                Poll::Ready(Err(_)) => self.dropped = None,
                Poll::Pending => {}
            }
        }
        self.events.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// How many events may wait for a watcher before it is dropped as too slow.
pub const WATCH_QUEUE: usize = 4096;

/// How often a watcher's servers are checked for going stale (which no new
/// snapshot announces).
const WATCH_HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[tonic::async_trait]
impl v1::query_server::Query for QueryService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let labels = request.into_inner().labels;
        let wanted = move |s: &ServerView| s.has_labels(&labels);
        let mut views = self.aggregator.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let (drop_watcher, dropped) = oneshot::channel();
        let mut last = views.borrow_and_update().clone();
        let now = now_micros();
        let mut sent: HashMap<Arc<str>, &'static str> = HashMap::new();
        let mut servers = Vec::new();
        for (id, s) in last.servers.iter().filter(|(_, s)| wanted(s)) {
            let message = server_message(s, now);
            sent.insert(id.clone(), status_word(&s.health(now)));
            servers.push(message);
        }
        let full = v1::WatchEvent {
            event: Some(v1::watch_event::Event::Full(v1::WatchFull { servers })),
        };
        // The channel is new and empty, so this cannot wait.
        let _ = tx.try_send(full);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_HEALTH_EVERY);
            let stopping = async move {
                match &mut shutdown {
                    Some(s) => {
                        let _ = s.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(stopping);
            loop {
                let fresh = tokio::select! {
                    changed = views.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        true
                    }
                    _ = tick.tick() => false,
                    _ = tx.closed() => return,
                    _ = &mut stopping => {
                        let _ = drop_watcher.send(Status::unavailable(
                            "the collector is shutting down; watch again (here or at another collector)",
                        ));
                        return;
                    }
                };
                let next = if fresh {
                    views.borrow_and_update().clone()
                } else {
                    last.clone()
                };
                let now = now_micros();
                let mut events = Vec::new();
                for (id, s) in next.servers.iter().filter(|(_, s)| wanted(s)) {
                    let same = last.servers.get(id).is_some_and(|old| Arc::ptr_eq(old, s));
                    let status = status_word(&s.health(now));
                    if same && sent.get(id).is_some_and(|st| *st == status) {
                        continue;
                    }
                    sent.insert(id.clone(), status);
                    events.push(v1::watch_event::Event::Changed(server_message(s, now)));
                }
                for id in last.servers.keys() {
                    if !next.servers.contains_key(id) && sent.remove(id).is_some() {
                        events.push(v1::watch_event::Event::Removed(id.to_string()));
                    }
                }
                for event in events {
                    let event = v1::WatchEvent { event: Some(event) };
                    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
                        // Its stream ends at once with the status; what it
                        // had not read is stale and goes unsent.
                        let _ = drop_watcher.send(Status::resource_exhausted(format!(
                            "this watcher fell {WATCH_QUEUE} events behind; watch again"
                        )));
                        return;
                    }
                }
                last = next;
            }
        });
        Ok(Response::new(WatchStream {
            events: rx,
            dropped: Some(dropped),
            ended: false,
        }))
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
        let mut sessions: Vec<_> = all
            .iter()
            .filter(|s| req.include_background || !s.is_background())
            .filter(|s| state.is_none_or(|st| s.state == st))
            .filter(|s| min_duration_us == 0 || s.duration_us(at).unwrap_or(0) >= min_duration_us)
            .filter(|s| matches(&req.wait_event_type, &s.wait_event_type))
            .filter(|s| matches(&req.database, &s.database))
            .filter(|s| matches(&req.user, &s.user))
            .filter(|s| matches(&req.application_name, &s.application_name))
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
        let view = self.aggregator.view();
        Ok(Response::new(v1::FleetSummaryResponse {
            rows: summarise(
                view.servers
                    .values()
                    .filter(|s| s.has_labels(&req.labels))
                    .map(|s| s.as_ref()),
                group_by,
                now_micros(),
            ),
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
        let view = self.aggregator.view();
        let stored = store
            .minutes(plan.start, plan.end)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::QueryMetricsResponse {
            metric: plan.metric.name().to_owned(),
            step: Some(time::duration(plan.step_us)),
            series: plan.evaluate(&view.servers, &stored),
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
        let r = &s.rollup;
        row.sessions += r.sessions;
        row.waiting_sessions += r.waiting;
        row.blocked_sessions += r.blocked;
        for (state, n) in &r.by_state {
            *acc.by_state.entry(state).or_default() += n;
        }
        if let Some(age) = r.longest_xact_us
            && age > acc.longest_us
        {
            acc.longest_us = age;
            row.longest_transaction = Some(time::duration(age));
            row.longest_transaction_server = s.server_id.clone();
        }
        let share = s.pools.slots_utilisation();
        if share > row.max_slot_utilisation {
            row.max_slot_utilisation = share;
            row.most_saturated_server = s.server_id.clone();
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

/// The most sessions TopSessions returns.
pub const MAX_TOP_SESSIONS: usize = 1000;

/// An exact-match filter; empty matches everything.
fn matches(wanted: &str, value: &str) -> bool {
    wanted.is_empty() || wanted == value
}

/// How TopSessions ranks sessions.
#[derive(Debug, Clone, Copy)]
enum TopOrder {
    XactAge,
    QueryAge,
    IdleInTransaction,
}

impl TopOrder {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(TopOrder::XactAge);
        }
        pgfleet_common::settings::parse_choice(
            "an order",
            text,
            &[
                ("xact_age", TopOrder::XactAge),
                ("query_age", TopOrder::QueryAge),
                ("idle_in_transaction", TopOrder::IdleInTransaction),
            ],
        )
    }

    /// The age the session is ranked by at `at`; None when it does not take
    /// part (no transaction, not active, not idle in one).
    fn age(self, s: &Session, at: Micros) -> Option<i64> {
        let since = match self {
            TopOrder::XactAge => s.xact_start_us?,
            TopOrder::QueryAge if s.state == SessionState::Active => s.query_start_us?,
            TopOrder::IdleInTransaction
                if matches!(
                    s.state,
                    SessionState::IdleInTransaction | SessionState::IdleInTransactionAborted
                ) =>
            {
                s.state_change_us?
            }
            _ => return None,
        };
        Some((at - since).max(0))
    }
}

/// Who blocks whom, from each session's `blocked_by`.
mod blocking {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use pgfleet_proto::model::Session;
    use pgfleet_proto::time::{self, Micros};
    use pgfleet_proto::{query_session, v1};

    /// The trees of one server: a root blocker each, with its waiters.
    pub fn trees(server_id: &str, sessions: &[Arc<Session>], at: Micros) -> Vec<v1::BlockingTree> {
        let by_pid: BTreeMap<i32, &Session> =
            sessions.iter().map(|s| (s.pid, s.as_ref())).collect();
        // Waiters of each blocker, by pid.
        let mut waiters: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for s in sessions {
            for b in &s.blocked_by {
                if by_pid.contains_key(b) {
                    waiters.entry(*b).or_default().push(s.pid);
                }
            }
        }
        let blocked: BTreeSet<i32> = sessions
            .iter()
            .filter(|s| s.blocked_by.iter().any(|b| by_pid.contains_key(b)))
            .map(|s| s.pid)
            .collect();
        // Roots wait on no one; what is left of the blockers after their trees
        // are built is a cycle (a deadlock about to be broken), rooted at its
        // lowest pid.
        let mut seen = BTreeSet::new();
        let mut roots: Vec<i32> = waiters
            .keys()
            .copied()
            .filter(|p| !blocked.contains(p))
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            if i == roots.len() {
                match waiters.keys().find(|p| !seen.contains(*p)) {
                    Some(p) => roots.push(*p),
                    None => break,
                }
            }
            let root = roots[i];
            i += 1;
            if seen.contains(&root) {
                continue;
            }
            let mut stats = (0u32, 0i64);
            let node = build(root, &by_pid, &waiters, &mut seen, at, &mut stats, true);
            out.push(v1::BlockingTree {
                server_id: server_id.to_owned(),
                root: Some(node),
                waiting: stats.0,
                longest_wait: (stats.0 > 0).then(|| time::duration(stats.1)),
            });
        }
        out
    }

    fn build(
        pid: i32,
        by_pid: &BTreeMap<i32, &Session>,
        waiters: &BTreeMap<i32, Vec<i32>>,
        seen: &mut BTreeSet<i32>,
        at: Micros,
        stats: &mut (u32, i64),
        root: bool,
    ) -> v1::BlockingNode {
        seen.insert(pid);
        let session = by_pid[&pid];
        if !root {
            stats.0 += 1;
            let wait = session.query_start_us.map_or(0, |q| (at - q).max(0));
            stats.1 = stats.1.max(wait);
        }
        let children = waiters
            .get(&pid)
            .into_iter()
            .flatten()
            .filter(|w| !seen.contains(*w))
            .copied()
            .collect::<Vec<_>>();
        let mut node = v1::BlockingNode {
            session: Some(query_session(session, at)),
            waiters: Vec::new(),
        };
        for w in children {
            if !seen.contains(&w) {
                node.waiters
                    .push(build(w, by_pid, waiters, seen, at, stats, false));
            }
        }
        node
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn s(pid: i32, blocked_by: &[i32]) -> Arc<Session> {
            Arc::new(Session {
                pid,
                query_start_us: Some(1_000_000),
                blocked_by: blocked_by.to_vec(),
                ..Default::default()
            })
        }

        fn shape(n: &v1::BlockingNode) -> String {
            let pid = n.session.as_ref().unwrap().pid;
            if n.waiters.is_empty() {
                pid.to_string()
            } else {
                let kids: Vec<_> = n.waiters.iter().map(shape).collect();
                format!("{pid}[{}]", kids.join(","))
            }
        }

        #[test]
        fn chains_fan_out_and_cycles_make_trees() {
            // 1 blocks 2 and 3; 3 blocks 4. 7 and 8 block each other. 9 waits
            // on a pid that is gone.
            let sessions = [
                s(1, &[]),
                s(2, &[1]),
                s(3, &[1]),
                s(4, &[3]),
                s(7, &[8]),
                s(8, &[7]),
                s(9, &[99]),
            ];
            let trees = trees("db", &sessions, 3_000_000);
            let shapes: Vec<_> = trees
                .iter()
                .map(|t| shape(t.root.as_ref().unwrap()))
                .collect();
            assert_eq!(shapes, ["1[2,3[4]]", "7[8]"]);
            assert_eq!(trees[0].waiting, 3);
            assert_eq!(trees[0].longest_wait, Some(time::duration(2_000_000)));
            assert_eq!(trees[1].waiting, 1);
        }
    }
}

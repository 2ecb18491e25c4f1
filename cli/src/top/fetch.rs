//! What top reads from the collector: the Watch stream of servers, their
//! health and their load, and each refresh (summary, sessions or pools),
//! beside the screen.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pgfleet_proto::v1;
use tokio::sync::mpsc;

use super::state::{Ask, Fetched, Mode, PoolLine, SessionLine};
use super::{Client, MAX_POOL_SERVERS, MAX_ROWS};
use crate::fleet::flatten;
use crate::remote::{Remote, connect};

/// A refresh's client (kept for the next one, when it connected) and what
/// it read, or why it could not.
pub(super) type Refreshed = (Option<Client>, Result<Fetched, String>);

/// What the Watch stream said.
pub(super) enum WatchNews {
    Full(Vec<v1::Server>),
    Changed(Box<v1::Server>),
    Removed(String),
    /// The stream ended or could not be opened: why.
    Lost(String),
}

/// Keeps a Watch stream open, opening it again (backing off) whenever it
/// ends, and hands on what it says.
pub(super) async fn watch(
    remote: Remote,
    labels: BTreeMap<String, String>,
    out: mpsc::Sender<WatchNews>,
) {
    let mut wait = Duration::from_millis(500);
    loop {
        let why = match connect(&remote).await {
            Err(e) => e.to_string(),
            Ok(mut client) => {
                let request = v1::WatchRequest {
                    labels: labels.clone().into_iter().collect::<HashMap<_, _>>(),
                };
                match client.watch(request).await {
                    Err(s) => format!("cannot watch the fleet at {}: {}", remote.url, s.message()),
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(ev)) => {
                                    wait = Duration::from_millis(500);
                                    let news = match ev.event {
                                        Some(v1::watch_event::Event::Full(f)) => {
                                            WatchNews::Full(f.servers)
                                        }
                                        Some(v1::watch_event::Event::Changed(s)) => {
                                            WatchNews::Changed(Box::new(s))
                                        }
                                        Some(v1::watch_event::Event::Removed(id)) => {
                                            WatchNews::Removed(id)
                                        }
                                        None => continue,
                                    };
                                    if out.send(news).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {
                                    break format!(
                                        "the collector at {} ended the stream",
                                        remote.url
                                    );
                                }
                                Err(s) => {
                                    break format!(
                                        "lost the collector at {}: {}",
                                        remote.url,
                                        s.message()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        };
        if out.send(WatchNews::Lost(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// One refresh: the summary, and what the screen shows.
pub(super) async fn read(
    client: &mut Client,
    ask: &Ask,
    remote: &Remote,
) -> Result<Fetched, String> {
    // A deadline passed says which (the top line has room for little).
    let failed = |s: tonic::Status| match crate::remote::timed_out(&s) {
        true => format!(
            "the collector did not answer within {} (--timeout)",
            humantime::format_duration(remote.timeout())
        ),
        false => s.message().to_owned(),
    };
    let labels: HashMap<String, String> = ask.filter.labels.clone().into_iter().collect();
    let summary = client
        .fleet_summary(v1::FleetSummaryRequest {
            group_by: ask.by.clone(),
            labels: labels.clone(),
        })
        .await
        .map_err(failed)?
        .into_inner()
        .rows;
    let server = ask.filter.server.clone();
    let mut out = Fetched {
        summary,
        ..Fetched::default()
    };
    match ask.mode {
        Mode::Running => match &server {
            Some(id) => {
                let r = client
                    .get_activity(v1::GetActivityRequest {
                        server_id: id.clone(),
                        state: "active".into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(failed)?
                    .into_inner();
                out.sessions = r
                    .sessions
                    .into_iter()
                    .map(|session| SessionLine {
                        server_id: id.clone(),
                        depth: 0,
                        session,
                    })
                    .collect();
            }
            None => {
                let r = client
                    .top_sessions(v1::TopSessionsRequest {
                        order_by: "query_age".into(),
                        labels,
                        limit: MAX_ROWS,
                    })
                    .await
                    .map_err(failed)?
                    .into_inner();
                out.sessions = r
                    .sessions
                    .into_iter()
                    .filter_map(|s| {
                        Some(SessionLine {
                            server_id: s.server_id,
                            depth: 0,
                            session: s.session?,
                        })
                    })
                    .collect();
            }
        },
        Mode::Waiting | Mode::Blocking => {
            let trees = client
                .blocking_trees(v1::BlockingTreesRequest {
                    server_id: server.unwrap_or_default(),
                    labels,
                })
                .await
                .map_err(failed)?
                .into_inner()
                .trees;
            // Every session of a tree, root first, for the blocking
            // screen; the waiters only for the waiting screen.
            for t in &trees {
                let Some(root) = &t.root else { continue };
                let mut nodes = Vec::new();
                flatten(root, 0, &mut nodes);
                for (depth, s) in nodes {
                    if ask.mode == Mode::Blocking || depth > 0 {
                        out.sessions.push(SessionLine {
                            server_id: t.server_id.clone(),
                            depth: if ask.mode == Mode::Blocking { depth } else { 0 },
                            session: s.clone(),
                        });
                    }
                }
            }
        }
        Mode::Pools => {
            let ids = match server {
                Some(id) => vec![id],
                None => ask.servers.iter().take(MAX_POOL_SERVERS).cloned().collect(),
            };
            let mut asked = tokio::task::JoinSet::new();
            for id in ids {
                let mut c = client.clone();
                asked.spawn(async move {
                    c.get_pools(v1::GetPoolsRequest { server_id: id })
                        .await
                        .map(|r| r.into_inner())
                });
            }
            while let Some(done) = asked.join_next().await {
                if let Ok(Ok(p)) = done {
                    out.pools.extend(pool_lines(&p));
                }
            }
            out.pools.sort_by(|a, b| {
                b.utilisation
                    .total_cmp(&a.utilisation)
                    .then(a.server_id.cmp(&b.server_id))
                    .then(a.pool.cmp(&b.pool))
            });
        }
        // Each server's load comes with it on the Watch stream.
        Mode::Load => {}
    }
    Ok(out)
}

/// One server's pools as lines: its slots, each PgBouncer pool, each client pool.
pub(super) fn pool_lines(p: &v1::GetPoolsResponse) -> Vec<PoolLine> {
    let server_id = p
        .server
        .as_ref()
        .map(|s| s.server_id.clone())
        .unwrap_or_default();
    let u = p.utilisation.clone().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(s) = &p.slots {
        out.push(PoolLine {
            server_id: server_id.clone(),
            pool: "connection slots".into(),
            kind: "server",
            used: s.used,
            capacity: s.max_connections.saturating_sub(s.reserved),
            waiting: 0,
            utilisation: u.slots,
        });
    }
    if let Some(b) = &p.pgbouncer {
        for (i, pool) in b.pools.iter().enumerate() {
            out.push(PoolLine {
                server_id: server_id.clone(),
                pool: format!("{}/{}", pool.database, pool.user),
                kind: "pgbouncer",
                used: pool.server_active_connections,
                capacity: pool.server_active_connections
                    + pool.server_idle_connections
                    + pool.server_used_connections,
                waiting: pool.client_waiting_connections,
                utilisation: u.pgbouncer_pools.get(i).copied().unwrap_or(0.0),
            });
        }
    }
    for (i, c) in p.client_pools.iter().enumerate() {
        out.push(PoolLine {
            server_id: server_id.clone(),
            pool: c.pool_name.clone(),
            kind: match v1::PoolKind::try_from(c.kind) {
                Ok(v1::PoolKind::Agent) => "agent",
                _ => "application",
            },
            used: c.used,
            capacity: c.max,
            waiting: c.pending_requests,
            utilisation: u.client_pools.get(i).copied().unwrap_or(0.0),
        });
    }
    out
}

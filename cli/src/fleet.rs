//! `pgfleet servers` and `pgfleet activity`: ask the Query API and print.

use pgfleet_common::settings;
use std::time::Duration;

use pgfleet_proto::model::SessionState;
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::v1;

use super::output::{Output, Table, duration_cell, human_duration, json, one_line};
use super::remote::{Remote, call_failed, connect};
use super::{ActivityFilter, CliError};

/// The widest query shown in a table; `--output json` has the full text.
const QUERY_WIDTH: usize = 80;

/// `pgfleet servers`.
pub async fn servers(remote: &Remote, output: Output, labels: &[String]) -> Result<(), CliError> {
    let labels = settings::parse_labels(labels.iter().map(String::as_str))?;
    let mut client = connect(remote).await?;
    let response = client
        .list_servers(v1::ListServersRequest {
            labels: labels.into_iter().collect(),
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!(
        "{}",
        render_servers(&response.servers, output, now_micros())
    );
    Ok(())
}

/// `pgfleet summary [--by LABEL]`.
pub async fn summary(
    remote: &Remote,
    output: Output,
    by: Option<&str>,
    labels: &[String],
) -> Result<(), CliError> {
    let labels = settings::parse_labels(labels.iter().map(String::as_str))?;
    let group_by = by.unwrap_or_default().trim().to_owned();
    if !group_by.is_empty() {
        settings::check_label(&group_by, "")?;
    }
    let mut client = connect(remote).await?;
    let response = client
        .fleet_summary(v1::FleetSummaryRequest {
            group_by: group_by.clone(),
            labels: labels.into_iter().collect(),
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_summary(&response.rows, &group_by, output));
    Ok(())
}

/// The summary rows as a table, or as a JSON array of `FleetSummaryRow`.
pub fn render_summary(rows: &[v1::FleetSummaryRow], group_by: &str, output: Output) -> String {
    if output == Output::Json {
        return json(&rows);
    }
    if rows.is_empty() && output == Output::Table {
        return "No servers yet: start an agent with --collector pointing here.\n".to_owned();
    }
    let title = if group_by.is_empty() {
        "FLEET".to_owned()
    } else {
        group_by.to_uppercase()
    };
    let mut table = Table::new(&[
        "",
        "SERVERS",
        "UP",
        "DOWN",
        "STALE",
        "SESSIONS",
        "ACTIVE",
        "IDLE IN TX",
        "WAITING",
        "BLOCKED",
        "LONGEST TX",
        "MOST SLOTS USED",
    ]);
    table.rename(0, title);
    for r in rows {
        let state = |name: &str| {
            r.sessions_by_state
                .iter()
                .filter(|c| c.name.starts_with(name))
                .map(|c| c.count)
                .sum::<u32>()
                .to_string()
        };
        let longest = match &r.longest_transaction {
            Some(d) if output == Output::Csv => duration_cell(time::duration_micros(d), output),
            Some(d) => format!(
                "{} ({})",
                human_duration(time::duration_micros(d)),
                r.longest_transaction_server
            ),
            None => String::new(),
        };
        let saturated = if r.most_saturated_server.is_empty() {
            String::new()
        } else {
            format!(
                "{:.0}% ({})",
                r.max_slot_utilisation * 100.0,
                r.most_saturated_server
            )
        };
        table.row(vec![
            if group_by.is_empty() {
                "all".to_owned()
            } else if r.value.is_empty() {
                "(none)".to_owned()
            } else {
                r.value.clone()
            },
            r.servers.to_string(),
            r.servers_up.to_string(),
            r.servers_down.to_string(),
            r.servers_stale.to_string(),
            r.sessions.to_string(),
            state("active"),
            state("idle in transaction"),
            r.waiting_sessions.to_string(),
            r.blocked_sessions.to_string(),
            longest,
            saturated,
        ]);
    }
    table.show(output)
}

/// `pgfleet activity SERVER`.
pub async fn activity(
    remote: &Remote,
    output: Output,
    server: &str,
    filter: ActivityFilter,
) -> Result<(), CliError> {
    // Check locally first, so a typo is named before any network wait.
    if let Some(s) = &filter.state {
        SessionState::parse_filter(s).map_err(CliError::Usage)?;
    }
    let min_duration = filter
        .min_duration
        .as_deref()
        .map(|text| {
            settings::parse_duration(
                "min-duration",
                text,
                Duration::ZERO..=Duration::from_secs(86_400 * 365),
            )
        })
        .transpose()?;
    let at = filter
        .at
        .as_deref()
        .map(|text| parse_time("--at", text).map(time::timestamp))
        .transpose()?;
    let mut client = connect(remote).await?;
    let response = client
        .get_activity(v1::GetActivityRequest {
            at,
            server_id: server.to_owned(),
            state: filter.state.unwrap_or_default(),
            min_duration: min_duration.map(|d| time::duration(d.as_micros() as i64)),
            include_background: filter.all,
            wait_event_type: filter.wait.unwrap_or_default(),
            database: filter.database.unwrap_or_default(),
            user: filter.user.unwrap_or_default(),
            application_name: filter.application.unwrap_or_default(),
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_activity(&response, output, now_micros()));
    Ok(())
}

/// An instant given as RFC 3339 (2026-11-24T03:12:00Z), for `flag`.
pub(super) fn parse_time(flag: &str, text: &str) -> Result<Micros, CliError> {
    humantime::parse_rfc3339_weak(text.trim())
        .map(time::system_time_to_micros)
        .map_err(|_| {
            CliError::Usage(format!(
                "{flag} {text:?} is not a time like 2026-11-24T03:12:00Z"
            ))
        })
}

/// `pgfleet top-sessions`.
pub async fn top_sessions(
    remote: &Remote,
    output: Output,
    by: &str,
    labels: &[String],
    limit: u32,
) -> Result<(), CliError> {
    let labels = settings::parse_labels(labels.iter().map(String::as_str))?;
    let mut client = connect(remote).await?;
    let response = client
        .top_sessions(v1::TopSessionsRequest {
            order_by: by.to_owned(),
            labels: labels.into_iter().collect(),
            limit,
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    if output == Output::Json {
        print!("{}", json(&response.sessions));
        return Ok(());
    }
    let mut table = session_table(true);
    for s in &response.sessions {
        if let Some(session) = &s.session {
            table.row(session_row(Some(&s.server_id), session, output));
        }
    }
    print!("{}", table.show(output));
    Ok(())
}

/// `pgfleet blocking [SERVER]`.
pub async fn blocking(
    remote: &Remote,
    output: Output,
    server: Option<&str>,
    labels: &[String],
) -> Result<(), CliError> {
    let labels = settings::parse_labels(labels.iter().map(String::as_str))?;
    let mut client = connect(remote).await?;
    let response = client
        .blocking_trees(v1::BlockingTreesRequest {
            server_id: server.unwrap_or_default().to_owned(),
            labels: labels.into_iter().collect(),
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_blocking(&response.trees, output));
    Ok(())
}

/// Blocking trees as indented tables, one per tree, or as JSON.
pub fn render_blocking(trees: &[v1::BlockingTree], output: Output) -> String {
    if output == Output::Json {
        return json(&trees);
    }
    if output == Output::Csv {
        // One table: each session with its tree's server and its depth in it.
        let mut table = session_table(true);
        table.insert_column(1, "DEPTH");
        let mut rows = Vec::new();
        for t in trees {
            if let Some(root) = &t.root {
                flatten(root, 0, &mut rows);
            }
            for (depth, s) in rows.drain(..) {
                let mut row = session_row(Some(&t.server_id), s, output);
                row.insert(1, depth.to_string());
                table.row(row);
            }
        }
        return table.csv();
    }
    if trees.is_empty() {
        return "No session is blocked.\n".to_owned();
    }
    let mut out = String::new();
    for t in trees {
        let longest = t
            .longest_wait
            .as_ref()
            .map(|d| human_duration(time::duration_micros(d)))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}: {} waiting, the longest for {longest}\n",
            t.server_id, t.waiting
        ));
        let mut table = session_table(false);
        if let Some(root) = &t.root {
            add_nodes(&mut table, root, 0);
        }
        out.push_str(&table.render());
        out.push('\n');
    }
    out
}

/// The sessions of a tree, each with its depth, root first.
pub(super) fn flatten<'a>(
    node: &'a v1::BlockingNode,
    depth: usize,
    out: &mut Vec<(usize, &'a v1::Session)>,
) {
    if let Some(s) = &node.session {
        out.push((depth, s));
    }
    for w in &node.waiters {
        flatten(w, depth + 1, out);
    }
}

fn add_nodes(table: &mut Table, node: &v1::BlockingNode, depth: usize) {
    if let Some(s) = &node.session {
        let mut row = session_row(None, s, Output::Table);
        row[0] = format!("{}{}", "  ".repeat(depth), row[0]);
        table.row(row);
    }
    for w in &node.waiters {
        add_nodes(table, w, depth + 1);
    }
}

/// The columns `activity`, `top-sessions` and `blocking` show, with a server
/// column first when `with_server`.
fn session_table(with_server: bool) -> Table {
    let mut columns = vec![
        "PID",
        "DATABASE",
        "USER",
        "APPLICATION",
        "CLIENT",
        "STATE",
        "WAIT",
        "BLOCKED BY",
        "DURATION",
        "QUERY",
    ];
    if with_server {
        columns.insert(0, "SERVER");
    }
    Table::new(&columns)
}

/// What a session waits on, as `Type:Event` (empty when it does not wait).
pub(super) fn wait_text(s: &v1::Session) -> String {
    match (s.wait_event_type.as_str(), s.wait_event.as_str()) {
        ("", _) => String::new(),
        (t, "") => t.to_owned(),
        (t, e) => format!("{t}:{e}"),
    }
}

/// Where a session's client is: its address, or "local" for a Unix socket.
pub(super) fn client_text(s: &v1::Session) -> &str {
    if s.client.is_empty() {
        "local"
    } else {
        &s.client
    }
}

/// One session as a row of [`session_table`].
fn session_row(server: Option<&str>, s: &v1::Session, output: Output) -> Vec<String> {
    let wait = wait_text(s);
    let blocked_by: Vec<String> = s.blocked_by.iter().map(i32::to_string).collect();
    let mut row: Vec<String> = server.map(str::to_owned).into_iter().collect();
    row.extend([
        s.pid.to_string(),
        s.database.clone(),
        s.user.clone(),
        s.application_name.clone(),
        client_text(s).to_owned(),
        if s.state.is_empty() {
            s.backend_type.clone()
        } else {
            s.state.clone()
        },
        wait,
        blocked_by.join(","),
        s.duration
            .as_ref()
            .map(|d| duration_cell(time::duration_micros(d), output))
            .unwrap_or_default(),
        one_line(
            &s.query,
            if output == Output::Csv {
                usize::MAX
            } else {
                QUERY_WIDTH
            },
        ),
    ]);
    row
}

pub(super) fn ago(ts: Option<&prost_types::Timestamp>, now: Micros) -> String {
    match ts {
        Some(ts) => format!("{} ago", human_duration(now - time::timestamp_micros(ts))),
        None => "never".to_owned(),
    }
}

/// The servers as a table, or as a JSON array of `Server` objects.
pub fn render_servers(servers: &[v1::Server], output: Output, now: Micros) -> String {
    if output == Output::Json {
        return json(&servers);
    }
    let mut table = Table::new(&[
        "SERVER",
        "STATUS",
        "SESSIONS",
        "LAST SEEN",
        "DROPPED",
        "AGENT",
        "LABELS",
        "REASON",
    ]);
    for s in servers {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        table.row(vec![
            s.server_id.clone(),
            s.status.clone(),
            s.sessions.to_string(),
            if output == Output::Csv {
                s.last_seen
                    .as_ref()
                    .map(|t| match time::timestamp_micros(t) {
                        at if time::writable(at) => {
                            humantime::format_rfc3339_millis(time::micros_to_system_time(at))
                                .to_string()
                        }
                        at => time::rfc3339(at),
                    })
                    .unwrap_or_default()
            } else {
                ago(s.last_seen.as_ref(), now)
            },
            dropped(s),
            // A server another collector streams (a shared store) says which.
            if s.collector.is_empty() {
                s.agent_id.clone()
            } else {
                format!("{} via {}", s.agent_id, s.collector)
            },
            labels.join(","),
            s.reason.clone(),
        ]);
    }
    if servers.is_empty() && output == Output::Table {
        return "No servers yet: start an agent with --collector pointing here.\n".to_owned();
    }
    table.show(output)
}

/// Batches of the server's agent that never reached the collector: those
/// its spool dropped, or the gaps the collector saw, whichever is more (an
/// agent's count starts again when it restarts; the collector's when it does).
fn dropped(server: &v1::Server) -> String {
    let by_agent = server.agent.map_or(0, |a| a.spool_dropped_batches_total);
    let gaps = server.stream.map_or(0, |s| s.missing_batches);
    by_agent.max(gaps).to_string()
}

/// "db-1  up  sampled 0.3s ago" (or "db-1  down (reason)"), and a line break.
pub(super) fn status_line(
    server: Option<&v1::Server>,
    sampled_at: Option<&prost_types::Timestamp>,
    now: Micros,
) -> String {
    let Some(server) = server else {
        return String::new();
    };
    let reason = if server.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", server.reason)
    };
    let sampled = match sampled_at {
        Some(at) => format!("  sampled {}", ago(Some(at), now)),
        None => String::new(),
    };
    format!("{}  {}{reason}{sampled}\n", server.server_id, server.status)
}

/// One server's sessions as a table under a status line, or as a JSON array of
/// `Session` objects.
pub fn render_activity(response: &v1::GetActivityResponse, output: Output, now: Micros) -> String {
    if output == Output::Json {
        return json(&response.sessions);
    }
    let mut out = status_line(response.server.as_ref(), response.sampled_at.as_ref(), now);
    if response.server.is_some() {
        out.pop();
        out.push_str(&format!("  {} sessions shown\n", response.sessions.len()));
    }
    let mut table = session_table(false);
    for s in &response.sessions {
        table.row(session_row(None, s, output));
    }
    if output == Output::Csv {
        return table.csv();
    }
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_tables_show_status_reason_and_age() {
        let now = 1_700_000_010_000_000;
        let server = v1::Server {
            server_id: "db-1".into(),
            agent_id: "a1".into(),
            labels: [("dc".to_owned(), "eu1".to_owned())].into(),
            last_seen: Some(time::timestamp(now - 2_000_000)),
            up: false,
            status: "down".into(),
            reason: "connection refused".into(),
            sessions: 0,
            stream: Some(v1::StreamStats {
                missing_batches: 17,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render_servers(std::slice::from_ref(&server), Output::Table, now);
        let line = text.lines().nth(1).unwrap();
        for part in [
            "db-1",
            "down",
            "2.0s ago",
            " 17 ",
            "a1",
            "dc=eu1",
            "connection refused",
        ] {
            assert!(line.contains(part), "{part} missing from {line:?}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&render_servers(&[server], Output::Json, now)).unwrap();
        assert_eq!(json[0]["server_id"], "db-1");
        assert_eq!(json[0]["up"], false);
    }

    #[test]
    fn activity_tables_show_waits_and_blockers() {
        let response = v1::GetActivityResponse {
            server: None,
            sampled_at: None,
            sessions: vec![v1::Session {
                pid: 99,
                state: "active".into(),
                wait_event_type: "Lock".into(),
                wait_event: "transactionid".into(),
                blocked_by: vec![7],
                query: "update accounts\n set x = 1".into(),
                duration: Some(time::duration(65_000_000)),
                ..Default::default()
            }],
        };
        let text = render_activity(&response, Output::Table, 0);
        let line = text.lines().nth(1).unwrap();
        for part in [
            "99",
            "Lock:transactionid",
            " 7 ",
            "1m05s",
            "update accounts set x = 1",
            "local",
        ] {
            assert!(line.contains(part), "{part} missing from {line:?}");
        }
    }
}

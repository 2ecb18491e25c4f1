//! `pgfleet pools` and `pgfleet databases`: one server's pools and its database
//! counters.

use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::v1;

use super::CliError;
use super::fleet::status_line;
use super::output::{Output, Table, duration_cell, human_duration, json};
use super::remote::{Remote, call_failed, connect};

/// `pgfleet pools SERVER`.
pub async fn pools(remote: &Remote, output: Output, server: &str) -> Result<(), CliError> {
    let response = connect(remote)
        .await?
        .get_pools(v1::GetPoolsRequest {
            server_id: server.to_owned(),
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_pools(&response, output, now_micros()));
    Ok(())
}

/// `pgfleet databases SERVER`.
pub async fn databases(remote: &Remote, output: Output, server: &str) -> Result<(), CliError> {
    let response = connect(remote)
        .await?
        .get_databases(v1::GetDatabasesRequest {
            server_id: server.to_owned(),
        })
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_databases(&response, output, now_micros()));
    Ok(())
}

fn counts(counts: &[v1::SlotCount]) -> String {
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    sorted
        .iter()
        .map(|c| {
            let name = if c.name.is_empty() { "-" } else { &c.name };
            format!("{name}={}", c.count)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pools as three tables (slots, client pools, PgBouncer), or as one JSON
/// `GetPoolsResponse` object.
pub fn render_pools(r: &v1::GetPoolsResponse, output: Output, now: Micros) -> String {
    if output == Output::Json {
        return json(r);
    }
    if output == Output::Csv {
        return pools_csv(r);
    }
    let mut out = status_line(r.server.as_ref(), r.sampled_at.as_ref(), now);
    if let Some(s) = &r.slots {
        let full = r.utilisation.as_ref().map_or(0.0, |u| u.slots);
        out.push_str(&format!(
            "\nConnection slots: {} used of {} ({} reserved for superusers), {:.0}% full\n",
            s.used,
            s.max_connections,
            s.reserved,
            full * 100.0
        ));
        for (what, c) in [
            ("by state", &s.by_state),
            ("by application", &s.by_application),
            ("by user", &s.by_user),
            ("by database", &s.by_database),
        ] {
            out.push_str(&format!("  {what:<15} {}\n", counts(c)));
        }
    }
    let mut table = Table::new(&[
        "POOL", "KIND", "REPORTER", "MAX", "USED", "IDLE", "PENDING", "TIMEOUTS", "AVG WAIT",
    ]);
    for p in &r.client_pools {
        let avg_wait = if p.wait_time_count > 0 {
            human_duration((p.wait_time_seconds_sum / p.wait_time_count as f64 * 1e6) as i64)
        } else {
            String::new()
        };
        let mut row = client_pool_row(p);
        row.push(avg_wait);
        table.row(row);
    }
    out.push('\n');
    out.push_str(&table.render());
    if let Some(b) = &r.pgbouncer {
        out.push('\n');
        if !b.up {
            out.push_str(&format!("PgBouncer: down ({})\n", b.reason));
        } else {
            let mut table = Table::new(&[
                "PGBOUNCER DB",
                "USER",
                "CL ACTIVE",
                "CL WAITING",
                "SV ACTIVE",
                "SV IDLE",
                "SV USED",
                "MAX WAIT",
                "MODE",
            ]);
            for p in &b.pools {
                table.row(vec![
                    p.database.clone(),
                    p.user.clone(),
                    p.client_active_connections.to_string(),
                    p.client_waiting_connections.to_string(),
                    p.server_active_connections.to_string(),
                    p.server_idle_connections.to_string(),
                    p.server_used_connections.to_string(),
                    human_duration((p.client_maxwait_seconds * 1e6) as i64),
                    p.pool_mode.clone(),
                ]);
            }
            out.push_str(&table.render());
        }
    }
    out
}

/// A client pool's cells: pool, kind, reporter, max, used, idle, pending,
/// timeouts.
fn client_pool_row(p: &v1::ClientPool) -> Vec<String> {
    let kind = match v1::PoolKind::try_from(p.kind) {
        Ok(v1::PoolKind::Agent) => "agent",
        Ok(v1::PoolKind::Application) => "application",
        _ => "unknown",
    };
    vec![
        p.pool_name.clone(),
        kind.to_owned(),
        p.reporter.clone(),
        p.max.to_string(),
        p.used.to_string(),
        p.idle.to_string(),
        p.pending_requests.to_string(),
        p.timeouts.to_string(),
    ]
}

/// Every pool in one CSV table: the agent's and the applications' pools, then
/// PgBouncer's (server connections in use and idle, clients waiting).
fn pools_csv(r: &v1::GetPoolsResponse) -> String {
    let mut table = Table::new(&[
        "POOL", "KIND", "REPORTER", "MAX", "USED", "IDLE", "PENDING", "TIMEOUTS",
    ]);
    for p in &r.client_pools {
        table.row(client_pool_row(p));
    }
    for p in r.pgbouncer.iter().flat_map(|b| &b.pools) {
        table.row(vec![
            format!("{}/{}", p.database, p.user),
            "pgbouncer".to_owned(),
            String::new(),
            String::new(),
            p.server_active_connections.to_string(),
            p.server_idle_connections.to_string(),
            p.client_waiting_connections.to_string(),
            String::new(),
        ]);
    }
    table.csv()
}

/// The totals as a table, or as a JSON array of `DatabaseTotals` objects.
pub fn render_databases(r: &v1::GetDatabasesResponse, output: Output, now: Micros) -> String {
    if output == Output::Json {
        return json(&r.databases);
    }
    let mut out = if output == Output::Csv {
        String::new()
    } else {
        status_line(r.server.as_ref(), None, now)
    };
    let mut table = Table::new(&[
        "DATABASE",
        "COMMITS",
        "ROLLBACKS",
        "HIT %",
        "BLKS READ",
        "TUP INS",
        "TUP UPD",
        "TUP DEL",
        "TEMP BYTES",
        "DEADLOCKS",
        "SINCE",
    ]);
    for d in &r.databases {
        let Some(t) = &d.totals else { continue };
        let hit = match t.blks_hit + t.blks_read {
            0 => String::new(),
            all => format!("{:.1}", t.blks_hit as f64 * 100.0 / all as f64),
        };
        table.row(vec![
            t.database.clone(),
            t.xact_commit.to_string(),
            t.xact_rollback.to_string(),
            hit,
            t.blks_read.to_string(),
            t.tup_inserted.to_string(),
            t.tup_updated.to_string(),
            t.tup_deleted.to_string(),
            t.temp_bytes.to_string(),
            t.deadlocks.to_string(),
            d.since
                .as_ref()
                .map(|s| match output {
                    Output::Csv => duration_cell(now - time::timestamp_micros(s), output),
                    _ => human_duration(now - time::timestamp_micros(s)) + " ago",
                })
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&table.show(output));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_print_slots_client_pools_and_pgbouncer() {
        let r = v1::GetPoolsResponse {
            slots: Some(v1::ConnectionSlots {
                max_connections: 100,
                reserved: 3,
                used: 12,
                by_state: vec![
                    v1::SlotCount {
                        name: "idle".into(),
                        count: 9,
                    },
                    v1::SlotCount {
                        name: "active".into(),
                        count: 3,
                    },
                ],
                ..Default::default()
            }),
            client_pools: vec![v1::ClientPool {
                pool_name: "orders-web".into(),
                kind: v1::PoolKind::Application.into(),
                reporter: "web@h:1".into(),
                max: 7,
                used: 3,
                wait_time_seconds_sum: 0.6,
                wait_time_count: 2,
                ..Default::default()
            }],
            pgbouncer: Some(v1::PgBouncerSample {
                up: false,
                reason: "connection refused".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render_pools(&r, Output::Table, 0);
        assert!(text.contains("12 used of 100 (3 reserved"), "{text}");
        assert!(text.contains("idle=9 active=3"), "{text}");
        let row = text.lines().find(|l| l.starts_with("orders-web")).unwrap();
        for part in ["application", "web@h:1", "7", "0.3s"] {
            assert!(row.contains(part), "{part:?} in {row:?}");
        }
        assert!(
            text.contains("PgBouncer: down (connection refused)"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_pools(&r, Output::Json, 0)).unwrap();
        assert_eq!(json["client_pools"][0]["kind"], "application");
    }
}

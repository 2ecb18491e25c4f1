//! `/metrics` in Prometheus' text format, on `--http-listen` (see [`crate::http`]).
//!
//! Every figure of the fleet comes from the aggregator's last published view,
//! rendered at scrape time; the collector's own process is read from `/proc`
//! then (see [`process`]). Names follow Prometheus' conventions, and postgres_exporter's
//! (`pg_*`) and pgbouncer_exporter's (`pgbouncer_*`) where they describe the
//! same thing, so existing dashboards and alerts work. Label cardinality is
//! bounded: a series is per server, per database, per state or wait type, per
//! PgBouncer pool, or per client pool; never per session, pid or query text.
//! A server's own labels (dc, cluster, …) are on `pgfleet_server_info` alone,
//! to be joined with `group_left` rather than repeated on every series.

mod load;
mod process;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pgfleet_proto::time::{Micros, now_micros};

use crate::aggregator::{AggregatorHandle, FleetView, ServerView};
use crate::auth::{Access, Tokens};
use crate::rollup::Rollup;
use crate::store::{ReadCounts, ReadFigures};

/// The text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/metrics`, which takes a token of `tokens.metrics` when there are any;
/// with the history store's `reads`, when the collector keeps one.
pub fn routes(
    aggregator: AggregatorHandle,
    reads: Option<std::sync::Arc<ReadCounts>>,
    tokens: Tokens,
) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let metrics = move |headers: axum::http::HeaderMap| {
        let allowed = tokens.check(
            Access::Metrics,
            headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        );
        let view = aggregator.view();
        let reads = reads.as_ref().map(|r| r.figures());
        async move {
            match allowed {
                Ok(()) => {
                    let mut text = render(&view, now_micros());
                    if let Some(reads) = reads {
                        text.push_str(&store_reads(reads));
                    }
                    text.push_str(&process::render());
                    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
                }
                Err(refused) => (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    format!("{refused}\n"),
                )
                    .into_response(),
            }
        }
    };
    axum::Router::new().route("/metrics", get(metrics))
}

/// The history store's reads: under way, started and given up.
fn store_reads(reads: ReadFigures) -> String {
    let mut out = Out {
        text: String::new(),
    };
    out.family(
        "pgfleet_collector_store_reads",
        "gauge",
        "Reads of the history store under way: waiting for a connection, or reading. A SQLite store reads with three connections, and a fleet-wide question over days takes tens of seconds, so while this stays at three or more, pages and commands that read history wait.",
    );
    out.sample("pgfleet_collector_store_reads", &[], reads.running as f64);
    out.family(
        "pgfleet_collector_store_reads_total",
        "counter",
        "Reads of the history store started: the web UI's charts, the JSON API's and the Query API's questions about the past.",
    );
    out.sample(
        "pgfleet_collector_store_reads_total",
        &[],
        reads.started as f64,
    );
    out.family(
        "pgfleet_collector_store_reads_abandoned_total",
        "counter",
        "Reads of the history store whose caller stopped waiting before they ended: a page left or reloaded, a command's --timeout passed. Each stopped there and gave its connection back. Many of them mean questions take longer than people wait: ask about fewer servers or a shorter range, or give the collector more CPU.",
    );
    out.sample(
        "pgfleet_collector_store_reads_abandoned_total",
        &[],
        reads.abandoned as f64,
    );
    out.family(
        "pgfleet_collector_load_hours_passed_total",
        "counter",
        "Server-hours of DB load that questions about one query, user, application or the like passed over unread, as their dictionaries name none of it (the SQLite store).",
    );
    out.sample(
        "pgfleet_collector_load_hours_passed_total",
        &[],
        reads.hours_passed as f64,
    );
    out.family(
        "pgfleet_collector_load_hours_whole_total",
        "counter",
        "Server-hours of DB load that questions by whole hours (a step of whole hours, the top queries of a range) read as one row each, added up by the writer a few minutes after the hour, rather than as their 60 minutes (the SQLite store). Few of them beside the questions asked mean hours are read by the minute: a PostgreSQL store, steps not of whole hours, or hours still being added up.",
    );
    out.sample(
        "pgfleet_collector_load_hours_whole_total",
        &[],
        reads.hours_whole as f64,
    );
    out.family(
        "pgfleet_collector_statement_hours_whole_total",
        "counter",
        "Server-hours of pg_stat_statements statistics that questions over a range (the top queries) read as one row each, added up by the writer with the hour's DB load, rather than as their six 10-minute intervals (the SQLite store).",
    );
    out.sample(
        "pgfleet_collector_statement_hours_whole_total",
        &[],
        reads.statement_hours_whole as f64,
    );
    out.family(
        "pgfleet_collector_store_hours_seconds_total",
        "counter",
        "Time the history store's writer spent adding each server's minutes up into hours (rollups and DB load; the SQLite store), a few minutes after each hour ends, some 50 ms after each commit until the fleet's hour is done. Its rate is the share of a core it takes; commits wait behind it.",
    );
    out.sample(
        "pgfleet_collector_store_hours_seconds_total",
        &[],
        reads.hours_adding_us as f64 / 1e6,
    );
    if let Some(bytes) = reads.bytes {
        out.family(
            "pgfleet_collector_store_bytes",
            "gauge",
            "The bytes the history store takes on disk, read after a commit at most every 10 s (a SQLite store's also as it opens): the SQLite file and its write-ahead log, or the PostgreSQL store's database (of every collector that shares it). It grows by about 1 KB a second for each server whose sessions change much (the frames, kept --retention-frames; README, \"Sizing a collector\"), and levels off once the oldest history is past --retention-frames and --retention-rollups.",
        );
        out.sample("pgfleet_collector_store_bytes", &[], bytes as f64);
    }
    out.family(
        "pgfleet_collector_store_newer_format",
        "gauge",
        "0, or the store format a newer pgfleet-collector sharing this one's PostgreSQL store has raised it to: found as this one opened the store, or later by its writer (at most once a minute, after a commit). This one skips or misreads what that one writes, so upgrade it.",
    );
    out.sample(
        "pgfleet_collector_store_newer_format",
        &[],
        reads.newer_format as f64,
    );
    out.text
}

/// A text-format writer: one family at a time, its samples together.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }
}

/// A label value as the text format writes it.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The whole exposition for `view` at `now`: the servers this collector
/// streams. Those it follows in a shared store are left to the collector
/// that streams them, so that a Prometheus scraping every collector counts
/// each server once.
pub fn render(view: &FleetView, now: Micros) -> String {
    let mut out = Out {
        text: String::with_capacity(64 << 10),
    };
    let servers: Vec<&ServerView> = view
        .servers
        .values()
        .filter(|s| s.via.is_none())
        .map(|s| s.as_ref())
        .collect();
    let rollups: Vec<&Rollup> = servers.iter().map(|s| s.rollup.as_ref()).collect();

    out.family(
        "pgfleet_collector_store_wait_seconds_total",
        "counter",
        "How long the collector waited for room in its history store's queue, applying no batch meanwhile. While it grows, the store (its disk, or the CPU its writer gets) sets the pace of ingest, and the live view falls behind.",
    );
    out.sample(
        "pgfleet_collector_store_wait_seconds_total",
        &[],
        view.store_waited.as_secs_f64(),
    );

    let (names, bytes) = pgfleet_proto::names::held();
    out.family(
        "pgfleet_collector_names_kept",
        "gauge",
        "Names (databases, roles, applications, wait events, backend types) the collector keeps for its life, so that sessions share them without counting references. Bounded: past about 16 MiB (pgfleet_collector_names_kept_bytes), new names are held as query texts are.",
    );
    out.sample("pgfleet_collector_names_kept", &[], names as f64);
    out.family(
        "pgfleet_collector_names_kept_bytes",
        "gauge",
        "The memory the names kept take (about 16 MiB at most, shared by every agent); it is never given back until the collector restarts.",
    );
    out.sample("pgfleet_collector_names_kept_bytes", &[], bytes as f64);

    out.family(
        "pgfleet_server_info",
        "gauge",
        "A server the collector knows, with its labels (dc, cluster, …) and agent; always 1.",
    );
    for s in &servers {
        let mut labels: Vec<(&str, &str)> = vec![("server", &s.server_id), ("agent", &s.agent_id)];
        for (k, v) in s.labels.iter() {
            if !matches!(k.as_str(), "server" | "agent") && !k.starts_with("__") {
                labels.push((k, v));
            }
        }
        out.sample("pgfleet_server_info", &labels, 1.0);
    }

    out.family(
        "pg_up",
        "gauge",
        "1 when the server was sampled within three intervals and is up, as postgres_exporter's pg_up.",
    );
    let statuses: Vec<&str> = servers
        .iter()
        .map(|s| crate::query::status_word(&s.health(now)))
        .collect();
    for (s, status) in servers.iter().zip(&statuses) {
        let up = *status == "up";
        out.sample(
            "pg_up",
            &[("server", &s.server_id)],
            f64::from(u8::from(up)),
        );
    }
    out.family(
        "pgfleet_server_status",
        "gauge",
        "1 for the server's status: up, down (the agent cannot sample it) or stale (nothing heard for three intervals).",
    );
    for (s, status) in servers.iter().zip(&statuses) {
        for candidate in ["up", "down", "stale"] {
            out.sample(
                "pgfleet_server_status",
                &[("server", &s.server_id), ("status", candidate)],
                f64::from(u8::from(candidate == *status)),
            );
        }
    }
    out.family(
        "pgfleet_server_last_seen_timestamp_seconds",
        "gauge",
        "When the collector last received a snapshot of the server.",
    );
    for s in &servers {
        if let Some(seen) = s.last_seen_us {
            out.sample(
                "pgfleet_server_last_seen_timestamp_seconds",
                &[("server", &s.server_id)],
                seen as f64 / 1e6,
            );
        }
    }

    out.family(
        "pg_stat_activity_count",
        "gauge",
        "Client sessions by database and state, as postgres_exporter's pg_stat_activity_count.",
    );
    for (s, r) in servers.iter().zip(&rollups) {
        for ((database, state), n) in &r.by_database_state {
            out.sample(
                "pg_stat_activity_count",
                &[
                    ("server", &s.server_id),
                    ("datname", database),
                    ("state", state),
                ],
                *n as f64,
            );
        }
    }
    out.family(
        "pg_stat_activity_max_tx_duration",
        "gauge",
        "The age of the oldest open transaction per database, in seconds, as postgres_exporter's.",
    );
    for (s, r) in servers.iter().zip(&rollups) {
        for (database, age) in &r.max_xact_age {
            out.sample(
                "pg_stat_activity_max_tx_duration",
                &[("server", &s.server_id), ("datname", database)],
                *age,
            );
        }
    }
    out.family(
        "pgfleet_waiting_sessions",
        "gauge",
        "Active client sessions waiting, by wait_event_type.",
    );
    for (s, r) in servers.iter().zip(&rollups) {
        for (kind, n) in &r.waiting_by_type {
            out.sample(
                "pgfleet_waiting_sessions",
                &[("server", &s.server_id), ("wait_event_type", kind)],
                *n as f64,
            );
        }
    }
    out.family(
        "pgfleet_blocked_sessions",
        "gauge",
        "Client sessions waiting for a lock another session holds.",
    );
    for (s, r) in servers.iter().zip(&rollups) {
        out.sample(
            "pgfleet_blocked_sessions",
            &[("server", &s.server_id)],
            f64::from(r.blocked),
        );
    }

    load::load(&mut out, &servers);
    connection_slots(&mut out, &servers);
    databases(&mut out, &servers);
    pgbouncer(&mut out, &servers);
    client_pools(&mut out, &servers);
    stream(&mut out, &servers);
    out.text
}

fn connection_slots(out: &mut Out, servers: &[&ServerView]) {
    fn slots<'a>(s: &&'a ServerView) -> Option<&'a pgfleet_proto::v1::ConnectionSlots> {
        s.pools.slots.as_ref()
    }
    out.family(
        "pg_settings_max_connections",
        "gauge",
        "The server's max_connections, as postgres_exporter's.",
    );
    for s in servers {
        if let Some(slots) = slots(s) {
            out.sample(
                "pg_settings_max_connections",
                &[("server", &s.server_id)],
                f64::from(slots.max_connections),
            );
        }
    }
    out.family(
        "pgfleet_connection_slots_used",
        "gauge",
        "Client backends holding a connection slot, the agent's own included.",
    );
    for s in servers {
        if let Some(slots) = slots(s) {
            out.sample(
                "pgfleet_connection_slots_used",
                &[("server", &s.server_id)],
                f64::from(slots.used),
            );
        }
    }
    out.family(
        "pgfleet_connection_slots_reserved",
        "gauge",
        "Slots only privileged roles may take (superuser_reserved_connections plus reserved_connections).",
    );
    for s in servers {
        if let Some(slots) = slots(s) {
            out.sample(
                "pgfleet_connection_slots_reserved",
                &[("server", &s.server_id)],
                f64::from(slots.reserved),
            );
        }
    }
}

fn databases(out: &mut Out, servers: &[&ServerView]) {
    type Field = fn(&pgfleet_proto::v1::DatabaseCounters) -> u64;
    let counters: [(&str, &str, Field); 13] = [
        ("xact_commit", "Transactions committed", |c| c.xact_commit),
        ("xact_rollback", "Transactions rolled back", |c| {
            c.xact_rollback
        }),
        ("blks_read", "Disk blocks read", |c| c.blks_read),
        ("blks_hit", "Buffer cache hits", |c| c.blks_hit),
        ("tup_returned", "Rows returned", |c| c.tup_returned),
        ("tup_fetched", "Rows fetched", |c| c.tup_fetched),
        ("tup_inserted", "Rows inserted", |c| c.tup_inserted),
        ("tup_updated", "Rows updated", |c| c.tup_updated),
        ("tup_deleted", "Rows deleted", |c| c.tup_deleted),
        ("temp_files", "Temporary files created", |c| c.temp_files),
        ("temp_bytes", "Bytes written to temporary files", |c| {
            c.temp_bytes
        }),
        ("deadlocks", "Deadlocks detected", |c| c.deadlocks),
        (
            "conflicts",
            "Queries cancelled by recovery conflicts",
            |c| c.conflicts,
        ),
    ];
    for (column, help, field) in counters {
        let name = format!("pg_stat_database_{column}");
        out.family(
            &name,
            "counter",
            &format!("{help}, summed since the collector first saw the database (pg_stat_database.{column})."),
        );
        for s in servers {
            for (database, total) in s.databases.iter() {
                out.sample(
                    &name,
                    &[("server", &s.server_id), ("datname", database)],
                    field(&total.totals) as f64,
                );
            }
        }
    }
}

fn pgbouncer(out: &mut Out, servers: &[&ServerView]) {
    type Field = fn(&pgfleet_proto::v1::PgBouncerPool) -> f64;
    let gauges: [(&str, &str, Field); 8] = [
        (
            "client_active_connections",
            "Clients paired with a server connection, or idle (cl_active)",
            |p| f64::from(p.client_active_connections),
        ),
        (
            "client_waiting_connections",
            "Clients waiting for a server connection (cl_waiting)",
            |p| f64::from(p.client_waiting_connections),
        ),
        (
            "server_active_connections",
            "Server connections in use (sv_active)",
            |p| f64::from(p.server_active_connections),
        ),
        (
            "server_idle_connections",
            "Server connections idle (sv_idle)",
            |p| f64::from(p.server_idle_connections),
        ),
        (
            "server_used_connections",
            "Server connections to be checked (sv_used)",
            |p| f64::from(p.server_used_connections),
        ),
        (
            "server_testing_connections",
            "Server connections being tested (sv_tested)",
            |p| f64::from(p.server_testing_connections),
        ),
        (
            "server_login_connections",
            "Server connections logging in (sv_login)",
            |p| f64::from(p.server_login_connections),
        ),
        (
            "client_maxwait_seconds",
            "How long the oldest waiting client has waited (maxwait)",
            |p| p.client_maxwait_seconds,
        ),
    ];
    out.family(
        "pgbouncer_up",
        "gauge",
        "1 when the agent could read the PgBouncer in front of the server.",
    );
    for s in servers {
        if let Some(b) = &s.pools.pgbouncer {
            out.sample(
                "pgbouncer_up",
                &[("server", &s.server_id)],
                f64::from(u8::from(b.up)),
            );
        }
    }
    for (column, help, field) in gauges {
        let name = format!("pgbouncer_pools_{column}");
        out.family(&name, "gauge", &format!("{help}, as pgbouncer_exporter's."));
        for s in servers {
            for p in s.pools.pgbouncer.iter().flat_map(|b| &b.pools) {
                out.sample(
                    &name,
                    &[
                        ("server", &s.server_id),
                        ("database", &p.database),
                        ("user", &p.user),
                    ],
                    field(p),
                );
            }
        }
    }
    type StatField = fn(&pgfleet_proto::v1::PgBouncerStats) -> f64;
    let stats: [(&str, &str, StatField); 4] = [
        (
            "queries_pooled_total",
            "Queries pooled (total_query_count)",
            |s| s.queries_pooled_total as f64,
        ),
        (
            "sql_transactions_pooled_total",
            "Transactions pooled (total_xact_count)",
            |s| s.sql_transactions_pooled_total as f64,
        ),
        (
            "received_bytes_total",
            "Bytes received from clients (total_received)",
            |s| s.received_bytes_total as f64,
        ),
        (
            "sent_bytes_total",
            "Bytes sent to clients (total_sent)",
            |s| s.sent_bytes_total as f64,
        ),
    ];
    for (column, help, field) in stats {
        let name = format!("pgbouncer_stats_{column}");
        out.family(
            &name,
            "counter",
            &format!("{help}, as pgbouncer_exporter's."),
        );
        for s in servers {
            for st in s.pools.pgbouncer.iter().flat_map(|b| &b.stats) {
                out.sample(
                    &name,
                    &[("server", &s.server_id), ("database", &st.database)],
                    field(st),
                );
            }
        }
    }
}

fn client_pools(out: &mut Out, servers: &[&ServerView]) {
    // Summed per pool name and kind: many instances of an application may
    // report a pool of the same name, and their instance ids would make the
    // cardinality unbounded.
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut sums: BTreeMap<Key<'_>, [f64; 5]> = BTreeMap::new();
    for s in servers {
        for p in &s.pools.client_pools {
            let kind = match p.kind() {
                pgfleet_proto::v1::PoolKind::Agent => "agent",
                _ => "application",
            };
            let e = sums
                .entry((s.server_id.as_str(), kind, p.pool_name.as_str()))
                .or_default();
            e[0] += f64::from(p.used);
            e[1] += f64::from(p.idle);
            e[2] += f64::from(p.max);
            e[3] += f64::from(p.pending_requests);
            e[4] += p.timeouts as f64;
        }
    }
    let families: [(&str, &str, &str, usize); 4] = [
        (
            "db_client_connection_max",
            "gauge",
            "The most connections the pools may open (db.client.connection.max).",
            2,
        ),
        (
            "db_client_connection_pending_requests",
            "gauge",
            "Callers waiting for a connection (db.client.connection.pending_requests).",
            3,
        ),
        (
            "db_client_connection_timeouts_total",
            "counter",
            "Waits for a connection that timed out (db.client.connection.timeouts).",
            4,
        ),
        (
            "db_client_connection_count",
            "gauge",
            "Connections open, by state: used or idle (db.client.connection.count).",
            0,
        ),
    ];
    for (name, kind, help, i) in families {
        out.family(name, kind, help);
        for ((server, pool_kind, pool), v) in &sums {
            let base = [
                ("server", *server),
                ("kind", *pool_kind),
                ("pool_name", *pool),
            ];
            if i == 0 {
                for (state, value) in [("used", v[0]), ("idle", v[1])] {
                    let mut labels = base.to_vec();
                    labels.push(("state", state));
                    out.sample(name, &labels, value);
                }
            } else {
                out.sample(name, &base, v[i]);
            }
        }
    }
}

fn stream(out: &mut Out, servers: &[&ServerView]) {
    type Field = fn(&ServerView) -> Option<f64>;
    let families: [(&str, &str, &str, Field); 8] = [
        (
            "pgfleet_agent_sample_duration_seconds",
            "gauge",
            "How long the agent's last sample of the server took.",
            |s| s.agent.map(|a| f64::from(a.sample_duration_us) / 1e6),
        ),
        (
            "pgfleet_agent_skipped_ticks_total",
            "counter",
            "Ticks the agent skipped because a sample overran the interval, since it started.",
            |s| s.agent.map(|a| a.skipped_ticks_total as f64),
        ),
        (
            "pgfleet_agent_spool_dropped_batches_total",
            "counter",
            "Batches the agent's spool dropped to stay within its bound, since the agent started.",
            |s| s.agent.map(|a| a.spool_dropped_batches_total as f64),
        ),
        (
            "pgfleet_agent_oversized_snapshots_dropped_total",
            "counter",
            "Snapshots the agent left out because one alone would not fit in a message under the collector's limit, since the agent started.",
            |s| s.agent.map(|a| a.oversized_snapshots_dropped_total as f64),
        ),
        (
            "pgfleet_agent_spool_disk_failed_batches_total",
            "counter",
            "Batches the agent held in memory because the disk under its spool could not take them (full, or failing), since the agent started.",
            |s| s.agent.map(|a| a.spool_disk_failed_batches_total as f64),
        ),
        (
            "pgfleet_stream_applied_batches_total",
            "counter",
            "Batches of the server's agent this collector applied.",
            |s| Some(s.stream.applied_batches as f64),
        ),
        (
            "pgfleet_stream_missing_batches_total",
            "counter",
            "Sequence numbers of the server's agent this collector never received.",
            |s| Some(s.stream.missing_batches as f64),
        ),
        (
            "pgfleet_stream_refused_deltas_total",
            "counter",
            "Deltas refused for a base this collector did not hold.",
            |s| Some(s.stream.refused_deltas as f64),
        ),
    ];
    for (name, kind, help, field) in families {
        out.family(name, kind, help);
        for s in servers {
            if let Some(v) = field(s) {
                out.sample(name, &[("server", &s.server_id)], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_plain() {
        let mut out = Out {
            text: String::new(),
        };
        out.sample("m", &[("a", "x\"y\\z\nw")], 3.0);
        out.sample("m", &[], 0.25);
        assert_eq!(out.text, "m{a=\"x\\\"y\\\\z\\nw\"} 3\nm 0.25\n");
    }

    #[test]
    fn the_time_waited_for_the_store_is_a_counter_in_seconds() {
        let view = FleetView {
            store_waited: std::time::Duration::from_millis(1500),
            ..FleetView::default()
        };
        let text = render(&view, 0);
        assert!(text.contains("# TYPE pgfleet_collector_store_wait_seconds_total counter"));
        assert!(
            text.lines()
                .any(|l| l == "pgfleet_collector_store_wait_seconds_total 1.5"),
            "{text}"
        );
    }

    #[test]
    fn the_store_s_reads_are_a_gauge_and_counters() {
        let text = store_reads(ReadFigures {
            started: 7,
            running: 2,
            abandoned: 3,
            hours_passed: 40,
            hours_whole: 24,
            statement_hours_whole: 12,
            hours_adding_us: 1_500_000,
            bytes: Some(123_456_789),
            newer_format: 2,
        });
        for line in [
            "# TYPE pgfleet_collector_store_reads gauge",
            "pgfleet_collector_store_reads 2",
            "# TYPE pgfleet_collector_store_reads_total counter",
            "pgfleet_collector_store_reads_total 7",
            "# TYPE pgfleet_collector_store_reads_abandoned_total counter",
            "pgfleet_collector_store_reads_abandoned_total 3",
            "# TYPE pgfleet_collector_load_hours_passed_total counter",
            "pgfleet_collector_load_hours_passed_total 40",
            "# TYPE pgfleet_collector_load_hours_whole_total counter",
            "pgfleet_collector_load_hours_whole_total 24",
            "# TYPE pgfleet_collector_statement_hours_whole_total counter",
            "pgfleet_collector_statement_hours_whole_total 12",
            "# TYPE pgfleet_collector_store_hours_seconds_total counter",
            "pgfleet_collector_store_hours_seconds_total 1.5",
            "# TYPE pgfleet_collector_store_bytes gauge",
            "pgfleet_collector_store_bytes 123456789",
            "# TYPE pgfleet_collector_store_newer_format gauge",
            "pgfleet_collector_store_newer_format 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        // A store that does not say its size has no such line.
        let text = store_reads(ReadFigures::default());
        assert!(!text.contains("pgfleet_collector_store_bytes"), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "pgfleet_collector_store_newer_format 0"),
            "{text}"
        );
    }

    #[test]
    fn the_names_kept_are_counted() {
        let name = pgfleet_proto::model::ArcStr::from("metrics-test-name");
        pgfleet_proto::names::kept(&name);
        let text = render(&FleetView::default(), 0);
        let value = |metric: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{metric} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{metric} in {text}"))
        };
        assert!(value("pgfleet_collector_names_kept") >= 1.0);
        assert!(value("pgfleet_collector_names_kept_bytes") >= "metrics-test-name".len() as f64);
    }

    #[test]
    fn an_empty_fleet_renders_families_without_samples() {
        let text = render(&FleetView::default(), 0);
        assert!(text.contains("# TYPE pg_up gauge"));
        assert!(!text.lines().any(|l| l.starts_with("pg_up")));
    }
}

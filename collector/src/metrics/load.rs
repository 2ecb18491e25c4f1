//! The DB load families: load by wait type as of the last 10 s of samples,
//! and client sessions started and ended.

use crate::aggregator::ServerView;

use super::Out;

pub(super) fn load(out: &mut Out, servers: &[&ServerView]) {
    out.family(
        "pgfleet_db_load",
        "gauge",
        "DB load: average active client sessions over the last 10 s of samples, by wait_event_type (CPU when not waiting).",
    );
    for s in servers {
        for (kind, v) in &s.load.by_wait_type {
            out.sample(
                "pgfleet_db_load",
                &[("server", &s.server_id), ("wait_event_type", kind)],
                *v,
            );
        }
    }
    type Count = fn(&ServerView) -> u64;
    let churn: [(&str, &str, Count); 2] = [
        (
            "pgfleet_sessions_started_total",
            "Client sessions that started, as the collector saw them since it started (connection churn).",
            |s| s.load.sessions_started_total,
        ),
        (
            "pgfleet_sessions_ended_total",
            "Client sessions that ended, as the collector saw them since it started (connection churn).",
            |s| s.load.sessions_ended_total,
        ),
    ];
    for (name, help, count) in churn {
        out.family(name, "counter", help);
        for s in servers {
            out.sample(name, &[("server", &s.server_id)], count(s) as f64);
        }
    }
}

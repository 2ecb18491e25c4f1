//! Stores of DB load written directly, for tests of questions over hours
//! and days that a live fleet would take that long to give.

use std::path::Path;
use std::sync::Arc;

use pgfleet_collector::load::Counter;
use pgfleet_collector::load::count::Closed;
use pgfleet_collector::load::statements::{Read, Totals};
use pgfleet_collector::store::{Op, Retention, Store};
use pgfleet_proto::model::{ArcStr, Session, SessionState};
use pgfleet_proto::time::Micros;

/// An hour.
pub const HOUR_US: Micros = 3_600_000_000;

/// A server's DB load over the `hours` hours before `end` (a minute's
/// start), as its counter closes it: ten sessions always active, each its
/// own user and client host, all on the query `query(hour)` (the hour's
/// index from the first, 0), with a read of pg_stat_statements each minute
/// in which it was called ten times.
pub fn load_of(end: Micros, hours: i64, query: impl Fn(i64) -> u64) -> Vec<Closed> {
    let start = end - hours * HOUR_US;
    let (text, database, web) = (
        ArcStr::from("SELECT * FROM orders WHERE id = $1"),
        ArcStr::from("orders"),
        ArcStr::from("web"),
    );
    let (backend, io, read, cpu) = (
        ArcStr::from("client backend"),
        ArcStr::from("IO"),
        ArcStr::from("DataFileRead"),
        ArcStr::from(""),
    );
    let mut sessions: Vec<Arc<Session>> = (0..10)
        .map(|i| {
            Arc::new(Session {
                pid: 100 + i,
                backend_start_us: start - 1_000_000,
                database: database.clone(),
                user: format!("user-{i}").into(),
                application_name: web.clone(),
                client: format!("10.0.0.{i}:5000").into(),
                state: SessionState::Active,
                query_start_us: Some(start),
                wait_event_type: if i % 2 == 0 { io.clone() } else { cpu.clone() },
                wait_event: if i % 2 == 0 {
                    read.clone()
                } else {
                    cpu.clone()
                },
                query: text.clone(),
                backend_type: backend.clone(),
                ..Default::default()
            })
        })
        .collect();
    let (mut counter, mut closed) = (Counter::default(), Vec::new());
    let mut now = Arc::new(Vec::new());
    let mut fingerprint = None;
    for s in 0..=hours * 3600 {
        let at = start + s * 1_000_000;
        let q = query((s / 3600).min(hours - 1));
        if fingerprint != Some(q) {
            fingerprint = Some(q);
            for session in &mut sessions {
                Arc::make_mut(session).fingerprint = q;
            }
            now = Arc::new(sessions.clone());
        }
        counter.sample(at, 1_000_000, &now, &mut closed, &mut |_, _| {});
        if counter.unfinished() {
            counter.finish(&mut closed);
        }
        if s % 60 == 30 {
            let calls = Totals {
                calls: 10,
                time_ms: 5.0,
                ..Totals::default()
            };
            let read = Read {
                since_us: at - 60_000_000,
                by_query: vec![(q, calls)],
            };
            counter.statements(at, &read, &mut closed);
        }
    }
    closed
}

/// Writes each of `servers`, `(server_id, its load)`, into the SQLite store
/// under `dir`, through its writer.
pub async fn write_load(dir: &Path, servers: &[(String, &[Closed])]) {
    let (store, _) = Store::open_sqlite(dir, Retention::default()).unwrap();
    for (id, closed) in servers {
        store
            .write(Op::Server {
                server_id: id.clone(),
                agent_id: format!("agent-{id}"),
                labels: Default::default(),
                interval_ms: 1000,
            })
            .await;
        for op in pgfleet_collector::aggregator::load_writes(id, closed.to_vec()) {
            store.write(op).await;
        }
    }
    store.flush().await;
}

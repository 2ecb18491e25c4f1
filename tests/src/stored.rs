//! Stores of DB load written directly, for tests of questions over hours
//! and days that a live fleet would take that long to give.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::Path;
use std::sync::Arc;

use pgfleet_collector::load::Counter;
use pgfleet_collector::load::count::Closed;
use pgfleet_collector::load::statements::{Read, Totals};
use pgfleet_collector::rollup::Minute;
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
/// under `dir` (see [`write_fleet`]), and commits until its writer has
/// added up the hours that ended by then (see [`hours_added_up`]).
pub async fn write_load(dir: &Path, servers: &[(String, &[Closed])]) {
    let (store, _) = Store::open_sqlite(
        dir,
        Retention::default(),
        pgfleet_collector::store::DictTraining::default(),
    )
    .unwrap();
    let servers: Vec<_> = servers
        .iter()
        .map(|(id, closed)| (id.clone(), BTreeMap::new(), *closed))
        .collect();
    let minutes = write_fleet(&store, &servers).await;
    hours_added_up(&store, minutes).await;
}

/// When a piece of a server's load closed, and whether it is a minute with
/// samples (one without stands for its hour's totals alone).
fn closed_at(c: &Closed) -> (Micros, bool) {
    let last = |h: &pgfleet_collector::load::hours::HourTotals| {
        h.minutes.last().map_or(h.start, |m| m.start)
    };
    match c {
        Closed::Minute(m, _) if m.coarse.samples > 0 => (m.coarse.start, true),
        Closed::Packed(m, _) if m.samples() > 0 => (m.start(), true),
        Closed::Minute(_, h) | Closed::Packed(_, h) => (last(h), false),
        Closed::Statements(at, _) => (*at, false),
    }
}

/// Writes each of `servers`, `(server_id, its labels, its load)`, through
/// `store`'s writer in the order of time, as a fleet's agents send it (a
/// server's day written after another's would come late into the hours
/// the writer has added up), and each minute of load with a rollup of that
/// minute, as the aggregator writes both. The starts of the first and the
/// last minute written (the first after the last when none was).
pub async fn write_fleet(
    store: &Store,
    servers: &[(String, BTreeMap<String, String>, &[Closed])],
) -> (Micros, Micros) {
    for (id, labels, _) in servers {
        store
            .write(Op::Server {
                server_id: id.clone(),
                agent_id: format!("agent-{id}"),
                labels: labels.clone(),
                interval_ms: 1000,
            })
            .await;
    }
    let mut next: BinaryHeap<Reverse<(Micros, usize, usize)>> = servers
        .iter()
        .enumerate()
        .filter_map(|(s, (_, _, closed))| Some(Reverse((closed_at(closed.first()?).0, s, 0))))
        .collect();
    let (mut first, mut last) = (Micros::MAX, Micros::MIN);
    while let Some(Reverse((at, s, k))) = next.pop() {
        let (id, _, closed) = &servers[s];
        let c = closed[k].clone();
        if closed_at(&c).1 {
            first = first.min(at);
            last = last.max(at);
            let minute = Minute {
                start: at,
                samples: 60,
                covered_us: 60_000_000,
                ..Minute::default()
            };
            store
                .write(Op::Minute {
                    server_id: id.clone(),
                    minute,
                })
                .await;
        }
        for op in pgfleet_collector::aggregator::load_writes(id, vec![c]) {
            store.write(op).await;
        }
        if let Some(c) = closed.get(k + 1) {
            next.push(Reverse((closed_at(c).0, s, k + 1)));
        }
    }
    store.flush().await;
    (first, last)
}

/// Commits until `store`'s writer has added up each whole hour that ended
/// two minutes before `last`, of the minutes written `(first, last)`
/// (their starts): it builds a share of an hour after each commit. At once
/// when none is due.
pub async fn hours_added_up(store: &Store, (first, last): (Micros, Micros)) {
    if first > last {
        return;
    }
    let due = last - 2 * 60_000_000;
    let due = due - due.rem_euclid(HOUR_US);
    if due <= first - first.rem_euclid(HOUR_US) {
        return;
    }
    let since = std::time::Instant::now();
    loop {
        store.flush().await;
        let built = store.hours_built().await.expect("a read of the store");
        if built.is_some_and(|(_, to)| to >= due) {
            return;
        }
        assert!(
            since.elapsed() < std::time::Duration::from_secs(900),
            "the writer adds up the hours to {due}: {built:?} so far"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

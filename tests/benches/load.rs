//! `cargo bench -p pgfleet-tests --bench load`: what keeping DB load costs
//! in storage, and how fast `QueryLoad` answers. `bench/load.py` runs it and
//! writes BENCHMARKS.md.
//!
//! 1. **Storage.** One server of 100 sessions, about 10 changing a second
//!    (the load generator's mix of waits, queries, users, applications and
//!    client hosts), counted for a day of 1 Hz samples into its buckets,
//!    with a pg_stat_statements read every minute of `STATEMENTS` statements.
//!    Everything is written to an empty SQLite store; the bytes it grew by
//!    are the storage per server per day. Beside it, what each of the day's
//!    minutes costs at a minute's end: building and packing it in the
//!    aggregator, and the writer's re-indexing it into the server's
//!    dictionary.
//! 2. **QueryLoad.** A store of `SERVERS` servers (five dcs) holding a day of
//!    1-minute buckets and an hour of 10-second buckets each, as the day
//!    above made them; a collector opened on it answers `QueryLoad` over
//!    gRPC: one server over an hour (10 s and 1 min steps), and the whole
//!    fleet over 24 h grouped by dc.
//! 3. **A fleet's day of minutes** (only with `PGFLEET_BENCH_FLEET_DAY=N`,
//!    `bench/load_day.py`, in place of 2): N servers, each with the busy
//!    server's whole day of minutes, and the fleet-wide questions that read
//!    every one of them (load by wait and by query, the top queries,
//!    connection churn), each timed over gRPC, with the process's peak
//!    resident memory while it answers (its high-water mark, reset before
//!    each question) over its resident memory before it.
//!
//! Prints one JSON object.

#[path = "../../agent/benches/support/wire_sim.rs"]
mod wire_sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfleet_collector::aggregator::load_writes;
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::load::count::Closed;
use pgfleet_collector::load::dictionaries::Dictionaries;
use pgfleet_collector::load::statements::{Read, Totals};
use pgfleet_collector::load::{COARSE_US, Class, Counter, MinuteLoad};
use pgfleet_collector::store::{Retention, Store};
use pgfleet_proto::model::{ArcStr, Session, SessionState};
use pgfleet_proto::time::{duration, now_micros, timestamp};
use pgfleet_proto::v1;

const DAY_S: i64 = 86_400;
const STATEMENTS: usize = 100;
const DCS: &[&str] = &["eu1", "eu2", "us1", "us2", "ap1"];

/// A busy OLTP server as this bench models it: 100 sessions of 6
/// applications on 12 client hosts, 3 users, 2 databases; each second an
/// idle session starts one of 40 statements (some far more often than
/// others) with a chance of 1 in 40, and an active one ends it with a
/// chance of 1 in 2: a DB load of about 5. Waits: CPU 60%, IO 20%, Lock 8%,
/// LWLock 7%, WAL sync 5%. Two sessions idle in a transaction; one session
/// reconnects every 5 s.
///
/// Its sessions share their names, waits and statements' texts, as the
/// collector's sessions do (names kept once, a stream's strings resolved
/// once): the load counter finds a tuple's strings by address.
struct Realistic {
    rng: wire_sim::Rng,
    sessions: Vec<Arc<Session>>,
    next_pid: i32,
    texts: Texts,
}

/// The strings [`Realistic`]'s sessions share.
struct Texts {
    databases: [ArcStr; 2],
    users: [ArcStr; 3],
    applications: [ArcStr; 6],
    waits: [(ArcStr, ArcStr); 6],
    client_backend: ArcStr,
    statements: Vec<ArcStr>,
}

impl Texts {
    fn new() -> Texts {
        let pair = |t: &str, e: &str| (ArcStr::from(t), ArcStr::from(e));
        Texts {
            databases: ["orders", "billing"].map(ArcStr::from),
            users: ["app", "reporting", "batch"].map(ArcStr::from),
            applications: ["web", "api", "checkout", "worker", "cron", "admin"].map(ArcStr::from),
            waits: [
                pair("Client", "ClientRead"),
                pair("", ""),
                pair("IO", "DataFileRead"),
                pair("Lock", "transactionid"),
                pair("LWLock", "BufferContent"),
                pair("IO", "WALSync"),
            ],
            client_backend: ArcStr::from("client backend"),
            statements: (0..STATEMENT_TEXTS)
                .map(|k| format!("SELECT statement_{k} FROM t WHERE id = $1").into())
                .collect(),
        }
    }
}

const STATEMENT_TEXTS: usize = 40;

impl Realistic {
    fn new(t0: i64) -> Realistic {
        let mut r = Realistic {
            rng: wire_sim::Rng(0x5eed_10ad),
            sessions: Vec::new(),
            next_pid: 1000,
            texts: Texts::new(),
        };
        for i in 0..100 {
            let mut s = r.connect(t0 - 3_600_000_000);
            if i < 2 {
                let s = Arc::make_mut(&mut s);
                s.state = SessionState::IdleInTransaction;
                s.xact_start_us = Some(t0 - 1_000_000);
            }
            r.sessions.push(s);
        }
        r
    }

    fn connect(&mut self, at: i64) -> Arc<Session> {
        let i = self.rng.below(1 << 20);
        self.next_pid += 1;
        let t = &self.texts;
        Arc::new(Session {
            pid: self.next_pid,
            backend_start_us: at,
            database: t.databases[i % 2].clone(),
            user: t.users[i % 3].clone(),
            application_name: t.applications[i % 6].clone(),
            client: format!("10.1.0.{}:{}", 10 + i % 12, 40_000 + i % 20_000).into(),
            state: SessionState::Idle,
            wait_event_type: t.waits[0].0.clone(),
            wait_event: t.waits[0].1.clone(),
            backend_type: t.client_backend.clone(),
            ..Default::default()
        })
    }

    fn step(&mut self, at: i64, second: i64) {
        if second % 5 == 0 {
            let i = 2 + self.rng.below(98);
            self.sessions[i] = self.connect(at);
        }
        for i in 0..self.sessions.len() {
            let s = &self.sessions[i];
            match s.state {
                SessionState::Idle if self.rng.below(40) == 0 => {
                    // Zipf-like: statement k with weight 1/(k+1).
                    let k = (0..STATEMENT_TEXTS)
                        .find(|k| self.rng.below(k + 2) == 0)
                        .unwrap_or(STATEMENT_TEXTS - 1);
                    let w = match self.rng.below(100) {
                        0..60 => 1,
                        60..80 => 2,
                        80..88 => 3,
                        88..95 => 4,
                        _ => 5,
                    };
                    let (wait_type, wait_event) = self.texts.waits[w].clone();
                    let s = Arc::make_mut(&mut self.sessions[i]);
                    s.state = SessionState::Active;
                    s.query_start_us = Some(at);
                    s.wait_event_type = wait_type;
                    s.wait_event = wait_event;
                    s.fingerprint = fingerprint_of(k as u64, 0);
                    s.query = self.texts.statements[k].clone();
                }
                SessionState::Active if self.rng.below(2) == 0 => {
                    let s = Arc::make_mut(&mut self.sessions[i]);
                    s.state = SessionState::Idle;
                    (s.wait_event_type, s.wait_event) = self.texts.waits[0].clone();
                }
                _ => {}
            }
        }
    }
}

/// Which server a day is of.
#[derive(Clone, Copy)]
enum Mix {
    /// See [`Realistic`].
    Realistic,
    /// The load generator's (`wire_sim`): 100 sessions, 10 changing a
    /// second, half of them active (a load of about 50), thousands of client
    /// hosts: a worst case for the size of a bucket.
    Heavy,
}

/// A day of one server, ending at `end` (a minute boundary): what its
/// counter closed (minutes with their hours, as the aggregator gets them,
/// and statement intervals from a read each minute), the CPU time counting
/// took per sample, and the time building and packing took per minute that
/// ended (the aggregator's part of a minute's end).
fn one_day(end: i64, mix: Mix) -> (Vec<Closed>, f64, f64, f64) {
    let start = end - DAY_S * 1_000_000;
    let mut heavy = wire_sim::Sim::with(100, 10, 0, 0x10ad, start);
    let mut realistic = Realistic::new(start);
    let mut counter = Counter::default();
    let mut closed = Vec::new();
    let (mut spent, mut finished, mut ended) = (Duration::ZERO, Duration::ZERO, 0);
    // The tuples each open minute held at its end, when its map is largest.
    let (mut open_tuples, mut minutes) = (0, 0);
    for s in 0..=DAY_S {
        let at = start + s * 1_000_000;
        let mut now = match mix {
            Mix::Heavy => {
                heavy.step(at);
                heavy.sessions.clone()
            }
            Mix::Realistic => {
                realistic.step(at, s);
                realistic.sessions.clone()
            }
        };
        now.sort_by_key(|x| x.key());
        let now = Arc::new(now);
        let t = Instant::now();
        counter.sample(at, 1_000_000, &now, &mut closed, &mut |_, _| {});
        spent += t.elapsed();
        if s % 60 == 59 {
            open_tuples += counter.open_tuples();
            minutes += 1;
        }
        if counter.unfinished() {
            let t = Instant::now();
            counter.finish(&mut closed);
            finished += t.elapsed();
            ended += 1;
        }
        if s % 60 == 30 {
            counter.statements(at, &statements(s as u64 / 60), &mut closed);
        }
    }
    (
        closed,
        spent.as_secs_f64() * 1e6 / DAY_S as f64,
        finished.as_secs_f64() * 1e6 / f64::from(ended.max(1)),
        open_tuples as f64 / f64::from(minutes.max(1)),
    )
}

/// The minutes in `closed`, packed ones unpacked.
fn minutes(closed: &[Closed]) -> Vec<MinuteLoad> {
    closed.iter().filter_map(Closed::minute).collect()
}

/// A read of `STATEMENTS` statements' increments.
fn statements(i: u64) -> Read {
    Read {
        since_us: 1,
        by_query: (0..STATEMENTS as u64)
            .map(|q| {
                let calls = 1 + (q * 7919 + i * 31) % 5000;
                (
                    0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(q + 1),
                    Totals {
                        calls,
                        time_ms: calls as f64 * 0.37,
                        rows: calls * 3,
                        shared_blks_hit: calls * 12,
                        shared_blks_read: calls / 10,
                        shared_blks_dirtied: calls / 50,
                        shared_blks_written: calls / 200,
                        wal_bytes: calls * 120,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    }
}

fn file_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("pgfleet.sqlite")
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checkpoints the WAL into the file, so its size is what is kept.
fn checkpoint(dir: &std::path::Path) {
    let db = rusqlite::Connection::open(dir.join("pgfleet.sqlite")).unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

fn percentile(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// What one server-day takes in an empty store: load alone, and load with
/// statement statistics, as the collector writes them.
async fn storage(day: &[Closed]) -> (u64, u64, serde_json::Value) {
    let dir = tempdir("pgfleet-bench-load-day");
    let (store, _) = Store::open_sqlite(
        &dir,
        Retention::default(),
        pgfleet_collector::store::DictTraining::default(),
    )
    .unwrap();
    store.flush().await;
    checkpoint(&dir);
    let empty = file_bytes(&dir);
    let (load, statements): (Vec<Closed>, Vec<Closed>) = day
        .iter()
        .cloned()
        .partition(|c| matches!(c, Closed::Minute(..) | Closed::Packed(..)));
    for op in load_writes("orders-db-1", load) {
        store.write(op).await;
    }
    store.flush().await;
    checkpoint(&dir);
    let load = file_bytes(&dir) - empty;
    for op in load_writes("orders-db-1", statements) {
        store.write(op).await;
    }
    store.flush().await;
    checkpoint(&dir);
    let both = file_bytes(&dir) - empty;
    drop(store);
    let tables = table_bytes(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    (load, both, tables)
}

/// Each load table's rows and the bytes of their bodies, as stored.
fn table_bytes(dir: &std::path::Path) -> serde_json::Value {
    let db = rusqlite::Connection::open(dir.join("pgfleet.sqlite")).unwrap();
    let mut out = serde_json::Map::new();
    for table in ["load", "load_hours", "statements", "load_keys", "queries"] {
        let body = if table == "queries" { "text" } else { "body" };
        let (rows, bytes): (i64, i64) = db
            .query_row(
                &format!("SELECT count(*), coalesce(sum(length({body})), 0) FROM {table}"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        out.insert(
            table.into(),
            serde_json::json!({"rows": rows, "body_bytes": bytes}),
        );
    }
    out.into()
}

/// A day's figures, as JSON.
async fn day_figures(
    day: &[Closed],
    count_us: f64,
    finish_us: f64,
    open_tuples: f64,
) -> serde_json::Value {
    let ms = minutes(day);
    let mean =
        |f: &dyn Fn(&MinuteLoad) -> f64| ms.iter().map(f).sum::<f64>() / ms.len().max(1) as f64;
    let fine_tuples = |m: &MinuteLoad| {
        m.fine.iter().map(|b| b.tuples.len()).sum::<usize>() as f64 / m.fine.len().max(1) as f64
    };
    let (load, both, tables) = storage(day).await;
    // A minute's end, per server: the aggregator builds and packs the
    // minute that ended (timed as the day was counted), and the store's
    // writer re-indexes it into the server's dictionary and compresses it.
    let mut keys = Dictionaries::default();
    let mut encode = Duration::ZERO;
    let packed = day.iter().filter_map(|c| match c {
        Closed::Packed(m, _) => Some(m),
        _ => None,
    });
    for m in packed {
        let t = Instant::now();
        let row = keys.minute("orders-db-1", m);
        encode += t.elapsed();
        assert!(row.is_some(), "a packed minute re-indexes");
    }
    let per_minute = |d: Duration| d.as_secs_f64() * 1e6 / ms.len().max(1) as f64;
    serde_json::json!({
        "finish_us_per_minute": finish_us,
        "store_us_per_minute": per_minute(encode),
        "count_us_per_sample": count_us,
        "open_tuples_at_minute_end": open_tuples,
        "db_load": mean(&|m| m.coarse.average(Class::Active)),
        "tuples_per_fine_bucket": mean(&fine_tuples),
        "tuples_per_minute": mean(&|m| m.coarse.tuples.len() as f64),
        "stored_minute_bytes": tables["load"]["body_bytes"].as_f64().unwrap_or(0.0)
            / tables["load"]["rows"].as_f64().unwrap_or(1.0).max(1.0),
        "stored_statements_bytes": tables["statements"]["body_bytes"].as_f64().unwrap_or(0.0)
            / tables["statements"]["rows"].as_f64().unwrap_or(1.0).max(1.0),
        "fingerprints_per_minute": mean(&|m| {
            let mut q: Vec<u64> = m.coarse.tuples.iter().map(|(t, _)| t.query).collect();
            q.sort_unstable();
            q.dedup();
            q.len() as f64
        }),
        "load_bytes_per_server_day": load,
        "load_and_statements_bytes_per_server_day": both,
        "tables": tables,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = pgfleet_tests::env_usize("PGFLEET_BENCH_SERVERS", 1000);
    let calls = pgfleet_tests::env_usize("PGFLEET_BENCH_CALLS", 200);
    let now = now_micros();
    let end = now - now.rem_euclid(COARSE_US);

    // 1. One server-day of each mix in an empty store.
    let (heavy, heavy_us, heavy_finish_us, heavy_open) = one_day(end, Mix::Heavy);
    let heavy = day_figures(&heavy, heavy_us, heavy_finish_us, heavy_open).await;
    let (day, count_us, finish_us, open_tuples) = one_day(end, Mix::Realistic);
    let realistic = day_figures(&day, count_us, finish_us, open_tuples).await;
    let day: Vec<Closed> = day.into_iter().map(Closed::unpacked).collect();
    if std::env::var_os("PGFLEET_BENCH_STORAGE_ONLY").is_some() {
        println!(
            "{}",
            serde_json::json!({"realistic": realistic, "heavy": heavy})
        );
        return;
    }

    if let Some(n) = std::env::var_os("PGFLEET_BENCH_FLEET_DAY") {
        let n = n.to_string_lossy().parse().unwrap_or(servers);
        let apps = pgfleet_tests::env_usize("PGFLEET_BENCH_FLEET_APPS", 0);
        fleet_day(n, apps, end, day).await;
        return;
    }

    // 2. A fleet's day, and a collector on it: every server's hours of the
    // day, and its minutes of the last hour (what these questions read; the
    // third part keeps the whole day).
    let dir = tempdir("pgfleet-bench-load-fleet");
    let last_hour = end - 3_600 * 1_000_000;
    let kept: Vec<Closed> = day
        .iter()
        .filter_map(|c| match c {
            Closed::Minute(m, h) if m.coarse.start >= last_hour => Some(c.clone()),
            Closed::Minute(_, h)
                if h.minutes.len() == 60
                    || h.minutes.last().is_some_and(|x| x.start + COARSE_US >= end) =>
            {
                Some(Closed::Minute(MinuteLoad::default(), h.clone()))
            }
            _ => None,
        })
        .collect();
    let (write_s, _, _, fleet_mib) = fleet_store(&dir, servers, &[kept]).await;
    let mut config = CollectorConfig::new(([127, 0, 0, 1], 0).into(), dir.join("collector"));
    // The JSON API answers the same question, timed beside the RPC.
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    let collector = pgfleet_collector::server::start(config).await.unwrap();
    let http = collector.http_addr.unwrap().to_string();
    let mut client = pgfleet_cli::connect(&pgfleet_cli::Remote::plain(format!(
        "http://{}",
        collector.addr
    )))
    .await
    .unwrap();
    let mut time = async |req: v1::QueryLoadRequest, n: usize| {
        let mut took = Vec::with_capacity(n);
        let mut series = 0;
        for _ in 0..n {
            let t = Instant::now();
            let r = client.query_load(req.clone()).await.unwrap().into_inner();
            took.push(t.elapsed());
            series = r.series.len();
            assert!(!r.series.is_empty(), "{req:?}: {r:?}");
        }
        (
            percentile(took.clone(), 50.0),
            percentile(took, 99.0),
            series,
        )
    };
    let one = |step_s: i64, i: usize| v1::QueryLoadRequest {
        start: Some(timestamp(end - 3_600_000_000)),
        end: Some(timestamp(end)),
        step: Some(duration(step_s * 1_000_000)),
        group_by: "wait".into(),
        matchers: vec![format!("server_id=\"db-{:05}\"", i % servers)],
        ..Default::default()
    };
    let one_fine = time(one(10, 7), calls).await;
    let one_coarse = time(one(60, 7), calls).await;
    // The same as one_fine, over HTTP: /api/v1/load.
    let rfc3339 = |at: i64| {
        humantime::format_rfc3339_micros(pgfleet_proto::time::micros_to_system_time(at)).to_string()
    };
    let path = format!(
        "/api/v1/load?start={}&end={}&step=10s&group_by=wait&match=server_id%3D%22db-{:05}%22",
        rfc3339(end - 3_600_000_000),
        rfc3339(end),
        7 % servers
    );
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let (head, body) = pgfleet_tests::http_get(&http, &path, None).await.unwrap();
        took.push(t.elapsed());
        assert!(
            head.contains(" 200 ") && body.contains("\"series\""),
            "{head}{body}"
        );
    }
    let one_http = (percentile(took.clone(), 50.0), percentile(took, 99.0));
    let fleet_req = v1::QueryLoadRequest {
        start: Some(timestamp(end - DAY_S * 1_000_000)),
        end: Some(timestamp(end)),
        group_by: "dc".into(),
        ..Default::default()
    };
    let fleet_calls = (calls / 10).max(5);
    let fleet = time(fleet_req, fleet_calls).await;
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let out = serde_json::json!({
        "servers": servers,
        "statements_per_read": STATEMENTS,
        "realistic": realistic,
        "heavy": heavy,
        "fleet_store_mib": fleet_mib,
        "fleet_write_s": write_s,
        "one_server_1h_10s": {"p50_ms": one_fine.0, "p99_ms": one_fine.1, "series": one_fine.2, "calls": calls},
        "one_server_1h_1m": {"p50_ms": one_coarse.0, "p99_ms": one_coarse.1, "series": one_coarse.2, "calls": calls},
        "one_server_1h_10s_http": {"p50_ms": one_http.0, "p99_ms": one_http.1, "calls": calls},
        "fleet_24h_by_dc": {"p50_ms": fleet.0, "p99_ms": fleet.1, "series": fleet.2, "calls": fleet_calls},
    });
    println!("{out}");
}

/// The fingerprint of statement `k` of [`Realistic`] on the servers of
/// application `app` (each application its own statements).
fn fingerprint_of(k: u64, app: u64) -> u64 {
    of_app(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(k + 1), app)
}

/// A fingerprint of application 0's as application `app`'s.
fn of_app(fingerprint: u64, app: u64) -> u64 {
    match fingerprint {
        0 | pgfleet_collector::load::OTHER_QUERY => fingerprint,
        f => f.wrapping_add(app.wrapping_mul(0x1_0000_0001)),
    }
}

/// `day` as the servers of application `app` have it: the same load, on
/// statements of their own.
fn day_of_app(day: &[Closed], app: u64) -> Vec<Closed> {
    let bucket = |b: &mut pgfleet_collector::load::Bucket| {
        for (t, _) in &mut b.tuples {
            t.query = of_app(t.query, app);
        }
    };
    day.iter()
        .map(|c| match c.clone() {
            Closed::Minute(mut m, h) => {
                bucket(&mut m.coarse);
                m.fine.iter_mut().for_each(bucket);
                Closed::Minute(m, h)
            }
            Closed::Statements(at, mut r) => {
                for (f, _) in &mut r.by_query {
                    *f = of_app(*f, app);
                }
                Closed::Statements(at, r)
            }
            packed => packed,
        })
        .collect()
}

/// The third part, alone (`PGFLEET_BENCH_FLEET_DAY=N`): a whole day of
/// minutes of `servers` servers, each the busy server's day, and the
/// fleet-wide questions that read every minute of it. With `apps` (over 0),
/// the servers are of that many applications, each on statements of its
/// own, and the questions are those of a query's page in the web UI (its
/// load on each server, its statistics), about application 0's busiest
/// statement: asked by it, and asked so that every minute is read.
async fn fleet_day(servers: usize, apps: usize, end: i64, day: Vec<Closed>) {
    let dir = tempdir("pgfleet-bench-load-day");
    let days: Vec<Vec<Closed>> = match apps {
        0 => vec![day],
        n => (0..n as u64).map(|app| day_of_app(&day, app)).collect(),
    };
    let (write_s, hours_s, adding_s, store_mib) = fleet_store(&dir, servers, &days).await;
    let mut config = CollectorConfig::new(([127, 0, 0, 1], 0).into(), dir.join("collector"));
    // Its /metrics say how many hours each answer read whole.
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    let collector = pgfleet_collector::server::start(config).await.unwrap();
    let http = collector.http_addr.unwrap().to_string();
    let counter = async |name: &str| pgfleet_tests::metric(&http, name).await.unwrap();
    let whole = async || counter("pgfleet_collector_load_hours_whole_total").await;
    let statement_hours = async || counter("pgfleet_collector_statement_hours_whole_total").await;
    // Timed here, not cut short by the command's deadline.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", collector.addr))
        .unwrap()
        .timeout(Duration::from_secs(1800))
        .connect()
        .await
        .unwrap();
    let mut client = v1::query_client::QueryClient::new(channel);
    let (start, end) = (
        Some(timestamp(end - DAY_S * 1_000_000)),
        Some(timestamp(end)),
    );
    let calls = pgfleet_tests::env_usize("PGFLEET_BENCH_DAY_CALLS", 3);
    let mut figures = serde_json::Map::new();
    let questions: &[&str] = match apps {
        0 => &[
            "load_by_wait",
            "load_by_wait_1h",
            "load_by_query",
            "load_by_query_1h",
            "top_queries",
            "churn",
        ],
        _ => &[
            "query_load",
            "query_load_whole",
            "query_top",
            "query_top_whole",
        ],
    };
    // The query's page's questions: about the one query by `=` (which
    // passes over the hours that did not run it), and the same asked by
    // `!~` every other value (which takes the same tuples but cannot pass
    // over an hour, so it reads and decodes every minute, as `=` did
    // before): the regex takes any value that differs from the query's
    // key at some digit, or is shorter or longer.
    let key = format!("{:016x}", fingerprint_of(0, 0));
    let asked = format!("query=\"{key}\"");
    let others: Vec<String> = (0..key.len())
        .map(|i| format!("{}[^{}].*", &key[..i], &key[i..=i]))
        .chain([".{0,15}".to_owned(), ".{17,}".to_owned()])
        .collect();
    let every = format!("query!~\"{}\"", others.join("|"));
    // Each pair's two ways of asking give one answer.
    let mut same: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for &name in questions {
        let (mut took, mut peak, mut answer) = (Vec::new(), 0f64, 0usize);
        let whole_before = whole().await;
        let statements_before = statement_hours().await;
        for _ in 0..calls {
            let before = memory_kib("VmRSS");
            // The high-water mark starts again from the resident memory.
            std::fs::write("/proc/self/clear_refs", "5").unwrap();
            let t = Instant::now();
            answer = match name {
                "load_by_wait" | "load_by_query" | "load_by_wait_1h" | "load_by_query_1h" => {
                    // A step of 30 min (a day's default for a few servers)
                    // reads every minute; a step of an hour (the default for
                    // a fleet's day) reads each server's whole hours, added
                    // up. Both asked, so that the default does not choose.
                    let (by, hourly) = match name.strip_suffix("_1h") {
                        Some(by) => (by, true),
                        None => (name, false),
                    };
                    let req = v1::QueryLoadRequest {
                        start,
                        end,
                        group_by: by.trim_start_matches("load_by_").into(),
                        step: Some(duration(if hourly { 3_600 } else { 1_800 } * 1_000_000)),
                        ..Default::default()
                    };
                    let r = client.query_load(req).await.unwrap().into_inner();
                    r.series.len()
                }
                "top_queries" => {
                    let req = v1::TopQueriesRequest {
                        start,
                        end,
                        ..Default::default()
                    };
                    let r = client.top_queries(req).await.unwrap().into_inner();
                    r.queries.len()
                }
                "query_load" | "query_load_whole" => {
                    let matcher = if name == "query_load" { &asked } else { &every };
                    let req = v1::QueryLoadRequest {
                        start,
                        end,
                        group_by: "server".into(),
                        matchers: vec![matcher.clone()],
                        ..Default::default()
                    };
                    let r = client.query_load(req).await.unwrap().into_inner();
                    let n = r.series.len();
                    same.entry("load").or_insert_with(|| format!("{r:?}"));
                    assert_eq!(same["load"], format!("{r:?}"), "{name}: another answer");
                    n
                }
                "query_top" | "query_top_whole" => {
                    let matcher = if name == "query_top" { &asked } else { &every };
                    let req = v1::TopQueriesRequest {
                        start,
                        end,
                        matchers: vec![matcher.clone()],
                        limit: 1,
                        ..Default::default()
                    };
                    let r = client.top_queries(req).await.unwrap().into_inner();
                    let n = r.queries.len();
                    same.entry("top").or_insert_with(|| format!("{r:?}"));
                    assert_eq!(same["top"], format!("{r:?}"), "{name}: another answer");
                    n
                }
                _ => {
                    let req = v1::GetChurnRequest {
                        start,
                        end,
                        ..Default::default()
                    };
                    let r = client.get_churn(req).await.unwrap().into_inner();
                    r.rows.len()
                }
            };
            took.push(t.elapsed());
            peak = peak.max((memory_kib("VmHWM") - before) / 1024.0);
            assert!(answer > 0, "{name}: an empty answer");
        }
        eprintln!("{name}: {took:?}, peak {peak:.0} MiB over the resident");
        figures.insert(
            name.into(),
            serde_json::json!({
                "p50_s": percentile(took.clone(), 50.0) / 1e3,
                "max_s": percentile(took, 100.0) / 1e3,
                "peak_mib": peak,
                "answer": answer,
                "calls": calls,
                "hours_whole": (whole().await - whole_before) / calls as f64,
                "statement_hours_whole":
                    (statement_hours().await - statements_before) / calls as f64,
            }),
        );
    }
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = serde_json::json!({
        "servers": servers,
        "apps": apps,
        "store_mib": store_mib,
        "write_s": write_s,
        "hours_s": hours_s,
        "adding_s": adding_s,
        "queries": figures,
    });
    println!("{out}");
}

/// A store under `dir/collector` given `servers` servers (five dcs), server
/// `i` with the load `days[i % days.len()]` holds, through its writer, in
/// the order of time as a fleet sends it, and its hours added up; the
/// seconds that took (the writes, then the hours), the writer's seconds
/// adding hours up, and the MiB the file holds once checkpointed.
async fn fleet_store(
    dir: &std::path::Path,
    servers: usize,
    days: &[Vec<Closed>],
) -> (f64, f64, f64, f64) {
    std::fs::create_dir_all(dir.join("collector")).unwrap();
    let (store, _) = Store::open_sqlite(
        &dir.join("collector"),
        Retention::default(),
        pgfleet_collector::store::DictTraining::default(),
    )
    .unwrap();
    let written = Instant::now();
    let fleet: Vec<_> = (0..servers)
        .map(|i| {
            let labels = [("dc".to_owned(), DCS[i % DCS.len()].to_owned())].into();
            (format!("db-{i:05}"), labels, &days[i % days.len()][..])
        })
        .collect();
    let minutes = pgfleet_tests::stored::write_fleet(&store, &fleet).await;
    let write_s = written.elapsed().as_secs_f64();
    let adding = Instant::now();
    pgfleet_tests::stored::hours_added_up(&store, minutes).await;
    let hours_s = adding.elapsed().as_secs_f64();
    let adding_s = store.reads().figures().hours_adding_us as f64 / 1e6;
    drop(store);
    checkpoint(&dir.join("collector"));
    let mib = file_bytes(&dir.join("collector")) as f64 / 1048576.0;
    let db = rusqlite::Connection::open(dir.join("collector").join("pgfleet.sqlite")).unwrap();
    for table in [
        "load",
        "load_tuple_hours",
        "rollups",
        "statements",
        "statement_hours",
    ] {
        let bytes: i64 = db
            .query_row(
                &format!("SELECT coalesce(sum(length(body)), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        eprintln!("{table}: {:.1} MiB of bodies", bytes as f64 / 1048576.0);
    }
    (write_s, hours_s, adding_s, mib)
}

/// A figure of this process's from /proc/self/status, in KiB.
fn memory_kib(name: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

//! `cargo bench -p pgfleet-tests --bench frame_rows`: what SQLite alone costs
//! the store's writer per stored frame, over `PGFLEET_BENCH_SERVERS` servers
//! (2,500) at one frame a second each, three ways (each with WAL,
//! `synchronous = NORMAL`, the checkpoint every 16,384 pages, a transaction
//! every 200 ms):
//! - **per second**: a row per frame, indexed on server and time as it is
//!   written (the store's layout before `frame_index`);
//! - **per 10 s**: a row per server per 10 s holding its ten frames, written
//!   when its tenth frame comes, in the same transactions;
//! - **indexed every 10 s**: a row per frame with no index of its own, put
//!   in `frame_index` ten seconds at a time, each server's ten together, as
//!   the store did until stop 60 (it now waits a minute): the servers fall
//!   into 50 groups, and each commit indexes one group's frames in server
//!   order. (Until stop 60 this bench indexed every server at once with the
//!   last commit of every tenth second.)
//!
//! Each way has its own database in a temporary directory, first filled with
//! `PGFLEET_BENCH_HISTORY` seconds (60) of every server's frames and
//! checkpointed. Then `PGFLEET_BENCH_SECONDS` seconds (60) are written, the
//! ways taking turns at going first, ten seconds at a time. Both must be
//! multiples of 10. The bodies are 700 bytes of noise, a compressed frame's
//! size here. Nothing is encoded or compressed: this is the part of the
//! writer's work that is SQLite's, the floor under per-second rows.
//!
//! A running store keeps a day of frames, so its index is far larger than a
//! minute's: here a leaf of the index holds the rows of one or two servers,
//! and a transaction writes the servers in name order, so several of its rows
//! share a leaf; in a day's index each row dirties a leaf of its own, and more
//! of them must be read first. So these figures are below a running store's,
//! more so for a row per frame.
//!
//! Two variables measure a store as it runs:
//! - `PGFLEET_BENCH_AGED` (seconds, 0): the index first holds that many
//!   seconds of every server's entries before the history (filled in key
//!   order, once, and copied for each way; the frames they name are not
//!   written, as the table is only ever appended to);
//! - `PGFLEET_BENCH_STORE_WAYS` (`SECONDS:KIB[:runs]`, comma-separated): in
//!   place of the three ways, the store's layout indexed every so many
//!   seconds, as the store does it (the servers in as many groups as there
//!   are commits in that time, spread over the names or, with `:runs`, runs
//!   of neighbours; each commit indexes a group's pending frames), with
//!   SQLite's page cache of so many KiB (2,000 is SQLite's own).
//!
//! Prints one JSON object: each way's µs per frame (the writing thread's CPU
//! time and the wall time).

use std::time::Instant;

use rusqlite::{Connection, params};

const BODY: usize = 700;
const COMMITS_PER_SECOND: usize = 5;
/// A frame's entry in `frame_index`.
const INDEX_ENTRY: &str =
    "INSERT INTO frame_index (server_id, at, id, keyframe) VALUES (?1, ?2, ?3, 0)";

#[path = "../../agent/benches/support/cpu.rs"]
mod cpu;

/// The calling thread's CPU time, in µs.
fn thread_cpu_us() -> f64 {
    let us = cpu::cpu().as_secs_f64() * 1e6;
    assert!(us > 0.0, "cannot read /proc/thread-self/schedstat");
    us
}

/// How a way keeps its frames.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// A row per frame, indexed by server and time as each is written.
    PerSecond,
    /// A row per server per 10 s.
    PerTen,
    /// A row per frame, appended with no index of its own, put in the index
    /// every so many seconds (60 in the store since stop 60, 10 before), a
    /// group of servers a commit, in server order.
    Indexed(i64, Groups),
}

/// How the servers fall into the groups indexed in turn.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Groups {
    /// Spread over the names, as the store spreads them (by a hash of each).
    Spread,
    /// A run of neighbouring names each.
    Runs,
}

/// A connection to `path` with the store's settings (which, but for the
/// log's mode, are the connection's, not the file's).
fn connect(path: &std::path::Path) -> Connection {
    let db = Connection::open(path).expect("a database");
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA wal_autocheckpoint = 16384;",
    )
    .expect("the store's settings");
    db
}

fn open(path: &std::path::Path, way: Way) -> Connection {
    let db = connect(path);
    // The store's own tables; the other ways find frames by an index of
    // the table's own, as the store did before `frame_index`.
    db.execute_batch(pgfleet_collector::store::sqlite::SCHEMA)
        .expect("the store's schema");
    if !matches!(way, Way::Indexed(..)) {
        db.execute_batch("CREATE UNIQUE INDEX frames_by_server ON frames (server_id, at);")
            .expect("the index");
    }
    db
}

/// The frames written and not yet indexed, by server, and how many
/// commits there were (whose turn it is to be indexed).
#[derive(Default)]
struct Pending {
    frames: Vec<Vec<(i64, i64)>>,
    commits: usize,
}

/// Writes one second of frames (`second`) for every server: per second, a
/// row each; per 10 s, a row for each server whose tenth frame this is;
/// indexed every so many seconds, a row each, and with each commit the
/// index of the frames pending of one group of servers, as the store does:
/// the servers fall into as many groups as there are commits in the period
/// (by their number), each indexed in turn, in server order.
/// Returns the thread's CPU µs and the wall µs it took.
fn write_second(
    db: &mut Connection,
    names: &[String],
    second: i64,
    way: Way,
    noise: &[u8],
    pending: &mut Pending,
) -> (f64, f64) {
    let (cpu, wall) = (thread_cpu_us(), Instant::now());
    let chunk = names.len().div_ceil(COMMITS_PER_SECOND);
    pending.frames.resize_with(names.len(), Vec::new);
    for (c, servers) in names.chunks(chunk).enumerate() {
        let tx = db.transaction().expect("a transaction");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO frames (server_id, at, keyframe, body) VALUES (?1, ?2, 0, ?3)",
                )
                .expect("the insert");
            for (i, name) in servers.iter().enumerate() {
                let at = second * 1_000_000 + (c * chunk + i) as i64;
                let start = (i * 37 + second as usize * 11) % (noise.len() - 10 * BODY);
                match way {
                    Way::PerSecond => {
                        insert
                            .execute(params![name, at, &noise[start..start + BODY]])
                            .expect("a frame");
                    }
                    Way::PerTen if second % 10 == 9 => {
                        insert
                            .execute(params![name, at, &noise[start..start + 10 * BODY]])
                            .expect("ten frames");
                    }
                    Way::PerTen => {}
                    Way::Indexed(..) => {
                        insert
                            .execute(params![name, at, &noise[start..start + BODY]])
                            .expect("a frame");
                        pending.frames[c * chunk + i].push((at, tx.last_insert_rowid()));
                    }
                }
            }
            if let Way::Indexed(every, how) = way {
                let groups = every as usize * COMMITS_PER_SECOND;
                let group = pending.commits % groups;
                pending.commits += 1;
                let run = names.len().div_ceil(groups);
                let servers: Vec<usize> = match how {
                    Groups::Spread => (group..names.len()).step_by(groups).collect(),
                    Groups::Runs => (group * run..((group + 1) * run).min(names.len())).collect(),
                };
                let mut index = tx.prepare_cached(INDEX_ENTRY).expect("the index's insert");
                for server in servers {
                    for (at, id) in pending.frames[server].drain(..) {
                        index
                            .execute(params![names[server], at, id])
                            .expect("an index entry");
                    }
                }
            }
        }
        tx.commit().expect("the commit");
    }
    (thread_cpu_us() - cpu, wall.elapsed().as_secs_f64() * 1e6)
}

/// Fills `db`'s `frame_index` with `seconds` of every server's entries
/// before time 0, in key order: the index of a store that has run that long
/// (the frames themselves are not written: the table is appended to at its
/// end, so its older rows are not what a commit reads or writes).
fn age_index(db: &mut Connection, names: &[String], seconds: i64) {
    let tx = db.transaction().expect("a transaction");
    {
        let mut index = tx.prepare_cached(INDEX_ENTRY).expect("the index's insert");
        for (s, name) in names.iter().enumerate() {
            for second in -seconds..0 {
                let at = second * 1_000_000 + s as i64;
                let id = (second + seconds) * names.len() as i64 + s as i64 + 1;
                index
                    .execute(params![name, at, id])
                    .expect("an index entry");
            }
        }
    }
    tx.commit().expect("the commit");
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("a checkpoint");
}

/// The store's layout at each (seconds between indexings, KiB of SQLite's
/// page cache, how the servers are grouped) of `PGFLEET_BENCH_STORE_WAYS`
/// ("10:2000,10:2000:runs,60:65536": `runs` groups neighbouring names,
/// otherwise they are spread); None: the variable is not set.
fn store_ways() -> Option<Vec<(i64, i64, Groups)>> {
    let list = std::env::var("PGFLEET_BENCH_STORE_WAYS").ok()?;
    let ways = list
        .split(',')
        .map(|w| {
            let parts: Vec<&str> = w.trim().split(':').collect();
            let positive = |v: &str| v.parse::<i64>().ok().filter(|&v| v > 0);
            let how = match parts.get(2) {
                None | Some(&"spread") => Some(Groups::Spread),
                Some(&"runs") => Some(Groups::Runs),
                Some(_) => None,
            };
            match parts[..] {
                [every, kib] | [every, kib, _] => positive(every)
                    .zip(positive(kib))
                    .zip(how)
                    .map(|((e, k), h)| (e, k, h)),
                _ => None,
            }
            .unwrap_or_else(|| {
                panic!(
                    "PGFLEET_BENCH_STORE_WAYS: {w:?} is not SECONDS:KIB[:spread|:runs] \
                     (\"10:2000\"), each a positive number"
                )
            })
        })
        .collect();
    Some(ways)
}

fn main() {
    let servers = pgfleet_tests::env_usize("PGFLEET_BENCH_SERVERS", 2_500);
    let history = pgfleet_tests::env_usize("PGFLEET_BENCH_HISTORY", 60) as i64;
    let seconds = pgfleet_tests::env_usize("PGFLEET_BENCH_SECONDS", 60) as i64;
    let aged = pgfleet_tests::env_usize("PGFLEET_BENCH_AGED", 0) as i64;
    assert!(
        history % 10 == 0 && seconds % 10 == 0,
        "PGFLEET_BENCH_HISTORY and PGFLEET_BENCH_SECONDS must be multiples of 10 \
         (a row per 10 s is written every tenth second)"
    );
    let store_ways = store_ways();
    let dir = std::env::temp_dir().join(format!("pgfleet-frame-rows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let names: Vec<String> = (0..servers).map(|i| format!("loadgen-{i:05}")).collect();
    // The ways: the three layouts at SQLite's page cache by default, or the
    // store's layout at each (indexing period, cache) asked for.
    let ways: Vec<(Way, Option<i64>)> = match &store_ways {
        None => [
            Way::PerSecond,
            Way::PerTen,
            Way::Indexed(10, Groups::Spread),
        ]
        .map(|way| (way, None))
        .to_vec(),
        Some(ways) => ways
            .iter()
            .map(|&(every, kib, how)| (Way::Indexed(every, how), Some(kib)))
            .collect(),
    };
    // An aged index is filled once and copied for each way that has one.
    let aged_file = dir.join("aged.sqlite");
    if aged > 0 {
        let mut db = open(&aged_file, Way::Indexed(10, Groups::Spread));
        age_index(&mut db, &names, aged);
    }
    let mut ways: Vec<_> = ways
        .into_iter()
        .enumerate()
        .map(|(n, (way, cache))| {
            let path = dir.join(format!("{n}.sqlite"));
            let db = if aged > 0 && matches!(way, Way::Indexed(..)) {
                std::fs::copy(&aged_file, &path).expect("a copy of the aged index");
                connect(&path)
            } else {
                open(&path, way)
            };
            if let Some(kib) = cache {
                db.execute_batch(&format!("PRAGMA cache_size = -{kib};"))
                    .expect("the cache's size");
            }
            (db, way, Pending::default(), 0.0, 0.0)
        })
        .collect();
    let _ = std::fs::remove_file(&aged_file);
    for (db, way, pending, _, _) in &mut ways {
        for second in 0..history {
            write_second(db, &names, second, *way, &noise, pending);
        }
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("a checkpoint");
    }
    let n = ways.len();
    for second in history..history + seconds {
        // Which way writes first turns, ten seconds at a time.
        let first = (second / 10) as usize % n;
        for w in (0..n).map(|k| (first + k) % n) {
            let (db, way, pending, cpu, wall) = &mut ways[w];
            let (c, t) = write_second(db, &names, second, *way, &noise, pending);
            *cpu += c;
            *wall += t;
        }
    }
    let frames = (servers as i64 * seconds) as f64;
    let us: Vec<(f64, f64)> = ways
        .iter()
        .map(|(_, _, _, cpu, wall)| (cpu / frames, wall / frames))
        .collect();
    drop(ways);
    let _ = std::fs::remove_dir_all(&dir);
    let head = format!(
        "\"servers\": {servers}, \"history_s\": {history}, \"aged_s\": {aged}, \"seconds\": {seconds}"
    );
    match store_ways {
        None => println!(
            "{{{head}, \
             \"per_second_cpu_us\": {:.2}, \"per_second_wall_us\": {:.2}, \
             \"per_ten_cpu_us\": {:.2}, \"per_ten_wall_us\": {:.2}, \
             \"indexed_cpu_us\": {:.2}, \"indexed_wall_us\": {:.2}}}",
            us[0].0, us[0].1, us[1].0, us[1].1, us[2].0, us[2].1
        ),
        Some(ways) => {
            let each: Vec<String> = ways
                .iter()
                .zip(&us)
                .map(|((every, kib, how), (cpu, wall))| {
                    format!(
                        "{{\"index_every_s\": {every}, \"cache_kib\": {kib}, \"groups\": \"{how:?}\", \
                         \"cpu_us\": {cpu:.2}, \"wall_us\": {wall:.2}}}"
                    )
                })
                .collect();
            println!("{{{head}, \"ways\": [{}]}}", each.join(", "));
        }
    }
}

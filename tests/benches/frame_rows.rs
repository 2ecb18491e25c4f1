//! `cargo bench -p pgfleet-tests --bench frame_rows`: what SQLite alone costs
//! the store's writer per stored frame, over `PGFLEET_BENCH_SERVERS` servers
//! (2,500) at one frame a second each, two ways:
//! - **per second**: a row per frame, as the store keeps them (`frames`, its
//!   index on server and time, WAL, `synchronous = NORMAL`, the checkpoint
//!   every 16,384 pages, a transaction every 200 ms);
//! - **per 10 s**: a row per server per 10 s holding its ten frames, written
//!   when its tenth frame comes, in the same transactions.
//!
//! Each way has its own database in a temporary directory, first filled with
//! `PGFLEET_BENCH_HISTORY` seconds (60) of every server's frames and
//! checkpointed. Then `PGFLEET_BENCH_SECONDS` seconds (60) are written, the
//! two ways taking turns at going first, ten seconds at a time. Both must be
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
//! Prints one JSON object: each way's µs per frame (the writing thread's CPU
//! time and the wall time).

use std::time::Instant;

use rusqlite::{Connection, params};

const BODY: usize = 700;
const COMMITS_PER_SECOND: usize = 5;

/// The calling thread's CPU time, in µs (Linux's schedstat).
fn thread_cpu_us() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .expect("/proc/thread-self/schedstat")
        / 1e3
}

fn open(path: &std::path::Path) -> Connection {
    let db = Connection::open(path).expect("a database");
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA wal_autocheckpoint = 16384;
         CREATE TABLE frames (
             id INTEGER PRIMARY KEY,
             server_id TEXT NOT NULL,
             at INTEGER NOT NULL,
             keyframe INTEGER NOT NULL,
             body BLOB NOT NULL);
         CREATE UNIQUE INDEX frames_by_server ON frames (server_id, at);",
    )
    .expect("the schema");
    db
}

/// Writes one second of frames (`second`) for every server: per second, a
/// row each; per 10 s, a row for each server whose tenth frame this is.
/// Returns the thread's CPU µs and the wall µs it took.
fn write_second(
    db: &mut Connection,
    names: &[String],
    second: i64,
    per_ten: bool,
    noise: &[u8],
) -> (f64, f64) {
    let (cpu, wall) = (thread_cpu_us(), Instant::now());
    let chunk = names.len().div_ceil(COMMITS_PER_SECOND);
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
                if !per_ten {
                    insert
                        .execute(params![name, at, &noise[start..start + BODY]])
                        .expect("a frame");
                } else if second % 10 == 9 {
                    insert
                        .execute(params![name, at, &noise[start..start + 10 * BODY]])
                        .expect("ten frames");
                }
            }
        }
        tx.commit().expect("the commit");
    }
    (thread_cpu_us() - cpu, wall.elapsed().as_secs_f64() * 1e6)
}

fn main() {
    let servers = pgfleet_tests::env_usize("PGFLEET_BENCH_SERVERS", 2_500);
    let history = pgfleet_tests::env_usize("PGFLEET_BENCH_HISTORY", 60) as i64;
    let seconds = pgfleet_tests::env_usize("PGFLEET_BENCH_SECONDS", 60) as i64;
    assert!(
        history % 10 == 0 && seconds % 10 == 0,
        "PGFLEET_BENCH_HISTORY and PGFLEET_BENCH_SECONDS must be multiples of 10 \
         (a row per 10 s is written every tenth second)"
    );
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
    let mut ways = [
        (open(&dir.join("second.sqlite")), false, 0.0, 0.0),
        (open(&dir.join("ten.sqlite")), true, 0.0, 0.0),
    ];
    for (db, per_ten, _, _) in &mut ways {
        for second in 0..history {
            write_second(db, &names, second, *per_ten, &noise);
        }
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("a checkpoint");
    }
    for second in history..history + seconds {
        // Which way writes first alternates, ten seconds at a time.
        let first = ((second / 10) % 2) as usize;
        for w in [first, 1 - first] {
            let (db, per_ten, cpu, wall) = &mut ways[w];
            let (c, t) = write_second(db, &names, second, *per_ten, &noise);
            *cpu += c;
            *wall += t;
        }
    }
    let frames = (servers as i64 * seconds) as f64;
    let [(_, _, cpu1, wall1), (_, _, cpu10, wall10)] = ways;
    drop(ways);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"servers\": {servers}, \"history_s\": {history}, \"seconds\": {seconds}, \
         \"per_second_cpu_us\": {:.2}, \"per_second_wall_us\": {:.2}, \
         \"per_ten_cpu_us\": {:.2}, \"per_ten_wall_us\": {:.2}}}",
        cpu1 / frames,
        wall1 / frames,
        cpu10 / frames,
        wall10 / frames
    );
}

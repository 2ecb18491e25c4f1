//! `cargo bench -p pgfleet-tests --bench frame_rows`: what SQLite alone costs
//! the store's writer per stored frame, over `PGFLEET_BENCH_SERVERS` servers
//! (2,500) at one frame a second each, three ways (each with WAL,
//! `synchronous = NORMAL`, the checkpoint every 16,384 pages, a transaction
//! every 200 ms):
//! - **per second**: a row per frame, indexed on server and time as it is
//!   written (the store's layout before `frame_index`);
//! - **per 10 s**: a row per server per 10 s holding its ten frames, written
//!   when its tenth frame comes, in the same transactions;
//! - **indexed every 10 s**: a row per frame with no index of its own, and
//!   every tenth second the 10 s of frames put in `frame_index` at once, in
//!   server order. The store writes the same entries, each server's ten
//!   together, but spreads the servers over the commits of the 10 s.
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
//! Prints one JSON object: each way's µs per frame (the writing thread's CPU
//! time and the wall time).

use std::time::Instant;

use rusqlite::{Connection, params};

const BODY: usize = 700;
const COMMITS_PER_SECOND: usize = 5;

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
    /// A row per frame, appended with no index of its own; every 10 s the
    /// frames of those 10 s are indexed at once, in server order.
    IndexedEveryTen,
}

fn open(path: &std::path::Path, way: Way) -> Connection {
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
             body BLOB NOT NULL);",
    )
    .expect("the schema");
    let index = if way == Way::IndexedEveryTen {
        "CREATE TABLE frame_index (
             server_id TEXT NOT NULL,
             at INTEGER NOT NULL,
             id INTEGER NOT NULL,
             keyframe INTEGER NOT NULL,
             PRIMARY KEY (server_id, at)) WITHOUT ROWID;"
    } else {
        "CREATE UNIQUE INDEX frames_by_server ON frames (server_id, at);"
    };
    db.execute_batch(index).expect("the index");
    db
}

/// Writes one second of frames (`second`) for every server: per second, a
/// row each; per 10 s, a row for each server whose tenth frame this is;
/// indexed every 10 s, a row each, and with the last transaction of every
/// tenth second the index of the 10 s in `tail` (server, time and row).
/// Returns the thread's CPU µs and the wall µs it took.
fn write_second(
    db: &mut Connection,
    names: &[String],
    second: i64,
    way: Way,
    noise: &[u8],
    tail: &mut Vec<(usize, i64, i64)>,
) -> (f64, f64) {
    let (cpu, wall) = (thread_cpu_us(), Instant::now());
    let chunk = names.len().div_ceil(COMMITS_PER_SECOND);
    let commits = names.len().div_ceil(chunk);
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
                    Way::IndexedEveryTen => {
                        insert
                            .execute(params![name, at, &noise[start..start + BODY]])
                            .expect("a frame");
                        tail.push((c * chunk + i, at, tx.last_insert_rowid()));
                    }
                }
            }
            if way == Way::IndexedEveryTen && second % 10 == 9 && c + 1 == commits {
                let mut index = tx
                    .prepare_cached(
                        "INSERT INTO frame_index (server_id, at, id, keyframe) VALUES (?1, ?2, ?3, 0)",
                    )
                    .expect("the index's insert");
                tail.sort_unstable();
                for (server, at, id) in tail.drain(..) {
                    index
                        .execute(params![names[server], at, id])
                        .expect("an index entry");
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
    let mut ways = [Way::PerSecond, Way::PerTen, Way::IndexedEveryTen].map(|way| {
        let name = format!("{}.sqlite", way as u8);
        (open(&dir.join(name), way), way, Vec::new(), 0.0, 0.0)
    });
    for (db, way, tail, _, _) in &mut ways {
        for second in 0..history {
            write_second(db, &names, second, *way, &noise, tail);
        }
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("a checkpoint");
    }
    for second in history..history + seconds {
        // Which way writes first turns, ten seconds at a time.
        let first = ((second / 10) % 3) as usize;
        for w in [first, (first + 1) % 3, (first + 2) % 3] {
            let (db, way, tail, cpu, wall) = &mut ways[w];
            let (c, t) = write_second(db, &names, second, *way, &noise, tail);
            *cpu += c;
            *wall += t;
        }
    }
    let frames = (servers as i64 * seconds) as f64;
    let [
        (_, _, _, cpu1, wall1),
        (_, _, _, cpu10, wall10),
        (_, _, _, cpu_i, wall_i),
    ] = ways;
    drop(ways);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"servers\": {servers}, \"history_s\": {history}, \"seconds\": {seconds}, \
         \"per_second_cpu_us\": {:.2}, \"per_second_wall_us\": {:.2}, \
         \"per_ten_cpu_us\": {:.2}, \"per_ten_wall_us\": {:.2}, \
         \"indexed_cpu_us\": {:.2}, \"indexed_wall_us\": {:.2}}}",
        cpu1 / frames,
        wall1 / frames,
        cpu10 / frames,
        wall10 / frames,
        cpu_i / frames,
        wall_i / frames
    );
}

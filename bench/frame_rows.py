#!/usr/bin/env python3
"""What SQLite alone costs the store's writer per frame (issue 17).

Runs `cargo bench -p pgfleet-tests --bench frame_rows`
(tests/benches/frame_rows.rs) at each number of servers: a frame a second
from every server, written to SQLite as the store writes them (a row per
frame, indexed by server and time as each is written, WAL, a transaction
every 200 ms; the layout before stop 38), as a row per server per 10 s would
be, and as the store wrote them until stop 60 (a row per frame with no index
of its own, indexed every 10 s in server order), after a minute of history, the
ways taking turns ten seconds at a time. Nothing is encoded or compressed.

Writes the "## Stored frames: SQLite's part" section of BENCHMARKS.md with
the command.

With --aged SECONDS, measures the store's layout instead in an index that
already holds that many seconds of every server's entries (a store that has
run that long), indexed every so many seconds and with so much of SQLite's
page cache (--ways), each way measured --runs times, and writes the
"## Stored frames in a store an hour old" section (its title names the age).

    python3 bench/frame_rows.py [--servers 2500,10000] [--seconds 60]
    python3 bench/frame_rows.py --aged 3600 --servers 10000 --seconds 120 \
        --ways 10:2000,20:2000,30:2000,60:2000 --runs 2
"""
import argparse
import sys
from pathlib import Path

from report import cargo_bench, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Stored frames: SQLite's part"


def run(servers: int, seconds: int) -> dict:
    return cargo_bench("frame_rows", dict(PGFLEET_BENCH_SERVERS=str(servers), PGFLEET_BENCH_SECONDS=str(seconds)))


def age_words(seconds: int) -> str:
    """"an hour", "2 hours", "10 minutes": a store's age in words."""
    if seconds % 3600 == 0:
        return "an hour" if seconds == 3600 else f"{seconds // 3600} hours"
    if seconds % 60 == 0:
        return "a minute" if seconds == 60 else f"{seconds // 60} minutes"
    return f"{seconds} s"


def aged(args) -> None:
    """The store's layout in an index that holds `args.aged` seconds first."""
    rows = []
    for n in args.servers.split(","):
        for run_no in range(1, args.runs + 1):
            r = cargo_bench("frame_rows", dict(
                PGFLEET_BENCH_SERVERS=n, PGFLEET_BENCH_SECONDS=str(args.seconds),
                PGFLEET_BENCH_AGED=str(args.aged), PGFLEET_BENCH_STORE_WAYS=args.ways))
            rows += [(int(n), run_no, w) for w in r["ways"]]
    title = f"## Stored frames in a store {age_words(args.aged)} old"
    lines = [
        *heading(title, "bench/frame_rows.py", sys.argv[1:]),
        f"As \"Stored frames: SQLite's part\" (tests/benches/frame_rows.rs), but with the index of "
        f"frames (`frame_index`, by server and time) first holding {age_words(args.aged)} of every "
        "server's entries, as a store that has run that long holds them, and the store's layout "
        "written as the store writes it: a row per frame with no index of its own, put in the index "
        "every so many seconds, the servers in as many groups as there are commits in that time and "
        "each commit indexing one group's frames, in server order; 60 s of frames first, then "
        f"{args.seconds} s measured, the ways taking turns at going first, ten seconds at a time. "
        "Each way has its own copy of the aged file. *Groups*: spread over the servers' names (as "
        "by the store's hash) or runs of neighbouring names. *Cache*: SQLite's page cache for the "
        "connection (2,000 KiB is SQLite's own, and the store's). µs per frame: the writing "
        "thread's CPU time (`/proc/thread-self/schedstat`), and the wall time.",
        "",
        "| servers | run | indexed every s | groups | cache KiB | CPU µs/frame | wall µs/frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, run_no, w in rows:
        lines.append(f"| {n:,} | {run_no} | {w['index_every_s']} | {w['groups'].lower()} "
                     f"| {w['cache_kib']:,} | {w['cpu_us']:.1f} | {w['wall_us']:.1f} |")
    section = "\n".join(lines) + "\n"
    write_section(Path(args.output), title, section)
    print(section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="2500,10000", help="the numbers of servers, comma-separated")
    p.add_argument("--seconds", type=int, default=60, help="seconds written at each number, after 60 of history (a multiple of 10)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--aged", type=int, default=0,
                   help="seconds of every server's entries the index holds first; with it, --ways are measured")
    p.add_argument("--ways", default="10:2000,20:2000,30:2000,60:2000",
                   help="with --aged: SECONDS:KIB[:runs] ways, comma-separated (see tests/benches/frame_rows.rs)")
    p.add_argument("--runs", type=int, default=2, help="with --aged: runs of each number of servers")
    args = p.parse_args()
    if args.aged:
        aged(args)
        return
    results = [run(int(n), args.seconds) for n in args.servers.split(",")]

    lines = [
        *heading(TITLE, "bench/frame_rows.py", sys.argv[1:]),
        "A frame a second from every server, written to SQLite three ways, each in a database of its "
        "own (WAL, `synchronous = NORMAL`, the checkpoint every 16,384 pages, a transaction every "
        "200 ms): **per second**, a row per frame indexed by server and time as it is written (the "
        "store's layout before stop 38); **per 10 s**, a row per server per 10 s holding its ten "
        "frames, written with its tenth, in the same transactions; **indexed every 10 s**, a row per "
        "frame in a table with no index of its own, entered in `frame_index` (server, time, row) "
        "ten seconds at a time, the servers in 50 groups and each commit indexing one group's "
        "frames in server order, as the store wrote them until stop 60 (it now waits a minute: "
        "\"Stored frames in a store an hour old\"). Each database first holds 60 s of every server's "
        f"frames, checkpointed; then {args.seconds} s are written, the ways taking turns at going "
        "first, ten seconds at a time. A running store keeps a day of frames, a larger index in which "
        "each row dirties a leaf of its own: these figures are below its, more so for a row per frame "
        "indexed as it is written. Bodies are 700 bytes, a compressed frame's size here; nothing is "
        "encoded or compressed. µs per frame: the writing thread's CPU time "
        "(`/proc/thread-self/schedstat`), and the wall time.",
        "",
        "| servers | per second: CPU µs/frame | per second: wall µs/frame | per 10 s: CPU µs/frame | per 10 s: wall µs/frame | indexed every 10 s: CPU µs/frame | indexed every 10 s: wall µs/frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['servers']:,} | {r['per_second_cpu_us']:.1f} | {r['per_second_wall_us']:.1f} "
            f"| {r['per_ten_cpu_us']:.1f} | {r['per_ten_wall_us']:.1f} "
            f"| {r['indexed_cpu_us']:.1f} | {r['indexed_wall_us']:.1f} |"
        )
    section = "\n".join(lines) + "\n"
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What SQLite alone costs the store's writer per frame (issue 17).

Runs `cargo bench -p pgfleet-tests --bench frame_rows`
(tests/benches/frame_rows.rs) at each number of servers: a frame a second
from every server, written to SQLite as the store writes them (a row per
frame, indexed by server and time as each is written, WAL, a transaction
every 200 ms; the layout before stop 38), as a row per server per 10 s would
be, and as the store writes them now (a row per frame with no index of its
own, indexed every 10 s in server order), after a minute of history, the
ways taking turns ten seconds at a time. Nothing is encoded or compressed.

Writes the "## Stored frames: SQLite's part" section of BENCHMARKS.md with
the command.

    python3 bench/frame_rows.py [--servers 2500,10000] [--seconds 60]
"""
import argparse
import sys
from pathlib import Path

from report import cargo_bench, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Stored frames: SQLite's part"


def run(servers: int, seconds: int) -> dict:
    return cargo_bench("frame_rows", dict(PGFLEET_BENCH_SERVERS=str(servers), PGFLEET_BENCH_SECONDS=str(seconds)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="2500,10000", help="the numbers of servers, comma-separated")
    p.add_argument("--seconds", type=int, default=60, help="seconds written at each number, after 60 of history (a multiple of 10)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    results = [run(int(n), args.seconds) for n in args.servers.split(",")]

    lines = [
        *heading(TITLE, "bench/frame_rows.py", sys.argv[1:]),
        "A frame a second from every server, written to SQLite three ways, each in a database of its "
        "own (WAL, `synchronous = NORMAL`, the checkpoint every 16,384 pages, a transaction every "
        "200 ms): **per second**, a row per frame indexed by server and time as it is written (the "
        "store's layout before stop 38); **per 10 s**, a row per server per 10 s holding its ten "
        "frames, written with its tenth, in the same transactions; **indexed every 10 s**, a row per "
        "frame in a table with no index of its own, and every tenth second, with the last "
        "transaction, the 10 s of frames entered in `frame_index` (server, time, row) in server "
        "order, as the store now writes them. Each database first holds 60 s of every server's "
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

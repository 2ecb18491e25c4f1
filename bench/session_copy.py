#!/usr/bin/env python3
"""What keeping a server's sessions up to date costs per sample (issue 17).

Runs `cargo bench -p pgfleet-tests --bench session_copy`
(tests/benches/session_copy.rs) at each number of servers: the load
generator's server (100 sessions, 10 changing a second) for every server,
and each server's sessions brought up to date with each second's delta in
turn, three ways in one run:
- a vector of `Arc<Session>` merged by `state::merge`, the old vectors
  dropped as a publish drops them;
- the same with the vector read by `state::warm` first, as the aggregator
  does since stop 39;
- as plain data, fixed-size sessions whose strings are interned ids, copied,
  the changed ones filled in from their base.

The bound this puts on a change of the live state to plain sessions: what it
could take off the collector's CPU per batch.

Writes the "## Sessions as Arcs and as plain data" section of BENCHMARKS.md
with the command.

    python3 bench/session_copy.py [--servers 2500,10000] [--rounds 20]
"""
import argparse
import os
import sys
from pathlib import Path

from report import cargo_bench, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Sessions as Arcs and as plain data"
# mimalloc keeps the memory freed, as the collector sets it (unless the
# environment says otherwise): by default it gives freed pages back, and a
# fifth of the bench's time went to the kernel zeroing them again.
PURGE_DELAY = os.environ.get("MIMALLOC_PURGE_DELAY", "-1")


def run(servers: int, rounds: int) -> dict:
    return cargo_bench("session_copy", dict(PGFLEET_BENCH_SERVERS=str(servers), PGFLEET_BENCH_ROUNDS=str(rounds),
                                            MIMALLOC_PURGE_DELAY=PURGE_DELAY))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="2500,10000", help="the numbers of servers, comma-separated")
    p.add_argument("--rounds", type=int, default=20, help="seconds simulated at each number")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    results = [run(int(n), args.rounds) for n in args.servers.split(",")]

    lines = [
        *heading(TITLE, "bench/session_copy.py", sys.argv[1:]),
        "Every server is the load generator's (100 sessions, 10 changing a second, one of them a "
        "new backend). Each simulated second, every server's delta is made first, as the agent sends "
        "it and ingest decodes it (a changed session without the fields its base holds; not timed), then "
        "every server's sessions are brought up to date in turn, three "
        "ways, each round starting with the next: **arcs** (a vector of "
        "`Arc<Session>`, each session an allocation of its own as ingest decodes it, merged by "
        "`state::merge`, which fills in what the delta left out; the vectors replaced dropped "
        "together every so many servers' samples, as the collector's publish drops them), "
        "**warmed** (the same, each vector read by `state::warm` before it is merged, as the "
        "aggregator does since stop 39), and **plain** (fixed-size "
        "sessions whose strings are interned ids, copied, the changed ones filled in from their "
        "base). The sessions are first allocated round the fleet, a server's session at a time, so "
        "that no server's lie together, and 10 seconds pass before any is timed. With thousands of "
        "servers no server's sessions are in the caches when its turn comes. The plain way does not "
        "list the sessions that left and joined, which the rollup and the load count take. The "
        "allocator is mimalloc, keeping the memory freed (`MIMALLOC_PURGE_DELAY=-1`), as the "
        f"collector sets it (this run: {PURGE_DELAY}). Each "
        f"figure is the median over {args.rounds} seconds of ns per "
        "server sample; the bench checks that every way ends with the same sessions.",
        "",
        "| servers | samples per publish | arcs ns/sample | warmed ns/sample | warmed / arcs | plain ns/sample | warmed / plain | bytes per session: model / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['servers']:,} | {r['per_publish']:,} | {r['arc_ns_per_sample']:,} "
            f"| {r['warmed_ns_per_sample']:,} | {r['warmed_ns_per_sample'] / r['arc_ns_per_sample']:.2f}× "
            f"| {r['plain_ns_per_sample']:,} | {r['warmed_ns_per_sample'] / r['plain_ns_per_sample']:.1f}× "
            f"| {r['session_bytes']} / {r['plain_bytes']} |"
        )
    section = "\n".join(lines) + "\n"
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

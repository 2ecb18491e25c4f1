#!/usr/bin/env python3
"""A query's page over a fleet's day: the hours that never ran it passed over
(stop 53).

Runs `cargo bench -p pgfleet-tests --bench load` with
`PGFLEET_BENCH_FLEET_DAY=N` and `PGFLEET_BENCH_FLEET_APPS=A`
(tests/benches/load.rs, its third part): a SQLite store given N servers' whole
day of minutes of load, the servers of A applications (server i of
application i mod A), each application on 40 statements of its own (the busy
OLTP server of "DB load", its fingerprints moved per application), and a
collector opened on it. Then the two questions of the web UI's page of one
query, about application 0's busiest statement, over the whole day at the
default step, over gRPC:

- its load on each server (`QueryLoad`, group_by server, `query="…"`), which
  passes over the hours whose dictionaries do not name it;
- its statistics (`TopQueries`, `query="…"`, limit 1);

each beside the same question asked by `query!~"…"` every other value: the
same tuples, so the same answer (the bench checks it), but no hour can be
passed over, so it reads and decodes every minute as `query="…"` did before.

Writes the "## A query's page over a fleet's day" section of BENCHMARKS.md
with the command.

    python3 bench/query_page.py [--servers 1000] [--apps 100] [--calls 3]
"""
import argparse
import sys
from pathlib import Path

from report import bench_json, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## A query's page over a fleet's day"
PAIRS = [
    ("`QueryLoad` by server", "query_load", "query_load_whole"),
    ("`TopQueries`, limit 1", "query_top", "query_top_whole"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=1_000)
    p.add_argument("--apps", type=int, default=100)
    p.add_argument("--calls", type=int, default=3, help="answers timed of each question")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    r = bench_json(["cargo", "bench", "-q", "-p", "pgfleet-tests", "--bench", "load"],
                   {"PGFLEET_BENCH_FLEET_DAY": str(args.servers),
                    "PGFLEET_BENCH_FLEET_APPS": str(args.apps),
                    "PGFLEET_BENCH_DAY_CALLS": str(args.calls)})
    minutes = r["servers"] * 1440
    ran = -(-r["servers"] // r["apps"])
    lines = [
        *heading(TITLE, "bench/query_page.py", sys.argv[1:]),
        f"A SQLite store of {r['servers']:,} servers' whole day of minutes of load ({minutes:,}"
        f" minutes, {r['store_mib']:,.0f} MiB), the servers of {r['apps']} applications, each"
        " application on statements of its own (every server the busy OLTP server of \"DB load\","
        " its fingerprints moved per application). A collector opened on it answers, over gRPC,"
        " the two questions of the web UI's page of one query, about application 0's busiest"
        f" statement (which ran on {ran} servers), over the whole day at the default step (30 min):"
        " asked by `query=\"…\"`, which passes over the server-hours whose dictionaries do not"
        " name it, and beside it by `query!~\"…\"` every other value, which takes the same tuples"
        " (the bench checks that the answers are the same) but cannot pass over an hour, so it"
        " reads and decodes every minute as `query=` did before. *s* is the median wall"
        f" time of {args.calls} answers; *peak MiB* the process's largest peak resident memory"
        " while it answers over its resident memory before it.",
        "",
        "| question | `query=`: s | peak MiB | every minute read: s | peak MiB | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for question, one, every in PAIRS:
        a, b = r["queries"][one], r["queries"][every]
        lines.append(
            f"| {question} | {a['p50_s']:.2f} | {a['peak_mib']:,.0f} | {b['p50_s']:.2f} |"
            f" {b['peak_mib']:,.0f} | {b['p50_s'] / max(a['p50_s'], 1e-9):.0f}× |")
    lines.append("")
    write_section(Path(args.output), TITLE, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

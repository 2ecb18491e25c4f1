#!/usr/bin/env python3
"""Fleet-wide DB load over a day, read minute by minute (stop 52).

Runs `cargo bench -p pgfleet-tests --bench load` with
`PGFLEET_BENCH_FLEET_DAY=N` (tests/benches/load.rs, its third part): a SQLite
store given N servers' whole day of minutes of load (each the busy OLTP
server's day of the "DB load" section: a load of about 5, 93 tuples a
minute, and statement statistics every 10 minutes) through its own writer,
a collector opened on it, and the questions that read every one of those
minutes, over gRPC: load by wait and by query (the default step, 30 min),
the top queries, connection churn. For each: its wall time, and the
process's peak resident memory while it answers over its resident memory
before it.

With `--baseline BIN` (the same bench built from an earlier tree: `cargo
bench --no-run -p pgfleet-tests --bench load` there, and the executable it
names) the earlier build answers first, at `--baseline-servers` servers (an
earlier build held a fleet's minutes whole: 3 GB for 100 servers' day), then
this tree at the same number, then this tree at `--servers`.

Writes the "## DB load over a fleet's day" section of BENCHMARKS.md with the
command.

    python3 bench/load_day.py [--servers 1000] [--calls 3] [--baseline BIN --baseline-servers 200]
"""
import argparse
import sys
from pathlib import Path

from report import bench_json, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## DB load over a fleet's day"
QUESTIONS = [
    ("load_by_wait", "`QueryLoad` by wait"),
    ("load_by_query", "`QueryLoad` by query"),
    ("top_queries", "`TopQueries`"),
    ("churn", "`GetChurn`"),
]


def run(command: list[str], servers: int, calls: int) -> dict:
    return bench_json(command, {"PGFLEET_BENCH_FLEET_DAY": str(servers),
                                "PGFLEET_BENCH_DAY_CALLS": str(calls)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=1_000)
    p.add_argument("--calls", type=int, default=3, help="answers timed of each question")
    p.add_argument("--baseline", help="the load bench's executable built from an earlier tree")
    p.add_argument("--baseline-name", default="the earlier build")
    p.add_argument("--baseline-servers", type=int, default=200)
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    this = ["cargo", "bench", "-q", "-p", "pgfleet-tests", "--bench", "load"]
    runs = []
    if args.baseline:
        runs.append((args.baseline_name, run([args.baseline, "--bench"], args.baseline_servers, args.calls)))
        runs.append(("this tree", run(this, args.baseline_servers, args.calls)))
    runs.append(("this tree", run(this, args.servers, args.calls)))
    lines = [
        *heading(TITLE, "bench/load_day.py", sys.argv[1:]),
        "A SQLite store given each server's whole day of minutes of load, every server the busy"
        " OLTP server of \"DB load\" (a load of about 5, 93 tuples a minute, statement statistics"
        " every 10 minutes), through its own writer; a collector opened on it answers, over gRPC,"
        " the fleet-wide questions that read every one of those minutes, over the whole day at"
        " their default step (30 min). *s* is the median wall time of"
        f" {args.calls} answers; *peak MiB* the process's largest peak resident memory while it"
        " answers (`VmHWM`, reset before each) over its resident memory before it.",
        "",
        "| build | servers | minutes read | store MiB | question | s | peak MiB | µs a minute |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs:
        minutes = r["servers"] * 1440
        for key, question in QUESTIONS:
            q = r["queries"][key]
            lines.append(
                f"| {name} | {r['servers']:,} | {minutes:,} | {r['store_mib']:,.0f} | {question} |"
                f" {q['p50_s']:.2f} | {q['peak_mib']:,.0f} | {q['p50_s'] * 1e6 / minutes:.1f} |")
    lines.append("")
    write_section(Path(args.output), TITLE, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Fleet-wide DB load over a day, read minute by minute (stop 52).

Runs `cargo bench -p pgfleet-tests --bench load` with
`PGFLEET_BENCH_FLEET_DAY=N` (tests/benches/load.rs, its third part): a SQLite
store given N servers' whole day of minutes of load (each the busy OLTP
server's day of the "DB load" section: a load of about 5, 93 tuples a
minute, and statement statistics every 10 minutes) through its own writer,
a collector opened on it, and the questions that read every one of those
minutes, over gRPC: load by wait and by query (a step of 30 min, a day's
default step before stop 55, which reads every minute; and a step of an hour, the
default for a fleet's day since stop 55, which reads the hours the
writer added up, stop 54), the top queries (whole hours of their load and,
since stop 55, of their statement statistics), connection churn. For each: its wall time, and the
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
    ("load_by_wait", "`QueryLoad` by wait, step 30 min"),
    ("load_by_wait_1h", "`QueryLoad` by wait, step 1 h"),
    ("load_by_query", "`QueryLoad` by query, step 30 min"),
    ("load_by_query_1h", "`QueryLoad` by query, step 1 h"),
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
        " fleet-wide questions over the whole day: load by wait and by query at a step of"
        " 30 min (asked: a fleet's day's default step is an hour since stop 55), which reads"
        " every minute, and at a step of an hour, which reads the"
        " hours the writer added up (each server's minutes of load of an hour in one row; a"
        " build without them reads every minute) but the first hour (it holds the store's"
        " oldest minute), the last (not whole) and any not added up yet; the top queries of the"
        " day (its whole hours as such, where added up, its load and its statement statistics); connection churn (every minute)."
        " *hours read whole*: the server-hours each answer read as one row"
        " (`pgfleet_collector_load_hours_whole_total`), each in place of its 60 minutes;"
        " *statement hours whole*: the server-hours of statement statistics it read as one row"
        " (`pgfleet_collector_statement_hours_whole_total`), each in place of its six 10-minute"
        " intervals."
        f" *s* is the median wall time of {args.calls} answers; *peak MiB* the process's"
        " largest peak resident memory while it answers (`VmHWM`, reset before each) over its"
        " resident memory before it; *µs a minute* the time over the day's minutes, whichever"
        " rows were read.",
        "",
        "| build | servers | minutes in the day | hours read whole | statement hours whole | store MiB | question | s | peak MiB | µs a minute |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs:
        minutes = r["servers"] * 1440
        for key, question in QUESTIONS:
            q = r["queries"].get(key)
            if q is None:
                continue
            whole = f"{q['hours_whole']:,.0f}" if "hours_whole" in q else "–"
            statements = (f"{q['statement_hours_whole']:,.0f}"
                          if "statement_hours_whole" in q else "–")
            lines.append(
                f"| {name} | {r['servers']:,} | {minutes:,} | {whole} | {statements} |"
                f" {r['store_mib']:,.0f} | {question} |"
                f" {q['p50_s']:.2f} | {q['peak_mib']:,.0f} | {q['p50_s'] * 1e6 / minutes:.1f} |")
    lines.append("")
    for name, r in runs:
        if "hours_s" in r:
            lines.append(
                f"{name}, {r['servers']:,} servers: the day written in {r['write_s']:.1f} s in the"
                " order of time (the writer adding up each hour as it went), the last hours"
                f" added up {r['hours_s']:.1f} s after the last write"
                + (f"; the writer spent {r['adding_s']:.1f} s adding the day's hours up"
                   f" ({r['adding_s'] * 1e3 / (r['servers'] * 24):.2f} ms a server-hour)."
                   if "adding_s" in r else "."))
    lines.append("")
    write_section(Path(args.output), TITLE, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

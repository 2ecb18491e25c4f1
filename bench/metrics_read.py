#!/usr/bin/env python3
"""What a QueryMetrics read of a fleet's stored minutes holds (stop 50).

Runs `cargo bench -p pgfleet-tests --bench metrics_read`
(tests/benches/metrics_read.rs): a SQLite store given a day of minutes of
1,000 servers through its own writer, then `sessions` by state over the whole
day, fleet-wide, a step of an hour, two ways in turn in one process: each
minute added up as the store reads it (QueryMetrics now), and every minute
held first, then added up (what QueryMetrics held before, less the map of
them and the range's cells it also built: a floor of its cost). Each read's wall time, and
the process's peak resident memory over it less its resident memory before.

Writes the "## QueryMetrics over a day" section of BENCHMARKS.md with the
command.

    python3 bench/metrics_read.py [--servers 1000] [--hours 24] [--rounds 2]
"""
import argparse
import statistics
import sys
from pathlib import Path

from report import cargo_bench, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## QueryMetrics over a day"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=1_000)
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2, help="reads of each way, in turn")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    r = cargo_bench("metrics_read", {"PGFLEET_BENCH_SERVERS": str(args.servers),
                                     "PGFLEET_BENCH_HOURS": str(args.hours),
                                     "PGFLEET_BENCH_ROUNDS": str(args.rounds)})
    ways = [("fold", "added up as read (now)"), ("collect", "all held, then added up (before)")]
    lines = [
        *heading(TITLE, "bench/metrics_read.py", sys.argv[1:]),
        f"A SQLite store given {r['hours']} h of minutes of {r['servers']:,} servers"
        f" ({r['minutes']:,} minutes, each with the 17 values of a server of 100 sessions) through its"
        " own writer; then `sessions` by state over the whole range, fleet-wide, a step of an hour"
        f" ({r['series']} series), read two ways in turn in one process. *Peak MiB* is the process's"
        " peak resident memory over the read (`VmHWM`, reset before it) less its resident memory"
        " before it.",
        "",
        "| round | way | s | peak MiB |",
        "|---|---|---|---|",
    ]
    for i in range(args.rounds):
        for way, name in ways:
            run = r[way][i]
            lines.append(f"| {i + 1} | {name} | {run['s']:.2f} | {run['peak_mib']:,.0f} |")
    median = {way: statistics.median(x["peak_mib"] for x in r[way]) for way, _ in ways}
    seconds = {way: statistics.median(x["s"] for x in r[way]) for way, _ in ways}
    lines += [
        "",
        f"Median peak: {median['fold']:,.0f} MiB added up as read, {median['collect']:,.0f} MiB all held;"
        f" median time {seconds['fold']:.2f} s against {seconds['collect']:.2f} s.",
        "",
    ]
    section = "\n".join(lines)
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

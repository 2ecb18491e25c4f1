#!/usr/bin/env python3
"""What a QueryMetrics read of a fleet's stored minutes holds, and what it
reads for a few servers (stops 50 and 51).

Runs `cargo bench -p pgfleet-tests --bench metrics_read`
(tests/benches/metrics_read.rs): a SQLite store given a day of minutes of
1,000 servers through its own writer, then `sessions` by state over the whole
day, a step of an hour, in one process:
- fleet-wide, three ways: whole hours read as one row each (QueryMetrics
  now), each minute added up as the store reads it (stop 50), and every
  minute held first, then added up (what
  QueryMetrics held before stop 50, less the map of them and the range's cells
  it also built: a floor of its cost), each read's wall time and the process's
  peak resident memory over it less its resident memory before;
- for one server and for ten, two ways in turn: each of their minutes found by
  its key (now), and the whole range read, theirs kept (before stop 51);
- one server's read while a fleet-wide read runs, on another connection.

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
    w = r["ways"]
    ways = [("fold", "whole hours as one row each, added up as read (now)"),
            ("by_minute", "minute by minute, added up as read (stop 50)"),
            ("collect", "minute by minute, all held, then added up (before stop 50)")]
    lines = [
        *heading(TITLE, "bench/metrics_read.py", sys.argv[1:]),
        f"A SQLite store given {r['hours']} h of minutes of {r['servers']:,} servers"
        f" ({r['minutes']:,} minutes, each with the 17 values of a server of 100 sessions) through its"
        f" own writer (in {r['written_s']:.1f} s, the writer adding up each hour's rows as it went; the"
        f" last hour's done {r['hours_s']:.1f} s after the last write); then `sessions` by state over"
        " the whole range, a step of an hour, all in one process.",
        "",
        f"Fleet-wide ({r['series']} series), read three ways. *Peak MiB* is the process's"
        " peak resident memory over the read (`VmHWM`, reset before it) less its resident memory"
        " before it. The reads that hold every minute come last: the first of them leaves the"
        " allocator some 1.9 GB of blocks to gather, which the next read would pay for.",
        "",
        "| round | way | s | peak MiB |",
        "|---|---|---|---|",
    ]
    for way, name in ways:
        for i, run in enumerate(w[way]):
            lines.append(f"| {i + 1} | {name} | {run['s']:.2f} | {run['peak_mib']:,.0f} |")
    # The largest: after the first read that holds every minute, the memory
    # it freed is still resident, so the next one's peak over it is less.
    peak = {way: max(x["peak_mib"] for x in w[way]) for way, _ in ways}
    seconds = {way: statistics.median(x["s"] for x in w[way]) for way, _ in ways}
    lines += [
        "",
        f"Median time: {seconds['fold']:.2f} s by whole hours, {seconds['by_minute']:.2f} s minute by"
        f" minute ({seconds['by_minute'] / seconds['fold']:.0f}×), {seconds['collect']:.2f} s all held."
        f" Largest peak: {peak['fold']:,.0f} and {peak['by_minute']:,.0f} MiB added up as read,"
        f" {peak['collect']:,.0f} MiB all held (after the first read that holds them, the memory it"
        " freed stays resident, so a later one's peak above it is less). All three give the same"
        " series (the bench checks).",
        "",
        "A few servers (`server_id=\"bench-00042\"`, and `server_id=~\"bench-0001.\"` for ten), read"
        " two ways in turn: each of their minutes found by its key, (minute, server), as"
        " QueryMetrics now reads up to 64 servers; and the whole range read, theirs kept, as it"
        " read them before. Both give the same series (the bench checks). Seconds per read:",
        "",
        "| round | servers | found by key | whole range read | whole / by key |",
        "|---|---|---|---|---|",
    ]
    for n, name in [(1, "one"), (10, "ten")]:
        for i, (k, whole) in enumerate(zip(w[f"{name}_keyed"], w[f"{name}_whole"])):
            lines.append(f"| {i + 1} | {n} | {k['s']:.3f} | {whole['s']:.3f} | {whole['s'] / k['s']:,.0f}× |")
    lines.append("")
    for n, name in [(1, "one"), (10, "ten")]:
        k = statistics.median(x["s"] for x in w[f"{name}_keyed"])
        whole = statistics.median(x["s"] for x in w[f"{name}_whole"])
        lines.append(f"- {n} server{'s' if n > 1 else ''}: {k * 1000:,.0f} ms found by key against"
                     f" {whole:.2f} s with the whole range read (medians).")
    lines.append("")
    during = statistics.median(x["s"] for x in w["one_during_whole"])
    beside = statistics.median(x["s"] for x in w["whole_beside_one"])
    lines += [
        "One server's day read again, 0.5 s into a fleet-wide day's read, on another of the"
        " store's three connections for reads: " + ", ".join(f"{x['s'] * 1000:,.0f}" for x in w["one_during_whole"])
        + f" ms (median {during * 1000:,.0f} ms), while the fleet-wide read took {beside:.2f} s"
        " (median). With one connection, as before stop 51, it waited for the fleet-wide read to end.",
        "",
    ]
    section = "\n".join(lines)
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

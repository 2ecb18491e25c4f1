#!/usr/bin/env python3
"""Two load generator builds side by side: this tree's and a baseline, at once.

The load generator (`pgfleet-loadgen`) shares this 2-core machine with the
collector it measures, so what it costs is CPU the collector does not get.
A change to the generator is measured against the build before it in the
same run: two collectors of this tree start (SQLite store, DB load kept, each
in its own temporary directory), and each gets its own generator of N agents,
one this tree's and one the baseline's, both at once. Each run is repeated
with the two swapped (which one starts first), --runs times.

Writes a table of each generator's CPU per batch it sent, and of its
collector's CPU per batch applied, to BENCHMARKS.md with the command that
made it. The collectors are the same build, so their CPU per batch shows
whether the two generators give them the same work.

    python3 bench/generator_ab.py --baseline PATH/TO/pgfleet-loadgen [--agents 2500] [--measure 60] [--runs 3]

A baseline is any release build of `pgfleet-loadgen`, for instance of the
commit before a change: `git worktree add /tmp/base HEAD~1 && cargo build
--release -p pgfleet-loadgen --manifest-path /tmp/base/Cargo.toml`.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
from pathlib import Path

from collector_ab import collector_argv, run_pair
from collector_load import build
from report import machine_name, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Generator side by side"
CONNECT_RATE = 500


def per_batch(r: dict, cores: str) -> float:
    return 1e6 * r[cores] / r["batches_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the baseline's pgfleet-loadgen binary")
    p.add_argument("--baseline-note", default="a release build given by path",
                   help="what the baseline is, for the report (e.g. 'the release build of 17c833e')")
    p.add_argument("--agents", type=int, default=2500, help="agents of each generator")
    p.add_argument("--warmup", type=int, default=20, help="seconds after the ramp before measuring")
    p.add_argument("--measure", type=int, default=60, help="seconds measured")
    p.add_argument("--runs", type=int, default=3, help="runs, each build first in turn")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    if args.measure < 20:
        raise SystemExit(f"--measure {args.measure}: give at least 20 s (the generators' CPU is read over the window less 10 s)")
    baseline = Path(args.baseline).resolve()
    if not baseline.is_file():
        raise SystemExit(f"--baseline {args.baseline}: no such file; give a pgfleet-loadgen binary")
    bin_dir = build()
    # Both collectors this tree's; each its own generator.
    collector = collector_argv(bin_dir / "pgfleet-collector")
    builds = [("this tree", collector, bin_dir / "pgfleet-loadgen"), ("baseline", collector, baseline)]
    rows = []
    for i in range(args.runs):
        order = builds if i % 2 == 0 else builds[::-1]
        rows.extend((i + 1, r) for r in run_pair(bin_dir, order, args, generator=(),
                                                  connect_rate=CONNECT_RATE, generator_cpu=True))
    command = f"python3 bench/generator_ab.py --baseline {args.baseline} --baseline-note '{args.baseline_note}'" + "".join(
        f" --{k} {v}" for k, v, d in (("agents", args.agents, 2500), ("measure", args.measure, 60),
                                       ("runs", args.runs, 3)) if v != d)
    median = {name: {c: statistics.median(per_batch(r, c) for _, r in rows if r["build"] == name)
                     for c in ("generator_cores", "collector_cores")}
              for name, *_ in builds}
    table = "\n".join(
        f"| {run} | {r['build']} | {r['batches_per_s']:,.0f} | {per_batch(r, 'generator_cores'):.0f} | "
        f"{per_batch(r, 'collector_cores'):.0f} | {r['wire_bytes_per_batch']:,.0f} | "
        f"{r['freshness_p99_ms']:,.0f} | {r['errors']} |"
        for run, r in rows)
    ratio = {c: median["this tree"][c] / median["baseline"][c] for c in ("generator_cores", "collector_cores")}
    section = f"""{TITLE}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine_name()}. The baseline: {args.baseline_note}.

Two collectors of this tree at once, each under its own generator of {args.agents:,} agents (one server of 100 sessions each, about 10% changing each second, 1 Hz, one HTTP/2 connection each, zstd batches), one generator this tree's and one the baseline's; {args.warmup} s after the ramp, measured for {args.measure} s; the runs swap which one starts first. A generator's µs/batch is its CPU (every thread, from `/proc/<pid>/task/*/schedstat`, over the window less 5 s at each end) over the batches it sent; a collector's, its CPU over the batches it applied. Both collectors are the same build, so theirs shows whether the generators give them the same work. Batch bytes are before compression.

| run | generator | batches/s | generator µs/batch | collector µs/batch | batch bytes | freshness p99 ms | agent errors |
|---|---|---|---|---|---|---|---|
{table}

Medians: the generator {per_batch_text(median, 'generator_cores')} ({ratio['generator_cores']:.2f}×); its collector {per_batch_text(median, 'collector_cores')} ({ratio['collector_cores']:.2f}×).
"""
    write_section(Path(args.output), TITLE, section)
    print(section)


def per_batch_text(median: dict, cores: str) -> str:
    return f"{median['this tree'][cores]:.0f} µs a batch against the baseline's {median['baseline'][cores]:.0f}"


if __name__ == "__main__":
    main()

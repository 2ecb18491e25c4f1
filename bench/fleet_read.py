#!/usr/bin/env python3
"""What a fleet-wide read of the live view costs at 10,000 servers (issue 17).

Runs `cargo bench -p pgfleet-tests --bench fleet_read` (tests/benches/fleet_read.rs):
an aggregator fed 10,000 servers of 100 sessions (the load generator's server and
labels), then FleetSummary's work timed over the published view, whole and
grouped by dc, each call after the caches were filled with other memory.

With --baseline BIN (the same bench built from another commit), the two run
alternately in one run (baseline, this tree, baseline, ...), so that their
ratio holds on a shared machine where absolute times move.

Writes the "## Fleet-wide reads" section of BENCHMARKS.md with the command.

    python3 bench/fleet_read.py [--rounds 3] [--baseline BIN]
"""
import argparse
import sys
from pathlib import Path

from report import bench_json, heading, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Fleet-wide reads"


def run(command: list[str], servers: int) -> dict:
    return bench_json(command, {"PGFLEET_BENCH_SERVERS": str(servers)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="runs of each build")
    p.add_argument("--servers", type=int, default=10_000)
    p.add_argument("--baseline", help="the fleet_read bench binary of another build, run alongside")
    p.add_argument("--baseline-name", default="baseline", help="what to call it in the table")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()

    this = ["cargo", "bench", "-q", "-p", "pgfleet-tests", "--bench", "fleet_read"]
    runs: list[tuple[str, dict]] = []
    for _ in range(args.rounds):
        if args.baseline:
            runs.append((args.baseline_name, run([args.baseline, "--bench"], args.servers)))
        runs.append(("this tree", run(this, args.servers)))

    lines = [
        *heading(TITLE, "bench/fleet_read.py", sys.argv[1:]),
        f"An aggregator fed {args.servers:,} servers of 100 sessions (the load generator's server, "
        "labelled by dc, by clusters of four and by role), three samples each; then FleetSummary's "
        "work over the published view, whole and grouped by dc, each call after 64 MiB of other "
        "memory was read (under load the caches hold what ingest touched). Each row is one run: "
        "200 calls of each, after 10 untimed; times are p50 / p99 in µs, and the p50 per server in ns."
        + (" The builds ran alternately in one run." if args.baseline else ""),
        "",
        "| run | build | whole µs | by dc µs | whole ns/server | by dc ns/server |",
        "|---|---|---|---|---|---|",
    ]
    for i, (name, r) in enumerate(runs, 1):
        whole, dc = r["fleet_summary_us"], r["fleet_summary_by_dc_us"]
        lines.append(
            f"| {i} | {name} | {whole['p50']:,.0f} / {whole['p99']:,.0f} | {dc['p50']:,.0f} / {dc['p99']:,.0f} "
            f"| {r['fleet_summary_ns_per_server']:.1f} | {r['fleet_summary_by_dc_ns_per_server']:.1f} |"
        )
    if args.baseline:
        lines.append("")

        def median(name: str, key: str) -> float:
            values = sorted(r[key]["p50"] for n, r in runs if n == name)
            return values[len(values) // 2]
        for key, what in [("fleet_summary_us", "whole"), ("fleet_summary_by_dc_us", "by dc")]:
            base, new = median(args.baseline_name, key), median("this tree", key)
            lines.append(f"- {what}: {new:,.0f} µs against {base:,.0f} µs ({args.baseline_name}), "
                         f"{base / new:.0f}× less (median of the runs' p50).")
    section = "\n".join(lines) + "\n"
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

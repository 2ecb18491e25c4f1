#!/usr/bin/env python3
"""What watching a server costs, against how many sessions it has: pgfleet-agent
beside the origin article's way (SQLAlchemy polling pg_stat_activity), over the
Unix socket and over TCP, against the same server in the same run.

For each number of sessions (250, 1,000, 2,000 and 4,000 by default), this script:

1. starts a throwaway PostgreSQL 15 and fills it with that many client sessions,
   each running `SELECT pg_sleep(…)` for 5–15 s at a time (so about a tenth of
   them start a query each second: 100 a second at 1,000 sessions);
2. for each transport, measures one after the other over the same window
   (30 samples by default):
   - pgfleet-agent (release build) sampling every second and streaming to a real
     pgfleet-collector: CPU per sample of the agent and of its PostgreSQL backend;
   - with --baseline-agent, an older agent binary the same way, for a before and
     after in one run;
   - SQLAlchemy 2.x polling `SELECT * FROM pg_stat_activity` every second and
     fetching every row, with `engine.pool.status()`: the Python process and its
     backend;
3. writes the figures, a chart (bench/watch_cost.svg and, when Chromium is
   there to draw it, bench/watch_cost.png) and the command to BENCHMARKS.md.

CPU is read from /proc/<pid>/task/*/schedstat at the start and end of the
window (see agent_overhead.py).

Usage: python3 bench/watch_cost.py [--sessions 250,1000,2000,4000] [--samples 30]
       [--transports unix,tcp] [--baseline-agent PATH]
Needs: PostgreSQL 15 server binaries, pgbench, python3 with sqlalchemy and psycopg2
(pip install -r bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import agent_overhead as ao
from report import chart, machine_name, to_png, write_section

ROOT = ao.ROOT
log = ao.log


def measure_agent(cluster: ao.Cluster, binary: Path, samples: int) -> dict:
    r = ao.measure_agent(cluster, samples, binary, ("--statements-interval", "off"))
    return {"samples": r["samples"], "cpu_ms": r["cpu_ms_per_sample"], "backend_ms": r["backend_ms_per_sample"]}


def measure_sqlalchemy(cluster: ao.Cluster, samples: int) -> dict:
    r = ao.measure_sqlalchemy(cluster, samples)
    return {"samples": r["samples"], "cpu_ms": r["cpu_ms_per_sample"], "backend_ms": r["backend_ms_per_sample"]}


def start_sessions(cluster: ao.Cluster, n: int) -> subprocess.Popen:
    script = cluster.dir / "sleep.sql"
    script.write_text("\\set ms random(5000, 15000)\nSELECT pg_sleep(:ms / 1000.0);\n")
    os.chmod(script, 0o644)
    proc = cluster.pgbench(["-n", "-c", str(n), "-j", "2", "-T", "100000", "-f", str(script)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    count = 0
    for _ in range(300):
        count = int(cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))
        if count >= n:
            break
        time.sleep(1)
    if count < n:
        sys.exit(f"bench: only {count} of {n} sessions connected")
    time.sleep(5)
    return proc


def exponent(points: list[tuple[int, float]]) -> float:
    """The slope of log(cost) against log(sessions), least squares."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(max(v, 1e-9)) for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


COLOURS = {"agent backend": "#1f77b4", "agent": "#2ca02c", "SQLAlchemy backend": "#d62728",
           "SQLAlchemy (Python)": "#ff7f0e", "agent before, backend": "#9467bd"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", default="250,1000,2000,4000")
    p.add_argument("--samples", type=int, default=30, help="samples (seconds) per measurement window")
    p.add_argument("--transports", default="unix,tcp")
    p.add_argument("--baseline-agent", help="an older pgfleet-agent binary, measured beside this one")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    command = " ".join(["python3 bench/watch_cost.py", *sys.argv[1:]])
    sizes = [int(s) for s in args.sessions.split(",")]
    transports = args.transports.split(",")
    baseline = Path(args.baseline_agent).resolve() if args.baseline_agent else None

    log("building the release binaries")
    subprocess.run(["cargo", "build", "--release", "--bin", "pgfleet-agent", "--bin", "pgfleet-collector",
                    "--bin", "pgfleet"], cwd=ROOT, check=True)
    results = []
    for n in sizes:
        cluster = ao.Cluster(ao.pg_bindir())
        sessions = None
        try:
            cluster.start(ao.Cluster.SETTINGS.replace("max_connections=1100", f"max_connections={n + 100}"))
            log(f"PostgreSQL on port {cluster.port}: starting {n} sleeping sessions")
            sessions = start_sessions(cluster, n)
            for transport in transports:
                ao.TRANSPORT = transport
                row = {"sessions": n, "transport": transport}
                log(f"{n} sessions, {transport}: pgfleet-agent")
                row["agent"] = measure_agent(cluster, ROOT / "target/release/pgfleet-agent", args.samples)
                if baseline:
                    log(f"{n} sessions, {transport}: the baseline agent")
                    row["baseline"] = measure_agent(cluster, baseline, args.samples)
                log(f"{n} sessions, {transport}: SQLAlchemy")
                row["sqlalchemy"] = measure_sqlalchemy(cluster, args.samples)
                log(json.dumps(row))
                results.append(row)
        finally:
            if sessions:
                sessions.kill()
                sessions.wait()
            cluster.stop()
    write_report(args, command, results, baseline)


def write_report(args, command: str, results: list[dict], baseline: Path | None) -> None:
    pg = subprocess.run([str(ao.pg_bindir() / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    today = datetime.date.today().isoformat()
    lines = [
        "## The cost of watching a server",
        "",
        f"Command: `{command}` (from the repository root; it builds the release binaries). Run on {today} "
        f"on {machine_name()}; {pg}.",
        "Each server has N client sessions, each running `SELECT pg_sleep(…)` for 5–15 s at a time "
        "(about N/10 start a query each second). One after the other over the same "
        f"{args.samples}-second window, each watcher samples once a second: pgfleet-agent streaming to a "
        "collector"
        + (f", the agent before this change (`{baseline.name}`)" if baseline else "")
        + ", and the origin article's way: SQLAlchemy 2.x running `SELECT * FROM pg_stat_activity`, "
        "fetching every row and reading `engine.pool.status()`. CPU is ms per sample, of the process (every "
        "thread) and of the PostgreSQL backend that serves it. *Whole* is process plus backend; the "
        "ratio is SQLAlchemy's whole over the agent's.",
        "",
    ]
    head = "| sessions | transport | agent | agent backend | agent whole |"
    if baseline:
        head += " before: agent | before: backend |"
    head += " SQLAlchemy (Python) | SQLAlchemy backend | SQLAlchemy whole | ratio |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        a, s = r["agent"], r["sqlalchemy"]
        whole_a, whole_s = a["cpu_ms"] + a["backend_ms"], s["cpu_ms"] + s["backend_ms"]
        row = f"| {r['sessions']:,} | {r['transport']} | {a['cpu_ms']:.3f} | {a['backend_ms']:.3f} | {whole_a:.3f} |"
        if baseline:
            b = r["baseline"]
            row += f" {b['cpu_ms']:.3f} | {b['backend_ms']:.3f} |"
        row += f" {s['cpu_ms']:.3f} | {s['backend_ms']:.3f} | {whole_s:.3f} | {whole_s / whole_a:.1f}× |"
        lines.append(row)
    lines.append("")

    verdict = lambda ok: "meets" if ok else "MISSES"
    at_1000 = [r for r in results if r["sessions"] == 1000]
    if at_1000:
        lines.append("Targets at 1,000 sessions:")
        for r in at_1000:
            a, s = r["agent"], r["sqlalchemy"]
            ratio = (s["cpu_ms"] + s["backend_ms"]) / (a["cpu_ms"] + a["backend_ms"])
            lines.append(f"- {r['transport']}: the agent's backend {a['backend_ms']:.2f} ms (at most 3 ms: "
                         f"{verdict(a['backend_ms'] <= 3)}); the agent {a['cpu_ms']:.2f} ms (at most 0.5 ms: "
                         f"{verdict(a['cpu_ms'] <= 0.5)}); the whole {ratio:.1f}× less than SQLAlchemy's "
                         f"(at least 4×: {verdict(ratio >= 4)}).")
        lines.append("")

    # One line per process and transport: the first transport solid, the
    # others dashed in the same colour.
    by_transport: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in results:
        series = by_transport.setdefault(r["transport"], {})
        n = r["sessions"]
        series.setdefault("agent backend", []).append((n, r["agent"]["backend_ms"]))
        series.setdefault("agent", []).append((n, r["agent"]["cpu_ms"]))
        if baseline:
            series.setdefault("agent before, backend", []).append((n, r["baseline"]["backend_ms"]))
        series.setdefault("SQLAlchemy backend", []).append((n, r["sqlalchemy"]["backend_ms"]))
        series.setdefault("SQLAlchemy (Python)", []).append((n, r["sqlalchemy"]["cpu_ms"]))
    first = results[0]["transport"]
    if len(by_transport[first]["agent backend"]) >= 2:
        for transport, series in by_transport.items():
            if len(series["agent backend"]) < 2:
                continue
            lines.append(f"Growth ({transport}), the slope of log CPU against log sessions over "
                         f"{', '.join(f'{n:,}' for n, _ in series['agent backend'])} sessions (1 is linear, 2 "
                         "quadratic): " + "; ".join(f"{name} {exponent(pts):.2f}" for name, pts in series.items()) + ".")
            lines.append("")
        drawn: dict[str, list[tuple[int, float]]] = {}
        colours: dict[str, str] = {}
        dashed: set[str] = set()
        for transport, series in by_transport.items():
            for name, pts in series.items():
                label = f"{name} ({transport})"
                drawn[label] = pts
                colours[label] = COLOURS[name]
                if transport != first:
                    dashed.add(label)
        svg, png = ROOT / "bench/watch_cost.svg", ROOT / "bench/watch_cost.png"
        others = [t for t in by_transport if t != first]
        transports = f"{first} solid" + (f", {', '.join(others)} dashed" if others else "")
        size = chart(drawn, f"CPU per sample against sessions ({transports}; both axes logarithmic)", svg,
                     xlabel="sessions", ylabel="CPU ms per sample", colours=colours, dashed=dashed)
        image = "bench/watch_cost.png" if to_png(svg, size, png) else "bench/watch_cost.svg"
        lines += [f"![CPU per sample against sessions]({image})", ""]
    write_section(Path(args.output), "## The cost of watching a server", "\n".join(lines) + "\n")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The collector across an hour's end, with a whole hour of the fleet's load behind it.

Every server's minute of DB load ends in the same second, and so does every
server's hour: a few minutes after the hour ends, the SQLite store's writer
adds each server's 60 minutes up into hours (rollups, load tuples, churn),
paced after its commits. bench/collector_load.py measures 60 s within a
minute; this measures the minutes round an hour's end, which takes a run of
over an hour: the generator's N agents (as in bench/collector_load.py) start
at least an hour before the hour's end they are measured across, so that the
hour before it is whole.

Every second it reads the collector's CPU (by thread, and the whole
process's) and its RSS from /proc; the
generator traces every GetActivity (its freshness); the collector's
/metrics is read before and after the window for the time its writer spent
building hours and the time the aggregator waited on the store. It writes a
table of steps (--step) round the hour's end, and a chart, to BENCHMARKS.md.

    python3 bench/hour_end.py [--agents 10000] [--before 120] [--after 900] [--step 30]

`--boundary minute` measures across the next minute's end instead: a check
of the script (with `--before 20 --after 30`, in some two minutes), not a
figure (it writes no section).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from agent_overhead import cpu_ns
from collector_load import build, free_port, stop_collector
from report import heading, staged, to_png, wait_port, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## An hour's end at 10,000 servers"
# How often the collector's CPU and RSS are read (its threads' CPU in ns, the whole
# process's in /proc's 10 ms ticks).
SAMPLE_S = 1
# The collector's threads, by the name /proc gives them (15 characters).
THREADS = {"pgfleet-store": "writer", "pgfleet-aggrega": "aggregator", "pgfleet-ingest": "ingest"}
FRESHNESS_TARGET_MS = 2000.0
METRICS = ("pgfleet_collector_store_hours_seconds_total", "pgfleet_collector_store_wait_seconds_total")


def sample(pid: int) -> dict:
    """The process's RSS (KiB) and CPU seconds by thread name, now."""
    tick = os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    cpu = {name: cpu_ns(pid, name) / 1e9 for name in THREADS}
    # The whole process's, which keeps the CPU of threads that have ended
    # (the readers' blocking threads, `pgfleet-reads`, where the store's reads
    # run, end when idle).
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rindex(")") + 2:].split()
    total = (int(fields[11]) + int(fields[12])) / tick
    return {"t": time.time(), "rss_kib": rss, "total": total, "cpu": cpu}


def sampler(pid: int, out: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out.append(sample(pid))
        except OSError:
            return
        stop.wait(SAMPLE_S)


def metrics(port: int) -> dict[str, float]:
    """The collector's own counters of METRICS from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in METRICS:
            found[name] = float(value)
    return found


def store_bytes(data: Path) -> int:
    """The SQLite store's size on disk: its file and its write-ahead log."""
    return sum(f.stat().st_size for f in (data / "store").glob("pgfleet.sqlite*"))


def boundary_after(now: float, unit: int, lead: float) -> float:
    """The first multiple of `unit` seconds at least `lead` seconds after `now`."""
    return math.ceil((now + lead) / unit) * unit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--connect-rate", type=int, default=500)
    p.add_argument("--before", type=int, default=120, help="seconds measured before the hour's end")
    p.add_argument("--after", type=int, default=900,
                   help="seconds measured after it: the writer adds the fleet's hour up from 2 minutes "
                        "after it, paced, for some minutes")
    p.add_argument("--step", type=int, default=30, help="seconds a row of the table covers")
    p.add_argument("--boundary", choices=["hour", "minute"], default="hour")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--report-from", metavar="JSON",
                   help="write the section again from a run's figures (bench/hour_end.json), without running")
    args = p.parse_args()
    if args.report_from:
        run = json.loads(Path(args.report_from).read_text())
        args.agents, args.before, args.after = run["agents"], run["before"], run["after"]
        args.step = run["rows"][1]["from_s"] - run["rows"][0]["from_s"]
        report(run["rows"], run["summary"], run["metrics_before"], run["metrics_after"], args, run["end"],
               run["argv"])
        return

    bin_dir = build()
    data = Path(tempfile.mkdtemp(prefix="pgfleet-hour-"))
    port, query_port, http_port = free_port(), free_port(), free_port()
    log = open(data / "collector.log", "w")
    collector = subprocess.Popen(
        [str(staged(bin_dir / "pgfleet-collector")), "--listen", f"127.0.0.1:{port}",
         "--http-listen", f"127.0.0.1:{http_port}", "--query-listen", f"127.0.0.1:{query_port}",
         "--data-dir", str(data / "store")],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PGFLEET_LOG="warn"))
    samples: list[dict] = []
    stop = threading.Event()
    try:
        wait_port(http_port, 30, collector)
        base_rss = sample(collector.pid)["rss_kib"]
        threading.Thread(target=sampler, args=(collector.pid, samples, stop), daemon=True).start()
        ramp = args.agents / args.connect_rate
        # The hour before the end must be whole: the agents are in before it starts.
        unit = 3600 if args.boundary == "hour" else 60
        lead = (unit if args.boundary == "hour" else 0) + ramp + args.before + 30
        end = boundary_after(time.time(), unit, lead)
        start = end - args.before
        warmup = int(start - time.time() - ramp - 2)
        trace = data / "trace.txt"
        cmd = [str(bin_dir / "pgfleet-loadgen"), "--collector", f"http://127.0.0.1:{port}",
               "--query", f"http://127.0.0.1:{query_port}", "--collector-pid", str(collector.pid),
               "--agents", str(args.agents), "--connect-rate", str(args.connect_rate),
               # Some slack: the window starts once the ramp is done, which may
               # take longer than agents over rate; steps keep to [start, end + after).
               "--warmup", f"{warmup}s", "--measure", f"{args.before + args.after + 10}s",
               "--trace", str(trace)]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        print(f"measuring {time.strftime('%H:%M:%S', time.gmtime(start))} to "
              f"{time.strftime('%H:%M:%S', time.gmtime(end + args.after))} UTC", file=sys.stderr, flush=True)
        gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(max(0.0, start - 20 - time.time()))
        before = metrics(http_port)
        time.sleep(max(0.0, start - time.time()))
        before["store_bytes"] = store_bytes(data)
        time.sleep(max(0.0, end + args.after - time.time()))
        after_bytes = store_bytes(data)
        out, err = gen.communicate()
        after = metrics(http_port)
        after["store_bytes"] = after_bytes
        if gen.returncode != 0:
            log.flush()
            tail = (data / "collector.log").read_text()[-2000:]
            sys.exit(f"the generator failed: {err.strip().splitlines()[-1:]}; the collector's log ends:\n{tail}")
        summary = json.loads(out)
        trace_lines = trace.read_text().splitlines()
    finally:
        stop.set()
        stop_collector(collector, log, data)
    rows = steps(trace_lines, samples, start, end, args, base_rss)
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    if args.boundary != "hour":
        print(f"--boundary minute: a check of the script, no section written; chart: {draw(rows, Path(tempfile.gettempdir()))}",
              file=sys.stderr)
        return
    argv = sys.argv[1:]
    # The figures, so that the section can be written again (--report-from).
    (ROOT / "bench/hour_end.json").write_text(json.dumps({
        "agents": args.agents, "before": args.before, "after": args.after, "end": end, "argv": argv,
        "base_rss": base_rss,
        "rows": rows, "summary": summary, "metrics_before": before, "metrics_after": after}, indent=1) + "\n")
    report(rows, summary, before, after, args, end, argv)


def at(samples: list[dict], t: float, value) -> float | None:
    """`value` of the samples (a running total) at `t`, between the two read
    either side of it; None outside them."""
    for a, b in zip(samples, samples[1:]):
        if a["t"] <= t <= b["t"]:
            share = (t - a["t"]) / (b["t"] - a["t"]) if b["t"] > a["t"] else 0.0
            return value(a) + (value(b) - value(a)) * share
    return None


def steps(trace_lines: list[str], samples: list[dict], start: float, end: float, args, base_rss: int) -> list[dict]:
    """A row per `args.step` seconds from the window's start: freshness from the trace, the
    threads' cores and RSS from the samples (each running total taken at the
    step's two ends), time as seconds from the end."""
    step = args.step
    fresh: dict[int, list[float]] = {}
    for line in trace_lines:
        parts = line.split()
        if len(parts) < 2:
            continue
        t = float(parts[0]) / 1000
        if start <= t < end + args.after:
            fresh.setdefault(int((t - end) // step), []).append(float(parts[1]))
    rows = []
    for k in range(-(args.before // step), args.after // step):
        lo, hi = end + k * step, end + (k + 1) * step
        row = {"from_s": k * step}
        f = sorted(fresh.get(k, []))
        if f:
            row["freshness_p50_ms"] = statistics.median(f)
            row["freshness_max_ms"] = f[-1]
            row["reads"] = len(f)
        columns = {f"{label}_cores": (lambda s, name=name: s["cpu"].get(name, 0.0))
                   for name, label in THREADS.items()}
        columns["cores"] = lambda s: s["total"]
        for column, value in columns.items():
            a, b = at(samples, lo, value), at(samples, hi, value)
            if a is not None and b is not None:
                row[column] = (b - a) / step
        rss = at(samples, hi, lambda s: s["rss_kib"])
        if rss is not None:
            row["kib_per_server"] = (rss - base_rss) / args.agents
        rows.append(row)
    return rows


def fmt(v, digits=2) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def report(rows: list[dict], summary: dict, before: dict, after: dict, args, end: float, argv: list[str]) -> None:
    n = args.agents
    p99 = summary.get("freshness_p99_ms")
    held = (summary["batches_per_s"] >= 0.98 * n and summary["servers_up"] == n
            and p99 is not None and p99 <= FRESHNESS_TARGET_MS)
    grew = lambda key: after[key] - before[key] if key in after and key in before else None
    hours_s, wait_s = grew(METRICS[0]), grew(METRICS[1])
    cores, batches = summary.get("collector_cores"), summary["batches_per_s"]
    us_per_batch = cores / batches * 1e6 if cores is not None and batches > 0 else None
    window_s = args.before + args.after
    grown = grew("store_bytes")
    lines = heading(TITLE, "bench/hour_end.py", argv)
    lines[2] = lines[2].rstrip(".") + "; the collector, its SQLite store and the generator share the machine."
    ended = time.strftime("%H:%M", time.gmtime(end))
    lines += [
        f"{n:,} agents (one server of 100 sessions each, about 10% changing each second, 1 Hz, one HTTP/2 "
        f"connection each, zstd, as in \"Collector load\") streamed from over an hour before the hour's end at "
        f"{ended} UTC, so the hour before it was whole; measured from {args.before} s before it to {args.after} s "
        f"after. Freshness is now minus the time of the sample a GetActivity of a random server returned "
        f"(on the readers' port), so at 1 Hz it is 0–1 s by itself; *cores* are CPU seconds a second of the "
        f"store's writer, the aggregator, the ingest runtime's workers (`pgfleet-ingest`, `tokio-rt-worker` before stop 61) and the whole collector, read from /proc "
        f"every {SAMPLE_S} s; KiB/server is RSS less its RSS before the agents came, over N.",
        "",
        f"- **Held across the hour's end: {'yes' if held else 'NO'}.** {summary['batches_per_s']:,.0f} batches a second, "
        f"{summary['servers_up']:,} servers up, freshness p50 {fmt(summary.get('freshness_p50_ms'), 0)} ms, "
        f"p99 {fmt(p99, 0)} ms, max {fmt(summary.get('freshness_max_ms'), 0)} ms "
        f"(target p99 ≤ {FRESHNESS_TARGET_MS:,.0f} ms), over {summary['freshness_samples']:,} reads; "
        f"agent errors {summary['errors']}.",
        f"- **The writer's hours:** {fmt(hours_s, 1)} s of its time in its steps of adding hours up over the "
        f"window (`pgfleet_collector_store_hours_seconds_total`; a step after every commit, due from 2 minutes "
        f"after the hour's end); the aggregator waited "
        f"{fmt(wait_s, 1)} s for room in the store's queue (`pgfleet_collector_store_wait_seconds_total`).",
        f"- **Disk:** the store grew by {fmt(grown and grown / 2**30, 1)} GiB over the window's {window_s} s, "
        f"{fmt(grown and grown / n / window_s * 3600 / 2**20, 1)} MiB a server-hour, nearly all of it the frames "
        f"that `--retention-frames` keeps (24 h by default). The file held "
        f"{fmt(after.get('store_bytes', 0) / 2**30, 1)} GiB at the window's end.",
        f"- **CPU:** the collector {fmt(cores)} cores over the window, "
        f"{fmt(us_per_batch, 0)} µs a batch; memory "
        f"{fmt(summary.get('collector_kib_per_server'), 0)} KiB a server at the window's end.",
        "",
        "| from the hour's end, s | freshness p50 ms | freshness max ms | writer cores | aggregator cores "
        "| ingest cores | collector cores | KiB/server |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['from_s']:+d} | {fmt(r.get('freshness_p50_ms'), 0)} | {fmt(r.get('freshness_max_ms'), 0)} "
            f"| {fmt(r.get('writer_cores'))} | {fmt(r.get('aggregator_cores'))} | {fmt(r.get('ingest_cores'))} "
            f"| {fmt(r.get('cores'))} | {fmt(r.get('kib_per_server'), 0)} |")
    chart_path = draw(rows, ROOT / "bench")
    lines += ["", f"![Freshness and the collector's threads across the hour's end]({chart_path})", ""]
    write_section(Path(args.output), TITLE, "\n".join(lines) + "\n")
    print("\n".join(lines))


def draw(rows: list[dict], where: Path) -> str:
    """Freshness (max and median of each step, s) and the threads' cores
    against seconds from the hour's end: a linear SVG (report.chart draws
    logarithmic axes), drawn to PNG by Chromium when it is there."""
    series = {
        "freshness max, s": [(r["from_s"], r["freshness_max_ms"] / 1000) for r in rows if "freshness_max_ms" in r],
        "freshness p50, s": [(r["from_s"], r["freshness_p50_ms"] / 1000) for r in rows if "freshness_p50_ms" in r],
        "writer, cores": [(r["from_s"], r["writer_cores"]) for r in rows if "writer_cores" in r],
        "aggregator, cores": [(r["from_s"], r["aggregator_cores"]) for r in rows if "aggregator_cores" in r],
        "ingest, cores": [(r["from_s"], r["ingest_cores"]) for r in rows if "ingest_cores" in r],
    }
    colours = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"]
    w, h, left, right, top, bottom = 790, 420, 60, 170, 40, 50
    xs = [x for pts in series.values() for x, _ in pts] or [0]
    ys = [y for pts in series.values() for _, y in pts] or [0]
    step = rows[1]["from_s"] - rows[0]["from_s"] if len(rows) > 1 else 10
    lo_x, hi_x = min(xs), max(xs) + step
    grid = 0.5 if max(ys) <= 5 else 10 ** math.ceil(math.log10(max(ys) / 10))
    hi_y = max(2.5, math.ceil(max(ys) / grid) * grid)
    x = lambda v: left + (w - left - right) * (v - lo_x) / (hi_x - lo_x)
    y = lambda v: h - bottom - (h - top - bottom) * v / hi_y
    parts = [f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="{top - 16}" font-size="13">The collector across an hour\'s end '
             f'({step} s steps; the hour ends at 0)</text>']
    v = 0.0
    while v <= hi_y + 1e-9:
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - right}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += grid
    for t in range(int(lo_x // 60 * 60), int(hi_x) + 1, 60):
        if t >= lo_x:
            parts.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{h - bottom}" '
                         f'stroke="{"#888" if t == 0 else "#eee"}"/>')
            parts.append(f'<text x="{x(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">{t:+d}</text>')
    parts.append(f'<line x1="{left}" y1="{y(2):.1f}" x2="{w - right}" y2="{y(2):.1f}" stroke="#d62728" '
                 f'stroke-dasharray="3 3"/>')
    parts.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 12}" text-anchor="middle">'
                 f'seconds from the hour\'s end</text>')
    parts.append(f'<text x="14" y="{(top + h - bottom) / 2:.0f}" transform="rotate(-90 14 {(top + h - bottom) / 2:.0f})" '
                 f'text-anchor="middle">seconds, cores</text>')
    for i, (name, pts) in enumerate(series.items()):
        c = colours[i]
        line = " ".join(f"{x(a + step / 2):.1f},{y(b):.1f}" for a, b in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{line}"/>')
        ly = top + 20 + 18 * i
        parts.append(f'<line x1="{w - right + 8}" y1="{ly - 4}" x2="{w - right + 26}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        parts.append(f'<text x="{w - right + 30}" y="{ly}" fill="{c}">{name}</text>')
    svg, png = where / "hour_end.svg", where / "hour_end.png"
    svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                   f'font-family="sans-serif" font-size="11">\n' + "\n".join(parts) + "\n</svg>\n")
    drawn = png if to_png(svg, (w, h), png) else svg
    return str(drawn.relative_to(ROOT)) if drawn.is_relative_to(ROOT) else str(drawn)


if __name__ == "__main__":
    main()

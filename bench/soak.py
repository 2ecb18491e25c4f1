#!/usr/bin/env python3
"""Soak: one collector for a long run (30 minutes by default), with 1,000
simulated agents (bench/loadgen, --reconnect) and two real agents on two real
PostgreSQL servers, restarting the collector every --restart-every and making
every agent reconnect at once.

Every 10 s it samples the collector's RSS, open files and threads. It checks
that, after warm-up, memory and descriptors stay flat within each life of the
collector (and from one life to the next), and that nothing is missing at the
collector: the real agents' streams have no missing batch (StreamStats), and
their servers have a rollup for every minute of the run.

Writes its figures, a chart (bench/soak.svg) and the command to BENCHMARKS.md.

    python3 bench/soak.py [--duration 30m] [--restart-every 10m] [--agents 1000]
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_overhead import Cluster, pg_bindir
from report import write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Soak"
WARMUP_S = 120
SAMPLE_EVERY_S = 10


def seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def build() -> Path:
    cmd = ["cargo", "build", "--release", "-q", "-p", "pgfleet-collector", "-p", "pgfleet-agent",
           "-p", "pgfleet-cli", "-p", "pgfleet-loadgen"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return Path(json.loads(out.stdout)["target_directory"]) / "release"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_sample(pid: int) -> dict:
    status = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        status[key] = value.split()
    return {
        "rss_mib": int(status["VmRSS"][0]) / 1024,
        "threads": int(status["Threads"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Collector:
    def __init__(self, bin_dir: Path, data: Path, port: int):
        self.bin, self.data, self.port = bin_dir / "pgfleet-collector", data, port
        self.proc = None
        self.log = open(data.parent / "collector.log", "a")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.bin), "--listen", f"127.0.0.1:{self.port}", "--http-listen", "off",
             "--data-dir", str(self.data)],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, PGFLEET_LOG="warn"))

    def restart(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def pgfleet(bin_dir: Path, port: int, *args: str) -> dict:
    out = subprocess.run([str(bin_dir / "pgfleet"), "--collector", f"http://127.0.0.1:{port}",
                          "--output", "json", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def chart(samples: list[dict], restarts: list[float], path: Path) -> None:
    """RSS and open files over time, restarts marked: a small SVG, no library."""
    w, h, pad = 720, 260, 40
    t_max = max(s["t"] for s in samples) or 1
    rss_max = max(s["rss_mib"] for s in samples) * 1.1 or 1
    fd_max = max(s["fds"] for s in samples) * 1.1 or 1
    x = lambda t: pad + (w - 2 * pad) * t / t_max
    y = lambda v, top: h - pad - (h - 2 * pad) * v / top
    line = lambda key, top: " ".join(f"{x(s['t']):.1f},{y(s[key], top):.1f}" for s in samples)
    marks = "".join(f'<line x1="{x(t):.1f}" y1="{pad}" x2="{x(t):.1f}" y2="{h - pad}" stroke="#bbb" '
                    f'stroke-dasharray="4"/>' for t in restarts)
    path.write_text(f"""<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="{w}" height="{h}" fill="white"/>{marks}
<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line('rss_mib', rss_max)}"/>
<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{line('fds', fd_max)}"/>
<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>
<text x="{pad}" y="{pad - 22}" fill="#1f77b4">collector RSS (MiB, top {rss_max:.0f})</text>
<text x="{pad + 230}" y="{pad - 22}" fill="#d62728">open files (top {fd_max:.0f})</text>
<text x="{pad + 420}" y="{pad - 22}" fill="#777">dashed: collector restarts</text>
<text x="{pad}" y="{h - pad + 16}">0</text><text x="{w - pad - 40}" y="{h - pad + 16}">{t_max / 60:.0f} min</text>
</svg>
""")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", default="30m")
    p.add_argument("--restart-every", default="10m")
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    duration, every = seconds(args.duration), seconds(args.restart_every)
    command = "python3 bench/soak.py" + "".join(
        f" {flag} {value}" for flag, value, default in [
            ("--duration", args.duration, "30m"), ("--restart-every", args.restart_every, "10m"),
            ("--agents", args.agents, 1000)] if value != default)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bin_dir = build()
    work = Path(tempfile.mkdtemp(prefix="pgfleet-soak-"))
    (work / "data").mkdir()
    port = free_port()
    collector = Collector(bin_dir, work / "data", port)
    clusters = [Cluster(pg_bindir()), Cluster(pg_bindir())]
    agents, loadgen = [], None
    samples, restarts, lives = [], [], []
    started_wall = time.time()
    try:
        for c in clusters:
            c.start()
        collector.start()
        time.sleep(2)
        for i, c in enumerate(clusters):
            spool = work / f"spool-{i}"
            agents.append(subprocess.Popen(
                [str(bin_dir / "pgfleet-agent"), "--collector", f"http://127.0.0.1:{port}",
                 "--target", c.dsn("postgres"), "--server-id", f"soak-real-{i}", "--interval", "1s",
                 # Two agents on one host need their own ids (the default is the host's name).
                 "--agent-id", f"soak-agent-{i}",
                 "--spool-dir", str(spool), "--label", "dc=soak"],
                stdout=subprocess.DEVNULL, stderr=open(work / f"agent-{i}.log", "w"),
                env=dict(os.environ, PGFLEET_LOG="warn", PGFLEET_POOL_REPORTER_LISTEN="off")))
        loadgen = subprocess.Popen(
            [str(bin_dir / "pgfleet-loadgen"), "--collector", f"http://127.0.0.1:{port}",
             "--agents", str(args.agents), "--reconnect", "--connect-rate", "200",
             "--warmup", "0s", "--measure", f"{duration}s"],
            stdout=subprocess.PIPE, stderr=open(work / "loadgen.log", "w"), text=True)
        t0 = time.monotonic()
        life_start = 0.0
        next_restart = every
        while (t := time.monotonic() - t0) < duration:
            if t >= next_restart and duration - t > 60:
                lives.append((life_start, t))
                collector.restart()
                restarts.append(t)
                life_start = t
                next_restart += every
            try:
                s = proc_sample(collector.proc.pid)
                s["t"] = t
                if s["threads"] < 2:
                    # The new process, not yet started up.
                    raise KeyError("starting")
                samples.append(s)
                print(json.dumps(s), file=sys.stderr, flush=True)
            except (OSError, KeyError):
                pass
            time.sleep(SAMPLE_EVERY_S)
        lives.append((life_start, time.monotonic() - t0))
        end_wall = time.time()
        # Nothing missing: the real agents' streams, and a rollup per minute.
        servers = {s["server_id"]: s for s in pgfleet(bin_dir, port, "servers")}
        real = {k: v for k, v in servers.items() if k.startswith("soak-real-")}
        missing = {k: int(v.get("stream", {}).get("missing_batches", 0)) for k, v in real.items()}
        first_minute = int(started_wall // 60 + 2) * 60
        last_minute = int(end_wall // 60 - 1) * 60
        minutes_expected = (last_minute - first_minute) // 60
        start_txt = datetime.datetime.fromtimestamp(first_minute, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        end_txt = datetime.datetime.fromtimestamp(last_minute, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        metrics = pgfleet(bin_dir, port, "metrics", "blocked_sessions", "--range",
                          f"{minutes_expected}m", "--end", end_txt, "--step", "1m",
                          "--by", "server_id", "--match", 'server_id=~"soak-real-.*"')
        points = {}
        for series in metrics.get("series", []):
            sid = series.get("labels", {}).get("server_id", "?")
            points[sid] = len(series.get("points", []))
    finally:
        if loadgen is not None:
            try:
                out, _ = loadgen.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                loadgen.kill()
                out = ""
        for a in agents:
            a.send_signal(signal.SIGTERM)
            try:
                a.wait(timeout=30)
            except subprocess.TimeoutExpired:
                a.kill()
        collector.stop()
        for c in clusters:
            c.stop()
    gen = json.loads(out) if out and out.strip().startswith("{") else {}

    # Flat after warm-up: within each life, from its warm-up to its end.
    rows, flat = [], True
    for i, (a, b) in enumerate(lives):
        warm = [s for s in samples if a + WARMUP_S <= s["t"] <= b]
        if len(warm) < 2:
            continue
        rss = [s["rss_mib"] for s in warm]
        fds = [s["fds"] for s in warm]
        threads = [s["threads"] for s in warm]
        growth = (rss[-1] - rss[0]) / rss[0] * 100
        ok = growth <= 10 and max(fds) - min(fds) <= max(10, min(fds) // 20)
        flat &= ok
        rows.append(f"| {i + 1} | {(b - a) / 60:.1f} | {rss[0]:.0f} → {rss[-1]:.0f} ({growth:+.1f}%) "
                    f"| {min(rss):.0f} / {max(rss):.0f} | {min(fds)} / {max(fds)} | {min(threads)} / {max(threads)} "
                    f"| {'yes' if ok else '**no**'} |")
    complete = all(v == 0 for v in missing.values()) and len(real) == 2 and \
        all(points.get(k, 0) >= minutes_expected for k in real)
    chart(samples, restarts, ROOT / "bench" / "soak.svg")
    today = datetime.date.today().isoformat()
    section = f"""{TITLE}

`{command}` ({today}, {platform.machine()}, {os.cpu_count()} cores, release build): one collector
(SQLite store) for {duration / 60:.0f} minutes with {args.agents:,} simulated agents (`pgfleet-loadgen
--reconnect`, 100 sessions each, 10% changing each second) and two real agents on two real
PostgreSQL servers; the collector restarted every {every / 60:.0f} minutes (SIGTERM, then at once
again), every agent reconnecting by itself. Its RSS, open files and threads sampled every
{SAMPLE_EVERY_S} s; each life's first {WARMUP_S // 60} minutes are its warm-up.

| life | minutes | RSS after warm-up → at its end (MiB) | RSS min / max | open files min / max | threads min / max | flat |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![collector RSS and open files over the soak](bench/soak.svg)

- **Flat:** {'yes' if flat else '**no**'} (RSS within 10% and open files within 5% from warm-up to the end of each life).
- **Nothing missing at the collector:** {'yes' if complete else '**no**'}. The real agents' streams
  show {', '.join(f'{k}: {v} missing batches' for k, v in sorted(missing.items())) or 'no server'};
  their rollups have {', '.join(f'{k}: {points.get(k, 0)}' for k in sorted(real)) or 'none'} of the
  {minutes_expected} whole minutes of the run.
- **Simulated agents:** {gen.get('reconnects', '–')} reconnections, {gen.get('errors', '–')} errors,
  {gen.get('read_errors', '–')} reads refused while the collector restarted,
  {gen.get('batches_per_s', 0) or 0:,.0f} batches/s over the run.
"""
    write_section(Path(args.output), TITLE, section)
    print(section)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if flat and complete else 1


if __name__ == "__main__":
    sys.exit(main())

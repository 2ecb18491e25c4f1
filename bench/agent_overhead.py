#!/usr/bin/env python3
"""What watching a busy PostgreSQL costs: pgfleet-agent against two other ways.

On one machine and in one run, this script:

1. starts a throwaway PostgreSQL 15 (max_connections 1100) and fills it with
   1,000 client sessions (pgbench -c 1000 running short pg_sleep calls) and a
   few busy clients;
2. measures, one after the other over the same window (60 samples by default):
   - pgfleet-agent (release build) sampling every second and streaming to a
     real pgfleet-collector: CPU per sample and peak RSS of the agent, and the
     CPU of the PostgreSQL backend that serves it;
   - the origin article's way, SQLAlchemy 2.x polling pg_stat_activity every
     second and fetching every row: the same figures for the Python process;
   - prometheus-postgres-exporter scraped every second: the same, per scrape;
   - the floor under all three: what waking once a second costs on this machine
     under the same load, idle and with one SELECT 1 per tick (the wake_floor
     example of the agent crate);
3. measures the observer effect: pgbench TPS of a read-write workload (TPC-B
   like, 8 clients) with the agent sampling every second and without it,
   alternating runs;
4. writes the figures to BENCHMARKS.md, with the command that made them.

CPU is read from /proc/<pid>/task/*/schedstat (nanoseconds on CPU, every thread)
at the start and end of the window, so start-up is not counted; RSS is VmHWM.

Usage: python3 bench/agent_overhead.py [--samples 60] [--tps-runs 10] [--tps-seconds 12] [--sleep-ms 10000,60000]
       [--transport unix|tcp]
Needs: PostgreSQL 15 server binaries, pgbench, prometheus-postgres-exporter,
python3 with sqlalchemy and psycopg2 (pip install -r bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from report import machine_name, write_section

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = os.geteuid() == 0
# How the watchers connect to PostgreSQL: "unix" or "tcp" (--transport).
TRANSPORT = "unix"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    if os.environ.get("PGFLEET_PG_BINDIR"):
        return Path(os.environ["PGFLEET_PG_BINDIR"])
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        d = Path(out.stdout.strip())
        if (d / "initdb").exists():
            return d
    except (OSError, subprocess.CalledProcessError):
        pass
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not dirs:
        sys.exit("bench: no PostgreSQL server binaries (apt-get install postgresql)")
    return Path(dirs[-1])


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if AS_ROOT else cmd


# The names threads had in builds before they were given these, so that a
# baseline of an older build is measured by the same name: the collector's
# ingest runtime kept tokio's default name until stop 61.
EARLIER_NAMES = {"pgfleet-ingest": ("pgfleet-ingest", "tokio-rt-worker")}


def cpu_ns(pid: int, thread: str = "") -> int:
    """Nanoseconds on CPU of every live thread of pid (whose name starts with
    `thread`, or a name it had before (`EARLIER_NAMES`), when given)."""
    total = 0
    names = EARLIER_NAMES.get(thread, thread)
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            if thread and not open(f"{task}/comm").read().startswith(names):
                continue
            total += int(open(f"{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Cluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pgfleet-bench-"))
        if AS_ROOT:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()

    # The watched server: nothing of its own durability is measured here.
    SETTINGS = ("-c max_connections=1100 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_wal_size=4GB -c checkpoint_timeout=1h -c autovacuum=off")

    def start(self, settings: str = SETTINGS) -> None:
        subprocess.run(as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                    "-A", "trust", "--no-sync", "--no-instructions"]),
                       check=True, stdout=subprocess.DEVNULL, cwd=self.dir)
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} {settings} "
                "-c log_min_messages=warning")
        subprocess.run(as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                                    "-l", str(self.dir / "log"), "-w", "start"]),
                       check=True, stdout=subprocess.DEVNULL, cwd=self.dir)

    def stop(self) -> None:
        subprocess.run(as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                    "-w", "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, scheme: str, query: str = "") -> str:
        """A URL for the watchers: over the Unix socket (as a watcher on the
        database's host connects), or over TCP with --transport tcp."""
        if TRANSPORT == "unix":
            params = f"host={self.dir}&port={self.port}" + (f"&{query}" if query else "")
            return f"{scheme}://postgres@/postgres?{params}"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/postgres" + (f"?{query}" if query else "")

    def psql(self, sql: str) -> str:
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              "postgres", "-XAtqc", sql], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def backend_pids(self, application_name: str) -> list[int]:
        rows = self.psql(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}'")
        return [int(p) for p in rows.split()]

    def pgbench(self, args: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen([str(self.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(self.port),
                                 "-U", "postgres", *args, "postgres"], **kw)


def window(pids: list[int], backends: list[int], seconds: float) -> tuple[int, int]:
    """CPU ns of pids and of backends over `seconds`."""
    a0, b0 = sum(map(cpu_ns, pids)), sum(map(cpu_ns, backends))
    time.sleep(seconds)
    return sum(map(cpu_ns, pids)) - a0, sum(map(cpu_ns, backends)) - b0


def measure_agent(cluster: Cluster, samples: int, binary: Path | None = None,
                  extra: tuple[str, ...] = ()) -> dict:
    """An agent (this tree's release build, or `binary`) sampling `cluster` and
    streaming to a collector: its CPU and its backend's per sample, over `samples`."""
    collector_port = free_port()
    data_dir = tempfile.mkdtemp(prefix="pgfleet-bench-collector-")
    # Errors only: the agent may start before the collector listens, and says so.
    env = {**os.environ, "PGFLEET_LOG": "error"}
    collector = subprocess.Popen([str(ROOT / "target/release/pgfleet-collector"), "--listen",
                                  f"127.0.0.1:{collector_port}", "--data-dir", data_dir,
                                  "--http-listen", "off"], env=env)
    agent = subprocess.Popen([str(binary or ROOT / "target/release/pgfleet-agent"),
                              "--collector", f"http://127.0.0.1:{collector_port}",
                              "--target", cluster.dsn("postgres"),
                              "--server-id", "bench", "--pool-reporter-listen", "off", *extra], env=env)

    def agent_counters() -> dict:
        out = subprocess.run([str(ROOT / "target/release/pgfleet"), "--collector",
                              f"http://127.0.0.1:{collector_port}", "-o", "json", "servers"],
                             capture_output=True, text=True, check=True)
        servers = json.loads(out.stdout)
        return servers[0]["agent"] if servers and servers[0].get("agent") else {}

    try:
        time.sleep(5)  # connect, first samples, caches warm
        if agent.poll() is not None:
            sys.exit(f"bench: the agent exited with {agent.returncode}")
        backends = cluster.backend_pids("pgfleet-agent")
        before = agent_counters()
        cpu, backend_cpu = window([agent.pid], backends, samples)
        after = agent_counters()
        rss = peak_rss_kib(agent.pid)
        sessions = int(cluster.psql("SELECT count(*) FROM pg_stat_activity"))
        n = after["samples_total"] - before["samples_total"]
        skipped = after.get("skipped_ticks_total", 0) - before.get("skipped_ticks_total", 0)
        return {"samples": n, "cpu_ms_per_sample": cpu / n / 1e6, "backend_ms_per_sample": backend_cpu / n / 1e6,
                "peak_rss_mib": rss / 1024, "sessions": sessions, "skipped": skipped,
                "last_sample_ms": after.get("sample_duration_us", 0) / 1000}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)


SQLALCHEMY_POLLER = r"""
import sys, time
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1], connect_args={"application_name": "bench-sqlalchemy"})
count_file = sys.argv[2]
n = 0
next_at = time.monotonic()
while True:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM pg_stat_activity")).fetchall()
    status = engine.pool.status()
    n += 1
    with open(count_file, "w") as f:
        f.write(f"{n} {len(rows)}")
    next_at += 1.0
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


def measure_sqlalchemy(cluster: Cluster, samples: int) -> dict:
    count_file = tempfile.mktemp(prefix="pgfleet-bench-polls-")
    poller = subprocess.Popen([sys.executable, "-c", SQLALCHEMY_POLLER,
                               cluster.dsn("postgresql+psycopg2"), count_file])

    def polls() -> int:
        try:
            return int(open(count_file).read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    try:
        time.sleep(5)
        if poller.poll() is not None:
            sys.exit("bench: the SQLAlchemy poller died (pip install -r bench/requirements.txt)")
        backends = cluster.backend_pids("bench-sqlalchemy")
        n0 = polls()
        cpu, backend_cpu = window([poller.pid], backends, samples)
        n = polls() - n0
        rss = peak_rss_kib(poller.pid)
        return {"samples": n, "cpu_ms_per_sample": cpu / n / 1e6, "backend_ms_per_sample": backend_cpu / n / 1e6,
                "peak_rss_mib": rss / 1024}
    finally:
        poller.kill()
        poller.wait()
        os.unlink(count_file) if os.path.exists(count_file) else None


def measure_exporter(cluster: Cluster, samples: int) -> dict | None:
    exe = shutil.which("prometheus-postgres-exporter")
    if not exe:
        log("prometheus-postgres-exporter is not installed; skipping it (apt-get install prometheus-postgres-exporter)")
        return None
    port = free_port()
    env = {**os.environ, "DATA_SOURCE_NAME":
           cluster.dsn("postgresql", "sslmode=disable&application_name=bench-exporter")}
    exporter = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(3):  # warm up
            urllib.request.urlopen(url, timeout=10).read()
        backends = cluster.backend_pids("bench-exporter")
        a0, b0 = cpu_ns(exporter.pid), sum(map(cpu_ns, backends))
        size = 0
        next_at = time.monotonic()
        for _ in range(samples):
            size = len(urllib.request.urlopen(url, timeout=10).read())
            next_at += 1.0
            time.sleep(max(0.0, next_at - time.monotonic()))
        cpu = cpu_ns(exporter.pid) - a0
        backends = cluster.backend_pids("bench-exporter") or backends
        backend_cpu = sum(map(cpu_ns, backends)) - b0
        return {"samples": samples, "cpu_ms_per_sample": cpu / samples / 1e6,
                "backend_ms_per_sample": backend_cpu / samples / 1e6,
                "peak_rss_mib": peak_rss_kib(exporter.pid) / 1024, "scrape_bytes": size}
    finally:
        exporter.kill()
        exporter.wait()


def measure_floor(cluster: Cluster) -> dict:
    out = subprocess.run([str(ROOT / "target/release/examples/wake_floor"), cluster.dsn("postgres")],
                         capture_output=True, text=True, check=True).stdout
    figures = [float(line.split(":")[1].split()[0]) for line in out.splitlines() if "µs CPU per tick" in line]
    if len(figures) != 2:
        sys.exit(f"bench: wake_floor said {out!r}")
    return {"idle_us": figures[0], "query_us": figures[1]}


def tps_run(cluster: Cluster, seconds: int) -> float:
    out = cluster.pgbench(["-n", "-c", "8", "-j", "2", "-T", str(seconds)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True).communicate()[0]
    for line in out.splitlines():
        if line.startswith("tps =") and "without" in line or line.startswith("tps =") and "excluding" in line:
            return float(line.split("=")[1].split()[0])
    for line in out.splitlines():
        if line.startswith("tps ="):
            return float(line.split("=")[1].split()[0])
    raise RuntimeError(f"pgbench printed no tps: {out}")


def measure_tps(cluster: Cluster, runs: int, seconds: int) -> dict:
    collector_port = free_port()
    data_dir = tempfile.mkdtemp(prefix="pgfleet-bench-collector-")
    env = {**os.environ, "PGFLEET_LOG": "warn"}
    collector = subprocess.Popen([str(ROOT / "target/release/pgfleet-collector"), "--listen",
                                  f"127.0.0.1:{collector_port}", "--data-dir", data_dir], env=env)
    without, with_agent = [], []

    def run_with_agent() -> float:
        agent = subprocess.Popen([str(ROOT / "target/release/pgfleet-agent"),
                                  "--collector", f"http://127.0.0.1:{collector_port}",
                                  "--target", cluster.dsn("postgres"),
                                  "--server-id", "bench", "--pool-reporter-listen", "off"], env=env)
        try:
            time.sleep(2)
            return tps_run(cluster, seconds)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)

    try:
        log("TPS warm-up (30 s)")
        tps_run(cluster, 30)
        # Pairs in ABBA order (without, with, with, without, …) so that a drift
        # of the machine over the run weighs on both sides alike.
        for i in range(runs):
            # Dead rows pile up with autovacuum off; clear them before each pair.
            cluster.psql("VACUUM pgbench_accounts, pgbench_tellers, pgbench_branches")
            order = ["without", "with"] if i % 2 == 0 else ["with", "without"]
            for side in order:
                log(f"TPS pair {i + 1}/{runs}: {side} the agent")
                if side == "with":
                    with_agent.append(run_with_agent())
                else:
                    without.append(tps_run(cluster, seconds))
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"without": without, "with": with_agent}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=60, help="samples (seconds) per measurement window")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--sleep-ms", default="10000,60000",
                   help="each sleeping session runs pg_sleep for a random time in this range, in ms")
    p.add_argument("--only", choices=["agent"], help="measure only the agent (for quick iterations; writes nothing)")
    p.add_argument("--tps-runs", type=int, default=10, help="pairs of TPS runs, without and with the agent")
    p.add_argument("--tps-seconds", type=int, default=12)
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--transport", choices=["unix", "tcp"], default="unix",
                   help="how the three watchers connect to PostgreSQL (the workload always uses TCP)")
    args = p.parse_args()
    global TRANSPORT
    TRANSPORT = args.transport
    command = " ".join(["python3 bench/agent_overhead.py", *sys.argv[1:]])

    log("building the release binaries")
    subprocess.run(["cargo", "build", "--release", "--bin", "pgfleet-agent", "--bin", "pgfleet-collector",
                    "--bin", "pgfleet", "--example", "wake_floor"], cwd=ROOT, check=True)
    cluster = Cluster(pg_bindir())
    sleepers = busy = None
    try:
        cluster.start()
        log(f"PostgreSQL on port {cluster.port}; pgbench -i -s 10")
        subprocess.run([str(cluster.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U",
                        "postgres", "-i", "-q", "-s", "10", "postgres"], check=True, stdout=subprocess.DEVNULL)
        script = cluster.dir / "sleep.sql"
        lo, hi = (int(x) for x in args.sleep_ms.split(","))
        script.write_text(f"\\set ms random({lo}, {hi})\nSELECT pg_sleep(:ms / 1000.0);\n")
        busy_script = cluster.dir / "busy.sql"
        busy_script.write_text("\\set aid random(1, 1000000)\n"
                               "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n")
        os.chmod(script, 0o644)
        os.chmod(busy_script, 0o644)
        log(f"starting {args.sessions} sleeping sessions and 3 busy clients")
        sleepers = cluster.pgbench(["-n", "-c", str(args.sessions), "-j", "4", "-T", "100000", "-f",
                                    str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        busy = cluster.pgbench(["-n", "-c", "3", "-j", "1", "-T", "100000", "-R", "300", "-f",
                                str(busy_script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(120):
            n = int(cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))
            if n >= args.sessions:
                break
            time.sleep(1)
        log(f"{n} client sessions; measuring pgfleet-agent over {args.samples} samples")
        agent = measure_agent(cluster, args.samples)
        log(f"agent: {agent}")
        log("measuring the floor: waking once a second, and a SELECT 1 per tick")
        floor = measure_floor(cluster)
        log(f"floor: {floor}")
        if args.only == "agent":
            return
        log("measuring SQLAlchemy polling pg_stat_activity")
        sqlalchemy = measure_sqlalchemy(cluster, args.samples)
        log(f"sqlalchemy: {sqlalchemy}")
        log("measuring prometheus-postgres-exporter")
        exporter = measure_exporter(cluster, args.samples)
        log(f"exporter: {exporter}")
        log("measuring the observer effect on pgbench TPS")
        tps = measure_tps(cluster, args.tps_runs, args.tps_seconds)
        log(f"tps: {tps}")
    finally:
        for proc in (sleepers, busy):
            if proc:
                proc.kill()
                proc.wait()
        cluster.stop()
    write_report(args, command, agent, floor, sqlalchemy, exporter, tps)


def write_report(args, command, agent, floor, sqlalchemy, exporter, tps) -> None:
    w, a = tps["without"], tps["with"]
    mean_w, mean_a = statistics.mean(w), statistics.mean(a)
    drop = (mean_w - mean_a) / mean_w * 100
    spread = statistics.stdev(w) / mean_w * 100 if len(w) > 1 else 0.0
    # Each pair's drop, and the standard error of their mean.
    pair_drops = [(x - y) / x * 100 for x, y in zip(w, a)]
    stderr = statistics.stdev(pair_drops) / len(pair_drops) ** 0.5 if len(pair_drops) > 1 else 0.0
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    cpu_ok = agent["cpu_ms_per_sample"] <= 0.5
    rss_ok = agent["peak_rss_mib"] <= 20
    tps_ok = drop + 2 * stderr < 1.0

    def row(name, r):
        if r is None:
            return f"| {name} | not installed | | | |\n"
        return (f"| {name} | {r['cpu_ms_per_sample']:.3f} | {r['backend_ms_per_sample']:.3f} | "
                f"{r['peak_rss_mib']:.1f} | {r['samples']} |\n")

    machine = machine_name()
    pg_version = subprocess.run([str(pg_bindir() / "postgres"), "--version"], capture_output=True,
                                text=True).stdout.strip()
    lo, hi = (int(x) / 1000 for x in args.sleep_ms.split(","))
    title = f"## Agent overhead at {args.sessions} sessions, each sleeping {lo:g}–{hi:g} s at a time"
    section = f"""{title}

Command: `{command}` (from the repository root; it builds the release binaries).
Run on {datetime.date.today()} on {machine}; {pg_version}.
{args.sessions} pgbench clients each run `SELECT pg_sleep(…)` for {lo:g}–{hi:g} s at a time (so that
many sessions start a new query every second), and 3 clients run indexed reads at 300 TPS, all on
the one server ({agent['sessions']} rows in pg_stat_activity). The three watchers connect
{"through the server's Unix socket, as a watcher on the database's host does" if TRANSPORT == "unix" else "over TCP to 127.0.0.1"}. Each row is one
{args.samples}-second window, sampling or scraping once a second; CPU counts every
thread of the process, from /proc/<pid>/task/*/schedstat, and excludes start-up.

| watcher | CPU per sample (ms) | PostgreSQL backend CPU per sample (ms) | peak RSS (MiB) | samples |
|---|---|---|---|---|
{row("pgfleet-agent: sample, mask, encode, send to a collector", agent)}{row("SQLAlchemy 2.x: SELECT * FROM pg_stat_activity, fetch all", sqlalchemy)}{row("prometheus-postgres-exporter 0.11 (default collectors), per scrape", exporter)}
pgfleet-agent: the last sample took {agent['last_sample_ms']:.1f} ms of wall time, and {agent['skipped']} ticks were skipped.

The floor under any watcher that wakes once a second, on this machine under the same load
(`cargo run --release -p pgfleet-agent --example wake_floor`, 30 ticks each): an idle tokio
interval costs {floor['idle_us']:.0f} µs of CPU per tick, and one `SELECT 1` per tick {floor['query_us']:.0f} µs.

Targets: CPU ≤ 0.5 ms per sample: **{verdict(cpu_ok)}** ({agent['cpu_ms_per_sample']:.3f} ms).
Peak RSS ≤ 20 MB: **{verdict(rss_ok)}** ({agent['peak_rss_mib']:.1f} MiB).

### Observer effect

pgbench TPC-B-like, 8 clients, {args.tps_seconds} s per run after a 30 s warm-up, in {args.tps_runs} pairs
(without and with the agent sampling every second, in ABBA order), the {args.sessions} sleeping
sessions present throughout; autovacuum off (a VACUUM before each pair instead) and checkpoints
an hour apart, so that neither lands on one side only.

| | runs (TPS) | mean TPS |
|---|---|---|
| without the agent | {", ".join(f"{x:.0f}" for x in w)} | {mean_w:.1f} |
| with the agent | {", ".join(f"{x:.0f}" for x in a)} | {mean_a:.1f} |

TPS drop: **{drop:+.2f}%**, ± {stderr:.2f}% (standard error of the {len(pair_drops)} pairs' drops:
{", ".join(f"{d:+.1f}%" for d in pair_drops)}). Target < 1%, counted as met only when the drop plus
two standard errors is under 1%: **{verdict(tps_ok)}**. Run-to-run spread without the agent:
{spread:.2f}%.
The agent's backend uses {agent['backend_ms_per_sample']:.3f} ms of server CPU per sample, that is
{agent['backend_ms_per_sample'] / 10:.3f}% of one core at one sample per second.
"""
    path = Path(args.output)
    write_section(path, title, section)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

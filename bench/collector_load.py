#!/usr/bin/env python3
"""How many servers one collector sustains (issue 5's figures).

Starts a release `pgfleet-collector` (history store on, in a temporary
directory) and runs `pgfleet-loadgen` (bench/loadgen) against it on the same
machine: N simulated agents, each streaming one server of 100 sessions, about
10% changing each second, at 1 Hz, over the real protocol and one HTTP/2
connection each. The first 20 agents first send an hour of history, so that
`GetActivity ... at` an hour back can be timed. While the fleet streams, a
reader on its own thread calls GetActivity of a random server every 50 ms
(its latency, and the freshness of what it returns: now minus the sample's
time) and FleetSummary every 250 ms.

Every N of --fleets runs (2,500, 5,000 and 10,000 by default); the largest N
that held is the collector's capacity here. Writes the table to BENCHMARKS.md
with the command that made it, and a chart of the collector's CPU per batch
and memory per server against N (bench/collector_load.png).

With --storm N, it then restarts the collector under N streaming agents
(`pgfleet-loadgen --reconnect`, the agents' own reconnect spread and backoff)
and times how long until every agent streams again, in a section of its own.

With --store postgres, the history goes to a throwaway PostgreSQL on the same
machine (default settings: fsync and synchronous commit on), a new database
per run; the table then also gives that server's CPU and the database's size,
in a section of its own.

    python3 bench/collector_load.py [--fleets 2500,5000,10000] [--measure 60] [--store postgres] [--storm 10000]
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_overhead import cpu_ns
from report import machine_name, staged, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Collector load"
STORM_TITLE = "## Connection storm"
TARGETS = {"servers": 10_000, "kib": 48.0, "summary_ms": 20.0, "activity_ms": 5.0, "us_per_batch": 60.0}
STORM_TARGET_S = 30.0


def build() -> Path:
    cmd = ["cargo", "build", "--release", "-q", "-p", "pgfleet-collector", "-p", "pgfleet-loadgen"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return Path(json.loads(out.stdout)["target_directory"]) / "release"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_pids(cluster) -> list[int]:
    """The store server's processes: its postmaster and every child."""
    master = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:
                pids.append(int(stat.split("/")[2]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def start_collector(bin_dir: Path, port: int, data: Path, log, store=(), extra=()) -> subprocess.Popen:
    return subprocess.Popen(
        [str(staged(bin_dir / "pgfleet-collector")), "--listen", f"127.0.0.1:{port}",
         "--http-listen", "off", "--data-dir", str(data / "store"), *store, *extra],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PGFLEET_LOG="warn"),
    )


def stop_collector(collector: subprocess.Popen, log, data: Path) -> None:
    """Stops the collector (killed after 30 s) and removes its data directory."""
    collector.terminate()
    try:
        collector.wait(timeout=30)
    except subprocess.TimeoutExpired:
        collector.kill()
    log.close()
    shutil.rmtree(data, ignore_errors=True)


def one_run(bin_dir: Path, n: int, args, cluster=None, extra=()) -> dict:
    data = Path(tempfile.mkdtemp(prefix="pgfleet-load-"))
    port, query_port = free_port(), free_port()
    log = open(data / "collector.log", "w")
    store = []
    if cluster is not None:
        cluster.psql(f"CREATE DATABASE load_{n}")
        store = ["--store", f"postgres://postgres@127.0.0.1:{cluster.port}/load_{n}"]
    # Readers ask on a port of their own, as the README advises for a large
    # fleet; every other GetActivity goes to the agents' port, timed apart.
    extra = ["--query-listen", f"127.0.0.1:{query_port}", *extra]
    kept = args.retention_frames
    if kept:
        extra += ["--retention-frames", kept]
    collector = start_collector(bin_dir, port, data, log, store, extra)
    # Where this run's part of the store's log begins.
    pg_log_from = (cluster.dir / "log").stat().st_size if cluster is not None else 0
    try:
        time.sleep(2)
        pg_pids = postgres_pids(cluster) if cluster is not None else []
        pg_before = sum(map(cpu_ns, pg_pids))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        per = args.servers_per_agent
        cmd = [str(bin_dir / "pgfleet-loadgen"), "--collector", f"http://127.0.0.1:{port}",
               "--query", f"http://127.0.0.1:{query_port}", "--compare-listen",
               "--collector-pid", str(collector.pid), "--agents", str(n // per),
               "--servers-per-agent", str(per),
               # An hour of history is not kept with a shorter retention.
               "--history-agents", str(0 if kept else max(1, min(20, n) // per)),
               "--connect-rate", str(args.connect_rate),
               "--warmup", f"{args.warmup}s", "--measure", f"{args.measure}s"]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        started = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            r = {"agents": n, "failed": out.stderr.strip().splitlines()[-1:] or ["exit " + str(out.returncode)]}
            keep_logs(r, data, cluster, pg_log_from)
            return r
        r = json.loads(out.stdout)
        # N is servers; the generator counts agents, each carrying `per`.
        r["streams"], r["agents"] = r["agents"], n
        # The generator's own CPU over its whole run (ramp and history included).
        r["loadgen_cores"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall
        if cluster is None:
            r["store_mib"] = sum(f.stat().st_size for f in (data / "store").glob("pgfleet.sqlite*")) / 2**20
        else:
            # Over the whole run, like the generator's; the backends that
            # started during it (the writer's connection among them) count whole.
            pids = set(pg_pids) | set(postgres_pids(cluster))
            r["store_cores"] = (sum(map(cpu_ns, pids)) - pg_before) / 1e9 / wall
            r["store_mib"] = int(cluster.psql(f"SELECT pg_database_size('load_{n}')")) / 2**20
        if not held(r):
            keep_logs(r, data, cluster, pg_log_from)
        return r
    finally:
        stop_collector(collector, log, data)


def keep_logs(r: dict, data: Path, cluster, pg_log_from: int) -> None:
    """A run that did not hold (or whose generator failed) keeps its
    collector's log (warnings and errors) and its part of the store's server
    log (from `pg_log_from` on), so that why can be read."""
    kept = Path(tempfile.mkdtemp(prefix=f"pgfleet-load-{r['agents']}-not-held-"))
    shutil.copy(data / "collector.log", kept)
    if cluster is not None:
        with open(cluster.dir / "log", "rb") as f:
            f.seek(pg_log_from)
            (kept / "postgres.log").write_bytes(f.read())
    r["kept_logs"] = str(kept)
    print(f"N={r['agents']} did not hold; its logs are kept in {kept}", file=sys.stderr, flush=True)


def held(r: dict) -> bool:
    """Every agent streamed at 1 Hz (2% slack), every server was up, and the
    p99 freshness stayed at most 2 s."""
    return ("failed" not in r and r["errors"] == 0 and r["servers_up"] == r["agents"]
            and snapshots_per_s(r) >= 0.98 * r["agents"]
            and r["freshness_p99_ms"] is not None and r["freshness_p99_ms"] <= 2000)


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def storm(bin_dir: Path, n: int, args) -> dict:
    """N agents stream (`--reconnect`); once every one is live for 10 s, the
    collector is stopped (SIGTERM: it tells every agent to reconnect) and
    started again on the same port and data directory. Times how long until
    every agent streams again (past Welcome and a first batch), from the
    stop and from the new collector's start."""
    import threading
    data = Path(tempfile.mkdtemp(prefix="pgfleet-storm-"))
    port = free_port()
    log = open(data / "collector.log", "w")
    collector = start_collector(bin_dir, port, data, log)
    timeline: list[dict] = []
    gen = None
    try:
        time.sleep(2)
        cmd = [str(bin_dir / "pgfleet-loadgen"), "--collector", f"http://127.0.0.1:{port}",
               "--agents", str(n), "--connect-rate", str(args.connect_rate), "--reconnect",
               "--warmup", "1h", "--measure", "1h"]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        gen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def read():
            for line in gen.stderr:
                if line.startswith("{"):
                    timeline.append(json.loads(line))
        threading.Thread(target=read, daemon=True).start()

        def wait_live(after: float, timeout: float):
            deadline = time.time() + timeout
            while time.time() < deadline:
                hit = next((t for t in timeline if t["unix_s"] > after and t["live"] >= n), None)
                if hit:
                    return hit
                time.sleep(0.2)
            return None

        ramp = wait_live(0, n / args.connect_rate + 180)
        if ramp is None:
            return {"agents": n, "failed": f"the {n} agents were not all live within the ramp"}
        time.sleep(10)
        before = timeline[-1]
        stopped = time.time()
        collector.terminate()
        try:
            collector.wait(timeout=120)
        except subprocess.TimeoutExpired:
            return {"agents": n, "failed": "the collector did not stop within 2 minutes of SIGTERM"}
        restarted = time.time()
        collector = start_collector(bin_dir, port, data, log)
        back = wait_live(restarted, 180)
        low = min((t["live"] for t in timeline if t["unix_s"] > stopped), default=None)
        last = timeline[-1]
        return {
            "agents": n,
            "stop_s": restarted - stopped,
            "all_live_s": None if back is None else back["unix_s"] - restarted,
            "all_live_from_stop_s": None if back is None else back["unix_s"] - stopped,
            "lowest_live": low,
            "live_at_end": last["live"],
            "reconnects": last["reconnects"] - before["reconnects"],
            "failed_attempts": last["failed_attempts"] - before["failed_attempts"],
            "gave_up": last["errors"],
            # Streams live, second by second from the stop.
            "curve": [(round(t["unix_s"] - stopped, 1), t["live"]) for t in timeline if t["unix_s"] > stopped],
        }
    finally:
        if gen is not None:
            gen.kill()
            gen.wait()
        stop_collector(collector, log, data)


def snapshots_per_s(r: dict) -> float:
    """Server samples applied a second: batches, each of `servers_per_agent`."""
    return r.get("snapshots_per_s", r.get("batches_per_s") or 0)


def us_per_batch(r: dict):
    """The collector's CPU per server sample (per batch when each agent
    carries one server)."""
    if "failed" in r or not r.get("collector_cores") or not snapshots_per_s(r):
        return None
    return r["collector_cores"] / snapshots_per_s(r) * 1e6


def draw(runs: list[dict], store: str, per: int = 1, kept: str | None = None) -> str | None:
    """The chart of CPU per batch and memory per server against N; its path,
    from the repository root."""
    from report import chart, to_png
    ok = [r for r in runs if us_per_batch(r) is not None and r.get("collector_kib_per_server")]
    if not ok:
        return None
    ns = [r["agents"] for r in ok]
    series = {
        f"CPU, µs per {'batch' if per == 1 else 'server sample'}": [(r["agents"], us_per_batch(r)) for r in ok],
        "memory, KiB per server": [(r["agents"], r["collector_kib_per_server"]) for r in ok],
        "collector cores × 100": [(r["agents"], r["collector_cores"] * 100) for r in ok],
        f"target CPU ({TARGETS['us_per_batch']:.0f} µs)": [(x, TARGETS["us_per_batch"]) for x in ns],
        f"target memory ({TARGETS['kib']:.0f} KiB)": [(x, TARGETS["kib"]) for x in ns],
    }
    name = ("collector_load" if store == "sqlite" else "collector_load_postgres") + (
        f"_{per}_per_agent" if per > 1 else "") + (f"_kept_{kept}" if kept else "")
    svg, png = ROOT / f"bench/{name}.svg", ROOT / f"bench/{name}.png"
    carried = ("" if per == 1 else f"; {per} servers per agent") + (f"; frames kept {kept}" if kept else "")
    size = chart(series, f"The collector against servers ({store} store{carried}; both axes logarithmic)", svg,
                 xlabel="servers (agents at 1 Hz)" if per == 1 else f"servers (on N/{per} agents at 1 Hz)", ylabel="per batch, per server, cores")
    return f"bench/{name}.png" if to_png(svg, size, png) else f"bench/{name}.svg"


# Seconds from the ramp's end to the window. The collector's memory grows at each of
# the first three minutes' ends (every server's minute of DB load ends at once, and
# mimalloc keeps what is freed), then stays: RSS read every 30 s at 2,500 servers
# was 186, 213, 226 and then 231 KiB a server from the third minute's end on. A
# window 20 s after the ramp read it after the first, some 10% low; the CPU per batch
# was 4% higher, the first minutes' pages being faulted in.
WARMUP = 200


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleets", default="2500,5000,10000", help="the values of N to run ('' for none: the storm alone)")
    p.add_argument("--warmup", type=int, default=WARMUP,
                   help="seconds after the ramp before measuring (past three minutes' ends, when "
                        "the collector's memory stops growing)")
    p.add_argument("--measure", type=int, default=60, help="seconds measured at each N")
    p.add_argument("--connect-rate", type=int, default=500, help="agents connected per second")
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite",
                   help="where the collector keeps its history")
    p.add_argument("--servers-per-agent", type=int, default=1,
                   help="servers each agent carries on its one stream (N stays the servers)")
    p.add_argument("--storm", default="",
                   help="then restart the collector under each of these numbers of agents (e.g. 5000,10000) and time their return")
    p.add_argument("--retention-frames", metavar="DURATION",
                   help="the collector's --retention-frames (e.g. 1m): with one shorter than the "
                        "warm-up, the window is at the steady state of a collector past its retention, "
                        "deleting each minute a minute of frames (`at` an hour back is then not timed)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    title = TITLE if args.store == "sqlite" else TITLE + ", PostgreSQL store"
    if args.servers_per_agent > 1:
        title += f", {args.servers_per_agent} servers per agent"
    if args.retention_frames:
        title += f", frames kept {args.retention_frames}"
    fleets = [int(x) for x in args.fleets.split(",") if x]
    per = args.servers_per_agent
    if per < 1 or any(n % per or n < per for n in fleets):
        raise SystemExit(f"--servers-per-agent {per}: every N of --fleets must be a multiple of it")
    if per > 1 and args.storm:
        raise SystemExit("--storm restarts under agents of one server each: run it without --servers-per-agent")
    command = "python3 bench/collector_load.py" + "".join(
        f" {flag} {value if value != '' else repr('')}" for flag, value, default in [
            ("--fleets", args.fleets, p.get_default("fleets")),
            ("--warmup", args.warmup, WARMUP), ("--measure", args.measure, 60),
            ("--connect-rate", args.connect_rate, 500), ("--store", args.store, "sqlite"),
            ("--servers-per-agent", args.servers_per_agent, 1),
            ("--storm", args.storm, ""),
            ("--retention-frames", args.retention_frames, None),
        ] if value != default)

    # One connection per agent on each side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bin_dir = build()
    cluster = None
    if args.store == "postgres":
        from agent_overhead import Cluster, pg_bindir
        cluster = Cluster(pg_bindir())
        # A store's own settings: PostgreSQL's defaults, durable, with room
        # for the WAL a busy collector writes; a lock waited on is logged
        # (a run that does not hold keeps the log).
        cluster.start("-c shared_buffers=256MB -c max_wal_size=4GB -c log_lock_waits=on")
    runs = []
    try:
        for n in fleets:
            if n + 100 > hard:
                print(f"N={n} needs more than {hard} open files; stopping", file=sys.stderr)
                break
            r = one_run(bin_dir, n, args, cluster)
            print(json.dumps(r), file=sys.stderr, flush=True)
            runs.append(r)
        stormed = []
        for n in [int(x) for x in args.storm.split(",") if x]:
            stormed.append(storm(bin_dir, n, args))
            print(json.dumps(stormed[-1]), file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.stop()

    if runs:
        load_section(runs, args, title, command, cluster)
    if stormed:
        write_section(Path(args.output), STORM_TITLE, storm_section(stormed, command, machine_name()))


def load_section(runs: list[dict], args, title: str, command: str, cluster) -> None:
    per = args.servers_per_agent
    unit = "batch" if per == 1 else "sample"
    best = max((r for r in runs if held(r)), key=lambda r: r["agents"], default=None)
    rows = []
    for r in runs:
        if "failed" in r:
            rows.append(f"| {r['agents']:,} | **no**: {r['failed'][0][:120]} |" + " |" * 13)
            continue
        rows.append(
            f"| {r['agents']:,} | {'yes' if held(r) else '**no**'} | {fmt(r['batches_per_s'], 0)} "
            f"| {fmt(r['freshness_p50_ms'], 0)} / {fmt(r['freshness_p99_ms'], 0)} "
            f"| {fmt(r['get_activity_p50_ms'], 2)} / {fmt(r['get_activity_p99_ms'], 2)} "
            f"| {fmt(r.get('get_activity_listen_p50_ms'), 2)} / {fmt(r.get('get_activity_listen_p99_ms'), 2)} "
            f"| {fmt(r['fleet_summary_p50_ms'], 2)} / {fmt(r['fleet_summary_p99_ms'], 2)} "
            f"| {fmt(r['at_1h_p50_ms'], 1)} / {fmt(r['at_1h_max_ms'], 1)} "
            f"| {fmt(r['collector_kib_per_server'], 0)} | {fmt(r['collector_rss_kib'] / 1024 if r['collector_rss_kib'] else None, 0)} "
            f"| {fmt(r['collector_cores'], 2)} | {fmt(us_per_batch(r), 0)} | {fmt(r['loadgen_cores'], 2)} | {fmt(r['store_mib'], 0)} "
            + (f"| {fmt(r['store_cores'], 2)} " if cluster is not None else "")
            + f"| {r['errors']} |"
        )
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    if best:
        # The fleet target, at which the read latencies' targets stand too:
        # a smaller fleet that held does not meet them.
        full = best['agents'] >= TARGETS['servers']
        headline = f"""The largest fleet that held: **{best['agents']:,} servers** (target ≥ {TARGETS['servers']:,}: {verdict(full)}). At that N:

- collector CPU: {fmt(us_per_batch(best), 0)} µs per {"applied batch" if per == 1 else "server sample"} (target ≤ {TARGETS['us_per_batch']:.0f} µs: {verdict((us_per_batch(best) or 1e9) <= TARGETS['us_per_batch'])});
- memory: {fmt(best['collector_kib_per_server'], 0)} KiB per live server (target ≤ {TARGETS['kib']:.0f} KiB: {verdict(best['collector_kib_per_server'] <= TARGETS['kib'])});
- FleetSummary p99: {fmt(best['fleet_summary_p99_ms'], 2)} ms (target ≤ 20 ms at {TARGETS['servers']:,} servers: {verdict(full and best['fleet_summary_p99_ms'] <= TARGETS['summary_ms'])});
- GetActivity p99: {fmt(best['get_activity_p99_ms'], 2)} ms on the readers' port (target ≤ 5 ms at {TARGETS['servers']:,} servers: {verdict(full and best['get_activity_p99_ms'] <= TARGETS['activity_ms'])}); {fmt(best.get('get_activity_listen_p99_ms'), 2)} ms on the agents' port in the same run;
- `GetActivity … at` an hour back: """ + (f"""{fmt(best['at_1h_p50_ms'], 1)} ms median, {fmt(best['at_1h_max_ms'], 1)} ms at most, over {len(best['at_1h_sessions'])} servers (each answered with {sorted(set(best['at_1h_sessions']))} sessions).""" if best['at_1h_sessions'] else (f"not timed: frames are kept {args.retention_frames}." if args.retention_frames else "not timed (the hour of history was not all sent within 3 minutes)."))
    else:
        headline = "No fleet size held: every run missed the p99 freshness of 2 s or lost agents."
    image = draw(runs, args.store, per, args.retention_frames)
    if image:
        headline += f"\n\n![The collector's CPU per batch and memory per server against servers]({image})"
    machine = machine_name()
    store = ("its SQLite store" if cluster is None else
             "its PostgreSQL store (a throwaway server, default settings: fsync and synchronous commit on)")
    extra_head = "" if cluster is None else " store cores |"
    if per == 1:
        agents_are = ("N agents (one server of 100 sessions each, about 10% changing each second, "
                      "1 Hz, one HTTP/2 connection each, zstd)")
        held_rate, per_what = "batches/s", "batches/s"
    else:
        agents_are = (f"N servers of 100 sessions each (about 10% changing each second) on N/{per} agents, "
                      f"each with one HTTP/2 connection and stream and {per} servers, 1 Hz: a batch "
                      f"carries a snapshot of each of its agent's servers, zstd")
        held_rate = f"batches/s times {per}"
        per_what = f"server samples a second (batches/s times {per}): the CPU per server sample"
    kept_note = (f" The collector keeps frames {args.retention_frames} (`--retention-frames`), so in the window it "
                 "deletes each minute the minute of frames past it, as a collector past its retention does "
                 "(with the default of 24 h, a day after it started)." if args.retention_frames else "")
    section = f"""{title}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine}; the collector, {store} and the generator share the machine.

{headline}

Each row is one run: {agents_are}, {args.warmup} s after the last connected, measured for {args.measure} s.{kept_note} *Held* means every agent streamed at 1 Hz ({held_rate} at least 98% of N), every server was up, and the p99 freshness stayed at most 2 s. Freshness is now minus the time of the sample a random server's GetActivity returned, so at 1 Hz it is at least 0–1 s by itself. Readers ask on the collector's readers' port (`--query-listen`), whose threads take 5 steps of nice (this runs as root) and a 0.1 ms time slice; every other GetActivity goes to the agents' port (`--listen`) instead, timed apart, in the column *on --listen*. The generator's reader stands for a tool on another machine, and takes 10 steps of nice and the same slice, so that it does not wait behind the generator's agents{reader_nice(runs)}. Times are p50 / p99 (`at`: median / max). Memory is the collector's RSS less its RSS before the agents came, over N. Cores are CPU seconds per second; µs/{unit} is the collector's cores over {per_what}.

| N | held | batches/s | freshness ms | GetActivity ms | GetActivity on --listen ms | FleetSummary ms | `at` −1 h ms | KiB/server | collector RSS MiB | collector cores | µs/{unit} | generator cores | store MiB |{extra_head} agent errors |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{"---|" if cluster is not None else ""}
""" + "\n".join(rows) + "\n"
    write_section(Path(args.output), title, section)
    print(section)


def reader_nice(runs: list[dict]) -> str:
    """Says where the generator's reader could not raise itself."""
    kept = [r["agents"] for r in runs if "failed" not in r and r.get("reader_nice") is None]
    return f" (it could not at N = {', '.join(f'{n:,}' for n in kept)})" if kept else ""


def storm_section(runs: list[dict], command: str, machine: str) -> str:
    rows, verdicts, curves = [], [], []
    for r in runs:
        if "failed" in r:
            rows.append(f"| {r['agents']:,} | **failed**: {r['failed']} |" + " |" * 6)
            continue
        ok = r["all_live_s"] is not None and r["all_live_s"] <= STORM_TARGET_S and r["gave_up"] == 0
        verdicts.append(f"{r['agents']:,} agents {'meet' if ok else 'MISS'} it")
        rows.append(
            f"| {r['agents']:,} | {fmt(r['stop_s'], 1)} | {fmt(r['all_live_s'], 1)} | {fmt(r['all_live_from_stop_s'], 1)} "
            f"| {fmt(r['lowest_live'], 0)} | {r['reconnects']:,} | {r['failed_attempts']:,} | {r['gave_up']} |")
        # The curve, thinned to one point per 5 s of its own clock.
        points, last = [], -5.0
        for t, live in r["curve"]:
            if t - last >= 5 or live == r["agents"]:
                points.append(f"{t:.0f} s: {live:,}")
                last = t
            if live == r["agents"] and t > r["stop_s"]:
                break
        curves.append(f"- {r['agents']:,} agents, live streams from the stop: " + "; ".join(points))
    return f"""{STORM_TITLE}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine}; the collector and the generator share the machine.

N agents stream (`pgfleet-loadgen --reconnect`: one HTTP/2 connection each, and the agent's own reconnect timing: a first attempt at a random time within `RECONNECT_SPREAD` of 5 s, then its backoff of 0.5 s doubling to 30 s). Once every one has been live for 10 s, the collector is stopped with SIGTERM, which ends every stream with "reconnect", and started again on the same port and data directory, so the whole fleet reconnects at once. Target: every agent streams again within {STORM_TARGET_S:.0f} s of the new collector's start, and none gives up: {", ".join(verdicts) or "no run finished"}. *Live* is an agent past Welcome and its first batch, as the generator counts it.

| agents | stop, s | all live again after the start, s | after the stop, s | fewest live | streams opened again | attempts that failed | agents that gave up |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n\n" + "\n".join(curves) + "\n"


if __name__ == "__main__":
    main()

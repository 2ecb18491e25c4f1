#!/usr/bin/env python3
"""Two collector builds side by side: this tree's and a baseline, at once.

This machine is shared and noisy, so a change to the collector is measured
against the build before it in the same run: both collectors start (SQLite
store, DB load kept, each in its own temporary directory), and each gets its
own `pgfleet-loadgen` of N agents (as in bench/collector_load.py: one server
of 100 sessions each, about 10% changing each second, 1 Hz, 10 of them first
sending an hour of history). Both generators run at the same time, so both
collectors see the same machine. Each run is repeated with the two swapped
(which one starts first, and which port), --runs times.

Writes a table of the collector's CPU per applied batch, its memory per
server and the p99 freshness of each build in each run to BENCHMARKS.md,
with the command that made it, and the ratio of the medians.

With --reads, each collector also serves `--query-listen`, where its
generator sends its reads (GetActivity of a random server, FleetSummary),
and the table has their latency and the CPU that the readers' threads
(`pgfleet-reads`) took per read over the window.

With --load-kept HOURS, each collector's store first holds HOURS of minutes
of DB load of as many other servers as it has agents (7 KB rows of random
bytes, as stored uncompressed), as a collector running that long would, all
of them filled before the first collector starts: the table then has each
writer's cores (`pgfleet-store`), the freshness max and the ramp, in a
section of its own.

With --frames-kept HOURS, each collector's store first holds an index of
frames as a collector that has run HOURS under this fleet holds it (see
`keep_frames`), filled once before the first collector starts and copied.

With --alone, the builds do not run at once but one after the other, taking
turns, each alone under its generator: for fleets that two collectors and
their generators cannot share this machine at (10,000 agents), where what a
change saves shows only at that size. The machine's speed then moves between
runs, so the table also has the CPU per batch of the aggregator's thread and
of the ingest runtime's threads: what most changes do not touch shows how far
the machine moved.

    python3 bench/collector_ab.py --baseline PATH/TO/pgfleet-collector [--agents 1250] [--measure 90] [--runs 2] [--reads] [--load-kept 6] [--frames-kept 1] [--alone]

A baseline is any release build of `pgfleet-collector`, for instance of the
commit before a change: `git worktree add /tmp/base HEAD~1 && cargo build
--release -p pgfleet-collector --manifest-path /tmp/base/Cargo.toml`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_overhead import cpu_ns
from collector_load import build, fmt, free_port, stop_collector
from report import machine_name, staged, wait_port, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Collector side by side"
KEPT_TITLE = "## Collector side by side, load kept"
# A minute of a server's load as stored (uncompressed since stop 33).
LOAD_ROW_BYTES = 7_200
# The collector's threads that serve readers, and its store's writer.
READERS = "pgfleet-reads"
WRITER = "pgfleet-store"
# The aggregator's thread and the ingest runtime's workers (names as the
# kernel keeps them: at most 15 bytes).
AGGREGATOR = "pgfleet-aggrega"
INGEST = "pgfleet-ingest"
# The generator's agents that first send an hour of history (the first
# servers, `load-00000` …), whose past the generator reads back.
HISTORY_AGENTS = 10


def collector_argv(binary: Path, flags: tuple = ()):
    """A `pgfleet-collector`'s command line, given its port and directory,
    and the readers' port if it has one; `flags` added. It runs a copy of
    `binary` (see `report.staged`)."""
    binary = staged(binary)
    return lambda port, data, query=None: [
        str(binary), "--listen", f"127.0.0.1:{port}", "--http-listen", "off",
        "--data-dir", str(data / "store"),
        *(["--query-listen", f"127.0.0.1:{query}"] if query else []), *flags]


def used_bytes(store: Path) -> int:
    """The bytes `store`'s database holds in pages in use, as a reader sees
    it now (its write-ahead log included, free pages not): a look at the
    file's header, not a scan. 0 for a server that keeps no store."""
    path = store / "pgfleet.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * db.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def frames_stored(store: Path, start_us: int, end_us: int) -> dict:
    """What `store`'s SQLite file holds of the frames of [start_us, end_us]
    (sample times): how many, their bodies' mean bytes; and the file's
    bytes with its write-ahead log. Read-only beside the collector."""
    path = store / "pgfleet.sqlite"
    if not path.exists():  # a server that keeps no store (the floors)
        return {"frames_in_window": 0, "frame_bytes": float("nan"), "store_bytes": 0}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count, mean = db.execute(
            "SELECT count(*), avg(length(body)) FROM frames WHERE at BETWEEN ?1 AND ?2",
            (start_us, end_us)).fetchone()
    finally:
        db.close()
    files = sum(f.stat().st_size for f in (path, store / "pgfleet.sqlite-wal") if f.exists())
    return {"frames_in_window": count, "frame_bytes": mean or float("nan"), "store_bytes": files}


def keep_load(store: Path, hours: float, servers: int) -> None:
    """Fills `store`'s SQLite file with `hours` of minutes of load of
    `servers` servers (not the generator's), up to now, oldest first: the
    table and index of every version since load was kept; the collector
    makes the rest of its file when it opens it."""
    store.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(store / "pgfleet.sqlite")
    # Written once, straight into the file (the collector's own connection
    # puts it in WAL mode).
    db.execute("PRAGMA journal_mode = OFF")
    db.executescript("""
        CREATE TABLE load (id INTEGER PRIMARY KEY, server_id TEXT NOT NULL,
                           minute INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE UNIQUE INDEX load_by_server ON load (server_id, minute);""")
    minutes, now = int(hours * 60), int(time.time()) // 60 * 60
    db.execute("""
        WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < ?1 * ?2 - 1)
        INSERT INTO load (server_id, minute, body)
            SELECT 'kept-' || (i % ?2), (?3 - (?1 - i / ?2) * 60) * 1000000, randomblob(?4) FROM r""",
               (minutes, servers, now, LOAD_ROW_BYTES))
    db.commit()
    db.close()


def store_table(name: str) -> str:
    """The store's own SQL for its table `name`, read from its source
    (`SCHEMA` in collector/src/store/sqlite.rs), so that a file filled here
    has the table as the store makes it."""
    source = (ROOT / "collector" / "src" / "store" / "sqlite.rs").read_text()
    found = re.search(rf"CREATE TABLE IF NOT EXISTS {name} \([^;]*;", source)
    if not found:
        raise SystemExit(f"collector/src/store/sqlite.rs makes no table {name}: mend bench/collector_ab.py")
    return found.group(0)


def keep_frames(store: Path, hours: float, servers: int, template: Path) -> None:
    """Puts in `store`'s SQLite file an index of frames (`frame_index`)
    that holds `hours` of a frame a second of each of the generator's
    `servers` (`load-00000` …), up to now, as a collector that has run that
    long holds it, up to the first run's start (later runs start some
    minutes after it ends): the cost of indexing a server's frames grows
    with what the index holds. The frames themselves are not written (the table is
    only ever appended to, so its older rows are not what the writer
    touches), so the entries name no frame, and the servers of the
    [`HISTORY_AGENTS`], whose past the generator reads, have none. Filled
    once into `template`, in key order, and copied."""
    if not template.exists():
        print(f"+ filling {template} with {hours:g} h of {servers:,} servers' index", file=sys.stderr, flush=True)
        db = sqlite3.connect(template.with_suffix(".part"))
        db.execute("PRAGMA journal_mode = OFF")
        db.executescript(store_table("frame_index"))
        seconds, now = int(hours * 3600), int(time.time())
        if servers > HISTORY_AGENTS:
            db.execute("""
                WITH RECURSIVE r(i) AS (SELECT ?4 * ?1 UNION ALL SELECT i + 1 FROM r WHERE i < ?1 * ?2 - 1)
                INSERT INTO frame_index (server_id, at, id, keyframe)
                    SELECT printf('load-%05d', i / ?1), (?3 - ?1 + i % ?1) * 1000000,
                           -((i % ?1) * ?2 + i / ?1 + 1), (i % ?1) % 60 = 0 FROM r""",
                       (seconds, servers, now, HISTORY_AGENTS))
        db.commit()
        db.close()
        template.with_suffix(".part").rename(template)
    store.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, store / "pgfleet.sqlite")


def run_pair(bin_dir: Path, builds: list, args, generator=("--history-agents", str(HISTORY_AGENTS)),
             connect_rate: int = 250, generator_cpu: bool = False, reads: bool = False,
             threads: tuple = (), prepare=None) -> list[dict]:
    """Starts every build's server and generator at once; their results.

    `builds` are (name, argv) or (name, argv, loadgen), where argv(port,
    directory) is the server's command line and loadgen the
    `pgfleet-loadgen` that streams to it (this tree's when not given);
    `generator` is added to each generator's command line, which connects
    `connect_rate` agents a second. With `generator_cpu`, each result also
    has its generator's cores ("generator_cores", every thread, read from
    outside over the measuring window less 5 s at each end). With `reads`,
    each server is given a readers' port (argv(port, directory, query port))
    where its generator reads, and each result has the CPU its readers'
    threads took per read over that window ("reads_us_per_read"). With
    `threads` (prefixes of the collector's thread names), each result has
    the cores the threads of each took over that window ("thread_cores").
    `prepare`, if given, is called with each server's directory before it
    starts. Generators start once every server listens."""
    started = []
    dirs = [Path(tempfile.mkdtemp(prefix="pgfleet-ab-")) for _ in builds]
    try:
        # Every store first, so that no server runs beside another's filling.
        for data in dirs if prepare else ():
            prepare(data)
        for (name, argv, *_), data in zip(builds, dirs):
            port = free_port()
            query = free_port() if reads else None
            log = open(data / "collector.log", "w")
            collector = subprocess.Popen(
                argv(port, data, query) if reads else argv(port, data),
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PGFLEET_LOG="warn"))
            started.append((name, collector, log, data, port, query))
        # The collector binds its ports before it opens its store.
        for _, collector, _, _, port, _ in started:
            wait_port(port, 600, collector)
        gens, launched = [], {}
        for (name, collector, _, data, port, query), build in zip(started, builds):
            loadgen = build[2] if len(build) > 2 else bin_dir / "pgfleet-loadgen"
            cmd = [str(loadgen), "--collector", f"http://127.0.0.1:{port}",
                   "--collector-pid", str(collector.pid), "--agents", str(args.agents),
                   "--connect-rate", str(connect_rate), "--warmup", f"{args.warmup}s",
                   "--measure", f"{args.measure}s", *generator,
                   *(["--query", f"http://127.0.0.1:{query}"] if query else [])]
            print("+", " ".join(cmd), file=sys.stderr, flush=True)
            launched[name] = (time.monotonic(), time.time())
            # Its complaints to a file: a pipe read only at its end would fill
            # (an agent that fails says so) and stop it.
            errors = open(data / "generator.err", "w+")
            gens.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True), errors))
        # Each second, every generator's CPU and the named threads' of its
        # server, until the generators end: each window is then cut from its
        # generator's own measuring, less 5 s at each end (its ramp, which
        # the history and a store that stalls lengthen, is known only then).
        prefixes = ((READERS,) if reads else ()) + (WRITER,) + tuple(t for t in threads if t != WRITER)
        samples = {name: [] for name, *_ in gens}
        if prefixes:
            pids = {name: collector.pid for name, collector, *_ in started}
            dirs_by_name = {name: data for name, _, _, data, *_ in started}
            while any(gen.poll() is None for _, gen, _ in gens):
                for name, gen, _ in gens:
                    if gen.poll() is None:
                        samples[name].append((time.monotonic(), cpu_ns(gen.pid),
                                              {t: cpu_ns(pids[name], t) for t in prefixes},
                                              used_bytes(dirs_by_name[name] / "store")))
                time.sleep(1)
        results, cpu, thread_cpu = [], {}, {}
        for name, gen, errors in gens:
            out, _ = gen.communicate()
            if gen.returncode != 0:
                errors.seek(0)
                raise SystemExit(f"the generator against {name} failed: {errors.read().strip().splitlines()[-1:]}")
            r = json.loads(out)
            r["build"] = name
            data = next(d for n, _, _, d, *_ in started if n == name)
            if samples[name]:
                began = launched[name][0] + r["ramp_s"] + args.warmup
                inside = [x for x in samples[name] if began + 5 <= x[0] <= began + r["measured_s"] - 5]
                if len(inside) < 2:
                    raise SystemExit(f"no CPU window within the measuring against {name}: give a longer --measure")
                (t0, c0, r0, u0), (t1, c1, r1, u1) = inside[0], inside[-1]
                cpu[name] = (c1 - c0) / 1e9 / (t1 - t0)
                r["disk_bytes_per_server_s"] = (u1 - u0) / (t1 - t0) / args.agents
                thread_cpu[name] = {t: (r1[t] - r0[t]) / 1e9 / (t1 - t0) for t in prefixes}
            if generator_cpu:
                r["generator_cores"] = cpu[name]
            if reads:
                per_s = (r["get_activity_calls"] + r["fleet_summary_calls"]) / args.measure
                r["reads_us_per_read"] = 1e6 * thread_cpu[name][READERS] / per_s if per_s else float("nan")
            if threads:
                r["thread_cores"] = {t: thread_cpu[name][t] for t in threads}
            r["writer_cores"] = thread_cpu[name][WRITER]
            # The frames sampled in the same window (by the agents' clock,
            # which is this machine's).
            began_at = launched[name][1] + r["ramp_s"] + args.warmup
            r.update(frames_stored(data / "store", int((began_at + 5) * 1e6),
                                   int((began_at + r["measured_s"] - 5) * 1e6)))
            results.append(r)
        return results
    finally:
        for _, collector, log, data, *_ in started:
            stop_collector(collector, log, data)
        for data in dirs:
            shutil.rmtree(data, ignore_errors=True)


def us_per_batch(r: dict, thread: str = "") -> float:
    """The collector's CPU per batch applied (of its threads named `thread`,
    when given: a prefix in `threads` of its run); NaN if it applied none."""
    cores = r["thread_cores"][thread] if thread else r["collector_cores"]
    return 1e6 * cores / r["batches_per_s"] if r["batches_per_s"] else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the baseline's pgfleet-collector binary")
    p.add_argument("--baseline-flags", default="",
                   help="flags added to the baseline's command line (e.g. '--frame-dictionaries off' to measure"
                        " this tree against itself with a setting changed)")
    p.add_argument("--baseline-note", default="a release build given by path",
                   help="what the baseline is, for the report (e.g. 'the release build of 17c833e')")
    p.add_argument("--agents", type=int, default=1250, help="agents of each collector")
    p.add_argument("--warmup", type=int, default=20, help="seconds after the ramp before measuring")
    p.add_argument("--measure", type=int, default=90, help="seconds measured")
    p.add_argument("--runs", type=int, default=2, help="runs, each build first in turn")
    p.add_argument("--reads", action="store_true",
                   help="read on each collector's readers' port (--query-listen) and report the reads")
    p.add_argument("--load-kept", type=float, default=0, metavar="HOURS",
                   help="first fill each store with this many hours of load of other servers")
    p.add_argument("--frames-kept", type=float, default=0, metavar="HOURS",
                   help="each store's index of frames first holds HOURS of a frame a second of each agent's server")
    p.add_argument("--alone", action="store_true",
                   help="run the builds one after the other, each alone, rather than at once (for 10,000 agents)")
    p.add_argument("--title", default=TITLE[3:],
                   help=f"the section of BENCHMARKS.md to write (default: {TITLE[3:]!r}, or {KEPT_TITLE[3:]!r} with --load-kept)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    baseline = Path(args.baseline).resolve()
    if not baseline.is_file():
        raise SystemExit(f"--baseline {args.baseline}: no such file; give a pgfleet-collector binary")
    bin_dir = build()
    builds = [("this tree", collector_argv(bin_dir / "pgfleet-collector")),
              ("baseline", collector_argv(baseline, tuple(shlex.split(args.baseline_flags))))]
    kept = {}
    template = Path(tempfile.gettempdir()) / f"pgfleet-ab-frames-{os.getpid()}.sqlite"

    def prepare(data: Path) -> None:
        # The index's copy first: it is the whole file, to which load is added.
        if args.frames_kept:
            keep_frames(data / "store", args.frames_kept, args.agents, template)
        if args.load_kept:
            keep_load(data / "store", args.load_kept, args.agents)
    if args.load_kept or args.frames_kept:
        kept = {"threads": ("pgfleet-store",), "prepare": prepare}
    rows = []
    if args.alone:
        kept["threads"] = kept.get("threads", ()) + (AGGREGATOR, INGEST)
    try:
        for i in range(args.runs):
            order = builds if i % 2 == 0 else builds[::-1]
            # Alone, each build is a run of its own, connecting as fast as
            # "Collector load" does.
            groups = [[b] for b in order] if args.alone else [order]
            for group in groups:
                for r in run_pair(bin_dir, group, args, reads=args.reads,
                                  connect_rate=500 if args.alone else 250, **kept):
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    rows.append((i + 1, r))
    finally:
        # Some 1.2 GB for an hour of 10,000 servers.
        template.unlink(missing_ok=True)
        template.with_suffix(".part").unlink(missing_ok=True)
    flags = f" --baseline-flags '{args.baseline_flags}'" if args.baseline_flags else ""
    command = f"python3 bench/collector_ab.py --baseline {args.baseline}{flags} --baseline-note '{args.baseline_note}'" + "".join(
        f" --{k} {v}" for k, v, d in (("agents", args.agents, 1250), ("warmup", args.warmup, 20), ("measure", args.measure, 90),
                                       ("runs", args.runs, 2), ("load-kept", args.load_kept, 0),
                                       ("frames-kept", args.frames_kept, 0)) if v != d) + (
        " --reads" if args.reads else "") + (" --alone" if args.alone else "") + (
        f" --title '{args.title}'" if args.title != TITLE[3:] else "")
    def medians(of):
        return {name: statistics.median(of(r) for _, r in rows if r["build"] == name) for name, _ in builds}
    median = medians(us_per_batch)
    writer = medians(lambda r: r["writer_cores"])
    frame = medians(lambda r: r["frame_bytes"])
    disk = medians(lambda r: r["disk_bytes_per_server_s"])
    reads_head, reads_rule, reads_text, reads_median = "", "", "", ""
    if args.reads:
        reads_head = " GetActivity p50 ms | GetActivity p99 ms | readers' µs per read |"
        reads_rule = "---|---|---|"
        reads_text = (f" Each generator reads on its collector's readers' port (`--query-listen`): a GetActivity of a"
                      f" random server about 20 times a second and a FleetSummary 4 times; *readers' µs per read* is"
                      f" the CPU of the collector's `pgfleet-reads` threads over the window less 5 s at each end,"
                      f" over the reads of the window.")
        per_read = medians(lambda r: r["reads_us_per_read"])
        reads_median = (f"\nMedian readers' CPU per read: this tree {per_read['this tree']:.0f} µs, the baseline "
                        f"{per_read['baseline']:.0f} µs ({per_read['this tree'] / per_read['baseline']:.2f}×).\n")

    def reads_cells(r):
        if not args.reads:
            return ""
        return (f" {fmt(r['get_activity_p50_ms'], 2)} | {fmt(r['get_activity_p99_ms'], 2)} |"
                f" {r['reads_us_per_read']:.0f} |")
    kept_head, kept_rule, kept_text = "", "", ""
    title = f"## {args.title}" if args.title != TITLE[3:] else TITLE
    if args.load_kept:
        title = f"## {args.title}" if args.title != TITLE[3:] else KEPT_TITLE
        kept_head = " freshness max ms | ramp s |"
        kept_rule = "---|---|"
        rows_kept = int(args.load_kept * 60) * args.agents
        kept_text = (f" Each store first holds {args.load_kept:g} h of minutes of load of {args.agents:,} other"
                     f" servers ({rows_kept:,} rows of {LOAD_ROW_BYTES:,} random bytes, some"
                     f" {rows_kept * LOAD_ROW_BYTES / 2**30:.1f} GiB), as after that long; none is past the"
                     f" retention (30 days). *Ramp s* is the seconds until every agent streamed, ten of"
                     f" them first sending an hour of history.")

    if args.frames_kept:
        kept_text += (f" Each store's index of frames (`frame_index`) first holds {args.frames_kept:g} h of a frame a"
                      f" second of each of the generator's {args.agents:,} servers but the {HISTORY_AGENTS} whose past it"
                      " reads, up to the first run's start, as after that long (the frames it names are not written:"
                      " the table is only appended to).")

    def kept_cells(r):
        if not args.load_kept:
            return ""
        return f" {fmt(r['freshness_max_ms'], 0)} | {r['ramp_s']:.0f} |"
    alone_head, alone_rule, alone_text, alone_median = "", "", "", ""
    if args.alone:
        alone_head = " aggregator µs/batch | ingest µs/batch |"
        alone_rule = "---|---|"
        alone_text = (" *Aggregator* and *ingest µs/batch* are the CPU of the collector's aggregator thread"
                      f" (`pgfleet-aggregator`) and of its ingest runtime's threads (`{INGEST}`; `tokio-rt-worker` in builds before stop 61) over the window less 5 s"
                      " at each end, per batch.")
        for thread, what in ((AGGREGATOR, "aggregator's"), (INGEST, "ingest runtime's")):
            m = medians(lambda r, t=thread: us_per_batch(r, t))
            alone_median += (f"Median {what} CPU per batch: this tree {m['this tree']:.1f} µs, the baseline"
                             f" {m['baseline']:.1f} µs ({m['this tree'] / m['baseline']:.2f}×).\n")

    def alone_cells(r):
        if not args.alone:
            return ""
        return f" {us_per_batch(r, AGGREGATOR):.1f} | {us_per_batch(r, INGEST):.1f} |"
    table = "\n".join(
        f"| {run} | {r['build']} | {r['batches_per_s']:,.0f} | {us_per_batch(r):.0f} | "
        f"{r['collector_kib_per_server']:.0f} | {fmt(r['freshness_p99_ms'], 0)} | {r['errors']} |"
        f" {r['writer_cores']:.3f} | {r['frame_bytes']:.0f} | {r['disk_bytes_per_server_s']:,.0f} |"
        f" {r['store_bytes'] / 2**20:,.0f} |{reads_cells(r)}"
        f"{kept_cells(r)}{alone_cells(r)}"
        for run, r in rows)
    if args.alone:
        together = "Each collector alone, one after the other, under its own"
        order_text = "the builds take turns, and each run has each build once, the first in turn."
        same_moment = ""
    else:
        together = "Two collectors at once, each under its own"
        order_text = "the runs swap which one starts first."
        same_moment = " (both collectors at the same moment of the minute)"
    section = f"""{title}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine_name()}. The baseline: {args.baseline_note}.

{together} generator of {args.agents:,} agents (as in "Collector load"), {args.warmup} s after the ramp, measured for {args.measure} s; {order_text} µs/batch is the collector's CPU over the batches it applied; KiB/server its RSS less its RSS before the agents came, over N, read at the end of the window{same_moment}. *Writer's cores* are those of the store's thread (`pgfleet-store`) over the window less 5 s at each end; *bytes a frame*, the mean stored body of the frames sampled in that window; *disk B/server-s*, how much the database's pages in use grew over that window (`PRAGMA page_count` less `freelist_count`, read each second; every table, the frames' rows and index with their bodies, DB load and the rest), a second of a server; *store MiB*, the SQLite file and its log once the generator ended.{reads_text}{kept_text}{alone_text}

| run | build | batches/s | µs/batch | KiB/server | freshness p99 ms | agent errors | writer's cores | bytes a frame | disk B/server-s | store MiB |{reads_head}{kept_head}{alone_head}
|---|---|---|---|---|---|---|---|---|---|---|{reads_rule}{kept_rule}{alone_rule}
{table}

Median CPU per batch: this tree {median['this tree']:.0f} µs, the baseline {median['baseline']:.0f} µs ({median['this tree'] / median['baseline']:.2f}×).
Median writer's cores: this tree {writer['this tree']:.3f}, the baseline {writer['baseline']:.3f} ({writer['this tree'] / writer['baseline']:.2f}×); bytes a frame: this tree {frame['this tree']:.0f}, the baseline {frame['baseline']:.0f} ({frame['this tree'] / frame['baseline']:.2f}×); disk a server-second: this tree {disk['this tree']:,.0f} bytes, the baseline {disk['baseline']:,.0f} ({disk['this tree'] / disk['baseline']:.2f}×).
{reads_median}{alone_median}"""
    write_section(Path(args.output), title, section)
    print(section)


if __name__ == "__main__":
    main()

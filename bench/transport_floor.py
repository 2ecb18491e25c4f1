#!/usr/bin/env python3
"""The floor under the collector's CPU per batch and memory per server.

`pgfleet-collector` and four servers that do less than it, side by side in
one run: the example `ingest_floor` (collector/examples/ingest_floor.rs) on
the collector's listener, gRPC settings and ingest code, with no live state
and no DB load, doing for each batch:

- store: what resolve does, and each snapshot's frame encoded as ingest
  encodes it and kept by the collector's own history store (SQLite), an ack
  sent once what it covers is committed: the least a collector that keeps
  the history of sessions does;
- resolve: the stream's dictionary kept and the snapshots resolved into the
  collector's model (what the collector's ingest hands on), no store;
- decode: the zstd frame decompressed and decoded as a Batch;
- receive: HTTP/2, gRPC's framing and the AgentMessage decoded.

Each server gets its own `pgfleet-loadgen` of N agents (as in
bench/collector_load.py: one HTTP/2 connection and one server of 100 sessions
each, about 10% changing each second, 1 Hz; no history, no reads), all at
the same time, so that all five see the same machine; the runs rotate which
starts first. Writes BENCHMARKS.md "The transport's floor" with the command
that made it.

With --solo N it then runs each of the five alone, one after another, under
a generator of N agents: the floor at a larger fleet (a server that does not
keep up, under 98% of N batches a second, is marked). With --frames-kept H,
the stores of those runs (the collector's and the store floor's) first hold
an index of H hours of frames of the N servers, as a store that has run that
long (bench/collector_ab.py's --frames-kept).

    python3 bench/transport_floor.py [--agents 1000] [--measure 60] [--runs 2] [--solo 10000] [--frames-kept 1]
"""
from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from collector_ab import AGGREGATOR, INGEST, collector_argv, keep_frames, run_pair, us_per_batch
from collector_load import build
from report import machine_name, staged, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## The transport's floor"
LEVELS = ("store", "resolve", "decode", "receive")


def floor_argv(binary: Path, work: str):
    """The floor keeps the memory it frees, as pgfleet-collector does; the
    store floor keeps its history where the collector's is (`data/store`)."""
    return lambda port, data: ["env", "MIMALLOC_PURGE_DELAY=-1", str(binary),
                               "--listen", f"127.0.0.1:{port}", "--work", work,
                               *(["--data-dir", str(data / "store")] if work == "store" else [])]


def keeps_store(name: str) -> bool:
    return name in ("pgfleet-collector", "floor: store")


def aged(hours: float, servers: int, template: Path):
    """What fills a server's store before it starts: an index of `hours`
    of frames of `servers` (see collector_ab.keep_frames)."""
    return lambda data: keep_frames(data / "store", hours, servers, template)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=1000, help="agents of each server")
    p.add_argument("--warmup", type=int, default=20, help="seconds after the ramp before measuring")
    p.add_argument("--measure", type=int, default=60, help="seconds measured")
    p.add_argument("--runs", type=int, default=2, help="runs, each starting with another server")
    p.add_argument("--solo", type=int, default=0,
                   help="then run each server alone under a generator of this many agents (0: not)")
    p.add_argument("--frames-kept", type=float, default=0, metavar="HOURS",
                   help="in the runs alone, each store's index of frames first holds HOURS of a frame a second"
                        " of each agent's server")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    if args.frames_kept and not args.solo:
        raise SystemExit("--frames-kept fills the stores of the runs alone: give --solo too")
    # One connection per agent on each side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(args.agents * 5, args.solo) + 100 > hard:
        raise SystemExit(f"this needs more than {hard} open files (the hard limit): fewer --agents or a smaller --solo")
    bin_dir = build()
    cmd = ["cargo", "build", "--release", "-q", "-p", "pgfleet-collector", "--example", "ingest_floor"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    floor = staged(bin_dir / "examples" / "ingest_floor")
    servers = [("pgfleet-collector", collector_argv(bin_dir / "pgfleet-collector"))]
    servers += [(f"floor: {w}", floor_argv(floor, w)) for w in LEVELS]
    rows = []
    for i in range(args.runs):
        order = servers[i % len(servers):] + servers[:i % len(servers)]
        for r in run_pair(bin_dir, order, args, generator=("--no-reads",)):
            if r["errors"]:
                raise SystemExit(f"{r['errors']} agents of {r['build']} failed: see its generator's stderr")
            rows.append((i + 1, r))
    solo = []
    template = Path(tempfile.gettempdir()) / f"pgfleet-floor-frames-{os.getpid()}.sqlite"
    try:
        if args.solo:
            alone = argparse.Namespace(**{**vars(args), "agents": args.solo})
            for server in servers:
                prepare = (aged(args.frames_kept, args.solo, template)
                           if args.frames_kept and keeps_store(server[0]) else None)
                threads = (AGGREGATOR, INGEST) if server[0] == "pgfleet-collector" else ()
                try:
                    (r,) = run_pair(bin_dir, [server], alone, generator=("--no-reads",), connect_rate=500,
                                    prepare=prepare, threads=threads)
                except SystemExit as e:
                    r = {"build": server[0], "failed": str(e)}
                solo.append(r)
    finally:
        template.unlink(missing_ok=True)
        template.with_suffix(".part").unlink(missing_ok=True)
    names = [name for name, _ in servers]
    cpu = {n: statistics.median(us_per_batch(r) for _, r in rows if r["build"] == n) for n in names}
    mem = {n: statistics.median(r["collector_kib_per_server"] for _, r in rows if r["build"] == n)
           for n in names}
    command = "python3 bench/transport_floor.py" + "".join(
        f" --{k} {v}" for k, v, d in (("agents", args.agents, 1000), ("warmup", args.warmup, 20),
                                       ("measure", args.measure, 60), ("runs", args.runs, 2),
                                       ("solo", args.solo, 0), ("frames-kept", args.frames_kept, 0))
        if v != d)
    aged_text = "" if not args.frames_kept else (
        f" The collector's store and the store floor's first hold an index of frames (`frame_index`) of"
        f" {args.frames_kept:g} h of a frame a second of each server but ten, as after that long"
        f" (bench/collector_ab.py's `--frames-kept`: the frames it names are not written).")

    def per_batch(r: dict, cores: float | None) -> str:
        return "–" if cores is None or not r["batches_per_s"] else f"{1e6 * cores / r['batches_per_s']:.1f}"

    def split(r: dict) -> str:
        """Writer, aggregator and ingest µs/batch: the collector's by its
        threads, a floor's writer and the rest of it."""
        store = r["writer_cores"] if keeps_store(r["build"]) else None
        if "thread_cores" in r and r["thread_cores"]:
            rest = (r["thread_cores"][AGGREGATOR], r["thread_cores"][INGEST])
        else:
            rest = (None, r["collector_cores"] - (store or 0))
        return " | ".join(per_batch(r, c) for c in (store, *rest))
    solo_table = "" if not solo else f"""
Then each alone, one after another, under a generator of {args.solo:,} agents (connecting at 500 a second).{aged_text} *Writer µs/batch* is the CPU of the store's thread (`pgfleet-store`) over the window less 5 s at each end, per batch (the collector's writer also writes the minutes' rollups, DB load and query texts, the store floor's frames alone); *aggregator* and *ingest*, the collector's aggregator thread (`pgfleet-aggregator`) and its ingest runtime's threads (`pgfleet-ingest`) the same way, and for a floor, *ingest* is every thread but the writer:

| server | kept up | batches/s | cores | µs/batch | writer µs/batch | aggregator µs/batch | ingest µs/batch | KiB/server | agent errors |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(
        f"| {r['build']} | **failed**: {r['failed'][:120]} |" + " |" * 8 if "failed" in r else
        f"| {r['build']} | {'yes' if r['batches_per_s'] >= 0.98 * args.solo else '**no**'} "
        f"| {r['batches_per_s']:,.0f} | {r['collector_cores']:.3f} | "
        f"{us_per_batch(r):.0f} | {split(r)} | {r['collector_kib_per_server']:.0f} | {r['errors']} |"
        for r in solo) + "\n"
    table = "\n".join(
        f"| {run} | {r['build']} | {r['batches_per_s']:,.0f} | {r['collector_cores']:.3f} | "
        f"{us_per_batch(r):.0f} | {r['collector_kib_per_server']:.0f} |"
        for run, r in sorted(rows, key=lambda x: (x[0], names.index(x[1]["build"]))))
    medians = "\n".join(
        f"| {n} | {cpu[n]:.0f} | {cpu[n] / cpu[names[0]]:.2f} | {mem[n]:.0f} | {mem[n] / mem[names[0]]:.2f} |"
        for n in names)
    section = f"""{TITLE}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine_name()}.

Five servers at once, each under its own generator of {args.agents:,} agents (one HTTP/2 connection and one server of 100 sessions each, about 10% changing each second, 1 Hz, zstd batches; no history, no reads), {args.warmup} s after the ramp, measured for {args.measure} s; the runs rotate which starts first. `pgfleet-collector` is the collector (SQLite store, DB load kept); the floors are `collector/examples/ingest_floor.rs` on the collector's listener, gRPC settings and ingest code, with no live state and no DB load: *receive* takes each message off HTTP/2 and gRPC and decodes the AgentMessage, *decode* also decompresses and decodes the Batch, *resolve* also keeps the stream's dictionary and resolves the snapshots into the collector's model, and *store* also encodes each snapshot's frame as ingest does and keeps it in the collector's own SQLite store (its writer, frame dictionaries and index as the collector's; the batches queued for it by one task in turn, as the aggregator queues them), each ack sent once what it covers is committed. µs/batch is a server's CPU over the batches it took; KiB/server its RSS less its RSS before the agents came, over N. Every server acks as often as the collector does (the floors as a batch comes, with no timer of their own).

| run | server | batches/s | cores | µs/batch | KiB/server |
|---|---|---|---|---|---|
{table}

Medians, and their share of the collector's:

| server | µs/batch | × collector | KiB/server | × collector |
|---|---|---|---|---|
{medians}
{solo_table}"""
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

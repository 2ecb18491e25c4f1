#!/usr/bin/env python3
"""What keeping DB load costs, and how fast it answers (issue 15's figures).

1. Collector CPU per applied batch with load kept and with `--load off`: two
   release collectors at once, one of each, each under its own
   `pgfleet-loadgen` (bench/loadgen) of N simulated agents, each one server of
   100 sessions, about 10% changing a second, half of them active with a mix of
   waits and queries (the generator's server, a worst case for load). Each
   round is such a pair (as bench/collector_ab.py runs two builds), the two
   swapped from one round to the next, so that both see the same machine:
   this machine is shared, and runs one after the other moved the ratio by
   more than the target's margin. Measured at the steady state (--warmup 200,
   as bench/collector_load.py): the collector's memory grows at each of the
   first three minutes' ends.
2. `cargo bench -p pgfleet-tests --bench load` (tests/benches/load.rs): the
   bytes a server-day of load and statement statistics takes in the SQLite
   store, for a busy OLTP server (a load of about 5) and for the generator's
   server (a load of about 50); and `QueryLoad` over gRPC on a store of 1,000
   servers: one server over an hour, the whole fleet over 24 h by dc.

Writes the "## DB load" section of BENCHMARKS.md with the command that made it.

    python3 bench/load.py [--agents 1000] [--rounds 3] [--warmup 200] [--measure 60]

BENCHMARKS.md's figures are of the defaults.
"""
import argparse
import datetime
import json
import resource
import subprocess
import sys
from pathlib import Path
from statistics import mean

from collector_ab import collector_argv, run_pair, us_per_batch
from collector_load import WARMUP, build
from report import machine_name, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## DB load"
TARGETS = {"cpu_ratio": 1.15, "bytes": 2_000_000, "one_ms": 20.0, "fleet_ms": 200.0}
# The collector's threads, by the prefix of their names, whose CPU each side
# reports: where keeping load costs.
THREADS = ("pgfleet-aggrega", "pgfleet-store", "pgfleet-ingest")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3, help="pairs of collectors at once, load on and off")
    p.add_argument("--warmup", type=int, default=WARMUP, help="seconds after the ramp before measuring")
    p.add_argument("--measure", type=int, default=60)
    p.add_argument("--connect-rate", type=int, default=500)
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--reuse-cpu", action="store_true",
                   help="take the CPU runs from the last invocation (target/bench-load-cpu.json)")
    args = p.parse_args()
    command = "python3 bench/load.py" + "".join(
        f" {flag} {value}" for flag, value, default in [
            ("--agents", args.agents, 1000), ("--rounds", args.rounds, 3),
            ("--warmup", args.warmup, WARMUP), ("--measure", args.measure, 60),
        ] if value != default)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    saved = ROOT / "target" / "bench-load-cpu.json"
    if args.reuse_cpu:
        # The CPU runs of an earlier invocation (with the same flags), kept
        # in case a later step failed.
        runs = json.loads(saved.read_text())
    else:
        bin_dir = build()
        collector = collector_argv(bin_dir / "pgfleet-collector")
        pair = [(mode, lambda port, data, mode=mode: [*collector(port, data), "--load", mode])
                for mode in ("on", "off")]
        runs = {"on": [], "off": []}
        for i in range(args.rounds):
            for r in run_pair(bin_dir, pair if i % 2 == 0 else pair[::-1], args,
                              connect_rate=args.connect_rate, threads=THREADS):
                print(r["build"], json.dumps(r), file=sys.stderr, flush=True)
                runs[r["build"]].append(r)
        saved.write_text(json.dumps(runs))
    on = [us_per_batch(r) for r in runs["on"]]
    off = [us_per_batch(r) for r in runs["off"]]
    ratio = mean(on) / mean(off)

    print("+ cargo bench -p pgfleet-tests --bench load", file=sys.stderr, flush=True)
    out = subprocess.run(["cargo", "bench", "-q", "-p", "pgfleet-tests", "--bench", "load"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    b = json.loads(out.stdout.strip().splitlines()[-1])
    real, heavy = b["realistic"], b["heavy"]
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    machine = machine_name()
    kib = {mode: [r["collector_kib_per_server"] for r in runs[mode]] for mode in runs}
    rows = "\n".join(
        f"| {i + 1} | {a:.0f} | {b:.0f} | {a / b:.3f} | {ka:.0f} | {kb:.0f} |"
        for i, (a, b, ka, kb) in enumerate(zip(on, off, kib["on"], kib["off"])))
    # Each thread's µs a batch, the mean over the rounds, on and off.
    threads = {mode: {t: mean([1e6 * r["thread_cores"][t] / r["batches_per_s"] for r in runs[mode]])
                      for t in THREADS} for mode in runs}
    thread_rows = "\n".join(
        f"| {name} | {threads['on'][t]:.1f} | {threads['off'][t]:.1f} | {threads['on'][t] - threads['off'][t]:+.1f} |"
        for t, name in zip(THREADS, ("the aggregator", "the store's writer", "the ingest runtime's workers")))
    section = f"""{TITLE}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine}; the collector and the generator share the machine.

| what | figure | target |
|---|---|---|
| collector CPU per applied batch, load on over off ({args.agents:,} servers) | {ratio:.3f} (+{(ratio - 1) * 100:.1f}%) | at most +15%: {verdict(ratio <= TARGETS['cpu_ratio'])} |
| storage per server per day, load and statements, busy OLTP server (load {real['db_load']:.1f}) | {mb(real['load_and_statements_bytes_per_server_day'])} (load {mb(real['load_bytes_per_server_day'])}) | at most 2 MB: {verdict(real['load_and_statements_bytes_per_server_day'] <= TARGETS['bytes'])} |
| the same, the generator's server (load {heavy['db_load']:.0f}) | {mb(heavy['load_and_statements_bytes_per_server_day'])} (load {mb(heavy['load_bytes_per_server_day'])}) | (a worst case) |
| `QueryLoad`, one server over 1 h by wait, 10 s step, p50 / p99 | {b['one_server_1h_10s']['p50_ms']:.1f} / {b['one_server_1h_10s']['p99_ms']:.1f} ms | p99 at most 20 ms: {verdict(b['one_server_1h_10s']['p99_ms'] <= TARGETS['one_ms'])} |
| the same, 1 min step | {b['one_server_1h_1m']['p50_ms']:.1f} / {b['one_server_1h_1m']['p99_ms']:.1f} ms | p99 at most 20 ms: {verdict(b['one_server_1h_1m']['p99_ms'] <= TARGETS['one_ms'])} |
| one server over 1 h by wait, 10 s step, over HTTP: `/api/v1/load` (JSON), same run, p50 / p99 | {b['one_server_1h_10s_http']['p50_ms']:.1f} / {b['one_server_1h_10s_http']['p99_ms']:.1f} ms | as fast as the RPC (issue 16) |
| `QueryLoad`, fleet-wide over 24 h by dc, {b['servers']:,} servers, p50 / p99 | {b['fleet_24h_by_dc']['p50_ms']:.0f} / {b['fleet_24h_by_dc']['p99_ms']:.0f} ms | p99 at most 200 ms: {verdict(b['fleet_24h_by_dc']['p99_ms'] <= TARGETS['fleet_ms'])} |

**CPU.** Each round: two collectors at once, one keeping load and one with `--load off`, each under its own generator of {args.agents:,} simulated agents, {args.warmup} s after the ramp, measured for {args.measure} s; µs of collector CPU per applied batch, and memory per server (RSS less the RSS before the agents came, at the end of the window), the two swapped from one round to the next. The warmup reaches the steady state: a server's load counter allocates what it then keeps at each of the first three minutes' ends, and a measure of whole minutes takes in each server's minute closing once per minute.

| round | load on, µs/batch | off | on over off | load on, KiB/server | off |
|---|---|---|---|---|---|
{rows}
| mean | {mean(on):.0f} | {mean(off):.0f} | {ratio:.3f} | {mean(kib['on']):.0f} | {mean(kib['off']):.0f} |

Where it goes: each thread's CPU over the window less 5 s at each end (`/proc/<pid>/task/*/schedstat`, by the prefix of the threads' names), µs a batch, the mean of the rounds.

| thread | load on | off | difference |
|---|---|---|---|
{thread_rows}

**Storage** (tests/benches/load.rs): a day of 1 Hz samples of one server counted into its minutes, the minutes and hours written to an empty SQLite store as the collector writes them, with a pg_stat_statements read every minute of {b['statements_per_read']} statements (summed per 10 minutes); the bytes the file grew by. Counting costs {real['count_us_per_sample']:.1f} µs per sample on the busy server and {heavy['count_us_per_sample']:.1f} µs on the generator's. A minute of the busy server holds {real['tuples_per_minute']:.0f} distinct (wait, query, user, database, application, client, backend type) and {real['tuples_per_fine_bucket']:.0f} per 10 s, {real['stored_minute_bytes']:.0f} bytes stored, its six 10 s buckets included ({real['fingerprints_per_minute']:.0f} distinct queries); the generator's, {heavy['tuples_per_minute']:.0f}, {heavy['tuples_per_fine_bucket']:.0f} and {heavy['stored_minute_bytes']:.0f} bytes. While a minute is open, the collector counts its tuples in a map of about 72 bytes a tuple (and room to grow): at its end it holds {real['open_tuples_at_minute_end']:.0f} on the busy server and {heavy['open_tuples_at_minute_end']:.0f} on the generator's, whose sessions each have a client host of their own. Rows name their strings and fingerprints by index into a dictionary kept once per server and hour ({real['tables']['load_keys']['body_bytes'] / max(1, real['tables']['load_keys']['rows']):.0f} bytes each); before that, a busy minute took 1,152 bytes and the day 2.62 MB. At a minute's end, the aggregator builds each server's minute that ended (bounds and ranks its tuples, as ids) and packs it in {real['finish_us_per_minute']:.0f} µs ({heavy['finish_us_per_minute']:.0f} µs for the generator's; counting above leaves this out), and the store's writer re-indexes the packed minute into the server's dictionary and compresses it in {real['store_us_per_minute']:.0f} µs ({heavy['store_us_per_minute']:.0f} µs); every server's minute ends in the same second. A 10-minute interval of statement statistics takes {real['stored_statements_bytes']:,.0f} bytes (and, at over half SQLite's 4 KiB page, a page of its own). The busy server: 100 sessions of 6 applications on 12 client hosts, 3 users, 2 databases, 40 statements of which a few run far more than the rest, waits CPU 60%, IO 25%, Lock 8%, LWLock 7%.

**Queries**: a collector opened on a store of {b['servers']:,} servers in five dcs, each with the busy server's hours of the day and minutes of the last hour ({b['fleet_store_mib']:.0f} MiB), asked over gRPC from the same machine. One server over an hour reads its 60 minute rows; the fleet over a day by dc reads 24 hour rows of totals per server, from an index that holds them whole (a day of a thousand servers is 24,000 rows: read from the table, each was a seek of its own), adding each up as it is read. The index costs about 14 KB a server-day.
"""
    write_section(Path(args.output), TITLE, section)
    print(section)


if __name__ == "__main__":
    main()

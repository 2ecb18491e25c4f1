#!/usr/bin/env python3
"""The stream's bytes per session per sample (issue 4's figure).

1. `cargo bench -p pgfleet-agent --bench wire`: 1,000 simulated sessions, about
   10% changing each second, 600 samples through the agent's real encoder,
   compressed batch by batch as the agent does; beside it full protobuf
   snapshots and JSON of the same data, and the steady stream at three zstd
   levels side by side (time and bytes).
2. `cargo bench -p pgfleet-tests --bench stream_bytes`: end to end, a real
   PostgreSQL with 1,000 sessions (about 100 queries a second), real agents
   and collector, the bytes counted on the socket by a proxy.

Writes both tables to BENCHMARKS.md with the command that made them.

    python3 bench/stream_bytes.py [--window 120]
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

from report import machine_name, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Stream bytes per session per sample"


def run(cmd, env=None):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=int, default=120, help="seconds measured end to end (default 120)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    command = "python3 bench/stream_bytes.py" + (f" --window {args.window}" if args.window != 120 else "")

    sim = run(["cargo", "bench", "-q", "-p", "pgfleet-agent", "--bench", "wire"])
    env = dict(os.environ, PGFLEET_BENCH_WINDOW=str(args.window), PGFLEET_LOG="warn")
    e2e = run(["cargo", "bench", "-q", "-p", "pgfleet-tests", "--bench", "stream_bytes"], env=env)
    steady = float(re.search(r"steady state: ([0-9.]+) B", sim).group(1))
    zstd_row = next(l for l in e2e.splitlines() if l.startswith("| Zstd"))
    wire = float(zstd_row.strip("| \n").split("|")[-1])
    verdict = lambda x: "meets" if x <= 16 else "MISSES"  # noqa: E731

    machine = machine_name()
    sim, levels = sim.split("\nzstd levels:\n")
    sim_table = "\n".join(l for l in sim.splitlines() if l.startswith("|"))
    levels = levels.strip()
    sim_intro = sim.split("\n\n")[0].strip()
    e2e_table = "\n".join(l for l in e2e.splitlines() if l.startswith("|"))
    section = f"""{TITLE}

Command: `{command}` (from the repository root). Run on {datetime.date.today()} on {machine}.

**Simulated, through the agent's encoder** (`cargo bench -p pgfleet-agent --bench wire`): {sim_intro}

{sim_table}

{levels}

**End to end, on the socket** (`cargo bench -p pgfleet-tests --bench stream_bytes`): a real
PostgreSQL with 1,000 client sessions, about 100 queries starting each second on sessions picked at
random; three agents sample it at 1 Hz through byte-counting proxies to one collector. Counted: the
TCP payload the agents send (HTTP/2, gRPC and batches) over {args.window} s, after a 15 s warm-up, so
the window holds periodic keyframes.

{e2e_table}

Target: at most 16 bytes per session per sample at steady state, after compression:
**{verdict(max(steady, wire))}** ({steady:.2f} simulated, {wire:.2f} on the socket).
"""
    path = Path(args.output)
    write_section(path, TITLE, section)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How fast the web UI's fleet page shows 1,000 servers (issue 16's figure).

A release collector with its HTTP port, and `pgfleet-loadgen` (bench/loadgen)
streaming N simulated servers to it. Once every agent streams, headless
Chromium (driven through chromedriver's WebDriver API, with nothing but the
standard library) opens the fleet page ROUNDS times in fresh tabs. Each round
measures, in the page, the time from the start of the navigation until the
fleet table lists every server (`performance.now()` when the last row is
there).

Writes the "## Web UI" section of BENCHMARKS.md with the command that made it.

    python3 bench/web_ui.py [--agents 1000] [--rounds 10]
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from collector_load import build, free_port
from report import wait_port, write_section

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Web UI"
TARGET_MS = 1000.0


def webdriver(base: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read() or b"{}").get("value")
    except urllib.error.HTTPError as e:
        sys.exit(f"WebDriver {method} {path}: {e.code} {e.read().decode(errors='replace')[:500]}")


def servers_streaming(http: str) -> int:
    with urllib.request.urlopen(f"http://{http}/api/v1/servers", timeout=30) as r:
        servers = json.loads(r.read())["servers"]
    return sum(1 for s in servers if s["status"] == "up")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    command = "python3 bench/web_ui.py" + "".join(
        f" {flag} {value}" for flag, value, default in [
            ("--agents", args.agents, 1000), ("--rounds", args.rounds, 10),
        ] if value != default)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bin_dir = build()
    data = Path(tempfile.mkdtemp(prefix="pgfleet-web-"))
    grpc_port, http_port, driver_port = free_port(), free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    procs = []
    try:
        collector = subprocess.Popen(
            [str(bin_dir / "pgfleet-collector"), "--listen", f"127.0.0.1:{grpc_port}",
             "--http-listen", http, "--data-dir", str(data / "store")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=dict(os.environ, PGFLEET_LOG="warn"))
        procs.append(collector)
        wait_port(http_port, 30)
        loadgen = subprocess.Popen(
            [str(bin_dir / "pgfleet-loadgen"), "--collector", f"http://127.0.0.1:{grpc_port}",
             "--collector-pid", str(collector.pid), "--agents", str(args.agents),
             "--warmup", "10s", "--measure", "600s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(loadgen)
        deadline = time.monotonic() + 300
        while servers_streaming(http) < args.agents:
            if time.monotonic() > deadline or loadgen.poll() is not None:
                sys.exit(f"only {servers_streaming(http)} of {args.agents} servers streamed")
            time.sleep(1)
        driver = subprocess.Popen([chromedriver, f"--port={driver_port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(driver)
        wait_port(driver_port, 30)
        base = f"http://127.0.0.1:{driver_port}"
        session = webdriver(base, "POST", "/session", {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800"]}}}})["sessionId"]
        s = f"/session/{session}"
        webdriver(base, "POST", s + "/timeouts", {"script": 60000, "pageLoad": 60000})
        shown = """
            const want = arguments[0], done = arguments[arguments.length - 1];
            (function check() {
              const n = document.querySelectorAll('#fleet tr[data-server]').length;
              if (n >= want) done(performance.now()); else setTimeout(check, 5);
            })();"""
        times = []
        for _ in range(args.rounds):
            webdriver(base, "POST", s + "/url", {"url": "about:blank"})
            webdriver(base, "POST", s + "/url", {"url": f"http://{http}/"})
            times.append(webdriver(base, "POST", s + "/execute/async",
                                   {"script": shown, "args": [args.agents]}))
            print(f"fleet page: {times[-1]:.0f} ms", file=sys.stderr, flush=True)
        webdriver(base, "DELETE", s)
    finally:
        for proc in reversed(procs):
            # chromedriver leaves its Chromium behind when it is stopped.
            subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data, ignore_errors=True)

    times.sort()
    p50 = times[len(times) // 2]
    worst = times[-1]
    verdict = "meets" if worst <= TARGET_MS else "MISSES"
    body = [
        f"Command: `{command}` (from the repository root; {datetime.date.today()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, the collector, the load generator and "
        "Chromium on the same machine).",
        "",
        "| what | figure | target |",
        "|---|---|---|",
        f"| the fleet page, {args.agents:,} servers: navigation to every server listed, "
        f"{args.rounds} loads, median / slowest | {p50:.0f} / {worst:.0f} ms | at most "
        f"{TARGET_MS:.0f} ms: {verdict} |",
        "",
        "Each load opens `/` in headless Chromium (1280×800) while the load generator streams "
        "every server at 1 Hz; the time is the page's own `performance.now()` when the fleet "
        "table holds a row per server: the page, its script and uPlot, then the first event of "
        "`/api/v1/watch` (every server) drawn as a table.",
    ]
    write_section(Path(args.output), TITLE, TITLE + "\n\n" + "\n".join(body) + "\n")
    print(json.dumps({"agents": args.agents, "fleet_page_ms": times}))


if __name__ == "__main__":
    main()

"""Report a SQLAlchemy engine's connection pool to the local pgfleet agent.

pgfleet grew out of printing ``engine.pool.status()`` next to pg_stat_activity.
This module does that job for a fleet: every few seconds it reads the engine's
pool and pushes it to the agent's PoolReporter service (127.0.0.1:7602 by
default), which sends it to the collector with the database server's samples.

    from pgfleet_pool_reporter import PoolReporter
    engine = create_engine("postgresql+psycopg2://app@db1/orders", pool_size=10)
    PoolReporter(engine, pool_name="orders-web").start()

The fields follow OpenTelemetry's db.client.connection.* metrics:

* ``max``: pool_size + max_overflow (0 when the overflow is unlimited);
* ``used``: connections checked out (``pool.checkedout()``);
* ``idle``: connections waiting in the pool (``pool.checkedin()``);
* ``pending_requests``: callers blocked in ``engine.connect()`` right now;
* ``timeouts``: checkouts that gave up (SQLAlchemy's pool TimeoutError);
* ``wait_time_seconds_sum`` and ``wait_time_count``: time spent getting a
  connection from the pool, summed, and how many checkouts it covers.

The last three come from wrapping the pool's checkout, which SQLAlchemy has no
event for; everything else is read from the pool's own counters.

Run it as a script for a demonstration (see ``--help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import grpc

log = logging.getLogger("pgfleet.pool_reporter")

def load_stubs():
    """The pgfleet.v1 stubs this reporter uses: (messages, reporter messages, grpc stubs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pgfleet_stubs

    pgfleet_stubs.generate()
    from pgfleet.v1 import reporter_pb2, reporter_pb2_grpc  # noqa: E402
    from pgfleet.v1 import ingest_pb2  # noqa: E402

    return ingest_pb2, reporter_pb2, reporter_pb2_grpc


class PoolReporter:
    """Pushes ``engine.pool``'s state to the agent every ``interval`` seconds."""

    def __init__(self, engine, pool_name: str, agent: str = "127.0.0.1:7602",
                 server_id: str = "", interval: float = 5.0, reporter: str | None = None):
        self.engine = engine
        self.pool_name = pool_name
        self.agent = agent
        self.server_id = server_id
        self.interval = interval
        self.reporter = reporter or f"{Path(sys.argv[0]).stem}@{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._timeouts = 0
        self._wait_sum = 0.0
        self._wait_count = 0
        self._ingest, self._messages, self._grpc = load_stubs()
        self._channel = grpc.insecure_channel(agent)
        self._stub = self._grpc.PoolReporterStub(self._channel)
        self._wrap_checkout()

    def _wrap_checkout(self) -> None:
        """Counts waits, timeouts and blocked callers around the pool's checkout."""
        pool = self.engine.pool
        original = pool._do_get
        reporter = self

        def timed_get():
            with reporter._lock:
                reporter._pending += 1
            started = time.monotonic()
            try:
                return original()
            except Exception as e:  # SQLAlchemy's TimeoutError is not exported by name everywhere
                if type(e).__name__ == "TimeoutError":
                    with reporter._lock:
                        reporter._timeouts += 1
                raise
            finally:
                with reporter._lock:
                    reporter._pending -= 1
                    reporter._wait_sum += time.monotonic() - started
                    reporter._wait_count += 1

        pool._do_get = timed_get

    def pool_state(self):
        """The pool as a pgfleet.v1.ClientPool message."""
        pool = self.engine.pool
        size = pool.size() if hasattr(pool, "size") else 0
        overflow = getattr(pool, "_max_overflow", 0)
        with self._lock:
            pending, timeouts = self._pending, self._timeouts
            wait_sum, wait_count = self._wait_sum, self._wait_count
        return self._ingest.ClientPool(
            pool_name=self.pool_name,
            max=0 if overflow < 0 else size + overflow,
            used=pool.checkedout() if hasattr(pool, "checkedout") else 0,
            idle=pool.checkedin() if hasattr(pool, "checkedin") else 0,
            pending_requests=pending,
            timeouts=timeouts,
            wait_time_seconds_sum=wait_sum,
            wait_time_count=wait_count,
            idle_max=size,
        )

    def report_once(self) -> int:
        """Sends one report; returns how many pools the agent holds for us."""
        request = self._messages.ReportPoolsRequest(
            server_id=self.server_id, reporter=self.reporter, pools=[self.pool_state()])
        return self._stub.Report(request, timeout=2.0).accepted

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            try:
                self.report_once()
                delay = self.interval
            except grpc.RpcError as e:
                # The agent may be restarting; never let monitoring hurt the app.
                delay = min(delay * 2, 60.0)
                log.warning("pgfleet agent at %s did not take the pool report (%s: %s); retrying in %.0fs",
                            self.agent, e.code().name, e.details(), delay)
            self._stop.wait(delay)

    def start(self) -> "PoolReporter":
        self._thread = threading.Thread(target=self._run, name="pgfleet-pool-reporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._channel.close()


def main() -> int:
    from sqlalchemy import create_engine, text

    p = argparse.ArgumentParser(description="Hold some connections of a SQLAlchemy pool and report the pool to pgfleet.")
    p.add_argument("--dsn", required=True, help="SQLAlchemy URL, e.g. postgresql+psycopg2://app@127.0.0.1/orders")
    p.add_argument("--agent", default="127.0.0.1:7602", help="the agent's PoolReporter address")
    p.add_argument("--server-id", default="", help="the agent's target these connections go to (empty: its only one)")
    p.add_argument("--pool-name", default="example")
    p.add_argument("--pool-size", type=int, default=5)
    p.add_argument("--max-overflow", type=int, default=2)
    p.add_argument("--checkout", type=int, default=3, help="connections to hold checked out")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    engine = create_engine(args.dsn, pool_size=args.pool_size, max_overflow=args.max_overflow,
                           connect_args={"application_name": args.pool_name})
    reporter = PoolReporter(engine, args.pool_name, agent=args.agent, server_id=args.server_id,
                            interval=args.interval)
    held = [engine.connect() for _ in range(args.checkout)]
    for c in held:
        c.execute(text("SELECT 1"))
    print(f"accepted={reporter.report_once()} state={engine.pool.status()}", flush=True)
    reporter.start()
    time.sleep(args.duration)
    reporter.stop()
    for c in held:
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

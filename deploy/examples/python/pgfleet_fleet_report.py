#!/usr/bin/env python3
"""An internal tool against the pgfleet Query API: the fleet's servers, and its
longest transactions, fleet-wide.

    python3 pgfleet_fleet_report.py --collector 127.0.0.1:7600
    python3 pgfleet_fleet_report.py --collector collector.internal:7600 \\
        --tls-ca /etc/pgfleet/ca.pem --token-file /etc/pgfleet/read-token \\
        --label dc=eu1 --limit 20 --json

A collector started with --read-tokens-file wants a read token on every call:
--token-file names a file holding it, or PGFLEET_TOKEN gives it.

It generates its gRPC stubs from proto/ at start (pgfleet_stubs.py), calls
ListServers and TopSessions, and prints a report (or JSON, for other tools).
Start from it for your own: every RPC of pgfleet.v1.Query is one call away.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgfleet_stubs  # noqa: E402

pgfleet_stubs.generate()
from pgfleet.v1 import query_pb2, query_pb2_grpc  # noqa: E402


def seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def channel(collector: str, tls_ca: str | None) -> grpc.Channel:
    target = collector.removeprefix("http://").removeprefix("https://")
    if tls_ca or collector.startswith("https://"):
        ca = Path(tls_ca).read_bytes() if tls_ca else None
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
    return grpc.insecure_channel(target)


def read_token(token_file: str | None) -> str | None:
    """The read token: the file's one line (the file wins), or PGFLEET_TOKEN."""
    if token_file:
        lines = [l.strip() for l in Path(token_file).read_text().splitlines()]
        tokens = [l for l in lines if l and not l.startswith("#")]
        if len(tokens) != 1:
            raise SystemExit(f"pgfleet_fleet_report: {token_file} must hold one token")
        return tokens[0]
    return os.environ.get("PGFLEET_TOKEN") or None


def report(stub, labels: dict[str, str], limit: int, order_by: str, timeout: float,
           token: str | None = None) -> dict:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    servers = stub.ListServers(
        query_pb2.ListServersRequest(labels=labels), timeout=timeout, metadata=metadata
    ).servers
    top = stub.TopSessions(
        query_pb2.TopSessionsRequest(order_by=order_by, labels=labels, limit=limit),
        timeout=timeout, metadata=metadata,
    ).sessions
    return {
        "servers": [
            {
                "server_id": s.server_id,
                "status": s.status,
                "reason": s.reason,
                "sessions": s.sessions,
                "labels": dict(s.labels),
                "collector": s.collector,
            }
            for s in servers
        ],
        "top_sessions": [
            {
                "server_id": t.server_id,
                "pid": t.session.pid,
                "database": t.session.database,
                "user": t.session.user,
                "application_name": t.session.application_name,
                "state": t.session.state,
                "xact_age_seconds": round(seconds(t.session.xact_age), 3),
                "query": t.session.query,
            }
            for t in top
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collector", default="127.0.0.1:7600", help="the collector's gRPC address")
    ap.add_argument("--tls-ca", help="the CA (PEM) that signed an https:// collector's certificate")
    ap.add_argument("--token-file", help="a file holding the read token (PGFLEET_TOKEN gives the token)")
    ap.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                    help="only servers with this label (repeatable)")
    ap.add_argument("--limit", type=int, default=10, help="how many sessions")
    ap.add_argument("--by", default="xact_age", choices=["xact_age", "query_age", "idle_in_transaction"])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = ap.parse_args()
    labels = {}
    for item in args.label:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--label {item!r}: give NAME=VALUE")
        labels[name] = value
    stub = query_pb2_grpc.QueryStub(channel(args.collector, args.tls_ca))
    try:
        data = report(stub, labels, args.limit, args.by, args.timeout, read_token(args.token_file))
    except grpc.RpcError as e:
        print(f"pgfleet_fleet_report: {args.collector}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{len(data['servers'])} servers")
    for s in data["servers"]:
        labels_text = ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items()))
        print(f"  {s['server_id']:<24} {s['status']:<6} {s['sessions']:>5} sessions  {labels_text}  {s['reason']}")
    print(f"\nLongest transactions ({args.by}):")
    for t in data["top_sessions"]:
        query = " ".join(t["query"].split())[:60]
        print(f"  {t['server_id']:<20} {t['pid']:>7} {t['user']}@{t['database']} "
              f"{t['xact_age_seconds']:>8.1f}s {t['state']:<20} {query}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

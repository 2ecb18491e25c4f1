#!/usr/bin/env python3
"""What reading pg_stat_statements costs the monitored server: the agent's read against an exporter's.

On one machine and in one run, this script:

1. starts a throwaway PostgreSQL with pg_stat_statements loaded
   (pg_stat_statements.max = 5000) and creates 5,000 distinct statements,
   with texts of 200-600 characters as applications write them (selects with
   joins, inserts, updates), each run a few times;
2. runs the agent crate's statements_cost example on one connection, which
   measures the PostgreSQL backend's CPU per read (from
   /proc/<pg_backend_pid()>/schedstat) for, interleaved in the same run:
   (a) the agent's read as it runs in steady state (the agent's own code:
       the one statement it issues when no new queryid appears),
   (b) an exporter's read, SELECT * FROM pg_stat_statements (simple query
       protocol, text rows, as exporters issue it),
   (c) the floor, SELECT count(*) FROM pg_stat_statements(false);
3. writes the figures and the ratios a/b (target <= 0.5) and a/c (target
   <= 1.5) to BENCHMARKS.md, with the command that made them.

Usage: python3 bench/statements_cost.py [--statements 5000] [--rounds 200] [--output BENCHMARKS.md]
Needs: PostgreSQL server binaries with pg_stat_statements (postgresql-contrib
on older Debian), psql; Rust.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # the helpers below are imported, not run: no __pycache__ in bench/
from agent_overhead import ROOT, Cluster, log, pg_bindir  # noqa: E402
from report import machine_name, write_section  # noqa: E402

# Columns of the tables the statements use, as an application's might be.
TABLES = {
    "orders": ["id", "customer_id", "status", "total_amount", "currency", "created_at", "updated_at",
               "shipped_at", "shipping_address_id", "billing_address_id", "discount_code", "channel",
               "sales_rep_id", "warehouse_id", "priority", "notes", "external_ref", "tax_amount"],
    "customers": ["id", "email", "first_name", "last_name", "phone", "country_code", "city",
                  "postal_code", "created_at", "last_login_at", "loyalty_tier", "marketing_opt_in",
                  "account_manager_id", "credit_limit", "preferred_language"],
    "order_items": ["id", "order_id", "product_id", "quantity", "unit_price", "discount", "tax_rate",
                    "fulfilled_quantity", "returned_quantity", "sku", "warehouse_id", "created_at"],
}
TYPES = {"id": "bigint", "created_at": "timestamptz", "updated_at": "timestamptz", "shipped_at": "timestamptz",
         "last_login_at": "timestamptz", "email": "text", "first_name": "text", "last_name": "text",
         "phone": "text", "country_code": "text", "city": "text", "postal_code": "text", "status": "text",
         "currency": "text", "discount_code": "text", "channel": "text", "notes": "text", "sku": "text",
         "external_ref": "text", "loyalty_tier": "text", "preferred_language": "text",
         "marketing_opt_in": "boolean"}


def column_type(name: str) -> str:
    if name in TYPES:
        return TYPES[name]
    if name.endswith("_id") or name in ("quantity", "priority", "fulfilled_quantity", "returned_quantity"):
        return "bigint"
    return "numeric(12,2)"


def literal(rng: random.Random, column: str) -> str:
    t = column_type(column)
    if t == "text":
        return "'" + rng.choice(["pending", "shipped", "EUR", "fr", "gold", "web", "ACME-", "Lyon"]) + \
            str(rng.randint(1, 999)) + "'"
    if t == "timestamptz":
        return f"now() - interval '{rng.randint(1, 90)} days'"
    if t == "boolean":
        return rng.choice(["true", "false"])
    return str(rng.randint(1, 100000))


def statements(n: int, seed: int = 15) -> list[str]:
    """n statements with distinct shapes (so distinct queryids), 200-600 characters each."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.6:
            table = rng.choice(list(TABLES))
            cols = rng.sample(TABLES[table], rng.randint(4, len(TABLES[table])))
            conds = rng.sample(TABLES[table], rng.randint(1, 4))
            where = " AND ".join(f"t.{c} {rng.choice(['=', '>', '<', '>=', '<>'])} {literal(rng, c)}"
                                 for c in conds)
            order = rng.choice(["", f" ORDER BY t.{rng.choice(cols)} DESC", f" ORDER BY t.{cols[0]}"])
            limit = rng.choice(["", " LIMIT 50", " LIMIT 20 OFFSET 40"])
            sql = f"SELECT {', '.join('t.' + c for c in cols)} FROM {table} t WHERE {where}{order}{limit}"
            key = ("s", table, tuple(cols), tuple(conds), order.split(" ")[-1] if order else "", bool(limit))
        elif kind < 0.8:
            cols = rng.sample(TABLES["orders"][1:], rng.randint(3, 10))
            icols = rng.sample(TABLES["order_items"][1:], rng.randint(2, 6))
            ccols = rng.sample(TABLES["customers"][1:], rng.randint(1, 5))
            sql = (f"SELECT {', '.join('o.' + c for c in cols)}, {', '.join('i.' + c for c in icols)}, "
                   f"{', '.join('c.' + c for c in ccols)} FROM orders o JOIN order_items i ON i.order_id = o.id "
                   f"JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = {rng.randint(1, 10**6)} "
                   f"AND o.created_at > now() - interval '30 days' ORDER BY o.created_at DESC LIMIT 100")
            key = ("j", tuple(cols), tuple(icols), tuple(ccols))
        elif kind < 0.9:
            table = rng.choice(list(TABLES))
            cols = rng.sample(TABLES[table][1:], rng.randint(3, len(TABLES[table]) - 1))
            sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                   f"({', '.join(literal(rng, c) for c in cols)})")
            key = ("i", table, tuple(cols))
        else:
            table = rng.choice(list(TABLES))
            cols = rng.sample(TABLES[table][1:], rng.randint(2, 8))
            sets = ", ".join(f"{c} = {literal(rng, c)}" for c in cols)
            sql = f"UPDATE {table} SET {sets} WHERE id = {rng.randint(1, 10**6)} AND updated_at IS NULL" \
                if table == "orders" else f"UPDATE {table} SET {sets} WHERE id = {rng.randint(1, 10**6)}"
            key = ("u", table, tuple(cols))
        if key in seen or not 200 <= len(sql) <= 600:
            continue
        seen.add(key)
        out.append(sql)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--statements", type=int, default=5000, help="distinct statements to create")
    p.add_argument("--rounds", type=int, default=200, help="rounds of the three reads")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    command = " ".join(["python3 bench/statements_cost.py", *sys.argv[1:]])

    log("building the statements_cost example (release)")
    subprocess.run(["cargo", "build", "--release", "-p", "pgfleet-agent", "--example", "statements_cost"],
                   cwd=ROOT, check=True)
    cluster = Cluster(pg_bindir())
    try:
        cluster.start("-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=5000 "
                      "-c shared_buffers=128MB -c fsync=off -c synchronous_commit=off -c autovacuum=off")
        cluster.psql("CREATE EXTENSION pg_stat_statements")
        ddl = "".join(f"CREATE TABLE {t} ({', '.join(f'{c} {column_type(c)}' for c in cols)});"
                      for t, cols in TABLES.items())
        cluster.psql(ddl)
        sqls = statements(args.statements)
        lengths = sorted(len(s) for s in sqls)
        script = cluster.dir / "statements.sql"
        rng = random.Random(7)
        with open(script, "w") as f:
            for s in sqls:
                for _ in range(rng.randint(1, 3)):
                    f.write(s + ";\n")
        os.chmod(script, 0o644)
        log(f"running {len(sqls)} distinct statements ({lengths[0]}-{lengths[-1]} characters, "
            f"median {lengths[len(lengths) // 2]})")
        t0 = time.monotonic()
        subprocess.run([str(cluster.bindir / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                        "-Xq", "-f", str(script)], check=True, stdout=subprocess.DEVNULL)
        log(f"done in {time.monotonic() - t0:.1f} s; "
            f"{cluster.psql('SELECT count(*) FROM pg_stat_statements(false)')} entries in the view")
        log(f"measuring {args.rounds} rounds of the three reads")
        out = subprocess.run([str(ROOT / "target/release/examples/statements_cost"), cluster.dsn("postgres"),
                              str(args.rounds)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bench: statements_cost failed: {out.stderr}")
        r = json.loads(out.stdout)
        log(f"result: {r}")
        pg_version = subprocess.run([str(cluster.bindir / "postgres"), "--version"], capture_output=True,
                                    text=True).stdout.strip()
        text_file = cluster.psql("SELECT coalesce((SELECT pg_size_pretty(size) FROM "
                                 "pg_stat_file('pg_stat_tmp/pgss_query_texts.stat', true)), 'an unknown size')")
    finally:
        cluster.stop()
    write_report(args, command, r, pg_version, lengths, text_file)


def write_report(args, command: str, r: dict, pg_version: str, lengths: list[int], text_file: str) -> None:
    w = r["whole_every"]
    changes, whole = r["agent"]["median_us"], r["agent_whole"]["median_us"]
    if not r["agent_whole"]["reads"]:
        sys.exit("bench: no whole read was measured; give more --rounds")
    # The agent's steady state: w - 1 reads of changes, then one whole read.
    a = (changes * (w - 1) + whole) / w
    b, c = r["exporter"]["median_us"], r["floor"]["median_us"]
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    machine = machine_name()
    title = "## pg_stat_statements read"

    def row(name: str, k: str) -> str:
        x = r[k]
        return f"| {name} | {x['median_us']:.0f} | {x['mean_us']:.0f} | {x['reads']} |\n"

    section = f"""{title}

Command: `{command}` (from the repository root; it builds the example it runs).
Run on {datetime.date.today()} on {machine}; {pg_version}, pg_stat_statements {r['extension']}.
`pg_stat_statements.max = 5000`; {args.statements} distinct statements (selects, joins, inserts and
updates of {lengths[0]}–{lengths[-1]} characters, median {lengths[len(lengths) // 2]}), each run 1–3 times:
{r['entries']} entries in the view when measured, {text_file} of query texts in its file.
`cargo run --release -p pgfleet-agent --example statements_cost` then runs the three reads on one
connection over the server's Unix socket, {r['rounds']} rounds, in a rotating order within each round;
CPU is the backend's (`/proc/<pg_backend_pid()>/schedstat`, nanoseconds; `/proc/<pid>/stat` counts
10 ms ticks, too coarse for one read), read once the backend is idle before and after each read.

| read | backend CPU per read, median (µs) | mean (µs) | reads |
|---|---|---|---|
{row(f"(a) pgfleet-agent, steady state: the entries changed since its last read ({w - 1} reads in {w})", "agent")}{row(f"(a) pgfleet-agent, steady state: every entry (1 read in {w})", "agent_whole")}| (a) pgfleet-agent, per read over those {w} | {a:.0f} | | |
{row("(b) an exporter: `SELECT * FROM pg_stat_statements` (text rows, " + f"{r['exporter_text_bytes'] / 1e6:.1f} MB)", "exporter")}{row("(c) the floor: `SELECT count(*) FROM pg_stat_statements(false)`", "floor")}
(a) is the agent's own `Statements::read` (the one statement it issues when no new queryid
appears: counters without texts, dbid and userid as oids named from its cache, and only the
entries whose hash of key and calls is not among those it sent, except every {w}th read), after
{r['warm_up_rounds']} rounds that set its baseline and learnt every text. In the measured rounds
it ran nothing else (text reads: {r['text_reads']}, name reads: {r['name_reads']}); its last read sent
{r['statements_per_sample']} statements (those the rounds ran since). Its own CPU per read:
{r['agent_process_us']:.0f} µs.

A read of changes costs the server pg_stat_statements' own scan (the floor), the set of the
agent's hashes, and sending the entries that ran since the last read: here a few, as on a server
whose thousands of entries are mostly statements run now and then. Where most entries run every
minute it tends to the whole read, about {whole / c:.1f} times the floor here: sending each entry's
counters is what a read costs beyond the scan, and the saving is the entries that did not run.

a/b = **{a / b:.2f}** (target ≤ 0.5: **{verdict(a / b <= 0.5)}**).
a/c = **{a / c:.2f}** (target ≤ 1.5: **{verdict(a / c <= 1.5)}**).
"""
    path = Path(args.output)
    write_section(path, title, section)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

"""``gatelens sql`` (read-only queries) and ``gatelens migrate`` (the store's schema)."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import duckdb

from cluster.errors import EXIT_ERROR
from service import schema
from service.sql import Refused, run_query, write_result
from service.store import STORAGE_VERSION, Store


def _read_query(args) -> str:
    if args.file:
        if args.query:
            raise Refused("give the statement either as an argument or with --file, not both")
        path = Path(args.file)
        if not path.is_file():
            raise Refused(f"{path}: query file not found")
        return path.read_text()
    if args.query and args.query != "-":
        return args.query
    if sys.stdin.isatty():
        raise Refused("no statement: give it as an argument, with --file, or on stdin")
    return sys.stdin.read()


def cmd_sql(args: argparse.Namespace) -> int:
    """0 ok, 1 SQL error, 2 refused (or no store there), 3 busy (from the errors' exit statuses)."""
    store = Store(args.store)
    sql = _read_query(args)
    if args.format == "parquet" and not args.out and sys.stdout.isatty():
        raise Refused("--format parquet writes binary: give --out FILE or redirect stdout")
    try:
        table = run_query(sql, store, wait=args.wait)
    except duckdb.Error as e:
        print(f"gatelens sql: {store.path}: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.out:
        with open(args.out, "wb") as f:
            write_result(table, args.format, f, args.max_rows)
    else:
        buf = io.BytesIO()
        write_result(table, args.format, buf, args.max_rows)
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    store = Store(args.store)
    if args.status:
        pending = store.pending_migrations()
        for m in schema.MIGRATIONS:
            print(f"  {'pending' if m.name in pending else 'applied'}  {m.name}: {m.doc}")
        print(f"store {store.path}: {len(pending)} pending; storage format {store.storage_version() or '(no store yet)'}"
              f" (1.x clients read {STORAGE_VERSION}+)")
        return 0
    applied = store.migrate()
    converted = store.convert_storage()
    print(f"store {store.path}: " + (f"applied {', '.join(applied)}" if applied else "schema up to date")
          + (f"; rewritten in storage format {STORAGE_VERSION} for DuckDB 1.5+ clients" if converted else ""))
    return 0

"""``gatelens sql`` (read-only queries) and ``gatelens migrate`` (the store's schema)."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import stat
import sys
import tempfile
from pathlib import Path

import duckdb

from cluster.errors import GatelensError, InputError
from service import schema
from service.sql import Refused, check_timeout, run_query, write_result
from service.store import STORAGE_VERSION, Store


class QueryFailed(GatelensError):
    """DuckDB's error for the query (exit status 1), after the store's path."""

    prefix = ""


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Refused(f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                      f"save it as UTF-8") from None


def _read_query(args) -> str:
    if args.file:
        if args.query:
            raise Refused("give the statement either as an argument or with --file, not both")
        path = Path(args.file)
        if not path.is_file():
            raise Refused(f"{path}: query file not found")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise Refused(f"{path}: cannot read the query file ({e.strerror})") from None
        return _decode(data, f"the query file {path}")
    if args.query and args.query != "-":
        return args.query
    if sys.stdin.isatty():
        raise Refused("no statement: give it as an argument, with --file, or on stdin")
    if hasattr(sys.stdin, "buffer"):
        return _decode(sys.stdin.buffer.read(), "the statement on stdin")
    return sys.stdin.read()


def _store_files(store: Store) -> tuple[set[Path], list[Path]]:
    """(the store's own files: the DuckDB file, its WAL and temp folder; its samples folders),
    resolved, for the path as given and for where its links lead."""
    files, samples = set(), []
    for p in {store.path.absolute(), store.path.resolve()}:
        files |= {p.resolve(), p.with_name(p.name + ".wal").resolve(), p.with_name(p.name + ".tmp").resolve()}
        samples.append(p.with_suffix(".samples").resolve())
    samples.append(store.samples_dir.resolve())
    return files, samples


def _output_target(out: str, store: Store) -> tuple[Path, bool]:
    """(the file ``--out`` names, resolved; whether to write it in place), after refusing the
    store's own files and folders, directories and missing folders (nothing is opened yet). A
    device or pipe, or a name under /dev or /proc (/dev/stdout), is written in place; any other
    file through a temporary file beside it."""
    given = Path(out)
    try:
        st = os.stat(given)
    except FileNotFoundError:
        st = None
    except OSError as e:  # ENOTDIR (a path under a file), ELOOP, EACCES ...
        raise InputError(f"--out {out}: cannot write there ({e.strerror})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InputError(f"--out {out}: is a directory; give a file name")
    try:
        target = given.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise InputError(f"--out {out}: cannot write there ({e})") from None
    files, samples = _store_files(store)
    if target in files or (st is not None and store.path.exists() and os.path.samefile(given, store.path)):
        raise InputError(f"--out {out}: that is the store itself ({store.path}); write the result elsewhere")
    for d in samples:
        if target == d or target.is_relative_to(d):
            raise InputError(f"--out {out}: that is inside the store's samples folder ({d}); write the result elsewhere")
    if (st is not None and not stat.S_ISREG(st.st_mode)) or given.absolute().parts[1:2] in (("dev",), ("proc",)):
        return given, True
    if not target.parent.is_dir():
        raise InputError(f"--out {out}: the folder {target.parent} does not exist")
    return target, False


@contextlib.contextmanager
def _output(out: str, store: Store):
    """A binary file for the result: a temporary file beside ``--out``, renamed onto it when the
    block ends without an error (a failed query or write leaves an existing file as it was, and
    no partial file). Opened before the query runs, so that an unwritable place fails first."""
    target, in_place = _output_target(out, store)
    if in_place:
        try:
            f = open(target, "wb")
        except OSError as e:
            raise InputError(f"--out {out}: cannot write there ({e.strerror})") from None
        with f:
            yield f
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def cmd_sql(args: argparse.Namespace) -> int:
    """0 ok, 1 SQL error or a limit reached, 2 refused (bad statement, argument or output path, or
    no store there), 3 busy (from the errors' exit statuses); 130 on Ctrl-C."""
    store = Store(args.store)
    timeout = check_timeout(args.timeout)
    if not math.isfinite(args.wait) or args.wait < 0:
        raise InputError(f"--wait must be a number of seconds, 0 or more (got {args.wait!r})")
    sql = _read_query(args)
    if args.format == "parquet" and not args.out and sys.stdout.isatty():
        raise Refused("--format parquet writes binary: give --out FILE or redirect stdout")
    with _output(args.out, store) if args.out else contextlib.nullcontext(io.BytesIO()) as f:
        try:
            table = run_query(sql, store, wait=args.wait, timeout=timeout, memory_limit=args.memory_limit,
                              fmt=args.format)
        except duckdb.Error as e:
            raise QueryFailed(f"{store.path}: {e}") from None
        write_result(table, args.format, f, args.max_rows)
        if not args.out:
            sys.stdout.buffer.write(f.getvalue())
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
    version = store.storage_version()
    if version not in (None, f"{STORAGE_VERSION}+"):  # a copy of every table: say so before it starts
        size = store.path.stat().st_size / 2**20
        print(f"rewriting {store.path} ({size:,.0f} MiB, storage format {version}) as {STORAGE_VERSION} ...",
              file=sys.stderr, flush=True)
    converted = store.convert_storage()
    print(f"store {store.path}: " + (f"applied {', '.join(applied)}" if applied else "schema up to date")
          + (f"; rewritten in storage format {STORAGE_VERSION} for DuckDB 1.5+ clients" if converted else ""))
    return 0

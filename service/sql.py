"""``gatelens sql``: read-only SQL over the store.

    gatelens sql "SELECT arch, count(*) FROM checkpoints GROUP BY arch"
    gatelens sql -f query.sql --format csv > out.csv
    echo "FROM analyses" | gatelens sql --format json
    gatelens sql "FROM unit_stats WHERE quantity = 'c'" --format parquet --out c.parquet

Four locks, so that a query can read the store and nothing else:

1. the statement is parsed by DuckDB itself (``extract_statements``): exactly one statement, of
   a reading type (SELECT, incl. WITH / FROM / SHOW / DESCRIBE / SUMMARIZE; EXPLAIN of one; a
   PRAGMA from a list of informational ones). Anything else is refused with a message saying why,
   before the store is opened.
2. the file is opened read-only: no INSERT / UPDATE / DELETE / DDL / CHECKPOINT reaches it.
3. ``enable_external_access = false``: no file outside the store's raw samples, no ATTACH,
   COPY TO, EXPORT, INSTALL or LOAD of an extension, no network.
4. ``lock_configuration = true``: the query cannot switch 3 off again.

Results are written by this process (pyarrow / polars), never by DuckDB, so COPY is never needed.
While the writer holds the store, the query retries for ``--wait`` seconds, then reports the store
busy (exit status 3); it never shows a raw lock error.

Limits, set before 4 so that the query cannot raise them: ``memory_limit`` (``--memory-limit``,
default 2GB) with no spilling to disk (``temp_directory = ''``: a read-only query writes nothing,
and cannot fill the storage disk), and a time limit (``--timeout``, default 60 s): the query runs
in a worker thread while this one waits, and ``interrupt()``s it when the time is up or on Ctrl-C
(DuckDB holds the main thread otherwise, and SIGINT would wait for the query to end).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.errors import GatelensError, InputError
from service.store import Store

DEFAULT_TIMEOUT = 60.0  # seconds (``--timeout``)
DEFAULT_MEMORY_LIMIT = "2GB"  # DuckDB ``memory_limit`` (``--memory-limit``)
_STOP_GRACE = 10.0  # seconds an interrupted query gets to unwind

FORMATS = ("table", "csv", "json", "parquet")
# Informational pragmas; every other pragma changes settings or state (enable_profiling,
# force_checkpoint, import_database, copy_database, json_execute_serialized_sql, ...).
READ_PRAGMAS = frozenset({
    "collations", "database_list", "database_size", "functions", "metadata_info", "platform", "show",
    "show_databases", "show_tables", "show_tables_expanded", "storage_info", "table_info",
    "user_agent", "version",
})
_WHY = {
    "INSERT": "writes rows", "UPDATE": "writes rows", "DELETE": "deletes rows", "MERGE_INTO": "writes rows",
    "CREATE": "creates objects", "CREATE_FUNC": "creates a macro", "DROP": "drops objects",
    "ALTER": "alters a table", "COPY": "copies data to or from files", "COPY_DATABASE": "copies a database",
    "EXPORT": "writes files", "ATTACH": "attaches another database", "DETACH": "detaches a database",
    "LOAD": "installs or loads an extension", "EXTENSION": "manages extensions",
    "SET": "changes settings", "VARIABLE_SET": "sets a variable", "TRANSACTION": "controls transactions",
    "VACUUM": "rewrites the store", "ANALYZE": "updates statistics", "CALL": "calls a procedure",
    "PREPARE": "prepares statements", "EXECUTE": "executes a prepared statement",
    "PRAGMA": "changes settings or state", "MULTI": "runs several statements",
}


class Refused(InputError):
    """A statement ``gatelens sql`` will not run; the message says why (and starts the line)."""

    prefix = ""


class QueryStopped(GatelensError):
    """A query stopped at a limit (time, memory) or failed; exit status 1."""


def _strip_leading_comments(sql: str) -> str:
    while True:
        s = sql.lstrip()
        if s.startswith("--"):
            nl = s.find("\n")
            sql = "" if nl < 0 else s[nl + 1:]
        elif s.startswith("/*"):
            end = s.find("*/")
            sql = "" if end < 0 else s[end + 2:]
        else:
            return s


def _kind(st) -> str | None:
    """The statement's type name; None for a type this Python binding cannot name (e.g. UPDATE
    EXTENSIONS in duckdb 2.0.1, whose ``.type`` raises ValueError)."""
    try:
        return st.type.name
    except ValueError:
        return None


def _head(text: str, words: int = 1) -> str:
    return " ".join(re.sub(r"\W.*$", "", w).upper() for w in text.split(None, words)[:words]) or "(empty)"


# EXPLAIN (FORMAT x) is a plan in another notation; EXPLAIN (ANALYZE [anything]) runs the statement
# (DuckDB 2.0 runs it even for ANALYZE false), as do EXPLAIN ANALYZE and ANALYSE.
_EXPLAIN_FORMATS = frozenset({"text", "json", "html", "graphviz", "yaml", "mermaid"})
_ANALYZE = frozenset({"analyze", "analyse"})
_RUNS = "refused: EXPLAIN ANALYZE runs its statement; use EXPLAIN (plan only)"


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        token = token[1:-1]
    return token.lower()


def _explained(query: str) -> str:
    """The statement an EXPLAIN explains, if the EXPLAIN only plans it; raises ``Refused`` otherwise."""
    raw = duckdb.tokenize(query)
    ends = [p for p, _ in raw[1:]] + [len(query)]
    tokens = [(p, query[p:e].strip()) for (p, t), e in zip(raw, ends) if t.name != "comment"]
    i = 1  # tokens[0] is EXPLAIN
    if i < len(tokens) and _unquote(tokens[i][1]) in _ANALYZE:
        raise Refused(_RUNS)
    if i < len(tokens) and tokens[i][1] == "(":
        options, depth, current = [], 1, []
        i += 1
        while i < len(tokens) and depth:
            text = tokens[i][1]
            depth += (text == "(") - (text == ")")
            if depth and not (depth == 1 and text == ","):
                current.append(_unquote(text))
            elif current:
                options.append(current)
                current = []
            i += 1
        for option in options:
            if option[0] in _ANALYZE:
                raise Refused(_RUNS)
            if option[0] != "format" or len(option) != 2 or option[1] not in _EXPLAIN_FORMATS:
                raise Refused(f"refused: EXPLAIN option {' '.join(option).upper()!r} is not one gatelens sql runs "
                              f"(EXPLAIN (FORMAT {' | '.join(sorted(_EXPLAIN_FORMATS))}) plans only)")
        if i < len(tokens) and _unquote(tokens[i][1]) in _ANALYZE:
            raise Refused(_RUNS)
    if i >= len(tokens):
        raise Refused("refused: EXPLAIN of nothing")
    return query[tokens[i][0]:]


def check_statement(sql: str) -> str:
    """The one statement of ``sql`` if it only reads; raises ``Refused`` otherwise."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Refused(f"the statement is not UTF-8 text (character {e.object[e.start]!r} at offset {e.start})") from None
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.ParserException as e:
        raise Refused(f"not valid SQL: {e}") from None
    except ValueError as e:  # a statement type the Python binding cannot name
        raise Refused(f"refused: a statement of a type gatelens sql does not run ({e})") from None
    if not statements:
        raise Refused("no SQL statement given")
    if len(statements) > 1:
        kinds = ", ".join(_kind(s) or _head(_strip_leading_comments(s.query), 2) for s in statements)
        raise Refused(f"refused: {len(statements)} statements ({kinds}); gatelens sql runs one statement at a time")
    st = statements[0]
    kind = _kind(st)
    text = _strip_leading_comments(st.query)
    if kind == "SELECT":
        return st.query
    if kind == "EXPLAIN":
        check_statement(_explained(st.query))
        return st.query
    if kind is None:
        said = _head(text, 2)
        why = "updates extensions" if said == "UPDATE EXTENSIONS" else "is not a statement gatelens sql knows"
        raise Refused(f"refused: {said} {why}; gatelens sql is read-only "
                      f"(SELECT, WITH, FROM, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN, informational PRAGMAs)")
    head = _head(text) if text.split() else kind
    said = head if head.replace("_", " ") == kind.replace("_", " ") else f"{head} ({kind} statement)"
    if kind == "PRAGMA":
        m = re.match(r"(?is)PRAGMA\s+([a-z_][a-z0-9_]*)", text)
        if m and m.group(1).lower() in READ_PRAGMAS:
            return st.query
        said = f"PRAGMA {m.group(1)}" if m else said
        raise Refused(f"refused: {said} changes settings or state; the store is read-only here "
                      f"(informational pragmas: {', '.join(sorted(READ_PRAGMAS))})")
    why = _WHY.get(kind, "is not a query")
    raise Refused(f"refused: {said} {why}; gatelens sql is read-only "
                  f"(SELECT, WITH, FROM, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN, informational PRAGMAs)")


def check_timeout(timeout: float) -> float:
    """``--timeout``: a positive, finite number of seconds."""
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise InputError(f"--timeout must be a positive number of seconds (got {timeout!r})")
    return min(float(timeout), threading.TIMEOUT_MAX)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n", 1)[0].split())


@contextlib.contextmanager
def limited_reader(store: Store, wait: float = 10.0, memory_limit: str = DEFAULT_MEMORY_LIMIT):
    """``store.reader()`` (read-only, sandboxed, configuration locked) with a memory limit and no
    spilling to disk, both set before the lock so that no query can change them."""
    entered = False
    try:
        with store.reader(timeout=wait, settings={"memory_limit": str(memory_limit), "temp_directory": ""}) as con:
            entered = True
            yield con
    except duckdb.Error as e:
        if entered or isinstance(e, duckdb.OutOfMemoryException):
            raise
        raise InputError(f"--memory-limit {memory_limit!r}: DuckDB refuses it ({_one_line(e)}); "
                         f"give a size such as 500MB or 4GB") from None


def run_query(sql: str, store: Store, wait: float = 10.0, timeout: float = DEFAULT_TIMEOUT,
              memory_limit: str = DEFAULT_MEMORY_LIMIT, fmt: str | None = None) -> pa.Table:
    """Check, then run one read-only statement on the store within the time and memory limits;
    the result as an Arrow table. With ``fmt``, columns that format cannot hold are converted
    by DuckDB first (``_fetch``)."""
    statement = check_statement(sql)
    timeout = check_timeout(timeout)
    try:
        with limited_reader(store, wait, memory_limit) as con:
            return _run_bounded(con, statement, timeout, fmt)
    except duckdb.OutOfMemoryException as e:
        raise QueryStopped(f"the query needed more memory than --memory-limit {memory_limit} and was stopped "
                           f"(--memory-limit raises the limit; DuckDB: {_one_line(e)})") from None
    except duckdb.PermissionException as e:
        raise Refused(f"refused: the query reads outside the store ({e})") from None
    except duckdb.InvalidInputException as e:
        if "read-only mode" in str(e) or "configuration has been locked" in str(e):
            raise Refused(f"refused: {e}") from None
        raise


def _run_bounded(con, statement: str, timeout: float, fmt: str | None) -> pa.Table:
    """Run in a worker thread; this one waits, and interrupts the query when ``timeout`` seconds
    are up or on Ctrl-C (KeyboardInterrupt is raised again once the query has stopped). The wait
    is on an Event: a ``Thread.join`` that KeyboardInterrupt broke off no longer knows whether the
    thread runs (Python < 3.13)."""
    box: dict = {}
    done = threading.Event()

    def work():
        try:
            rel = con.sql(statement)
            box["table"] = _fetch(rel, fmt) if rel is not None else pa.table({})
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="gatelens-sql-query", daemon=True).start()
    try:
        if not done.wait(timeout):
            con.interrupt()
            done.wait(_STOP_GRACE)
            if "table" not in box:  # it did not finish in between
                raise QueryStopped(f"the query ran longer than {timeout:g} s and was stopped "
                                   f"(--timeout raises the limit)")
    except KeyboardInterrupt:
        con.interrupt()
        done.wait(_STOP_GRACE)
        raise
    if "error" in box:
        raise box["error"]
    return box["table"]


# -- result shapes: what each format can hold ----------------------------------------------------

# Types every writer (polars, CSV, JSON, Parquet) holds as they are.
_PLAIN = frozenset({"boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint",
                    "uinteger", "ubigint", "float", "double", "decimal", "varchar", "uuid", "enum", "null"})
_CONTAINERS = frozenset({"list", "array", "struct", "map"})
_NESTED = _CONTAINERS | {"union", "variant"}
# What Parquet (pyarrow) cannot write, or writes so that it no longer reads back as itself: unions
# and intervals fail; VARIANT becomes a struct of two blobs; UHUGEINT wraps past 2**127 (Arrow
# decimal128); TIMETZ loses its offset; BIT and BIGNUM become DuckDB-internal bytes.
_PARQUET_AWKWARD = frozenset({"union", "variant", "interval", "uhugeint", "time with time zone", "bit", "bignum"})
JSON_TEXT = {b"gatelens": b"json"}  # field metadata of a column that holds JSON text made by _fetch


def _type_ids(t) -> set[str]:
    ids = {t.id}
    if t.id in _NESTED - {"variant"}:
        for _, child in t.children:
            if hasattr(child, "id"):  # an array's children include its size
                ids |= _type_ids(child)
    return ids


def _conversion(t, fmt: str) -> str | None:
    """None: the column is written as it is; "text": as DuckDB's text for it; "json": as JSON text."""
    ids = _type_ids(t)
    nested = t.id in _NESTED
    if fmt == "parquet":
        return ("json" if nested else "text") if ids & _PARQUET_AWKWARD else None
    if nested:
        # CSV has no nested values; polars and the JSON writer hold lists, structs and maps of
        # plain values, but not unions, variants, intervals or dates out of Python's range.
        return "json" if fmt == "csv" or ids - _PLAIN - _CONTAINERS else None
    # Temporal values become text too: DuckDB's dates reach years polars and Python cannot hold
    # ('infinity', 294247-01-10); blobs, bits, intervals, geometries and UHUGEINT likewise.
    return None if t.id in _PLAIN else "text"


def _fetch(rel, fmt: str | None) -> pa.Table:
    """The relation's rows as Arrow, converted (by DuckDB) into what ``fmt`` can write."""
    if fmt is None:
        return rel.to_arrow_table()
    how = [_conversion(t, fmt) for t in rel.types]
    if not any(how):
        return rel.to_arrow_table()
    exprs = []
    for i, (name, h) in enumerate(zip(rel.columns, how), start=1):
        alias = '"' + name.replace('"', '""') + '"'
        exprs.append(f"#{i} AS {alias}" if h is None else
                     f"CAST(#{i} AS VARCHAR) AS {alias}" if h == "text" else f"CAST(to_json(#{i}) AS VARCHAR) AS {alias}")
    table = rel.project(", ".join(exprs)).to_arrow_table()
    fields = [f.with_metadata(JSON_TEXT) if h == "json" else f for f, h in zip(table.schema, how)]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def write_result(table: pa.Table, fmt: str, out, max_rows: int = 100) -> None:
    """Write ``table`` in ``fmt`` to ``out`` (a binary file object). A table whose columns the
    format cannot hold raises ``QueryStopped`` naming them (``run_query(..., fmt=)`` converts them)."""
    try:
        _write(table, fmt, out, max_rows)
    except (pl.exceptions.PolarsError, pa.ArrowException, pl.exceptions.PanicException,
            TypeError, ValueError, OverflowError) as e:
        if isinstance(e, OSError):
            raise
        types = ", ".join(f"{f.name} {f.type}" for f in table.schema)
        raise QueryStopped(f"cannot write the result as {fmt} ({types}): {type(e).__name__}: {_one_line(e)}") from None


def _write(table: pa.Table, fmt: str, out, max_rows: int) -> None:
    if fmt == "parquet":
        pq.write_table(table, out)
        return
    if fmt == "csv":
        df = pl.from_arrow(table)
        # CSV has no lists: nested columns become JSON text.
        nested = [c for c, t in df.schema.items() if t.is_nested()]
        if nested:
            df = df.with_columns(pl.col(c).map_elements(
                lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v, default=str),
                return_dtype=pl.String) for c in nested)
        out.write(df.write_csv().encode())
        return
    if fmt == "json":
        # Strict JSON: NaN / inf become null; dates and decimals become strings; columns _fetch
        # made JSON text of (variants, unions, ...) are written as the values they hold.
        rows = table.to_pylist()
        parsed = [f.name for f in table.schema if (f.metadata or {}).get(b"gatelens") == b"json"]
        for row in rows:
            for c in parsed:
                if row[c] is not None:
                    row[c] = json.loads(row[c])
        out.write(json.dumps(_json_safe(rows), default=str, allow_nan=False).encode() + b"\n")
        return
    df = pl.from_arrow(table)
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                   fmt_table_cell_list_len=6, tbl_hide_dataframe_shape=True):
        text = str(df.head(max_rows))
    more = f"\n({df.height} rows; first {max_rows} shown, --max-rows or --format csv for all)" if df.height > max_rows else f"\n({df.height} rows)"
    out.write((text + more + "\n").encode())


def _json_safe(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v

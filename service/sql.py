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
"""

from __future__ import annotations

import json
import math
import re

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.errors import InputError
from service.store import Store

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


def check_statement(sql: str) -> str:
    """The one statement of ``sql`` if it only reads; raises ``Refused`` otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.ParserException as e:
        raise Refused(f"not valid SQL: {e}") from None
    except ValueError as e:  # a statement type the Python binding cannot name
        raise Refused(f"refused: a statement of a type gatelens sql does not run ({e})") from None
    if not statements:
        raise Refused("no SQL statement given")
    if len(statements) > 1:
        kinds = ", ".join(s.type.name for s in statements)
        raise Refused(f"refused: {len(statements)} statements ({kinds}); gatelens sql runs one statement at a time")
    st = statements[0]
    kind = st.type.name
    text = _strip_leading_comments(st.query)
    if kind == "SELECT":
        return st.query
    if kind == "EXPLAIN":
        m = re.match(r"(?is)EXPLAIN\s+(ANALYZE\s+)?(.*)$", text)
        if not m or m.group(1):
            raise Refused("refused: EXPLAIN ANALYZE runs its statement; use EXPLAIN (plan only)")
        check_statement(m.group(2))
        return st.query
    words = text.split(None, 1)
    head = re.sub(r"\W.*$", "", words[0]).upper() if words else kind
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


def run_query(sql: str, store: Store, wait: float = 10.0) -> pa.Table:
    """Check, then run one read-only statement on the store; the result as an Arrow table."""
    statement = check_statement(sql)
    with store.reader(timeout=wait) as con:
        try:
            return con.sql(statement).to_arrow_table()
        except duckdb.PermissionException as e:
            raise Refused(f"refused: the query reads outside the store ({e})") from None
        except duckdb.InvalidInputException as e:
            if "read-only mode" in str(e) or "configuration has been locked" in str(e):
                raise Refused(f"refused: {e}") from None
            raise


def write_result(table: pa.Table, fmt: str, out, max_rows: int = 100) -> None:
    """Write ``table`` in ``fmt`` to ``out`` (a binary file object)."""
    if fmt == "parquet":
        pq.write_table(table, out)
        return
    if fmt == "csv":
        df = pl.from_arrow(table)
        # CSV has no lists: nested columns become JSON text.
        nested = [c for c, t in df.schema.items() if t.is_nested()]
        if nested:
            df = df.with_columns(pl.col(c).map_elements(lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v),
                                                       return_dtype=pl.String) for c in nested)
        out.write(df.write_csv().encode())
        return
    if fmt == "json":
        # Strict JSON: NaN / inf become null; dates and decimals become strings.
        out.write(json.dumps(_json_safe(table.to_pylist()), default=str, allow_nan=False).encode() + b"\n")
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

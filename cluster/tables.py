"""Tables declared as data: typed columns from which the store's DDL, the polars schemas of the
rows every layer produces, and the column lists are all derived.

``Table`` and ``Column`` are plain data with no database behind them, so the layer that produces a
table's rows declares it: the capture's four per-unit tables are here (``CAPTURE_TABLES``), and so is
``analysis_summary``, the one long table every analysis writes its numbers to (here rather than in
``analyses/``, so that the store, and ``gatelens sql`` with it, opens without importing torch);
each analysis declares the tables it owns in its module, and the store (``service/schema.py``)
declares its own (runs, checkpoints, ...) and collects them all. Column comments say what a value means
in the paper's terms; the README's table list is the short form of these.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# What a capture records per unit and frame (Sec. 3.1): cell, unit output, input / forget / output
# gate, candidate; the capture names them L<layer>.<quantity>.
QUANTITIES = ("c", "m", "i", "f", "o", "g")

# DuckDB type -> polars dtype of the rows handed to the store
_POLARS = {
    "VARCHAR": pl.String, "INTEGER": pl.Int32, "BIGINT": pl.Int64, "DOUBLE": pl.Float64, "BOOLEAN": pl.Boolean,
    "TIMESTAMP": pl.Datetime("us"), "BIGINT[]": pl.List(pl.Int64), "VARCHAR[]": pl.List(pl.String),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a DuckDB type, one of _POLARS
    doc: str = ""
    not_null: bool = False

    def __post_init__(self):
        if self.type not in _POLARS:
            raise ValueError(f"column {self.name}: type {self.type!r} is not one of {', '.join(_POLARS)}")

    @property
    def dtype(self):
        return _POLARS[self.type]


@dataclass(frozen=True)
class Table:
    """A store table. ``key`` is its key; ``primary_key`` says whether DuckDB enforces it (the
    per-unit tables carry none: an index on ~12M rows made the file 5x larger and re-ingests 8x
    slower, so the single writer checks their keys before inserting)."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    primary_key: bool = False

    def __post_init__(self):
        names = [c.name for c in self.columns]
        missing = set(self.key) - set(names)
        if missing or len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: key columns {sorted(missing)} missing or a column repeats")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def schema(self) -> dict:
        """The polars schema of this table's rows."""
        return {c.name: c.dtype for c in self.columns}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)

    def ddl(self) -> str:
        cols = [f"{c.name} {c.type}" + (" NOT NULL" if c.not_null or (self.primary_key and c.name in self.key) else "")
                for c in self.columns]
        if self.primary_key:
            cols.append(f"PRIMARY KEY ({', '.join(self.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)})"


def C(name: str, type_: str, doc: str = "", key: bool = False) -> Column:
    """A column; key columns are NOT NULL."""
    return Column(name, type_, doc, not_null=key)


def keyed(name: str, doc: str, *columns: Column, primary_key: bool = False) -> Table:
    """A table whose key is its NOT NULL columns, in order."""
    return Table(name, doc, tuple(columns), tuple(c.name for c in columns if c.not_null), primary_key)


_HEAD = (C("checkpoint_id", "VARCHAR", key=True), C("analysis_version", "INTEGER", key=True))
_MOMENTS = (
    C("count", "BIGINT", "values summarised (non-NaN)"), C("n_nan", "BIGINT"),
    C("mean", "DOUBLE"), C("variance", "DOUBLE", "population variance (ddof 0)"),
    C("min", "DOUBLE"), C("max", "DOUBLE"),
    C("n_inside_2", "BIGINT", "c only: values in (-2, 2) (Fig. 3, LSTM share)"),
    C("n_outside_0_7", "BIGINT", "c only: values outside (-0.7, 0.7) (Fig. 3, GRU share)"),
    C("share_inside_2", "DOUBLE", "n_inside_2 / count"),
    C("share_outside_0_7", "DOUBLE", "n_outside_0_7 / count"),
)
_HISTOGRAM = (
    C("lo", "DOUBLE", "histogram range [lo, hi], bins of width (hi - lo) / bins"), C("hi", "DOUBLE"),
    C("bins", "INTEGER"), C("underflow", "BIGINT", "values < lo"), C("overflow", "BIGINT", "values > hi"),
    C("counts", "BIGINT[]", "counts[k] (1-based in SQL): lo + (k-1) w <= x < lo + k w; last bin closed"),
)
_LAYER_UNIT_QUANTITY = (
    C("layer", "INTEGER", "1 = lowest recurrent layer", key=True),
    C("unit", "INTEGER", "0 .. hidden-1", key=True),
    C("quantity", "VARCHAR", "c m i f o g (cell, output, input/forget/output gate, candidate)", key=True),
)

UNIT_STATS = keyed("unit_stats", "count, moments and Fig. 3's range counts per unit and quantity (Sec. 3.1)",
                   *_HEAD, *_LAYER_UNIT_QUANTITY, *_MOMENTS)
LAYER_STATS = keyed("layer_stats", "unit_stats and the histogram pooled over a layer's units (Fig. 3)",
                    *_HEAD, C("layer", "INTEGER", key=True), C("quantity", "VARCHAR", key=True),
                    C("units", "INTEGER", "units pooled"), *_MOMENTS, *_HISTOGRAM)
UNIT_HISTOGRAMS = keyed("unit_histograms", "a fixed-bin histogram per unit and quantity (Figs. 1-2)",
                        *_HEAD, *_LAYER_UNIT_QUANTITY, *_HISTOGRAM)
PHONE_RESPONSIBILITY = Table(
    "phone_responsibility", "frames of each phone and a unit's irregular frames on it (Sec. 4.2, Figs. 4-6)",
    (*_HEAD,
     C("rule", "VARCHAR", "irregularity rule: abs>10 (LSTM), abs<0.5 (GRU), pct>99 ...", key=True),
     C("quantity", "VARCHAR", "the value the rule reads (c)", key=True),
     C("threshold", "DOUBLE", "|value| threshold applied (a pct rule's layer percentile)"),
     C("layer", "INTEGER", key=True), C("unit", "INTEGER", key=True),
     C("phone_id", "INTEGER", "id in the corpus phones.txt", key=True),
     C("phone", "VARCHAR"), C("frames", "BIGINT", "frames of this phone in the capture"),
     C("irregular", "BIGINT", "of those, frames on which the unit was irregular"),
     C("responsibility", "DOUBLE", "irregular / frames (Sec. 4.2)")),
    ("checkpoint_id", "analysis_version", "rule", "layer", "unit", "phone_id"))

ANALYSIS_SUMMARY = Table(
    "analysis_summary", "the analyses' own numbers (smoothness, impact duration, unit counts...): one long table",
    (C("checkpoint_id", "VARCHAR", "a checkpoint, or 'study:<name>' for rows of a whole study", key=True),
     C("analysis", "VARCHAR", "the analysis's name", key=True),
     C("analysis_version", "INTEGER", key=True),
     C("label", "VARCHAR", "utterance, noise condition, rule or run the row is about ('' if none)", key=True),
     C("layer", "INTEGER", "1 = lowest recurrent layer, 0 = the whole model", key=True),
     C("unit", "INTEGER", "-1 = all units", key=True),
     C("phone_id", "INTEGER", "-1 = all phones", key=True),
     C("metric", "VARCHAR", key=True),
     C("value", "DOUBLE")),
    ("checkpoint_id", "analysis", "analysis_version", "label", "layer", "unit", "phone_id", "metric"))

CAPTURE = "capture"  # the analyses-log name of a capture
CAPTURE_TABLES = (UNIT_STATS, LAYER_STATS, UNIT_HISTOGRAMS, PHONE_RESPONSIBILITY)

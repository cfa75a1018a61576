"""Query latency of the store at the scale of a full study.

Builds a store holding 100 checkpoints x 6 layers x 512 units: ~12M phone-responsibility rows (40
phones), 1.8M unit-stats rows, as 100 captures would leave it (rows of one checkpoint together,
in key order), then times the two queries the figures need, through the same read-only,
sandboxed connection ``gatelens sql`` uses:

  responsibility  Fig. 4/5: per phone, the units of one layer of one checkpoint with
                  responsibility > 80% (LSTM) / 50% (GRU)
  range shares    Fig. 3 across architectures: per (arch, layer), the share of c in (-2, 2) and
                  outside (-0.7, 0.7), over all checkpoints

Each query runs --repeats times on random checkpoints/layers; p50 and p95 are printed for a query
on an open connection, and end to end as ``gatelens sql`` runs it (statement check, open,
query, close). It also times one real ingest of a checkpoint (replacing its rows) against the
full store. Target: p95 < 100 ms.

    .venv/bin/python bench/store.py [--checkpoints 100] [--repeats 50] [--keep PATH]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as `python bench/X.py`, this folder comes first on sys.path, and bench/service.py would
# shadow the service package: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.summaries import QUANTITIES, IrregularityRule, UnitSummary  # noqa: E402
from service.sql import run_query  # noqa: E402
from service.store import Store  # noqa: E402

LAYERS, UNITS, PHONES = 6, 512, 40


def build(store: Store, checkpoints: int) -> float:
    t0 = time.perf_counter()
    with store.transaction() as con:
        con.execute(f"""
            INSERT INTO checkpoints (checkpoint_id, run_id, epoch, arch, layers, hidden, residual, created_at)
            SELECT printf('ck%03d', k), printf('run%03d', k), 10, CASE WHEN k % 2 = 0 THEN 'lstm' ELSE 'gru' END,
                   {LAYERS}, {UNITS}, false, now()::TIMESTAMP
            FROM range({checkpoints}) t(k)""")
        # Per checkpoint, in key order, as one ingest per checkpoint lays them out.
        con.execute(f"""
            INSERT INTO phone_responsibility
            SELECT printf('ck%03d', k), 1, CASE WHEN k % 2 = 0 THEN 'abs>10' ELSE 'abs<0.5' END, 'c',
                   CASE WHEN k % 2 = 0 THEN 10 ELSE 0.5 END, l, u, p, printf('P%02d', p),
                   1000 + p * 37 AS frames, irr, irr / (1000 + p * 37)
            FROM range({checkpoints}) a(k), range(1, {LAYERS + 1}) b(l), range({UNITS}) c(u),
                 range(1, {PHONES + 1}) d(p),
                 LATERAL (SELECT CAST(floor(random() * (1000 + p * 37)) AS BIGINT) AS irr)
            ORDER BY k, l, u, p""")
        con.execute(f"""
            INSERT INTO unit_stats
            SELECT printf('ck%03d', k), 1, l, u, q, 100000, 0, random() - 0.5, random(), -5 * random(), 5 * random(),
                   n_in, n_out, n_in / 100000, n_out / 100000
            FROM range({checkpoints}) a(k), range(1, {LAYERS + 1}) b(l), range({UNITS}) c(u),
                 (SELECT unnest({list(QUANTITIES)!r}) AS q),
                 LATERAL (SELECT CASE WHEN q = 'c' THEN CAST(random() * 100000 AS BIGINT) END AS n_in,
                                 CASE WHEN q = 'c' THEN CAST(random() * 100000 AS BIGINT) END AS n_out)
            ORDER BY k, l, u, q""")
        # The per-layer rollup an ingest writes next to the units (exact sums of them).
        con.execute("""
            INSERT INTO layer_stats (checkpoint_id, analysis_version, layer, quantity, units, count, n_nan,
                                     n_inside_2, n_outside_0_7, share_inside_2, share_outside_0_7)
            SELECT checkpoint_id, analysis_version, layer, quantity, count(*), sum(count), sum(n_nan),
                   sum(n_inside_2), sum(n_outside_0_7), sum(n_inside_2) / sum(count), sum(n_outside_0_7) / sum(count)
            FROM unit_stats GROUP BY ALL ORDER BY ALL""")
    return time.perf_counter() - t0


def responsibility_sql(ck: int, layer: int) -> str:
    cut, rule = (0.8, "abs>10") if ck % 2 == 0 else (0.5, "abs<0.5")
    return (f"SELECT phone, count(*) FILTER (WHERE responsibility > {cut}) AS units "
            f"FROM phone_responsibility WHERE checkpoint_id = 'ck{ck:03d}' AND analysis_version = 1 "
            f"AND rule = '{rule}' AND layer = {layer} GROUP BY phone ORDER BY phone")


RANGE_SHARES_SQL = (  # from the per-layer rollup: the README's query
    "SELECT c.arch, s.layer, sum(s.n_inside_2) / sum(s.count) AS inside_2, "
    "sum(s.n_outside_0_7) / sum(s.count) AS outside_0_7 "
    "FROM layer_stats s JOIN checkpoints c USING (checkpoint_id) "
    "WHERE s.quantity = 'c' AND s.analysis_version = 1 GROUP BY ALL ORDER BY ALL")
RANGE_SHARES_UNITS_SQL = RANGE_SHARES_SQL.replace("layer_stats", "unit_stats")  # same answer, from every unit


def QUERIES(cases, repeats):  # noqa: N802
    return (("responsibility, one layer", [responsibility_sql(*c) for c in cases]),
            ("range shares, all archs (layers)", [RANGE_SHARES_SQL] * repeats),
            ("range shares, all archs (units)", [RANGE_SHARES_UNITS_SQL] * repeats))


def percentiles(times: list[float]) -> str:
    ms = np.array(times) * 1000
    return f"p50 {np.percentile(ms, 50):6.1f} ms   p95 {np.percentile(ms, 95):6.1f} ms   max {ms.max():6.1f} ms"


def one_ingest(store: Store) -> float:
    """A real capture's rows for one checkpoint (6 x 512 units), replacing the generated ones."""
    rng = np.random.default_rng(0)
    phones = ["<eps>"] + [f"P{p:02d}" for p in range(1, PHONES + 1)]
    s = UnitSummary("lstm", len(phones), rules=(IrregularityRule.parse("abs>10"),))
    n = 2000
    s.update({f"L{l}.{q}": (rng.standard_normal((n, UNITS)) * 4).astype(np.float32)
              for l in range(1, LAYERS + 1) for q in QUANTITIES}, rng.integers(1, PHONES + 1, n))
    frames = s.frames_for_store("ck000", phones)
    t0 = time.perf_counter()
    store.ingest("ck000", "capture", 1, frames)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--keep", help="build the store here (and keep it) instead of a temporary directory")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "bench.duckdb"
        store = Store(path)
        built = 0.0
        if not path.exists():
            built = build(store, args.checkpoints)
        n = store.query("SELECT (SELECT count(*) FROM phone_responsibility) AS r, "
                        "(SELECT count(*) FROM unit_stats) AS s").row(0)
        print(f"store {path}: {n[0]:,} responsibility rows, {n[1]:,} unit-stats rows, "
              f"{path.stat().st_size / 2**20:.0f} MiB" + (f", built in {built:.1f} s" if built else ""))

        rnd = random.Random(0)
        cases = [(rnd.randrange(args.checkpoints), rnd.randrange(1, LAYERS + 1)) for _ in range(args.repeats)]
        with store.reader() as con:
            con.sql(responsibility_sql(0, 1)).fetchall()  # first touch: metadata into memory
            assert con.sql(RANGE_SHARES_SQL).fetchall() == con.sql(RANGE_SHARES_UNITS_SQL).fetchall()
            for name, queries in QUERIES(cases, args.repeats):
                times = []
                for q in queries:
                    t0 = time.perf_counter()
                    rows = con.sql(q).fetchall()
                    times.append(time.perf_counter() - t0)
                assert rows
                print(f"{name:34s} open connection:  {percentiles(times)}")
        for name, queries in QUERIES(cases, args.repeats):
            times = []
            for q in queries:
                t0 = time.perf_counter()
                run_query(q, store)
                times.append(time.perf_counter() - t0)
            print(f"{name:34s} as `gatelens sql`: {percentiles(times)}")
        print(f"one checkpoint's ingest (6 x 512 units, replacing its rows): {one_ingest(store):.2f} s")


if __name__ == "__main__":
    main()

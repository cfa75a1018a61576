"""What the unit explorer shows, as plain data: the library below its HTTP layer (``app.py``).

``Explorer`` answers every view from three sources:

- the store, opened read-only with the same sandbox as ``gatelens sql`` (``Store.reader``) and a
  bounded wait, never held between requests: a writer holding it longer raises ``StoreBusy``,
  which the app turns into a "store busy, retrying" answer. Small lookups and a checkpoint's
  per-unit rows are kept until the store file's stamp changes (``_per_stamp``, ``unit_tables``):
  a DuckDB open costs ~30 ms on this machine, more than the unit view's whole budget;
- the checkpoints, loaded on demand (weights only, the checkpoint loader's checks) and kept for
  the last few used, which capture any utterance of their corpus with the training code
  (``AcousticModel.capture``); an utterance the store holds a raw sample of is read from there;
- the corpus (features, alignments, transcripts and ``wav.scp``), read through the Kaldi reader,
  which refuses pipes: audio is served only from a file inside the corpus folder.

Ids and names from a request are checked before they reach SQL or a path (``check_id``, the
corpus's own utterance lists, the store's checkpoint list); unknown ones raise ``NotFound``.
The probe set of a checkpoint, over which top frames and pattern matches are searched, is the
first ``utterances`` of the utterances its capture summarised (the capture's own draw).
"""

from __future__ import annotations

import json
import logging
import threading
from functools import cached_property
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from analyses import patterns
from analyses.claims import SOURCES, evaluate, gather, study_utterances
from analyses.common import StudyRef
from cluster.batching import pad_batch
from cluster.capture import CaptureConfig, choose_utterances, load, open_corpus
from cluster.data.kaldi import read_scp, read_words_ctm
from cluster.errors import InputError
from cluster.runs import final_checkpoint_ids, studies_results
from cluster.summaries import QUANTITIES, SUMMARY_VERSION
from service.schema import SAMPLE_VIEW
from service.store import Store, check_id

FRAME_SHIFT_S = 0.01  # every corpus here: Kaldi's 10 ms frame shift
log = logging.getLogger("gatelens.explorer")


class NotFound(InputError):
    """An id, utterance or file the explorer does not have (HTTP 404)."""


@dataclass
class ExplorerConfig:
    store: str
    storage: str | None = None  # the training storage: runs, results and claims of its studies
    corpus: str | None = None  # default: the corpus each checkpoint was trained on
    report: str | None = None  # the report folder: its figures may be served too
    split: str = "test"
    utterances: int = 40  # probe set per checkpoint
    wait: float = 2.0  # seconds a request waits for a busy store
    models: int = 3  # checkpoints kept loaded


class Loaded:
    """One checkpoint in memory: model, corpus split, and the per-frame values captured so far."""

    def __init__(self, checkpoint_id: str, path: str, config: ExplorerConfig, capture_params: dict):
        self.checkpoint_id = checkpoint_id
        self.model, self.meta = load(path)
        self.corpus = open_corpus(CaptureConfig(checkpoint=path, corpus=config.corpus), self.meta)
        self.split = self.corpus.split(capture_params.get("split") or config.split)
        self.phones = self.corpus.phones
        ids = self.split.utt_ids
        n = int(capture_params.get("utterances") or len(ids))
        self.probe = choose_utterances(self.split, n, int(capture_params.get("seed") or 0))[:config.utterances]
        self.values: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()  # utt -> {"L1.c": [T, H] f16}
        self.lock = threading.Lock()

    def check(self, utt_id: str) -> str:
        if utt_id not in self.split.feats_scp:
            raise NotFound(f"utterance {utt_id!r} is not in split {self.split.name} of {self.corpus.manifest_path}")
        return utt_id

    def utterance(self, utt_id: str):
        return self.split.load(self.check(utt_id))

    @cached_property
    def wavs(self) -> dict[str, str]:
        """utt -> wav file, from the split's wav.scp (pipes refused by the reader)."""
        rel = self.split.spec.get("wav")
        return read_scp(self.corpus.path(rel), self.corpus.root) if rel else {}

    @cached_property
    def texts(self) -> dict[str, str]:
        """utt -> transcript, from the split's Kaldi ``text``."""
        rel = self.split.spec.get("text")
        path = self.corpus.path(rel) if rel else None
        if not path or not path.is_file():
            return {}
        return dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)

    @cached_property
    def words(self) -> dict[str, list[dict]]:
        """utt -> word tier in frames ({start, end, word}), from the split's word alignment (a CTM,
        ``utt chan start dur word`` in seconds), where the corpus has one (imported corpora)."""
        rel = self.split.spec.get("words")
        path = self.corpus.path(rel) if rel else None
        if not path or not path.is_file():
            return {}
        return {utt: [{"start": round(a / FRAME_SHIFT_S, 2), "end": round(b / FRAME_SHIFT_S, 2), "word": w}
                      for a, b, w in tier] for utt, tier in read_words_ctm(path).items()}

    def capture(self, utt_ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """{utt: {name: [T, H] float16}} for the utterances, capturing those not yet held (padded
        batches of 16; the model's own capture, as training and the store's capture run it)."""
        with self.lock:
            todo = [u for u in utt_ids if u not in self.values]
            for k in range(0, len(todo), 16):
                utts = [self.utterance(u) for u in todo[k:k + 16]]
                x, lengths = pad_batch([u.feats for u in utts])
                vals = self.model.capture(x, lengths, dtype=torch.float16)
                for i, u in enumerate(utts):
                    n = int(lengths[i])
                    self.values[u.utt_id] = {name: v[i, :n].numpy() for name, v in vals.items()}
            limit = max(200, len(utt_ids))
            while len(self.values) > limit:
                self.values.popitem(last=False)
            return {u: self.values[u] for u in utt_ids}

    def layer_values(self, layer: int, quantity: str, utt_ids: list[str] | None = None) -> dict[str, np.ndarray]:
        name = f"L{layer}.{quantity}"
        got = self.capture(utt_ids if utt_ids is not None else self.probe)
        out = {u: v[name] for u, v in got.items() if name in v}
        if not out:
            raise NotFound(f"checkpoint {self.checkpoint_id} has no value {name} "
                           f"(layers 1..{len(self.model.layers)}, values {', '.join(self.model.layers[0].value_names)})")
        return out


class Explorer:
    def __init__(self, config: ExplorerConfig):
        self.config = config
        self.store = Store(config.store, busy_timeout=config.wait)
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._claims: tuple[tuple, tuple] | None = None
        self._cache: dict[str, tuple] = {}
        self._units: OrderedDict[str, tuple] = OrderedDict()
        self._units_lock = threading.Lock()
        self._overview: tuple[tuple, dict] | None = None  # (stamp it was computed at, overview)
        self._overview_lock = threading.Lock()  # one computation at a time
        self._refresh_lock, self._refreshing = threading.Lock(), False  # one background refresh at a time

    # -- the store --------------------------------------------------------------------------------

    def _stamp(self) -> tuple:
        """What changes whenever a writer commits: the file's and its write-ahead log's size and
        time (DuckDB folds the log into the file when the writer closes)."""
        out = []
        for p in (self.store.path, self.store.path.with_name(self.store.path.name + ".wal")):
            try:
                st = p.stat()
                out += [st.st_mtime_ns, st.st_size]
            except OSError:
                out += [0, 0]
        return tuple(out)

    def _per_stamp(self, key: str, read):
        """``read()``'s answer, read again only once the store file changed: the small lookups
        every request needs (the checkpoint list, which utterances have raw samples), so that a
        request opens the store once, for its own numbers (each open costs ~30 ms here)."""
        stamp = self._stamp()
        hit = self._cache.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, read())
            self._cache[key] = hit
        return hit[1]

    def checkpoints(self) -> dict[str, dict]:
        return self._per_stamp("checkpoints", lambda: {
            r["checkpoint_id"]: r for r in self.store.query("SELECT * FROM checkpoints").iter_rows(named=True)})

    def checkpoint_row(self, checkpoint_id: str) -> dict:
        check_id(checkpoint_id, "checkpoint")
        rows = self.checkpoints()
        if checkpoint_id not in rows:
            raise NotFound(f"no checkpoint {checkpoint_id!r} in the store {self.store.path}")
        return rows[checkpoint_id]

    def tables(self) -> set[str]:
        return self._per_stamp("tables", lambda: set(self.store.query(
            "SELECT table_name AS n FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()")["n"]))

    def sampled(self) -> set[tuple[str, str]]:
        """(checkpoint, utterance) pairs the store holds a raw sample of."""
        def read():
            if not self.store.sample_files():
                return set()
            return set(self.store.query(f"SELECT DISTINCT checkpoint_id, utt_id FROM {SAMPLE_VIEW}").rows())
        return self._per_stamp("sampled", read)

    def loaded(self, checkpoint_id: str) -> Loaded:
        with self._lock:
            if checkpoint_id in self._models:
                self._models.move_to_end(checkpoint_id)
                return self._models[checkpoint_id]
        row = self.checkpoint_row(checkpoint_id)
        log = self.store.query("SELECT params FROM analyses WHERE checkpoint_id = ? AND analysis = 'capture' "
                         "AND status = 'finished' ORDER BY analysis_version DESC LIMIT 1", [checkpoint_id])
        params = json.loads(log["params"][0] or "{}") if log.height else {}
        if not Path(row["path"]).is_file():
            raise NotFound(f"checkpoint {checkpoint_id}: its file {row['path']} is gone")
        m = Loaded(checkpoint_id, row["path"], self.config, params if isinstance(params, dict) else {})
        with self._lock:
            self._models[checkpoint_id] = m
            while len(self._models) > self.config.models:
                self._models.popitem(last=False)
        return m

    # -- views --------------------------------------------------------------------------------------

    def studies(self) -> list[str]:
        root = Path(self.config.storage) if self.config.storage else None
        if root is None or not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "runs").is_dir())

    def overview_stamp(self) -> tuple:
        """What the overview depends on: the store file and the list of studies."""
        return self._stamp(), tuple(self.studies())

    def overview(self) -> dict:
        """The overview as of the last store change. It is computed once per change, off the
        request path: a request that finds the store changed answers with the overview it has
        (``stale``: true) and starts one refresh in the background; only the very first request
        (nothing computed yet) waits for it. A refresh the store's writer keeps out (StoreBusy)
        leaves the old overview, and the next request tries again."""
        stamp = self.overview_stamp()
        have = self._overview
        if have is not None and have[0] == stamp:
            return have[1]
        if have is None:
            with self._overview_lock:
                if self._overview is None:
                    self._overview = (stamp, self._compute_overview())
                return self._overview[1]
        self.refresh_overview(background=True)
        return {**have[1], "stale": True}

    def refresh_overview(self, background: bool = False) -> None:
        """Compute the overview if the store changed since the last one (in a thread of its own
        with ``background``; at most one at a time)."""
        def work():
            try:
                with self._overview_lock:
                    stamp = self.overview_stamp()
                    if self._overview is None or self._overview[0] != stamp:
                        self._overview = (stamp, self._compute_overview())
            except Exception as e:  # noqa: BLE001 -- busy or mid-write: the old overview stays; retried on the next request
                log.warning("overview refresh failed (the last one is served, marked stale): %s: %s",
                            type(e).__name__, e)
            finally:
                self._refreshing = False

        if not background:
            work()
            return
        with self._refresh_lock:
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=work, name="explorer-overview", daemon=True).start()

    def _compute_overview(self) -> dict:
        cks = self.store.query(
            "SELECT c.checkpoint_id, c.run_id, c.epoch, c.arch, c.layers, c.hidden, c.residual, c.seed, "
            "c.corpus_name, (SELECT per FROM epoch_metrics e WHERE e.run_id = c.run_id AND e.split = 'test' "
            "ORDER BY epoch DESC LIMIT 1) AS per, (SELECT frame_acc FROM epoch_metrics e WHERE e.run_id = c.run_id "
            "AND e.split = 'test' ORDER BY epoch DESC LIMIT 1) AS frame_acc, "
            "(SELECT count(*) FROM analyses a WHERE a.checkpoint_id = c.checkpoint_id AND a.status = 'finished') "
            "AS analyses FROM checkpoints c ORDER BY c.run_id NULLS LAST, c.checkpoint_id")
        runs = self.store.query("SELECT run_id, arch, layers, hidden, residual, seed, status FROM runs ORDER BY run_id")
        results, claims = self.studies_facts()
        scored = {f"{r['study']}:{r['run']}": r for r in results.iter_rows(named=True)} if results.height else {}
        rows = []
        for c in cks.iter_rows(named=True):  # the store's metrics, else the run's own results file
            r = scored.get(c["run_id"] or "", {})
            rows.append({**c, "per": c["per"] if c["per"] is not None else r.get("test_per"),
                         "frame_acc": c["frame_acc"] if c["frame_acc"] is not None else r.get("test_frame_acc")})
        return {"store": str(self.store.path), "studies": self.studies(), "runs": runs.to_dicts(),
                "checkpoints": rows, "claims": claims, "stale": False}

    def studies_facts(self) -> tuple[pl.DataFrame, list[dict]]:
        """The studies' results and claims (``analyses.claims``, with the units and figures behind
        each); recomputed when the store file or the list of studies changes."""
        studies = self.studies()
        if not studies:
            return pl.DataFrame(), []
        stamp = (self._stamp(), tuple(studies))
        if self._claims and self._claims[0] == stamp:
            return self._claims[1]
        ids = final_checkpoint_ids(self.config.storage, studies)
        known = self.checkpoints()
        ids = [i for i in ids if i in known]
        results = studies_results(self.config.storage, studies)
        claims = evaluate(gather(self.store, ids, results if results.height else None,
                                 study_utterances(self.config.storage, studies)))
        out = [{**c.to_dict(), "links": self.claim_links(c.key, ids)} for c in claims]
        self._claims = (stamp, (results, out))
        return results, out

    def claim_links(self, key: str, checkpoint_ids: list[str]) -> dict:
        """The units and figures behind a claim: for each analysis it reads (``claims.SOURCES``),
        the figures the store logged for the checkpoints of the cells it measures (and the study's
        own), and the units that analysis singles out in them."""
        sources, cells = SOURCES.get(key, ((), None))
        rows = self.checkpoints()
        ids = [i for i in checkpoint_ids if i in rows and (cells is None or rows[i]["arch"] in cells)]
        if not ids or not sources:
            return {"units": [], "figures": []}
        marks = ", ".join("?" for _ in ids)
        subjects = [*ids, *(StudyRef(str(self.config.storage), s).subject_id for s in self.studies())]
        figs = self.store.query(f"SELECT checkpoint_id, analysis, figure_paths FROM analyses WHERE status = 'finished' "
                          f"AND analysis IN ({', '.join('?' for _ in sources)}) "
                          f"AND checkpoint_id IN ({', '.join('?' for _ in subjects)}) "
                          f"QUALIFY row_number() OVER (PARTITION BY checkpoint_id, analysis ORDER BY analysis_version DESC) = 1 "
                          f"ORDER BY analysis, checkpoint_id", [*sources, *subjects])
        figures = [{"checkpoint_id": r["checkpoint_id"], "analysis": r["analysis"], "index": k}
                   for r in figs.iter_rows(named=True) for k, _ in enumerate(r["figure_paths"] or [])]
        units, seen = [], set()
        for analysis in sources:
            table, sql = UNIT_QUERIES.get(analysis, (None, None))
            if sql and table in self.tables():
                version = [SUMMARY_VERSION] if "analysis_version = ?" in sql else []
                for r in self.store.query(sql.format(marks=marks), [*version, *ids]).iter_rows(named=True):
                    if (r["checkpoint_id"], r["layer"], r["unit"]) not in seen:
                        seen.add((r["checkpoint_id"], r["layer"], r["unit"]))
                        units.append({**r, "analysis": analysis})
        return {"units": units[:8], "figures": figures}

    def unit(self, checkpoint_id: str, layer: int, unit: int) -> dict:
        row = self.checkpoint_row(checkpoint_id)
        if not 1 <= layer <= row["layers"] or not 0 <= unit < row["hidden"]:
            raise NotFound(f"checkpoint {checkpoint_id} has layers 1..{row['layers']} and units 0..{row['hidden'] - 1}, "
                           f"not layer {layer} unit {unit}")
        tables = self.unit_tables(checkpoint_id)
        pick = {name: df.filter((pl.col("layer") == layer) & (pl.col("unit") == unit)).drop("layer", "unit")
                for name, df in tables.items()}
        memory = pick["memory"].to_dicts()
        return {"checkpoint": _plain_row(row), "layer": layer, "unit": unit, "stats": pick["stats"].to_dicts(),
                "histograms": pick["histograms"].to_dicts(), "responsibility": pick["responsibility"].to_dicts(),
                "memory": memory[0] if memory else None}

    def unit_tables(self, checkpoint_id: str) -> dict[str, pl.DataFrame]:
        """The per-unit rows of one checkpoint (stats, histograms, responsibility, memory), read in
        one open of the store and kept until the store file changes (the last few checkpoints):
        the unit view then answers from memory, as fresh as a read, without the ~30 ms open."""
        stamp = self._stamp()
        with self._units_lock:
            hit = self._units.get(checkpoint_id)
            if hit is not None and hit[0] == stamp:
                self._units.move_to_end(checkpoint_id)
                return hit[1]
        has_memory = "unit_memory" in self.tables()
        args, where = [checkpoint_id, SUMMARY_VERSION], "checkpoint_id = ? AND analysis_version = ?"
        with self.store.reader(samples=False) as con:
            out = {
                "stats": con.sql(f"SELECT layer, unit, quantity, count, mean, variance, min, max FROM unit_stats "
                                 f"WHERE {where} ORDER BY layer, unit, quantity", params=args).pl(),
                "histograms": con.sql(f"SELECT layer, unit, quantity, lo, hi, bins, underflow, overflow, counts "
                                      f"FROM unit_histograms WHERE {where} ORDER BY layer, unit, quantity", params=args).pl(),
                "responsibility": con.sql(f"SELECT layer, unit, rule, phone_id, phone, frames, irregular, responsibility "
                                          f"FROM phone_responsibility WHERE {where} ORDER BY layer, unit, rule, phone_id",
                                          params=args).pl(),
                "memory": con.sql("SELECT layer, unit, mean_f, implied_tau, measured_frames, censored, peak FROM unit_memory "
                                  "WHERE checkpoint_id = ? QUALIFY analysis_version = max(analysis_version) OVER () "
                                  "ORDER BY layer, unit", params=[checkpoint_id]).pl() if has_memory
                else pl.DataFrame(schema={"layer": pl.Int32, "unit": pl.Int32}),
            }
        with self._units_lock:
            self._units[checkpoint_id] = (stamp, out)
            while len(self._units) > 8:
                self._units.popitem(last=False)
        return out

    def top(self, checkpoint_id: str, layer: int, unit: int, quantity: str = "c", k: int = 10, by: str = "abs") -> dict:
        m = self.loaded(checkpoint_id)
        _check_quantity(quantity)
        vals = m.layer_values(layer, quantity)
        H = next(iter(vals.values())).shape[1]
        if not 0 <= unit < H:
            raise NotFound(f"checkpoint {checkpoint_id} layer {layer} has units 0..{H - 1}, not {unit}")
        frames = patterns.top_frames(vals, unit, k=k, by=by)
        out = []
        for f in frames:
            phones = m.split.alignments[f.utt_id].phones
            out.append({"utt_id": f.utt_id, "frame": f.frame, "value": f.value, "time": f.frame * FRAME_SHIFT_S,
                        "phone": m.phones[int(phones[min(f.frame, len(phones) - 1)])]})
        return {"quantity": quantity, "by": by, "utterances": len(vals), "frames": out}

    def utterances(self, checkpoint_id: str) -> dict:
        m = self.loaded(checkpoint_id)
        return {"split": m.split.name, "probe": m.probe, "all": m.split.utt_ids,
                "audio": sorted(set(m.split.utt_ids) & set(m.wavs))}

    def utterance(self, checkpoint_id: str, utt_id: str) -> dict:
        m = self.loaded(checkpoint_id)
        u = m.utterance(utt_id)
        tier = [{"start": s, "end": e, "phone": m.phones[p]} for s, e, p in patterns.segments(u.phones)]
        return {"utt_id": utt_id, "frames": int(u.feats.shape[0]), "frame_shift": FRAME_SHIFT_S,
                "text": m.texts.get(utt_id, ""), "phones": tier, "words": m.words.get(utt_id, []),
                "audio": utt_id in m.wavs,
                "fbank": np.round(u.feats.T, 3).tolist(), "layers": len(m.model.layers),
                "quantities": list(m.model.layers[0].value_names)}

    def values(self, checkpoint_id: str, utt_id: str, layer: int, quantity: str, order: str = "index",
               phone: str | None = None) -> tuple[dict, np.ndarray]:
        """(meta, [H, T] float32) of one layer's quantity over an utterance, units in ``order``:
        a raw sample from the store where it has one, else captured now."""
        _check_quantity(quantity)
        m = self.loaded(checkpoint_id)
        m.check(utt_id)  # 404 before anything else, without reading the features
        source, v = "capture", None
        if (checkpoint_id, utt_id) in self.sampled():
            with self.store.reader(samples=True) as con:
                df = con.sql(f"SELECT frame, {quantity} AS v FROM {SAMPLE_VIEW} WHERE checkpoint_id = ? AND utt_id = ? "
                             f"AND layer = ? ORDER BY analysis_version DESC, frame", params=[checkpoint_id, utt_id, layer]).pl()
                if df.height and df["v"].null_count() == 0:
                    df = df.unique("frame", keep="first", maintain_order=True)
                    v = df["v"].explode().to_numpy().astype(np.float32).reshape(df.height, -1)
                    source = "sample"
        if v is None:
            v = m.layer_values(layer, quantity, [utt_id])[utt_id].astype(np.float32)
        scores = None
        if order == "responsibility":
            scores = self._responsibility(checkpoint_id, layer, phone, v.shape[1])
            how = "score"
        else:
            how = order
        try:
            perm = patterns.order_units(v, how, scores)
        except ValueError as e:
            raise InputError(f"order: {e}") from None
        meta = {"utt_id": utt_id, "layer": layer, "quantity": quantity, "order": order, "phone": phone,
                "source": source, "frames": int(v.shape[0]), "units": [int(u) for u in perm],
                "lo": float(v.min()), "hi": float(v.max())}
        return meta, np.ascontiguousarray(v[:, perm].T)

    def _responsibility(self, checkpoint_id: str, layer: int, phone: str | None, H: int) -> np.ndarray:
        if not phone:
            raise InputError("order=responsibility needs phone=<symbol>")
        rows = self.store.query("SELECT unit, max(responsibility) AS r FROM phone_responsibility WHERE checkpoint_id = ? "
                          "AND analysis_version = ? AND layer = ? AND phone = ? GROUP BY unit",
                          [checkpoint_id, SUMMARY_VERSION, layer, phone])
        if rows.height == 0:
            raise NotFound(f"checkpoint {checkpoint_id} layer {layer}: no responsibility rows for phone {phone!r}")
        scores = np.full(H, np.nan)
        scores[rows["unit"].to_numpy()] = rows["r"].to_numpy()
        return scores

    def pattern(self, checkpoint_id: str, utt_id: str, layer: int, quantity: str, start: int, end: int,
                threshold: float, inside: float = 0.9, outside: float = 0.1) -> dict:
        _check_quantity(quantity)
        v = self.loaded(checkpoint_id).layer_values(layer, quantity, [utt_id])[utt_id]
        try:
            sel = patterns.select_pattern(v, start, end, threshold, inside=inside, outside=outside)
        except ValueError as e:
            raise InputError(f"utterance {utt_id}: {e}") from None
        return {"units": sel.units, "inside": sel.inside, "outside": sel.outside, "start": start, "end": end,
                "threshold": threshold}

    def match(self, checkpoint_id: str, layer: int, quantity: str, units: list[int], threshold: float,
              min_share: float = 0.8, min_frames: int = 3) -> dict:
        _check_quantity(quantity)
        m = self.loaded(checkpoint_id)
        vals = m.layer_values(layer, quantity)
        H = next(iter(vals.values())).shape[1]
        bad = [u for u in units if not 0 <= u < H]
        if bad:
            raise InputError(f"units {bad} are outside 0..{H - 1}")
        found = patterns.match_pattern(vals, units, threshold, min_share=min_share, min_frames=min_frames)
        out = []
        for f in found:
            phones = m.split.alignments[f.utt_id].phones[f.start:f.end]
            seq = [m.phones[p] for _, _, p in patterns.segments(phones)]
            out.append({"utt_id": f.utt_id, "start": f.start, "end": f.end, "share": f.share, "phones": seq,
                        "audio": f.utt_id in m.wavs})
        return {"units": units, "utterances": len(vals), "matches": out}

    # -- files --------------------------------------------------------------------------------------

    def audio_path(self, checkpoint_id: str, utt_id: str) -> Path:
        m = self.loaded(checkpoint_id)
        entry = m.wavs.get(utt_id)
        if entry is None:
            raise NotFound(f"utterance {utt_id!r} has no audio in {m.corpus.manifest_path} (wav.scp)")
        return inside(Path(entry), [m.corpus.root], f"audio of {utt_id}")

    def figure_path(self, checkpoint_id: str, analysis: str, index: int) -> Path:
        check_id(checkpoint_id, "checkpoint")
        check_id(analysis, "analysis")
        rows = self.store.query("SELECT figure_paths FROM analyses WHERE checkpoint_id = ? AND analysis = ? "
                          "ORDER BY analysis_version DESC LIMIT 1", [checkpoint_id, analysis])
        paths = rows["figure_paths"].to_list()[0] if rows.height else None
        if not paths or not 0 <= index < len(paths):
            raise NotFound(f"no figure {index} of {analysis} for {checkpoint_id}")
        if Path(paths[index]).suffix.lower() != ".png":
            raise NotFound(f"figure {index} of {analysis} for {checkpoint_id} is not a PNG file: {paths[index]}")
        roots = [self.store.path.parent] + [Path(p) for p in (self.config.storage, self.config.report) if p]
        return inside(Path(paths[index]), roots, f"figure {index} of {analysis}")


def inside(path: Path, roots: list[Path], what: str) -> Path:
    """``path`` resolved, if it is a file inside one of ``roots`` (symlinks resolved first)."""
    real = path.resolve()
    if not any(real.is_relative_to(r.resolve()) for r in roots) or not real.is_file():
        raise NotFound(f"{what}: {path} is not a file inside {', '.join(str(r) for r in roots)}")
    return real


def _check_quantity(q: str) -> None:
    if q not in QUANTITIES:
        raise InputError(f"quantity {q!r} is not one of {', '.join(QUANTITIES)}")


def _plain_row(row: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


# The units an analysis singles out, for a claim's links: (table read, SQL giving checkpoint_id,
# layer, unit, why).
_LARGEST_C = ("unit_stats", "SELECT checkpoint_id, layer, unit, 'max |c| ' || round(greatest(abs(min), abs(max)), 2) AS why "
              "FROM unit_stats WHERE quantity = 'c' AND analysis_version = ? AND checkpoint_id IN ({marks}) "
              "ORDER BY greatest(abs(min), abs(max)) DESC, checkpoint_id, layer, unit LIMIT 4")
_LONGEST_MEMORY = ("unit_memory", "SELECT checkpoint_id, layer, unit, 'remembers ' || round(measured_frames, 1) || ' frames' "
                   "AS why FROM unit_memory WHERE checkpoint_id IN ({marks}) AND measured_frames IS NOT NULL "
                   "ORDER BY measured_frames DESC, checkpoint_id, layer, unit LIMIT 4")
_ABLATED = ("unit_ablation", "SELECT DISTINCT checkpoint_id, layer, unnest(units) AS unit, 'most responsible for ' || phone AS why "
            "FROM unit_ablation WHERE ablated = 'top' AND checkpoint_id IN ({marks}) ORDER BY ALL LIMIT 6")
UNIT_QUERIES = {
    "capture": _LARGEST_C, "cell_distributions": _LARGEST_C, "range_shares": _LARGEST_C,
    "temporal_trace": ("unit_stats", "SELECT checkpoint_id, layer, unit, 'variance of c ' || round(variance, 3) AS why "
                       "FROM unit_stats WHERE quantity = 'c' AND analysis_version = ? AND checkpoint_id IN ({marks}) "
                       "ORDER BY variance DESC, checkpoint_id, layer, unit LIMIT 4"),
    "memory_robustness": _LONGEST_MEMORY, "unit_memory": _LONGEST_MEMORY,
    "unit_ablation": _ABLATED, "responsibility": _ABLATED,
}

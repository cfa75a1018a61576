"""Capture: run a checkpoint over a split's utterances as sharded Ray tasks, summarise what every
unit does, and hand the summaries to the store.

    gatelens capture CHECKPOINT [--split test] [--utterances 500] [--sample 3] [--rule abs>10]

The paper summarises 500 test utterances (Sec. 4.1). Each Ray task loads the checkpoint, runs its
share of the utterances in length-sorted batches with capture on, strips the padding and feeds the
frames to a ``UnitSummary`` (``cluster/summaries.py``): the task's memory is the model, one batch
of values and units x bins counters, whatever the number of utterances. Tasks return their
summaries (numpy counters, exactly mergeable); the driver merges them, turns them into polars
frames of the store's tables, and the process that launched the tasks writes them to the store (``service/``: one writer).

A percentile irregularity rule (``pct>99``) needs the layer's |c| distribution before it can
count, so it costs a second pass over the utterances (counts only); absolute rules (the paper's
``abs>10`` / ``abs<0.5``) are counted in the first pass.

Optionally the full per-frame values of a few utterances (``--sample N``) are kept as a raw
sample: one row per (utterance, layer, frame), each quantity a list of H float16 values, written
as Parquet next to the store and queried through the ``raw_sample`` view (the trace analysis
reads it there).
"""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import torch

from cluster.batching import pad_batch
from cluster.data.kaldi import CorpusError, read_corpus
from cluster.errors import InputError
from cluster.models.checkpoint import CheckpointError, CheckpointMeta, checkpoint_id, load_checkpoint, model_file
from cluster.runtime import ensure_ray
from cluster.summaries import (QUANTITIES, SUMMARY_VERSION, IrregularityRule, UnitSummary, is_gru,
                               paper_rule, parse_name)


@dataclass
class CaptureConfig:
    checkpoint: str  # a model file, or a checkpoint directory holding model.pt
    corpus: str | None = None  # default: the corpus the checkpoint was trained on
    split: str = "test"
    utterances: int = 500  # the paper's 500; fewer if the split has fewer
    rules: tuple[str, ...] = ()  # irregularity rules (default: the paper's rule for the architecture)
    sample: int = 0  # utterances whose per-frame values are kept (Parquet, float16)
    shards: int | None = None  # Ray tasks (default: the cluster's CPUs)
    batch_size: int = 16
    max_frames: int = 4096  # padded frames per batch: bounds a task's memory (values of one batch)
    seed: int = 0  # which utterances, when the split has more than ``utterances``
    threads: int = 1  # torch threads per task
    checkpoint_id: str | None = None  # default: cluster.models.checkpoint_id(...)
    allow_pipes: bool = False  # Kaldi pipes in the corpus's scp files (the manifest must allow them too)


@dataclass
class CaptureResult:
    checkpoint_id: str
    arch: str
    summary: UnitSummary
    frames: dict[str, pl.DataFrame]  # {store table: rows}
    sample: pa.Table | None
    checkpoint_row: dict  # for the store's checkpoints table
    params: dict = field(default_factory=dict)  # what was captured (logged with the analysis)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# The checkpoint and its corpus


def load(checkpoint: str | Path) -> tuple[torch.nn.Module, CheckpointMeta]:
    """(model in eval mode, meta) of a checkpoint. Raises FileNotFoundError or
    cluster.models.CheckpointError, both naming the file."""
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    return model, meta


def open_corpus(config: CaptureConfig, meta: CheckpointMeta):
    """The corpus to capture on, checked against the one the checkpoint was trained on: the phone
    table must match (responsibility rows are keyed by phone id)."""
    path = model_file(config.checkpoint)
    where = config.corpus or meta.trained_corpus
    if not where:
        raise CorpusError(f"{path}: the checkpoint does not say which corpus it was trained on; pass --corpus")
    corpus = read_corpus(where, allow_pipes=config.allow_pipes)
    trained = meta.corpus or {}
    if trained.get("phones") is not None and list(trained["phones"]) != list(corpus.phones):
        raise CorpusError(f"{corpus.manifest_path}: phone table differs from the one {path} was trained on")
    if trained.get("num_targets") is not None and trained["num_targets"] != corpus.num_targets:
        raise CorpusError(f"{corpus.manifest_path}: {corpus.num_targets} targets, but {path} was trained "
                          f"on {trained['num_targets']}")
    return corpus


def choose_utterances(split, n: int, seed: int) -> list[str]:
    """``n`` utterance ids of the split (all if it has fewer), drawn with a seed, in key order."""
    ids = split.utt_ids
    if n >= len(ids):
        return list(ids)
    pick = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(pick)]


def plan_shards(split, utt_ids: list[str], shards: int) -> list[list[str]]:
    """Deal the utterances, longest first, to the shards (similar frame counts per shard; within a
    shard they stay sorted by length, so batches need little padding)."""
    frames = {u: len(split.alignments[u].phones) for u in utt_ids}
    order = sorted(utt_ids, key=lambda u: (-frames[u], u))
    out = [order[k::shards] for k in range(max(1, min(shards, len(order))))]
    return [s for s in out if s]


# ---------------------------------------------------------------------------------------------
# Running the model


def capture_batch(model, x: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'L<k>.<q>': [B, T, H]} float32 values of a padded batch x [B, T, D]. float32, not the
    model's default float16: the bins and thresholds then see the values the model computed
    (float16 keeps 11 bits: c near 10 would move in steps of 1/128, across bin edges and the
    |c| > 10 threshold, and every gate above 0.99976 would become exactly 1)."""
    return model.capture(x, lengths, dtype=torch.float32)


def make_batches(split, utt_ids: list[str], batch_size: int, max_frames: int) -> list[list[str]]:
    """Consecutive runs of ``utt_ids`` of at most ``batch_size`` utterances and at most
    ``max_frames`` padded frames (utterances x longest): what bounds a task's memory, whatever the
    utterances' lengths. Lengths come from the alignments, so nothing is loaded to plan."""
    frames = {u: len(split.alignments[u].phones) for u in utt_ids}
    batches, cur, longest = [], [], 0
    for u in utt_ids:
        n = max(longest, frames[u])
        if cur and (len(cur) >= batch_size or n * (len(cur) + 1) > max_frames):
            batches.append(cur)
            cur, n = [], frames[u]
        cur.append(u)
        longest = n
    return batches + ([cur] if cur else [])


def summarise_batches(model, split, utt_ids: list[str], summary: UnitSummary, batch_size: int = 16,
                      max_frames: int = 4096, sample_ids: frozenset[str] = frozenset(), progress=None) -> list[tuple]:
    """Run the model over the utterances in batches (``make_batches``, in the order given) and
    feed every valid frame to ``summary``. Returns [(utt_id, {name: [T, H] float16}, phones)] for
    the utterances in ``sample_ids``."""
    samples = []
    for batch in make_batches(split, utt_ids, batch_size, max_frames):
        utts = [split.load(u) for u in batch]
        frames = _summarise_batch(model, utts, summary, sample_ids, samples)
        _trim_heap()  # the batch's tensors are gone now
        if progress:
            progress(len(utts), frames)
    return samples


@torch.inference_mode()
def _summarise_batch(model, utts: list, summary: UnitSummary, sample_ids: frozenset[str], samples: list) -> int:
    x, lengths = pad_batch([u.feats if u.feats.flags.writeable else u.feats.copy() for u in utts])
    values = capture_batch(model, x, lengths)
    b, t = x.shape[:2]
    for name, v in values.items():
        if v.shape[:2] != (b, t):
            raise ValueError(f"capture value {name} has shape {tuple(v.shape)}, expected [{b}, {t}, H]")
    # The valid frames, in utterance order: rows i*T + t (t < len_i) of each [B*T, H] view, read
    # in place (no copy of the padded values).
    rows = None if bool((lengths == t).all()) else \
        torch.cat([torch.arange(i * t, i * t + int(n)) for i, n in enumerate(lengths)])
    summary.update({name: v.reshape(b * t, v.shape[-1]) for name, v in values.items()},
                   np.concatenate([u.phones for u in utts]), utterances=len(utts), rows=rows)
    for i, u in enumerate(utts):
        if u.utt_id in sample_ids:
            n = int(lengths[i])
            samples.append((u.utt_id, {name: v[i, :n].to(torch.float16).numpy() for name, v in values.items()},
                            u.phones[:n]))
    return int(lengths.sum())


_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _trim_heap() -> None:
    """Hand the heap's free memory back to the OS (glibc's malloc_trim), after each batch.

    Why: glibc serves batch-sized tensors from its heap once its mmap threshold has adapted
    upwards, and batches of different shapes fragment that heap, so without this a task's peak
    RSS grew with the number of batches (+48% from 30 to 160 utterances, measured) although
    what it holds is bounded by one batch. Trimming only when the resident size grew was
    cheaper but left the peak to the allocator's luck (+0% to +17% on doubling the
    utterances); trimming after every batch keeps it flat (+0%, every run) for 10-20% of
    throughput, the page faults of the next batch's fresh memory.
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _capture_shard(config: dict, utt_ids: list[str], rules: tuple[str, ...], thresholds: dict,
                   values: bool, sample_ids: list[str]):
    """One Ray task: a shard's summary (and raw samples)."""
    cfg = CaptureConfig(**config)
    torch.set_num_threads(cfg.threads)
    model, meta = load(cfg.checkpoint)
    corpus = open_corpus(cfg, meta)
    summary = UnitSummary(model.config.cell, len(corpus.phones),
                          rules=tuple(IrregularityRule.parse(r) for r in rules),
                          thresholds=thresholds, values=values)
    samples = summarise_batches(model, corpus.split(cfg.split), utt_ids, summary, cfg.batch_size,
                                cfg.max_frames, frozenset(sample_ids))
    return summary, samples


def sample_table(checkpoint_id: str, analysis_version: int, items: list[tuple], phone_symbols: list[str]) -> pa.Table:
    """The raw sample as an Arrow table: one row per (utterance, layer, frame); columns c, m, i,
    f, o, g hold the layer's H values at that frame as float16 lists (Parquet FLOAT16, read by
    DuckDB as FLOAT[]; ``c[u + 1]`` is unit u in SQL).

    items: [(utt_id, {'L<k>.<q>': [T, H]}, phones [T])].
    """
    utt, layer, frame, phone_id, width = [], [], [], [], []
    lists = {q: [] for q in QUANTITIES}
    for utt_id, values, phones in items:
        t = len(phones)
        for k in sorted({parse_name(n)[0] for n in values}):
            for q in QUANTITIES:
                if f"L{k}.{q}" not in values:  # lstm_fused exposes m only: the others stay null
                    lists[q].append(None)
                    continue
                v = np.asarray(values[f"L{k}.{q}"], dtype=np.float16)
                if v.ndim != 2 or v.shape[0] != t:
                    raise ValueError(f"sample {utt_id}: L{k}.{q} has shape {v.shape}, expected [{t}, H]")
                lists[q].append(v.reshape(-1))
            utt += [utt_id] * t
            layer.append(np.full(t, k, np.int32))
            frame.append(np.arange(t, dtype=np.int32))
            phone_id.append(np.asarray(phones, np.int32))
            width.append(np.full(t, v.shape[1], np.int32))
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    phone_id = cat(phone_id, np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(cat(width, np.int32))]).astype(np.int32))
    n = len(utt)
    table = {
        "checkpoint_id": pa.array([checkpoint_id] * n, pa.string()),
        "analysis_version": pa.array(np.full(n, analysis_version, np.int32)),
        "utt_id": pa.array(utt, pa.string()),
        "layer": pa.array(cat(layer, np.int32)),
        "frame": pa.array(cat(frame, np.int32)),
        "phone_id": pa.array(phone_id),
        "phone": pa.array([phone_symbols[i] for i in phone_id], pa.string()),
    }
    for q in QUANTITIES:
        if any(part is None for part in lists[q]):
            table[q] = pa.nulls(n, pa.list_(pa.float16()))
        else:
            table[q] = pa.ListArray.from_arrays(offsets, pa.array(cat(lists[q], np.float16), pa.float16()))
    return pa.table(table)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class CapturePlan:
    """What a capture will do, checked before anything runs or is stored: a request that would be
    refused (bad rules, unknown split, no utterances, a corpus of another phone table) is refused
    here, so a refused capture never touches the store."""

    config: CaptureConfig
    meta: CheckpointMeta
    corpus: object
    checkpoint_id: str
    rules: tuple[str, ...]
    utt_ids: list[str]
    sample_ids: list[str]


def plan_capture(config: CaptureConfig) -> CapturePlan:
    if config.utterances < 1 or config.sample < 0 or (config.shards is not None and config.shards < 1) \
            or config.batch_size < 1 or config.max_frames < 1 or config.seed < 0:
        raise InputError(f"capture of {config.checkpoint}: utterances, shards, batch size and max frames must be "
                         f"at least 1, sample and seed at least 0")
    model, meta = load(config.checkpoint)
    arch = meta.facts["arch"]
    corpus = open_corpus(config, meta)
    split = corpus.split(config.split)
    exposed = {parse_name(n)[1] for n in model.value_names()}
    rules = tuple(IrregularityRule.parse(r) for r in config.rules)
    for r in rules:
        if r.quantity not in exposed:
            raise InputError(f"{model_file(config.checkpoint)}: rule {r.name} reads {r.quantity}, but cell "
                             f"{arch!r} exposes only {sorted(exposed)}")
    if not rules and paper_rule(arch).quantity in exposed:  # lstm_fused exposes m only: no rule
        rules = (paper_rule(arch),)
    rules = tuple(r.name for r in rules)
    if len(set(rules)) != len(rules):
        raise InputError(f"irregularity rules repeat: {rules}")
    utt_ids = choose_utterances(split, config.utterances, config.seed)
    if not utt_ids:
        raise CorpusError(f"{corpus.manifest_path}: split {config.split} has no utterances")
    ck_id = config.checkpoint_id or checkpoint_id(config.checkpoint, meta.facts)
    return CapturePlan(config, meta, corpus, ck_id, rules, utt_ids, utt_ids[:config.sample])


def capture(config: CaptureConfig, progress=None, plan: CapturePlan | None = None) -> CaptureResult:
    """Capture a checkpoint: sharded Ray tasks, merged summaries, frames ready for the store."""
    t0 = time.perf_counter()
    plan = plan or plan_capture(config)
    meta, corpus, ck_id, rules, utt_ids, sample_ids = (plan.meta, plan.corpus, plan.checkpoint_id, plan.rules,
                                                       plan.utt_ids, plan.sample_ids)
    facts = meta.facts
    arch = facts["arch"]
    split = corpus.split(config.split)

    ensure_ray()
    shards = plan_shards(split, utt_ids, config.shards or max(1, int(ray.cluster_resources().get("CPU", 1))))
    task = ray.remote(num_cpus=config.threads)(_capture_shard)
    cfg = asdict(config)
    abs_rules = tuple(r for r in rules if not IrregularityRule.parse(r).is_percentile)
    pct_rules = tuple(r for r in rules if IrregularityRule.parse(r).is_percentile)

    def run(rules_, thresholds, values, label):
        keep = sample_ids if values else []  # the raw sample comes from the first pass
        refs = [task.remote(cfg, s, rules_, thresholds, values, [u for u in s if u in keep]) for s in shards]
        results, pending = [], list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results += ray.get(done)
            if progress:
                progress(label, len(results), len(refs), time.perf_counter() - t0)
        return results

    first = run(abs_rules + pct_rules, {}, True, "summaries")
    summary = UnitSummary.merge_all([s for s, _ in first])
    samples = [item for _, items in first for item in items]
    if pct_rules:
        thresholds = summary.percentile_thresholds()
        second = run(pct_rules, thresholds, False, f"counts for {', '.join(pct_rules)}")
        counted = UnitSummary.merge_all([s for s, _ in second])
        summary.thresholds = thresholds
        summary.irregular.update(counted.irregular)
    _refuse_non_finite(summary, ck_id, model_file(config.checkpoint))
    frames = summary.frames_for_store(ck_id, corpus.phones)
    order = {u: k for k, u in enumerate(sample_ids)}
    samples.sort(key=lambda it: order[it[0]])
    sample = sample_table(ck_id, SUMMARY_VERSION, samples, corpus.phones) if samples else None
    params = {"checkpoint": str(model_file(config.checkpoint)), "corpus": str(corpus.manifest_path),
              "split": config.split, "utterances": summary.utterances, "frames": summary.frames,
              "rules": list(rules), "thresholds": {f"{r}@L{l}": t for (r, l), t in summary.thresholds.items()},
              "seed": config.seed, "sample": sample_ids, "shards": len(shards)}
    row = {"path": str(model_file(config.checkpoint).resolve()), **facts, "seed": meta.stamps.get("seed"),
           "corpus_name": corpus.name, "corpus_sha256": corpus.sha256}
    return CaptureResult(ck_id, arch, summary, frames, sample, row, params, time.perf_counter() - t0)


def _refuse_non_finite(summary: UnitSummary, ck_id: str, path: Path) -> None:
    """A model whose values went NaN (finite weights can still overflow) has nothing to analyse:
    say where, instead of storing counts of zero."""
    for (layer, q), st in sorted(summary.state.items()):
        n_nan = int(np.sum(st.n_nan))
        if n_nan:
            raise CheckpointError(f"{path}: checkpoint {ck_id} computes NaN for L{layer}.{q} on {n_nan} values "
                                  f"of the captured frames; nothing was stored")


def describe(result: CaptureResult) -> str:
    """Per layer: Fig. 3's range share and the number of responsible units per rule (Sec. 4.2)."""
    stats = result.frames["unit_stats"].filter(pl.col("quantity") == "c").group_by("layer").agg(
        (pl.col("n_inside_2").sum() / pl.col("count").sum()).alias("inside_2"),
        (pl.col("n_outside_0_7").sum() / pl.col("count").sum()).alias("outside_0_7")).sort("layer")
    gru = is_gru(result.arch)
    cut = 0.5 if gru else 0.8
    resp = result.frames["phone_responsibility"]
    lines = []
    for r in stats.iter_rows(named=True):
        share = (f"{100 * r['outside_0_7']:.1f}% of c outside (-0.7, 0.7)" if gru
                 else f"{100 * r['inside_2']:.1f}% of c in (-2, 2)")
        counts = []
        for rule in resp["rule"].unique(maintain_order=True):
            sub = resp.filter((pl.col("layer") == r["layer"]) & (pl.col("rule") == rule))
            per_phone = sub.group_by("phone").agg((pl.col("responsibility") > cut).sum().alias("n"))
            counts.append(f"{rule}: {per_phone['n'].mean():.1f} units per phone with responsibility > {cut:.0%}")
        lines.append(f"  layer {r['layer']}: {share}; " + "; ".join(counts))
    return "\n".join(lines)

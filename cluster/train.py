"""Training acoustic models on Ray Train: the per-worker loop and the trainer around it.

Frame-level cross-entropy on aligned targets (paper Sec. 3.2), length-bucketed batches of whole
utterances or carried-state streams in windows of ``chunk_width`` frames (``cluster/streams.py``),
Adam or SGD with a schedule, gradient clipping, early stopping on dev frame accuracy.

One trial trains the S seeds of one grid point side by side (``stack_seeds``; S = 1 for
``gatelens train``, through the same code): one ``SeedStack`` pass a step over every active
seed's next batch, each seed with its own initialisation, data order, optimizer, clipping,
schedule and early stopping; a seed that stops is scored on test with its best-on-dev weights and
leaves the stack. Each seed writes its own ordinary run (``cluster/runs.py``). Every epoch reports
each seed's dev metrics with a checkpoint holding every seed's state; a restarted worker resumes
all of them from the last one.
"""

from __future__ import annotations

from time import time as _now

# when this module's imports (torch, Ray Train, numba through the cells) began and ended in this
# process: the first epoch's metrics carry them (``startup_*``) for bench/startup.py
_IMPORTS_BEGAN = _now()

import copy
import io
import json
import re
import shutil
import math
import os
import queue as queue_mod
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import polars as pl
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue

from cluster.batching import bucket_batches, pad_batch
from cluster.data.kaldi import read_corpus
from cluster.decode import estimate_graph, phone_error_rate, reference_phones, utterance_errors, viterbi
from cluster.errors import GatelensError, InputError
from cluster.models import CELLS, AcousticModel, CheckpointError, ModelConfig, build_model, save_checkpoint
from cluster.models.checkpoint import MAX_HIDDEN, MAX_LAYERS, MODEL_FILE
from cluster.models.stack import SeedStack
from cluster.runs import EPOCHS_FILE, RUN_FILE, UTTERANCES_FILE, RunStamp
from cluster.runtime import git_revision, train_settings
from cluster.schedule import newbob, should_stop
from cluster.streams import StreamBatches, carry, stream_schedule

IGNORE = -100
STATE_FILE = "train_state.pt"  # in the trial's Ray Train checkpoints: every seed's resume state
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d{6})")  # a seed's own checkpoints in its run directory
STACK_FIELDS = ("stack_seeds", "runs_dir")  # how a trial groups its seeds: no part of any one run's config
_IMPORTS_ENDED = time.time()


def process_started() -> float | None:
    """When this process started (seconds since the epoch), from /proc (Linux; None elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines() if l.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class TrainingDiverged(GatelensError):
    """The loss became NaN or infinite; the message names the run, epoch and batch."""


def load_train_state(path: Path) -> dict:
    """A run's resume state (optimizer, scheduler, history, best weights): plain data only, loaded
    with ``weights_only=True``, so a pickle planted in the storage cannot run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a plain-data training state (refused; it is never unpickled): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


@dataclass
class TrainConfig:
    corpus: str = "data/corpus"
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 128
    residual: bool = False
    lazy_layers: str = "last"
    precision: str = "fp32"
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    schedule: str = "plateau"  # plateau (halve lr when dev accuracy stalls) | cosine | newbob | none
    epochs: int = 10
    batch_size: int = 16  # utterances per batch; with chunk_width > 0, the streams (batch rows) per worker
    chunk_width: int = 0  # 0: whole utterances; n: carried-state streams in windows of n frames (streams.py)
    # streams: a step's loss is its summed CE over "frames" (the frames it scores) or over "slots"
    # (streams x chunk_width x workers: the epoch's last steps, where streams have run out, weigh less)
    stream_loss: str = "frames"
    clip: float = 5.0
    patience: int = 3  # epochs without dev improvement before stopping
    min_delta: float = 0.0  # dev accuracy points the last `patience` epochs must gain to go on (schedule.should_stop)
    # schedule="newbob" (schedule.newbob): halve lr every epoch once one gains < newbob_start points,
    # stop once, halving, one gains < newbob_stop; it replaces patience / min_delta as the early stop
    newbob_start: float = 0.5
    newbob_stop: float = 0.1
    newbob_keep: int = 0  # epochs at the initial rate before newbob may start halving (Kaldi's keep_lr_iters)
    seed: int = 0
    lm_weight: float = 1.0
    prior_scale: float = 1.0
    max_train_utterances: int | None = None  # a subset, for quick runs
    max_eval_utterances: int | None = None
    threads_per_worker: int = 1
    allow_pipes: bool = False  # Kaldi pipes in the corpus's scp files (the manifest must allow them too)
    run_dir: str = ""  # where run.json and epochs.parquet go (set by the launcher)
    pid_dir: str = ""  # each worker writes its pid here (used by the fault tests and `gatelens status`)
    stack_seeds: tuple[int, ...] = ()  # the seeds one trial trains side by side (grid.py); (): ``seed`` alone
    runs_dir: str = ""  # with stack_seeds: seed s's run goes to runs_dir/<its run name> (seed_configs)

    def __post_init__(self):
        """Checked where the config is made (the command line, before any worker starts), not three
        restarts later inside a Ray worker."""
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise InputError(f"training option {what}")

        check(self.cell in CELLS, f"cell={self.cell!r}: one of {', '.join(CELLS)}")
        check(1 <= self.layers <= MAX_LAYERS, f"layers={self.layers}: 1 to {MAX_LAYERS}")
        check(1 <= self.hidden <= MAX_HIDDEN, f"hidden={self.hidden}: 1 to {MAX_HIDDEN}")
        check(self.epochs >= 1, f"epochs={self.epochs}: at least 1")
        check(self.batch_size >= 1, f"batch_size={self.batch_size}: at least 1")
        check(self.chunk_width >= 0, f"chunk_width={self.chunk_width}: 0 (whole utterances) or a window in frames")
        check(self.stream_loss in ("frames", "slots"), f"stream_loss={self.stream_loss!r}: frames or slots")
        check(self.patience >= 1, f"patience={self.patience}: at least 1")
        check(math.isfinite(self.min_delta) and self.min_delta >= 0,
              f"min_delta={self.min_delta}: dev accuracy points, 0 or more")
        check(self.threads_per_worker >= 1, f"threads_per_worker={self.threads_per_worker}: at least 1")
        check(math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr}: a positive number")
        check(math.isfinite(self.clip) and self.clip > 0, f"clip={self.clip}: a positive number")
        check(0 <= self.momentum < 1, f"momentum={self.momentum}: in [0, 1)")
        check(self.optimizer in ("adam", "sgd"), f"optimizer={self.optimizer!r}: adam or sgd")
        check(self.schedule in ("plateau", "cosine", "newbob", "none"),
              f"schedule={self.schedule!r}: plateau, cosine, newbob or none")
        check(self.newbob_keep >= 0, f"newbob_keep={self.newbob_keep}: 0 or more epochs")
        check(math.isfinite(self.newbob_start) and math.isfinite(self.newbob_stop)
              and 0 <= self.newbob_stop <= self.newbob_start,
              f"newbob_stop={self.newbob_stop}, newbob_start={self.newbob_start}: 0 <= newbob_stop <= newbob_start "
              f"(dev accuracy points)")
        check(self.precision in ("fp32", "bf16"), f"precision={self.precision!r}: fp32 or bf16")
        check(self.lazy_layers in ("last", "all"), f"lazy_layers={self.lazy_layers!r}: last or all")
        for name in ("max_train_utterances", "max_eval_utterances"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"{name}={v}: at least 1 (or none)")
        self.stack_seeds = tuple(self.stack_seeds)  # a list after JSON or Ray
        check(all(isinstance(x, int) and x >= 0 for x in self.stack_seeds)
              and len(set(self.stack_seeds)) == len(self.stack_seeds),
              f"stack_seeds={self.stack_seeds}: distinct non-negative integers")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def model_config(self, num_targets: int):
        return ModelConfig(cell=self.cell, layers=self.layers, hidden=self.hidden, num_targets=num_targets,
                           residual=self.residual, lazy_layers=self.lazy_layers, precision=self.precision)


def stamps(config: TrainConfig, corpus_identity: dict) -> dict:
    """What a run must remember to be reproduced: config, seed, corpus, package versions, git revision."""
    pkgs = {}
    for name in ("gatelens", "torch", "ray", "numpy", "kaldi-native-fbank", "espeakng-loader", "duckdb"):
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    stamped = {k: v for k, v in asdict(config).items() if k not in STACK_FIELDS}
    return RunStamp(config=stamped, seed=config.seed,
                    corpus={k: corpus_identity[k] for k in ("name", "manifest_sha256", "num_targets")},
                    packages=pkgs, git_revision=git_revision(), python=sys.version.split()[0]).to_dict()


# ----------------------------------------------------------------------------------- data

@dataclass
class SplitData:
    utt_ids: list[str]
    feats: list[np.ndarray]
    targets: list[np.ndarray]
    phones: list[np.ndarray]
    lengths: np.ndarray = field(init=False)

    def __post_init__(self):
        self.lengths = np.array([len(f) for f in self.feats])

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())


def load_split(corpus, name: str, limit: int | None = None) -> SplitData:
    split = corpus.split(name)
    ids = split.utt_ids[:limit] if limit else split.utt_ids
    utts = [split.load(u) for u in ids]
    return SplitData(ids, [u.feats for u in utts], [u.targets for u in utts], [u.phones for u in utts])


# ----------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(models: list, data: SplitData, graph, config: TrainConfig, device, rank: int = 0, world: int = 1,
             per_utterance: bool = False) -> list[dict]:
    """Each model's frame cross-entropy, frame accuracy and phone error rate (Viterbi decoding) on
    this rank's share of ``data``, summed across ranks: one dict per model, in order. The models
    (seeds of one grid point) score each batch in one ``SeedStack`` pass over the batch repeated
    once per seed. With ``per_utterance``, each dict also holds "utterances": every utterance's
    reference length and substitutions / insertions / deletions (gathered from all ranks)."""
    S, stack = len(models), SeedStack(list(models))
    stack.eval()
    sums = torch.zeros(S, 5, dtype=torch.float64)  # ce, correct, frames, errors, ref_len
    refs, hyps, ids = [], [[] for _ in range(S)], []
    idx = np.arange(rank, len(data.feats), world)
    order = idx[np.argsort(data.lengths[idx])]
    for k in range(0, len(order), config.batch_size):
        b = order[k:k + config.batch_size]
        x, lengths, y = pad_batch([data.feats[i] for i in b], [data.targets[i] for i in b], IGNORE)
        logits = stack(x.to(device).repeat(S, 1, 1), lengths.to(device).repeat(S)).float()
        y = y.to(device).repeat(S, 1)
        mask = y != IGNORE
        sums[:, 0] += _seed_ce(logits, y, S).double().cpu()
        sums[:, 1] += ((logits.argmax(-1) == y) & mask).reshape(S, -1).sum(1).double().cpu()
        sums[:, 2] += mask.reshape(S, -1).sum(1).double().cpu()
        logp = torch.log_softmax(logits, -1).cpu().numpy()
        for s in range(S):
            hyps[s].extend(viterbi(logp[s * len(b) + j, : lengths[j]], graph, lm_weight=config.lm_weight,
                                   prior_scale=config.prior_scale) for j in range(len(b)))
        refs.extend(reference_phones(data.phones[i], data.targets[i], graph) for i in b)
        ids.extend(data.utt_ids[i] for i in b)
    for s in range(S):
        per = phone_error_rate(refs, hyps[s], ignore=graph.silence)
        sums[s, 3], sums[s, 4] = per["errors"], per["ref_len"]
    utts = [[{"utt_id": u, **e} for u, e in zip(ids, utterance_errors(refs, hyps[s], ignore=graph.silence))]
            if per_utterance else [] for s in range(S)]
    if per_utterance and world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, utts)
        utts = [[u for part in gathered for u in part[s]] for s in range(S)]
    if world > 1:
        # gloo reduces on CPU tensors; nccl needs them on the device
        t = sums.to(device) if dist.get_backend() == "nccl" else sums
        dist.all_reduce(t)
        sums = t.cpu()
    stack.train()
    out = []
    for s in range(S):
        ce, correct, frames, errors, ref_len = sums[s].tolist()
        m = {"frame_ce": ce / max(frames, 1), "frame_acc": correct / max(frames, 1),
             "per": errors / max(ref_len, 1), "frames": int(frames)}
        if per_utterance:
            m["utterances"] = sorted(utts[s], key=lambda u: u["utt_id"])
        out.append(m)
    return out


def _seed_ce(logits: torch.Tensor, y: torch.Tensor, seeds: int) -> torch.Tensor:
    """Summed frame cross-entropy of each seed's rows ([S]): rows s*B .. (s+1)*B-1 are seed s's."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE,
                         reduction="none")
    return ce.reshape(seeds, -1).sum(1)


# ----------------------------------------------------------------------------------- the seeds of a trial

def _optimizer(model, config: TrainConfig):
    """A seed's own optimizer. Adam is torch's fused kernel where the parameters' device has one
    (CPU and CUDA): on the 2-core Xeon with AVX-512 an Adam step (with clipping) over a 4 x 128
    lstm's parameters took 1.09 ms fused against 2.48 ms in the single-tensor loop torch picks on
    CPU by default, and a 5-seed stacked lstm step (16 x 40 frames a seed, interleaved, fastest of
    12) 43.9 against 46.3 ms at 1 layer and 143.1 against 154.8 ms at 4. The same update, up to float
    rounding (its trajectories differ from the loop's in the last bits)."""
    if config.optimizer == "adam":
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused or None)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    raise ValueError(f"optimizer must be adam or sgd, not {config.optimizer!r}")


def _scheduler(opt, config: TrainConfig):
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1))
    if config.schedule in ("newbob", "none"):  # newbob: end_epoch halves the rate itself
        return None
    raise ValueError(f"schedule must be plateau, cosine, newbob or none, not {config.schedule!r}")


def seed_configs(config: TrainConfig) -> list[TrainConfig]:
    """The runs one trial trains: with ``stack_seeds``, one per seed, each the config of that seed
    trained alone (what its ``run.json`` records) in ``runs_dir/<its run name>``; otherwise the
    config's own seed, in ``run_dir``."""
    if not config.stack_seeds:
        return [config]
    alone = [replace(config, seed=s, stack_seeds=(), runs_dir="", run_dir="") for s in config.stack_seeds]
    return [replace(c, run_dir=str(Path(config.runs_dir) / run_name(c))) if config.runs_dir else c for c in alone]


@dataclass
class SeedRun:
    """One seed of a trial: its model, optimizer, schedule and early-stopping state, and the run it
    writes. A seed that stops has its ``final`` (test) metrics and its best-on-dev weights."""

    config: TrainConfig  # the seed's own (``seed_configs``)
    model: AcousticModel
    opt: torch.optim.Optimizer
    sched: object
    best_acc: float = -1.0
    best_state: dict | None = None
    stale: int = 0
    halving: bool = False  # schedule="newbob": the rate is halved every epoch from now on
    history: list = field(default_factory=list)
    final: dict | None = None
    reports: int = 0  # checkpoints written to its run directory: the next one's number
    diverged: str | None = None  # why its loss became NaN or infinite (it steps no more)
    failed: bool = False  # diverged before a first best-on-dev epoch: it has nothing to report

    @property
    def done(self) -> bool:
        return self.final is not None or self.failed

    @property
    def name(self) -> str:
        return Path(self.config.run_dir).name if self.config.run_dir else run_name(self.config)

    def state(self) -> dict:
        """What a resumed trial needs of this seed: plain data (loaded ``weights_only``)."""
        live = not self.done
        return {"seed": self.config.seed, "final": self.final, "reports": self.reports, "best_acc": self.best_acc,
                "stale": self.stale, "halving": self.halving, "history": self.history,
                "diverged": self.diverged, "failed": self.failed,
                "model": self.model.state_dict() if live else None, "best_state": self.best_state if live else None,
                "optimizer": self.opt.state_dict() if live else None,
                "scheduler": self.sched.state_dict() if live and self.sched is not None else None}

    def restore(self, state: dict) -> None:
        self.final, self.reports, self.best_acc = state["final"], state["reports"], state["best_acc"]
        self.stale, self.history, self.best_state = state["stale"], state["history"], state["best_state"]
        self.halving = bool(state.get("halving", False))
        self.diverged, self.failed = state.get("diverged"), bool(state.get("failed", False))
        if not self.done:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            if self.sched is not None and state.get("scheduler"):
                self.sched.load_state_dict(state["scheduler"])


def make_seed(config: TrainConfig, num_targets: int, cmvn_mean, cmvn_std, device="cpu") -> SeedRun:
    """A seed's model initialised as if trained alone (``torch.manual_seed(seed)`` right before it
    is built), with its own optimizer and schedule."""
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(num_targets), cmvn_mean, cmvn_std).to(device)
    opt = _optimizer(model, config)
    return SeedRun(config, model, opt, _scheduler(opt, config))


def end_epoch(run: SeedRun, metrics: dict) -> bool:
    """A seed's epoch is over: its best weights, early stopping and schedule step on its own dev
    frame accuracy. True when the seed stops (``schedule.should_stop``: its last ``patience`` epochs
    gained less than ``min_delta`` points, none at all where that is 0; under ``schedule="newbob"``,
    ``schedule.newbob``'s stop instead; or it was its last epoch), or when it diverged in this
    epoch: then its best-on-dev weights are those of an earlier epoch, or, where it has none, it
    ``failed``."""
    if run.diverged:
        run.history.append(metrics)
        run.failed = run.best_state is None
        return True
    if metrics["dev_frame_acc"] > run.best_acc:
        run.best_acc, run.stale = metrics["dev_frame_acc"], 0
        run.best_state = copy.deepcopy(run.model.state_dict())
    else:
        run.stale += 1
    if isinstance(run.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.sched.step(metrics["dev_frame_acc"])
    elif run.sched is not None:
        run.sched.step()
    run.history.append(metrics)
    accs = [h["dev_frame_acc"] for h in run.history]
    if run.config.schedule == "newbob":
        run.halving, stop = newbob(accs, run.halving, run.config.newbob_start, run.config.newbob_stop,
                                   run.config.newbob_keep)
        if run.halving and not stop:  # the next epoch trains at half this one's rate
            for group in run.opt.param_groups:
                group["lr"] *= 0.5
    else:
        stop = should_stop(accs, run.config.patience, run.config.min_delta)
    return stop or metrics["epoch"] >= run.config.epochs


def final_metrics(run: SeedRun, scored: dict) -> dict:
    """The seed's final report: its best-on-dev weights' test scores, and its best dev epoch."""
    history = run.history[:-1] if run.diverged else run.history  # a diverged epoch's weights are no best
    best = max(history, key=lambda h: h["dev_frame_acc"])
    return {**{f"test_{k}": v for k, v in scored.items() if k != "utterances"}, "epoch": run.history[-1]["epoch"],
            "final": True, "best_epoch": best["epoch"],
            **{f"best_{k}": v for k, v in best.items() if k.startswith("dev_")},
            **({"diverged": run.diverged} if run.diverged else {})}


# ----------------------------------------------------------------------------------- the loop

def train_loop_per_worker(config_dict: dict) -> None:
    """Ray Train's per-worker function (one process per worker; the process group set up by Ray):
    the seeds of ``seed_configs(config)`` side by side, epoch by epoch, until every one has stopped."""
    startup = {"startup_process_started": process_started(), "startup_imports_began": _IMPORTS_BEGAN,
               "startup_imports_ended": _IMPORTS_ENDED, "startup_loop_entered": time.time()}
    config = TrainConfig.from_dict(config_dict)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config.threads_per_worker)
    if config.pid_dir:
        Path(config.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))

    corpus = read_corpus(config.corpus, allow_pipes=config.allow_pipes)
    train = load_split(corpus, "train", config.max_train_utterances)
    dev = load_split(corpus, "dev", config.max_eval_utterances)
    graph = estimate_graph(zip(train.phones, train.targets), corpus.num_targets, phone_symbols=corpus.phones)
    startup["startup_corpus_loaded"] = time.time()

    device = ray.train.torch.get_device()
    runs = [make_seed(c, corpus.num_targets, corpus.cmvn_mean, corpus.cmvn_std, device) for c in seed_configs(config)]
    epoch = resumed_from = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:  # a restarted worker (or a resumed trial): every seed continues after the last reported epoch
        with ckpt.as_directory() as d:
            state = load_train_state(Path(d) / STATE_FILE)
        saved = {s["seed"]: s for s in state["seeds"]}
        if sorted(saved) != sorted(r.config.seed for r in runs):
            raise CheckpointError(f"{ckpt.path}: a checkpoint of seeds {sorted(saved)}, not of this trial's "
                                  f"{sorted(r.config.seed for r in runs)}")
        for r in runs:
            r.restore(saved[r.config.seed])
        epoch = resumed_from = state["epoch"]
    stamped = {r.name: stamps(r.config, corpus.identity) for r in runs}
    startup["startup_model_ready"] = time.time()
    if rank == 0:
        for r in runs:
            if r.config.run_dir and not r.done:
                _start_run_dir(Path(r.config.run_dir), stamped[r.name], fresh=not ckpt)

    test = None
    while not all(r.done for r in runs):
        epoch += 1
        active = [r for r in runs if not r.done]
        t0 = time.time()
        news, stopping = epoch_of_seeds(active, train, dev, graph, config, epoch, rank, world, device, resumed_from)
        finals = {}
        if rank == 0:
            for r in active:
                if r.config.run_dir and not r.diverged:  # a diverged seed's weights end no epoch
                    first = startup if epoch == resumed_from + 1 else {}  # where the trial's start-up went
                    _write_checkpoint(r, news[r.name] | first, corpus.identity, stamped[r.name], graph)
        stopping = [r for r in stopping if not r.failed]
        if stopping:  # best-on-dev weights, scored on test: the numbers the paper's tables report
            test = test if test is not None else load_split(corpus, "test", config.max_eval_utterances)
            for r in stopping:
                r.model.load_state_dict(r.best_state)
            for r, m in zip(stopping, evaluate([r.model for r in stopping], test, graph, config, device, rank, world,
                                               per_utterance=True)):
                r.final = finals[r.name] = final_metrics(r, m)
                if rank == 0 and r.config.run_dir:
                    _finish_run(r, m["utterances"], corpus.identity, stamped[r.name], graph)
                r.best_state = r.opt = r.sched = None  # what a finished seed no longer needs
        report = {"epoch": epoch, "epoch_seconds": time.time() - t0,
                  "train_frames_per_s": sum(m["train_frames_per_s"] for m in news.values()),
                  "runs": news, "finals": finals, "final": all(r.done for r in runs),
                  **(startup if epoch == resumed_from + 1 else {})}
        if report["final"]:
            report["results"] = {r.name: r.final for r in runs if r.final is not None}
        _report(report, runs, epoch, rank)
    failed = [r.diverged for r in runs if r.failed]
    if failed:  # after the other seeds' runs are written and reported: only these runs are missing
        raise TrainingDiverged("; ".join(failed) + f" ({len(runs) - len(failed)} other seeds of the trial finished)")


def epoch_of_seeds(active: list[SeedRun], train: SplitData, dev: SplitData, graph, config: TrainConfig, epoch: int,
                   rank: int = 0, world: int = 1, device="cpu", resumed_from: int = 0) -> tuple[dict, list[SeedRun]]:
    """One epoch of the active seeds: trained side by side, scored on dev, each one's early stopping
    and schedule stepped; returns ({run name: its epoch's metrics}, the seeds that stop now)."""
    t0 = time.time()
    sums = train_epoch(active, train, config, epoch, rank, world, device)
    train_seconds = time.time() - t0
    fine = [r for r in active if not r.diverged]  # a diverged seed's weights are not scored (NaN decodes nothing)
    scored = iter(evaluate([r.model for r in fine], dev, graph, config, device, rank, world) if fine else [])
    unscored = {"frame_ce": math.nan, "frame_acc": math.nan, "per": math.nan, "frames": 0}
    scored = [unscored if r.diverged else next(scored) for r in active]
    news, stopping = {}, []
    for r, (total, n_frames), m in zip(active, sums, scored):
        metrics = {f"dev_{k}": v for k, v in m.items()}
        metrics.update(epoch=epoch, train_frame_ce=total / max(n_frames, 1), lr=r.opt.param_groups[0]["lr"],
                       train_frames_per_s=n_frames * world / max(train_seconds, 1e-9),
                       epoch_seconds=time.time() - t0, resumed_from_epoch=resumed_from,
                       **({"diverged": r.diverged} if r.diverged else {}))
        if end_epoch(r, metrics):
            stopping.append(r)
        news[r.name] = metrics
    return news, stopping


def train_epoch(runs: list[SeedRun], train: SplitData, config: TrainConfig, epoch: int, rank: int = 0,
                world: int = 1, device="cpu") -> list[tuple[float, int]]:
    """One epoch of every seed in ``runs``, side by side (one ``SeedStack`` of their models); returns
    each seed's (summed frame CE, frames scored on this rank). Each seed takes its own batches in its
    own order (seeded by its seed); a step takes each seed's next one."""
    stack = SeedStack([r.model for r in runs])
    stack.train()
    run_epoch = _stream_epoch if config.chunk_width else _utterance_epoch
    return run_epoch(stack, runs, train, config, epoch, rank, world, device)


def _utterance_epoch(stack, runs, train: SplitData, config: TrainConfig, epoch: int, rank: int, world: int,
                     device) -> list[tuple[float, int]]:
    """Length-bucketed batches of whole utterances (``bucket_batches`` seeded by each seed), padded to
    the step's largest batch and length (padding rows and frames: no loss). Each seed's loss is its
    mean over its own frames on this rank, as when it trained alone (the ranks' gradients averaged)."""
    S, dim = len(runs), train.feats[0].shape[1]
    plans = [bucket_batches(train.lengths, config.batch_size, r.config.seed, epoch, rank, world) for r in runs]
    sums = [[0.0, 0] for _ in runs]
    for k in range(max(len(p) for p in plans)):
        batch = [p[k] if k < len(p) else None for p in plans]
        B = max(len(b) for b in batch if b is not None)
        T = max(int(train.lengths[b].max()) for b in batch if b is not None)
        x, lengths = torch.zeros(S * B, T, dim), torch.ones(S * B, dtype=torch.long)
        y = torch.full((S * B, T), IGNORE, dtype=torch.long)
        for s, b in enumerate(batch):
            for j, i in enumerate(b if b is not None else []):
                n = int(train.lengths[i])
                x[s * B + j, :n] = torch.from_numpy(train.feats[i])
                y[s * B + j, :n] = torch.from_numpy(train.targets[i].astype(np.int64))
                lengths[s * B + j] = n
        x, lengths, y = x.to(device), lengths.to(device), y.to(device)
        ce = _seed_ce(stack(x, lengths), y, S)
        frames = (y != IGNORE).reshape(S, -1).sum(1).tolist()
        scale = [1.0 / max(f, 1) if b is not None else 0.0 for f, b in zip(frames, batch)]
        _step(runs, ce, scale, epoch, world, [[train.utt_ids[i] for i in b] if b is not None else [] for b in batch])
        for s, (c, f) in enumerate(zip(ce.tolist(), frames)):
            sums[s][0] += c
            sums[s][1] += f
    return [tuple(x) for x in sums]


def _stream_epoch(stack, runs, train: SplitData, config: TrainConfig, epoch: int, rank: int, world: int,
                  device) -> list[tuple[float, int]]:
    """Carried-state streams (``cluster/streams.py``), each seed's own schedule (seeded by its seed):
    every training frame scored once, states zero at every utterance start (and so at the epoch's: a
    resumed run starts there too). A seed whose schedule has ended idles (zero-state rows, no loss).

    A seed's loss is this rank's summed CE over the frames its step scores on all ranks, times the
    world size: the ranks' gradients averaged, the update is that of the mean over all of them."""
    S, W, B = len(runs), config.chunk_width, config.batch_size
    plans = [stream_schedule(train.lengths, B, W, r.config.seed, epoch, rank, world) for r in runs]
    makers = [StreamBatches(train.feats, train.targets,
                            lambda f, m=r.model: m.splice(torch.from_numpy(f)[None].to(device))) for r in runs]
    dim = runs[0].model.config.input_dim
    sums, states = [[0.0, 0] for _ in runs], None
    for k in range(max(len(p) for p in plans)):
        xs, ls, ys, fresh, scale, utts = [], [], [], [], [], []
        for plan, make in zip(plans, makers):
            if k < len(plan):
                with torch.no_grad():
                    x, lengths, y, f = make(plan[k], W)
                scale.append(_stream_scale(config, plan[k], world))
                utts.append([train.utt_ids[u] for u in plan[k].utt if u >= 0])
            else:
                x, lengths = torch.zeros(W, B, dim), torch.ones(B, dtype=torch.long)
                y, f = torch.full((B, W), IGNORE, dtype=torch.long), torch.ones(B, dtype=torch.bool)
                scale.append(0.0)
                utts.append([])
            xs.append(x.to(device)), ls.append(lengths), ys.append(y), fresh.append(f)
        y = torch.cat(ys).to(device)
        states = carry(states, torch.cat(fresh).to(device))
        logits, states = stack.forward_spliced(torch.cat(xs, 1), states, torch.cat(ls).to(device))
        ce = _seed_ce(logits, y, S)
        _step(runs, ce, scale, epoch, world, utts)
        for s, (c, plan) in enumerate(zip(ce.tolist(), plans)):
            sums[s][0] += c
            sums[s][1] += plan[k].frames if k < len(plan) else 0
    return [tuple(x) for x in sums]


def _stream_scale(config: TrainConfig, step, world: int) -> float:
    """What a seed's summed CE on this rank is multiplied by for one step on streams: ``world`` over
    the frames the step scores on all ranks ("frames": each step the mean over its own frames), or
    one over this rank's frame slots ("slots": streams x chunk_width; with the ranks' gradients
    averaged, the sum over all ranks' frames over all their slots). Under "frames" the epoch's last
    steps, where most streams have run out, weigh as much as full ones on a few streams' frames:
    measured, a long such tail (13 steps with under half the streams) dips dev accuracy by 2-7
    points that the next epoch recovers (README, "Training and the paper's grids")."""
    if config.stream_loss == "frames":
        return world / max(step.frames_all, 1)
    return 1.0 / (config.batch_size * config.chunk_width)


def _step(runs: list[SeedRun], ce: torch.Tensor, scale: list[float], epoch: int, world: int,
          utt_ids: list[list[str]]) -> None:
    """One optimizer step of each seed whose ``scale`` is non-zero (the others had no batch: Adam
    with a zero gradient would still move them). Seed s's loss is ``ce[s] * scale[s]``; one backward
    of their sum gives each seed its own gradient (its parameters reach only its own rows). A seed
    whose loss is NaN or infinite is ``diverged`` (the message names the run, epoch and batch) and
    steps no more; the others go on as if it were not there (its rows reach only its parameters).

    Across workers each seed's gradient is averaged over the ranks by one all_reduce of the stepping
    seeds' gradients flattened together, before each seed's own clipping: what DDP would do, without
    wrapping a stack that is rebuilt whenever a seed stops and whose idle seeds must not be averaged
    into a step (every rank knows the same seeds step: the schedules are computed alike on each)."""
    values = ce.detach().tolist()
    bad = [bool(sc) and not math.isfinite(v) for v, sc in zip(values, scale)]
    if world > 1:  # a seed diverged on any rank stops on all: every rank must step the same seeds
        flags = torch.tensor(bad, dtype=torch.float32, device=ce.device)
        dist.all_reduce(flags)
        bad = (flags > 0).tolist()
    for r, v, b, ids in zip(runs, values, bad, utt_ids):
        if b and r.diverged is None:
            names = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            r.diverged = (f"{r.config.run_dir or r.name}: epoch {epoch}: the loss is {v} on the batch of utterances "
                          f"{names}; lower --set lr=... or check the corpus")
    scale = [0.0 if r.diverged else sc for r, sc in zip(runs, scale)]  # a diverged seed steps no more
    for r in runs:
        r.opt.zero_grad(set_to_none=True)
    stepping = [r for r, sc in zip(runs, scale) if sc]
    if not stepping:
        return
    w = torch.tensor(scale, dtype=ce.dtype, device=ce.device)
    (torch.where(w > 0, ce, 0.0) * w).sum().backward()  # where: a diverged seed's NaN reaches no gradient
    if world > 1:
        grads = [p.grad for r in stepping for p in r.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    for r in stepping:
        torch.nn.utils.clip_grad_norm_(r.model.parameters(), r.config.clip)
        r.opt.step()


# ----------------------------------------------------------------------------------- what a trial writes

def _start_run_dir(run_dir: Path, run_stamps: dict, fresh: bool) -> None:
    """A seed's run directory as it starts: ``run.json``; on a fresh start (no checkpoint to resume)
    without what an earlier, unfinished attempt left (its checkpoints, scores)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for d in run_dir.iterdir():
            if d.is_dir() and CHECKPOINT_DIR.fullmatch(d.name):
                shutil.rmtree(d)
        for name in (EPOCHS_FILE, UTTERANCES_FILE):
            (run_dir / name).unlink(missing_ok=True)
    _write_atomically(run_dir / RUN_FILE, json.dumps(run_stamps, indent=2).encode())


def _write_checkpoint(run: SeedRun, metrics: dict, corpus_identity: dict, run_stamps: dict, graph) -> None:
    """The seed's model as ``<run>/checkpoint_NNNNNN/model.pt`` (with its run stamps, the metrics
    and the decoding graph, whose state priors turn posteriors into likelihoods): written in a
    hidden directory, then renamed, so a reader never sees half of one. A resumed trial writes the
    numbers of the epochs it redoes again."""
    run_dir = Path(run.config.run_dir)
    final, tmp = run_dir / f"checkpoint_{run.reports:06d}", run_dir / f".checkpoint_{run.reports:06d}.tmp"
    extra = {"stamps": run_stamps, "metrics": metrics, "decode_graph": graph.to_dict()}
    if final.is_dir():  # redone after a resume: the file is replaced in place (atomically), never absent
        save_checkpoint(final / MODEL_FILE, run.model, corpus_identity, extra=extra)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_checkpoint(tmp / MODEL_FILE, run.model, corpus_identity, extra=extra)
        os.replace(tmp, final)
    run.reports += 1


def _finish_run(run: SeedRun, utterances: list[dict], corpus_identity: dict, run_stamps: dict, graph) -> None:
    """The seed's final checkpoint (best-on-dev weights, test metrics), then its utterances and,
    last, ``epochs.parquet``: a run with that file is finished, its last checkpoint the final one."""
    _write_checkpoint(run, run.final, corpus_identity, run_stamps, graph)
    run_dir = Path(run.config.run_dir)
    for d in run_dir.iterdir():  # numbers past the final one, or half-written ones: left by a killed attempt
        m = CHECKPOINT_DIR.fullmatch(d.name)
        if (m and int(m.group(1)) >= run.reports) or (d.name.startswith(".checkpoint_") and d.name.endswith(".tmp")):
            shutil.rmtree(d)
    _write_parquet(run_dir / UTTERANCES_FILE, [{"split": "test", **u} for u in utterances])
    _write_epochs(run_dir, run.history, run.final)


def _report(metrics: dict, runs: list[SeedRun], epoch: int, rank: int) -> None:
    """Report the trial's metrics; rank 0 attaches a checkpoint holding every seed's resume state."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"epoch": epoch, "seeds": [r.state() for r in runs]}, Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` as ``path``, written beside it, then renamed: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def epoch_rows(history: list[dict], final: dict) -> list[dict]:
    """One row per epoch on dev, plus the final row on test (best-on-dev weights)."""
    def row(split: str, prefix: str, m: dict) -> dict:
        return {"epoch": m["epoch"], "split": split, "frame_ce": m[f"{prefix}frame_ce"],
                "frame_acc": m[f"{prefix}frame_acc"], "per": m[f"{prefix}per"], "frames": m[f"{prefix}frames"],
                "train_frame_ce": m.get("train_frame_ce"), "lr": m.get("lr"),
                "train_frames_per_s": m.get("train_frames_per_s"), "epoch_seconds": m.get("epoch_seconds")}

    return [row("dev", "dev_", h) for h in history] + [row("test", "test_", final)]


def _write_parquet(path: Path, rows: list[dict]) -> None:
    """A Parquet file the store ingests, written whole, then renamed."""
    buf = io.BytesIO()
    pl.DataFrame(rows).write_parquet(buf)
    _write_atomically(path, buf.getvalue())


def _write_epochs(run_dir: Path, history: list[dict], final: dict) -> None:
    _write_parquet(run_dir / EPOCHS_FILE, epoch_rows(history, final))


# ----------------------------------------------------------------------------------- launching

def make_trainer(config: TrainConfig, name: str, storage_path: str, workers: int = 1, gpus_per_worker: float = 0,
                 max_failures: int = 2, callbacks: list | None = None):
    """A ``TorchTrainer`` for one run; ``storage_path`` must be absolute (Ray 2.60). Ray Train's
    settings that cut a trial's idle start-up and shut-down go into this process's environment
    first (``cluster.runtime.TRAIN_SETTINGS``): in a Tune trial, this is the trial's process."""
    train_settings()
    storage = Path(storage_path).resolve()
    cfg = asdict(config)
    cfg["corpus"] = str(Path(config.corpus).resolve())
    cfg["run_dir"] = cfg["run_dir"] or str(storage / name)
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": config.threads_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(storage), callbacks=callbacks or [],
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def report_line(name: str, result: dict, epochs: int, done: str = "") -> str | None:
    """The console line of one seed's report (an epoch, or its final test scores); None for a
    report that is neither. ``done``: e.g. " (3/8)" after "done"."""
    if result.get("final"):
        return (f"{name:<22} done{done}: test PER {100 * result['test_per']:.2f} %, frame accuracy "
                f"{100 * result['test_frame_acc']:.2f} % (best epoch {result.get('best_epoch')}"
                + (f"; it diverged in epoch {result['epoch']}" if result.get("diverged") else "") + ")")
    if "dev_frame_acc" not in result:
        return None
    if result.get("diverged"):
        return f"{name:<22} epoch {int(result['epoch'])}: diverged ({result['diverged']})"
    epoch, secs = int(result["epoch"]), float(result.get("epoch_seconds") or 0.0)
    return (f"{name:<22} epoch {epoch}/{epochs}  dev accuracy {100 * result['dev_frame_acc']:.2f} %  "
            f"{secs:.0f} s/epoch  ETA {clock(max(epochs - epoch, 0) * secs)}")


def seed_reports(result: dict):
    """(run name, that seed's metrics) of every seed in one trial report: its epoch, then, if it
    stopped then, its final scores."""
    for name, m in (result.get("runs") or {}).items():
        yield name, m
    for name, m in (result.get("finals") or {}).items():
        yield name, m


class ReportsTo(ray.train.UserCallback):
    """Hands each report's metrics (rank 0's) to a ``ray.util.queue.Queue``: Ray Train runs
    callbacks in its controller's process, whose output is not this console's."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        if metrics:
            self.queue.put(dict(metrics[0]))


def fit_quietly(trainer_of, name: str, epochs: int, say, quiet_after: float = 10.0):
    """``trainer_of(callbacks).fit()`` with one line per seed and epoch (``report_line``) said as it is
    reported, and a line whenever nothing was said for ``quiet_after`` seconds before the first
    epoch (Ray Train starting its workers takes ~30 s here), six times that after it; returns the
    fit's Result (or raises its error)."""
    reports = Queue()
    box: dict = {}
    t0 = last = time.time()

    def run():
        try:
            box["result"] = trainer_of([ReportsTo(reports)]).fit()
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    worker = threading.Thread(target=run, name="gatelens-fit", daemon=True)
    worker.start()
    said_epoch = False
    while worker.is_alive() or not reports.empty():
        try:
            lines = [report_line(n, m, epochs) for n, m in seed_reports(reports.get(timeout=1.0))]
        except queue_mod.Empty:
            lines = []
            if worker.is_alive() and time.time() - last > (6 * quiet_after if said_epoch else quiet_after):
                lines = [f"{name:<22} {'epoch under way' if said_epoch else 'starting: Ray Train starts its workers'}"
                         f" ({clock(time.time() - t0)} so far)"]
        for line in filter(None, lines):
            said_epoch = said_epoch or " epoch " in line
            say(f"[{clock(time.time() - t0):>7}] {line}")
            last = time.time()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_name(config: TrainConfig) -> str:
    parts = [config.cell, f"L{config.layers}", f"H{config.hidden}"]
    if config.residual:
        parts.append("res")
    if config.cell == "lstm_lazy":
        parts.append(f"lazy-{config.lazy_layers}")
    if config.precision != "fp32":
        parts.append(config.precision)
    if config.chunk_width:
        parts.append(f"cw{config.chunk_width}")
    parts.append(f"s{config.seed}")
    return "_".join(parts)

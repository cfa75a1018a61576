"""Training one acoustic model on Ray Train: the per-worker loop and the trainer around it.

Frame-level cross-entropy on aligned targets (paper Sec. 3.2), DDP across workers (gloo on CPU,
nccl on GPU), length-bucketed batches of whole utterances or carried-state streams in windows of
``chunk_width`` frames (``cluster/streams.py``), Adam or SGD with a schedule, gradient clipping, early
stopping on dev frame accuracy. Every epoch reports dev metrics with a checkpoint; a restarted
worker resumes from the last one. At the end the best-on-dev weights are scored on test.
"""

from __future__ import annotations

from time import time as _now

# when this module's imports (torch, Ray Train, numba through the cells) began and ended in this
# process: the first epoch's metrics carry them (``startup_*``) for bench/startup.py
_IMPORTS_BEGAN = _now()

import copy
import json
import math
import os
import queue as queue_mod
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
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
from cluster.models import CELLS, CheckpointError, ModelConfig, build_model, load_checkpoint, save_checkpoint
from cluster.models.checkpoint import MAX_HIDDEN, MAX_LAYERS, MODEL_FILE
from cluster.runs import EPOCHS_FILE, RUN_FILE, UTTERANCES_FILE, RunStamp
from cluster.runtime import git_revision
from cluster.streams import StreamBatches, carry, stream_schedule

IGNORE = -100
STATE_FILE = "train_state.pt"
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
    schedule: str = "plateau"  # plateau (halve lr when dev accuracy stalls) | cosine | none
    epochs: int = 10
    batch_size: int = 16  # utterances per batch; with chunk_width > 0, the streams (batch rows) per worker
    chunk_width: int = 0  # 0: whole utterances; n: carried-state streams in windows of n frames (streams.py)
    clip: float = 5.0
    patience: int = 3  # epochs without dev improvement before stopping
    seed: int = 0
    lm_weight: float = 1.0
    prior_scale: float = 1.0
    max_train_utterances: int | None = None  # a subset, for quick runs
    max_eval_utterances: int | None = None
    threads_per_worker: int = 1
    allow_pipes: bool = False  # Kaldi pipes in the corpus's scp files (the manifest must allow them too)
    run_dir: str = ""  # where run.json and epochs.parquet go (set by the launcher)
    pid_dir: str = ""  # each worker writes its pid here (used by the fault tests and `gatelens status`)

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
        check(self.patience >= 1, f"patience={self.patience}: at least 1")
        check(self.threads_per_worker >= 1, f"threads_per_worker={self.threads_per_worker}: at least 1")
        check(math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr}: a positive number")
        check(math.isfinite(self.clip) and self.clip > 0, f"clip={self.clip}: a positive number")
        check(0 <= self.momentum < 1, f"momentum={self.momentum}: in [0, 1)")
        check(self.optimizer in ("adam", "sgd"), f"optimizer={self.optimizer!r}: adam or sgd")
        check(self.schedule in ("plateau", "cosine", "none"), f"schedule={self.schedule!r}: plateau, cosine or none")
        check(self.precision in ("fp32", "bf16"), f"precision={self.precision!r}: fp32 or bf16")
        check(self.lazy_layers in ("last", "all"), f"lazy_layers={self.lazy_layers!r}: last or all")
        for name in ("max_train_utterances", "max_eval_utterances"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"{name}={v}: at least 1 (or none)")

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
    return RunStamp(config=asdict(config), seed=config.seed,
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
def evaluate(model, data: SplitData, graph, config: TrainConfig, device, rank: int = 0, world: int = 1,
             per_utterance: bool = False) -> dict:
    """Frame cross-entropy, frame accuracy and phone error rate (Viterbi decoding) on this rank's
    share of ``data``, summed across ranks; with ``per_utterance``, also "utterances": every
    utterance's reference length and substitutions / insertions / deletions (gathered from all ranks)."""
    model.eval()
    ce = correct = frames = 0.0
    refs, hyps, ids = [], [], []
    idx = np.arange(rank, len(data.feats), world)
    order = idx[np.argsort(data.lengths[idx])]
    for k in range(0, len(order), config.batch_size):
        b = order[k:k + config.batch_size]
        x, lengths, y = pad_batch([data.feats[i] for i in b], [data.targets[i] for i in b], IGNORE)
        logits = model(x.to(device), lengths.to(device)).float()
        y = y.to(device)
        ce += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                              reduction="sum").item()
        mask = y != IGNORE
        correct += ((logits.argmax(-1) == y) & mask).sum().item()
        frames += mask.sum().item()
        logp = torch.log_softmax(logits, -1).cpu().numpy()
        for j, i in enumerate(b):
            hyps.append(viterbi(logp[j, : lengths[j]], graph, lm_weight=config.lm_weight,
                                prior_scale=config.prior_scale))
            refs.append(reference_phones(data.phones[i], data.targets[i], graph))
            ids.append(data.utt_ids[i])
    per = phone_error_rate(refs, hyps, ignore=graph.silence)
    utts = [{"utt_id": u, **e} for u, e in zip(ids, utterance_errors(refs, hyps, ignore=graph.silence))] \
        if per_utterance else []
    if per_utterance and world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, utts)
        utts = [u for part in gathered for u in part]
    sums = torch.tensor([ce, correct, frames, per["errors"], per["ref_len"]], dtype=torch.float64)
    if world > 1:
        # gloo reduces on CPU tensors; nccl needs them on the device
        t = sums.to(device) if dist.get_backend() == "nccl" else sums
        dist.all_reduce(t)
        sums = t.cpu()
    ce, correct, frames, errors, ref_len = sums.tolist()
    model.train()
    out = {"frame_ce": ce / max(frames, 1), "frame_acc": correct / max(frames, 1),
           "per": errors / max(ref_len, 1), "frames": int(frames)}
    if per_utterance:
        out["utterances"] = sorted(utts, key=lambda u: u["utt_id"])
    return out


# ----------------------------------------------------------------------------------- the loop

def _optimizer(model, config: TrainConfig):
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    raise ValueError(f"optimizer must be adam or sgd, not {config.optimizer!r}")


def _scheduler(opt, config: TrainConfig):
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1))
    if config.schedule == "none":
        return None
    raise ValueError(f"schedule must be plateau, cosine or none, not {config.schedule!r}")


def train_loop_per_worker(config_dict: dict) -> None:
    """Ray Train's per-worker function (one process per worker; DDP set up by Ray)."""
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

    torch.manual_seed(config.seed)
    model = build_model(config.model_config(corpus.num_targets), corpus.cmvn_mean, corpus.cmvn_std)
    start_epoch, best_acc, best_state, stale, history = 1, -1.0, None, 0, []
    resumed_from = 0
    opt = _optimizer(model, config)
    sched = _scheduler(opt, config)
    ckpt = ray.train.get_checkpoint()
    if ckpt:  # a restarted worker (or a resumed run): continue after the last reported epoch
        with ckpt.as_directory() as d:
            loaded, _ = load_checkpoint(Path(d) / MODEL_FILE)
            model.load_state_dict(loaded.state_dict())
            state = load_train_state(Path(d) / STATE_FILE)
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        start_epoch, best_acc, stale, history = state["epoch"] + 1, state["best_acc"], state["stale"], state["history"]
        best_state = state["best_state"]
        resumed_from = state["epoch"]
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    core = model.module if hasattr(model, "module") else model
    run_stamps = stamps(config, corpus.identity)
    startup["startup_model_ready"] = time.time()
    if rank == 0 and config.run_dir:
        Path(config.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.run_dir) / RUN_FILE).write_text(json.dumps(run_stamps, indent=2))

    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        if stale >= config.patience:
            break
        t0 = time.time()
        model.train()
        run_epoch = _stream_epoch if config.chunk_width else _utterance_epoch
        total, n_frames = run_epoch(model, core, opt, train, config, epoch, rank, world, device)
        train_seconds = time.time() - t0
        metrics = {f"dev_{k}": v for k, v in evaluate(core, dev, graph, config, device, rank, world).items()}
        metrics.update(epoch=epoch, train_frame_ce=total / max(n_frames, 1), lr=opt.param_groups[0]["lr"],
                       train_frames_per_s=n_frames * world / max(train_seconds, 1e-9),
                       epoch_seconds=time.time() - t0, resumed_from_epoch=resumed_from,
                       **(startup if epoch == start_epoch else {}))
        if metrics["dev_frame_acc"] > best_acc:
            best_acc, stale = metrics["dev_frame_acc"], 0
            best_state = copy.deepcopy(core.state_dict())
        else:
            stale += 1
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(metrics["dev_frame_acc"])
        elif sched is not None:
            sched.step()
        history.append(metrics)
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                 "epoch": epoch, "best_acc": best_acc, "stale": stale, "history": history, "best_state": best_state}
        _report(metrics, core, corpus.identity, run_stamps, state, rank, graph)

    # best-on-dev weights, scored on test: the numbers the paper's tables report
    test = load_split(corpus, "test", config.max_eval_utterances)
    if best_state is not None:
        core.load_state_dict(best_state)
    scored = evaluate(core, test, graph, config, device, rank, world, per_utterance=True)
    utterances = scored.pop("utterances")
    final = {f"test_{k}": v for k, v in scored.items()}
    best = max(history, key=lambda h: h["dev_frame_acc"]) if history else {}
    final.update({"epoch": epoch, "final": True, "best_epoch": best.get("epoch"),
                  **{f"best_{k}": v for k, v in best.items() if k.startswith("dev_")}})
    if rank == 0 and config.run_dir:  # the utterances first: a run with epochs.parquet is finished
        _write_parquet(Path(config.run_dir) / UTTERANCES_FILE, [{"split": "test", **u} for u in utterances])
        _write_epochs(Path(config.run_dir), history, final)
    _report(final, core, corpus.identity, run_stamps, None, rank, graph)


def _utterance_epoch(model, core, opt, train: SplitData, config: TrainConfig, epoch: int, rank: int, world: int,
                     device) -> tuple[float, int]:
    """One epoch on length-bucketed batches of whole utterances; returns (summed frame CE, frames)."""
    total, n_frames = 0.0, 0
    for b in bucket_batches(train.lengths, config.batch_size, config.seed, epoch, rank, world):
        x, lengths, y = pad_batch([train.feats[i] for i in b], [train.targets[i] for i in b], IGNORE)
        x, lengths, y = x.to(device), lengths.to(device), y.to(device)
        logits = model(x, lengths)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE)
        _step(model, opt, loss, config, epoch, [train.utt_ids[i] for i in b])
        f = int((y != IGNORE).sum())
        total, n_frames = total + loss.item() * f, n_frames + f
    return total, n_frames


def _stream_epoch(model, core, opt, train: SplitData, config: TrainConfig, epoch: int, rank: int, world: int,
                  device) -> tuple[float, int]:
    """One epoch on carried-state streams (``cluster/streams.py``): every training frame scored once,
    states zero at every utterance start (and so at the epoch's: a resumed run starts there too).

    The loss is this rank's summed CE over the frames the step scores on all ranks, times the world
    size: DDP averages gradients, so the update is that of the mean over all of them."""
    total, n_frames, states = 0.0, 0, None
    batches = StreamBatches(train.feats, train.targets, lambda f: core.splice(torch.from_numpy(f)[None].to(device)))
    for step in stream_schedule(train.lengths, config.batch_size, config.chunk_width, config.seed, epoch, rank, world):
        with torch.no_grad():
            x, lengths, y, fresh = batches(step, config.chunk_width)
        x, lengths, y = x.to(device), lengths.to(device), y.to(device)
        states = carry(states, fresh.to(device))
        logits, states = model(x, lengths, spliced=True, state=states)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE,
                             reduction="sum")
        _step(model, opt, ce * (world / max(step.frames_all, 1)), config, epoch,
              [train.utt_ids[u] for u in step.utt if u >= 0])
        total, n_frames = total + ce.item(), n_frames + step.frames
    return total, n_frames


def _step(model, opt, loss, config: TrainConfig, epoch: int, utt_ids: list[str]) -> None:
    if not torch.isfinite(loss):
        names = ", ".join(utt_ids[:5]) + (" ..." if len(utt_ids) > 5 else "")
        raise TrainingDiverged(f"{config.run_dir or 'run'}: epoch {epoch}: the loss is {loss.item()} on the "
                               f"batch of utterances {names}; lower --set lr=... or check the corpus")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
    opt.step()


def _report(metrics: dict, model, corpus_identity: dict, run_stamps: dict, state: dict | None, rank: int,
            graph) -> None:
    """Report metrics; rank 0 attaches a checkpoint: the model file (with its run stamps, metrics and
    the decoding graph, whose state priors turn posteriors into likelihoods) plus, mid-run, the
    resume state."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(Path(d) / MODEL_FILE, model, corpus_identity, extra={"stamps": run_stamps, "metrics": metrics,
                                                                          "decode_graph": graph.to_dict()})
        if state is not None:
            torch.save(state, Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


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
    tmp = path.with_name(path.name + ".tmp")
    pl.DataFrame(rows).write_parquet(tmp)
    os.replace(tmp, path)


def _write_epochs(run_dir: Path, history: list[dict], final: dict) -> None:
    _write_parquet(run_dir / EPOCHS_FILE, epoch_rows(history, final))


# ----------------------------------------------------------------------------------- launching

def make_trainer(config: TrainConfig, name: str, storage_path: str, workers: int = 1, gpus_per_worker: float = 0,
                 max_failures: int = 2, callbacks: list | None = None):
    """A ``TorchTrainer`` for one run; ``storage_path`` must be absolute (Ray 2.60). Ray Train's
    settings that cut a trial's idle start-up and shut-down go into this process's environment
    first (``cluster.runtime.TRAIN_SETTINGS``): in a Tune trial, this is the trial's process."""
    from cluster.runtime import train_settings

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
    """The console line of one report of a run (an epoch, or the final test scores); None for a
    report that is neither. ``done``: e.g. " (3/8)" after "done"."""
    if result.get("final"):
        return (f"{name:<22} done{done}: test PER {100 * result['test_per']:.2f} %, frame accuracy "
                f"{100 * result['test_frame_acc']:.2f} % (best epoch {result.get('best_epoch')})")
    if "dev_frame_acc" not in result:
        return None
    epoch, secs = int(result["epoch"]), float(result.get("epoch_seconds") or 0.0)
    return (f"{name:<22} epoch {epoch}/{epochs}  dev accuracy {100 * result['dev_frame_acc']:.2f} %  "
            f"{secs:.0f} s/epoch  ETA {clock(max(epochs - epoch, 0) * secs)}")


class ReportsTo(ray.train.UserCallback):
    """Hands each report's metrics (rank 0's) to a ``ray.util.queue.Queue``: Ray Train runs
    callbacks in its controller's process, whose output is not this console's."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        if metrics:
            self.queue.put(dict(metrics[0]))


def fit_quietly(trainer_of, name: str, epochs: int, say, quiet_after: float = 10.0):
    """``trainer_of(callbacks).fit()`` with one line per epoch (``report_line``) said as it is
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
            line = report_line(name, reports.get(timeout=1.0), epochs)
        except queue_mod.Empty:
            line = None
            if worker.is_alive() and time.time() - last > (6 * quiet_after if said_epoch else quiet_after):
                line = (f"{name:<22} {'epoch under way' if said_epoch else 'starting: Ray Train starts its workers'}"
                        f" ({clock(time.time() - t0)} so far)")
        if line:
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

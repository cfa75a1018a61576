"""The paper's studies (Tables 1-3) and the profiles that size them: plain data, read by the
grid (``cluster/grid.py``) and by the command line's help without importing torch or Ray."""

from __future__ import annotations

from dataclasses import dataclass

STUDIES: dict[str, list[dict]] = {
    # Table 1: LSTM vs GRU by depth
    "table1": [{"cell": c, "layers": n} for c in ("lstm", "gru") for n in (1, 2, 4, 6)],
    # Table 2: LSTM without / with lazy cell update (final layer only, as the paper)
    "table2": [{"cell": c, "layers": n} for c in ("lstm", "lstm_lazy") for n in (1, 2, 4)],
    # Table 3: residual shortcuts at 4 and 6 layers
    "table3": [{"cell": c, "layers": n, "residual": r} for c in ("lstm", "gru") for n in (4, 6) for r in (False, True)],
}


@dataclass(frozen=True)
class Profile:
    name: str
    train: dict  # TrainConfig overrides
    depths: tuple[int, ...] | None = None  # keep only these depths of a study
    workers: int = 1
    gpus_per_worker: float = 0.0
    max_concurrent: int = 0  # 0: as resources allow
    seeds: tuple[int, ...] = (0,)  # every grid point is trained once per seed (``--seeds`` overrides)


PROFILES = {
    # fits `make demo` on 2 CPU cores: table1 at depths 1 and 2 x 3 seeds (so the claims have an
    # interval), one epoch each on carried-state streams of 40 frames (far from converged: findings
    # need the study profile). One pass over the whole training set trains better than three over a
    # third of it (measured: dev frame accuracy 57 % vs 46 % at 1 layer), and one pass of streams
    # better than one of whole utterances (README, "Training and the paper's grids")
    "demo": Profile("demo", {"hidden": 128, "epochs": 1, "batch_size": 16, "lr": 2e-3, "chunk_width": 40,
                             "patience": 1}, depths=(1, 2), seeds=(0, 1, 2)),
    # the whole training set, table1 at depths 1, 2, 4 x 5 seeds (t = 2.78 for a 95 % interval over
    # five, 4.30 over three), on carried-state streams of 40 frames whose loss is weighed per frame
    # slot (so the epoch's tail of idle streams does not jolt the weights), stopped by Kaldi's newbob
    # rule with the rate held for 3 epochs, at most 12: over the whole study (30 runs, README
    # "Training and the paper's grids") 29 runs stop by the rule after 7-12 epochs, above cosine-6's
    # accuracy, which ended every run at its cap
    "study": Profile("study", {"hidden": 128, "epochs": 12, "batch_size": 16, "lr": 2e-3, "chunk_width": 40,
                               "stream_loss": "slots", "schedule": "newbob", "newbob_keep": 3},
                     depths=(1, 2, 4), seeds=(0, 1, 2, 3, 4)),
    # the paper's shapes, for a cluster of GPU machines
    "paper": Profile("paper", {"hidden": 512, "epochs": 15, "batch_size": 32, "patience": 3,
                               "threads_per_worker": 4}, gpus_per_worker=1.0, seeds=(0, 1, 2)),
    # for tests and smoke runs: seconds per trial
    "tiny": Profile("tiny", {"hidden": 16, "epochs": 1, "batch_size": 8, "max_train_utterances": 48,
                             "max_eval_utterances": 12}),
}

"""``gatelens train``, ``grid``, ``results``, ``export-posteriors``: runs on Ray Train / Tune and
what they produced."""

from __future__ import annotations

import argparse
import sys
import time

import polars as pl

from analyses.stats import over_seeds
from cluster.data.kaldi import check_corpus
from cluster.errors import EXIT_ERROR, InputError
from cluster.export import export_loglikelihoods
from cluster.grid import custom_grid, run_study
from cluster.runs import RUNS, collect_results, study_dir
from cluster.runtime import ensure_ray
from cluster.settings import parse_assignment, typed_value
from cluster.train import TrainConfig, fit_quietly, make_trainer, run_name
from service.cli.console import quiet_ray
from service.results import format_table, ingest_study
from service.store import Store, StoreError


def training_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs, typed by the TrainConfig field they name."""
    return dict(parse_assignment(TrainConfig, item) for item in items)


def check_corpus_first(corpus: str, allow_pipes: bool = False) -> None:
    """Read every utterance through the corpus checks before any worker starts or any run
    directory is made: a bad corpus is reported here, naming the file and utterance, and nothing
    is written."""
    print(f"checking corpus {corpus} ...", file=sys.stderr, flush=True)
    check_corpus(corpus, allow_pipes=allow_pipes)


def ingest_runs(store_path: str, storage: str, study: str) -> None:
    """Runs and epoch metrics into the store, for SQL. A store that cannot take them (busy, say)
    ends the command with its status after everything else was printed: the runs themselves are
    safe in the storage, and ``gatelens results --ingest`` writes them later."""
    store = Store(store_path)
    try:
        n = ingest_study(store, storage, study)
    except StoreError as e:  # the same class, so a busy store still exits 3
        raise type(e)(f"runs not written to the store: {e}; `gatelens results --ingest` retries") from None
    print(f"{n} runs of {study} in store {store.path} (tables runs, epoch_metrics)")


def cmd_train(args: argparse.Namespace) -> int:
    try:
        config = TrainConfig.from_dict({"corpus": args.corpus, "cell": args.cell, "layers": args.layers,
                                        "hidden": args.hidden, "residual": args.residual, "epochs": args.epochs,
                                        "precision": args.precision, "seed": args.seed,
                                        "allow_pipes": args.allow_pipes, **training_overrides(args.set)})
    except ValueError as e:
        raise InputError(str(e)) from None
    name = args.name or run_name(config)
    storage = study_dir(args.storage, "train") / RUNS  # where iter_runs (and the ingest) look
    check_corpus_first(config.corpus, config.allow_pipes)
    quiet_ray(study_dir(args.storage, "train") / "logs", "train")
    ensure_ray()
    result = fit_quietly(lambda callbacks: make_trainer(config, name, str(storage), workers=args.workers,
                                                        gpus_per_worker=args.gpus_per_worker, callbacks=callbacks),
                         name, config.epochs, lambda line: print(line, file=sys.stderr, flush=True))
    m = ((result.metrics or {}).get("results") or {}).get(name) or {}  # the trial's last report: its seeds' finals
    print(f"run {name}: test PER {100 * m.get('test_per', float('nan')):.2f}%  "
          f"frame accuracy {100 * m.get('test_frame_acc', float('nan')):.2f}%  (best epoch {m.get('best_epoch')})")
    print(f"  checkpoints and epochs.parquet under {storage / name}")
    ingest_runs(args.store, args.storage, "train")
    return 0


def _bools(text: str) -> list[bool]:
    return [typed_value(bool, x, f"--residual {text!r}") for x in text.split(",")]


def cmd_grid(args: argparse.Namespace) -> int:
    custom = None
    if args.cells or args.layers_list:
        try:
            depths = [int(x) for x in (args.layers_list or "1,2").split(",")]
        except ValueError:
            raise InputError(f"--layers {args.layers_list!r}: expected comma-separated integers") from None
        custom = custom_grid((args.cells or "lstm,gru").split(","), depths, _bools(args.residual_list))
    overrides = training_overrides(args.set) | {"allow_pipes": args.allow_pipes}
    check_corpus_first(args.corpus, args.allow_pipes)
    quiet_ray(study_dir(args.storage, args.study) / "logs", "grid")
    t0 = time.time()
    configs, grid = run_study(args.study, args.profile, args.storage, corpus=args.corpus, overrides=overrides,
                              custom=custom, rerun=args.rerun, workers=args.workers,
                              gpus_per_worker=args.gpus_per_worker, seeds=args.seeds)
    if grid is None:
        print(f"all {len(configs)} runs of {args.study} already finished (--rerun trains them again)")
    else:
        runs = sum(len(r.config["point"]["train"]["stack_seeds"]) for r in grid)
        print(f"trained {runs} runs in {(time.time() - t0) / 60:.1f} min ({len(grid)} trial{'s' if len(grid) != 1 else ''})",
              file=sys.stderr)
        for e in grid.errors:
            print(f"trial failed: {e}", file=sys.stderr)
    print(format_table(collect_results(args.storage, args.study), args.study))
    ingest_runs(args.store, args.storage, args.study)
    return EXIT_ERROR if grid is not None and grid.errors else 0


def cmd_results(args: argparse.Namespace) -> int:
    df = collect_results(args.storage, args.study)
    if args.ingest:
        ingest_runs(args.store, args.storage, args.study)
    rows = df if args.per_seed or df.is_empty() else over_seeds(df)
    if args.format == "csv":
        print(rows.with_columns(pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(" ")
                                for c, t in rows.schema.items() if t.is_nested()).write_csv(), end="")
    elif args.format == "json":
        print(rows.write_json())
    else:
        print(format_table(df, args.study, per_seed=args.per_seed))
    return 0


def cmd_export_posteriors(args: argparse.Namespace) -> int:
    n = export_loglikelihoods(args.checkpoint, args.out, split=args.split, corpus=args.corpus,
                              prior_scale=args.prior_scale, utterances=args.utterances, allow_pipes=args.allow_pipes)
    print(f"wrote log-likelihoods of {n} utterances to {args.out} (+ .scp)")
    return 0

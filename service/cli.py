"""The ``gatelens`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CORPUS = Path("data/corpus")


def _progress_shards(done: int, total: int, elapsed: float) -> None:
    print(f"  shard {done}/{total} done ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def cmd_corpus(args: argparse.Namespace) -> int:
    from cluster.data.kaldi import check_corpus

    if args.action == "check":
        if not args.manifest:
            raise SystemExit("gatelens corpus check: give the corpus directory or manifest file")

        def progress(split: str, k: int, n: int) -> None:
            if k == n or k % 500 == 0:
                print(f"  {split}: {k}/{n} utterances checked", file=sys.stderr, flush=True)

        summary = check_corpus(args.manifest, skip_unaligned=args.skip_unaligned or None, progress=progress)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"corpus {summary['name']} ({summary['manifest']}): OK")
            print(f"  {summary['phones']} phones, {summary['num_targets']} targets, feature dim {summary['feat_dim']}")
            for name, s in summary["splits"].items():
                skipped = f", {s['skipped']} skipped (unaligned)" if s["skipped"] else ""
                print(f"  {name:5s} {s['utterances']:7d} utts {s['speakers']:5d} speakers {s['frames']:10d} frames "
                      f"{s['hours']:8.3f} h, {s['targets_seen']} targets seen{skipped}")
        return 0

    from cluster.data.embedded import describe, prepare_embedded

    out = Path(args.out)
    if args.reuse and (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        gen = manifest.get("generator", {})
        if (gen.get("seed"), gen.get("utterances"), gen.get("shard_size")) == (args.seed, args.utterances, args.shard_size):
            print(describe(manifest, out) + "\n  (reused: same seed and size; --overwrite regenerates)")
            return 0
        print(f"{out} holds a corpus of another seed or size; regenerating", file=sys.stderr)
        args.overwrite = True
    print(f"generating {args.utterances} utterances (seed {args.seed}) into {out} ...", file=sys.stderr, flush=True)
    manifest = prepare_embedded(out, args.utterances, args.seed, shard_size=args.shard_size,
                                keep_wavs=args.keep_wavs, overwrite=args.overwrite, progress=_progress_shards)
    print(describe(manifest, out))
    return 0


def _parse_overrides(items: list[str]) -> dict:
    """``--set key=value`` pairs typed by the TrainConfig field they name."""
    from dataclasses import fields

    from cluster.train import TrainConfig

    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        t = str(types[key])
        if value.lower() in ("none", "null") and "None" in t:
            out[key] = None
        elif t.startswith("bool"):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif t.startswith("int"):
            out[key] = int(value)
        elif t.startswith("float"):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from cluster.runtime import ensure_ray
    from cluster.train import TrainConfig, make_trainer, run_name

    config = TrainConfig.from_dict({"corpus": args.corpus, "cell": args.cell, "layers": args.layers,
                                    "hidden": args.hidden, "residual": args.residual, "epochs": args.epochs,
                                    "precision": args.precision, "seed": args.seed, **_parse_overrides(args.set)})
    name = args.name or run_name(config)
    storage = Path(args.storage).resolve() / "train"
    _check_corpus_first(config.corpus)
    ensure_ray()
    trainer = make_trainer(config, name, str(storage), workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    result = trainer.fit()
    m = result.metrics or {}
    print(f"run {name}: test PER {100 * m.get('test_per', float('nan')):.2f}%  "
          f"frame accuracy {100 * m.get('test_frame_acc', float('nan')):.2f}%  (best epoch {m.get('best_epoch')})")
    print(f"  checkpoints and epochs.parquet under {storage / name}")
    _ingest(args.store, args.storage, "train")
    return 0


def _check_corpus_first(corpus: str) -> None:
    """Read every utterance through the corpus checks before any worker starts or any run
    directory is made: a bad corpus is reported here, naming the file and utterance, and nothing
    is written."""
    from cluster.data.kaldi import check_corpus

    print(f"checking corpus {corpus} ...", file=sys.stderr, flush=True)
    check_corpus(corpus)


def cmd_grid(args: argparse.Namespace) -> int:
    from cluster.grid import custom_grid, run_study
    from service.results import collect, format_table

    custom = None
    if args.cells or args.layers_list:
        custom = custom_grid((args.cells or "lstm,gru").split(","),
                             [int(x) for x in (args.layers_list or "1,2").split(",")],
                             [x.lower() in ("1", "true", "yes", "on") for x in args.residual_list.split(",")])
    from cluster.grid import PROFILES
    from cluster.train import TrainConfig

    _check_corpus_first(args.corpus or TrainConfig.from_dict(PROFILES[args.profile].train).corpus)
    configs, grid = run_study(args.study, args.profile, args.storage, corpus=args.corpus,
                              overrides=_parse_overrides(args.set), custom=custom, rerun=args.rerun,
                              workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    if grid is None:
        print(f"all {len(configs)} runs of {args.study} already finished (--rerun trains them again)")
    elif grid.errors:
        for e in grid.errors:
            print(f"trial failed: {e}", file=sys.stderr)
    print(format_table(collect(args.storage, args.study), args.study))
    _ingest(args.store, args.storage, args.study)
    return 1 if grid is not None and grid.errors else 0


def _ingest(store_path: str | None, storage: str, study: str) -> None:
    """Runs and epoch metrics into the store, for SQL; a busy store is reported, not fatal."""
    from service.results import ingest_study
    from service.store import Store, StoreError

    store = Store(store_path) if store_path else Store()
    try:
        n = ingest_study(store, storage, study)
        print(f"{n} runs of {study} in store {store.path} (tables runs, epoch_metrics)")
    except StoreError as e:
        print(f"runs not written to the store: {e}; `gatelens results --ingest` retries", file=sys.stderr)


def cmd_results(args: argparse.Namespace) -> int:
    from service.results import collect, format_table

    df = collect(args.storage, args.study)
    if args.ingest:
        _ingest(args.store, args.storage, args.study)
    if args.format == "csv":
        print(df.write_csv(), end="")
    elif args.format == "json":
        print(df.write_json())
    else:
        print(format_table(df, args.study))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import subprocess

    import socket

    with socket.socket() as sock:  # the agent's default 52365 may be held by another Ray on this machine
        sock.bind(("", 0))
        agent_port = sock.getsockname()[1]
    cmd = ["ray", "start", "--head", "--include-dashboard=true", f"--dashboard-port={args.dashboard_port}",
           f"--port={args.port}", f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats"]
    if args.num_cpus is not None:
        cmd.append(f"--num-cpus={args.num_cpus}")
    print("$ " + " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd)
    if rc == 0:
        print(f"head up: submit with  ray job submit --address http://127.0.0.1:{args.dashboard_port} "
              f"--working-dir . -- gatelens grid --study table1 --profile demo\n"
              f"(token auth: clients read ~/.ray/auth_token; set RAY_AUTH_MODE=token if asked)")
    return rc


def cmd_down(args: argparse.Namespace) -> int:
    import subprocess

    return subprocess.call(["ray", "stop"] + (["--force"] if args.force else []))


def cmd_export_posteriors(args: argparse.Namespace) -> int:
    from cluster.export import export_loglikelihoods

    n = export_loglikelihoods(args.checkpoint, args.out, split=args.split, corpus=args.corpus,
                              prior_scale=args.prior_scale, utterances=args.utterances)
    print(f"wrote log-likelihoods of {n} utterances to {args.out} (+ .scp)")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default="data/runs", help="where runs and checkpoints go (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers per run (ScalingConfig)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (0: CPU, gloo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option, e.g. --set lr=0.002 --set batch_size=32")
    p.add_argument("--store", default=None, help="the DuckDB store that receives runs and epoch metrics "
                                                 "(default: $GATELENS_STORE or data/gatelens.duckdb)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatelens",
        description="Train gated recurrent acoustic models on Ray, capture and query what their units do.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "corpus", help="generate the embedded eSpeak corpus, or check a Kaldi-format corpus",
        description="`gatelens corpus --out DIR` synthesises the embedded corpus as Kaldi data directories; "
                    "`gatelens corpus check MANIFEST` validates a corpus (embedded or a real Kaldi setup).",
    )
    p.add_argument("action", nargs="?", choices=["build", "check"], default="build",
                   help="build (default) or check")
    p.add_argument("manifest", nargs="?", help="for check: corpus directory or manifest (.json/.toml)")
    p.add_argument("--out", default=str(DEFAULT_CORPUS), help="output directory (default: %(default)s)")
    p.add_argument("--utterances", type=int, default=3000, help="utterances over all splits (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same bytes (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=500, help="utterances per Ray task (default: %(default)s)")
    p.add_argument("--keep-wavs", choices=["none", "test", "all"], default="test",
                   help="store 16 kHz wavs (for noise analyses) for these splits (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus once the new one is complete")
    p.add_argument("--reuse", action="store_true",
                   help="keep an existing corpus of the same seed and size instead of regenerating it")
    p.add_argument("--skip-unaligned", action="store_true",
                   help="for check: use only utterances with both features and alignments")
    p.add_argument("--json", action="store_true", help="for check: print the summary as JSON")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("train", help="train one model on Ray Train",
                       description="Train one acoustic model (TorchTrainer; DDP over --workers).")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="corpus directory or manifest")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru", "lstm_lazy", "lstm_fused"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--residual", action="store_true", help="shortcut connections (Sec. 5.2)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="run name (default: from the configuration)")
    _add_run_options(p)
    p.set_defaults(func=cmd_train, workers=1, gpus_per_worker=0.0)

    p = sub.add_parser("grid", help="run a study (the paper's tables) on Ray Tune",
                       description="Run the trials of a study: table1 (LSTM/GRU x depth), table2 (lazy update), "
                                   "table3 (residual), or a custom grid (--cells/--layers/--residual).")
    p.add_argument("--study", default="table1", help="table1, table2, table3, or a name for a custom grid")
    p.add_argument("--profile", default="demo", choices=["demo", "paper", "tiny"])
    p.add_argument("--corpus", default=None, help="corpus directory or manifest (default: the profile's)")
    p.add_argument("--cells", help="custom grid: comma-separated cells")
    p.add_argument("--layers", dest="layers_list", help="custom grid: comma-separated depths")
    p.add_argument("--residual", dest="residual_list", default="false", help="custom grid: e.g. false,true")
    p.add_argument("--rerun", action="store_true", help="train finished runs again")
    _add_run_options(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("results", help="print a study's results as the paper's table")
    p.add_argument("--study", default="table1")
    p.add_argument("--storage", default="data/runs")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--ingest", action="store_true", help="also write the runs and epoch metrics into the store")
    p.add_argument("--store", default=None, help="the DuckDB store (default: $GATELENS_STORE or data/gatelens.duckdb)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("up", help="start a local Ray head with the dashboard (wraps ray start --head)")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--num-cpus", type=int, default=None)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the local Ray head (wraps ray stop)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("export-posteriors", help="write a checkpoint's log-likelihoods as a Kaldi ark",
                       description="Log posteriors minus scaled log state priors (pseudo log-likelihoods, as "
                                   "nnet3-compute with priors writes) for decoding with Kaldi graphs.")
    p.add_argument("checkpoint", help="a model.pt or a checkpoint directory holding one")
    p.add_argument("--out", required=True, help="output ark path (an .scp is written beside it)")
    p.add_argument("--split", default="test")
    p.add_argument("--corpus", default=None, help="corpus (default: the checkpoint's training corpus)")
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--utterances", type=int, default=None)
    p.set_defaults(func=cmd_export_posteriors)

    from analyses.cli import add_parsers as add_analysis_parsers
    from cluster.capture import add_capture_parser
    from service.scheduler import add_watch_parser
    from service.sql import add_sql_parser

    add_capture_parser(sub)
    add_sql_parser(sub)
    add_analysis_parsers(sub)  # analyse, claims, report
    add_watch_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.data.kaldi import CorpusError
    from cluster.models.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CorpusError, CheckpointError, FileNotFoundError) as e:
        print(f"gatelens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gatelens {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

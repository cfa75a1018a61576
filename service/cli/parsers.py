"""Every ``gatelens`` sub-command's parser, and the options they share, defined once.

This module imports nothing heavy (no torch, Ray, DuckDB or polars), so ``gatelens --help`` and a
mistyped argument answer at once; each sub-command names its handler as ``"module:function"``,
imported only when that command runs.
"""

from __future__ import annotations

import argparse
import os
import re

from cluster.studies import PROFILES

DEFAULT_STORE = "data/gatelens.duckdb"
DEFAULT_STORAGE = "data/runs"
DEFAULT_CORPUS = "data/corpus"
CELLS = ("lstm", "gru", "lstm_lazy", "lstm_fused")  # cluster.models.CELLS (tests check they agree)

EXIT_CODES = """exit status:
  0  ok
  1  error (a failed task or run; the message says what failed)
  2  refused or bad input: the file, utterance, argument or statement at fault is named; nothing was changed
  3  busy: another process holds the store; try again

environment:
  GATELENS_STORE    the store file (default %s)
  GATELENS_STORAGE  training storage: runs and checkpoints (default %s)
  GATELENS_CORPUS   the corpus that train, grid and corpus use (default %s)
""" % (DEFAULT_STORE, DEFAULT_STORAGE, DEFAULT_CORPUS)


# ---------------------------------------------------------------------------------------------
# Numbers: checked when parsed, before anything is opened (argparse says which argument is wrong)


def _number(kind, low: float, inclusive: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (value >= low if inclusive else value > low) or value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'at least' if inclusive else 'more than'} {low}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


positive_int, count = _number(int, 1, True), _number(int, 0, True)
positive_float, nonnegative_float = _number(float, 0, False), _number(float, 0, True)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 1..65535")
    return value


def host_name(text: str) -> str:
    """An IP address or host name (no scheme, path or port)."""
    if not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or IP address")
    return text


def seed_list(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): distinct non-negative integers."""
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: distinct non-negative integers")
    return seeds


def name(text: str) -> str:
    """A study or run name: it becomes a folder, so no separators, no '..', nothing hidden."""
    for part in text.split(","):  # --study takes comma-separated names
        if not _NAME.match(part) or ".." in part:
            raise argparse.ArgumentTypeError(f"{part!r}: a name is letters, digits and . _ - (at most 100), "
                                             f"starting with a letter or digit")
    return text


# ---------------------------------------------------------------------------------------------
# Shared options


def add_store(p: argparse.ArgumentParser, what: str = "the DuckDB store") -> None:
    p.add_argument("--store", default=os.environ.get("GATELENS_STORE", DEFAULT_STORE),
                   help=f"{what} (default: $GATELENS_STORE or {DEFAULT_STORE})")


def add_storage(p: argparse.ArgumentParser, what: str = "where runs and checkpoints are") -> None:
    p.add_argument("--storage", default=os.environ.get("GATELENS_STORAGE", DEFAULT_STORAGE),
                   help=f"{what} (default: $GATELENS_STORAGE or {DEFAULT_STORAGE})")


def add_corpus(p: argparse.ArgumentParser, override: bool = False) -> None:
    """``--corpus``: the corpus to train on, or (``override``) one to use instead of each
    checkpoint's own training corpus."""
    if override:
        p.add_argument("--corpus", default=None,
                       help="corpus directory or manifest (default: the one each checkpoint was trained on)")
    else:
        p.add_argument("--corpus", default=os.environ.get("GATELENS_CORPUS", DEFAULT_CORPUS),
                       help=f"corpus directory or manifest (default: $GATELENS_CORPUS or {DEFAULT_CORPUS})")
    p.add_argument("--allow-pipes", action="store_true",
                   help="let Kaldi pipes ('cmd |') in the corpus's scp files run; the manifest must say "
                        "allow_pipes = true as well (default: refused)")


def _command(sub, handler: str, name: str, *, study: bool = False, **kwargs) -> argparse.ArgumentParser:
    """A sub-command whose handler (``"module:function"``) is imported only when it runs."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(handler=handler)
    if study:
        _add_study_options(p)
    return p


def _add_run_options(p: argparse.ArgumentParser) -> None:
    add_storage(p, "where runs and checkpoints go")
    p.add_argument("--workers", type=positive_int, default=None, help="Ray Train workers per run (ScalingConfig)")
    p.add_argument("--gpus-per-worker", type=nonnegative_float, default=None, help="GPUs per worker (0: CPU, gloo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option, e.g. --set lr=0.002 --set batch_size=32")
    add_store(p, "the store that receives runs and epoch metrics")


def _add_study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", action="append", default=[], type=name,
                   help="study name (repeatable, or comma-separated)")
    add_storage(p)
    add_store(p)
    p.add_argument("--out", help="figures and report folder (default: data/reports/<study>)")
    p.add_argument("--set", action="append", default=[], metavar="ANALYSIS.KEY=VALUE",
                   help="analysis parameter, e.g. --set temporal_trace.utterances=5 --set memory_robustness.snr_db=5")
    p.add_argument("--utterances", type=positive_int, default=500, help="utterances a capture summarises (default: %(default)s)")
    p.add_argument("--sample", type=count, default=3,
                   help="utterances a capture keeps whole, for the temporal trace (default: %(default)s)")
    p.add_argument("--rule", action="append", default=[], help="irregularity rule for captures (default: the paper's)")
    add_corpus(p, override=True)
    p.add_argument("--rerun", action="store_true", help="run analyses again even when up to date")


# ---------------------------------------------------------------------------------------------
# The commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatelens", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train gated recurrent acoustic models on Ray, capture and query what their units do.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "service.cli.corpus:cmd_corpus", "corpus",
                 help="generate the embedded eSpeak corpus, import your own, or check a Kaldi-format corpus",
                 description="`gatelens corpus --out DIR` synthesises the embedded corpus as Kaldi data directories; "
                             "`gatelens corpus import --from lhotse|textgrid|timit|ctm SOURCE --out DIR` writes the "
                             "same layout from your own aligned speech; "
                             "`gatelens corpus check MANIFEST` validates a corpus (embedded or a real Kaldi setup).")
    p.add_argument("action", nargs="?", choices=["build", "import", "check"], default="build",
                   help="build (default), import or check")
    p.add_argument("manifest", nargs="?", metavar="PATH",
                   help="for check: corpus directory or manifest (.json/.toml); for import: the source (lhotse "
                        "manifest file or folder, folder of TextGrids, TIMIT folder, or CTM file)")
    p.add_argument("--out", default=None,
                   help=f"output directory (default for build: $GATELENS_CORPUS or {DEFAULT_CORPUS}; import needs it)")
    # nargs="+": `corpus import --from KIND SOURCE` (argparse gives the optional positional SOURCE no
    # value after an option), and `corpus import SOURCE --from KIND` too
    p.add_argument("--from", dest="source_kind", nargs="+", metavar=("KIND", "SOURCE"),
                   help="for import: the source's format (lhotse, textgrid, timit or ctm), then the source")
    p.add_argument("--phone-map", help="for import: two-column file SOURCE_LABEL TARGET_PHONE, looked up first")
    p.add_argument("--splits", help="for import: train,dev,test percentages of utterances, split by speaker "
                                    "(default: the source's own splits, else 80,10,10)")
    p.add_argument("--audio", help="for import --from textgrid: the folder of the audio (MFA's input corpus; "
                                   "default: beside the TextGrids)")
    p.add_argument("--data", help="for import --from ctm: the Kaldi data dir with wav.scp, segments, utt2spk, text "
                                  "(default: the CTM's folder)")
    p.add_argument("--timit-keep-sa", action="store_true", help="for import --from timit: keep the SA sentences")
    p.add_argument("--utterances", type=positive_int, default=3000, help="utterances over all splits (default: %(default)s)")
    p.add_argument("--seed", type=count, default=0, help="seed: same seed, same bytes (default: %(default)s)")
    p.add_argument("--shard-size", type=positive_int, default=500, help="utterances per Ray task (default: %(default)s)")
    p.add_argument("--keep-wavs", choices=["none", "test", "all"], default="test",
                   help="store 16 kHz wavs (for noise analyses) for these splits (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus once the new one is complete")
    p.add_argument("--reuse", action="store_true",
                   help="keep an existing corpus of the same seed and size instead of regenerating it")
    p.add_argument("--skip-unaligned", action="store_true",
                   help="for check: use only utterances with both features and alignments")
    p.add_argument("--json", action="store_true", help="for check: print the summary as JSON")
    p.add_argument("--allow-pipes", action="store_true",
                   help="for check: let Kaldi pipes in scp files run (the manifest must say allow_pipes = true too)")

    p = _command(sub, "service.cli.runs:cmd_train", "train", help="train one model on Ray Train",
                 description="Train one acoustic model (TorchTrainer; DDP over --workers).")
    add_corpus(p)
    p.add_argument("--cell", default="lstm", choices=CELLS)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--residual", action="store_true", help="shortcut connections (Sec. 5.2)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--name", type=name, help="run name (default: from the configuration)")
    _add_run_options(p)
    p.set_defaults(workers=1, gpus_per_worker=0.0)

    p = _command(sub, "service.cli.runs:cmd_grid", "grid", help="run a study (the paper's tables) on Ray Tune",
                 description="Run the trials of a study: table1 (LSTM/GRU x depth), table2 (lazy update), table3 "
                             "(residual), or a custom grid (--cells/--layers/--residual).")
    p.add_argument("--study", default="table1", type=name, help="table1, table2, table3, or a name for a custom grid")
    p.add_argument("--profile", default="demo", choices=list(PROFILES))
    add_corpus(p)
    p.add_argument("--cells", help="custom grid: comma-separated cells")
    p.add_argument("--layers", dest="layers_list", help="custom grid: comma-separated depths")
    p.add_argument("--residual", dest="residual_list", default="false", help="custom grid: e.g. false,true")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="train every grid point once per seed, e.g. 0,1,2 (default: the profile's seeds)")
    p.add_argument("--rerun", action="store_true", help="train finished runs again")
    _add_run_options(p)

    p = _command(sub, "service.cli.runs:cmd_results", "results", help="print a study's results as the paper's table")
    p.add_argument("--study", default="table1", type=name)
    add_storage(p)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--ingest", action="store_true", help="also write the runs and epoch metrics into the store")
    p.add_argument("--per-seed", action="store_true",
                   help="one row per run instead of each grid point's mean over seeds with its 95%% interval")
    add_store(p)

    p = _command(sub, "service.cli.head:cmd_up", "up",
                 help="start a local Ray head with the dashboard (wraps ray start --head)")
    p.add_argument("--port", type=positive_int, default=6379)
    p.add_argument("--dashboard-port", type=positive_int, default=8265)
    p.add_argument("--num-cpus", type=positive_int, default=None)
    p.add_argument("--block", action="store_true", help="stay in the foreground; Ctrl-C stops the head")

    p = _command(sub, "service.cli.head:cmd_down", "down", help="stop the local Ray head (wraps ray stop)")
    p.add_argument("--force", action="store_true")

    p = _command(sub, "service.cli.runs:cmd_export_posteriors", "export-posteriors",
                 help="write a checkpoint's log-likelihoods as a Kaldi ark",
                 description="Log posteriors minus scaled log state priors (pseudo log-likelihoods, as nnet3-compute "
                             "with priors writes) for decoding with Kaldi graphs.")
    p.add_argument("checkpoint", help="a model.pt or a checkpoint directory holding one")
    p.add_argument("--out", required=True, help="output ark path (an .scp is written beside it)")
    p.add_argument("--split", default="test")
    add_corpus(p, override=True)
    p.add_argument("--prior-scale", type=nonnegative_float, default=1.0)
    p.add_argument("--utterances", type=positive_int, default=None)

    p = _command(sub, "service.cli.capture:cmd_capture", "capture",
                 help="run a checkpoint with capture and store per-unit summaries",
                 description="Run CHECKPOINT over utterances of a split as sharded Ray tasks, summarise the values c, "
                             "m, i, f, o, g of every unit (histograms, moments, range shares, per-phone irregularity) "
                             "and write them to the store, replacing the checkpoint's earlier capture.")
    p.add_argument("checkpoint", help="model file or checkpoint directory (holding model.pt)")
    add_corpus(p, override=True)
    p.add_argument("--split", default="test", help="split to capture on (default: %(default)s)")
    p.add_argument("--utterances", type=positive_int, default=500, help="utterances (default: %(default)s, as the paper)")
    p.add_argument("--rule", action="append", default=[], metavar="RULE",
                   help="irregularity rule, repeatable: abs>10, abs<0.5, pct>99, pct<5 "
                        "(default: abs>10 for LSTM, abs<0.5 for GRU, Sec. 4.2)")
    p.add_argument("--sample", type=count, default=0,
                   help="keep the per-frame values of this many utterances as a raw sample (default: %(default)s)")
    p.add_argument("--shards", type=positive_int, help="Ray tasks (default: one per CPU of the cluster)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="utterances per forward pass (default: %(default)s)")
    p.add_argument("--max-frames", type=positive_int, default=4096,
                   help="padded frames per forward pass: bounds each task's memory (default: %(default)s)")
    p.add_argument("--seed", type=count, default=0,
                   help="which utterances, when the split has more (default: %(default)s)")
    p.add_argument("--checkpoint-id", help="id in the store (default: <arch>-<layers>x<hidden>-<sha256 prefix>)")
    add_store(p)

    p = _command(sub, "service.cli.sql:cmd_sql", "sql", help="run a read-only SQL query on the store",
                 description="Run one read-only SQL statement on the store (DuckDB SQL). The query comes from the "
                             "argument, from --file, or from stdin. Writes, ATTACH, COPY, INSTALL/LOAD, settings and "
                             "multiple statements are refused.")
    p.add_argument("query", nargs="?", help="the SQL statement ('-' or omitted: read stdin)")
    p.add_argument("-f", "--file", help="read the statement from this file")
    add_store(p)
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                   help="output format (default: %(default)s)")
    p.add_argument("--out", help="write the result to this file instead of stdout (required for parquet on a terminal)")
    p.add_argument("--max-rows", type=positive_int, default=100, help="rows shown by --format table (default: %(default)s)")
    p.add_argument("--wait", type=nonnegative_float, default=10.0,
                   help="seconds to wait while a writer holds the store (default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds a query may run before it is stopped (default: %(default)s)")
    p.add_argument("--memory-limit", default="2GB",
                   help="memory a query may use, as DuckDB writes it, e.g. 500MB, 4GB (default: %(default)s)")

    p = _command(sub, "service.cli.sql:cmd_migrate", "migrate",
                 help="bring an older store up to this version's schema",
                 description="Apply the named migrations the store lacks (any writing command does this too), or with "
                             "--status list them.")
    add_store(p)
    p.add_argument("--status", action="store_true", help="list applied and pending migrations; change nothing")

    p = _command(sub, "service.cli.analyses:cmd_analyse", "analyse", study=True,
                 help="run a study's analyses (the paper's figures) as parallel Ray tasks",
                 description="Capture each finished run's final checkpoint if the store lacks it, then run every "
                             "registered analysis (Figs. 1-8, 10; Tables 1-3) as Ray tasks; the driver writes the "
                             "rows to the store.")
    p.add_argument("--analyses", action="append", default=[],
                   help="only these (comma-separated; names as `gatelens analyse --list` prints; default: all)")
    p.add_argument("--list", action="store_true", help="list the registered analyses and exit")

    p = _command(sub, "service.cli.analyses:cmd_claims", "claims", study=True,
                 help="check the paper's findings against the stored numbers",
                 description="Print each of the paper's claims (its sentence, or 'ours' and why) with the numbers "
                             "measured on the study's checkpoints and trial results, its 95 % interval over seeds, "
                             "one-sided and Holm-adjusted p-values, its margin, its verdicts at neighbouring "
                             "thresholds, and a verdict: holds / contradicted / no effect / undecided / not "
                             "measured; sanity checks apart.")
    p.add_argument("--format", choices=["text", "json"], default="text")

    p = _command(sub, "service.cli.analyses:cmd_report", "report", study=True,
                 help="write a study's static HTML report (figures, tables, claims, stamps)",
                 description="Run the study's missing captures and analyses, then write one HTML page with the "
                             "paper's tables, the claims and every figure; it opens from disk.")
    p.add_argument("--no-analyse", action="store_true", help="draw only what the store already holds")
    p.add_argument("--claims", action="store_true", help="also print the claims (as `gatelens claims` does)")

    p = _command(sub, "service.cli.watch:cmd_watch", "watch",
                 help="analyse every new checkpoint: a scheduler on the Ray cluster",
                 description="Run capture, analyses and ingest for every checkpoint in the training storage that "
                             "lacks a current-version analysis; --every deploys a detached actor on the running "
                             "cluster (or loops here when none is running).")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--every", help="interval between passes, e.g. 10m")
    mode.add_argument("--once", action="store_true", help="one pass in this process")
    mode.add_argument("--status", action="store_true", help="last pass, pending and failed checkpoints")
    mode.add_argument("--stop", action="store_true", help="stop the running watcher")
    add_storage(p, "training storage to watch")
    add_store(p)
    p.add_argument("--figures", default="data/figures", help="where figures go (default: %(default)s)")
    p.add_argument("--utterances", type=positive_int, default=500, help="utterances captured per checkpoint")
    p.add_argument("--settle", type=nonnegative_float, default=10.0, help="seconds a file must be unchanged before it is read")
    p.add_argument("--analyses", help="comma-separated subset of the analyses")
    add_corpus(p, override=True)

    p = _command(sub, "service.cli.explore:cmd_explore", "explore",
                 help="the unit explorer: an interactive web app on Ray Serve",
                 description="Deploy the unit explorer (claims -> units -> frames -> audio) as a Ray Serve "
                             "application on the running cluster and print its URL, or start a local cluster "
                             "and serve until interrupted; --stop removes it.")
    add_store(p)
    add_storage(p, "training storage: the studies whose runs and claims the overview shows")
    p.add_argument("--corpus", default=None,
                   help="corpus directory or manifest (default: the one each checkpoint was trained on)")
    p.add_argument("--report", default="data/reports", help="report folder whose figures may be served (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", type=host_name, help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", default=8000, type=port_number, help="HTTP port (default: %(default)s)")
    p.add_argument("--utterances", type=positive_int, default=40,
                   help="probe utterances per checkpoint, where top frames and matches are searched (default: %(default)s)")
    p.add_argument("--stop", action="store_true", help="remove the explorer from the running cluster")
    return parser

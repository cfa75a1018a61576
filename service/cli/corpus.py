"""``gatelens corpus``: build the embedded corpus, import one (``cluster.data.importers``), or check any corpus."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cluster.data.embedded import describe, prepare_embedded
from cluster.data.kaldi import check_corpus
from cluster.errors import InputError
from service.cli.console import quiet_ray
from service.cli.parsers import DEFAULT_CORPUS


def _progress_shards(done: int, total: int, elapsed: float) -> None:
    print(f"  shard {done}/{total} done ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _check(args)
    if args.action == "import":
        return _import(args)
    out = Path(args.out or os.environ.get("GATELENS_CORPUS", DEFAULT_CORPUS))
    if args.reuse and (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        gen = manifest.get("generator", {})
        if (gen.get("seed"), gen.get("utterances"), gen.get("shard_size")) == (args.seed, args.utterances, args.shard_size):
            print(describe(manifest, out) + "\n  (reused: same seed and size; --overwrite regenerates)")
            return 0
        print(f"{out} holds a corpus of another seed or size; regenerating", file=sys.stderr)
        args.overwrite = True
    print(f"generating {args.utterances} utterances (seed {args.seed}) into {out} ...", file=sys.stderr, flush=True)
    quiet_ray(out.resolve().parent / "logs", "corpus")
    manifest = prepare_embedded(out, args.utterances, args.seed, shard_size=args.shard_size,
                                keep_wavs=args.keep_wavs, overwrite=args.overwrite, progress=_progress_shards)
    print(describe(manifest, out))
    return 0


def _check(args: argparse.Namespace) -> int:
    if not args.manifest:
        raise InputError("give the corpus directory or manifest file: gatelens corpus check DIR")

    def progress(split: str, k: int, n: int) -> None:
        if k == n or k % 500 == 0:
            print(f"  {split}: {k}/{n} utterances checked", file=sys.stderr, flush=True)

    summary = check_corpus(args.manifest, skip_unaligned=args.skip_unaligned or None, progress=progress,
                           allow_pipes=args.allow_pipes)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"corpus {summary['name']} ({summary['manifest']}): OK")
    print(f"  {summary['phones']} phones, {summary['num_targets']} targets, feature dim {summary['feat_dim']}")
    for name, s in summary["splits"].items():
        skipped = f", {s['skipped']} skipped (unaligned)" if s["skipped"] else ""
        print(f"  {name:5s} {s['utterances']:7d} utts {s['speakers']:5d} speakers {s['frames']:10d} frames "
              f"{s['hours']:8.3f} h, {s['targets_seen']} targets seen{skipped}")
    return 0


def _import(args: argparse.Namespace) -> int:
    # deferred: the importers load lhotse, praatio and soundfile, which build and check do not need
    from cluster.data.importers import ImportOptions, describe, plan_import
    from cluster.data.importers.splits import parse_shares
    from cluster.data.importers.writer import write_corpus

    given = [*(args.source_kind or []), *([args.manifest] if args.manifest else [])]
    if len(given) != 2 or not args.out:
        raise InputError("usage: gatelens corpus import --from lhotse|textgrid|timit|ctm SOURCE --out DIR")
    kind, source = given
    shares = parse_shares(args.splits) if args.splits else None
    out = Path(args.out)
    print(f"importing {kind} {source} into {out} ...", file=sys.stderr, flush=True)
    plan = plan_import(kind, source, out, phone_map=args.phone_map, shares=shares, seed=args.seed,
                       audio_root=args.audio, data=args.data, keep_sa=args.timit_keep_sa)
    log = quiet_ray(out.resolve().parent / "logs", "corpus-import")
    options = ImportOptions(seed=args.seed, keep_wavs=args.keep_wavs, shard_size=args.shard_size,
                            overwrite=args.overwrite)
    try:
        manifest = write_corpus(plan, out, options, progress=_progress_shards)
    except InputError:  # refused audio: the console said why, and a refused import leaves nothing behind
        log.unlink(missing_ok=True)
        if not any(log.parent.iterdir()):
            log.parent.rmdir()
        raise
    print(describe(manifest, out))
    return 0

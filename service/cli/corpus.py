"""``gatelens corpus``: build the embedded corpus, or check any corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster.data.embedded import describe, prepare_embedded
from cluster.data.kaldi import check_corpus
from cluster.errors import InputError
from service.cli.console import quiet_ray


def _progress_shards(done: int, total: int, elapsed: float) -> None:
    print(f"  shard {done}/{total} done ({elapsed:.1f} s)", file=sys.stderr, flush=True)


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _check(args)
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

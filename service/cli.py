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
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.data.kaldi import CorpusError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CorpusError as e:
        print(f"gatelens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gatelens {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``gatelens capture``: one checkpoint through the capture, into the store."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from cluster.capture import CaptureConfig, capture, describe, plan_capture
from cluster.errors import InputError
from cluster.models.checkpoint import model_file
from cluster.summaries import SUMMARY_VERSION, IrregularityRule
from cluster.tables import CAPTURE
from service.store import Store, StoreError, check_id


def cmd_capture(args: argparse.Namespace) -> int:
    store = Store(args.store)
    config = CaptureConfig(checkpoint=args.checkpoint, corpus=args.corpus, split=args.split,
                           utterances=args.utterances, rules=tuple(args.rule), sample=args.sample,
                           shards=args.shards, batch_size=args.batch_size, max_frames=args.max_frames, seed=args.seed,
                           checkpoint_id=args.checkpoint_id, allow_pipes=args.allow_pipes)
    for r in config.rules:
        try:
            IrregularityRule.parse(r)
        except ValueError as e:
            raise InputError(str(e)) from None

    def progress(label, done, total, elapsed):
        print(f"  {label}: shard {done}/{total} done ({elapsed:.1f} s)", file=sys.stderr, flush=True)

    if config.checkpoint_id is not None:
        check_id(config.checkpoint_id, "--checkpoint-id")
    plan = plan_capture(config)  # everything that can refuse the request, before the store is touched
    config.checkpoint_id = plan.checkpoint_id
    print(f"capturing {model_file(args.checkpoint)} as {config.checkpoint_id} on {args.utterances} "
          f"{args.split} utterances ...", file=sys.stderr, flush=True)
    # The log says "running" while the tasks run, "failed" with the error if they fail.
    store.log_started(config.checkpoint_id, CAPTURE, SUMMARY_VERSION, params=asdict(config))
    try:
        result = capture(config, progress, plan)
        written = store.ingest(result.checkpoint_id, CAPTURE, SUMMARY_VERSION, result.frames, params=result.params,
                               sample=result.sample, checkpoint=result.checkpoint_row)
    except Exception as e:
        if not isinstance(e, StoreError):
            store.log_failed(config.checkpoint_id, CAPTURE, SUMMARY_VERSION, f"{type(e).__name__}: {e}")
        raise
    s = result.summary
    print(f"checkpoint {result.checkpoint_id}: {s.utterances} utterances, {s.frames} frames, "
          f"{result.seconds:.1f} s ({s.frames / max(result.seconds, 1e-9):.0f} frames/s)")
    print(f"  store {store.path}: " + ", ".join(f"{n} {t} rows" for t, n in written.items())
          + (f"; raw sample of {len(result.params['sample'])} utterances" if result.sample is not None else ""))
    print(describe(result))
    return 0

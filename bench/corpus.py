"""Real-time factor of embedded-corpus generation.

Prints the audio-seconds per wall-second of (a) eSpeak synthesis alone in this process (the
baseline, measured in the same run because these machines are noisy) and (b) the whole pipeline
(synthesis, alignment, resampling, fbank, Kaldi archives) as sharded Ray tasks, and their ratio.

    .venv/bin/python bench/corpus.py [--utterances 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cluster.data.embedded import plan, prepare_embedded
from cluster.data.espeak import SAMPLE_RATE, Synthesizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=2000)
    ap.add_argument("--baseline-utterances", type=int, default=300)
    args = ap.parse_args()

    synth = Synthesizer.get()
    items = plan(args.baseline_utterances, seed=0)
    t0 = time.perf_counter()
    samples = sum(len(synth.speak(p.sentence, p.voice).audio) for p in items)
    base_s = time.perf_counter() - t0
    base_rtf = samples / SAMPLE_RATE / base_s

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = prepare_embedded(Path(tmp) / "c", utterances=args.utterances, seed=0)
        wall = time.perf_counter() - t0
    audio_s = sum(s["hours"] for s in m["splits"].values()) * 3600
    rtf = audio_s / wall
    print(f"eSpeak alone, 1 process : {base_rtf:8.0f}x real time ({args.baseline_utterances} utts, {base_s:.1f} s)")
    print(f"full pipeline, Ray tasks: {rtf:8.0f}x real time ({args.utterances} utts, {audio_s / 3600:.2f} h "
          f"audio, {wall:.1f} s incl. Ray start)")
    print(f"ratio pipeline / eSpeak-alone: {rtf / base_rtf:.2f}")


if __name__ == "__main__":
    main()

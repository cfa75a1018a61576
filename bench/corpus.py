"""Real-time factors of embedded-corpus generation and of ``corpus import`` from each source.

Generation: the audio-seconds per wall-second of (a) eSpeak synthesis alone in this process (the
baseline, measured in the same run because these machines are noisy) and (b) the whole pipeline
(synthesis, alignment, resampling, fbank, Kaldi archives) as sharded Ray tasks, and their ratio.

Import: the same audio (an embedded corpus of ``--import-utterances`` with all its wavs) written as
lhotse manifests, MFA TextGrids, a TIMIT folder (NIST SPHERE) and a Kaldi CTM (the test suite's
writers), then imported from each as Ray tasks (reading, checks, features, archives, ``corpus check``).
Baseline: reading those wavs and computing their fbank features in this process, in the same run.

    .venv/bin/python bench/corpus.py [--utterances 2000] [--import-utterances 300] [--only import]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sys

from cluster.data.embedded import plan, prepare_embedded
from cluster.data.espeak import SAMPLE_RATE, Synthesizer

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # the source writers of the importer tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=2000)
    ap.add_argument("--baseline-utterances", type=int, default=300)
    ap.add_argument("--import-utterances", type=int, default=300)
    ap.add_argument("--only", choices=["generate", "import"])
    args = ap.parse_args()
    if args.only != "generate":
        bench_import(args.import_utterances)
    if args.only == "import":
        return

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


def bench_import(utterances: int) -> None:
    import shutil

    import ray
    import soundfile as sf

    import import_sources as S
    from cluster.data import features as F
    from cluster.data.importers import ImportOptions, import_corpus

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare_embedded(root / "embedded", utterances=utterances, seed=0, keep_wavs="all")
        utts = S.embedded_utterances(root / "embedded", ["train", "dev", "test"])
        audio_s = sum(u.samples for u in utts) / F.SAMPLE_RATE
        t0 = time.perf_counter()
        for u in utts:
            F.fbank(sf.read(u.wav, dtype="float64")[0] * 32768.0, F.dither_seed(0, u.utt_id))
        base_rtf = audio_s / (time.perf_counter() - t0)
        timit, _ = S.write_timit(utts, root / "timit")
        sources = {"lhotse": (S.write_lhotse(utts, root / "lhotse"), {}),
                   "textgrid": (S.write_textgrids(utts, root / "mfa", flac_44k=0), {}),
                   "timit": (timit, {}),
                   "ctm": (S.write_ctm(utts, root / "kaldi"), {"data": root / "kaldi"})}
        print(f"import: {len(utts)} utterances, {audio_s / 60:.1f} min of audio; baseline (read wav + fbank, "
              f"1 process): {base_rtf:.0f}x real time")
        for kind, (src, kw) in sources.items():
            t0 = time.perf_counter()
            m = import_corpus(kind, src, root / f"out-{kind}", options=ImportOptions(keep_wavs="test"), **kw)
            wall = time.perf_counter() - t0
            got = sum(s["hours"] for s in m["splits"].values()) * 3600
            rtf = got / wall
            print(f"  {kind:8s}: {rtf:6.0f}x real time ({got / 60:.1f} min imported in {wall:.1f} s, Ray tasks on 2 "
                  f"CPUs); ratio to baseline {rtf / base_rtf:.2f}")
            shutil.rmtree(root / f"out-{kind}")
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Source corpora in the four real formats, written by the formats' own libraries from the embedded
corpus's audio and phone timings: lhotse's API writes the manifests, praatio the TextGrids, soundfile
the NIST SPHERE and flac files, and the TIMIT and CTM text files are written in their own units
(samples, seconds). ``assert_frames_match`` compares an imported corpus with the embedded one.

The phone timings are read back from the embedded test split's frame labels (``segments_from_frames``),
so a faithful importer gives every frame the same phone and each state within one frame."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.data import phones as P
from cluster.data.kaldi import read_corpus, read_scp

VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}


@dataclass(frozen=True)
class Utt:
    utt_id: str
    speaker: str
    wav: Path
    samples: int
    text: str
    segments: list[tuple[str, float, float]]  # ARPAbet-39 / SIL, seconds
    targets: np.ndarray  # the embedded corpus's frame targets
    loose: frozenset[int]  # frames whose state no segmentation gives back (compared by phone only)

    def words(self) -> list[tuple[str, float, float]]:
        """Word intervals for the fixtures: the transcript's words laid over the speech runs in order
        (the embedded corpus has no word timings; these only need to be well-formed)."""
        speech = [s for s in self.segments if s[0] != P.SIL]
        words = self.text.split()[:len(speech)]
        groups = np.array_split(np.arange(len(speech)), len(words))
        return [(w, speech[g[0]][1], speech[g[-1]][2]) for w, g in zip(words, groups)]


def segments_from_frames(phones: np.ndarray, targets: np.ndarray, duration: float, symbols: list[str], steps: int = 20):
    """Phone segments (symbol, start s, end s) that give back exactly these frame labels.

    A segment starts where the phone changes or its state falls back. Its start lies between the centres
    of the frames either side; within that 10 ms window the boundaries are chosen (a Viterbi pass over
    ``steps`` candidates per boundary) so that every frame's state, the third of its segment the centre
    falls in, comes out as the embedded corpus has it.
    """
    states = targets - (phones - 1) * P.STATES_PER_PHONE
    starts = [t for t in range(len(phones)) if t == 0 or phones[t] != phones[t - 1] or states[t] < states[t - 1]]
    centre = lambda t: t * 0.01 + 0.0125  # noqa: E731
    cands = [np.array([0.0])] + [centre(f - 1) + 0.01 * (np.arange(steps) + 0.5) / steps for f in starts[1:]]
    cands.append(np.array([duration]))
    ok_prev = np.ones(1, dtype=bool)
    back, loose = [], set()
    for k, f0 in enumerate(starts):
        f1 = starts[k + 1] if k + 1 < len(starts) else len(phones)
        c = centre(np.arange(f0, f1))
        a, b = cands[k][:, None, None], cands[k + 1][None, :, None]
        got = np.clip(((c - a) / np.maximum(b - a, 1e-9) * P.STATES_PER_PHONE).astype(int), 0, 2)
        fits = (got == states[f0:f1]).all(axis=2) & ok_prev[:, None] & (b[..., 0] > a[..., 0])
        if not fits.any():
            # the embedded corpus labels frames outside its first and last events, and frames in the
            # rare gap where eSpeak's events run backwards, with the phone's clipped state, which no
            # contiguous segmentation gives back; such frames are compared by phone only
            loose.update(range(f0, f1))
            fits = ok_prev[:, None] & (b[..., 0] > a[..., 0])
        back.append(fits.argmax(axis=0))
        ok_prev = fits.any(axis=0)
    j = int(np.argmax(ok_prev))
    bounds = [float(cands[-1][j])]
    for k in range(len(starts) - 1, -1, -1):
        j = int(back[k][j])
        bounds.append(float(cands[k][j]))
    bounds = bounds[::-1]
    return [(symbols[phones[t]], bounds[k], bounds[k + 1]) for k, t in enumerate(starts)], loose


def embedded_utterances(corpus_dir: Path, splits: list[str]) -> list[Utt]:
    """The utterances of these splits of an embedded corpus that kept its wavs, with their timings."""
    import soundfile as sf

    corpus = read_corpus(corpus_dir)
    out = []
    for name in splits:
        split = corpus.split(name)
        wavs = read_scp(corpus.path(split.spec["wav"]), corpus.root)
        texts = dict(line.split(" ", 1) for line in corpus.path(split.spec["text"]).read_text().splitlines())
        for utt_id in split.utt_ids:
            ali = split.alignments[utt_id]
            n = sf.info(wavs[utt_id]).frames
            segments, loose = segments_from_frames(ali.phones, ali.targets, n / 16000, corpus.phones)
            out.append(Utt(utt_id, split.utt2spk[utt_id], Path(wavs[utt_id]), n, texts[utt_id], segments,
                           ali.targets, frozenset(loose)))
    return out


def speaker_splits(utts: list[Utt]) -> dict[str, str]:
    """The fixtures' own splits (for sources that carry them): two speakers each for dev and test."""
    speakers = sorted({u.speaker for u in utts})
    return {s: "dev" if k < 2 else "test" if k < 4 else "train" for k, s in enumerate(speakers)}


def stressed(p: str, k: int) -> str:
    return f"{p}{k % 3}" if p in VOWELS else p


# ------------------------------------------------------------------------------------------ lhotse

def write_lhotse(utts: list[Utt], folder: Path, cuts: bool = False, long: bool = False) -> Path:
    """``embedded_{recordings,supervisions}_{split}.jsonl.gz`` (or one CutSet file with ``cuts``); with
    ``long``, each speaker's utterances are supervisions at their offsets in one recording of them all."""
    import soundfile as sf
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    folder.mkdir(parents=True, exist_ok=True)
    split_of = speaker_splits(utts)
    recs, sups, offsets = {}, {}, {}
    if long:
        for spk in sorted({u.speaker for u in utts}):
            mine = [u for u in utts if u.speaker == spk]
            path = folder / f"rec-{spk}.wav"
            sf.write(path, np.concatenate([sf.read(u.wav, dtype="int16")[0] for u in mine]), 16000, subtype="PCM_16")
            recs.setdefault(split_of[spk], []).append(Recording.from_file(path, recording_id=f"rec-{spk}"))
            t = 0
            for u in mine:
                offsets[u.utt_id] = (f"rec-{spk}", t / 16000)
                t += u.samples
    for u in utts:
        if not long:
            recs.setdefault(split_of[u.speaker], []).append(Recording.from_file(u.wav, recording_id=u.utt_id))
        rec_id, t0 = offsets.get(u.utt_id, (u.utt_id, 0.0))
        phones = [AlignmentItem("sp" if p == P.SIL and 0 < k < len(u.segments) - 1 else
                                "sil" if p == P.SIL else stressed(p, k), t0 + a, round(b - a, 6))
                  for k, (p, a, b) in enumerate(u.segments)]
        words = [AlignmentItem(w, t0 + a, round(b - a, 6)) for w, a, b in u.words()]
        sup = SupervisionSegment(u.utt_id, rec_id, t0, u.samples / 16000, channel=0, text=u.text, speaker=u.speaker,
                                 alignment={"phone": phones, "word": words})
        sups.setdefault(split_of[u.speaker], []).append(sup)
    if cuts:
        path = folder / "cuts.jsonl.gz"
        CutSet.from_manifests(recordings=RecordingSet.from_recordings([r for rs in recs.values() for r in rs]),
                              supervisions=SupervisionSet.from_segments([s for ss in sups.values() for s in ss])
                              ).to_file(path)
        return path
    for split in recs:
        RecordingSet.from_recordings(recs[split]).to_file(folder / f"embedded_recordings_{split}.jsonl.gz")
        SupervisionSet.from_segments(sups[split]).to_file(folder / f"embedded_supervisions_{split}.jsonl.gz")
    return folder


# ------------------------------------------------------------------------------------------ TextGrid

def write_textgrids(utts: list[Utt], folder: Path, flac_44k: int = 2) -> Path:
    """MFA's layout: speaker sub-folders, .TextGrid beside .wav; the first ``flac_44k`` as 44.1 kHz flac."""
    import soundfile as sf
    import soxr
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    for k, u in enumerate(utts):
        d = folder / u.speaker
        d.mkdir(parents=True, exist_ok=True)
        if k < flac_44k:
            x, _ = sf.read(u.wav, dtype="float64")
            sf.write(d / f"{u.utt_id}.flac", soxr.resample(x, 16000, 44100), 44100, subtype="PCM_16")
        else:
            shutil.copy(u.wav, d / f"{u.utt_id}.wav")
        end = u.samples / 16000
        # MFA leaves silence as empty intervals; a short pause inside as "sp"
        phones = [Interval(a, b, ("" if j in (0, len(u.segments) - 1) else "sp") if p == P.SIL else stressed(p, j))
                  for j, (p, a, b) in enumerate(u.segments)]
        tg = textgrid.Textgrid()
        tg.addTier(textgrid.IntervalTier("words", [Interval(a, b, w.lower()) for w, a, b in u.words()], 0, end))
        tg.addTier(textgrid.IntervalTier("phones", [iv for iv in phones if iv.label], 0, end))
        tg.save(str(d / f"{u.utt_id}.TextGrid"), format="long_textgrid", includeBlankSpaces=True)
    return folder


# ------------------------------------------------------------------------------------------ TIMIT

TIMIT_SPEAKERS = {"dev": ["FAKS0", "MGWT0"], "test": ["MDAB0", "FELC0"]}


def write_timit(utts: list[Utt], folder: Path) -> tuple[Path, dict[str, str]]:
    """TRAIN/TEST/DRn/SPEAKER/SENTENCE.{WAV (NIST SPHERE; the first RIFF, .WAV.wav), PHN, WRD, TXT};
    returns the folder and imported id -> embedded id. Dev and test speakers take names from the standard
    lists; one extra TEST speaker outside both and one SA sentence are written too, and must be left out."""
    import soundfile as sf

    split_of = speaker_splits(utts)
    names, taken = {}, {"dev": 0, "test": 0}
    for s in sorted({u.speaker for u in utts}):
        if split_of[s] == "train":
            names[s] = ("TRAIN", f"MTR{len(names):03d}")
        else:
            names[s] = ("TEST", TIMIT_SPEAKERS[split_of[s]][taken[split_of[s]]])
            taken[split_of[s]] += 1
    ids = {}

    def sentence(u: Utt, part: str, spk: str, sent: str, riff: bool = False) -> None:
        d = folder / part / "DR1" / spk
        d.mkdir(parents=True, exist_ok=True)
        x, _ = sf.read(u.wav, dtype="int16")
        if riff:  # as some re-distributions ship TIMIT
            sf.write(d / f"{sent}.WAV.wav", x, 16000, subtype="PCM_16")
        else:
            sf.write(d / f"{sent}.WAV", x, 16000, format="NIST", subtype="PCM_16")
        labels = []
        for j, (p, a, b) in enumerate(u.segments):
            lab = ("h#" if j in (0, len(u.segments) - 1) else "pau") if p == P.SIL else p.lower()
            labels.append(f"{round(a * 16000)} {round(b * 16000)} {lab}\n")
        (d / f"{sent}.PHN").write_text("".join(labels))
        (d / f"{sent}.WRD").write_text("".join(f"{round(a * 16000)} {round(b * 16000)} {w.lower()}\n"
                                               for w, a, b in u.words()))
        (d / f"{sent}.TXT").write_text(f"0 {u.samples} {u.text.capitalize()}.\n")

    for k, u in enumerate(utts):
        part, spk = names[u.speaker]
        sentence(u, part, spk, f"SX{100 + k}", riff=k == 0)
        ids[f"{spk}-SX{100 + k}"] = u.utt_id
    sentence(utts[0], names[utts[0].speaker][0], names[utts[0].speaker][1], "SA1")
    sentence(utts[1], "TEST", "MZZZ0", "SI999")  # a TEST speaker in neither list
    return folder, ids


# ------------------------------------------------------------------------------------------ CTM

def write_ctm(utts: list[Utt], folder: Path) -> Path:
    """A Kaldi data dir where each speaker's utterances are spans of one recording (``segments``), and an
    utterance-level phone CTM with word-position suffixes (``AH1_B``), as ali-to-phones --ctm-output writes."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    by_spk: dict[str, list[Utt]] = {}
    for u in utts:
        by_spk.setdefault(u.speaker, []).append(u)
    wav_scp, segments, ctm = [], [], []
    for spk, us in sorted(by_spk.items()):
        waves, t = [], 0.0
        for u in us:
            x, _ = sf.read(u.wav, dtype="int16")
            segments.append(f"{u.utt_id} rec-{spk} {t:.4f} {t + u.samples / 16000:.4f}\n")
            waves.append(x)
            t += u.samples / 16000
            for j, (p, a, b) in enumerate(u.segments):
                lab = "SIL" if p == P.SIL else f"{stressed(p, j)}_{'BIES'[j % 4]}"
                ctm.append(f"{u.utt_id} 1 {a:.4f} {b - a:.4f} {lab}\n")
        sf.write(folder / f"rec-{spk}.wav", np.concatenate(waves), 16000, subtype="PCM_16")
        wav_scp.append(f"rec-{spk} {folder / f'rec-{spk}.wav'}\n")
    (folder / "wav.scp").write_text("".join(wav_scp))
    (folder / "segments").write_text("".join(segments))
    (folder / "utt2spk").write_text("".join(f"{u.utt_id} {u.speaker}\n" for u in utts))
    (folder / "text").write_text("".join(f"{u.utt_id} {u.text}\n" for u in utts))
    (folder / "phones.ctm").write_text("".join(ctm))
    return folder / "phones.ctm"


# ------------------------------------------------------------------------------------------ checks

def frame_labels(symbols: list[str], phones: np.ndarray, targets: np.ndarray) -> list[tuple[str, int]]:
    return [(symbols[p], int(t - (p - 1) * P.STATES_PER_PHONE)) for p, t in zip(phones, targets)]


def assert_frames_match(corpus_dir: Path, utts: list[Utt], ids: dict[str, str] | None = None, fold=lambda p: p) -> int:
    """Every imported utterance against the embedded one: the same phone (folded) at every frame, and
    each (phone, state) target within one frame of the embedded one's. Returns the utterances compared."""
    corpus = read_corpus(corpus_dir)
    emb = {u.utt_id: u for u in utts}
    n = 0
    for name in corpus.split_names:
        for utt_id, ali in corpus.split(name).alignments.items():
            u = emb[(ids or {}).get(utt_id, utt_id)]
            got = frame_labels(corpus.phones, ali.phones, ali.targets)
            want_phones = u.targets // P.STATES_PER_PHONE + 1
            want = [(fold(p), s) for p, s in frame_labels(["<eps>", *P.PHONES], want_phones, u.targets)]
            assert abs(len(got) - len(want)) <= 1, (utt_id, len(got), len(want))
            t_max = min(len(got), len(want))
            assert [g[0] for g in got[:t_max]] == [w[0] for w in want[:t_max]], utt_id
            for t in set(range(t_max)) - u.loose:
                assert got[t] in want[max(0, t - 1):t + 2], (utt_id, t, got[t], want[max(0, t - 1):t + 2])
            n += 1
    return n


def import_cli(args: list) -> int:
    from service.cli import main

    return main(["corpus", "import", *[str(a) for a in args]])


def capture_trained(run_dir: Path):
    """A capture of a trained run's last checkpoint, on its own corpus's test split."""
    from cluster.capture import CaptureConfig, capture

    checkpoint = sorted(run_dir.glob("checkpoint_*/model.pt"))[-1]
    return capture(CaptureConfig(checkpoint=str(checkpoint), split="test", utterances=2, shards=1, batch_size=2))

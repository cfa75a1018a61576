"""TIMIT as the LDC ships it: ``{TRAIN,TEST}/DR*/SPEAKER/SENTENCE.{WAV,PHN,WRD,TXT}``.

``.WAV`` is NIST SPHERE (the LDC discs) or RIFF (some re-distributions, also named ``.WAV.wav``);
soundfile (libsndfile) reads both, so no SPHERE reader is written here. ``.PHN`` / ``.WRD`` lines are
``START END LABEL`` in samples of the file's own rate; ``.TXT`` is ``START END transcript``.

Splits are the standard ones: train = TRAIN without the two SA sentences every speaker reads (they
would be 1/5 of the training set, the same two texts); dev = the 50 TEST speakers of the Kaldi TIMIT
recipe's ``dev_spk.list``; test = the 24-speaker core test set; TEST's other 94 speakers are left out,
as that recipe does. Phones fold 61 -> 39 (``phonesets``).
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from cluster.data.importers.source import Audio, Interval, SourceUtterance
from cluster.data.kaldi import CorpusError

CORE_TEST = set("""mdab0 mwbt0 felc0 mtas1 mwew0 fpas0 mjmp0 mlnt0 fpkt0 mlll0 mtls0 fjlm0 mbpm0 mklt0 fnlp0
mcmj0 mjdh0 fmgd0 mgrt0 mnjm0 fdhc0 mjln0 mpam0 fmld0""".split())
DEV = set("""faks0 fdac1 fjem0 mgwt0 mjar0 mmdb1 mmdm2 mpdf0 fcmh0 fkms0 mbdg0 mbwm0 mcsh0 fadg0 fdms0 fedw0
mgjf0 mglb0 mrtk0 mtaa0 mtdt0 mthc0 mwjg0 fnmr0 frew0 fsem0 mbns0 mmjr0 mdls0 mdlf0 mdvc0 mers0 fmah0 fdrw0
mrcs0 mrjm4 fcal1 mmwh0 fjsj0 majc0 mjsw0 mreb0 fgjd0 fjmg0 mroa0 mteb0 mjfc0 mrjr0 fmml0 mrws1""".split())


def _find(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for name in (stem + suffix, stem + suffix.lower(), stem.lower() + suffix.lower()):
            if (folder / name).is_file():
                return folder / name
    return None


def read_intervals(path: Path, rate: int) -> tuple[Interval, ...]:
    """``START END LABEL`` lines in samples -> seconds; a malformed line is refused with its number."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            raise CorpusError(f"{path}:{n}: expected 'START END LABEL' in samples, got {line!r}")
        out.append(Interval(parts[2], int(parts[0]) / rate, int(parts[1]) / rate))
    return tuple(out)


def _rate(wav: Path, utt_id: str) -> int:
    try:
        return int(sf.info(str(wav)).samplerate)
    except Exception as e:
        raise CorpusError(f"{wav}: utterance {utt_id}: cannot read audio: {type(e).__name__}: {e}") from None


def read_timit(root: str | Path, keep_sa: bool = False) -> tuple[list[SourceUtterance], list[str]]:
    """Every sentence under ``root`` with its split (None: a TEST speaker outside dev and core test);
    returns the utterances and notes for the summary."""
    root = Path(root)
    parts = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    if "train" not in parts or "test" not in parts:
        raise CorpusError(f"{root}: not a TIMIT folder (expected TRAIN/ and TEST/ with DR1..DR8/SPEAKER/ inside)")
    utts, left_out, sa = [], set(), 0
    for part in ("train", "test"):
        for phn in sorted(parts[part].glob("*/*/*")):
            if phn.suffix.lower() != ".phn" or not phn.is_file():
                continue
            speaker, sentence = phn.parent.name.upper(), phn.stem.upper()
            if sentence.startswith("SA") and not keep_sa:
                sa += 1
                continue
            utt_id = f"{speaker}-{sentence}"
            wav = _find(phn.parent, phn.stem, (".WAV.wav", ".WAV"))
            if wav is None:
                raise CorpusError(f"{phn}: utterance {utt_id}: no audio beside it ({phn.stem}.WAV)")
            rate = _rate(wav, utt_id)
            wrd, txt = _find(phn.parent, phn.stem, (".WRD",)), _find(phn.parent, phn.stem, (".TXT",))
            words = read_intervals(wrd, rate) if wrd else None
            if txt:
                text = " ".join(txt.read_text(encoding="utf-8", errors="replace").split()[2:])
            else:
                text = " ".join(w.label for w in words or ())
            if part == "train":
                split = "train"
            else:
                split = "test" if speaker.lower() in CORE_TEST else "dev" if speaker.lower() in DEV else None
            if split is None:
                left_out.add(speaker)
            utts.append(SourceUtterance(utt_id, speaker, text, Audio(str(wav)), read_intervals(phn, rate), words,
                                        str(phn), split))
    if not utts:
        raise CorpusError(f"{root}: no .PHN files under TRAIN/*/*/ or TEST/*/*/")
    notes = [f"SA sentences left out: {sa}" if sa else "SA sentences kept"]
    if left_out:
        notes.append(f"TEST speakers outside the dev list and the core test set left out: {len(left_out)}")
    return utts, notes

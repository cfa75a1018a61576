"""Source phone labels -> the corpus's phone set, with every silence and noise label mapped explicitly.

Two built-in sets, chosen by the source:

- ``arpabet``: ARPAbet-39 + SIL, the embedded corpus's set (``cluster/data/phones.py``). Stress digits
  are folded (``AH0``, ``AH1`` -> ``AH``), Kaldi's word-position suffixes dropped (``AH1_B`` -> ``AH``),
  case ignored. MFA's ``english_us_arpa`` models, CMUdict-based lhotse alignments and Kaldi phone CTMs
  of ARPAbet lexicons map without a ``--phone-map``.
- ``timit``: TIMIT's 61 labels folded to 39 (Lee & Hon 1989, as the Kaldi TIMIT recipe's
  ``phones.60-48-39.map``): closures, pauses and epenthetic silence become SIL; the glottal stop ``q``
  has no class there and is merged into the phone before it (``fold_q``).

Silence and noise labels, the same for both: ``sil``, ``sp`` (MFA's short pause), ``spn`` (spoken
noise: MFA's and Kaldi's out-of-vocabulary phone), ``<eps>`` and the empty label -> SIL.

A ``--phone-map`` file (two columns, ``SOURCE TARGET``, ``#`` comments) is looked up first, on the
label exactly as the source writes it; a target outside the built-in set adds a phone to the corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cluster.data import phones as P
from cluster.data.kaldi import CorpusError

SILENCE_LABELS = {"": P.SIL, "sil": P.SIL, "sp": P.SIL, "spn": P.SIL, "<eps>": P.SIL}
_ARPABET = {p.lower(): p for p in P.ARPABET39}
_KALDI_POSITION = re.compile(r"_[beis]$")  # on the lower-cased label
_STRESS = re.compile(r"[012]$")

# TIMIT 61 -> 39 (Lee & Hon 1989). Symbols upper-cased so that the set reads like ARPAbet; DX stays a
# phone of its own, AO folds into AA and ZH into SH, as the 39-class scoring convention has it.
TIMIT_61_TO_39 = {
    "aa": "AA", "ao": "AA", "ae": "AE", "ah": "AH", "ax": "AH", "ax-h": "AH", "aw": "AW", "ay": "AY",
    "axr": "ER", "er": "ER", "b": "B", "ch": "CH", "d": "D", "dh": "DH", "dx": "DX", "eh": "EH",
    "el": "L", "l": "L", "em": "M", "m": "M", "en": "N", "n": "N", "nx": "N", "eng": "NG", "ng": "NG",
    "ey": "EY", "f": "F", "g": "G", "hh": "HH", "hv": "HH", "ih": "IH", "ix": "IH", "iy": "IY",
    "jh": "JH", "k": "K", "ow": "OW", "oy": "OY", "p": "P", "r": "R", "s": "S", "sh": "SH", "zh": "SH",
    "t": "T", "th": "TH", "uh": "UH", "uw": "UW", "ux": "UW", "v": "V", "w": "W", "y": "Y", "z": "Z",
    "bcl": P.SIL, "dcl": P.SIL, "gcl": P.SIL, "pcl": P.SIL, "tcl": P.SIL, "kcl": P.SIL,
    "h#": P.SIL, "pau": P.SIL, "epi": P.SIL,
}
TIMIT_MERGED = "q"  # no class of its own: its span joins the phone before it (or after, at the start)
TIMIT39 = [P.SIL] + sorted(set(TIMIT_61_TO_39.values()) - {P.SIL})

PHONE_SETS = {"arpabet": "ARPAbet-39 + SIL", "timit": "TIMIT 61 -> 39 (Lee & Hon 1989)"}


def read_phone_map(path: str | Path) -> dict[str, str]:
    """A two-column ``SOURCE TARGET`` file; every malformed line is refused with its number."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: phone map not found")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise CorpusError(f"{path}:{n}: expected 'SOURCE TARGET' (two columns), got {line!r}")
        if parts[1] in ("<eps>", "#0") or parts[1].startswith("#"):
            raise CorpusError(f"{path}:{n}: {parts[1]!r} is reserved in a Kaldi phone table; map to a phone or SIL")
        if parts[0] in out and out[parts[0]] != parts[1]:
            raise CorpusError(f"{path}:{n}: {parts[0]!r} is mapped twice ({out[parts[0]]!r} and {parts[1]!r})")
        out[parts[0]] = parts[1]
    if not out:
        raise CorpusError(f"{path}: phone map is empty")
    return out


@dataclass
class PhoneSet:
    """The target inventory and the mapping into it; ``symbols`` are phones.txt ids 1.. in order."""

    name: str  # arpabet | timit
    user_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in PHONE_SETS:
            raise CorpusError(f"phone set {self.name!r}: one of {', '.join(PHONE_SETS)}")
        base = P.PHONES if self.name == "arpabet" else TIMIT39
        extra = sorted(set(self.user_map.values()) - set(base))
        self.symbols = [*base, *extra]
        self.ids = {s: i + 1 for i, s in enumerate(self.symbols)}

    @property
    def description(self) -> str:
        return PHONE_SETS[self.name] + (f", {len(self.user_map)} labels from --phone-map" if self.user_map else "")

    def map(self, label: str) -> str | None:
        """The target symbol of a source label, ``""`` for TIMIT's merged ``q``, None when unmapped."""
        if label in self.user_map:
            return self.user_map[label]
        low = label.strip().lower()
        if self.name == "timit":
            if low == TIMIT_MERGED:
                return ""
            return SILENCE_LABELS.get(low) or TIMIT_61_TO_39.get(low)
        low = _KALDI_POSITION.sub("", low)  # Kaldi gives silence phones position suffixes too
        return SILENCE_LABELS.get(low) or _ARPABET.get(_STRESS.sub("", low))

    def phones_txt(self) -> str:
        return "".join(f"{s} {i}\n" for s, i in [("<eps>", 0), *self.ids.items()])

"""The phone inventory: eSpeak NG en-us mnemonics -> ARPAbet-39 + SIL, and frame targets.

The mapping is the table in ``shared/notes.md`` ("eSpeak en-us phonemes -> ARPAbet-39 + SIL"),
extended with the accent-voice symbols measured there. Stress marks (' , and 1.52's prefixes)
are stripped before lookup. Targets are 3 states per phone (first, middle and last third of a
phone segment), the phone-aligned stand-in for the paper's 3,377 tied GMM states.
"""

from __future__ import annotations

ARPABET39 = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
    "UH UW V W Y Z ZH"
).split()
SIL = "SIL"
# Kaldi symbol tables reserve 0 for <eps>; phones are numbered from 1 as ali-to-phones writes them.
PHONES = [SIL, *ARPABET39]
PHONE_ID = {p: i + 1 for i, p in enumerate(PHONES)}
STATES_PER_PHONE = 3
NUM_TARGETS = len(PHONES) * STATES_PER_PHONE

_ONE_TO_ONE = {
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "tS": "CH", "dZ": "JH",
    "f": "F", "v": "V", "T": "TH", "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH",
    "m": "M", "n": "N", "N": "NG", "l": "L", "r": "R", "w": "W", "j": "Y",
    "i:": "IY", "i": "IY", "I": "IH", "I2": "IH", "I#": "IH", "e": "EH", "E": "EH",
    "a": "AE", "aa": "AE", "a#": "AH", "V": "AH", "@": "AH", "@2": "AH", "@5": "AH", "@-": "AH",
    "A:": "AA", "0": "AA", "O:": "AO", "O": "AO", "O2": "AO", "3": "ER", "3:": "ER",
    "U": "UH", "u:": "UW", "eI": "EY", "aI": "AY", "aU": "AW", "oU": "OW", "OI": "OY",
    "t#": "T", "t2": "T", "?": "T", "d#": "D", "n-": "N", "m-": "M", "l-": "L", "r-": "R",
    # accent voices and rare symbols (notes: 'x' had no entry; the velar fricative is nearest HH)
    "aI2": "AY", "t[": "T", "w#": "W", "x": "HH", "_|": SIL,
    "_": SIL, "_:": SIL, "_!": SIL, "_^_": SIL,
}
_TWO_PHONES = {
    "@L": ("AH", "L"), "A@": ("AA", "R"), "O@": ("AO", "R"), "o@": ("AO", "R"), "e@": ("EH", "R"),
    "i@": ("IH", "R"), "i@3": ("IH", "R"), "U@": ("UH", "R"), "aI@": ("AY", "ER"), "aI3": ("AY", "ER"),
    "aU@": ("AW", "ER"), "IR": ("IH", "R"), "VR": ("AH", "R"),
}
LINK = ";"  # a linking mark, not a phone: its span belongs to the segment before it
UNVOICED_STOPS = {"p", "t", "k", "t2", "t#"}


def strip_stress(mnemonic: str) -> str:
    return mnemonic.lstrip("',")


def to_arpabet(mnemonic: str) -> tuple[str, ...]:
    """ARPAbet phones for one eSpeak phoneme event (one or two), or KeyError for an unknown symbol."""
    m = strip_stress(mnemonic)
    if m in _ONE_TO_ONE:
        return (_ONE_TO_ONE[m],)
    return _TWO_PHONES[m]


def target_id(phone_id: int, state: int) -> int:
    """Frame target (pdf) id of ``state`` (0, 1, 2) of a phone; phone ids start at 1."""
    return (phone_id - 1) * STATES_PER_PHONE + state


def phones_txt() -> str:
    """The Kaldi symbol table, ``<eps> 0`` first."""
    return "".join(f"{s} {i}\n" for s, i in [("<eps>", 0), *PHONE_ID.items()])

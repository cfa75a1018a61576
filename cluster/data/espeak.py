"""eSpeak NG through ``espeakng-loader``: audio plus the synthesiser's own phoneme events.

Hand-written ctypes because no maintained Python binding exposes phoneme *events* with their
exact sample index (py-espeak-ng shells out to the CLI; phonemizer returns text only). The
struct layout is the x86_64 ``espeak_EVENT`` measured in ``shared/notes.md``.

eSpeak keeps state between utterances inside one process (Klatt voices' filters), so the waveform
depends on what the process synthesised before; and its noise generator is clock-seeded unless set
(``espeak_ng_SetRandSeed``, done per utterance here). Callers that need bit-identical output synthesise a fixed list in a
fresh process (see ``cluster.data.embedded``).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import espeakng_loader
import numpy as np

SAMPLE_RATE = 22050
_SYNCHRONOUS = 2
_PHONEME_EVENTS, _DONT_EXIT = 0x0001, 0x8000
_EV_END_OF_LIST, _EV_PHONEME = 0, 7
_CHARS_UTF8, _POS_CHARACTER = 1, 1
PARAM = {"rate": 1, "pitch": 3, "range": 4}


_libc = ctypes.CDLL(None)


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class SynthesisError(RuntimeError):
    pass


@dataclass(frozen=True)
class Voice:
    """One speaker: an en-us voice variant with its pitch (0-99), pitch range (0-99) and rate (wpm)."""

    variant: str
    pitch: int
    range: int
    rate: int


@dataclass
class Spoken:
    audio: np.ndarray  # int16 at SAMPLE_RATE
    events: list[tuple[str, int]]  # (eSpeak mnemonic, sample index where it starts)


class Synthesizer:
    """One eSpeak engine per process (the library is a process-wide singleton)."""

    _lock = threading.Lock()
    _instance: "Synthesizer | None" = None

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        rate = self._lib.espeak_Initialize(
            _SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _PHONEME_EVENTS | _DONT_EXIT
        )
        if rate != SAMPLE_RATE:
            raise SynthesisError(f"espeak_Initialize returned {rate}, expected {SAMPLE_RATE} Hz")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: eSpeak holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "Synthesizer":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EV_END_OF_LIST:
            ev = events[i]
            if ev.type == _EV_PHONEME:
                self._events.append((ev.id.split(b"\0")[0].decode("latin-1"), int(ev.sample)))
            i += 1
        return 0

    def speak(self, text: str, voice: Voice, rand_seed: int = 0) -> Spoken:
        """Synthesise ``text``. eSpeak's breath noise draws from its own PRNG, which it seeds from
        the clock, and Klatt voices' frication from libc ``rand()``: both are seeded per utterance.
        libc's generator is process-wide, so no other thread of the process may draw from it
        meanwhile, and Klatt voices carry filter state across utterances: bit-identical corpora
        therefore synthesise in a fresh single-threaded process (``cluster.data.embedded``).
        """
        lib = self._lib
        lib.espeak_ng_SetRandSeed(ctypes.c_long(rand_seed))
        _libc.srand(ctypes.c_uint(rand_seed & 0xFFFFFFFF))  # Klatt's noise source calls libc rand()
        if lib.espeak_SetVoiceByName(f"en-us+{voice.variant}".encode()) != 0:
            raise SynthesisError(f"eSpeak has no voice en-us+{voice.variant}")
        for name in ("rate", "pitch", "range"):
            lib.espeak_SetParameter(PARAM[name], int(getattr(voice, name)), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0 or not self._chunks:
            raise SynthesisError(f"eSpeak failed (code {err}) on {text!r} with {voice}")
        return Spoken(np.concatenate(self._chunks), self._events)

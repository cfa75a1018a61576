"""Rebuild ``sentences.txt`` from Debian's ``fortunes`` and ``fortunes-min`` packages.

Not run at install time: the filtered list is committed so that installs stay pip-only.
Kept so the list can be regenerated and audited (``apt-get install fortunes fortunes-min``).

Filter: split each fortune into sentences; keep those of 4-14 words made only of letters,
apostrophes and light punctuation (no digits, no symbols eSpeak would read out as words,
no all-caps shouting, no attributions), deduplicate case-insensitively, sort for stable order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FORTUNE_DIR = Path("/usr/share/games/fortunes")
OUT = Path(__file__).with_name("sentences.txt")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_CLEAN = re.compile(r"^[A-Z][A-Za-z' ,;:\-]*[A-Za-z][.!?]$")


def fortunes(names: list[str]) -> list[str]:
    out = []
    for name in names:
        text = (FORTUNE_DIR / name).read_text(encoding="utf-8", errors="replace")
        out += [" ".join(block.split()) for block in text.split("\n%\n")]
    return out


def sentences(fortune: str) -> list[str]:
    # Attributions ("-- Mark Twain") would be read out as part of the sentence; quotes are silent.
    fortune = fortune.split(" -- ")[0].replace('"', "").replace("`", "").replace("``", "")
    keep = []
    for s in _SENT_SPLIT.split(fortune):
        words = s.split()
        if 4 <= len(words) <= 14 and _CLEAN.match(s) and not any(w.isupper() and len(w) > 1 for w in words):
            keep.append(s)
    return keep


def main() -> None:
    names = sorted(p.name for p in FORTUNE_DIR.iterdir() if p.is_file() and not p.suffix and not p.is_symlink())
    seen: dict[str, str] = {}
    for f in fortunes(names):
        for s in sentences(f):
            seen.setdefault(s.lower(), s)
    lines = sorted(seen.values())
    header = [
        "# English sentences for the embedded corpus.",
        "# Source: Debian packages fortunes + fortunes-min (BSD-licensed fortune text),",
        f"# files: {', '.join(names)}.",
        "# Filtered by cluster/data/make_sentences.py: 4-14 words, letters and light punctuation only.",
    ]
    OUT.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} sentences -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()

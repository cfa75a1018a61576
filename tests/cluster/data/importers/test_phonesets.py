"""Phone-set folding: ARPAbet stress and Kaldi position suffixes, silence and noise labels, TIMIT 61 -> 39."""

from __future__ import annotations

import pytest

from cluster.data import phones as P
from cluster.data.importers.phonesets import TIMIT_61_TO_39, PhoneSet, read_phone_map
from cluster.data.kaldi import CorpusError


def test_arpabet_folds_stress_position_and_case_and_maps_silence_explicitly():
    s = PhoneSet("arpabet")
    assert s.symbols == P.PHONES and s.phones_txt() == P.phones_txt()
    for label, want in (("AH0", "AH"), ("ah1", "AH"), ("ER2_B", "ER"), ("T_E", "T"), ("ZH", "ZH"),
                        ("sil", "SIL"), ("SIL_S", "SIL"), ("sp", "SIL"), ("spn", "SIL"), ("", "SIL"), ("<eps>", "SIL")):
        assert s.map(label) == want, label
    for label in ("AX", "DX", "h#", "AH3", "ɑ"):
        assert s.map(label) is None, label


def test_timit_folds_61_labels_to_39_classes_and_merges_q():
    s = PhoneSet("timit")
    assert len(set(TIMIT_61_TO_39)) == 60 and len(s.symbols) == 39 and s.symbols[0] == "SIL"
    for label, want in (("ao", "AA"), ("zh", "SH"), ("ax-h", "AH"), ("axr", "ER"), ("hv", "HH"), ("ix", "IH"),
                        ("el", "L"), ("em", "M"), ("en", "N"), ("nx", "N"), ("eng", "NG"), ("ux", "UW"),
                        ("bcl", "SIL"), ("kcl", "SIL"), ("h#", "SIL"), ("pau", "SIL"), ("epi", "SIL"), ("dx", "DX")):
        assert s.map(label) == want, label
    assert s.map("q") == "" and s.map("AH0") is None


def test_a_phone_map_is_looked_up_first_and_may_add_phones():
    s = PhoneSet("arpabet", {"spn": "SPN", "ɑ": "AA"})
    assert s.map("spn") == "SPN" and s.map("ɑ") == "AA" and s.symbols == [*P.PHONES, "SPN"]
    assert s.ids["SPN"] == len(P.PHONES) + 1


def test_phone_map_files_are_checked_line_by_line(tmp_path):
    path = tmp_path / "map"
    for text, what in (("a b c\n", ":1: expected 'SOURCE TARGET'"), ("x SIL\nx AA\n", ":2: 'x' is mapped twice"),
                       ("x <eps>\n", "reserved"), ("# only a comment\n", "phone map is empty")):
        path.write_text(text)
        with pytest.raises(CorpusError, match=what):
            read_phone_map(path)
    path.write_text("x SIL  # silence\ny AA\n")
    assert read_phone_map(path) == {"x": "SIL", "y": "AA"}

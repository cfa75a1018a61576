"""The embedded corpus, generated for real with eSpeak on a local Ray cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cluster.data import embedded as E
from cluster.data import phones as P
from cluster.data.features import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE, Segment, fbank, frame_labels
from cluster.data.kaldi import CorpusError, read_corpus
from cluster.errors import InputError

pytestmark = pytest.mark.slow


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(small_corpus, tmp_path):
    again = tmp_path / "again"
    E.prepare_embedded(again, utterances=120, seed=7, shard_size=40)
    a, b = _files(small_corpus), _files(again)
    assert a.keys() == b.keys()
    differing = [name for name in a if a[name] != b[name]]
    assert not differing, f"files differ between two runs with one seed: {differing[:5]}"
    other = tmp_path / "other"
    E.prepare_embedded(other, utterances=120, seed=8, shard_size=40)
    assert _files(other)["train/feats.scp"] != a["train/feats.scp"]


def test_one_label_per_frame_and_targets_are_phone_states(small_corpus):
    corpus = read_corpus(small_corpus)
    for name in ("train", "dev", "test"):
        for utt in corpus.split(name):
            assert utt.feats.shape[1] == 40 and utt.feats.dtype == np.float32
            assert len(utt.phones) == len(utt.targets) == len(utt.feats)
            assert np.isfinite(utt.feats).all()
            # target = 3 * (phone - 1) + state, so the phone is recoverable from the target
            assert np.array_equal(utt.targets // P.STATES_PER_PHONE + 1, utt.phones)


def test_phone_inventory_covers_what_espeak_produced(small_corpus):
    corpus = read_corpus(small_corpus)
    assert corpus.phones[1:] == P.PHONES and corpus.num_targets == 120
    seen = set()
    for utt in corpus.split("train"):
        seen.update(corpus.phones[i] for i in np.unique(utt.phones))
    assert seen <= set(P.PHONES)
    assert len(seen) >= 38, f"only {sorted(seen)} occur in training"
    manifest = json.loads((small_corpus / "manifest.json").read_text())
    assert set(manifest["generator"]["phone_frames"]) == set(P.PHONES)


def _words(text_file: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text_file.read_text().splitlines())


def test_splits_share_no_sentence_and_test_voices_are_unseen(small_corpus):
    texts = {s: set(_words(small_corpus / s / "text").values()) for s in E.SPLITS}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"] and not texts["dev"] & texts["test"]
    voice = {s: {spk.rsplit("-", 1)[0] for spk in (line.split()[0] for line in (small_corpus / s / "spk2utt").read_text().splitlines())}
             for s in E.SPLITS}
    assert voice["train"] and not voice["train"] & voice["test"] and not voice["train"] & voice["dev"]
    # utt2spk / spk2utt agree and utterance ids carry their speaker as prefix (Kaldi sorting rule)
    utt2spk = dict(line.split() for line in (small_corpus / "train" / "utt2spk").read_text().splitlines())
    assert all(u.startswith(s + "-") for u, s in utt2spk.items())
    spk2utt = {line.split()[0]: line.split()[1:] for line in (small_corpus / "train" / "spk2utt").read_text().splitlines()}
    assert sorted(u for us in spk2utt.values() for u in us) == sorted(utt2spk)


def test_plan_keeps_sentences_inside_their_split_at_any_size():
    planned = E.plan(20000, seed=3)  # more utterances than sentences: the pools must cycle, not leak
    by_split = {s: {p.sentence for p in planned if p.split == s} for s in E.SPLITS}
    assert not by_split["train"] & by_split["dev"] and not by_split["train"] & by_split["test"]
    assert [p.utt_id for p in planned] == [p.utt_id for p in E.plan(20000, seed=3)]
    with pytest.raises(InputError, match="at least 3"):
        E.plan(2, seed=0)


def test_stored_wav_recomputes_the_stored_features(small_corpus):
    from scipy.io import wavfile

    from cluster.data.features import dither_seed

    corpus = read_corpus(small_corpus)
    utt = next(iter(corpus.split("test")))
    rate, wave = wavfile.read(small_corpus / "test" / "wav" / f"{utt.utt_id}.wav")
    assert rate == SAMPLE_RATE
    assert np.array_equal(fbank(wave, dither_seed(7, utt.utt_id)), utt.feats)
    assert not (small_corpus / "train" / "wav.scp").exists()


def test_cmvn_stats_are_the_training_set_moments(small_corpus):
    corpus = read_corpus(small_corpus)
    stacked = np.concatenate([u.feats for u in corpus.split("train")]).astype(np.float64)
    np.testing.assert_allclose(corpus.cmvn_mean, stacked.mean(0), rtol=1e-5)
    np.testing.assert_allclose(corpus.cmvn_std, stacked.std(0), rtol=1e-4)
    ident = corpus.identity
    assert ident["num_targets"] == 120 and len(ident["cmvn_mean"]) == 40 and len(ident["manifest_sha256"]) == 64


def test_existing_corpus_is_not_replaced_without_overwrite(small_corpus):
    before = _files(small_corpus)
    with pytest.raises(CorpusError, match="already exists"):
        E.prepare_embedded(small_corpus, utterances=30, seed=1)
    assert _files(small_corpus) == before
    assert not list(small_corpus.parent.glob(".embedded.tmp-*"))


# ------------------------------------------------------------------ alignment from eSpeak events

def test_stop_closure_moves_back_to_the_start_of_the_zero_run():
    audio = np.ones(4000, dtype=np.int16)
    audio[1000:1900] = 0  # closure: exact zeros before the burst at 1900
    events = [("a", 0), ("t", 1900), ("@", 2500), ("_", 4000)]
    segs = E.segments_from_events(audio, events, "u1")
    assert [s.phone for s in segs] == ["AE", "T", "AH"]
    assert segs[1].start == pytest.approx(1000 / 22050) and segs[0].end == pytest.approx(1000 / 22050)


def test_linking_mark_merges_and_two_phone_symbols_split_at_the_midpoint():
    audio = np.ones(3000, dtype=np.int16)
    segs = E.segments_from_events(audio, [("n", 0), (";", 500), ("@L", 1000), ("'aI@", 2000)], "u1")
    assert [s.phone for s in segs] == ["N", "AH", "L", "AY", "ER"]
    assert segs[0].end == pytest.approx(1000 / 22050)
    assert segs[1].end == pytest.approx(1500 / 22050) == segs[2].start


def test_unknown_espeak_symbol_names_the_utterance():
    with pytest.raises(CorpusError, match=r"utt-9.*'Q7'"):
        E.segments_from_events(np.ones(100, dtype=np.int16), [("Q7", 0)], "utt-9")


def test_frame_states_are_thirds_of_each_phone_segment():
    # one 0.3 s phone then one 0.09 s phone; frame centres at 12.5, 22.5, ... ms
    segs = [Segment("AA", 0.0, 0.3), Segment("B", 0.3, 0.39)]
    n = 1 + (int(0.39 * SAMPLE_RATE) - FRAME_LENGTH) // FRAME_SHIFT
    phones, states = frame_labels(segs, n, P.PHONE_ID)
    centres = np.arange(n) * 0.01 + 0.0125
    assert np.array_equal(phones, np.where(centres < 0.3, P.PHONE_ID["AA"], P.PHONE_ID["B"]))
    expected = np.where(centres < 0.3, (centres / 0.1).astype(int), ((centres - 0.3) / 0.03).astype(int))
    assert np.array_equal(states, np.clip(expected, 0, 2))


def test_kaldi_text_is_upper_case_words():
    assert E.kaldi_text("It's not easy, being green.") == "IT'S NOT EASY BEING GREEN"
    assert re.fullmatch(r"[A-Z' ]+", E.kaldi_text("Don't come looking for me -- ever!"))

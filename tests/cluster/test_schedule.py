"""Early stopping with a minimum gain and Kaldi's newbob: pure functions of the dev curve."""

from __future__ import annotations

import pytest

from cluster.schedule import gain, newbob, newbob_stop_epoch, should_stop, stop_epoch


def test_plain_patience_is_epochs_without_a_better_dev_accuracy():
    accs = [0.50, 0.60, 0.59, 0.58]
    assert not should_stop(accs[:3], patience=2)
    assert should_stop(accs, patience=2)  # two epochs below the 0.60 of epoch 2
    assert not should_stop([0.50, 0.60, 0.59, 0.61], patience=2)
    assert stop_epoch(accs, patience=2) == 4


def test_a_gain_under_min_delta_points_stops_where_plain_patience_goes_on():
    creeping = [0.70, 0.75, 0.770, 0.773, 0.7755, 0.776]  # still improving, by < 0.3 points an epoch
    assert stop_epoch(creeping, patience=1) is None  # plain patience: never (the cap stops it)
    assert stop_epoch(creeping, patience=1, min_delta=0.5) == 4  # 77.3 - 77.0 = 0.3 < 0.5
    # epoch 5: 77.55 - 77.0 = 0.55, not under 0.5; epoch 6: 77.6 - 77.3 = 0.3
    assert stop_epoch(creeping, patience=2, min_delta=0.5) == 6
    assert gain(creeping, 2) == pytest.approx(0.3)


def test_a_dip_and_its_recovery_gain_nothing_over_the_best_so_far():
    dip = [0.50, 0.686, 0.672, 0.678, 0.690]  # stream training's non-monotone dev curve
    assert gain(dip[:4], 2) == pytest.approx(-0.8)
    assert should_stop(dip[:4], patience=2)  # two epochs below 68.6
    assert not should_stop(dip[:4], patience=3)  # the rule with more patience waits for epoch 5
    assert not should_stop(dip, patience=3, min_delta=0.3)  # 69.0 - 68.6 = 0.4 >= 0.3 points


def test_min_epochs_and_bad_arguments():
    assert not should_stop([0.5, 0.4, 0.3], patience=1, min_epochs=4)
    assert should_stop([0.5, 0.4, 0.3, 0.2], patience=1, min_epochs=4)
    with pytest.raises(ValueError):
        should_stop([0.5], patience=0)
    with pytest.raises(ValueError):
        should_stop([0.5], patience=1, min_delta=-1)
    with pytest.raises(ValueError):
        newbob([0.5], False, start_below=0.1, stop_below=0.5)


def test_newbob_halves_from_a_small_gain_on_and_stops_on_a_smaller_one_while_halving():
    curve = [0.60, 0.70, 0.703, 0.709, 0.7095]
    halving, stops = False, []
    for e in range(1, len(curve) + 1):
        halving, stop = newbob(curve[:e], halving, start_below=0.5, stop_below=0.1)
        stops.append((halving, stop))
    # epoch 2 gains 10 points; epoch 3 gains 0.3 (< 0.5): halving starts, no stop yet; epoch 4
    # gains 0.6 (>= 0.1): go on halved; epoch 5 gains 0.05 (< 0.1) while halving: stop
    assert stops == [(False, False), (False, False), (True, False), (True, False), (True, True)]
    # a small gain before halving started never stops at once
    assert newbob([0.7, 0.7], False) == (True, False)


def test_newbob_keep_holds_the_rate_through_the_first_epochs():
    """The shape of the gru s0 curve of slot-weighted streams (README): epoch 2 gains 0.11 points by
    chance and plain newbob halves from there on; with keep=3 the first three epochs never start
    halving, so halving starts at the first later epoch that gains under 0.5 points."""
    curve = [0.7046, 0.7057, 0.7727, 0.7790, 0.7931, 0.7939]

    def run(keep):
        halving, out = False, []
        for e in range(1, len(curve) + 1):
            halving, stop = newbob(curve[:e], halving, keep=keep)
            out.append((halving, stop))
        return out

    assert run(0)[1] == (True, False) and run(0)[5] == (True, True)  # halved from epoch 2, stopped at 6
    kept = run(3)
    assert [h for h, _ in kept[:3]] == [False, False, False]
    assert kept[3] == (False, False) and kept[4] == (False, False)  # +0.63 and +1.41: still the initial rate
    assert kept[5] == (True, False)  # +0.08 starts halving; it does not stop on the same epoch


def test_newbob_on_a_stream_curve_halves_at_its_dip_and_stops_once_gains_fade():
    """The full-corpus lstm stream curve's shape (dip at epoch 4): the dip starts halving, the
    recovery does not stop it, and the run stops at the first halved epoch gaining < 0.1 points."""
    curve = [0.653, 0.699, 0.751, 0.665, 0.795, 0.799, 0.7995]
    halving, out = False, []
    for e in range(1, len(curve) + 1):
        halving, stop = newbob(curve[:e], halving)
        out.append((halving, stop))
    assert [h for h, _ in out] == [False, False, False, True, True, True, True]
    assert [s for _, s in out] == [False] * 6 + [True]  # epoch 6 gains 0.4, epoch 7 0.05


def test_newbob_stop_epoch_replays_the_halving():
    # +10, +10, +0.3 (halving starts), +0.05 while halving: stops after epoch 4
    assert newbob_stop_epoch([0.60, 0.70, 0.703, 0.7035]) == 4
    assert newbob_stop_epoch([0.60, 0.70, 0.80]) is None
    # kept 3 epochs: the small gain at epoch 2 starts no halving, so epoch 3's small gain does not stop it
    assert newbob_stop_epoch([0.60, 0.6005, 0.601], keep=3) is None
    assert newbob_stop_epoch([0.60, 0.6005, 0.601]) == 3

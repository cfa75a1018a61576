"""When training stops and when its learning rate is halved, from the dev frame accuracy of each
epoch so far: small pure functions, so the training loop calls them per epoch (per seed, in a stack)
and a benchmark replays them on a measured curve.

``should_stop`` is early stopping with a minimum gain: stop once the best dev accuracy of the last
``patience`` epochs is less than ``min_delta`` points above the best before them. With
``min_delta=0`` it is the plain rule (``patience`` epochs without a better dev accuracy). A gain
counts against the best so far, not the previous epoch, so a dip and its recovery (stream training's
dev accuracy is not monotone) gain nothing. Kaldi nnet1's ``newbob`` schedule is ``newbob``:
constant rate until an epoch gains less than ``start_below`` points, then halved every epoch, and
stopped once, while halving, an epoch gains less than ``stop_below``.
"""

from __future__ import annotations


def _points(accs) -> list[float]:
    """Dev frame accuracies (fractions, as the loop records them) as percentage points."""
    return [100.0 * float(a) for a in accs]


def gain(accs, last: int) -> float:
    """Points the best of the last ``last`` epochs is above the best before them (the first epochs
    gain from zero)."""
    pts = _points(accs)
    if last <= 0 or not pts:
        return 0.0
    before = max(pts[:-last], default=0.0)
    return max(pts[-last:]) - before


def should_stop(accs, patience: int, min_delta: float = 0.0, min_epochs: int = 1) -> bool:
    """Whether to stop after the epochs whose dev frame accuracies are ``accs`` (oldest first):
    at least ``min_epochs`` trained and at least ``patience`` of them, and the last ``patience``
    gained less than ``min_delta`` points (no gain at all where ``min_delta`` is 0)."""
    if patience < 1 or min_delta < 0:
        raise ValueError(f"patience {patience} must be >= 1 and min_delta {min_delta} >= 0")
    if len(accs) < max(min_epochs, patience + 1):
        return False
    g = gain(accs, patience)
    return g <= 0.0 if min_delta == 0 else g < min_delta


def stop_epoch(accs, patience: int, min_delta: float = 0.0, min_epochs: int = 1) -> int | None:
    """The epoch (1-based) after which ``should_stop`` first stops a run with this dev curve, or
    None if it never does within it (the run ends at its epoch cap)."""
    for e in range(1, len(accs) + 1):
        if should_stop(accs[:e], patience, min_delta, min_epochs):
            return e
    return None


def newbob(accs, halving: bool, start_below: float = 0.5, stop_below: float = 0.1,
           keep: int = 0) -> tuple[bool, bool]:
    """Kaldi nnet1's newbob after the latest epoch: returns ``(halving, stop)``. ``halving`` says
    whether the rate is halved from this epoch on (it never turns off again): the latest epoch
    gained less than ``start_below`` points over the best before it, or halving had started;
    ``stop``: halving had already started and the latest epoch gained less than ``stop_below``.
    ``keep`` (Kaldi's ``keep_lr_iters``): the first ``keep`` epochs never start halving, since the
    first epochs of streams are noisy enough to gain little by chance."""
    if not 0 <= stop_below <= start_below:
        raise ValueError(f"need 0 <= stop_below ({stop_below}) <= start_below ({start_below})")
    if len(accs) < 2 or len(accs) <= keep:
        return halving, False
    g = gain(accs, 1)
    return halving or g < start_below, halving and g < stop_below


def newbob_stop_epoch(accs, start_below: float = 0.5, stop_below: float = 0.1, keep: int = 0) -> int | None:
    """The epoch (1-based) after which ``newbob`` first stops a run with this dev curve (its
    halving state replayed epoch by epoch, as the training loop steps it), or None."""
    halving = False
    for e in range(1, len(accs) + 1):
        halving, stop = newbob(accs[:e], halving, start_below, stop_below, keep)
        if stop:
            return e
    return None

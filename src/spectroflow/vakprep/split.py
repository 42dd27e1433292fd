"""vak 1.1.0's train / val / test split by duration (``vak.prep.split``), with a seedable
random generator.

vak draws from Python's global :mod:`random`; here every draw goes through the ``rng`` given, in
the same order, so ``brute_force(..., random.Random(seed))`` gives the split vak gives after
``random.seed(seed)`` for the same recordings in the same order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def validate_split_durations(train_dur: float | None, val_dur: float | None,
                             test_dur: float | None, dataset_dur: float
                             ) -> tuple[float, float, float]:
    """The target durations with None as 0; raises ValueError where vak does (only ``val_dur``,
    negative durations other than -1, more than one -1, targets beyond ``dataset_dur``).

    Examples
    --------
    >>> validate_split_durations(20, 10, None, 60)
    (20, 10, 0)
    """
    if val_dur and train_dur is None and test_dur is None:
        raise ValueError("cannot specify only val_dur, unclear how to split dataset into "
                         "training and test sets")
    durs = {"train": train_dur, "val": val_dur, "test": test_dur}
    if all(dur is None for dur in durs.values()):
        raise ValueError("train_dur, val_dur, and test_dur were all None; must specify at least "
                         "train_dur or test_dur")
    if not all(dur >= 0 or dur == -1 for dur in durs.values() if dur is not None):
        raise ValueError("all durations for split must be real non-negative number or set to -1 "
                         "(meaning 'use the remaining dataset)")
    if sum(dur == -1 for dur in durs.values()) > 1:
        raise ValueError("cannot specify duration of more than one split as -1, unclear how to "
                         "calculate durations of splits.")
    given = {name: 0 if dur is None else dur for name, dur in durs.items()}
    if -1 in given.values():
        others = sum(dur for dur in given.values() if dur != -1)
        if others > dataset_dur:
            raise ValueError(
                f"One dataset split duration was specified as -1, but the total of the other "
                f"durations specified, {others} s, is greater than total duration of Dataset, "
                f"{dataset_dur}.")
    elif sum(given.values()) > dataset_dur:
        raise ValueError(f"Total of the split durations specified, {sum(given.values())} s, is "
                         f"greater than total duration of dataset, {dataset_dur}.")
    return given["train"], given["val"], given["test"]


def _validate_labels(labels: Sequence[np.ndarray], labelset: set[str]) -> None:
    found = {lbl for seq in labels for lbl in seq}
    if found == labelset:
        return
    if found < labelset:
        raise ValueError(f"Unable to split using this labelset: {sorted(labelset)}. These labels "
                         f"appear in no recording: {sorted(labelset - found)}; remove them from "
                         "the labelset or add recordings that hold them.")
    raise ValueError(f"Unable to split using this labelset: {sorted(labelset)}. Labels found in "
                     f"the recordings are not in it: {sorted(found - labelset)}.")


def brute_force(durs: Sequence[float], labels: Sequence[np.ndarray], labelset: set[str],
                train_dur: float | None, val_dur: float | None, test_dur: float | None,
                rng: random.Random, max_iter: int = 5000,
                ) -> tuple[list[int] | None, list[int] | None, list[int] | None]:
    """Indices of the recordings in the train, val and test splits (None for an empty split).

    vak's algorithm: give each split with a target one recording holding each label, then deal
    the others at random to the splits not yet long enough; start again (at most ``max_iter``
    times) until every split reaches its target. A split left without some label is kept, as
    vak keeps it. A target of -1 takes the remainder once the other split is done.

    Raises
    ------
    ValueError
        The labels do not equal ``labelset``, the targets exceed the recordings, or no split was
        found in ``max_iter`` attempts.
    """
    _validate_labels(labels, labelset)
    if len(durs) != len(labels):
        raise ValueError(f"{len(durs)} durations but {len(labels)} label arrays")
    targets = dict(zip(SPLITS, validate_split_durations(train_dur, val_dur, test_dur, sum(durs)),
                       strict=True))
    wanted = [name for name in SPLITS if targets[name] > 0 or targets[name] == -1]
    attempt = 1
    while True:
        left = list(range(len(labels)))
        split_inds: dict[str, list[int]] = {name: [] for name in SPLITS}
        totals = dict.fromkeys(SPLITS, 0.0)
        split_labels: dict[str, set[str]] = {name: set() for name in SPLITS}
        choice = list(wanted)
        # each split first gets one recording of each label it lacks
        for label in sorted(labelset):
            label_inds = [ind for ind in left if label in labels[ind]]
            rng.shuffle(label_inds)
            for name in wanted:
                if label in split_labels[name]:
                    continue
                if not label_inds:
                    attempt += 1
                    break  # vak moves on to the next label, and later starts again
                ind = label_inds.pop()
                split_inds[name].append(ind)
                totals[name] += durs[ind]
                split_labels[name] |= set(labels[ind])
                left.remove(ind)
        for name in SPLITS:
            if targets[name] > 0 and totals[name] >= targets[name]:
                choice.remove(name)
        finished = not choice
        rng.shuffle(left)
        while not finished:
            if not left:
                attempt += 1
                break
            ind = left.pop()
            name = choice[rng.randint(0, len(choice) - 1)]
            split_inds[name].append(ind)
            totals[name] += durs[ind]
            if targets[name] > 0 and totals[name] >= targets[name]:
                choice.remove(name)
            elif targets[name] == -1 and (
                    (name == "test" and "train" not in choice)
                    or (name == "train" and "test" not in choice)):
                split_inds[name].extend(left)
                choice.remove(name)
            if not choice:
                short = [n for n in SPLITS if 0 < targets[n] and totals[n] < targets[n]]
                if short:
                    raise ValueError(
                        f"Loop to find splits completed, but total duration of '{short[0]}' "
                        f"split, {totals[short[0]]} seconds, is less than target duration "
                        f"specified: {targets[short[0]]} seconds.")
                finished = True
        if attempt > max_iter:
            raise ValueError(f"Could not find subsets of sufficient duration in less than "
                             f"{max_iter} iterations.")
        if finished:
            # vak counts a split that lacks a label as an attempt but keeps the split (its
            # ``continue`` is inside the loop over splits), failing only past ``max_iter``.
            for name in wanted:
                if {lbl for ind in split_inds[name] for lbl in labels[ind]} != labelset:
                    attempt += 1
                    if attempt > max_iter:
                        raise ValueError(
                            "Did not successfully divide data into training, validation, and "
                            f"test sets of sufficient duration after {max_iter} iterations. "
                            "Try increasing the total size of the data set.")
                    logger.warning("the %s split lacks some labels of the labelset, as vak "
                                   "1.1.0 allows", name)
            break
    train, val, test = (split_inds[name] or None for name in SPLITS)
    return train, val, test

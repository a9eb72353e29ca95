"""The label map, defined once: class folders to dataset labels, sampling names to the prior's label ids, and the
prior's condition ids, which pair a label with a slice level when the prior is conditioned on levels.

A data tree's classes are its class folders, as torchvision's ``ImageFolder`` reads them: sorted names get labels
``0..N-1`` (:func:`class_order`), or the ``classes`` parameter picks and orders them. The map travels with what is
made from the data (the VQ-VAE checkpoint, code files, the prior checkpoint, ONNX metadata); anything recorded
before maps were recorded is ``LEGACY_CLASSES`` (NC 0, AD 1). The prior's null label ("no class", trained by label
dropout) is ``len(classes)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from brainvq.errors import ConfigError
from brainvq.values import LEGACY_CLASSES, RESERVED_LABELS

__all__ = ["LEGACY_CLASSES", "RESERVED_LABELS", "UNLABELLED", "class_order", "condition_ids", "label_ids",
           "labels_for", "level_ids", "levels_for"]

UNLABELLED = -1  # slices of the flat layout, which has no class folders


def class_order(names) -> tuple[str, ...]:
    """Label order of the class folders found in a data tree: sorted names (``ImageFolder``'s rule), except that a
    tree of exactly ``AD`` and ``NC`` keeps brainvq's order from before class maps (NC 0, AD 1), so that models,
    figures and exports made from such a tree before stay comparable with new ones."""
    found = sorted(set(names))
    return LEGACY_CLASSES if found == sorted(LEGACY_CLASSES) else tuple(found)


def label_ids(classes: Sequence[str]) -> dict[str, int]:
    """Sampling names -> prior label ids: each class its index, ``none`` the null label ``len(classes)``."""
    return {**{name: i for i, name in enumerate(classes)}, "none": len(classes)}


def labels_for(label: str, n: int, classes: Sequence[str], conditional: bool = True) -> np.ndarray:
    """``(n,)`` int64 prior label ids for a sampling name: a class recorded with the model, ``none`` (the null label)
    or ``all`` (every class in turn, in alphabetical order: AD, NC, AD, ... for the two-class set; ``both`` is the
    same). An unconditional prior (``conditional=False``) gets the null label whatever the (valid) name."""
    classes = tuple(classes)
    ids = label_ids(classes)
    if label in ("all", "both"):
        turn = [ids[c] for c in sorted(classes)] or [ids["none"]]  # a model without classes: the null label
        out = np.array(turn * (n // len(turn) + 1), dtype=np.int64)[:n]
    elif label in ids:
        out = np.full(n, ids[label], dtype=np.int64)
    else:
        names = ", ".join(classes) if classes else "no classes: it was trained on a flat layout"
        raise ConfigError(f"label must be a class recorded with the model ({names}), none or all; got {label!r}")
    return out if conditional else np.full(n, ids["none"], dtype=np.int64)


def levels_for(level: str | float, n: int, seed: int = 0) -> np.ndarray:
    """``(n,)`` float32 slice levels to sample at: a number in [0, 1] (0 the lowest slice of a subject, 1 the
    highest), ``random`` (uniform in [0, 1], as the ranks of a subject's consecutive slices are; drawn from ``seed``
    on a stream of its own, so the codes' uniforms do not change) or ``none`` (NaN: the level is not given)."""
    if isinstance(level, str) and level in ("random", "none"):
        if level == "none":
            return np.full(n, np.nan, np.float32)
        return np.random.default_rng([seed, 0x1E7E1]).uniform(0.0, 1.0, n).astype(np.float32)
    try:
        value = float(level)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"bad parameter: level must be a number in [0, 1], random or none; got {level!r}")
    return np.full(n, value, np.float32)


def level_ids(levels: np.ndarray, bins: int) -> np.ndarray:
    """Levels in [0, 1] as ``(N,)`` int64 level bins ``0..bins-1`` (nearest bin centre); NaN (unknown) is bin
    ``bins``, the "no level" bin that level dropout trains."""
    lv = np.asarray(levels, dtype=np.float64)
    known = np.isfinite(lv)
    out = np.full(lv.shape, bins, dtype=np.int64)
    out[known] = np.rint(np.clip(lv[known], 0.0, 1.0) * (bins - 1)).astype(np.int64)
    return out


def condition_ids(labels: np.ndarray, levels: np.ndarray | None, bins: int) -> np.ndarray:
    """The prior's condition ids: the label id itself when the prior has no levels (``bins == 0``), else
    ``label * (bins + 1) + level bin``: one learned bias and one position table per (label, level) pair."""
    labels = np.asarray(labels, dtype=np.int64)
    if not bins:
        return labels
    lv = np.full(labels.shape, np.nan, np.float32) if levels is None else np.asarray(levels, dtype=np.float32)
    return labels * (bins + 1) + level_ids(lv, bins)


def unconditioned(conditions: np.ndarray, null_label: int, bins: int) -> np.ndarray:
    """The condition ids of ``conditions`` (:func:`condition_ids`) with the class replaced by the null label and
    the level kept: the "unconditional" side of classifier-free guidance, which guides the class only."""
    conditions = np.asarray(conditions, dtype=np.int64)
    return null_label * (bins + 1) + conditions % (bins + 1)

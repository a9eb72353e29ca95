"""The label map, defined once: class folders to dataset labels, sampling names to the prior's label ids, and the
prior's condition ids, which pair a label with a slice level when the prior is conditioned on levels."""

from __future__ import annotations

import numpy as np

from brainvq.errors import ConfigError

CLASSES = {"NC": 0, "AD": 1}  # class folder -> dataset label (sorted by id)
UNLABELLED = -1  # slices of the flat layout, which has no class folders
NULL_LABEL = len(CLASSES)  # the prior's null label: "no class", trained by label dropout
LABELS = {**CLASSES, "none": NULL_LABEL}  # sampling names -> prior label ids


def labels_for(label: str, n: int) -> np.ndarray:
    """``AD``/``NC``/``none`` (or ``both``: half AD, half NC) as prior label ids."""
    if label == "both":
        return np.array([LABELS["AD"], LABELS["NC"]] * ((n + 1) // 2), dtype=np.int64)[:n]
    if label not in LABELS:
        raise ConfigError(f"label must be one of AD, NC, none, both; got {label!r}")
    return np.full(n, LABELS[label], dtype=np.int64)


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

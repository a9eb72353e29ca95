"""The label map, defined once: class folders to dataset labels, and sampling names to the prior's label ids."""

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

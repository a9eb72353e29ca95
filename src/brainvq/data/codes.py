"""Code grids: what a VQ-VAE makes of each split, as plain arrays, and their ``.npz`` files (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainvq.errors import ModelFileError, one_line

SPLITS = ("train", "val", "test")


class CodeSet(NamedTuple):
    """Code grids of one split: ``codes`` (N,h,w) int64, ``labels`` (N,) int64 (the class's index in ``classes``,
    -1 unknown), ``levels`` (N,) float32, the slice's axial level in [0, 1] within its subject (NaN unknown; None:
    not recorded) and ``classes``, the class names in label order (``()`` flat layout; None: codes encoded before
    class maps were recorded, whose labels are ``LEGACY_CLASSES``, NC 0 and AD 1) and ``subjects`` (N,) the subject
    of each grid (None: not given)."""

    codes: np.ndarray
    labels: np.ndarray
    levels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    subjects: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.codes)


# below_index values that are not grid indices
BOTTOM, UNKNOWN = -1, -2


def stack_height(data: CodeSet) -> int:
    """The most common number of slices per subject among grids with a known level (0: none known)."""
    if data.subjects is None or data.levels is None:
        return 0
    known = np.isfinite(np.asarray(data.levels, np.float32))
    _, counts = np.unique(np.asarray(data.subjects)[known], return_counts=True)
    if not len(counts):
        return 0
    values, freq = np.unique(counts, return_counts=True)
    return int(values[np.argmax(freq)])


def below_index(data: CodeSet) -> np.ndarray:
    """For each grid, the index of the grid of the slice just below it in the same subject ``(N,)`` int64:
    :data:`BOTTOM` for a subject's lowest slice, :data:`UNKNOWN` where that cannot be told (no subjects or no
    level recorded). A subject's slices are ordered by level, the rank of the slice number among its own."""
    n = len(data)
    out = np.full(n, UNKNOWN, np.int64)
    if data.subjects is None or data.levels is None:
        return out
    levels = np.asarray(data.levels, np.float32)
    by_subject: dict[str, list[int]] = {}
    for i, (subject, level) in enumerate(zip(data.subjects, levels)):
        if np.isfinite(level):
            by_subject.setdefault(subject, []).append(i)
    for members in by_subject.values():
        members.sort(key=lambda i: levels[i])
        out[members[0]] = BOTTOM
        for lower, upper in zip(members, members[1:]):
            out[upper] = lower
    return out


def save_codes(path: Path, codes: np.ndarray, labels: np.ndarray, subjects: list[str], num_embeddings: int,
               levels: np.ndarray | None = None, classes: tuple[str, ...] | None = None) -> Path:
    """Write one split's codes as an ``.npz`` of plain arrays (loads without pickle); ``classes`` names the labels
    (None: not recorded, read back as the labels of ``LEGACY_CLASSES``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = np.full(len(codes), np.nan, np.float32) if levels is None else np.asarray(levels, dtype=np.float32)
    named = {} if classes is None else {"classes": np.asarray(list(classes), dtype=str)}
    np.savez_compressed(path, codes=codes.astype(np.int64), labels=np.asarray(labels, dtype=np.int64),
                        subjects=np.asarray(subjects, dtype=str), num_embeddings=np.int64(num_embeddings),
                        levels=levels, **named)
    return path


def load_codes(path: Path, num_embeddings: int | None = None) -> tuple[CodeSet, list[str]]:
    """Read a split's codes; ``num_embeddings`` guards against codes from another codebook size."""
    try:
        with np.load(path, allow_pickle=False) as z:
            codes, labels, subjects, k = z["codes"], z["labels"], list(z["subjects"]), int(z["num_embeddings"])
            levels = z["levels"] if "levels" in z.files else None  # codes encoded before levels were recorded
            classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else None  # ... or class maps
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"codes file {path} is unreadable ({one_line(exc)})") from None
    if num_embeddings is not None and k != num_embeddings:
        raise ModelFileError(f"codes file {path} comes from a codebook of {k} entries, expected {num_embeddings}")
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise ModelFileError(f"codes file {path} holds indices outside [0, {k})")
    if levels is not None and levels.shape != labels.shape:
        raise ModelFileError(f"codes file {path} holds {len(levels)} levels for {len(labels)} grids")
    if classes is not None and labels.size and labels.max() >= len(classes):
        raise ModelFileError(f"codes file {path} holds label {labels.max()} for {len(classes)} classes")
    if len(subjects) != len(labels):
        raise ModelFileError(f"codes file {path} holds {len(subjects)} subjects for {len(labels)} grids")
    return CodeSet(codes, labels, levels, classes, tuple(subjects)), subjects

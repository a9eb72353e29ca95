"""ADNI-layout folders: ``ROOT/{train,test}/{AD,NC}/<subject>_<slice>.png`` (or flat ``ROOT/{train,test}/*.png``).

Slices are decoded once into a uint8 ``(N, H, W)`` array cached on disk (keyed by the file list, sizes, mtimes and
image size) and memory-mapped, so later epochs and later runs never decode PNGs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from brainvq.data.images import decode, warn_conversions
from brainvq.data.labels import CLASSES, UNLABELLED
from brainvq.errors import DataError

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the cache layout changes: part of the key


@dataclass(frozen=True)
class Sample:
    """One slice file: ``label`` is 1 (AD), 0 (NC) or -1 (flat layout, unlabelled)."""

    path: str
    label: int
    subject: str


def subject_of(path: str | os.PathLike) -> str:
    """``<subject>_<slice>.png`` -> ``<subject>`` (the whole stem when there is no ``_``)."""
    stem = Path(path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def cache_root() -> Path:
    """``BRAINVQ_CACHE`` or ``~/.cache/brainvq``."""
    return Path(os.environ.get("BRAINVQ_CACHE") or Path.home() / ".cache" / "brainvq")


def scan_split(root: str | os.PathLike, split: str, skip_bad: bool = False) -> list[Sample]:
    """A split's slices in a deterministic (sorted) order; labels from ``AD``/``NC`` subfolders, or -1 when flat.

    Zero-byte and unreadable files raise :class:`DataError` (or are dropped with a logged count when ``skip_bad``);
    corrupt contents are only found when decoding (:func:`load_adni`).
    """
    samples, empty = _scan(root, split, skip_bad)
    if empty:
        log.warning("%s: skipped %d zero-byte or unreadable file(s)", Path(root) / split, empty)
    return samples


def _scan(root: str | os.PathLike, split: str, skip_bad: bool) -> tuple[list[Sample], int]:
    """:func:`scan_split` that returns the number of zero-byte or unreadable files it dropped instead of logging it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir does not exist or is not a folder: {root}")
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"missing split folder {folder} (expected {root}/train and {root}/test)")
    labelled = [Sample(str(p), label, subject_of(p))
                for name, label in sorted(CLASSES.items()) if (folder / name).is_dir()
                for p in sorted((folder / name).glob("*.png"))]
    flat = [Sample(str(p), UNLABELLED, subject_of(p)) for p in sorted(folder.glob("*.png"))]
    if labelled and flat:
        raise DataError(f"{folder} mixes AD/NC subfolders with loose PNG files; use one layout")
    samples = labelled or flat
    if not samples:
        raise DataError(
            f"no PNG files in {folder} (expected {folder}/AD/*.png and {folder}/NC/*.png, or {folder}/*.png)"
        )
    sizes = {s.path: _size(s.path) for s in samples}
    bad = {path for path, size in sizes.items() if size <= 0}
    if bad and not skip_bad:
        first = min(bad)
        if sizes[first] == 0:
            raise DataError(f"empty (zero-byte) image file: {first}")
        raise DataError(f"unreadable image file: {first} (a dangling link, or no permission to read it)")
    return [s for s in samples if s.path not in bad], len(bad)


def _size(path: str) -> int:
    """The file's size in bytes; -1 when it cannot be read (a dangling symlink, a folder without permission)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def split_by_subject(
    subjects: Sequence[str], val_fraction: float, seed: int, labels: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and val slice indices with every subject wholly on one side; stratified by label, deterministic by seed.

    Each label group gives ``round(n_subjects * val_fraction)`` subjects to val (at least one when the fraction is
    above 0 and the group has two or more subjects).
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    subjects = list(subjects)
    labels = list(labels) if labels is not None else [0] * len(subjects)
    label_of: dict[str, int] = {}
    for s, lab in zip(subjects, labels):
        label_of.setdefault(s, int(lab))
    rng = np.random.default_rng(seed)
    val_subjects: set[str] = set()
    for lab in sorted(set(label_of.values())):
        group = sorted(s for s, la in label_of.items() if la == lab)
        rng.shuffle(group)
        n_val = int(round(len(group) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(group) > 1:
            n_val = 1
        val_subjects.update(group[:n_val])
    is_val = np.array([s in val_subjects for s in subjects], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def cap_by_subject(subjects: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` slices: whole subjects in a seeded order first, the rest from a seeded shuffle."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(sorted(set(subjects)))
    by_subject: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        by_subject.setdefault(s, []).append(i)
    chosen: list[int] = []
    rest: list[int] = []
    for s in order:
        if len(chosen) + len(by_subject[s]) <= n:
            chosen += by_subject[s]
        else:
            rest += by_subject[s]
    fill = rng.permutation(np.asarray(rest, dtype=np.int64))[: n - len(chosen)]
    return np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), fill]))


def _to_unit_float(a: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]. numpy, not torch: torch's intra-op threads stall (~50x) on a busy 2-core machine."""
    return np.divide(a, np.float32(255), dtype=np.float32)


class SliceDataset(torch.utils.data.Dataset):
    """Slices of one split, served as float32 in [0, 1].

    ``images`` is uint8 ``(N, H, W)``: the memory-mapped cache, or (for a non-contiguous :meth:`subset`) an
    in-memory copy made on first access. :meth:`batch` always reads the memmap directly, so training never copies
    the whole split.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        subjects: Sequence[str],
        paths: Sequence[str],
        rows: np.ndarray | None = None,
    ) -> None:
        self._base = images  # (M, H, W) uint8, usually a memmap
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)  # (N,) rows of _base, or all
        self._images = images if rows is None else None
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,)
        self.subjects = list(subjects)
        self.paths = list(paths)

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = self._base[self._rows]  # (N, H, W) copy, made once
        return self._images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        """``(image (1,H,W) float32, label)``; a list/array of indices gives :meth:`batch` instead."""
        if np.ndim(i) != 0:
            return self.batch(i)
        i = int(i)
        row = i if self._rows is None else int(self._rows[i])
        return torch.from_numpy(_to_unit_float(self._base[row][None])), int(self.labels[i])  # (1,H,W)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (B,1,H,W) float32 in [0,1], labels (B,) int64)`` with one fancy-indexed read of the memmap."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self._rows is None else self._rows[idx]
        x = torch.from_numpy(_to_unit_float(self._base[rows][:, None]))  # (B,1,H,W)
        return x, torch.from_numpy(self.labels[idx])

    def subset(self, idx) -> "SliceDataset":
        """The slices ``idx`` (in that order), sharing this dataset's memmap."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self._rows is None else self._rows[idx]
        labels, subjects, paths = self.labels[idx], [self.subjects[i] for i in idx], [self.paths[i] for i in idx]
        if len(rows) == 0 or np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            start = int(rows[0]) if len(rows) else 0
            return SliceDataset(self._base[start : start + len(rows)], labels, subjects, paths)  # a memmap view
        return SliceDataset(self._base, labels, subjects, paths, rows=rows)


@dataclass
class ADNISplits:
    """Train (minus val), val (whole subjects carved from train) and test; ``skipped`` bad files in all."""

    train: SliceDataset
    val: SliceDataset
    test: SliceDataset
    root: str
    skipped: int


def _cache_key(samples: list[Sample], size: tuple[int, int]) -> str:
    """Hash of the file list, sizes, mtimes and image size: any change to the data gives a new cache entry."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "size": list(size)}).encode())
    for s in samples:
        st = os.stat(s.path)
        h.update(f"{s.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _decode_all(samples: list[Sample], size: tuple[int, int], desc: str) -> tuple[np.ndarray, list[int], dict]:
    """Decode every sample into ``(N, H, W)`` uint8; returns it, the indices of bad files and counts per kind."""
    out = np.zeros((len(samples), *size), dtype=np.uint8)
    kinds: dict[str, int] = {}
    bad: list[tuple[int, str]] = []

    def one(i: int) -> tuple[int, str | None, str | None]:
        try:
            out[i], kind = decode(samples[i].path, size)
            return i, kind, None
        except DataError as exc:
            return i, None, str(exc)

    # PIL releases the GIL while inflating PNGs, so threads use every core without pickling arrays between processes.
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        for i, kind, err in tqdm(
            pool.map(one, range(len(samples))), total=len(samples), desc=desc, unit="img", leave=False
        ):
            if err is None:
                kinds[kind] = kinds.get(kind, 0) + 1
            else:
                bad.append((i, err))
    bad.sort()
    return out, bad, kinds


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it into place (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the cache may be shared between users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build_cache(samples: list[Sample], size: tuple[int, int], img_path: Path, meta_path: Path, desc: str) -> dict:
    """Decode the samples and write ``img_path`` (good slices only) and ``meta_path``; returns the metadata."""
    images, bad, kinds = _decode_all(samples, size, desc)
    bad_idx = {i for i, _ in bad}
    keep = [i for i in range(len(samples)) if i not in bad_idx]
    img_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(img_path, lambda fh: np.save(fh, images[keep] if bad else images, allow_pickle=False))
    meta = {"keep": keep, "bad": [msg for _, msg in bad], "kinds": kinds}
    _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta).encode()))
    return meta


def _open_split(
    root: str | os.PathLike, split: str, size: tuple[int, int], skip_bad: bool, cache_dir: str | os.PathLike | None
) -> tuple[SliceDataset, int, dict]:
    """One split from the cache (decoding it first if needed); returns ``(dataset, skipped, kinds)``."""
    samples, empty = _scan(root, split, skip_bad)
    cache = Path(cache_dir).expanduser() if cache_dir else cache_root() / "slices"
    key = _cache_key(samples, size)
    img_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    if img_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        meta = _build_cache(samples, size, img_path, meta_path, f"decoding {split}")
    if meta["bad"] and not skip_bad:
        raise DataError(meta["bad"][0])  # names the file; skip_bad=true skips such files instead
    if not meta["keep"]:
        raise DataError(f"no readable images in {Path(root) / split}")
    images = np.load(img_path, mmap_mode="r", allow_pickle=False)  # (N, H, W) uint8, pages read on demand
    kept = [samples[i] for i in meta["keep"]]
    ds = SliceDataset(images, [s.label for s in kept], [s.subject for s in kept], [s.path for s in kept])
    return ds, empty + len(meta["bad"]), meta["kinds"]


def load_split(
    root: str | os.PathLike,
    split: str,
    image_size=(240, 256),
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[SliceDataset, int]:
    """One split (``train`` or ``test``) from the decoded-image cache; returns ``(dataset, skipped files)``."""
    ds, skipped, kinds = _open_split(root, split, tuple(int(s) for s in image_size), skip_bad, cache_dir)
    warn_conversions(kinds, Path(root) / split)
    if skipped:
        log.warning("%s: skipped %d unreadable file(s)", Path(root) / split, skipped)
    return ds, skipped


def load_adni(
    root: str | os.PathLike,
    image_size=(240, 256),
    val_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    max_train_images: int = 0,
) -> ADNISplits:
    """Train/val/test slices of an ADNI-layout folder; val is carved from train by subject (see
    :func:`split_by_subject`), and ``max_train_images`` > 0 caps train (see :func:`cap_by_subject`).

    Bad files raise :class:`DataError` naming the file, or with ``skip_bad`` are skipped and counted.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    size = tuple(int(s) for s in image_size)
    train_all, skipped_tr, kinds_tr = _open_split(root, "train", size, skip_bad, cache_dir)
    test, skipped_te, kinds_te = _open_split(root, "test", size, skip_bad, cache_dir)
    warn_conversions({"rgb": kinds_tr.get("rgb", 0) + kinds_te.get("rgb", 0)}, root)  # once per load, not per file
    skipped = skipped_tr + skipped_te
    if skipped:
        log.warning("%s: skipped %d unreadable file(s) (skip_bad=true)", root, skipped)
    tr_idx, val_idx = split_by_subject(train_all.subjects, val_fraction, seed, train_all.labels)
    if 0 < max_train_images < len(tr_idx):
        tr_idx = tr_idx[cap_by_subject([train_all.subjects[i] for i in tr_idx], int(max_train_images), seed)]
    return ADNISplits(train_all.subset(tr_idx), train_all.subset(val_idx), test, str(root), skipped)

"""ADNI-layout folders: ``ROOT/{train,test}/<class>/<subject>_<slice>.png`` (or flat ``ROOT/{train,test}/*.png``).

Class folders are read as torchvision's ``ImageFolder`` reads them: any names (``AD``/``NC``, ADNI's ``AD``/``CN``,
``AD``/``MCI``/``CN``, ...), labelled ``0..N-1`` in sorted order, or picked and ordered by the ``classes`` parameter
(see :func:`find_classes` and :func:`brainvq.data.labels.class_order`). The flat layout is unlabelled.

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

from brainvq.cpus import usable_cpus
from brainvq.data.images import decode, few, shown, warn_conversions, warn_data
from brainvq.data.labels import UNLABELLED, class_order
from brainvq.errors import DataError, one_line
from brainvq.values import RESERVED_LABELS, class_names

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # bump when the cache layout or the decoding changes: part of the key (2: 16-bit depths)


@dataclass(frozen=True)
class Sample:
    """One slice file: ``label`` is its class's index in the data's class map, or -1 (flat layout, unlabelled)."""

    path: str
    label: int
    subject: str


def subject_of(path: str | os.PathLike) -> str:
    """``<subject>_<slice>.png`` -> ``<subject>`` (the whole stem when there is no ``_``)."""
    stem = Path(path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def slice_levels(subjects: Sequence[str], paths: Sequence[str]) -> np.ndarray:
    """Each slice's axial level within its subject, ``(N,)`` float32 in [0, 1]: the rank of its slice number among
    that subject's slice numbers, scaled so the lowest is 0 and the highest 1 (the ADNI layout's 20 slices per
    subject are consecutive axial levels). NaN where the level is unknown: a name without ``_<slice number>``, or a
    subject with a single slice."""
    numbers: list[int | None] = []
    for path in paths:
        stem = Path(path).stem
        tail = stem.rsplit("_", 1)[1] if "_" in stem else ""
        numbers.append(int(tail) if tail.isdigit() else None)
    by_subject: dict[str, set[int]] = {}
    for subject, number in zip(subjects, numbers):
        if number is not None:
            by_subject.setdefault(subject, set()).add(number)
    ranks = {s: {n: i / (len(ns) - 1) for i, n in enumerate(sorted(ns))} for s, ns in by_subject.items() if len(ns) > 1}
    return np.array([ranks.get(s, {}).get(n, np.nan) if n is not None else np.nan
                     for s, n in zip(subjects, numbers)], dtype=np.float32)


def cache_root() -> Path:
    """``BRAINVQ_CACHE`` or ``~/.cache/brainvq``."""
    return Path(os.environ.get("BRAINVQ_CACHE") or Path.home() / ".cache" / "brainvq")


def scan_split(root: str | os.PathLike, split: str, skip_bad: bool = False, classes=None,
               partial: bool = False) -> list[Sample]:
    """A split's slices in a deterministic (sorted) order; labels from class subfolders, or -1 when flat.

    ``classes``: the class map (names in label order, or ``"CN,AD"``), each of which must be a class folder of the
    split unless ``partial`` (a folder of generated slices of some classes); None or empty: the class folders of
    this split (:func:`find_classes`). ``.png`` is matched in any case. Everything else in the split (folders that
    are not classes, nested folders, non-PNG files) is skipped with one warning that counts and names it. Zero-byte
    and unreadable files raise :class:`DataError` (or are dropped with a logged count when ``skip_bad``); corrupt
    contents are only found when decoding (:func:`load_adni`).
    """
    picked = class_names(classes)
    names = picked if partial and picked else find_classes(root, classes, splits=(split,))
    samples, empty = _scan(root, split, skip_bad, names, bool(picked))
    if empty:
        log.warning("%s: skipped %d zero-byte or unreadable file(s)", Path(root) / split, empty)
    return samples


def _is_png(name: str) -> bool:
    """Exports from Windows tools and scanners write ``.PNG``: the extension is matched in any case."""
    return name.lower().endswith(".png")


def _entries(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``(PNG files, folders, other files)`` directly in ``folder``, each sorted by name (a deterministic order).

    A folder named ``x.png`` is a folder; a dangling link or a link loop named ``x.png`` is a PNG file, so that it is
    reported as unreadable rather than skipped.
    """
    try:
        with os.scandir(folder) as it:
            names = sorted((e.name, _is_dir(e)) for e in it)
    except OSError as exc:
        raise DataError(f"cannot read folder {shown(folder)} ({exc.strerror or one_line(exc)})") from None
    pngs, dirs, other = [], [], []
    for name, is_dir in names:
        (dirs if is_dir else pngs if _is_png(name) else other).append(folder / name)
    return pngs, dirs, other


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links: a link to a class folder is that class folder
    except OSError:  # a link loop
        return False


def _pngs_under(folder: Path) -> int:
    """PNG files anywhere under ``folder`` (links not followed, so a link loop cannot hang the count)."""
    return sum(_is_png(f) for _, _, files in os.walk(folder) for f in files)


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir does not exist or is not a folder: {shown(root)}")
    return root


def _holds_pngs(folder: Path) -> bool:
    """Any PNG file directly in ``folder`` (stops at the first)."""
    try:
        with os.scandir(folder) as it:
            return any(_is_png(e.name) and not _is_dir(e) for e in it)
    except OSError:
        return False


def _class_folders(folder: Path) -> list[str]:
    """Names of the class folders directly in a split folder: folders, not hidden, that hold PNG files directly."""
    try:
        with os.scandir(folder) as it:
            dirs = sorted(e.name for e in it if _is_dir(e) and not e.name.startswith("."))
    except OSError:
        return []  # the split's own scan names the folder it cannot read
    return [d for d in dirs if _holds_pngs(folder / d)]


def is_class_tree(root: str | os.PathLike) -> bool:
    """A folder with class folders of PNGs directly in it and neither ``train/`` nor ``test/``: the layout of one
    split, which generated subjects are written in (:mod:`brainvq.data.stacks`)."""
    root = Path(root).expanduser()
    return (root.is_dir() and not (root / "train").is_dir() and not (root / "test").is_dir()
            and bool(_class_folders(root)))


def find_classes(root: str | os.PathLike, classes=None, splits: Sequence[str] = ("train", "test")) -> tuple[str, ...]:
    """The class map of a data tree, names in label order: ``classes`` (names, or ``"CN,AD"``) as given, each of
    which must be a class folder of one of ``splits``; else every class folder of ``splits`` (folders, not hidden,
    holding PNG files directly) in :func:`~brainvq.data.labels.class_order`. ``()``: no class folders (the flat
    layout). Missing split folders are left to the split's own scan to report."""
    root = _existing_root(root)
    wanted = class_names(classes)
    found = sorted({name for split in splits if (root / split).is_dir() for name in _class_folders(root / split)})
    if not any((root / split).is_dir() for split in splits):
        return wanted
    where = f"{shown(root)}/{' or '.join(splits)}"
    if wanted:
        missing = [c for c in wanted if c not in found]
        if missing:
            raise DataError(f"classes={','.join(wanted)}: no class folder {shown(missing[0])} with PNG files in "
                            f"{where} (class folders there: {few([shown(f) for f in found]) or 'none'})")
        return wanted
    for name in found:
        if name in RESERVED_LABELS or "," in name:
            raise DataError(f"class folder {shown(name)} in {where}: a class cannot be named "
                            f"{', '.join(RESERVED_LABELS)} or hold a comma; rename it, or leave it out with classes=")
    return class_order(found)


def _scan(root: str | os.PathLike, split: str, skip_bad: bool, classes: Sequence[str],
          picked: bool = False) -> tuple[list[Sample], int]:
    """:func:`scan_split` with the class map resolved (``picked``: chosen by the ``classes`` parameter) that returns
    the number of zero-byte or unreadable files it dropped instead of logging it."""
    root = _existing_root(root)
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"missing split folder {shown(folder)} (expected {shown(root)}/train and {shown(root)}/test)")
    pngs, dirs, other = _entries(folder)
    label_of = {name: i for i, name in enumerate(classes)}
    labelled: list[Sample] = []
    skipped_dirs = [d for d in dirs if d.name not in label_of]
    read = []
    for d in dirs:  # sorted by name: files come in alphabetical order of class folder (AD before NC), then of name
        if d.name in label_of:
            files, nested, extra = _entries(d)
            labelled += [Sample(str(p), label_of[d.name], subject_of(p)) for p in files]
            skipped_dirs += nested
            other += extra
            read += [d.name] if files else []
    flat = [Sample(str(p), UNLABELLED, subject_of(p)) for p in pngs]
    if labelled and flat:
        raise DataError(f"{shown(folder)} mixes {'/'.join(map(shown, read))} subfolders with loose PNG files; "
                        "use one layout")
    samples = labelled or flat
    held = {d: _pngs_under(d) for d in skipped_dirs}
    if not samples:
        found = [f"{shown(d.relative_to(folder))} ({n} PNGs)" for d, n in held.items() if n]
        why = f"not in classes={','.join(classes)}" if picked else "that are not class folders"
        raise DataError(  # the folder named once: a long path must not make the line unreadable
            f"no PNG files in {shown(folder)} (expected <class>/*.png in it, or *.png)"
            + (f"; folder(s) {why} hold PNGs: {few(found)}" if found else "")
        )
    _warn_skipped(folder, held, other, classes if picked else None)
    sizes = {s.path: _size(s.path) for s in samples}
    bad = {path for path, size in sizes.items() if size <= 0}
    if bad and not skip_bad:
        first = min(bad)
        if sizes[first] == 0:
            raise DataError(f"empty (zero-byte) image file: {shown(first)}")
        raise DataError(f"unreadable image file: {shown(first)} (a dangling link, or no permission to read it)")
    return [s for s in samples if s.path not in bad], len(bad)


def _warn_skipped(folder: Path, held: dict[Path, int], other: list[Path], picked: Sequence[str] | None) -> None:
    """One warning for everything in a split that is not read: folders (with the PNGs they hold) and non-PNG files.
    ``picked``: the classes the ``classes`` parameter chose (None: every class folder is read)."""
    parts = []
    if held:
        named = [f"{shown(d.relative_to(folder))}: {n} PNGs" for d, n in held.items()]
        why = f"not in classes={','.join(picked)}" if picked else "that are not class folders"
        parts.append(f"{len(held)} folder(s) {why} ({few(named)})")
    if other:
        parts.append(f"{len(other)} non-PNG file(s) ({few([shown(f.relative_to(folder)) for f in other])})")
    if not parts:
        return
    ignored = sum(held.values())
    # slices in a nested or hidden folder, or of a class left out, must not go missing without saying so
    hint = "" if picked else " (a class folder holds its PNGs directly and is not hidden)"
    loud = f"; their {ignored} PNGs are NOT read{hint}" if ignored else ""
    warn_data(f"{shown(folder)}: skipped {' and '.join(parts)}{loud}", stacklevel=4)


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
        levels: Sequence[float] | None = None,
    ) -> None:
        self._base = images  # (M, H, W) uint8, usually a memmap
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)  # (N,) rows of _base, or all
        self._images = images if rows is None else None
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,)
        self.subjects = list(subjects)
        self.paths = list(paths)
        # (N,) axial level in [0, 1] within the subject (see slice_levels); NaN = unknown
        self.levels = (np.full(len(self.labels), np.nan, np.float32) if levels is None
                       else np.asarray(levels, dtype=np.float32))

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
        levels = self.levels[idx]
        if len(rows) == 0 or np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            start = int(rows[0]) if len(rows) else 0
            return SliceDataset(self._base[start : start + len(rows)], labels, subjects, paths,  # a memmap view
                                levels=levels)
        return SliceDataset(self._base, labels, subjects, paths, rows=rows, levels=levels)


@dataclass
class ADNISplits:
    """Train (minus val), val (whole subjects carved from train) and test; ``skipped`` bad files in all."""

    train: SliceDataset
    val: SliceDataset
    test: SliceDataset
    root: str
    skipped: int
    classes: tuple[str, ...] = ()  # the class map: names in label order; () for the flat layout


def _cache_key(samples: list[Sample], size: tuple[int, int]) -> str:
    """Hash of the file list, sizes, mtimes and image size: any change to the data gives a new cache entry."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "size": list(size)}).encode())
    for s in samples:
        st = os.stat(s.path)
        h.update(os.fsencode(s.path) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())  # any file name
    return h.hexdigest()[:24]


def _decode_all(samples: list[Sample], size: tuple[int, int], desc: str) -> tuple[np.ndarray, list[int], dict]:
    """Decode every sample into ``(N, H, W)`` uint8; returns it, the indices of bad files and counts per kind."""
    out = np.zeros((len(samples), *size), dtype=np.uint8)
    kinds: dict[str, int] = {}
    per_image: dict[int, str] = {}
    bad: list[tuple[int, str]] = []

    def one(i: int) -> tuple[int, str | None, str | None]:
        try:
            out[i], kind = decode(samples[i].path, size)
            return i, kind, None
        except DataError as exc:
            return i, None, str(exc)

    # PIL releases the GIL while inflating PNGs, so threads use every core without pickling arrays between processes.
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        for i, kind, err in tqdm(
            pool.map(one, range(len(samples))), total=len(samples), desc=desc, unit="img", leave=False
        ):
            if err is None:
                per_image[i] = kind
            else:
                bad.append((i, err))
    _one_depth_per_load(out, per_image)
    for kind in per_image.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    bad.sort()
    return out, bad, kinds


def _one_depth_per_load(out: np.ndarray, per_image: dict[int, str]) -> None:
    """Rescale 16-bit images to the largest bit depth among them, in place: a 12-bit export's darkest slices (max
    under 1024) would otherwise be stretched by 1023 instead of 4095, 4x brighter than their neighbours."""
    depths = {i: 16 if k == "16bit" else int(k[6:]) for i, k in per_image.items()
              if k == "16bit" or k[6:].isdigit()}  # "16bit:12"; a blank image is black at any depth
    if len(set(depths.values())) < 2:
        return
    top = max(depths.values())
    for i, bits in depths.items():
        if bits < top:
            ratio = (2**bits - 1) / (2**top - 1)
            out[i] = (out[i].astype(np.float32) * ratio + 0.5).astype(np.uint8)
            per_image[i] = "16bit" if top == 16 else f"16bit:{top}"


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
    root: str | os.PathLike, split: str, size: tuple[int, int], skip_bad: bool, cache_dir: str | os.PathLike | None,
    classes: Sequence[str], picked: bool,
) -> tuple[SliceDataset, int, dict]:
    """One split from the cache (decoding it first if needed); returns ``(dataset, skipped, kinds)``."""
    samples, empty = _scan(root, split, skip_bad, classes, picked)
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
        raise DataError(f"no readable images in {shown(Path(root) / split)}")
    images = np.load(img_path, mmap_mode="r", allow_pickle=False)  # (N, H, W) uint8, pages read on demand
    kept = [samples[i] for i in meta["keep"]]
    subjects, paths = [s.subject for s in kept], [s.path for s in kept]
    # levels of the labelled layout only: a flat folder (generated samples, sample_000.png) has no subjects
    flat = bool(kept) and kept[0].label == UNLABELLED
    levels = None if flat else slice_levels(subjects, paths)
    ds = SliceDataset(images, [s.label for s in kept], subjects, paths, levels=levels)
    _warn_missing_classes(ds.labels, Path(root) / split, classes)
    return ds, empty + len(meta["bad"]), meta["kinds"]


def _warn_missing_classes(labels: np.ndarray, folder: Path, classes: Sequence[str]) -> None:
    """A labelled split without slices of some class: a classifier or a conditional prior never sees that class."""
    present = set(labels.tolist()) - {UNLABELLED}
    if not present:
        return
    missing = " or ".join(shown(c) for i, c in enumerate(classes) if i not in present)
    if len(present) == 1:
        (label,) = present
        warn_data(f"{shown(folder)}: one class only: {len(labels)} {shown(classes[label])} slices"
                  + (f" and no {missing} slices" if missing else ""), stacklevel=4)
    elif missing:
        warn_data(f"{shown(folder)}: no {missing} slices (classes {', '.join(map(shown, classes))})", stacklevel=4)


def load_split(
    root: str | os.PathLike,
    split: str,
    image_size=(240, 256),
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    classes=None,
) -> tuple[SliceDataset, int]:
    """One split (``train`` or ``test``) from the decoded-image cache; returns ``(dataset, skipped files)``. Labels
    follow the class map of the whole tree (:func:`find_classes` over train and test), as :func:`load_adni`'s do."""
    ds, skipped, kinds = _open_split(root, split, tuple(int(s) for s in image_size), skip_bad, cache_dir,
                                     find_classes(root, classes), bool(class_names(classes)))
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
    classes=None,
) -> ADNISplits:
    """Train/val/test slices of an ADNI-layout folder; val is carved from train by subject (see
    :func:`split_by_subject`), and ``max_train_images`` > 0 caps train (see :func:`cap_by_subject`).

    ``classes``: which class folders are read, in label order (names, or ``"CN,AD"``); None or empty: all of them,
    sorted (:func:`find_classes`). The map is ``ADNISplits.classes``. Bad files raise :class:`DataError` naming the
    file, or with ``skip_bad`` are skipped and counted.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    size = tuple(int(s) for s in image_size)
    if is_class_tree(root):
        # A folder of class folders with no train/ or test/ (generated subjects, `brainvq sample-subjects`; one split
        # of an ADNI tree): all of it trains, its validation split is carved as usual, and there is no test split.
        names, picked = find_classes(root, classes, splits=(".",)), bool(class_names(classes))
        train_all, skipped_tr, kinds_tr = _open_split(root, ".", size, skip_bad, cache_dir, names, picked)
        test, skipped_te, kinds_te = train_all.subset(np.zeros(0, np.int64)), 0, {}
        warn_data(f"{shown(root)} holds class folders and no train/ or test/: every slice is a training slice "
                  "(validation carved from them), and there is no test split")
    else:
        names, picked = find_classes(root, classes), bool(class_names(classes))
        train_all, skipped_tr, kinds_tr = _open_split(root, "train", size, skip_bad, cache_dir, names, picked)
        test, skipped_te, kinds_te = _open_split(root, "test", size, skip_bad, cache_dir, names, picked)
    warn_conversions({k: kinds_tr.get(k, 0) + kinds_te.get(k, 0) for k in {*kinds_tr, *kinds_te}}, root)  # once
    skipped = skipped_tr + skipped_te
    if skipped:
        log.warning("%s: skipped %d unreadable file(s) (skip_bad=true)", root, skipped)
    both = sorted(set(train_all.subjects) & set(test.subjects))
    if both:  # the same subject id in both splits: test slices are not held out from training
        warn_data(f"{shown(root)}: {len(both)} subject(s) are in both train and test "
                  f"({few([shown(s) for s in both])}); test scores will be optimistic")
    unknown = int(np.isnan(train_all.levels).sum() + np.isnan(test.levels).sum())
    if unknown:  # the prior is conditioned on the level where it is known; these slices go without
        warn_data(f"{shown(root)}: {unknown} of {len(train_all) + len(test)} slices have no slice level (a flat "
                  "layout, a name without _<slice number>, or a subject with one slice)")
    tr_idx, val_idx = split_by_subject(train_all.subjects, val_fraction, seed, train_all.labels)
    if val_fraction > 0 and len(val_idx) == 0:
        warn_data(f"{shown(root)}: val_fraction={val_fraction} gave an empty validation split (0 of "
                  f"{len(train_all)} train slices, from {len(set(train_all.subjects))} subject(s)): a subject is "
                  "never split, and a class gives val a subject only when it has 2 or more")
    if 0 < max_train_images < len(tr_idx):
        tr_idx = tr_idx[cap_by_subject([train_all.subjects[i] for i in tr_idx], int(max_train_images), seed)]
    return ADNISplits(train_all.subset(tr_idx), train_all.subset(val_idx), test, str(root), skipped, tuple(names))

"""The ``evaluate_subjects`` stage as MLflow-free library calls: which generated subjects, which real ones, every
figure (:mod:`brainvq.quality.subjects`) and the picture.

Generated subjects are an ADNI-layout class tree, ``FOLDER/<class>/<subject>_<slice>.png`` (what ``brainvq
sample-subjects`` writes; ``FOLDER/*.png`` for unlabelled ones), labelled with the real data's class map; a folder
``none/`` holds subjects sampled without a class, and folders without PNGs (the sampler's ``nifti/``) are left
alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from brainvq.data import ADNISplits
from brainvq.errors import ConfigError, DataError
from brainvq.quality.evaluate import Slices
from brainvq.quality.subjects import SubjectOutcome, SubjectProtocol, evaluate_subjects, subject_stacks

log = logging.getLogger(__name__)
SPLITS = ("val", "test")
UNCLASSED = "none"  # the folder of subjects sampled without a class (`brainvq sample-subjects --label none`)


class SubjectSets(NamedTuple):
    """The real subjects of an evaluation: the held-out ``split`` (compared with) and the training split (power
    checks, TRTR, augmentation)."""

    split: str
    held_out: Slices
    train: Slices


def subject_folder(folder: str | os.PathLike) -> Path:
    """``subjects_dir`` as a folder that exists: checked before the real data is read (which may generate the demo
    set), so a mistyped folder is one line at once."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"subjects_dir does not exist or is not a folder: {folder}")
    return folder


def _pngs(folder: Path) -> list[Path]:
    """PNG files directly in ``folder``, sorted (``.PNG`` too, as the data reader matches them)."""
    return sorted(p for p in folder.iterdir() if p.name.lower().endswith(".png") and p.is_file())


def read_subject_folder(folder: str | os.PathLike, image_size: tuple[int, int], classes=()) -> Slices:
    """Generated subjects from ``FOLDER/<class>/<subject>_<slice>.png`` (labels: the index of ``<class>`` in the
    real data's class map ``classes``; -1 in ``none/``) or ``FOLDER/<subject>_<slice>.png`` (unlabelled), as
    :class:`~brainvq.quality.evaluate.Slices` with each slice's level within its subject.

    One-line :class:`DataError` naming the folder or file for a folder without subjects, a class the real data
    lacks, a slice name without its slice number, or a subject of fewer than two slices.
    """
    from brainvq.data.adni import slice_levels, subject_of
    from brainvq.data.images import decode, shown

    folder = subject_folder(folder)
    label_of = {name: i for i, name in enumerate(classes)}
    label_of[UNCLASSED] = -1
    files: list[tuple[Path, int, str]] = []  # (path, label, subject key)
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = _pngs(d)
        if not found:
            continue  # the sampler's nifti/ folder, or anything else without slices
        if d.name not in label_of:
            raise DataError(f"subjects_dir {shown(folder)} has class folder {shown(d.name)}, which the real data does "
                            f"not have (its classes: {', '.join(classes) or 'none, a flat layout'})")
        # the class folder is part of the subject's key: AD/x_000.png and NC/x_000.png are two subjects
        files += [(p, label_of[d.name], f"{d.name}/{subject_of(p)}") for p in found]
    loose = _pngs(folder)
    if loose and files:
        raise DataError(f"subjects_dir {shown(folder)} mixes class folders with loose PNG files; use one layout")
    files += [(p, -1, subject_of(p)) for p in loose]
    if not files:
        raise DataError(f"no subjects in subjects_dir {shown(folder)} (expected <class>/<subject>_<slice>.png)")
    subjects = [key for _, _, key in files]
    levels = slice_levels(subjects, [str(p) for p, _, _ in files])
    counts: dict[str, int] = {}
    for key in subjects:
        counts[key] = counts.get(key, 0) + 1
    for (path, _, key), level in zip(files, levels):
        if counts[key] < 2:
            raise DataError(f"subject {key} in subjects_dir has 1 slice ({shown(path)}); a generated subject needs at "
                            "least 2 consecutive slices")
        if not np.isfinite(level):
            raise DataError(f"cannot place {shown(path)} in its subject: expected <subject>_<slice number>.png")
    images = np.stack([decode(p, tuple(image_size))[0] for p, _, _ in files])  # (N,H,W) uint8
    log.info("subjects_dir %s: %d subjects, %d slices", folder, len(counts), len(files))
    return Slices(images, np.array([lab for _, lab, _ in files], dtype=np.int64), subjects, levels)


def stacked(slices: Slices, what: str) -> Slices:
    """Real slices without the subjects that cannot be stacked (a single slice, or no slice number), with a
    warning that counts them."""
    levels = np.asarray(slices.levels, dtype=np.float64)
    counts: dict[str, int] = {}
    for s in slices.subjects:
        counts[s] = counts.get(s, 0) + 1
    keep = np.array([np.isfinite(lv) and counts[s] >= 2 for s, lv in zip(slices.subjects, levels)], dtype=bool)
    if not keep.all():
        dropped = len({s for s, k in zip(slices.subjects, keep) if not k})
        log.warning("%s: left out %d subject(s) without two or more numbered slices", what, dropped)
    return slices.take(np.flatnonzero(keep))


def subject_sets(splits: ADNISplits, split: str) -> SubjectSets:
    """The real subjects to evaluate against: ``split`` (``val`` chooses, ``test`` reports) and the training
    split, checked before any run starts."""
    from brainvq.stages.evaluate import slices_of

    if split not in SPLITS:
        raise ConfigError(f"bad parameter: split must be val or test, got {split!r}")
    return SubjectSets(split, stacked(slices_of(getattr(splits, split)), f"the {split} split"),
                       stacked(slices_of(splits.train), "the train split"))


def check_sizes(fake: Slices, sets: SubjectSets, protocol: SubjectProtocol) -> None:
    """Enough subjects on every side for the pair test's subject folds and its power checks (two disjoint groups of
    training subjects): a one-line :class:`DataError` before any run starts."""
    folds = protocol.c2st.folds
    for what, slices, need in (("subjects_dir holds", fake, folds), (f"the {sets.split} split has", sets.held_out,
                                                                     folds),
                               ("the train split has", sets.train, 2 * folds)):
        n = len(set(slices.subjects))
        if n < need:
            raise DataError(f"{what} {n} subjects of two or more slices; the pair test ({folds} folds by subject) "
                            f"needs at least {need}")


def score_subjects(fake: Slices, sets: SubjectSets, protocol: SubjectProtocol = SubjectProtocol(),
                   reconstruct: Callable[[np.ndarray], np.ndarray] | None = None) -> SubjectOutcome:
    """Every figure of the generated subjects against ``sets`` (:func:`brainvq.quality.subjects.evaluate_subjects`);
    ``reconstruct`` (:func:`brainvq.stages.evaluate.vqvae_reconstructor`) adds the ceilings."""
    check_sizes(fake, sets, protocol)
    return evaluate_subjects(fake, sets.held_out, sets.train, protocol, reconstruct)


def save_subjects_grid(fake: Slices, real: Slices, path: str | os.PathLike, subjects: int = 3,
                       every: int = 2) -> Path:
    """``subjects.png``: ``subjects`` generated subjects (rows, every ``every``-th slice bottom to top) above as many
    real held-out ones."""
    from brainvq.data.images import save_grid

    rows = []
    for slices in (fake, real):
        stacks = list(subject_stacks(slices).values())
        picks = np.linspace(0, len(stacks) - 1, min(subjects, len(stacks))).round().astype(int)  # spread over classes
        rows += [slices.images[stacks[i][::every]] for i in picks]
    width = max(len(r) for r in rows)
    h, w = rows[0].shape[1:]
    # rows of unequal length are padded with black slices, so the real rows line up under the generated ones
    rows = [np.concatenate([r, np.zeros((width - len(r), h, w), np.uint8)]) for r in rows]
    return save_grid(rows, path)

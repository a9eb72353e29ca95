"""NIfTI volumes to the ADNI layout: ``IN/<class>/<subject>.nii[.gz]`` (or volumes anywhere under ``IN`` with a
``subject,label`` CSV) -> ``OUT/{train,test}/<class>/<subject>_<slice>.png``, 8-bit grey, split by subject.

Conventions, those of the demo set (:mod:`brainvq.data.demo`), so converted scans look like demo and ADNI slices:

- Orientation: each volume is reoriented to the closest canonical RAS voxel order (``nib.as_closest_canonical``:
  axis permutations and flips only, so an oblique scan is cut along its own closest-to-axial planes); slices are then
  shown in the radiological view, nose (anterior) up and the subject's left on the image right.
- Intensities: the ``low_percentile`` and ``high_percentile`` of the volume's nonzero voxels (the head, or the brain
  of a skull-stripped scan; every voxel of a scan with a noisy background) map to 0 and 1, clipped.
- Foreground: voxels above :data:`FOREGROUND` of that range. Its extent along an axis is the span of the planes that
  hold at least :data:`PLANE_SHARE` of the fullest plane's foreground voxels (stray bright voxels do not count).
- Slab: ``slices`` axial slices ``slice_mm`` apart, the one numbered ``slices // 2`` at ``slab_level`` of the
  foreground's axial extent (0 its lowest plane, 1 its top). Slice ``000`` is the lowest. The default 0.5, the middle
  of the brain, is 2.5 mm below the demo set's mid-ventricle level on the MNI template. Scans that include the neck
  have a longer extent: raise ``slab_level`` for them.
- Scale: in-plane, ``pixel_mm`` mm per output pixel, or (0) the scale at which the slab's foreground box fills
  :data:`FILL` of the frame, keeping the aspect from the voxel sizes (the header's zooms); centred on that box.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from brainvq.data.demo import SLICE_STEP
from brainvq.data.images import few, new_output_folder, shown, to_uint8, warn_data, write_subject
from brainvq.errors import ConfigError, DataError, one_line
from brainvq.values import RESERVED_LABELS

log = logging.getLogger(__name__)
SUFFIXES = (".nii.gz", ".nii")  # matched in any case
MANIFEST = "brainvq_slices.json"  # beside train/ and test/: parameters, and each subject's class, split and source
FOREGROUND = 0.1  # normalised intensity above which a voxel is head or brain (background noise lies below)
PLANE_SHARE = 0.01  # a plane is inside the extent when it holds >= 1% of the fullest plane's foreground voxels
FILL = 0.9  # fitted scale: the slab's foreground box fills this share of the frame (MNI template: the demo's 1.2 px/mm)


@dataclass(frozen=True)
class SliceConfig:
    """Validated parameters of a conversion (see the module's conventions)."""

    slices: int = 20  # per subject, as in the cleaned ADNI set
    slice_mm: float = float(SLICE_STEP)
    slab_level: float = 0.5
    pixel_mm: float = 0.0
    image_size: tuple[int, int] = (240, 256)  # (H, W)
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)
        checks = [
            ("slices", 1 <= self.slices <= 1000, "an integer in [1, 1000]"),
            ("slice_mm", math.isfinite(self.slice_mm) and self.slice_mm > 0, "a length > 0 in mm"),
            ("slab_level", 0 <= self.slab_level <= 1, "in [0, 1] (0 the foreground's lowest plane, 1 its top)"),
            ("pixel_mm", math.isfinite(self.pixel_mm) and self.pixel_mm >= 0, "mm per pixel >= 0 (0 = fit)"),
            ("image_size", len(size) == 2 and min(size) >= 8, "two sizes >= 8 (HxW)"),
            ("low_percentile", 0 <= self.low_percentile < self.high_percentile, "in [0, high_percentile)"),
            ("high_percentile", self.high_percentile <= 100, "in (low_percentile, 100]"),
            ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"bad parameter: {name} must be {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Volume:
    path: Path
    subject: str
    label: str


# --------------------------------------------------------------------------------------------------- finding


def volume_subject(name: str) -> str | None:
    """``sub01.nii.gz`` -> ``sub01``; None for a file that is not a NIfTI volume."""
    low = name.lower()
    return next((name[: -len(s)] for s in SUFFIXES if low.endswith(s) and len(name) > len(s)), None)


def _check_label(label: str, where: str) -> str:
    """A class becomes a class folder: one path component, not hidden, and a name the reader takes as a class (not a
    sampling name such as ``none``, no comma)."""
    bad = not label or label.startswith(".") or any(c in label for c in "/\\\0,") or not label.isprintable()
    if bad or label in RESERVED_LABELS:
        raise DataError(f"{where}: {label!r} cannot be a class (a class is a folder name, not hidden, without a comma, "
                        f"and not {', '.join(RESERVED_LABELS)})")
    return label


def read_labels(csv_path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """``subject -> (label, line)`` from a ``subject,label`` CSV; a first row naming ``subject`` and ``label`` is a
    header (then those columns are read, in any position, beside others)."""
    path = Path(csv_path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: spreadsheets write a BOM
            rows = [(i, [c.strip() for c in row]) for i, row in enumerate(csv.reader(fh), 1)
                    if any(c.strip() for c in row)]  # blank lines skipped
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"labels_csv: cannot read {shown(path)} ({getattr(exc, 'strerror', None) or one_line(exc)})"
                        ) from None
    cols = (0, 1)
    if rows and {"subject", "label"} <= {c.lower() for c in rows[0][1]}:
        header = [c.lower() for c in rows[0][1]]
        cols, rows = (header.index("subject"), header.index("label")), rows[1:]
    labels: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        where = f"labels_csv {shown(path)} line {line}"
        if len(row) <= max(cols) or not row[cols[0]]:
            raise DataError(f"{where}: expected subject,label, got {','.join(row)!r}")
        subject, label = row[cols[0]], _check_label(row[cols[1]], where)
        if subject in labels and labels[subject][0] != label:
            raise DataError(f"{where}: subject {subject} is labelled {labels[subject][0]} on line "
                            f"{labels[subject][1]} and {label} here")
        labels.setdefault(subject, (label, line))
    if not labels:
        raise DataError(f"labels_csv {shown(path)} holds no subject,label rows")
    return labels


def find_volumes(in_dir: str | os.PathLike, labels_csv: str | os.PathLike = "") -> list[Volume]:
    """The volumes to convert, sorted by subject. Classes come from ``IN/<class>/`` folders, or with ``labels_csv``
    from that CSV for volumes anywhere under ``IN``. Subject ids (file names without ``.nii``/``.nii.gz``) must be
    unique; a volume without a class, or a CSV subject without a volume, is an error naming it."""
    root = Path(in_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"in_dir does not exist or is not a folder: {shown(root)}")
    if labels_csv:
        labels = read_labels(labels_csv)
        files = sorted(p for p in root.rglob("*")  # hidden: macOS ._x.nii.gz forks
                       if volume_subject(p.name) and not p.name.startswith(".") and not p.is_dir())
        found = [(p, volume_subject(p.name)) for p in files]
        for p, subject in found:
            if subject not in labels:
                raise DataError(f"volume {shown(p)} has no label in labels_csv {shown(labels_csv)}")
        vols = [Volume(p, s, labels[s][0]) for p, s in found]
        missing = sorted(set(labels) - {s for _, s in found}, key=lambda s: labels[s][1])
        if missing:
            raise DataError(f"labels_csv {shown(labels_csv)} line {labels[missing[0]][1]}: subject {missing[0]} has "
                            f"no volume under {shown(root)}" + (f" ({len(missing)} such subjects)" if len(missing) > 1
                                                               else ""))
    else:
        vols, skipped = [], []
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue  # hidden: .DS_Store, .git
            if entry.is_dir():
                label = _check_label(entry.name, shown(entry))
                for p in sorted(entry.iterdir()):
                    subject = volume_subject(p.name)
                    if subject and not p.is_dir():
                        vols.append(Volume(p, subject, label))
                    elif not p.name.startswith("."):
                        skipped.append(p)
            elif volume_subject(entry.name):
                raise DataError(f"volume {shown(entry)} has no label: put it in a class folder "
                                f"({shown(root)}/<class>/) or give labels_csv")
        if skipped:
            warn_data(f"{shown(root)}: skipped {len(skipped)} file(s) or folder(s) in class folders that are not "
                      f"NIfTI volumes ({few([shown(p.relative_to(root)) for p in skipped])})")
    if not vols:
        raise DataError(f"no NIfTI volumes (.nii, .nii.gz) in {shown(root)} (expected {shown(root)}/<class>/"
                        "<subject>.nii.gz, or volumes with labels_csv)")
    seen: dict[str, Path] = {}
    for v in vols:
        if v.subject in seen:
            raise DataError(f"subject {v.subject} has two volumes: {shown(seen[v.subject])} and {shown(v.path)}")
        seen[v.subject] = v.path
    return sorted(vols, key=lambda v: v.subject)


# --------------------------------------------------------------------------------------------------- reading


def _open(path: Path):
    """The NIfTI image (header read, data not yet), 3-D: a trailing axis of length 1 is dropped."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if len(img.shape) > 3:
            img = nib.funcs.squeeze_image(img)
    except Exception as exc:  # nibabel raises many types for a bad header; each one is a fault of this file
        raise DataError(f"corrupt or unreadable volume: {shown(path)} ({one_line(exc)})") from None
    if len(img.shape) > 3:
        raise DataError(f"{shown(path)}: 4D volumes are not supported (shape {'x'.join(map(str, img.shape))}); "
                        "give one 3-D volume per subject")
    if len(img.shape) < 3 or min(img.shape) < 1:
        raise DataError(f"{shown(path)}: not a 3-D volume (shape {'x'.join(map(str, img.shape))})")
    return img


def load_canonical(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume as float32 ``(X, Y, Z)`` in closest canonical RAS voxel order, and its voxel sizes in mm."""
    import nibabel as nib

    path = Path(path)
    img = _open(path)
    try:
        canon = nib.as_closest_canonical(img)
        data = canon.get_fdata(dtype=np.float32)  # (X, Y, Z): x to the subject's right, y anterior, z superior
    except Exception as exc:  # truncated or corrupt data: gzip, zlib, EOF and size errors
        raise DataError(f"corrupt or unreadable volume: {shown(path)} ({one_line(exc)})") from None
    zooms = tuple(float(z) for z in canon.header.get_zooms()[:3])
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{shown(path)}: bad voxel sizes {zooms} in the header")
    return np.nan_to_num(data, copy=False, nan=0.0, posinf=0.0, neginf=0.0), zooms


# --------------------------------------------------------------------------------------------------- slicing


def _extent(profile: np.ndarray) -> tuple[int, int]:
    """First and last index of the planes holding >= PLANE_SHARE of the fullest plane's foreground voxels."""
    inside = np.flatnonzero(profile >= PLANE_SHARE * profile.max())
    return int(inside[0]), int(inside[-1])


def render_slices(data: np.ndarray, zooms, cfg: SliceConfig) -> tuple[np.ndarray, dict]:
    """The slab of a canonical volume ``data`` (X, Y, Z) as uint8 ``(slices, H, W)``, lowest slice first, radiological
    view; and what was chosen (intensity range, slice heights, scale). ValueError says why a volume cannot give one."""
    zx, zy, zz = zooms
    h, w = cfg.image_size
    nonzero = data[data != 0]
    if nonzero.size == 0:
        raise ValueError("the volume is all zero")
    lo, hi = (float(v) for v in np.percentile(nonzero, [cfg.low_percentile, cfg.high_percentile]))
    if not hi > lo:
        raise ValueError(f"no intensity range between percentiles {cfg.low_percentile} and {cfg.high_percentile}")
    fg = data > lo + FOREGROUND * (hi - lo)  # (X, Y, Z)
    if not fg.any():
        raise ValueError("no foreground voxels")
    z0, z1 = _extent(fg.sum(axis=(0, 1)))
    centre = z0 + cfg.slab_level * (z1 - z0)  # voxel index of slice slices // 2
    z = centre + (cfg.slice_mm / zz) * (np.arange(cfg.slices) - cfg.slices / 2)  # (S,) voxel heights, as the demo's
    if z[0] < -0.5 or z[-1] > data.shape[2] - 0.5:
        raise ValueError(f"its {cfg.slices} slices {cfg.slice_mm:g} mm apart around slab_level {cfg.slab_level:g} "
                         f"reach beyond the volume ({z[0] * zz:.0f} to {z[-1] * zz:.0f} mm of 0 to "
                         f"{(data.shape[2] - 1) * zz:.0f} mm); lower slices or slice_mm, or move slab_level")
    k0, k1 = max(0, math.floor(z[0])), min(data.shape[2] - 1, math.ceil(z[-1]))
    box = fg[:, :, k0 : k1 + 1]
    (x0, x1), (y0, y1) = _extent(box.sum(axis=(1, 2))), _extent(box.sum(axis=(0, 2)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2  # voxel centre of the slab's foreground box
    mm = cfg.pixel_mm or max((x1 - x0 + 1) * zx / (FILL * w), (y1 - y0 + 1) * zy / (FILL * h))  # mm per pixel
    slab = np.clip((data[:, :, k0 : k1 + 1] - lo) / (hi - lo), 0, 1)  # (X, Y, K) in [0, 1]
    # Anti-aliasing where pixels are coarser than voxels (sigma as skimage's resize): no moire at small sizes.
    sigma = (max(0.0, (mm / zx - 1) / 2), max(0.0, (mm / zy - 1) / 2), 0.0)
    if max(sigma) > 0:
        slab = ndimage.gaussian_filter(slab, sigma, mode="constant")
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    # radiological view: anterior (+y) up, the subject's right (+x) on the image left
    xv = np.broadcast_to(cx - (cc - (w - 1) / 2) * mm / zx, (cfg.slices, h, w))
    yv = np.broadcast_to(cy - (rr - (h - 1) / 2) * mm / zy, (cfg.slices, h, w))
    zv = np.broadcast_to((z - k0)[:, None, None], (cfg.slices, h, w))
    out = ndimage.map_coordinates(slab, np.stack([xv, yv, zv]), order=1, mode="constant", cval=0.0,
                                  output=np.float32)  # (S, H, W)
    info = {"intensity_range": [lo, hi], "slice_z_mm": [round(float(v) * zz, 3) for v in z],
            "centre_voxel": [cx, cy, float(centre)], "pixel_mm": float(mm)}
    return to_uint8(out), info


def split_subjects(vols: list[Volume], test_fraction: float, seed: int) -> set[str]:
    """Test subjects: a seeded share of each class (see :func:`brainvq.data.adni.split_by_subject`)."""
    from brainvq.data.adni import split_by_subject

    classes = sorted({v.label for v in vols})
    ids = [classes.index(v.label) for v in vols]
    _, test = split_by_subject([v.subject for v in vols], test_fraction, seed, ids)
    chosen = {vols[i].subject for i in test}
    if not chosen or len(chosen) == len(vols):
        side = "test" if not chosen else "train"
        raise DataError(f"test_fraction={test_fraction} of {len(vols)} subjects leaves {side} empty (a class gives "
                        "test a subject only when it has 2 or more); add subjects or change test_fraction")
    return chosen


# --------------------------------------------------------------------------------------------------- writing


def make_slices(in_dir: str | os.PathLike, out_dir: str | os.PathLike, labels_csv: str | os.PathLike = "",
                progress: bool = True, **params) -> Path:
    """Convert the volumes of ``in_dir`` into the ADNI layout under ``out_dir`` (new or empty); returns it.

    All or nothing: every header is checked before any slicing, and the set is written into a hidden folder beside
    ``out_dir`` that takes its place in one rename, so a bad volume leaves no half-written set. Deterministic.
    """
    cfg = SliceConfig(**params)
    if not str(in_dir):
        raise ConfigError("bad parameter: in_dir is required (a folder of NIfTI volumes)")
    if not str(out_dir):
        raise ConfigError("bad parameter: out_dir is required (a new folder for the slices)")
    out = new_output_folder(out_dir)
    vols = find_volumes(in_dir, labels_csv)
    for v in vols:
        _open(v.path)  # a 4-D or unreadable header fails now, before minutes of slicing
    test = split_subjects(vols, cfg.test_fraction, cfg.seed)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        subjects = {}
        for v in tqdm(vols, desc="volumes", unit="volume", disable=not progress, leave=False):
            data, zooms = load_canonical(v.path)
            try:
                images, info = render_slices(data, zooms, cfg)
            except ValueError as exc:
                raise DataError(f"{shown(v.path)}: {exc}") from None
            split = "test" if v.subject in test else "train"
            write_subject(staged / split / v.label, v.subject, images)
            subjects[v.subject] = {"class": v.label, "split": split, "source": str(v.path.resolve()),
                                   "voxel_mm": list(zooms), **info}
        manifest = {"in_dir": str(Path(in_dir).expanduser().resolve()), "labels_csv": str(labels_csv),
                    **asdict(cfg), "subjects": subjects}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, default=list))
        try:
            os.replace(staged, out)  # over a missing or empty folder only
        except OSError as exc:
            raise DataError(f"out_dir: cannot write {shown(out)} ({exc.strerror or one_line(exc)}; another command "
                            "may have written to it meanwhile); nothing was written") from None
        staged = None
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    counts = {s: sum(1 for m in subjects.values() if m["split"] == s) for s in ("train", "test")}
    log.info("%s: %d train and %d test subjects, %d slices each", out, counts["train"], counts["test"], cfg.slices)
    return out

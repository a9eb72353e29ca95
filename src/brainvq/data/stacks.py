"""Generated subjects on disk: an ADNI-layout class tree of PNG slices and one NIfTI volume per subject.

``OUT/<class>/<subject>_<slice>.png`` (slice ``000`` the lowest), the layout of a split folder of the cleaned ADNI set,
so the folder is a ``data_dir`` by itself (read as a training set, :func:`brainvq.data.adni.load_adni`) or merges
into a real ``ROOT/train``; and ``OUT/nifti/<subject>.nii.gz``, the same slices as a volume. Subject ids start with
:data:`SYNTHETIC_PREFIX`, which no ADNI id does (``002_S_0295``), and carry the seed, so two calls with different
seeds never collide either.

Volume geometry, the inverse of :mod:`brainvq.data.volumes` (``make-slices``): voxel order RAS (x from the subject's
left to right, y from posterior to anterior, z up), the slices shown in the radiological view (nose up, the
subject's left on the image right), so image column ``c`` is ``x = W-1-c``, row ``r`` is ``y = H-1-r`` and slice
``k`` is ``z = k``; voxel sizes ``pixel_mm`` in-plane and ``slice_mm`` between slices, the volume centred on the
origin. Numpy and nibabel only (no torch): the onnxruntime sampler writes these.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from brainvq.data.images import to_uint8, write_subject

SYNTHETIC_PREFIX = "synth-"
NIFTI_FOLDER = "nifti"
# The demo set's scale (1.2 output pixels per mm, brainvq.data.demo) and slice spacing (2 mm): the defaults when the
# data's own spacing is not known, as for the cleaned ADNI slices, whose headers are gone.
PIXEL_MM = 1 / 1.2
SLICE_MM = 2.0


def subject_ids(n: int, seed: int) -> list[str]:
    """``synth-s<seed>-0000``, ...: ids that cannot collide with real ADNI ids, nor with another seed's."""
    return [f"{SYNTHETIC_PREFIX}s{seed}-{i:04d}" for i in range(n)]


def volume_affine(shape: tuple[int, int, int], pixel_mm: float, slice_mm: float) -> np.ndarray:
    """The RAS affine of a ``(X, Y, Z)`` volume with these voxel sizes, centred on the origin."""
    zooms = np.array([pixel_mm, pixel_mm, slice_mm], dtype=np.float64)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -zooms * (np.array(shape) - 1) / 2
    return affine


def slices_to_volume(slices: np.ndarray) -> np.ndarray:
    """``(S,H,W)`` slices in the radiological view -> ``(X=W, Y=H, Z=S)`` voxels in RAS order."""
    return np.ascontiguousarray(np.asarray(slices)[:, ::-1, ::-1].transpose(2, 1, 0))


def volume_to_slices(volume: np.ndarray) -> np.ndarray:
    """The inverse of :func:`slices_to_volume`."""
    return np.ascontiguousarray(np.asarray(volume).transpose(2, 1, 0)[:, ::-1, ::-1])


def write_volume(path: str | os.PathLike, slices: np.ndarray, pixel_mm: float = PIXEL_MM,
                 slice_mm: float = SLICE_MM) -> Path:
    """One subject's ``(S,H,W)`` uint8 slices as a NIfTI-1 volume (uint8, RAS, mm units)."""
    import nibabel as nib

    volume = slices_to_volume(slices)
    img = nib.Nifti1Image(volume.astype(np.uint8), volume_affine(volume.shape, pixel_mm, slice_mm))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(img.affine, code=1)  # scanner-anatomical: the axes are RAS in mm
    img.header.set_sform(img.affine, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_subjects(out: str | os.PathLike, images: np.ndarray, class_names: Sequence[str], ids: Sequence[str],
                   pixel_mm: float = PIXEL_MM, slice_mm: float = SLICE_MM) -> dict[str, list[Path]]:
    """``images (n,S,1,H,W)`` or ``(n,S,H,W)`` (floats in [0,1] or uint8) of subjects ``ids`` of classes
    ``class_names`` (one per subject; "none" for unlabelled ones) -> the PNG tree and the volumes under ``out``.
    Returns ``{"pngs": [...], "volumes": [...]}``."""
    pixels = images if images.dtype == np.uint8 else to_uint8(images)
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], *pixels.shape[-2:])  # (n,S,H,W)
    out = Path(out)
    pngs, volumes = [], []
    for subject, name, stack in zip(ids, class_names, pixels):
        write_subject(out / name, subject, stack)
        pngs += [out / name / f"{subject}_{k:03d}.png" for k in range(len(stack))]
        volumes.append(write_volume(out / NIFTI_FOLDER / f"{subject}.nii.gz", stack, pixel_mm, slice_mm))
    return {"pngs": pngs, "volumes": volumes}

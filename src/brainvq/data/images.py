"""Slices as files, both ways: any PNG decoded to an 8-bit grey ``(H, W)`` array fitted to ``image_size`` by centred
pad/crop, and arrays written as PNG slices and contact-sheet grids (numpy and PIL only: the torch-free sampler
writes with these too)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainvq.errors import ConfigError, DataError, one_line

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes for 16-bit PNGs (newer PIL reads them as "I")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def fit(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centred zero-pad and/or crop ``a`` (h, w) to ``size`` (H, W); never resamples, so anatomy is never stretched."""
    out = np.zeros(size, dtype=a.dtype)
    (h, w), (th, tw) = a.shape, size
    ch, cw = min(h, th), min(w, tw)
    sy, sx = (h - ch) // 2, (w - cw) // 2  # crop offsets in the source
    dy, dx = (th - ch) // 2, (tw - cw) // 2  # pad offsets in the target
    out[dy : dy + ch, dx : dx + cw] = a[sy : sy + ch, sx : sx + cw]
    return out


def to_grey_uint8(im: Image.Image) -> tuple[np.ndarray, str]:
    """A loaded PIL image as uint8 ``(h, w)`` and its kind: ``grey``, ``rgb`` (converted) or ``16bit`` (scaled)."""
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im, dtype=np.float64) / 65535.0  # [0, 1] by the 16-bit range, whatever the image's max
        return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "16bit"
    if im.mode in COLOUR_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8), "rgb"  # ITU-R 601 luma
    if im.mode == "F":
        return (np.clip(np.asarray(im, dtype=np.float64), 0, 1) * 255 + 0.5).astype(np.uint8), "grey"
    return np.asarray(im.convert("L"), dtype=np.uint8), "grey"  # L, LA (alpha dropped), P, 1


def decode(path: str | os.PathLike, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Read one image as uint8 grey ``size`` (H, W); returns ``(array, kind)`` (see :func:`to_grey_uint8`).

    Raises :class:`DataError` naming the file for a zero-byte, truncated, corrupt, unreadable or non-image file,
    whatever exception the image library raises for it (a decompression bomb's is not an ``OSError``).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"empty (zero-byte) image file: {path}")
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later in a worker
            a, kind = to_grey_uint8(im)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"not an image file: {path}") from None
    except Exception as exc:  # any failure to decode this one file is a fault of the file
        raise DataError(f"corrupt or unreadable image file: {path} ({one_line(exc) or 'unreadable'})") from None
    if a.ndim != 2:
        raise DataError(f"unexpected image shape {a.shape} in {path}")
    return fit(a, size), kind


def warn_conversions(kinds: dict[str, int], where: str | os.PathLike) -> None:
    """One warning per load for colour inputs, with their count (16-bit input is expected and only scaled)."""
    if kinds.get("rgb"):
        warnings.warn(f"{kinds['rgb']} colour (RGB/RGBA) images under {where} were converted to grey",
                      UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------- writing


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``(N,1,H,W)`` or ``(N,H,W)`` floats in [0,1] -> ``(N,H,W)`` uint8."""
    a = np.asarray(images, dtype=np.float32)
    if a.ndim == 4:
        a = a[:, 0]
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Tile rows of images (each ``(N,H,W)`` uint8, same H and W) into one uint8 picture."""
    rows = [r for r in rows if len(r)]
    h, w = rows[0].shape[1:]
    ncols = max(len(r) for r in rows)
    grid = np.zeros((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid


def save_grid(rows: Sequence[np.ndarray], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid([to_uint8(r) if r.dtype != np.uint8 else r for r in rows])).save(path)
    return path



def writable_folder(path: str | os.PathLike, name: str = "out") -> Path:
    """Create ``path`` if needed and check that it takes files; a one-line ``ConfigError`` naming ``name`` otherwise.
    Call it before sampling: a bad output folder should not cost a sampling run."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot write samples to {out} ({exc.strerror or exc})") from None
    return out


def write_slices(images: np.ndarray, out_dir: str | os.PathLike) -> list[Path]:
    """``sample_000.png``, ... and ``grid.png`` (a near-square contact sheet) from ``(N,1,H,W)`` or ``(N,H,W)``
    slices (floats in [0,1] or uint8); returns the paths, the grid last."""
    out = writable_folder(out_dir)
    pixels = images if images.dtype == np.uint8 and images.ndim == 3 else to_uint8(images)  # (N,H,W)
    cols = math.ceil(math.sqrt(len(pixels)))
    paths = [out / f"sample_{i:03d}.png" for i in range(len(pixels))]
    try:
        for path, img in zip(paths, pixels):
            Image.fromarray(img, mode="L").save(path)
        paths.append(save_grid([pixels[i : i + cols] for i in range(0, len(pixels), cols)], out / "grid.png"))
    except OSError as exc:  # disk full, folder removed while sampling
        raise ConfigError(f"out: cannot write samples to {out} ({exc.strerror or exc})") from None
    return paths

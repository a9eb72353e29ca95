"""Slices as files, both ways: any PNG decoded to an 8-bit grey ``(H, W)`` array fitted to ``image_size`` by centred
pad/crop, and arrays written as PNG slices and contact-sheet grids (numpy and PIL only: the torch-free sampler
writes with these too)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainvq.errors import ConfigError, DataError, one_line

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes for 16-bit PNGs (newer PIL reads them as "I")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
SIXTEEN_BIT_DEPTHS = (8, 10, 12, 16)  # the bit depths a 16-bit PNG's values are scaled by (see effective_bits)


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
    """A loaded PIL image as uint8 ``(h, w)`` and its kind: ``grey``, ``rgb`` (converted), ``16bit`` (scaled by the
    16-bit range), ``16bit:<bits>`` (a 16-bit file holding 8/10/12-bit values, scaled by that range; the loader
    then brings a load's 16-bit images to one depth) or ``16bit:blank`` (all zero)."""
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im)
        bits = effective_bits(int(a.max()) if a.size else 0)
        # Scanners and converters store 8/10/12-bit data in 16-bit PNGs; /65535 would make those slices near black.
        scaled = np.asarray(a, dtype=np.float64) / (2**bits - 1)
        kind = "16bit" if bits == 16 else f"16bit:{bits}" if a.any() else "16bit:blank"  # black at any depth
        return (np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8), kind
    if im.mode in COLOUR_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8), "rgb"  # ITU-R 601 luma
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))  # a float TIFF named .png may hold NaN
        return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "grey"
    return np.asarray(im.convert("L"), dtype=np.uint8), "grey"  # L, LA (alpha dropped), P, 1


def effective_bits(top: int) -> int:
    """The smallest of 8, 10, 12 and 16 bits whose range holds ``top`` (a 16-bit image's largest value)."""
    return next((bits for bits in SIXTEEN_BIT_DEPTHS if top <= 2**bits - 1), 16)


NAMED = 3  # files and folders a warning or error names before "…"


def few(names: Sequence[str]) -> str:
    """The first :data:`NAMED` names, comma-separated, then "…" when there are more."""
    return ", ".join(names[:NAMED]) + (", …" if len(names) > NAMED else "")


def shown(path: str | os.PathLike) -> str:
    """A path as it can be printed on one line: control characters and undecodable bytes (a non-UTF-8 file name)
    escaped as ``\\n``, ``\\udcff``; everything else, spaces and non-ASCII letters included, as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in os.fspath(path))


def decode(path: str | os.PathLike, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Read one image as uint8 grey ``size`` (H, W); returns ``(array, kind)`` (see :func:`to_grey_uint8`).

    Raises :class:`DataError` naming the file for a zero-byte, truncated, corrupt, unreadable or non-image file,
    whatever exception the image library raises for it (a decompression bomb's is not an ``OSError``).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"empty (zero-byte) image file: {shown(path)}")
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later in a worker
            a, kind = to_grey_uint8(im)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"not an image file: {shown(path)}") from None
    except Exception as exc:  # any failure to decode this one file is a fault of the file
        raise DataError(f"corrupt or unreadable image file: {shown(path)} ({one_line(exc) or 'unreadable'})") from None
    if a.ndim != 2:
        raise DataError(f"unexpected image shape {a.shape} in {shown(path)}")
    return fit(a, size), kind


def warn_conversions(kinds: dict[str, int], where: str | os.PathLike) -> None:
    """One warning per load for converted inputs, with their counts: colour images made grey, and 16-bit images
    holding 8/10/12-bit values scaled by that range (full-range 16-bit input is expected and only scaled)."""
    parts = []
    under = f" under {shown(where)}"  # named once, in the first part
    if kinds.get("rgb"):
        parts.append(f"{kinds['rgb']} colour (RGB/RGBA) images{under} were converted to grey")
    for bits in SIXTEEN_BIT_DEPTHS[:-1]:
        if kinds.get(f"16bit:{bits}"):
            parts.append(f"{kinds[f'16bit:{bits}']} 16-bit images{'' if parts else under} holding {bits}-bit values "
                         f"were scaled by {2**bits - 1}, not 65535")
    if parts:
        warn_data("; ".join(parts), stacklevel=3)


def warn_data(message: str, stacklevel: int = 2) -> None:
    """The one way the data readers warn about their input: a one-line ``UserWarning`` (name paths with
    :func:`shown`). ``stacklevel`` counts from the caller of this function, as for :func:`warnings.warn`."""
    warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


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



def write_subject(folder: str | os.PathLike, subject: str, slices: np.ndarray) -> None:
    """One subject's ``(S,H,W)`` uint8 slices as ``folder/<subject>_<slice>.png`` (``000`` the lowest), the ADNI
    layout brainvq reads; fast zlib level, since the cache decodes each file once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(slices):
        Image.fromarray(img).save(folder / f"{subject}_{k:03d}.png", optimize=False, compress_level=1)


def new_output_folder(path: str | os.PathLike, name: str = "out_dir") -> Path:
    """Check that a command can fill ``path`` from scratch, before it does any work: ``path`` is absent or an empty
    folder, and its parent (created when missing) takes new folders. A one-line ``DataError`` naming ``name``
    otherwise: a data set is never mixed with other files. Only the parent is created."""
    out = Path(path).expanduser()
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DataError(f"{name}: output folder {shown(out)} is not empty; choose a new folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise DataError(f"{name}: cannot create output folder {shown(out)} ({exc.strerror or one_line(exc)})") from None
    return out


SAMPLE_FILES = ("sample_*.png", "grid.png")  # what write_slices writes; --overwrite replaces only such folders


def writable_folder(path: str | os.PathLike, name: str = "out", overwrite: bool = False,
                    ours: Sequence[str] = SAMPLE_FILES, deep: bool = False) -> Path:
    """Check, before sampling, that the samples can go to ``path``: its parent takes files, and ``path`` is new or
    empty, or (``overwrite``) holds only an earlier run's samples: files whose names match ``ours`` (every file
    below ``path`` when ``deep``, else its entries). A one-line ``ConfigError`` naming ``name`` otherwise: a bad
    output folder should not cost a sampling run, and one run's files never mix with another's."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        if not out.is_dir():
            held = []
        elif deep:
            held = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        else:
            held = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise ConfigError(f"{name}: cannot write samples to {out} ({exc.strerror or exc})") from None
    foreign = [f for f in held if not any(Path(f).match(pattern) for pattern in ours)]
    if foreign:
        raise ConfigError(f"{name}: {out} holds other files ({few(foreign)}); choose an empty or new folder")
    if held and not overwrite:
        raise ConfigError(f"{name}: {out} already holds {len(held)} files of an earlier run; pass --overwrite true "
                          f"to replace them, or choose a new folder")
    return out


def publish_folder(out: str | os.PathLike, fill: Callable[[Path], list[Path]], overwrite: bool = False,
                   name: str = "out") -> list[Path]:
    """Write a folder all or nothing: ``fill(staged)`` writes into a hidden folder beside ``out`` and returns the
    paths it wrote; that folder then takes ``out``'s place in one rename. A reader (or an artifact upload) sees
    either the earlier samples or these, never a mix or a half; a command that filled ``out`` in the meantime makes
    this one fail rather than mix its files in, and a failure puts the earlier samples back. Check ``out`` with
    :func:`writable_folder` first. Returns the written paths under ``out``."""
    import errno
    import shutil
    import tempfile

    out = Path(out)
    staged = old = None
    try:
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        written = [out / Path(p).relative_to(staged) for p in fill(staged)]
        if overwrite and out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # over the empty placeholder; then the new folder takes the name
        os.replace(staged, out)  # over a missing or empty folder only: a folder filled meanwhile fails (ENOTEMPTY)
        staged = None
    except OSError as exc:  # disk full, folder removed or filled by another command while sampling
        if old is not None and not out.exists():
            os.replace(old, out)  # put the earlier samples back
            old = None
        filled = exc.errno in (errno.ENOTEMPTY, errno.EEXIST)
        why = "another command wrote to it while this one sampled" if filled else (exc.strerror or str(exc))
        raise ConfigError(f"{name}: cannot write samples to {out} ({why}); nothing was written") from None
    finally:
        for leftover in (staged, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return written


def write_slices(images: np.ndarray, out_dir: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """``sample_000.png``, ... and ``grid.png`` (a near-square contact sheet) from ``(N,1,H,W)`` or ``(N,H,W)``
    slices (floats in [0,1] or uint8), all or nothing (:func:`publish_folder`); returns the paths, the grid last."""
    out = writable_folder(out_dir, overwrite=overwrite)
    pixels = images if images.dtype == np.uint8 and images.ndim == 3 else to_uint8(images)  # (N,H,W)
    cols = math.ceil(math.sqrt(len(pixels)))
    names = [f"sample_{i:03d}.png" for i in range(len(pixels))] + ["grid.png"]

    def fill(staged: Path) -> list[Path]:
        for name, img in zip(names, pixels):
            Image.fromarray(img, mode="L").save(staged / name)
        save_grid([pixels[i : i + cols] for i in range(0, len(pixels), cols)], staged / "grid.png")
        return [staged / name for name in names]

    return publish_folder(out, fill, overwrite)

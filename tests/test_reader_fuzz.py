"""Fuzz the ADNI reader with seeded malformed folder trees and image files.

Every case must either load (uint8 slices of the asked size, finite floats in [0, 1]) or fail with a one-line
:class:`~brainvq.errors.BrainVQError` that names a path under the case's folder; any other exception is a reader bug.
The tree for a seed is drawn from ``numpy.random.default_rng(seed)``, so a failure names the seed that rebuilds it.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainvq.data import load_adni
from brainvq.data.splits import load_splits
from brainvq.errors import BrainVQError

SEEDS_PER_CHUNK = 75
CHUNKS = 4  # 300 cases
SIZE = (16, 16)
MAX_MESSAGE = 300
SHAPES = [(1, 1), (3, 500), (500, 3), (16, 16), (20, 13), (7, 40)]
NAMES = ["s1", "s2", "s3", "sub ject", "süb", "脳", "a_b", "x\ny", b"\xff\xfe", "-n", ".hidden"]
FOLDERS = {"AD": 0.8, "NC": 0.8, "CN": 0.1, "nc": 0.1, "ad": 0.05, "MCI": 0.1, "AD ": 0.05, "x.png": 0.05}


def _png_bytes(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(a)
    (im.convert(mode) if mode else im).save(buf, format="PNG")
    return buf.getvalue()


def _declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header declares ``width`` x ``height`` (CRC fixed up), as in test_bad_inputs."""
    data = bytearray(_png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def _content(rng: np.random.Generator, kind: str) -> bytes | None:
    """The bytes of one file of ``kind`` (None: not a plain file, made by :func:`_place`)."""
    h, w = SHAPES[rng.integers(len(SHAPES))]
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "grey":
        return _png_bytes(grey)
    if kind == "16bit":
        top = int(rng.choice([0, 200, 1000, 4000, 65535]))
        return _png_bytes(rng.integers(0, top + 1, (h, w)).astype(np.uint16))
    if kind in ("RGB", "RGBA", "P", "1", "LA"):
        return _png_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), kind)
    if kind == "zero":
        return b""
    if kind == "truncated":
        good = _png_bytes(grey)
        return good[: int(rng.integers(1, len(good)))]
    if kind == "random":
        return rng.bytes(int(rng.integers(1, 300)))
    if kind == "text":
        return b"subject,slice,label\n1,2,AD\n"
    if kind == "bomb":
        return _declaring(*[(40_000, 40_000), (3_000, 3_000), (1, 2**30)][rng.integers(3)])
    if kind == "float_tiff":  # another format under a .png name, with NaN in it
        buf = io.BytesIO()
        Image.fromarray(np.full((h, w), np.nan, np.float32)).save(buf, format="TIFF")
        return buf.getvalue()
    return None


KINDS = ["grey"] * 10 + ["16bit", "RGB", "RGBA", "P", "1", "LA", "zero", "truncated", "random", "text", "bomb",
                        "float_tiff", "folder", "dangling", "loop", "other"]


def _place(rng: np.random.Generator, folder: Path, case: list[str]) -> None:
    """Write 1-5 files (now and then none) of random kinds and names into ``folder``; ``case`` records them."""
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(0 if rng.random() < 0.05 else int(rng.integers(1, 6))):
        kind = KINDS[rng.integers(len(KINDS))]
        stem = NAMES[rng.integers(len(NAMES))]
        stem = os.fsdecode(stem) if isinstance(stem, bytes) else stem
        ext = [".png", ".png", ".PNG", ".Png"][rng.integers(4)]
        path = folder / f"{stem}_{rng.integers(100):03d}{ext}"
        if kind == "other":
            path = folder / [".DS_Store", "notes.txt", "labels.csv", "Thumbs.db"][rng.integers(4)]
        if path.exists() or path.is_symlink():
            continue
        case.append(f"{kind}:{folder.name}/{path.name!r}")
        if kind == "folder":
            path.mkdir()
            if rng.random() < 0.5:
                path.joinpath("inner_000.png").write_bytes(_png_bytes(np.zeros((4, 4), np.uint8)))
        elif kind == "dangling":
            path.symlink_to(folder / "moved_away.png")
        elif kind == "loop":
            other = path.with_name(path.name + ".loop.png")
            path.symlink_to(other)
            other.symlink_to(path)
        elif kind == "other":
            path.write_bytes(rng.bytes(8))
        else:
            path.write_bytes(_content(rng, kind))


def build_case(rng: np.random.Generator, root: Path) -> list[str]:
    """A malformed (or sometimes fine) data folder at ``root``; returns a short description of it."""
    case: list[str] = []
    if rng.random() < 0.03:
        return ["no data folder"]
    if rng.random() < 0.03:
        root.parent.mkdir(parents=True, exist_ok=True)
        root.write_text("a file, not a folder")
        return ["data folder is a file"]
    root.mkdir(parents=True)
    splits = [s for s in ("train", "test", "val", "Train") if rng.random() < (0.93 if s in ("train", "test") else 0.2)]
    for split in splits:
        folder = root / split
        layout = str(rng.choice(["labelled", "flat", "mixed", "empty"], p=[0.7, 0.2, 0.07, 0.03]))
        case.append(f"{split}:{layout}")
        folder.mkdir()
        if layout in ("flat", "mixed"):
            _place(rng, folder, case)
        if layout in ("labelled", "mixed"):
            for name in [name for name, p in FOLDERS.items() if rng.random() < p]:
                _place(rng, folder / name, case)
                if rng.random() < 0.1:
                    _place(rng, folder / name / "nested", case)
        if rng.random() < 0.1:
            (folder / "empty folder").mkdir(exist_ok=True)
    return case


def _check(root: Path, seed: int, case: list[str], skip_bad: bool) -> str:
    """Load ``root`` the way training does; returns ``ok`` or ``error``, or fails the test naming the seed."""
    where = f"seed {seed} skip_bad={skip_bad} case {case}"
    val_fraction = [0.0, 0.3][seed % 2]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if seed % 3 == 0:
                splits = load_splits(str(root), SIZE, val_fraction, seed, 0, skip_bad=skip_bad)
            else:
                splits = load_adni(root, image_size=SIZE, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad)
    except BrainVQError as exc:
        msg = str(exc)
        assert "\n" not in msg and "\r" not in msg, f"{where}: multi-line error {msg!r}"
        assert len(msg) <= MAX_MESSAGE, f"{where}: {len(msg)}-character error {msg!r}"
        assert str(root) in msg, f"{where}: error names no path under the data folder: {msg!r}"
        return "error"
    except Exception as exc:  # any other exception is the bug this test looks for
        pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
    said = [str(w.message) for w in caught if str(root) in str(w.message)]  # the reader's own warnings
    assert all("\n" not in m for m in said), f"{where}: multi-line warning in {said}"
    for split in ("train", "test"):  # nothing silent: anything the reader does not read is named in a warning
        if _unread(root, split):
            assert any(m.startswith(f"{root / split}: skipped ") for m in said), f"{where}: {split}: silent {said}"
    assert len(splits.train) + len(splits.val) > 0 and len(splits.test) > 0, where
    for name in ("train", "val", "test"):
        ds = getattr(splits, name)
        assert ds.images.dtype == np.uint8 and ds.images.shape == (len(ds), *SIZE), f"{where}: {name}"
        assert set(ds.labels.tolist()) <= {-1, *range(len(splits.classes))}, f"{where}: {name} labels"
        if len(ds):
            x, y = ds.batch(np.arange(min(len(ds), 4)))
            assert x.shape[1:] == (1, *SIZE) and bool(x.isfinite().all()), f"{where}: {name}"
            assert 0 <= float(x.min()) and float(x.max()) <= 1, f"{where}: {name}"
    return "ok"


def _class_folders(root: Path) -> set[str]:
    """The tree's class folders, as ImageFolder finds them: folders directly in train/ or test/, not hidden, that hold
    ``.png`` files (in any case) directly."""
    names = set()
    for split in ("train", "test"):
        for d in os.listdir(root / split) if (root / split).is_dir() else ():
            folder = root / split / d
            if not d.startswith(".") and folder.is_dir() and any(
                f.lower().endswith(".png") and not (folder / f).is_dir() for f in os.listdir(folder)
            ):
                names.add(d)
    return names


def _unread(root: Path, split: str) -> bool:
    """Whether a split holds anything besides class folders and ``.png`` files (in any case) in them."""
    folder, classes = root / split, _class_folders(root)
    for parent, dirs, files in os.walk(folder):
        if any(Path(parent) != folder or d not in classes for d in dirs):
            return True
        if any(not f.lower().endswith(".png") for f in files):
            return True
    return False


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_reader_loads_or_fails_with_one_line(chunk, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINVQ_CACHE", str(tmp_path / "cache"))
    outcomes = {"ok": 0, "error": 0}
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        root = tmp_path / f"c{seed}"
        case = build_case(np.random.default_rng(seed), root)
        for skip_bad in (False, True):
            outcomes[_check(root, seed, case, skip_bad)] += 1
    assert outcomes["ok"] and outcomes["error"], outcomes  # the generator reaches both outcomes

"""The fingerprint of a data folder: a digest of its file list.

Cheap on purpose (names, sizes and modification times; no file is read), so a pipeline can compare it before
deciding to reuse a step. Torch- and MLflow-free: the tracking layer logs it (``mlflow.log_input``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

SPLIT_FOLDERS = ("train", "test")


class DataFingerprint(NamedTuple):
    digest: str  # 16 hex digits over every file's path (relative to the root), size and modification time
    files: int  # files under the split folders
    bytes: int


def data_fingerprint(root: str | os.PathLike) -> DataFingerprint:
    """Every regular file under ``root/train`` and ``root/test`` (or under ``root`` when it has neither: a flat
    folder of samples), in sorted order. Adding, removing, renaming, resizing or rewriting a file changes it; moving
    the whole folder does not."""
    root = Path(root).expanduser()
    tops = [root / s for s in SPLIT_FOLDERS if (root / s).is_dir()] or [root]
    entries = []
    for top in tops:
        for folder, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                try:
                    st = path.stat()
                except OSError:  # vanished or unreadable: still part of the list, as such
                    entries.append((path.relative_to(root).as_posix(), -1, -1))
                    continue
                entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    h = hashlib.sha256()
    for rel, size, mtime in sorted(entries):
        h.update(os.fsencode(rel) + f"\0{size}\0{mtime}\n".encode())
    return DataFingerprint(h.hexdigest()[:16], len(entries), sum(max(0, e[1]) for e in entries))

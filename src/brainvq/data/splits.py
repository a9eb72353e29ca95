"""Which slices a run trains, validates and tests on: the data folder (or the demo set) and its splits."""

from __future__ import annotations

import logging
from pathlib import Path

from brainvq.data.adni import ADNISplits, load_adni

log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | None) -> Path:
    """``data_dir`` or, when empty, the default demo set (generated into the cache on first use)."""
    if data_dir:
        return Path(data_dir).expanduser()
    from brainvq.data.demo import ensure_demo_data

    root = ensure_demo_data()
    log.info("data_dir is empty: using the demo set at %s", root)
    return root


def load_splits(data_dir: str | None, image_size, val_fraction: float, seed: int, max_train_images: int,
                skip_bad: bool = False, classes=None) -> ADNISplits:
    """The splits of ``data_dir`` (or the demo set); ``classes`` picks and orders the class folders (empty: all)."""
    root = resolve_data_dir(data_dir)
    splits = load_adni(root, image_size=tuple(image_size), val_fraction=val_fraction, seed=seed,
                       skip_bad=skip_bad, max_train_images=max_train_images, classes=classes)
    log.info("data %s: %d train / %d val / %d test slices%s", root, len(splits.train), len(splits.val),
             len(splits.test), f", classes {','.join(splits.classes)}" if splits.classes else " (flat: no classes)")
    return splits

"""Pictures logged as artifacts: image grids and loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


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


def save_loss_curve(history: list[dict[str, float]], keys: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Plot per-epoch metrics (``keys`` present in ``history``) against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys):
        ys = [h.get(key, np.nan) for h in history]
        ax.plot(epochs, ys, marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

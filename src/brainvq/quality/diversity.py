"""Diversity of a set of slices: mean pairwise MS-SSIM (lower = more diverse, ~1 = mode collapse)."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from brainvq.quality.metrics import ms_ssim, ssim

# torchmetrics' MS-SSIM (5 scales, 11-px window) checks ``side // (5 - 1)**2 > 11 - 1``, i.e. each side >= 176 px.
MSSSIM_MIN_SIDE = 176


def random_pairs(n: int, max_pairs: int, rng: np.random.Generator,
                 groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_pairs`` distinct unordered pairs ``i < j`` of ``range(n)`` (all of them if there are fewer).

    With ``groups`` (e.g. the subject of each slice) only pairs from different groups are drawn: adjacent slices of
    one subject are near copies, and would make a real set look less diverse than it is.
    """
    i, j = np.triu_indices(n, 1)
    if groups is not None:
        g = np.asarray(groups)
        keep = g[i] != g[j]
        i, j = i[keep], j[keep]
    if len(i) <= max_pairs:
        return i, j
    pick = np.sort(rng.choice(len(i), size=max_pairs, replace=False))
    return i[pick], j[pick]


def msssim_diversity(images: torch.Tensor, max_pairs: int = 256, seed: int = 0,
                     groups: Sequence[str] | None = None, batch_size: int = 32) -> float:
    """Mean MS-SSIM over up to ``max_pairs`` random pairs of ``images (N,1,H,W)`` in [0,1] (pairs across ``groups``
    when given). Images under 176 px a side fall back to single-scale SSIM, with a warning: a different scale, so
    compare only figures of the same size."""
    if len(images) < 2:
        raise ValueError(f"diversity needs at least 2 images, got {len(images)}")
    metric = ms_ssim
    if min(images.shape[-2:]) < MSSSIM_MIN_SIDE:
        warnings.warn(f"images are {tuple(images.shape[-2:])}, MS-SSIM needs >= {MSSSIM_MIN_SIDE} px a side; "
                      "diversity falls back to single-scale SSIM", UserWarning, stacklevel=2)
        metric = ssim
    i, j = random_pairs(len(images), max_pairs, np.random.default_rng([seed, 161]), groups)
    if len(i) == 0:
        raise ValueError("diversity needs at least one pair of images from different subjects")
    scores = []
    with torch.no_grad():
        for s in range(0, len(i), batch_size):
            a, b = torch.from_numpy(i[s : s + batch_size]), torch.from_numpy(j[s : s + batch_size])
            scores.append(metric(images[a], images[b]))  # (b,)
    return float(torch.cat(scores).double().mean())

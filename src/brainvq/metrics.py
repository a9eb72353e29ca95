"""Image metrics, computed with torchmetrics and configured to match scikit-image's reference SSIM.

``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1.0)`` averages the SSIM map after cropping ``(win_size - 1) // 2 = 5`` pixels from each border;
torchmetrics averages the uncropped (reflect-padded) map. We ask torchmetrics for the full map and crop it the same
way, which agrees with scikit-image to ~1e-6 (tests/test_metrics.py holds it to 1e-3).
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

SIGMA = 1.5
# scikit-image's window for gaussian weights: 2 * int(truncate * sigma + 0.5) + 1 with truncate = 3.5.
WIN = 2 * int(3.5 * SIGMA + 0.5) + 1
_CROP = (WIN - 1) // 2


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map ``(B,C,H-10,W-10)`` for images in [0,1], border cropped as scikit-image does."""
    _, full = structural_similarity_index_measure(
        pred.float(), target.float(), gaussian_kernel=True, sigma=SIGMA, kernel_size=WIN,
        data_range=1.0, reduction="none", return_full_image=True,
    )
    return full[..., _CROP:-_CROP, _CROP:-_CROP]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM ``(B,)`` for ``(B,1,H,W)`` images in [0,1] (scikit-image reference definition)."""
    return ssim_map(pred, target).flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``(B,)`` for images in [0,1]."""
    return peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image multi-scale SSIM ``(B,)`` (Wang et al. 2003), images in [0,1] and at least 176 px a side
    (torchmetrics checks ``side // 16 > 10`` for 5 scales and an 11-px window)."""
    return multiscale_structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, reduction="none", normalize="relu"
    )

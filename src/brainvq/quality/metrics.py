"""Image metrics, computed with torchmetrics and configured to match scikit-image's reference SSIM.

``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1.0)`` averages the SSIM map after cropping ``(win_size - 1) // 2 = 5`` pixels from each border;
torchmetrics averages the uncropped (reflect-padded) map. We ask torchmetrics for the full map and crop it the same
way, which agrees with scikit-image to ~1e-6 (tests/test_metrics.py holds it to 1e-3).

Brain-region figures (:func:`ssim_brain`, :func:`psnr_brain`) average over :func:`brain_mask` only: on the demo set
about half of every slice is black background, which any decoder reproduces and which flatters whole-slice figures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# torchmetrics is imported where it is used: importing it pulls in scipy.signal and its plotting (~2 s on 2 CPU
# cores), which every command that never measures an image (a bad-parameter error, sampling, export) would pay.

SIGMA = 1.5
# scikit-image's window for gaussian weights: 2 * int(truncate * sigma + 0.5) + 1 with truncate = 3.5.
WIN = 2 * int(3.5 * SIGMA + 0.5) + 1
_CROP = (WIN - 1) // 2
# Brain mask rule: target intensity above 5/255 (~0.02; background is 0 in skull-stripped slices, noise reaches a
# few grey levels), then dilated by 3 px so the brain's edge, where blur shows first, counts as brain.
BRAIN_THRESHOLD = 0.02
BRAIN_DILATION = 3


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map ``(B,C,H-10,W-10)`` for images in [0,1], border cropped as scikit-image does."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        pred.float(), target.float(), gaussian_kernel=True, sigma=SIGMA, kernel_size=WIN,
        data_range=1.0, reduction="none", return_full_image=True,
    )
    return full[..., _CROP:-_CROP, _CROP:-_CROP]


def brain_mask(target: torch.Tensor, threshold: float = BRAIN_THRESHOLD,
               dilation: int = BRAIN_DILATION) -> torch.Tensor:
    """Boolean brain mask ``(B,1,H,W)`` of target slices in [0,1]: ``target > threshold`` dilated by ``dilation``
    pixels (a square max-pool), the rule every brain-region figure uses."""
    mask = (target > threshold).float()
    if dilation > 0:
        mask = F.max_pool2d(mask, 2 * dilation + 1, stride=1, padding=dilation)
    return mask > 0


def ssim_brain(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean of the SSIM map over the brain mask ``(B,)`` (map and mask cropped alike); NaN for a slice
    with no brain pixel."""
    mask = brain_mask(target)[..., _CROP:-_CROP, _CROP:-_CROP].float()
    smap = ssim_map(pred, target)
    return (smap * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)


def psnr_brain(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB over the brain mask ``(B,)``; NaN for a slice with no brain pixel."""
    mask = brain_mask(target).float()
    mse = (((pred.float() - target.float()) ** 2) * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM ``(B,)`` for ``(B,1,H,W)`` images in [0,1] (scikit-image reference definition)."""
    return ssim_map(pred, target).flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``(B,)`` for images in [0,1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image multi-scale SSIM ``(B,)`` (Wang et al. 2003), images in [0,1] and at least 176 px a side
    (torchmetrics checks ``side // 16 > 10`` for 5 scales and an 11-px window)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    return multiscale_structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, reduction="none", normalize="relu"
    )

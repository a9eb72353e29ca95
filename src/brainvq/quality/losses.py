"""Training losses. The SSIM *metric* lives in ``brainvq.quality.metrics`` (torchmetrics); this is a cheaper loss
term."""

from __future__ import annotations

import torch


def _band(n: int, sigma: float, device, dtype) -> torch.Tensor:
    """``(n - 2r, n)`` matrix whose rows are the 1-D Gaussian window at each valid position."""
    r = int(3.5 * sigma + 0.5)
    x = torch.arange(-r, r + 1, device=device, dtype=dtype)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    m = torch.zeros(n - 2 * r, n, device=device, dtype=dtype)
    idx = torch.arange(n - 2 * r, device=device)
    for k in range(2 * r + 1):
        m[idx, idx + k] = g[k]
    return m


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """``1 - mean SSIM`` over the valid region, Gaussian window (sigma 1.5, 11 taps), single-channel images in [0,1].

    The separable Gaussian filter is applied as two banded matrix products (``G_h @ X @ G_w^T``): on CPU that is
    ~30× faster than a depthwise 11×11 ``conv2d`` on one channel, and its backward is two more matmuls.
    """
    h, w = pred.shape[-2:]
    gh = _band(h, sigma, pred.device, pred.dtype)  # (h-10, h)
    gw = _band(w, sigma, pred.device, pred.dtype)  # (w-10, w)
    p, t = pred.squeeze(1), target.squeeze(1)  # (B,H,W)
    stack = torch.stack([p, t, p * p, t * t, p * t])  # (5,B,H,W)
    mu_p, mu_t, e_pp, e_tt, e_pt = gh @ stack @ gw.t()  # each (B,h-10,w-10)
    var_p, var_t, cov = e_pp - mu_p**2, e_tt - mu_t**2, e_pt - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return 1 - s.mean()


def discretised_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                             levels: int = 255) -> torch.Tensor:
    """Per-pixel ``-log p(x)`` in nats of 8-bit images ``x`` (values ``k / levels``) under a Gaussian
    ``N(mean, scale²)`` discretised to the ``levels + 1`` grey levels, the two end bins open to ±infinity: the
    discretised likelihood of PixelCNN++ (Salimans et al. 2017, https://arxiv.org/abs/1701.05517, section 2.1) with a
    Gaussian in place of the logistic. All arguments ``(B,1,H,W)``; returns ``(B,1,H,W)``.

    Why discretised: the slices are 8-bit and their background is exactly 0. A continuous density would drive the
    scale to zero there and its log-density to infinity; the probability of the bin is at most 1.
    """
    half = 0.5 / levels
    inv = 1 / scale
    upper, lower = (x - mean + half) * inv, (x - mean - half) * inv
    # P(b < Z < a) on the side of the tail the bin lies in, in log space: log Phi(a) + log(1 - Phi(b) / Phi(a)).
    # A plain difference of CDFs loses everything far in a tail (1 - 1 in float32), and residuals there are common
    # early in training.
    right = (x - mean) > 0
    a, b = torch.where(right, -lower, upper), torch.where(right, -upper, lower)
    log_a = torch.special.log_ndtr(a)
    inner = log_a + torch.log((-torch.expm1(torch.special.log_ndtr(b) - log_a)).clamp_min(1e-30))
    logp = torch.where(x <= half, torch.special.log_ndtr(upper),  # bin 0 is (-inf, half]: clipped values land in it
                       torch.where(x >= 1 - half, torch.special.log_ndtr(-lower), inner))
    return -logp

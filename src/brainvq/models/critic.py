"""The evaluation classifier: a fixed full-resolution texture front end and a small learned CNN head.

A hybrid network in the sense of Oyallon et al. 2017 (https://arxiv.org/abs/1703.08961): the first layer is a fixed
bank of filters applied to the full-resolution slice (no pooling before it), the squared responses are averaged
over ``cell x cell`` blocks and log-compressed, and only then does a small CNN learn. Why a fixed front end:

* A learned CNN trained a few hundred steps on a few hundred slices does not discover that "sharp vs soft" is a
  ratio of high- to low-frequency energy: a strided full-resolution CNN detected a Gaussian blur of sigma 0.5 px at
  chance and added noise of sigma 0.02 at 0.60. Log band energies turn that ratio into a difference the first learned
  layer reads directly, at every position.
* The front end runs once per image, so training costs only the head on ``(C, H/cell, W/cell)`` maps: every
  classifier of an evaluation (C2ST folds, power checks, TSTR) trains in seconds on a CPU.

Channels of the front end (each averaged over ``cell x cell`` blocks): the mean intensity, and the log energy of the
second differences along x and y (the highest frequencies: what a half-pixel blur removes and noise adds), of the
first differences along x and y (orientation), and of three difference-of-Gaussian bands (sigma 1-2, 2-4 and the
finest band x - G_1 x: texture from cortex to deep grey matter).

``forward`` takes slices; :meth:`Critic.head_forward` takes precomputed :meth:`Critic.front` maps (what training
uses). The head's penultimate layer, together with the per-channel means and spreads of the maps, is the
``embedding`` used for the Frechet distance and precision / recall.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

FRONT_CHANNELS = 8  # mean, dxx, dyy, dx, dy, band 0, band 1, band 2
# Energy floor: 8-bit rounding alone gives a variance of (1/255)^2 / 12 ~ 1.3e-6 per pixel; exact-zero background
# (energy 0) sits at log(1e-6) instead of -inf.
ENERGY_FLOOR = 1e-6


@dataclass(frozen=True)
class CriticConfig:
    """Shape of the critic. ``outputs``: 1 for a two-sample test (one logit), the number of classes otherwise."""

    cell: int = 8  # front-end pooling block: 240x256 slices give 30x32 maps
    width: int = 8  # channels of the head's first block (doubled once)
    embedding_dim: int = 32
    outputs: int = 1

    def __post_init__(self) -> None:
        for name, low in (("cell", 1), ("width", 1), ("embedding_dim", 1), ("outputs", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"CriticConfig: {name} must be an int >= {low}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class CriticOutput(NamedTuple):
    logits: torch.Tensor  # (B,) when outputs == 1, else (B, outputs)
    embedding: torch.Tensor  # (B, embedding_dim + 2 * FRONT_CHANNELS)


def _gaussian_1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()  # (2r+1,)


@functools.lru_cache(maxsize=32)
def blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """``(n, n)`` matrix of a 1-D Gaussian blur with replicated edges: ``M_h @ x @ M_w.T`` blurs an ``(H, W)`` image.

    Matrix form because one-channel convolutions are slow on CPU: two matmuls per image run ~9x faster than
    ``F.conv2d`` with a separable kernel (1 ms vs 9 ms for the three blurs of a 240x256 slice, measured).
    """
    k = _gaussian_1d(sigma)
    r = (len(k) - 1) // 2
    idx = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp_(0, n - 1)  # (n, 2r+1)
    return torch.zeros(n, n).scatter_add_(1, idx, k.expand(n, -1).contiguous())


class Critic(nn.Module):
    """Real-vs-generated (or AD/NC) classifier over ``(B,1,H,W)`` slices in [0,1]."""

    SIGMAS = (1.0, 2.0, 4.0)

    def __init__(self, config: CriticConfig = CriticConfig()) -> None:
        super().__init__()
        self.config = config
        # Per-channel standardisation of the front-end maps, set from training data by set_normalisation().
        self.register_buffer("map_mean", torch.zeros(FRONT_CHANNELS))
        self.register_buffer("map_std", torch.ones(FRONT_CHANNELS))
        w = config.width
        self.blocks = nn.Sequential(
            nn.Conv2d(FRONT_CHANNELS, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(nn.Linear(2 * w * 16 + 2 * FRONT_CHANNELS, config.embedding_dim), nn.ReLU())
        self.out = nn.Linear(config.embedding_dim + 2 * FRONT_CHANNELS, config.outputs)

    # ------------------------------------------------------------------------------------------- fixed front end

    @staticmethod
    def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        return blur_matrix(h, sigma) @ x @ blur_matrix(w, sigma).T

    @torch.no_grad()
    def front(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,1,H,W)`` in [0,1] -> raw front-end maps ``(B, 8, ceil(H/cell), ceil(W/cell))``."""
        c = self.config.cell
        x = x.float()
        dxx = F.pad(x[..., :, 2:] - 2 * x[..., :, 1:-1] + x[..., :, :-2], (1, 1))
        dyy = F.pad(x[..., 2:, :] - 2 * x[..., 1:-1, :] + x[..., :-2, :], (0, 0, 1, 1))
        dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
        dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        g = [x] + [self._blur(x, s) for s in self.SIGMAS]
        bands = [g[0] - g[1], g[1] - g[2], g[2] - g[3]]  # finest first
        pool = lambda t: F.avg_pool2d(t, c, ceil_mode=True)  # noqa: E731
        energies = torch.cat([pool(t * t) for t in (dxx, dyy, dx, dy, *bands)], 1)  # (B,7,h,w)
        return torch.cat([pool(x), torch.log(energies + ENERGY_FLOOR)], 1)  # (B,8,h,w)

    @torch.no_grad()
    def set_normalisation(self, maps: torch.Tensor) -> None:
        """Standardise each front-end channel with the statistics of ``maps (N,8,h,w)`` (the training data)."""
        self.map_mean.copy_(maps.mean((0, 2, 3)))
        self.map_std.copy_(maps.std((0, 2, 3)).clamp_min(1e-3))

    # ------------------------------------------------------------------------------------------- learned head

    def head_forward(self, maps: torch.Tensor) -> CriticOutput:
        """Raw front-end maps ``(B,8,h,w)`` -> logits and embedding."""
        z = (maps - self.map_mean.view(1, -1, 1, 1)) / self.map_std.view(1, -1, 1, 1)
        stats = torch.cat([z.mean((2, 3)), z.std((2, 3))], 1)  # (B,16): global texture statistics
        h = self.fc(torch.cat([self.blocks(z).flatten(1), stats], 1))  # (B,embedding_dim)
        emb = torch.cat([h, stats], 1)
        logits = self.out(emb)
        return CriticOutput(logits.squeeze(1) if self.config.outputs == 1 else logits, emb)

    def forward(self, x: torch.Tensor) -> CriticOutput:
        return self.head_forward(self.front(x))

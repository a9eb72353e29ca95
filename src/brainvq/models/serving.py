"""Thin modules that give logged models a tensor-in, tensor-out ``forward`` for MLflow's pyfunc."""

from __future__ import annotations

import torch
from torch import nn


class Reconstructor(nn.Module):
    """``(B,1,H,W)`` image -> its VQ-VAE reconstruction ``(B,1,H,W)``."""

    def __init__(self, vqvae: nn.Module) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqvae(x).recon


class PriorLogits(nn.Module):
    """``(codes (B,h,w) int64, labels (B,) int64)`` -> prior logits ``(B,K,h,w)``."""

    def __init__(self, prior: nn.Module) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.prior(codes, labels).logits

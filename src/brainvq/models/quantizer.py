"""Vector quantiser with straight-through gradients, optional EMA codebook and dead-code restart.

van den Oord et al. 2017, "Neural Discrete Representation Learning", https://arxiv.org/abs/1711.00937 (losses, EMA
variant in its appendix); dead-code restart as in Dhariwal et al. 2020 (Jukebox), https://arxiv.org/abs/2005.00341.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (B,D,h,w), straight-through
    loss: torch.Tensor  # scalar: codebook + beta * commitment (codebook term is 0 with EMA)
    indices: torch.Tensor  # (B,h,w) int64
    perplexity: torch.Tensor  # scalar, exp(entropy of code usage in the batch)
    usage: torch.Tensor  # scalar, fraction of the codebook used in the batch


@dataclass(frozen=True)
class QuantizerConfig:
    num_embeddings: int = 64
    embedding_dim: int = 32
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    # A code whose EMA count (vectors per step) falls below this is re-seeded from a random encoder output of the
    # batch, as in Jukebox (threshold 1).
    dead_code_threshold: float = 1.0
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2, got {self.num_embeddings}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim (latent_dim) must be >= 1, got {self.embedding_dim}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")
        if self.dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {self.dead_code_threshold}")


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser over a ``(K, D)`` codebook."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        k, d = config.num_embeddings, config.embedding_dim
        init = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        if config.ema:
            # EMA codebooks are updated by running averages, not by the optimiser.
            self.register_buffer("codebook", init.clone())
            self.register_buffer("ema_cluster_size", torch.ones(k))
            self.register_buffer("ema_sum", init.clone())
            self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        else:
            self.codebook = nn.Parameter(init)
        # Set by the trainer under DistributedDataParallel (``engine.distributed.wrap``): EMA statistics are then
        # summed over ranks, so every rank keeps the codebook a single process would compute from the global batch.
        # A plain attribute, not state: the model itself never sets up a process group.
        self.sync_ranks = False

    def _cross_rank(self) -> bool:
        return self.sync_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _all_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Every rank's ``flat`` rows in rank order (the single-process batch), for the data-dependent codebook
        init and dead-code restarts, which pick random rows: with the same RNG state everywhere, every rank picks the
        same vectors."""
        if not self._cross_rank():
            return flat
        world = dist.get_world_size()
        n = torch.tensor([flat.shape[0]], device=flat.device)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        most = int(max(s.item() for s in sizes))
        padded = torch.zeros(most, flat.shape[1], dtype=flat.dtype, device=flat.device)  # all_gather needs equal shapes
        padded[: flat.shape[0]] = flat
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance ``(N, K)`` in the matmul form ‖x‖² − 2x·e + ‖e‖² (cdist exports badly, see PITFALLS)."""
        e = self.codebook
        return flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ e.t() + e.pow(2).sum(1)[None, :]

    def quantize_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Code index of every latent vector: ``(B,D,h,w) -> (B,h,w)`` int64."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        return self.distances(flat).argmin(1).view(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for indices: ``(B,h,w) int64 -> (B,D,h,w)``."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        cfg = self.config
        if not bool(self.initialised):
            # Seed the codebook from data: uniform init far from the encoder's range leaves codes dead.
            flat = self._all_rows(flat)
            pick = torch.randint(0, flat.shape[0], (cfg.num_embeddings,), device=flat.device)
            self.codebook.copy_(flat[pick])
            self.ema_sum.copy_(flat[pick])
            self.ema_cluster_size.fill_(1.0)
            self.initialised.fill_(True)
            return
        counts = onehot.sum(0)  # (K,)
        sums = onehot.t() @ flat  # (K,D)
        if self._cross_rank():
            both = torch.cat([counts[:, None], sums], 1)  # one collective for both statistics
            dist.all_reduce(both, op=dist.ReduceOp.SUM)
            counts, sums = both[:, 0], both[:, 1:]
        self.ema_cluster_size.mul_(cfg.decay).add_(counts, alpha=1 - cfg.decay)
        self.ema_sum.mul_(cfg.decay).add_(sums, alpha=1 - cfg.decay)
        n = self.ema_cluster_size.sum()
        # Laplace smoothing keeps rarely-used codes from dividing by ~0.
        size = (self.ema_cluster_size + cfg.eps) / (n + cfg.num_embeddings * cfg.eps) * n
        self.codebook.copy_(self.ema_sum / size[:, None])
        self._restart_dead(flat)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = self.ema_cluster_size < self.config.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        flat = self._all_rows(flat)  # ranks agree on n_dead (synced buffers), so all of them join this gather
        pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        fresh = flat[pick]
        self.codebook[dead] = fresh
        self.ema_sum[dead] = fresh
        self.ema_cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N,D)
        if self.training and self.config.ema:
            if not bool(self.initialised):
                self._ema_update(flat.detach(), None)  # data-dependent init before the first assignment
        indices = self.distances(flat).argmin(1)  # (N,)
        onehot = F.one_hot(indices, self.config.num_embeddings).type(flat.dtype)  # (N,K)
        q = F.embedding(indices, self.codebook)  # (N,D)

        commitment = F.mse_loss(flat, q.detach())
        if self.config.ema:
            loss = self.config.beta * commitment
            if self.training:
                self._ema_update(flat.detach(), onehot)
        else:
            loss = F.mse_loss(q, flat.detach()) + self.config.beta * commitment

        q = flat + (q - flat).detach()  # straight-through estimator
        probs = onehot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        usage = (probs > 0).float().mean()
        quantized = q.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        return QuantizerOutput(quantized, loss, indices.view(b, h, w), perplexity, usage)

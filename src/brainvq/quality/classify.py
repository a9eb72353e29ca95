"""Training and scoring of :class:`~brainvq.models.critic.Critic` classifiers on precomputed front-end maps.

Every classifier of an evaluation (the folds of a two-sample test, the power checks, TSTR / TRTR, the feature
network) trains here with one recipe: a fixed number of optimiser *steps* (never epochs, so the amount of training
does not shrink with the sample count), AdamW with a cosine-annealed rate, class-balanced batches. Deterministic on
CPU for a given seed and thread count.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from brainvq.models.critic import Critic, CriticConfig


@dataclass(frozen=True)
class FitConfig:
    """How a critic is trained. Part of every evaluation protocol (its digest names the protocol)."""

    # benchmarks/realism_power.py: on demo slices a sigma-0.5 blur is found at 0.93 after 50 steps and 1.00 from 100
    # on; 200 leaves a factor of two for harder differences at ~2 s per classifier on 2 CPU cores.
    steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-3
    critic: CriticConfig = field(default_factory=CriticConfig)

    def __post_init__(self) -> None:
        if isinstance(self.critic, dict):  # rebuilt from JSON
            object.__setattr__(self, "critic", CriticConfig(**self.critic))
        for name, low in (("steps", 1), ("batch_size", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"FitConfig: {name} must be an int >= {low}, got {value!r}")
        for name, low_ok in (("lr", False), ("weight_decay", True)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if low_ok else value > 0)
            if not ok:
                raise ValueError(f"FitConfig: {name} must be a finite number {'>= 0' if low_ok else '> 0'}, "
                                 f"got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator without disturbing the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def front_maps(images: torch.Tensor, cell: int = CriticConfig().cell, batch_size: int = 64) -> torch.Tensor:
    """Front-end maps ``(N,8,h,w)`` of ``images (N,1,H,W)`` in [0,1]; the front end is fixed, so compute once."""
    front = Critic(CriticConfig(cell=cell))
    return torch.cat([front.front(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])


def _balanced_batches(y: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``steps`` batches that draw every class equally often (each class cycled through in shuffled passes)."""
    classes = np.unique(y)
    per = max(1, batch_size // len(classes))
    pools = {c: np.flatnonzero(y == c) for c in classes}
    queues = {c: np.empty(0, dtype=np.int64) for c in classes}
    for _ in range(steps):
        batch = []
        for c in classes:
            while len(queues[c]) < per:
                queues[c] = np.concatenate([queues[c], rng.permutation(pools[c])])
            batch.append(queues[c][:per])
            queues[c] = queues[c][per:]
        yield np.concatenate(batch)


def fit_critic(maps: torch.Tensor, targets: np.ndarray, config: FitConfig = FitConfig(), seed: int = 0) -> Critic:
    """Train a critic on front-end ``maps (N,8,h,w)`` with integer ``targets (N,)`` in ``0..classes-1``.

    Two classes train one logit (binary cross-entropy); more train a softmax head.
    """
    y = np.asarray(targets, dtype=np.int64)
    classes = int(y.max()) + 1 if len(y) else 0
    if len(np.unique(y)) < 2:
        raise ValueError(f"a classifier needs at least two classes in its training data, got {np.unique(y).tolist()}")
    outputs = 1 if classes == 2 else classes
    with seeded(seed):
        model = Critic(CriticConfig(**{**config.critic.to_dict(), "outputs": outputs}))
    model.set_normalisation(maps)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    yt = torch.from_numpy(y)
    rng = np.random.default_rng([seed, 7])
    model.train()
    for step, idx in enumerate(_balanced_batches(y, config.batch_size, config.steps, rng)):
        for group in opt.param_groups:  # cosine decay to zero: the last steps settle instead of bouncing
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        idx_t = torch.from_numpy(idx)
        logits = model.head_forward(maps[idx_t]).logits
        target = yt[idx_t]
        loss = (F.binary_cross_entropy_with_logits(logits, target.float()) if outputs == 1
                else F.cross_entropy(logits, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict_scores(model: Critic, maps: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits ``(N,)`` (binary) or ``(N, classes)`` for front-end ``maps``."""
    model.eval()
    return torch.cat([model.head_forward(maps[s : s + batch_size]).logits for s in range(0, len(maps), batch_size)])


@torch.no_grad()
def predict_labels(model: Critic, maps: torch.Tensor) -> np.ndarray:
    scores = predict_scores(model, maps)
    return (scores > 0).long().numpy() if scores.ndim == 1 else scores.argmax(1).numpy()


@torch.no_grad()
def embed(model: Critic, maps: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Embeddings ``(N, D)`` (float64) for the Frechet distance and precision / recall."""
    model.eval()
    return torch.cat([model.head_forward(maps[s : s + batch_size]).embedding
                      for s in range(0, len(maps), batch_size)]).double().numpy()

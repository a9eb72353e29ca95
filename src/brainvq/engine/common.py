"""Pieces of the training loop (``engine.loop``): device, threads, seeding, schedule, time budget, checkpoints."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from brainvq.cpus import usable_cpus
from brainvq.errors import ConfigError, ModelFileError, TrainingDiverged
from brainvq.models.checkpoint import atomic_save, load_checkpoint
from brainvq.values import intlike


class Callback(Protocol):
    """Called after every epoch with that epoch's metrics; may raise to stop (e.g. ``optuna.TrialPruned``)."""

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None: ...


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but CUDA is not available on this machine")
    return dev


def configure_threads(num_threads: int = 0) -> int:
    """Use every core by default; more threads than cores only adds contention.

    ``num_threads <= 0`` means: ``OMP_NUM_THREADS`` when set (torchrun sets 1 per process unless you set it),
    otherwise the cores shared out among the processes on this node (``LOCAL_WORLD_SIZE``, 1 outside torchrun).
    """
    if num_threads <= 0:
        try:
            num_threads = intlike(os.environ.get("OMP_NUM_THREADS", ""))
        except argparse.ArgumentTypeError:  # unset or not a number
            num_threads = 0
        if num_threads <= 0:
            cores = usable_cpus()
            num_threads = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(max(1, num_threads))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffle order for an epoch, a pure function of (seed, epoch) so resume reproduces it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def cosine_lr(base_lr: float, progress: float, warmup: float = 0.02, floor: float = 0.02) -> float:
    """Linear warm-up then cosine decay to ``floor * base_lr``; ``progress`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return base_lr * (0.1 + 0.9 * progress / warmup)
    t = (progress - warmup) / max(1e-8, 1 - warmup)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class Budget:
    """Wall-clock budget: ``max_minutes <= 0`` means none. ``progress`` feeds the LR schedule so a budget-limited run
    still anneals its learning rate before time runs out."""

    max_minutes: float = 0.0
    start: float = field(default_factory=time.monotonic)
    spent_before: float = 0.0  # seconds used by earlier (resumed) attempts

    @property
    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.start

    def fraction(self) -> float:
        return self.elapsed / (self.max_minutes * 60.0) if self.max_minutes > 0 else 0.0

    def exhausted(self) -> bool:
        return self.max_minutes > 0 and self.elapsed >= self.max_minutes * 60.0


def check_finite(loss: torch.Tensor, epoch: int, step: int, checkpoint: Path | None) -> None:
    if not torch.isfinite(loss):
        where = f"; last good checkpoint kept at {checkpoint}" if checkpoint and checkpoint.exists() else ""
        raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch} step {step}{where}")


def save_training_checkpoint(path: Path, **payload) -> Path:
    """Atomically write a resumable checkpoint (plain tensors and builtins only, loadable with weights_only=True)."""
    saved = atomic_save(payload, path)
    # A process killed inside atomic_save leaves its temp file behind (never a truncated ``last.pt``); once a newer
    # checkpoint is in place such leftovers are garbage.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return saved


def load_training_checkpoint(path: Path, kind: str) -> dict | None:
    """The checkpoint to resume from, or None when there is none yet. A corrupt one is refused with a one-line
    ``ModelFileError`` naming the file rather than silently restarting from scratch (which would overwrite it)."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path, kind)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot resume: {exc}; delete it to start over, or run with resume=false") from None


def batches(order: np.ndarray, batch_size: int, drop_last: bool = True) -> Iterable[np.ndarray]:
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
    for i in range(0, stop, batch_size):
        yield np.sort(order[i : i + batch_size])  # sorted reads are kinder to the memmap


def run_callbacks(callbacks: Iterable[Callable], epoch: int, metrics: dict[str, float]) -> None:
    for cb in callbacks:
        cb(epoch, metrics)


def checkpoint_dir_for(kind: str, params: dict, root: str | Path = ".brainvq/checkpoints") -> Path:
    """Stable local folder ``root/<kind>-<digest of params>`` for a configuration, so ``resume=true`` finds a killed
    run's checkpoint."""
    keep = {k: v for k, v in sorted(params.items()) if k not in {"resume", "checkpoint_dir", "max_minutes"}}
    digest = hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(root) / f"{kind}-{digest}"


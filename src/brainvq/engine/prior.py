"""Gated PixelCNN prior training over VQ-VAE code grids: tracker-agnostic, resumable, time-budgeted."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from brainvq.data.codes import CodeSet
from brainvq.engine import distributed
from brainvq.engine.common import (
    batches,
    check_finite,
    configure_threads,
    cosine_lr,
    epoch_order,
    load_training_checkpoint,
    resolve_device,
    restore_rng,
    run_callbacks,
    save_training_checkpoint,
    seed_everything,
)
from brainvq.engine.tracker import NullTracker, Tracker
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


@dataclass(frozen=True)
class PriorTrainConfig:
    epochs: int = 40
    # Small batches win at a fixed CPU budget (the per-grid cost hardly changes, the optimiser steps multiply): in
    # 6.5 minutes on the demo codes, batch 4 reached 1.93 validation bits/code and batch 8 2.13 (README, "How the
    # defaults were chosen", measured on the validation split).
    batch_size: int = 4
    # With so few steps (~1,000) a high, cosine-annealed peak rate pays: lr 1e-2 reached 1.93 validation bits/code
    # where 3e-3 reached 2.15 in the same 6.5 minutes.
    lr: float = 1e-2
    seed: int = 0
    max_minutes: float = 0.0  # 0 = no time budget
    # Share of training examples whose label is replaced by the null label, so one model also samples
    # unconditionally (classifier-free-guidance style label dropout).
    label_dropout: float = 0.1
    device: str = "auto"
    num_threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


class PriorFitResult(NamedTuple):
    model: GatedPixelCNN
    history: list[dict[str, float]]
    test_metrics: dict[str, float]
    checkpoint: Path | None
    stopped_early: bool


def model_labels(labels: np.ndarray | torch.Tensor, config: PixelCNNConfig) -> torch.Tensor:
    """Map dataset labels to the prior's label ids: unknown (-1) and unconditional models get the null label."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.int64).clone()
    null = config.num_classes
    if not config.conditional:
        return torch.full_like(lab, null)
    lab[(lab < 0) | (lab >= null)] = null
    return lab


@torch.no_grad()
def nll_bits(model: GatedPixelCNN, data: CodeSet, batch_size: int = 64, device="cpu", shard: bool = False,
             unconditional: bool = False) -> float:
    """Mean negative log-likelihood in bits per code. ``unconditional=True`` gives every grid the null label.
    ``shard=True`` (every rank must call it) splits the data over DDP ranks and sums over them."""
    model.eval()
    if len(data) == 0:
        return float("nan")
    part = distributed.shard_slice(len(data)) if shard else slice(0, len(data))
    total, count = 0.0, 0
    for s in range(part.start, part.stop, batch_size):
        e = min(s + batch_size, part.stop)
        codes = torch.as_tensor(data.codes[s:e], device=device)
        labels = model_labels(data.labels[s:e], model.config).to(device)
        if unconditional:
            labels = torch.full_like(labels, model.config.num_classes)
        logits = model(codes, labels).logits
        total += F.cross_entropy(logits, codes, reduction="sum").item()
        count += codes.numel()
    if shard:
        total, count = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / count / LN2


# Pseudo-counts of the position baseline's Dirichlet prior (centred on the label's code histogram); the one that
# fits the validation codes best is used, so the baseline is as strong as a histogram can be.
POSITION_PSEUDOCOUNTS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _position_bits(train: CodeSet, held_out: CodeSet, num_embeddings: int, alpha: float) -> float:
    """Cross-entropy (bits/code) on ``held_out`` of per-label, per-position code histograms of ``train``, each
    smoothed towards that label's overall histogram with ``alpha`` pseudo-counts."""
    k = num_embeddings
    labels_tr = np.where(train.labels < 0, -1, train.labels)
    total, count = 0.0, 0
    for lab in np.unique(held_out.labels):
        tr = train.codes[labels_tr == lab] if (labels_tr == lab).any() else train.codes
        te = held_out.codes[held_out.labels == lab]
        h, w = tr.shape[1:]
        flat = tr.reshape(len(tr), -1)  # (N, h*w)
        counts = np.zeros((h * w, k), np.float64)
        np.add.at(counts, (np.broadcast_to(np.arange(h * w), flat.shape), flat), 1.0)
        unigram = (counts.sum(0) + 1.0) / (counts.sum() + k)  # add-one: unseen codes stay finite
        p = (counts + alpha * unigram) / (len(tr) + alpha)  # (h*w, K)
        te_flat = te.reshape(len(te), -1)
        total += -np.log2(p[np.arange(h * w)[None, :], te_flat]).sum()
        count += te_flat.size
    return float(total / max(1, count))


def baseline_bits(train: CodeSet, test: CodeSet, num_embeddings: int, val: CodeSet | None = None) -> dict[str, float]:
    """Baselines the prior's ``prior/test_nll_bits`` is read against, all cross-entropies on the test codes:

    * ``prior/uniform_bits``: log2 K;
    * ``prior/unigram_bits``: the training code histogram (add-one smoothed so unseen codes stay finite);
    * ``prior/position_unigram_bits``: a histogram per label and per grid position (where a code sits carries most
      of a slice's layout), smoothed towards the label's histogram with the pseudo-count that fits ``val`` best.
    """
    counts = np.bincount(train.codes.ravel(), minlength=num_embeddings).astype(np.float64) + 1.0
    p = counts / counts.sum()
    test_counts = np.bincount(test.codes.ravel(), minlength=num_embeddings).astype(np.float64)
    unigram = float(-(test_counts * np.log2(p)).sum() / max(1.0, test_counts.sum()))
    alpha = 1.0
    if val is not None and len(val):
        alpha = min(POSITION_PSEUDOCOUNTS, key=lambda a: _position_bits(train, val, num_embeddings, a))
    return {"prior/uniform_bits": math.log2(num_embeddings), "prior/unigram_bits": unigram,
            "prior/position_unigram_bits": _position_bits(train, test, num_embeddings, alpha),
            "prior/position_pseudocount": alpha}


def fit_pixelcnn(
    model_config: PixelCNNConfig,
    train_config: PriorTrainConfig,
    train: CodeSet,
    val: CodeSet | None = None,
    test: CodeSet | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    extra_checkpoint: dict | None = None,
    tracker: Tracker = NullTracker(),
    callbacks: Iterable[Callable[[int, dict], None]] = (),
) -> PriorFitResult:
    """Train the prior by maximum likelihood; logs ``prior/train_nll_bits`` and ``prior/val_nll_bits`` per epoch and
    ``prior/test_nll_bits`` at the end. Under torchrun: DDP over global batches of ``batch_size x world_size``,
    metrics averaged over ranks, checkpoint and ``tracker`` on rank 0 only (see ``engine.distributed``)."""
    tc = train_config
    seed_everything(tc.seed)  # the same seed on every rank: identical init and label dropout
    configure_threads(tc.num_threads)
    device = distributed.training_device(resolve_device(tc.device))
    if not distributed.is_main():
        tracker = NullTracker()
    model = GatedPixelCNN(model_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    gen = torch.Generator().manual_seed(tc.seed)
    extra = dict(extra_checkpoint or {})

    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    history: list[dict[str, float]] = []
    start_epoch, spent = 0, 0.0
    if resume and ckpt_path is not None:
        # Rank 0 reads the checkpoint and hands it (or its error) to the others: other nodes need not share its disk.
        ckpt = distributed.on_main(lambda: load_training_checkpoint(ckpt_path, "pixelcnn"))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            restore_rng(ckpt.get("rng", {}))
            if "gen" in ckpt.get("rng", {}):
                gen.set_state(ckpt["rng"]["gen"])
            start_epoch = int(ckpt["epoch"])
            history = json.loads(ckpt.get("history", "[]"))
            spent = float(ckpt.get("elapsed_seconds", 0.0))
            log.info("resumed prior from %s at epoch %d", ckpt_path, start_epoch)
            if int(ckpt.get("world_size", 1)) != distributed.world_size():
                log.warning("checkpoint was written by %s process(es), resuming with %d: the global batch changes",
                            ckpt.get("world_size", 1), distributed.world_size())

    net = distributed.wrap(model, device)  # DDP under torchrun, else the model itself
    budget = distributed.make_budget(tc.max_minutes, spent_before=spent)
    bs = distributed.global_batch_size(tc.batch_size, len(train))  # min(batch_size, len(train)) for one process
    steps_per_epoch = max(1, len(train) // bs)
    total_steps = tc.epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, tc.epochs):
        if budget.exhausted():
            stopped_early = True
            break
        model.train()
        t0 = time.monotonic()
        loss_sum, n_batches = 0.0, 0
        bar = tqdm(list(batches(epoch_order(len(train), tc.seed, epoch), bs)), desc=f"prior epoch {epoch + 1}/{tc.epochs}",
                   disable=not tc.progress or not distributed.is_main(), leave=False, unit="batch")
        for idx in bar:
            # Label dropout is drawn for the whole global batch on every rank, then each rank keeps its chunk: the
            # same draws as one process with the global batch.
            labels = model_labels(train.labels[idx], model_config)
            if model_config.conditional and tc.label_dropout > 0:
                drop = torch.rand(len(labels), generator=gen) < tc.label_dropout
                labels[drop] = model_config.num_classes
            part = distributed.shard_slice(len(idx))
            codes = torch.as_tensor(train.codes[idx[part]], device=device)
            labels = labels[part]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(tc.lr, max(step / total_steps, budget.fraction()))
            logits = net(codes, labels.to(device)).logits
            loss = F.cross_entropy(logits, codes)
            mean_loss = distributed.all_reduce_mean(loss.detach())  # global batch; NaN anywhere stops every rank
            check_finite(mean_loss, epoch + 1, step, ckpt_path)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            n_batches += 1
            loss_sum += mean_loss.item()
            bar.set_postfix(bits=f"{mean_loss.item() / LN2:.3f}")
            if budget.exhausted():
                stopped_early = True
                break
        bar.close()
        metrics = {
            "prior/train_nll_bits": loss_sum / max(1, n_batches) / LN2,
            "prior/lr": opt.param_groups[0]["lr"],
            "prior/codes_per_second": n_batches * bs * train.codes[0].size / max(1e-9, time.monotonic() - t0),
        }
        if val is not None and len(val):
            metrics["prior/val_nll_bits"] = nll_bits(model, val, device=device, shard=True)
        history.append({"epoch": epoch + 1, **metrics})
        # Checkpoint before logging (see fit_vqvae): a kill in between never leaves an epoch logged but not saved.
        if ckpt_path is not None and distributed.is_main():
            save_training_checkpoint(
                ckpt_path, kind="pixelcnn", config=model_config.to_dict(), model=model.state_dict(),
                optimizer=opt.state_dict(), epoch=epoch + 1,
                rng={"torch": torch.get_rng_state(), "gen": gen.get_state()}, history=json.dumps(history),
                elapsed_seconds=budget.elapsed, train_config=json.dumps(asdict(tc)),
                world_size=distributed.world_size(), **extra,
            )
        tracker.log_metrics(metrics, step=epoch + 1)
        log.info("prior epoch %d/%d train %.4f val %s bits/code", epoch + 1, tc.epochs, metrics["prior/train_nll_bits"],
                 f"{metrics.get('prior/val_nll_bits', float('nan')):.4f}")
        run_callbacks(callbacks, epoch + 1, metrics)
        if stopped_early:
            break

    test_metrics: dict[str, float] = {}
    if test is not None and len(test):
        test_metrics = {"prior/test_nll_bits": nll_bits(model, test, device=device, shard=True),
                        "prior/test_nll_bits_uncond": nll_bits(model, test, device=device, shard=True,
                                                               unconditional=True),
                        **baseline_bits(train, test, model_config.num_embeddings, val)}
        tracker.log_metrics(test_metrics, step=len(history))
    return PriorFitResult(distributed.unwrap(net).eval(), history, test_metrics, ckpt_path, stopped_early)

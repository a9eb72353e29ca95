"""VQ-VAE training loop: tracker-agnostic, resumable, time-budgeted."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

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
from brainvq.models.vqvae import VQVAE, VQVAEConfig
from brainvq.quality.losses import ssim_loss
from brainvq.quality.metrics import psnr, psnr_brain, ssim, ssim_brain

if TYPE_CHECKING:
    from brainvq.data import SliceDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    # Small batches won on CPU: at a fixed time budget more optimiser steps beat larger batches (benchmarks/).
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    max_minutes: float = 0.0  # 0 = no time budget
    # SSIM term beside MSE: MSE alone blurs fine cortical texture, which SSIM punishes.
    ssim_weight: float = 0.5
    device: str = "auto"
    num_threads: int = 0  # 0 = all cores available to this process
    channels_last: bool = True
    eval_batch_size: int = 32
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
        if not 0 <= self.ssim_weight <= 1:
            raise ValueError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")


class FitResult(NamedTuple):
    model: VQVAE
    history: list[dict[str, float]]  # one dict per finished epoch
    test_metrics: dict[str, float]
    checkpoint: Path | None
    stopped_early: bool  # time budget hit


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, data: SliceDataset, batch_size: int = 32, device: torch.device | str = "cpu",
                   shard: bool = False) -> dict[str, float]:
    """Mean SSIM, PSNR, their brain-region versions (``ssim_brain``, ``psnr_brain``: over
    :func:`brainvq.quality.metrics.brain_mask`, slices without brain left out), perplexity and codebook usage over a dataset
    (eval mode, no EMA updates).

    ``shard=True`` (every rank must call it) splits the data over DDP ranks and sums the statistics over them.
    """
    model.eval()
    device = torch.device(device)
    if len(data) == 0:
        return {}
    rows = distributed.shard(np.arange(len(data))) if shard else np.arange(len(data))
    sums = torch.zeros(5, dtype=torch.float64)  # ssim, psnr, ssim_brain, psnr_brain, slices with brain
    counts = torch.zeros(model.config.num_embeddings, dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        x, _ = data.batch(rows[start : start + batch_size])
        x = x.to(device)
        out = model(x)
        recon = out.recon.clamp(0, 1)
        sb, pb = ssim_brain(recon, x).double().cpu(), psnr_brain(recon, x).double().cpu()
        has_brain = torch.isfinite(sb)
        sums += torch.stack([ssim(recon, x).double().sum().cpu(), psnr(recon, x).double().sum().cpu(),
                             sb[has_brain].sum(), pb[has_brain].sum(), has_brain.sum().double()])
        counts += torch.bincount(out.indices.flatten().cpu(), minlength=counts.numel()).double()
    if shard:
        sums = distributed.all_reduce_sum(sums)
        counts = distributed.all_reduce_sum(counts)
    s_ssim, s_psnr, s_ssim_b, s_psnr_b, n_brain = sums.tolist()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p * torch.log(p + 1e-12)).sum()).item()
    return {
        "ssim": s_ssim / len(data),
        "psnr": s_psnr / len(data),
        "ssim_brain": s_ssim_b / n_brain if n_brain else float("nan"),
        "psnr_brain": s_psnr_b / n_brain if n_brain else float("nan"),
        "perplexity": perplexity,
        "codebook_usage": float((counts > 0).double().mean()),
    }


def _loss(model: VQVAE, x: torch.Tensor, ssim_weight: float):
    out = model(x)
    mse = F.mse_loss(out.recon, x)
    recon = mse
    if ssim_weight > 0:
        recon = (1 - ssim_weight) * mse + ssim_weight * 0.1 * ssim_loss(out.recon, x)
    return recon + out.vq_loss, recon, out


def fit_vqvae(
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    train: SliceDataset,
    val: SliceDataset | None = None,
    test: SliceDataset | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    extra_checkpoint: dict | None = None,
    tracker: Tracker = NullTracker(),
    callbacks: Iterable[Callable[[int, dict], None]] = (),
) -> FitResult:
    """Train a VQ-VAE, checkpointing every epoch to ``checkpoint_dir/last.pt`` (plus ``extra_checkpoint`` entries).

    ``resume=True`` continues from that checkpoint (finished epochs are not repeated). Metrics go to ``tracker`` as
    ``train/*`` and ``val/*`` per epoch (step = epoch) and ``test/*`` at the end.

    Inside a torchrun process group (``engine.distributed``) every rank trains ``batch_size`` images of each global
    batch of ``batch_size x world_size`` under DistributedDataParallel; metrics are averaged over ranks, and only
    rank 0 writes the checkpoint and logs to ``tracker``.
    """
    tc = train_config
    seed_everything(tc.seed)  # the same seed on every rank: identical init and identical quantiser restarts
    configure_threads(tc.num_threads)
    device = distributed.training_device(resolve_device(tc.device))
    extra = dict(extra_checkpoint or {})
    if not distributed.is_main():
        tracker = NullTracker()
    model = VQVAE(model_config).to(device)
    if tc.channels_last and device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)

    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    history: list[dict[str, float]] = []
    start_epoch, spent = 0, 0.0
    if resume and ckpt_path is not None:
        # Rank 0 reads the checkpoint and hands it (or its error) to the others: other nodes need not share its disk.
        ckpt = distributed.on_main(lambda: load_training_checkpoint(ckpt_path, "vqvae"))
        if ckpt is not None:
            if ckpt["config"] != model_config.to_dict():
                log.warning("resuming with the checkpoint's model config %s", ckpt["config"])
                model_config = VQVAEConfig(**ckpt["config"])
                model = VQVAE(model_config).to(device)
                opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            restore_rng(ckpt.get("rng", {}))
            start_epoch = int(ckpt["epoch"])
            history = json.loads(ckpt.get("history", "[]"))
            spent = float(ckpt.get("elapsed_seconds", 0.0))
            log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
            if int(ckpt.get("world_size", 1)) != distributed.world_size():
                log.warning("checkpoint was written by %s process(es), resuming with %d: the global batch changes",
                            ckpt.get("world_size", 1), distributed.world_size())

    net = distributed.wrap(model, device)  # DDP under torchrun, else the model itself
    budget = distributed.make_budget(tc.max_minutes, spent_before=spent)
    global_bs = distributed.global_batch_size(tc.batch_size, len(train))
    steps_per_epoch = max(1, len(train) // global_bs)
    total_steps = tc.epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, tc.epochs):
        if budget.exhausted():
            stopped_early = True
            break
        model.train()
        t0 = time.monotonic()
        sums = {"loss": 0.0, "recon_loss": 0.0, "vq_loss": 0.0}
        n_batches = 0
        order = epoch_order(len(train), tc.seed, epoch)
        bar = tqdm(
            list(batches(order, global_bs)), desc=f"vqvae epoch {epoch + 1}/{tc.epochs}",
            disable=not tc.progress or not distributed.is_main(), leave=False, unit="batch",
        )
        for idx in bar:
            x, _ = train.batch(distributed.shard(idx))
            x = x.to(device)
            if tc.channels_last and device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            progress = max(step / total_steps, budget.fraction())
            for group in opt.param_groups:
                group["lr"] = cosine_lr(tc.lr, progress)
            loss, recon, out = _loss(net, x, tc.ssim_weight)
            # Global-batch means (this rank's own values when not distributed); a NaN on any rank stops every rank.
            stats = distributed.all_reduce_mean(torch.stack([loss.detach(), recon.detach(), out.vq_loss.detach()]))
            check_finite(stats[0], epoch + 1, step, ckpt_path)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n_batches += 1
            for key, value in zip(("loss", "recon_loss", "vq_loss"), stats.tolist()):
                sums[key] += value
            bar.set_postfix(loss=f"{stats[0].item():.4f}", ppl=f"{out.perplexity.item():.1f}")
            if budget.exhausted():
                stopped_early = True
                break
        bar.close()
        seconds = time.monotonic() - t0
        metrics = {f"train/{k}": v / max(1, n_batches) for k, v in sums.items()}
        metrics["train/images_per_second"] = n_batches * tc.batch_size * distributed.world_size() / max(seconds, 1e-9)
        metrics["train/lr"] = opt.param_groups[0]["lr"]
        if val is not None and len(val):
            metrics.update({f"val/{k}": v for k, v in evaluate_vqvae(model, val, tc.eval_batch_size, device, shard=True).items()})
        history.append({"epoch": epoch + 1, **metrics})
        # Checkpoint before logging: a kill in between then loses nothing (a resumed run replays the checkpoint's
        # history), whereas the other order would log an epoch the checkpoint does not hold, and it would run twice.
        if ckpt_path is not None and distributed.is_main():
            save_training_checkpoint(
                ckpt_path, kind="vqvae", config=model_config.to_dict(), model=model.state_dict(),
                optimizer=opt.state_dict(), epoch=epoch + 1, rng={"torch": torch.get_rng_state()},
                history=json.dumps(history), elapsed_seconds=budget.elapsed, train_config=json.dumps(asdict(tc)),
                world_size=distributed.world_size(), **extra,
            )
        tracker.log_metrics(metrics, step=epoch + 1)
        log.info(
            "epoch %d/%d loss %.4f val/ssim %s (%.0f img/s)", epoch + 1, tc.epochs, metrics["train/loss"],
            f"{metrics.get('val/ssim', float('nan')):.4f}", metrics["train/images_per_second"],
        )
        run_callbacks(callbacks, epoch + 1, metrics)
        if stopped_early:
            break

    test_metrics: dict[str, float] = {}
    if test is not None and len(test):
        test_metrics = {f"test/{k}": v for k, v in evaluate_vqvae(model, test, tc.eval_batch_size, device, shard=True).items()}
        tracker.log_metrics(test_metrics, step=len(history))
    model = distributed.unwrap(net).to(memory_format=torch.contiguous_format).eval()
    return FitResult(model, history, test_metrics, ckpt_path, stopped_early)

"""VQ-VAE training loop: tracker-agnostic, resumable, time-budgeted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from brainvq.data.images import image_grid, to_uint8
from brainvq.engine import distributed, loop
from brainvq.engine.loop import LoopResult, StepOutput
from brainvq.engine.tracker import NullTracker, Tracker
from brainvq.models.vqvae import VQVAE, VQVAEConfig
from brainvq.quality.losses import discretised_gaussian_nll, ssim_loss
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
        loop.check_settings(self)
        if not 0 <= self.ssim_weight <= 1:
            raise ValueError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")


FitResult = LoopResult  # model, history, test_metrics, checkpoint, stopped_early


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, data: SliceDataset, batch_size: int = 32, device: torch.device | str = "cpu",
                   shard: bool = False) -> dict[str, float]:
    """Mean SSIM, PSNR, their brain-region versions (``ssim_brain``, ``psnr_brain``: over
    :func:`brainvq.quality.metrics.brain_mask`, slices without brain left out), perplexity and codebook usage over
    a dataset (eval mode, no EMA updates); with a noise scale (``pixel_noise``) also ``pixel_bits``, the mean bits
    per pixel of the data under the decoder's p(x | codes).

    ``shard=True`` (every rank must call it) splits the data over DDP ranks and sums the statistics over them.
    """
    model.eval()
    device = torch.device(device)
    if len(data) == 0:
        return {}
    rows = distributed.shard(np.arange(len(data))) if shard else np.arange(len(data))
    sums = torch.zeros(6, dtype=torch.float64)  # ssim, psnr, ssim_brain, psnr_brain, slices with brain, pixel bits
    counts = torch.zeros(model.config.num_embeddings, dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        x, _ = data.batch(rows[start : start + batch_size])
        x = x.to(device)
        out = model(x)
        recon = out.recon.clamp(0, 1)
        sb, pb = ssim_brain(recon, x).double().cpu(), psnr_brain(recon, x).double().cpu()
        has_brain = torch.isfinite(sb)
        sums += torch.stack(
            [
                ssim(recon, x).double().sum().cpu(),
                psnr(recon, x).double().sum().cpu(),
                sb[has_brain].sum(),
                pb[has_brain].sum(),
                has_brain.sum().double(),
                _pixel_bits(out, x).double().cpu() * len(x),
            ]
        )
        counts += torch.bincount(out.indices.flatten().cpu(), minlength=counts.numel()).double()
    if shard:
        sums = distributed.all_reduce_sum(sums)
        counts = distributed.all_reduce_sum(counts)
    s_ssim, s_psnr, s_ssim_b, s_psnr_b, n_brain, s_bits = sums.tolist()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p * torch.log(p + 1e-12)).sum()).item()
    bits = {"pixel_bits": s_bits / len(data)} if model.config.pixel_noise else {}
    return {
        **bits,
        "ssim": s_ssim / len(data),
        "psnr": s_psnr / len(data),
        "ssim_brain": s_ssim_b / n_brain if n_brain else float("nan"),
        "psnr_brain": s_psnr_b / n_brain if n_brain else float("nan"),
        "perplexity": perplexity,
        "codebook_usage": float((counts > 0).double().mean()),
    }


PREVIEW_IMAGES = 4  # slices in the per-epoch reconstruction picture: cheap, and enough to see blur or artefacts


@torch.no_grad()
def reconstruction_rows(model: VQVAE, data: SliceDataset, n: int) -> list[np.ndarray]:
    """Two rows of pictures, each ``(n,H,W)`` uint8: ``n`` slices spread evenly over ``data``, their reconstructions."""
    idx = np.linspace(0, len(data) - 1, num=min(n, len(data))).astype(int)
    x, _ = data.batch(idx)
    recon = model(x.to(next(model.parameters()).device)).recon.cpu().numpy()
    return [to_uint8(x.numpy()), to_uint8(recon)]


LN2 = float(np.log(2))


def _pixel_bits(out, x: torch.Tensor) -> torch.Tensor:
    """Mean bits per pixel of ``x`` under the decoder's p(x | codes) (0 without a noise model). It trains the noise
    head alone: the head reads detached features (see ``VQVAEConfig.pixel_noise``)."""
    if out.scale is None:
        return x.new_zeros(())
    return discretised_gaussian_nll(x, out.loc, out.scale).mean() / LN2


def _loss(model: VQVAE, x: torch.Tensor, ssim_weight: float):
    """``(loss, recon_loss, output, pixel_bits)`` of a batch: the reconstruction mix (MSE and SSIM) and the VQ loss
    train the mean, the discretised likelihood of the pixels trains the noise scale."""
    out = model(x)
    mse = F.mse_loss(out.recon, x)
    recon = mse
    if ssim_weight > 0:
        recon = (1 - ssim_weight) * mse + ssim_weight * 0.1 * ssim_loss(out.recon, x)
    bits = _pixel_bits(out, x)
    return recon + out.vq_loss + bits, recon, out, bits


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
    """Train a VQ-VAE with :func:`brainvq.engine.loop.fit`: ``train/*`` and ``val/*`` metrics per epoch (step =
    epoch), ``test/*`` at the end, a resumable checkpoint in ``checkpoint_dir/last.pt`` every epoch, and the picture
    ``val/reconstructions`` (:func:`reconstruction_rows` of 4 validation slices; ``train/...`` without a validation
    split) every few epochs.

    Inside a torchrun process group every rank trains ``batch_size`` images of each global batch of
    ``batch_size x world_size`` (see ``engine.distributed``).
    """
    tc = train_config
    channels_last = tc.channels_last

    def build(config: VQVAEConfig, device: torch.device) -> VQVAE:
        model = VQVAE(config).to(device)
        return model.to(memory_format=torch.channels_last) if channels_last and device.type == "cpu" else model

    def step(net, model, idx, device, gen) -> StepOutput:
        x, _ = train.batch(distributed.shard(idx))
        x = x.to(device)
        if channels_last and device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        loss, recon, out, bits = _loss(net, x, tc.ssim_weight)
        stats = torch.stack([loss.detach(), recon.detach(), out.vq_loss.detach(), bits.detach()])
        return StepOutput(loss, stats, {"loss": f"{stats[0].item():.4f}", "ppl": f"{out.perplexity.item():.1f}"})

    def epoch_metrics(means: dict[str, float], n_batches: int, seconds: float, lr: float) -> dict[str, float]:
        images = n_batches * tc.batch_size * distributed.world_size()
        return {
            **{f"train/{k}": v for k, v in means.items()},
            "train/images_per_second": images / max(seconds, 1e-9),
            "train/lr": lr,
        }

    def evaluate(model: VQVAE, split: str) -> dict[str, float]:
        data = val if split == "val" else test
        return {
            f"{split}/{k}": v
            for k, v in evaluate_vqvae(
                model, data, tc.eval_batch_size, next(model.parameters()).device, shard=True
            ).items()
        }

    shown = val if val is not None and len(val) else train
    key = "val/reconstructions" if shown is val else "train/reconstructions"

    def preview(model: VQVAE) -> dict[str, np.ndarray]:
        return {key: image_grid(reconstruction_rows(model, shown, PREVIEW_IMAGES))}

    spec = loop.TrainSpec("vqvae", "vqvae", build, step, ("loss", "recon_loss", "vq_loss", "pixel_bits"), epoch_metrics,
                         evaluate, preview=preview)
    result = loop.fit(
        spec,
        model_config,
        tc,
        len(train),
        has_val=val is not None and len(val) > 0,
        has_test=test is not None and len(test) > 0,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        extra_checkpoint=extra_checkpoint,
        tracker=tracker,
        callbacks=callbacks,
    )
    return result._replace(model=result.model.to(memory_format=torch.contiguous_format))

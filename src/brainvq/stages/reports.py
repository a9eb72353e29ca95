"""Files a training stage writes beside its metrics: picture grids, loss curves, config and the final checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from brainvq.data.images import save_grid
from brainvq.models.checkpoint import PRIOR_KIND, atomic_save
from brainvq.sampling.generate import generate

if TYPE_CHECKING:
    from brainvq.data.adni import ADNISplits
    from brainvq.engine.vqvae import FitResult, TrainConfig
    from brainvq.models.vqvae import VQVAEConfig


def save_loss_curve(history: list[dict[str, float]], keys: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Plot per-epoch metrics (``keys`` present in ``history``) against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys):
        ys = [h.get(key, np.nan) for h in history]
        ax.plot(epochs, ys, marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_vqvae_report(result: FitResult, splits: ADNISplits, model_config: VQVAEConfig, train_config: TrainConfig,
                      out_dir: str | Path, n_images: int = 12) -> dict[str, Path]:
    """Write ``reconstructions.png`` (originals above, reconstructions below), ``loss_curve.png``, ``config.json``
    and ``checkpoint/vqvae.pt`` into ``out_dir``; returns name → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = splits.test if len(splits.test) else splits.val
    idx = np.linspace(0, len(data) - 1, num=min(n_images, len(data))).astype(int)
    x, _ = data.batch(idx)
    with torch.no_grad():
        recon = result.model(x.to(next(result.model.parameters()).device)).recon.cpu().numpy()
    files = {
        "reconstructions": save_grid([x.numpy(), recon], out / "reconstructions.png"),
        "loss_curve": save_loss_curve(
            result.history, ["train/loss", "val/ssim", "val/perplexity"], out / "loss_curve.png"
        ),
    }
    cfg = {"model": model_config.to_dict(), "train": asdict(train_config), "test": result.test_metrics}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    files["config"] = out / "config.json"
    files["checkpoint"] = atomic_save(
        {
            "kind": "vqvae",
            "config": model_config.to_dict(),
            "model": result.model.state_dict(),
            "metrics": json.dumps(result.test_metrics),
        },
        out / "checkpoint" / "vqvae.pt",
    )
    return files


def save_prior_report(
    result, vqvae, train_config, vqvae_run_id: str, out_dir: str | Path, n_per_row: int = 8, seed: int = 0
) -> dict[str, Path]:
    """``samples.png`` (AD row above NC row when conditional), ``loss_curve.png``, ``checkpoint/prior.pt``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prior = result.model
    if prior.config.conditional:
        ad = generate(prior, vqvae, n_per_row, "AD", seed=seed).images
        nc = generate(prior, vqvae, n_per_row, "NC", seed=seed + 1).images
        rows = [ad, nc]
    else:
        imgs = generate(prior, vqvae, 2 * n_per_row, "none", seed=seed).images
        rows = [imgs[:n_per_row], imgs[n_per_row:]]
    files = {
        "samples": save_grid(rows, out / "samples.png"),
        "loss_curve": save_loss_curve(
            result.history, ["prior/train_nll_bits", "prior/val_nll_bits"], out / "loss_curve.png"
        ),
    }
    files["checkpoint"] = atomic_save(
        {
            "kind": PRIOR_KIND,
            "config": prior.config.to_dict(),
            "model": prior.state_dict(),
            "vqvae_run_id": vqvae_run_id,
            "train_config": json.dumps(asdict(train_config)),
            "metrics": json.dumps(result.test_metrics),
        },
        out / "checkpoint" / "prior.pt",
    )
    return files

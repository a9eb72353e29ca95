"""Files the ``train_pixelcnn`` stage writes: sample grid, loss curve, checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from brainvq.checkpoint import atomic_save
from brainvq.plots import save_grid, save_loss_curve
from brainvq.prior_stage import generate


def save_prior_report(result, vqvae, train_config, vqvae_run_id: str, out_dir: str | Path, n_per_row: int = 8,
                      seed: int = 0) -> dict[str, Path]:
    """``samples.png`` (AD row above NC row when conditional), ``loss_curve.png``, ``checkpoint/pixelcnn.pt``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prior = result.model
    if prior.config.conditional:
        ad, _, _ = generate(prior, vqvae, n_per_row, "AD", seed=seed)
        nc, _, _ = generate(prior, vqvae, n_per_row, "NC", seed=seed + 1)
        rows = [ad, nc]
    else:
        imgs, _, _ = generate(prior, vqvae, 2 * n_per_row, "none", seed=seed)
        rows = [imgs[:n_per_row], imgs[n_per_row:]]
    files = {
        "samples": save_grid(rows, out / "samples.png"),
        "loss_curve": save_loss_curve(result.history, ["prior/train_nll_bits", "prior/val_nll_bits"], out / "loss_curve.png"),
    }
    files["checkpoint"] = atomic_save(
        {"kind": "pixelcnn", "config": prior.config.to_dict(), "model": prior.state_dict(),
         "vqvae_run_id": vqvae_run_id, "train_config": json.dumps(asdict(train_config)),
         "metrics": json.dumps(result.test_metrics)},
        out / "checkpoint" / "pixelcnn.pt",
    )
    return files

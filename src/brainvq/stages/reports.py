"""Files a training stage writes beside its metrics: picture grids, config and the final checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from brainvq.data.images import save_grid
from brainvq.engine.prior import sample_rows
from brainvq.engine.vqvae import reconstruction_rows
from brainvq.models.checkpoint import PRIOR_KIND, atomic_save

if TYPE_CHECKING:
    from brainvq.data.adni import ADNISplits
    from brainvq.engine.vqvae import FitResult, TrainConfig
    from brainvq.models.vqvae import VQVAEConfig


def save_vqvae_report(result: FitResult, splits: ADNISplits, model_config: VQVAEConfig, train_config: TrainConfig,
                      out_dir: str | Path, n_images: int = 12) -> dict[str, Path]:
    """Write ``reconstructions.png`` (test slices above their reconstructions), ``config.json`` and
    ``checkpoint/vqvae.pt`` into ``out_dir``; returns name → path. No loss curves: the MLflow UI charts the run's
    metrics, per epoch and across runs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = splits.test if len(splits.test) else splits.val
    rows = reconstruction_rows(result.model, data, n_images)
    files = {"reconstructions": save_grid(rows, out / "reconstructions.png")}
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
    """``samples.png`` (:func:`brainvq.engine.prior.sample_rows`: a row per class, in alphabetical order, when
    conditional: AD above NC) and ``checkpoint/prior.pt``; no loss curve (the MLflow UI charts ``prior/*_nll_bits``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prior = result.model
    files = {"samples": save_grid(sample_rows(prior, vqvae, n_per_row, seed), out / "samples.png")}
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

"""The ``train_vqvae`` stage as a library call: data → ``fit_vqvae`` → artifacts. MLflow-free; the entry script
passes a tracker and logs the model."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from brainvq.data import ADNISplits, load_adni
from brainvq.engine.tracking import NullTracker, Tracker
from brainvq.engine.vqvae_trainer import FitResult, TrainConfig, fit_vqvae
from brainvq.models.vqvae import VQVAEConfig
from brainvq.plots import save_grid, save_loss_curve

log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | None) -> Path:
    """``data_dir`` or, when empty, the default demo set (generated into the cache on first use)."""
    if data_dir:
        return Path(data_dir).expanduser()
    from brainvq.data.demo import ensure_demo_data

    root = ensure_demo_data()
    log.info("data_dir is empty: using the demo set at %s", root)
    return root


def checkpoint_dir_for(params: dict, root: str | Path = ".brainvq/checkpoints") -> Path:
    """Stable local folder for a configuration, so ``resume=true`` finds a killed run's checkpoint."""
    keep = {k: v for k, v in sorted(params.items()) if k not in {"resume", "checkpoint_dir", "max_minutes"}}
    digest = hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(root) / f"vqvae-{digest}"


def load_splits(data_dir: str | None, image_size, val_fraction: float, seed: int, max_train_images: int,
                skip_bad: bool = False) -> ADNISplits:
    root = resolve_data_dir(data_dir)
    splits = load_adni(root, image_size=tuple(image_size), val_fraction=val_fraction, seed=seed,
                       skip_bad=skip_bad, max_train_images=max_train_images)
    log.info("data %s: %d train / %d val / %d test slices", root, len(splits.train), len(splits.val), len(splits.test))
    return splits


def save_vqvae_report(result: FitResult, splits: ADNISplits, model_config: VQVAEConfig, train_config: TrainConfig,
                      out_dir: str | Path, n_images: int = 12) -> dict[str, Path]:
    """Write ``reconstructions.png`` (originals above, reconstructions below), ``loss_curve.png``, ``config.json``
    and ``checkpoint/vqvae.pt`` into ``out_dir``; returns name → path."""
    from brainvq.checkpoint import atomic_save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = splits.test if len(splits.test) else splits.val
    idx = np.linspace(0, len(data) - 1, num=min(n_images, len(data))).astype(int)
    x, _ = data.batch(idx)
    with torch.no_grad():
        recon = result.model(x.to(next(result.model.parameters()).device)).recon.cpu().numpy()
    files = {
        "reconstructions": save_grid([x.numpy(), recon], out / "reconstructions.png"),
        "loss_curve": save_loss_curve(result.history, ["train/loss", "val/ssim", "val/perplexity"], out / "loss_curve.png"),
    }
    cfg = {"model": model_config.to_dict(), "train": asdict(train_config), "test": result.test_metrics}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    files["config"] = out / "config.json"
    files["checkpoint"] = atomic_save(
        {"kind": "vqvae", "config": model_config.to_dict(), "model": result.model.state_dict(),
         "metrics": json.dumps(result.test_metrics)},
        out / "checkpoint" / "vqvae.pt",
    )
    return files


def run_train_vqvae(model_config: VQVAEConfig, train_config: TrainConfig, *, data_dir: str | None, val_fraction: float,
                    max_train_images: int = 0, skip_bad: bool = False, resume: bool = False,
                    checkpoint_dir: str | Path | None = None, report_dir: str | Path | None = None,
                    extra_checkpoint: dict | None = None, tracker: Tracker = NullTracker(),
                    callbacks=()) -> tuple[FitResult, dict[str, Path]]:
    """Load data, train, evaluate on test and write the report files (under torchrun: rank 0 only writes them, the
    other ranks return no files)."""
    from brainvq.engine import distributed

    with distributed.local_main_first():  # one process per node builds the decoded-image cache (or the demo set)
        splits = load_splits(data_dir, model_config.image_size, val_fraction, train_config.seed, max_train_images, skip_bad)
    tracker.log_metrics({"data/train_images": len(splits.train), "data/val_images": len(splits.val),
                         "data/test_images": len(splits.test), "data/skipped_files": splits.skipped})
    result = fit_vqvae(model_config, train_config, splits.train, splits.val, splits.test,
                       checkpoint_dir=checkpoint_dir, resume=resume, extra_checkpoint=extra_checkpoint, tracker=tracker,
                       callbacks=callbacks)
    if not distributed.is_main():
        return result, {}
    report_dir = Path(report_dir or tempfile.mkdtemp(prefix="brainvq-vqvae-"))
    return result, save_vqvae_report(result, splits, model_config, train_config, report_dir)

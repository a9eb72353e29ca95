"""The ``train_vqvae`` stage as a library call: data → ``fit_vqvae`` → report files. MLflow-free; the entry script
passes a tracker and logs the model."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from brainvq.data.splits import load_splits
from brainvq.engine.tracker import NullTracker, Tracker
from brainvq.engine.vqvae import FitResult, TrainConfig, fit_vqvae
from brainvq.models.vqvae import VQVAEConfig
from brainvq.values import image_size, run_param, str2bool


def run_train_vqvae(model_config: VQVAEConfig, train_config: TrainConfig, *, data_dir: str | None, val_fraction: float,
                    max_train_images: int = 0, skip_bad: bool = False, resume: bool = False,
                    checkpoint_dir: str | Path | None = None, report_dir: str | Path | None = None,
                    extra_checkpoint: dict | None = None, tracker: Tracker = NullTracker(),
                    callbacks=(), classes=None) -> tuple[FitResult, dict[str, Path]]:
    """Load data, train, evaluate on test and write the report files (under torchrun: rank 0 only writes them, the
    other ranks return no files). ``classes`` picks and orders the class folders (empty: all, sorted); the class map
    read is recorded in the model's config (``VQVAEConfig.classes``)."""
    from brainvq.engine import distributed

    with distributed.local_main_first():  # one process per node builds the decoded-image cache (or the demo set)
        splits = load_splits(
            data_dir, model_config.image_size, val_fraction, train_config.seed, max_train_images, skip_bad, classes
        )
    model_config = replace(model_config, classes=splits.classes)
    tracker.log_metrics(
        {
            "data/train_images": len(splits.train),
            "data/val_images": len(splits.val),
            "data/test_images": len(splits.test),
            "data/skipped_files": splits.skipped,
        }
    )
    result = fit_vqvae(
        model_config,
        train_config,
        splits.train,
        splits.val,
        splits.test,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        extra_checkpoint=extra_checkpoint,
        tracker=tracker,
        callbacks=callbacks,
    )
    if not distributed.is_main():
        return result, {}
    from brainvq.stages.reports import save_vqvae_report

    report_dir = Path(report_dir or tempfile.mkdtemp(prefix="brainvq-vqvae-"))
    return result, save_vqvae_report(result, splits, model_config, train_config, report_dir)


def vqvae_run_splits(vqvae_params: dict, classes=None):
    """The train/val/test splits exactly as a VQ-VAE run made them, from its logged MLflow params; ``classes``: the
    class map it recorded (``VQVAEConfig.classes``), else its ``classes`` param (runs from before class maps: all
    class folders)."""

    def p(name, cast, default):
        return run_param(vqvae_params, name, cast, default)

    return load_splits(
        p("data_dir", str, ""),
        image_size(p("image_size", str, "240x256")),
        p("val_fraction", float, 0.1),
        p("seed", int, 0),
        p("max_train_images", int, 0),
        p("skip_bad", str2bool, False),
        classes or p("classes", str, ""),
    )

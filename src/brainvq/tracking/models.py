"""Trained models as MLflow models: report files, checkpoints, metrics and the logged PyTorch model of a stage run."""

from __future__ import annotations

import os
from typing import Mapping

import mlflow

CLASSES_TAG = "brainvq.classes"  # the class map a model was trained with: names in label order, comma-separated


def classes_tag(classes) -> dict[str, str]:
    """The run tag naming a model's classes (``""``: none, a flat layout)."""
    return {CLASSES_TAG: ",".join(classes or ())}


def torch_requirements() -> list[str]:
    """Pinned requirements for logged PyTorch models (skips MLflow's slow requirement inference)."""
    import torch

    import brainvq

    return [f"torch=={torch.__version__.split('+')[0]}", f"brainvq=={brainvq.__version__}"]


def log_vqvae_model(result, files: Mapping[str, "os.PathLike"], stopped_early: bool = False) -> None:
    """Log the report files, the checkpoint and the model (PyTorch flavour, with a signature) to the active run."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from brainvq.models.serving import Reconstructor

    for name, path in files.items():
        mlflow.log_artifact(str(path), "checkpoint" if name == "checkpoint" else None)
    if result.test_metrics:
        mlflow.log_metrics(result.test_metrics)
    mlflow.set_tags({"brainvq.stopped_by_time_budget": str(stopped_early).lower(),
                     **classes_tag(result.model.config.classes)})
    model = Reconstructor(result.model.cpu().eval())
    h, w = result.model.config.image_size
    example = np.zeros((1, 1, h, w), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    # MLflow 3's default 'pt2' format stores a torch.export graph (no pickled classes), traced from the example.
    mlflow.pytorch.log_model(
        model, name="model", signature=infer_signature(example, out), input_example=example,
        pip_requirements=torch_requirements(),
    )


def log_prior_run(result, vqvae, train_config, vqvae_run_id: str, seed: int = 0) -> None:
    """Log the prior's report files, checkpoint, metrics and model (PyTorch flavour) to the active run."""
    import tempfile

    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from brainvq.models.serving import PriorLogits
    from brainvq.stages.reports import save_prior_report

    with tempfile.TemporaryDirectory() as tmp:
        files = save_prior_report(result, vqvae, train_config, vqvae_run_id, tmp, seed=seed)
        for name, path in files.items():
            mlflow.log_artifact(str(path), "checkpoint" if name == "checkpoint" else None)
    if result.test_metrics:
        mlflow.log_metrics(result.test_metrics)
    prior = result.model.cpu().eval()
    mlflow.set_tags(classes_tag(prior.config.classes))
    h, w = prior.config.code_shape
    codes = np.zeros((1, h, w), dtype=np.int64)
    labels = np.full((1,), prior.config.num_classes, dtype=np.int64)
    with torch.no_grad():
        logits = prior(torch.from_numpy(codes), torch.from_numpy(labels)).logits.numpy()
    mlflow.pytorch.log_model(PriorLogits(prior), name="model", input_example=(codes, labels),
                             signature=infer_signature({"codes": codes, "labels": labels}, logits),
                             pip_requirements=torch_requirements())

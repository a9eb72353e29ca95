"""MLflow implementation of the tracker interface (created by pipelines/ and tuning/ only)."""

from __future__ import annotations

import math
import os
from typing import Mapping

import mlflow
import numpy as np


class MlflowTracker:
    """Logs to an MLflow run (the active run when ``run_id`` is None)."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or mlflow.active_run().info.run_id
        self._client = mlflow.tracking.MlflowClient()

    def log_params(self, params: Mapping[str, object]) -> None:
        mlflow.log_params({k: v for k, v in params.items()}, run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        # A stepped image (``key`` + ``step``, not ``artifact_file``): the run page's image grid gets a step slider
        # and run comparison shows the same key side by side. Synchronous: a few kB, and nothing to flush at the end.
        self._client.log_image(self.run_id, image, key=key, step=step, synchronous=True)

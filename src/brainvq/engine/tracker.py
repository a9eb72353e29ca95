"""Tracker interface: training loops log through it and know nothing of MLflow.

``NullTracker`` is the default; ``brainvq.tracking.tracker.MlflowTracker`` is created only by ``pipelines/``
and ``tuning/``.
"""

from __future__ import annotations

import os
from typing import Mapping, Protocol

import numpy as np


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, object]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    # ``image``: (H, W) uint8 grey picture; one per ``key`` and ``step`` (the epoch), for the UI's step slider.
    def log_image(self, key: str, image: np.ndarray, step: int) -> None: ...


class NullTracker:
    """Logs nothing."""

    def log_params(self, params: Mapping[str, object]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        pass


class MemoryTracker(NullTracker):
    """Keeps metrics in memory (tests, tuning objectives)."""

    def __init__(self) -> None:
        self.params: dict[str, object] = {}
        self.metrics: dict[str, list[tuple[int | None, float]]] = {}
        self.tags: dict[str, str] = {}
        self.images: dict[str, list[tuple[int, np.ndarray]]] = {}

    def log_params(self, params: Mapping[str, object]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        self.images.setdefault(key, []).append((step, image))

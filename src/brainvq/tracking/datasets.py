"""The data a run read, recorded with ``mlflow.log_input``: the folder as a dataset whose digest is its file-list
fingerprint (:func:`brainvq.data.fingerprint.data_fingerprint`), so the MLflow UI's Datasets column shows which
runs used the same data, and a pipeline can tell when the data under a path changed."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from brainvq.data.fingerprint import data_fingerprint


def log_data(root: str | os.PathLike, context: str, cache_keys: dict[str, str] | None = None) -> str:
    """Log ``root`` as an input of the active run (``context``: training, evaluation, ...); returns the digest.
    ``cache_keys``: the decoded-image cache entries the run used, per split, as input tags."""
    root = Path(root).expanduser().resolve()
    fp = data_fingerprint(root)
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns that it picked one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(root.as_uri())
    dataset = MetaDataset(source=source, name=root.name, digest=fp.digest)
    tags = {"brainvq.files": str(fp.files), "brainvq.bytes": str(fp.bytes)}
    tags.update({f"brainvq.cache_key.{split}": key for split, key in (cache_keys or {}).items()})
    mlflow.log_input(dataset, context=context, tags=tags)
    return fp.digest

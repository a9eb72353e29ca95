"""Stages after the VQ-VAE, as MLflow-free library calls: encode code grids, train the prior, sample slices."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from brainvq.engine.pixelcnn_trainer import CodeSet
from brainvq.errors import ConfigError, ModelFileError
from brainvq.models.vqvae import VQVAE

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
LABELS = {"NC": 0, "AD": 1, "none": 2}


@torch.no_grad()
def encode_dataset(vqvae: VQVAE, data, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Code grids ``(N,h,w)`` int64 of every slice of a dataset."""
    vqvae.eval()
    out = np.zeros((len(data), *vqvae.config.code_shape), dtype=np.int64)
    for s in tqdm(range(0, len(data), batch_size), desc="encoding", disable=not progress, unit="batch", leave=False):
        x, _ = data.batch(np.arange(s, min(s + batch_size, len(data))))
        out[s : s + len(x)] = vqvae.encode_indices(x).numpy()
    return out


def save_codes(path: Path, codes: np.ndarray, labels: np.ndarray, subjects: list[str], num_embeddings: int) -> Path:
    """Write one split's codes as an ``.npz`` of plain arrays (loads without pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, codes=codes.astype(np.int64), labels=np.asarray(labels, dtype=np.int64),
                        subjects=np.asarray(subjects, dtype=str), num_embeddings=np.int64(num_embeddings))
    return path


def load_codes(path: Path, num_embeddings: int | None = None) -> tuple[CodeSet, list[str]]:
    """Read a split's codes; ``num_embeddings`` guards against codes from another codebook size."""
    try:
        with np.load(path, allow_pickle=False) as z:
            codes, labels, subjects, k = z["codes"], z["labels"], list(z["subjects"]), int(z["num_embeddings"])
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"codes file {path} is unreadable ({str(exc).splitlines()[0][:100]})") from None
    if num_embeddings is not None and k != num_embeddings:
        raise ModelFileError(f"codes file {path} comes from a codebook of {k} entries, expected {num_embeddings}")
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise ModelFileError(f"codes file {path} holds indices outside [0, {k})")
    return CodeSet(codes, labels), subjects


def labels_for(label: str, n: int) -> np.ndarray:
    """``AD``/``NC``/``none`` (or ``both``: half AD, half NC) as prior label ids."""
    if label == "both":
        return np.array([LABELS["AD"], LABELS["NC"]] * ((n + 1) // 2), dtype=np.int64)[:n]
    if label not in LABELS:
        raise ConfigError(f"label must be one of AD, NC, none, both; got {label!r}")
    return np.full(n, LABELS[label], dtype=np.int64)


@torch.no_grad()
def generate(prior, vqvae: VQVAE, n: int, label: str = "both", temperature: float = 1.0, top_k: int = 0, seed: int = 0,
             batch_size: int = 16, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``n`` code grids from the prior (exact raster order, fast cached path) and decode them.

    Returns ``(images (n,1,H,W) float32, codes (n,h,w) int64, labels (n,))``.
    """
    from brainvq.sampling import sample_codes

    if prior.config.num_embeddings != vqvae.config.num_embeddings:
        raise ModelFileError(
            f"prior has {prior.config.num_embeddings} codes but the VQ-VAE codebook has {vqvae.config.num_embeddings}"
        )
    if tuple(prior.config.code_shape) != tuple(vqvae.config.code_shape):
        raise ModelFileError(f"prior code grid {prior.config.code_shape} != VQ-VAE code grid {vqvae.config.code_shape}")
    labels = labels_for(label, n)
    if not prior.config.conditional:
        labels = np.full(n, LABELS["none"], dtype=np.int64)
    codes = sample_codes(prior, n, labels, temperature=temperature, top_k=top_k, seed=seed, batch_size=batch_size,
                         progress=progress)
    images = np.concatenate([
        vqvae.decode_indices(torch.as_tensor(codes[s : s + batch_size])).numpy() for s in range(0, n, batch_size)
    ])
    return images, codes, labels


def run_param(params: dict, name: str, cast=str, default=None):
    """A logged MLflow param cast back to its type; missing or empty gives ``default``.

    ``mlflow run`` logs an empty-string parameter shell-quoted, as the two characters ``''``: that is empty too.
    """
    value = params.get(name)
    return default if value in (None, "", "''", '""') else cast(value)


def vqvae_run_splits(vqvae_params: dict):
    """The train/val/test splits exactly as a VQ-VAE run made them, from its logged MLflow params."""
    from brainvq.cliutil import image_size as parse_size
    from brainvq.vqvae_stage import load_splits

    def p(name, cast, default):
        return run_param(vqvae_params, name, cast, default)

    return load_splits(p("data_dir", str, ""), parse_size(p("image_size", str, "240x256")), p("val_fraction", float, 0.1),
                       p("seed", int, 0), p("max_train_images", int, 0), p("skip_bad", lambda v: v.lower() == "true", False))


def encode_all_splits(vqvae: VQVAE, vqvae_params: dict, out_dir: Path, batch_size: int = 32,
                      progress: bool = True) -> dict[str, Path]:
    """Encode train/val/test exactly as the VQ-VAE run split them (its ``data_dir``, ``val_fraction``, ``seed``,
    ``max_train_images``) and write ``out_dir/{split}.npz``."""
    splits = vqvae_run_splits(vqvae_params)
    if tuple(splits.train.images.shape[1:]) != tuple(vqvae.config.image_size):
        raise ConfigError(f"data image size {splits.train.images.shape[1:]} != VQ-VAE image_size {vqvae.config.image_size}")
    files = {}
    for name in SPLITS:
        data = getattr(splits, name)
        codes = encode_dataset(vqvae, data, batch_size, progress)
        files[name] = save_codes(Path(out_dir) / f"{name}.npz", codes, data.labels, list(data.subjects),
                                 vqvae.config.num_embeddings)
        log.info("encoded %s: %d grids of %s", name, len(codes), codes.shape[1:])
    return files

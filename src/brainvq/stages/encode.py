"""The ``encode_codes`` stage as MLflow-free library calls: every split's slices to code grids of a VQ-VAE."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from brainvq.data.codes import SPLITS, save_codes
from brainvq.errors import ConfigError
from brainvq.models.vqvae import VQVAE
from brainvq.stages.vqvae import vqvae_run_splits

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_dataset(vqvae: VQVAE, data, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Code grids ``(N,h,w)`` int64 of every slice of a dataset."""
    vqvae.eval()
    device = next(vqvae.parameters()).device  # wherever the caller placed the model
    out = np.zeros((len(data), *vqvae.config.code_shape), dtype=np.int64)
    for s in tqdm(range(0, len(data), batch_size), desc="encoding", disable=not progress, unit="batch", leave=False):
        x, _ = data.batch(np.arange(s, min(s + batch_size, len(data))))
        out[s : s + len(x)] = vqvae.encode_indices(x.to(device)).cpu().numpy()
    return out


def encode_all_splits(vqvae: VQVAE, vqvae_params: dict, out_dir: Path, batch_size: int = 32,
                      progress: bool = True) -> dict[str, Path]:
    """Encode train/val/test exactly as the VQ-VAE run split them (its ``data_dir``, ``val_fraction``, ``seed``,
    ``max_train_images``, class map) and write ``out_dir/{split}.npz``."""
    splits = vqvae_run_splits(vqvae_params, vqvae.config.classes)
    if tuple(splits.train.images.shape[1:]) != tuple(vqvae.config.image_size):
        raise ConfigError(
            f"data image size {splits.train.images.shape[1:]} != VQ-VAE image_size {vqvae.config.image_size}"
        )
    files = {}
    for name in SPLITS:
        data = getattr(splits, name)
        codes = encode_dataset(vqvae, data, batch_size, progress)
        files[name] = save_codes(
            Path(out_dir) / f"{name}.npz", codes, data.labels, list(data.subjects), vqvae.config.num_embeddings,
            levels=data.levels, classes=splits.classes,
        )
        log.info("encoded %s: %d grids of %s", name, len(codes), codes.shape[1:])
    return files

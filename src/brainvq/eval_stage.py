"""The ``evaluate_samples`` stage as MLflow-free library calls: which real slices, which generated ones.

The figures themselves are computed by :mod:`brainvq.quality.evaluate`; the entry script logs them and keeps the
calibration (power checks, feature network, real floors) in MLflow so that it is computed once per data set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from brainvq.data import ADNISplits, SliceDataset
from brainvq.errors import ConfigError, DataError
from brainvq.quality.evaluate import EvalProtocol, Slices

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def slices_of(data: SliceDataset) -> Slices:
    return Slices(np.asarray(data.images), np.asarray(data.labels), list(data.subjects))


def evaluation_sets(splits: ADNISplits, split: str) -> tuple[Slices, Slices]:
    """``(held_out, train)``: the slices of ``split`` (``val`` chooses, ``test`` reports) and the training split
    (train minus val), which trains the feature network."""
    if split not in SPLITS:
        raise ConfigError(f"split must be val or test, got {split!r}")
    held_out = getattr(splits, split)
    if len(held_out) < 16:
        raise DataError(f"the {split} split has {len(held_out)} slices; an evaluation needs at least 16 "
                        f"(raise val_fraction, or evaluate on test)")
    return slices_of(held_out), slices_of(splits.train)


@torch.no_grad()
def generate_slices(prior, vqvae, protocol: EvalProtocol, progress: bool = True, batch_size: int = 128) -> Slices:
    """``protocol.n_samples`` slices from a prior run: half AD, half NC when it is class-conditional.

    A large batch amortises the per-code overhead of the cached sampler (154 vs 393 ms per grid at 128 vs 16 on a
    2-core CPU); the codes do not depend on it (the uniforms are drawn for all slices at once).
    """
    from brainvq.plots import to_uint8
    from brainvq.prior_stage import LABELS, generate

    images, _, labels = generate(prior, vqvae, protocol.n_samples, "both", protocol.temperature, protocol.top_k,
                                 protocol.seed, batch_size=batch_size, progress=progress)
    labels = np.where(labels == LABELS["none"], -1, labels)  # the null label: no class requested
    return Slices(to_uint8(images), labels, [f"generated{i}" for i in range(len(labels))])


def vqvae_reconstructor(vqvae, batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 slices ``(N,H,W)`` -> their VQ-VAE reconstructions as uint8 (what the decoder can give at best)."""
    from brainvq.plots import to_uint8

    @torch.no_grad()
    def reconstruct(images: np.ndarray) -> np.ndarray:
        vqvae.eval()
        x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)  # (N,1,H,W)
        return to_uint8(torch.cat([vqvae(x[s : s + batch_size]).recon.clamp(0, 1)
                                   for s in range(0, len(x), batch_size)]).numpy())

    return reconstruct


def read_sample_folder(folder: str | Path, image_size: tuple[int, int]) -> Slices:
    """Generated slices from a folder of PNGs: ``FOLDER/{AD,NC}/*.png`` (labelled) or ``FOLDER/*.png``.

    ``grid.png`` (the contact sheet ``sample-onnx`` writes beside its slices) is left out, with a warning.
    """
    from brainvq.data import scan_split
    from brainvq.data.images import decode

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"samples_dir does not exist or is not a folder: {folder}")
    samples = scan_split(folder.parent, folder.name)
    kept = [s for s in samples if Path(s.path).name != "grid.png"]
    if len(kept) < len(samples):
        log.warning("%s: left out grid.png (a contact sheet, not a slice)", folder)
    if not kept:
        raise DataError(f"no slices in {folder} besides grid.png")
    images = np.stack([decode(s.path, tuple(image_size))[0] for s in kept])
    log.info("samples_dir %s: %d slices", folder, len(kept))
    return Slices(images, np.array([s.label for s in kept], dtype=np.int64), [s.subject for s in kept])


def save_generated_grid(fake: Slices, path: str | Path, rows: int = 4, per_row: int = 8) -> Path:
    """``generated.png``: the first ``rows x per_row`` generated slices."""
    from brainvq.plots import save_grid

    n = min(len(fake.images), rows * per_row)
    return save_grid([fake.images[i : i + per_row] for i in range(0, n, per_row)], path)

"""Slices from a prior and its VQ-VAE, in PyTorch: sample code grids, decode them."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from brainvq.data.labels import labels_for, levels_for
from brainvq.models.vqvae import VQVAE
from brainvq.sampling.draw import PIXEL_TEMPERATURE, pixel_draw


class Generated(NamedTuple):
    images: np.ndarray  # (n,1,H,W) float32 in [0,1]
    codes: np.ndarray  # (n,h,w) int64
    labels: np.ndarray  # (n,) label ids (the null label when the prior is unconditional)
    levels: np.ndarray  # (n,) float32 levels the slices were sampled at; NaN when the prior has no level bins


@torch.no_grad()
def decode_codes(vqvae: VQVAE, codes: np.ndarray, seed: int = 0, pixel_temperature: float = PIXEL_TEMPERATURE,
                 batch_size: int = 16) -> np.ndarray:
    """``(n,h,w)`` code grids -> ``(n,1,H,W)`` float32 slices in [0,1]: drawn from the decoder's p(x | codes) with
    ``seed`` and ``pixel_temperature`` (:func:`brainvq.sampling.draw.pixel_draw`, as the onnxruntime sampler draws
    them), or its mean when ``pixel_temperature`` is 0 or the VQ-VAE has no noise model."""
    device = next(vqvae.parameters()).device  # the caller placed the model; the draw itself is numpy
    out = []
    for s in range(0, len(codes), batch_size):
        d = vqvae.decode_indices_distribution(torch.as_tensor(codes[s : s + batch_size], device=device))
        if d.scale is None or pixel_temperature == 0:
            out.append(d.mean.cpu().numpy())
        else:
            out.append(pixel_draw(d.loc.cpu().numpy(), d.scale.cpu().numpy(), seed, s, pixel_temperature))
    return np.concatenate(out)


@torch.no_grad()
def generate(prior, vqvae: VQVAE, n: int, label: str = "all", temperature: float = 1.0, top_k: int = 0, seed: int = 0,
             batch_size: int = 16, progress: bool = True, level: str | float = "random",
             pixel_temperature: float = PIXEL_TEMPERATURE, guidance: float = 0.0) -> Generated:
    """Sample ``n`` code grids from the prior (exact raster order, fast cached path) and decode them. ``label``: a
    class the prior records (``prior.config.classes``), ``none`` or ``all`` (every class in turn; see
    :func:`brainvq.data.labels.labels_for`). ``level``: the
    slices' level in [0, 1], ``random`` or ``none`` (see :func:`brainvq.data.labels.levels_for`); priors without
    level bins ignore it. ``pixel_temperature``: the scale of the pixel draw from the decoder's p(x | codes), 0 for
    its mean (see :func:`decode_codes`). ``guidance``: classifier-free guidance weight (0 = none).

    Returns :class:`Generated` (images, codes, labels, levels).
    """
    from brainvq.sampling.draw import check_sampling_args
    from brainvq.sampling.torch_sampler import sample_codes

    prior.config.check_decoder(vqvae.config)
    labels = labels_for(label, n, prior.config.classes, prior.config.conditional)
    # the seed before it seeds levels
    check_sampling_args(n, temperature, top_k, batch_size=batch_size, seed=seed, pixel_temperature=pixel_temperature,
                        guidance=guidance)
    levels = levels_for(level, n, seed)  # checked even when the prior has no levels: a typo is a typo
    codes = sample_codes(prior, n, labels, temperature=temperature, top_k=top_k, seed=seed, batch_size=batch_size,
                         progress=progress, levels=levels if prior.config.level_bins else None, guidance=guidance)
    images = decode_codes(vqvae, codes, seed, pixel_temperature, batch_size)
    used = levels if prior.config.level_bins else np.full(n, np.nan, np.float32)
    return Generated(images, codes, labels, used)


class GeneratedSubjects(NamedTuple):
    images: np.ndarray  # (n,S,1,H,W) float32 in [0,1], slice 0 the lowest
    codes: np.ndarray  # (n,S,h,w) int64
    labels: np.ndarray  # (n,) label ids (the null label when the prior is unconditional)


@torch.no_grad()
def generate_subjects(prior, vqvae: VQVAE, n: int, label: str = "all", slices: int = 20, temperature: float = 1.0,
                      top_k: int = 0, seed: int = 0, batch_size: int = 16, progress: bool = True,
                      pixel_temperature: float = PIXEL_TEMPERATURE, method: str = "fast",
                      guidance: float = 0.0) -> GeneratedSubjects:
    """Sample ``n`` subjects, each ``slices`` consecutive axial slices from the bottom up, from a prior trained with
    ``slice_context`` (:func:`brainvq.sampling.torch_sampler.sample_subject_codes`) and decode them as
    :func:`decode_codes` does (slice ``k`` of subject ``i`` is the call's slice ``i * slices + k`` for the pixel
    draw, as in the onnxruntime sampler). ``label`` as in :func:`generate`: one class per subject."""
    from brainvq.sampling.draw import check_sampling_args
    from brainvq.sampling.torch_sampler import sample_subject_codes

    prior.config.check_decoder(vqvae.config)
    labels = labels_for(label, n, prior.config.classes, prior.config.conditional)
    check_sampling_args(n, temperature, top_k, batch_size=batch_size, method=method, seed=seed,
                        pixel_temperature=pixel_temperature, guidance=guidance)
    codes = sample_subject_codes(prior, n, labels, slices, temperature=temperature, top_k=top_k, seed=seed,
                                 batch_size=batch_size, method=method, progress=progress,
                                 guidance=guidance)  # (n,S,h,w)
    flat = codes.reshape(-1, *codes.shape[2:])
    images = decode_codes(vqvae, flat, seed, pixel_temperature, batch_size)
    return GeneratedSubjects(images.reshape(n, slices, *images.shape[1:]), codes, labels)

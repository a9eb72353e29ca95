"""Sampling from Python (a notebook, a script): an exported sampler as numpy arrays, no PyTorch needed.

    >>> from brainvq import load_sampler
    >>> sampler = load_sampler("models:/brainvq-sampler@champion")
    >>> images = sampler.sample(16, label="AD", seed=0)  # (16, 1, H, W) float32 in [0, 1]

The images are those ``brainvq sample-onnx`` writes for the same arguments (its PNGs are these, rounded to 8 bits
with :func:`brainvq.data.images.to_uint8`). Imports numpy, onnxruntime and pillow only; MLflow is imported when a
``runs:/`` or ``models:/`` URI is resolved.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from brainvq.data.images import to_uint8
from brainvq.data.labels import levels_for
from brainvq.export.ort_sampler import OnnxSampler, resolve_model_dir
from brainvq.sampling.draw import PIXEL_TEMPERATURE, check_sampling_args

MLMODEL = "MLmodel"  # marks an MLflow model folder; the pyfunc brainvq-sampler keeps the files in artifacts/


def model_folder(path: Path) -> Path:
    """The folder holding the ``.onnx`` files: ``path`` itself, or ``artifacts/`` of a logged pyfunc sampler."""
    if (path / MLMODEL).is_file() and (path / "artifacts").is_dir():
        return path / "artifacts"
    return path


class Sampler:
    """An exported decoder + prior pair, ready to sample (see :func:`load_sampler`).

    ``onnx`` is the :class:`~brainvq.export.ort_sampler.OnnxSampler` underneath; ``provider_line`` says which
    onnxruntime execution provider runs and why.
    """

    def __init__(self, onnx: OnnxSampler, source: str = "") -> None:
        self.onnx = onnx
        self.source = source or str(onnx.dir)

    @property
    def provider_line(self) -> str:
        return self.onnx.provider_line

    def __repr__(self) -> str:
        h, w = self.onnx.code_shape
        return f"Sampler({self.source!r}, codes {h}x{w} of {self.onnx.num_embeddings}, {self.onnx.providers[0]})"

    def sample(
        self,
        n: int = 16,
        label: str = "none",
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        level: str | float = "random",
        pixel_temperature: float = PIXEL_TEMPERATURE,
        batch_size: int = 16,
        method: str = "fast",
        guidance: float = 0.0,
    ) -> np.ndarray:
        """``(n, 1, H, W)`` float32 slices in [0, 1]; the same arguments give the same slices as ``brainvq
        sample-onnx`` (and its parameters mean the same: ``level`` a number in [0, 1], ``random`` or ``none``).
        A bad value is a one-line :class:`~brainvq.errors.ConfigError` naming the parameter."""
        s = self.onnx
        # the order of brainvq.export.ort_sampler.sample_to_pngs: check, draw the levels, sample codes, decode
        check_sampling_args(n, temperature, top_k, batch_size=batch_size, method=method, seed=seed,
                            pixel_temperature=pixel_temperature, guidance=guidance)
        levels = levels_for(level, n, seed)
        codes = s.sample_codes(n, s.labels_for(label, n), temperature, top_k, seed, batch_size, method, levels=levels,
                               guidance=guidance)
        return s.decode(codes, batch_size, seed, pixel_temperature)


    def sample_subjects(
        self,
        n: int = 4,
        label: str = "all",
        slices: int = 0,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        pixel_temperature: float = PIXEL_TEMPERATURE,
        batch_size: int = 16,
        guidance: float = 0.0,
    ) -> tuple[np.ndarray, list[str]]:
        """``n`` whole subjects, ``(n, S, 1, H, W)`` float32 in [0, 1] with slice 0 the lowest, and each subject's
        class name (``none`` unlabelled): the slices ``brainvq sample-subjects`` writes for the same arguments.
        Needs a prior trained with ``slice_context``; ``slices`` 0 = as many as its training subjects had."""
        s = self.onnx
        images, labels = s.sample_subjects(n, label, slices, temperature, top_k, seed, pixel_temperature, batch_size,
                                           guidance=guidance)
        return images, s.class_names(labels)


def png_bytes(images: np.ndarray) -> list[bytes]:
    """``(N,1,H,W)`` floats in [0,1] (or ``(N,H,W)`` uint8) -> one 8-bit grey PNG per slice, the bytes
    ``brainvq sample-onnx`` writes to ``sample_<i>.png``."""
    pixels = images if images.dtype == np.uint8 and images.ndim == 3 else to_uint8(images)  # (N,H,W)
    out = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")  # uint8 (H,W): mode L
        out.append(buf.getvalue())
    return out


def png_base64(images: np.ndarray) -> list[str]:
    """:func:`png_bytes` as base64 text (what the served ``brainvq-sampler`` answers)."""
    return [base64.b64encode(b).decode("ascii") for b in png_bytes(images)]


def decode_png_base64(texts) -> np.ndarray:
    """The inverse of :func:`png_base64`: base64 PNGs -> ``(N, H, W)`` uint8 (for REST clients and tests)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(t))), dtype=np.uint8) for t in texts])


def load_sampler(spec: str = "latest", provider: str = "auto", threads: int | None = None) -> Sampler:
    """An exported sampler from ``spec``: ``models:/brainvq-sampler@champion`` (or ``models:/<name>/<version>``),
    ``runs:/<export run id>/onnx``, ``runs:/<export run id>/sampler`` (the logged pyfunc model), a local folder
    with the ``.onnx`` files (or a downloaded pyfunc model folder), or ``latest`` (the newest export_onnx run).

    ``provider``: ``auto`` (CUDA when it really runs, else CPU), ``cuda`` or ``cpu``; ``threads``: onnxruntime
    threads (default: the physical cores)."""
    folder = model_folder(resolve_model_dir(spec))
    return Sampler(OnnxSampler(folder, provider, threads), spec)

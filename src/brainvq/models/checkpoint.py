"""Checkpoints: atomic writes, safe loads (``weights_only=True``), config carried inside.

A checkpoint is a plain dict of tensors, numbers, strings and lists: ``{"kind", "config", "model", ...}``, so
``torch.load(weights_only=True)`` can read it without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from brainvq.errors import ModelFileError, one_line
from brainvq.values import LEGACY_CLASSES, deprecated

PRIOR_KIND = "prior"
# Kinds written by older brainvq releases, read for one more release (with a deprecation note) under today's name.
LEGACY_KINDS = {"pixelcnn": PRIOR_KIND}
# Config fields added after checkpoints were written, with the value that rebuilds those older checkpoints as they
# were trained (a field's default is what new models get, which an older checkpoint's weights may not fit).
# A prior without ``classes`` was trained on labels 0 = NC, 1 = AD (LEGACY_CLASSES); a VQ-VAE without it recorded
# no class map (None).
LEGACY_FIELDS = {"vqvae": {"pixel_noise": False, "classes": None, "upsample": "transpose"},
                 PRIOR_KIND: {"classes": list(LEGACY_CLASSES)}}


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a kill never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut right after ``os.replace`` can otherwise lose it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; ``kind`` (``"vqvae"``, ``"prior"``, ``"critic"``) is checked when given. A legacy
    kind (``"pixelcnn"``) is read as today's name, with a one-line deprecation note."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, random bytes
        reason = one_line(exc)
        if "WeightsUnpickler error:" in str(exc):  # torch's refusal of a foreign pickle names the culprit further down
            culprit = str(exc).split("WeightsUnpickler error:", 1)[1].split(" was not an allowed global")[0]
            reason = f"weights_only=True refused it: {one_line(culprit, limit=120)}"
        raise ModelFileError(f"checkpoint {path} is corrupt or not a brainvq checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ModelFileError(f"checkpoint {path} is not a brainvq checkpoint (missing 'config'/'model')")
    if ckpt.get("kind") in LEGACY_KINDS:
        deprecated(f"checkpoint kind {ckpt['kind']!r} ({path})", repr(LEGACY_KINDS[ckpt["kind"]]))
        ckpt["kind"] = LEGACY_KINDS[ckpt["kind"]]
    if kind is not None and ckpt.get("kind") != kind:
        raise ModelFileError(f"checkpoint {path} holds a {ckpt.get('kind')!r} model, expected {kind!r}")
    if isinstance(ckpt["config"], dict):
        ckpt["config"] = {**LEGACY_FIELDS.get(ckpt.get("kind"), {}), **ckpt["config"]}
    return ckpt


def build_model(ckpt: dict, path: str | os.PathLike = "<checkpoint>"):
    """Rebuild the model a checkpoint describes, as ``Model(Config(**ckpt["config"]))``, and load its weights."""
    kind = ckpt.get("kind")
    try:
        if kind == "vqvae":
            from brainvq.models.vqvae import VQVAE, VQVAEConfig

            model = VQVAE(VQVAEConfig(**ckpt["config"]))
        elif kind == PRIOR_KIND:
            from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig

            model = GatedPixelCNN(PixelCNNConfig(**ckpt["config"]))
        elif kind == "critic":
            from brainvq.models.critic import Critic, CriticConfig

            model = Critic(CriticConfig(**ckpt["config"]))
        else:
            raise ModelFileError(f"checkpoint {path} has unknown kind {kind!r}")
        model.load_state_dict(ckpt["model"])
    except ModelFileError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"checkpoint {path} does not match its config ({one_line(exc)})") from None
    return model.eval()


def load_model(path: str | os.PathLike, kind: str | None = None):
    """Load a checkpoint file and return ``(model, ckpt)``."""
    ckpt = load_checkpoint(path, kind)
    return build_model(ckpt, path), ckpt

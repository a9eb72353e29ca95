"""The ``evaluate_samples`` stage as MLflow-free library calls: which real slices, which generated ones.

The figures themselves are computed by :mod:`brainvq.quality.evaluate`; the entry script logs them and keeps the
calibration (power checks, feature network, real floors) in MLflow so that it is computed once per data set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from brainvq.data import ADNISplits, SliceDataset
from brainvq.errors import ConfigError, DataError
from brainvq.quality.evaluate import Calibration, EvalProtocol, Slices

log = logging.getLogger(__name__)
SPLITS = ("val", "test")
MIN_SLICES = 16  # a held-out split smaller than this cannot carry a 4-fold test with its power checks


class EvalSets(NamedTuple):
    """The real slices of an evaluation: the held-out ``split``, the training split (the feature network's data)
    and, when the report is on test, the validation slices of the selection score (None when too few)."""

    split: str
    held_out: Slices
    train: Slices
    val: Slices | None


class EvalOutcome(NamedTuple):
    metrics: dict[str, float]
    underpowered: list[str]  # power checks below their targets (empty: the test is fit to report)


def slices_of(data: SliceDataset) -> Slices:
    return Slices(np.asarray(data.images), np.asarray(data.labels), list(data.subjects), np.asarray(data.levels))


def evaluation_sets(splits: ADNISplits, split: str) -> EvalSets:
    """The real slices to evaluate against: ``split`` (``val`` chooses, ``test`` reports), checked before any run
    starts."""
    if split not in SPLITS:
        raise ConfigError(f"split must be val or test, got {split!r}")
    held_out = getattr(splits, split)
    if len(held_out) < MIN_SLICES:
        raise DataError(f"the {split} split has {len(held_out)} slices; an evaluation needs at least {MIN_SLICES} "
                        f"(raise val_fraction, or evaluate on test)")
    val = None
    if split == "test":
        if len(splits.val) >= MIN_SLICES:
            val = slices_of(splits.val)
        else:
            log.warning("the validation split has %d slices (< %d): no val/c2st_accuracy, and the registry will rank "
                        "this sampler by its prior's validation NLL", len(splits.val), MIN_SLICES)
    return EvalSets(split, slices_of(held_out), slices_of(splits.train), val)


def score_samples(fake: Slices, sets: EvalSets, protocol: EvalProtocol,
                  calibration: Callable[[Slices, Slices, Slices], Calibration],
                  reconstruct: Callable[[np.ndarray], np.ndarray] | None = None) -> EvalOutcome:
    """Every figure of ``fake`` against ``sets`` (:mod:`brainvq.quality.evaluate`), plus the selection score
    ``val/c2st_accuracy``: the realism test against the validation split, which the registry ranks samplers by.

    ``calibration(real, held_out, train)`` returns the :class:`~brainvq.quality.evaluate.Calibration` of the real
    slices; the tracking layer passes one that reuses a stored calibration.
    """
    import time

    from brainvq.quality.c2st import as_tensor, two_sample_test, underpowered
    from brainvq.quality.classify import front_maps
    from brainvq.quality.evaluate import evaluate_generated, select_real

    real = select_real(sets.held_out, protocol)
    t0 = time.monotonic()
    cal = calibration(real, sets.held_out, sets.train)
    log.info("calibration ready in %.0f s", time.monotonic() - t0)
    t0 = time.monotonic()
    metrics = {**cal.metrics, **evaluate_generated(fake, real, sets.held_out, cal, protocol, reconstruct,
                                                        sets.train)}
    log.info("generated slices scored in %.0f s", time.monotonic() - t0)
    if sets.split == "val":  # the test against val *is* the selection score
        metrics.update({k.replace("gen/", "val/", 1): v for k, v in metrics.items()
                        if k.startswith(("gen/c2st_accuracy", "gen/c2st_pvalue"))})
    elif sets.val is not None:
        cell = protocol.c2st.fit.critic.cell
        val_real = select_real(sets.val, protocol)
        res = two_sample_test(front_maps(as_tensor(val_real.images), cell), front_maps(as_tensor(fake.images), cell),
                              protocol.c2st)
        metrics.update({**res.metrics("val/c2st_accuracy"), "val/c2st_pvalue": res.pvalue})
    return EvalOutcome(metrics, underpowered(cal.power))


@torch.no_grad()
def generate_slices(prior, vqvae, protocol: EvalProtocol, progress: bool = True, batch_size: int = 128) -> Slices:
    """``protocol.n_samples`` slices from a prior run: every class in turn when it is class-conditional (half AD,
    half NC for the two-class set), labelled with the prior's label ids (-1 for the null label).

    A large batch amortises the per-code overhead of the cached sampler (154 vs 393 ms per grid at 128 vs 16 on a
    2-core CPU); the codes do not depend on it (the uniforms are drawn for all slices at once).
    """
    from brainvq.data.images import to_uint8
    from brainvq.sampling.generate import generate

    out = generate(prior, vqvae, protocol.n_samples, "all", protocol.temperature, protocol.top_k, protocol.seed,
                   batch_size=batch_size, progress=progress, pixel_temperature=protocol.pixel_temperature,
                   guidance=protocol.guidance)
    labels = np.where(out.labels == prior.config.null_label, -1, out.labels)  # the null label: no class requested
    return Slices(to_uint8(out.images), labels, [f"generated{i}" for i in range(len(labels))], out.levels)


def vqvae_reconstructor(vqvae, batch_size: int = 32, seed: int = 0,
                        pixel_temperature: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 slices ``(N,H,W)`` -> their VQ-VAE reconstructions as uint8 (what the decoder can give at best), decoded
    from their codes as generation decodes a sample's (:func:`brainvq.sampling.generate.decode_codes`: drawn from
    p(x | codes) with ``seed`` at ``pixel_temperature`` when the VQ-VAE has a noise model, else the mean)."""
    from brainvq.data.images import to_uint8
    from brainvq.sampling.generate import decode_codes

    @torch.no_grad()
    def reconstruct(images: np.ndarray) -> np.ndarray:
        vqvae.eval()
        device = next(vqvae.parameters()).device
        x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)  # (N,1,H,W)
        codes = torch.cat([vqvae.encode_indices(x[s : s + batch_size].to(device)).cpu()
                           for s in range(0, len(x), batch_size)])
        return to_uint8(decode_codes(vqvae, codes.numpy(), seed, pixel_temperature, batch_size))

    return reconstruct


def read_sample_folder(folder: str | Path, image_size: tuple[int, int], classes=()) -> Slices:
    """Generated slices from a folder of PNGs: ``FOLDER/<class>/*.png`` (labelled with the real data's class map
    ``classes``, so that its labels mean what the real slices' do) or ``FOLDER/*.png``.

    ``grid.png`` (the contact sheet ``sample-onnx`` writes beside its slices) is left out, with a warning.
    """
    from brainvq.data import scan_split
    from brainvq.data.images import decode

    folder = sample_folder(folder)
    samples = scan_split(folder.parent, folder.name, classes=_sample_classes(folder, classes), partial=True)
    kept = [s for s in samples if Path(s.path).name != "grid.png"]
    if len(kept) < len(samples):
        log.warning("%s: left out grid.png (a contact sheet, not a slice)", folder)
    if not kept:
        raise DataError(f"no slices in {folder} besides grid.png")
    images = np.stack([decode(s.path, tuple(image_size))[0] for s in kept])
    log.info("samples_dir %s: %d slices", folder, len(kept))
    return Slices(images, np.array([s.label for s in kept], dtype=np.int64), [s.subject for s in kept])


def sample_folder(folder: str | Path) -> Path:
    """``samples_dir`` as a folder that exists: checked before the real data is read (which may generate the demo
    set), so a mistyped folder is one line at once."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"samples_dir does not exist or is not a folder: {folder}")
    return folder


def _sample_classes(folder: Path, classes) -> tuple[str, ...]:
    """The class folders of a samples folder, checked against the real data's class map ``classes``: labels are the
    real data's, so a class the real data lacks cannot be scored."""
    from brainvq.data.adni import find_classes

    found = find_classes(folder.parent, splits=(folder.name,))
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(f"samples_dir {folder} has class folder {unknown[0]}, which the real data does not have "
                        f"(its classes: {', '.join(classes) or 'none, a flat layout'})")
    return tuple(classes) if found else ()


def save_generated_grid(fake: Slices, path: str | Path, rows: int = 4, per_row: int = 8) -> Path:
    """``generated.png``: the first ``rows x per_row`` generated slices."""
    from brainvq.data.images import save_grid

    n = min(len(fake.images), rows * per_row)
    return save_grid([fake.images[i : i + per_row] for i in range(0, n, per_row)], path)

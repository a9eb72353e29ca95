"""Every sample-quality figure of brainvq, computed from arrays: MLflow-free (the caller logs the returned dicts).

Two parts, because one of them depends only on the real data and the protocol:

* :func:`calibrate` (once per data set, split and protocol; the tracking layer stores and reuses it): the power of
  the realism test (:func:`brainvq.quality.c2st.power_checks`), the feature network (a
  :class:`~brainvq.models.critic.Critic` over the data's classes, trained on the training split only) and the real
  floors read beside every generated figure: ``real/fd``, ``real/precision``, ``real/recall`` (real training vs
  real held-out slices), ``real/trtr_accuracy``, ``real/label_classifier_accuracy`` and ``real/msssim_diversity``
  (pairs across subjects).
* :func:`evaluate_generated`: the generated slices against the same real slices: ``gen/c2st_accuracy`` with its 95%
  interval and p-value, ``gen/fd``, ``gen/precision``, ``gen/recall``, ``gen/tstr_accuracy``,
  ``gen/label_agreement``, ``gen/msssim_diversity`` and, given the VQ-VAE, its ceilings: the figures a perfect prior
  over its codes would give, since such a prior draws the codes of real slices and the decoder does the rest.
  ``gen/c2st_recon_ceiling``: real vs the reconstructions of other held-out slices. ``gen/label_agreement_recon``:
  the feature network's agreement with the true class on those reconstructions (beside
  ``real/label_classifier_accuracy``). ``gen/tstr_recon_ceiling``: TSTR trained on the reconstructions of the very
  training slices TRTR trains on (beside ``real/trtr_accuracy``, the same slices undecoded). A utility figure far
  under its ceiling is lost by the prior; a ceiling far under its real floor is lost in the code or the decoder.

Every classifier is N-way (one logit for two classes, a softmax over more): TRTR, TSTR and label agreement read
the same for AD/NC and for AD/MCI/CN. Without two or more classes (a flat layout, one class folder) the feature
network and what needs it are skipped, with a logged reason.

The held-out slices are those of one split: ``val`` when the figures choose something (registry, defaults),
``test`` for the report.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch

from brainvq.models.critic import Critic
from brainvq.quality.c2st import (
    C2STProtocol,
    C2STResult,
    as_tensor,
    digest,
    halves,
    power_checks,
    two_sample_test,
    underpowered,
    with_ci,
)
from brainvq.quality.classify import embed, fit_critic, front_maps, predict_labels
from brainvq.quality.diversity import msssim_diversity
from brainvq.quality.fidelity import frechet_ci95, frechet_distance, precision_recall

log = logging.getLogger(__name__)
POWER_METRICS = {"null": "gen/c2st_null", "blur10": "gen/c2st_power_blur10", "blur05": "gen/c2st_power_blur05",
                 "noise": "gen/c2st_power_noise"}


@dataclass(frozen=True)
class EvalProtocol:
    """The fixed, recorded protocol of an evaluation: how many slices are generated and compared, with which seed
    and sampling settings, and how every classifier is trained. Figures are comparable only under one protocol
    (its :meth:`digest` is logged with them and the registry compares only equal ones)."""

    n_samples: int = 256  # generated slices; the real side uses as many held-out slices (all when fewer)
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0
    guidance: float = 0.0  # classifier-free guidance weight of the sampling (brainvq.sampling.draw.guided)
    # the scale of the pixel draw (brainvq.sampling.draw.PIXEL_TEMPERATURE, which a test keeps equal to this)
    pixel_temperature: float = 0.3
    max_pairs: int = 256  # pairs for MS-SSIM diversity
    c2st: C2STProtocol = field(default_factory=C2STProtocol)
    # Bumped whenever a figure's definition changes, so that calibrations made by older code are not reused.
    figures_version: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.c2st, dict):
            object.__setattr__(self, "c2st", C2STProtocol(**self.c2st))
        if not isinstance(self.n_samples, int) or self.n_samples < 8:
            raise ValueError(f"n_samples must be an integer >= 8, got {self.n_samples!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not isinstance(self.pixel_temperature, (int, float)) or not math.isfinite(self.pixel_temperature) \
                or self.pixel_temperature < 0:
            raise ValueError(f"pixel_temperature must be a finite number >= 0, got {self.pixel_temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = all codes), got {self.top_k!r}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0 (0 = none), got {self.guidance!r}")
        if not isinstance(self.max_pairs, int) or self.max_pairs < 1:
            raise ValueError(f"max_pairs must be an integer >= 1, got {self.max_pairs!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        if not out["guidance"]:  # protocols recorded before guidance existed had none: they keep their digest
            del out["guidance"]
        return out

    def digest(self) -> str:
        return digest(self.to_dict())

    def calibration_dict(self) -> dict:
        """The part a calibration depends on (not the sampling settings)."""
        return {"n_samples": self.n_samples, "seed": self.seed, "max_pairs": self.max_pairs,
                "c2st": self.c2st.to_dict(), "figures_version": self.figures_version}

    def calibration_digest(self) -> str:
        return digest(self.calibration_dict())


class Slices(NamedTuple):
    """A set of slices: ``images`` uint8 ``(N,H,W)``, ``labels`` ``(N,)`` (class indices of the data's class map,
    -1 unknown), ``subjects``,
    and ``levels`` ``(N,)``: each slice's axial level in [0, 1] (NaN or None: unknown)."""

    images: np.ndarray
    labels: np.ndarray
    subjects: list[str]
    levels: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "Slices":
        idx = np.asarray(idx, dtype=np.int64)
        levels = None if self.levels is None else np.asarray(self.levels)[idx]
        return Slices(np.asarray(self.images[idx]), np.asarray(self.labels)[idx], [self.subjects[i] for i in idx],
                      levels)

    @property
    def leveled(self) -> bool:
        """Every slice's level is known."""
        return self.levels is not None and len(self.levels) > 0 and bool(np.isfinite(self.levels).all())

    @property
    def labelled(self) -> bool:
        """Every slice has a class, and there are two or more classes: a classifier can be trained and scored."""
        labels = np.asarray(self.labels)
        return len(labels) > 0 and bool((labels >= 0).all()) and len(np.unique(labels)) >= 2


class Calibration(NamedTuple):
    """What depends only on the real data and the protocol (see :func:`calibrate`)."""

    metrics: dict[str, float]  # real/* floors and gen/c2st_null, gen/c2st_power_* (with their intervals)
    power: dict[str, C2STResult]
    features: Critic | None  # the class network trained on the training split; None without two or more classes


def data_digest(*arrays: np.ndarray) -> str:
    """Content digest of the slices an evaluation reads (the calibration's key, with the protocol)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def select_real(held_out: Slices, protocol: EvalProtocol) -> Slices:
    """The held-out slices the generated ones are compared with: ``n_samples`` of them (all when fewer), drawn at
    random across subjects (sorted file lists come in blocks of class and subject)."""
    n = min(protocol.n_samples, len(held_out.images))
    return held_out.take(np.random.default_rng([protocol.seed, 11]).permutation(len(held_out.images))[:n])


def _balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices with the classes as equal as the data allows (seeded)."""
    rng = np.random.default_rng([seed, 13])
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    out: list[int] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return np.sort(np.asarray(out, dtype=np.int64))


def trtr_subset(train: Slices, protocol: EvalProtocol) -> Slices:
    """The real training slices TRTR trains on: as many as are generated, class-balanced (seeded); the utility
    ceiling trains on their reconstructions."""
    return train.take(_balanced_subset(train.labels, protocol.n_samples, protocol.seed))


def _accuracy(model: Critic, maps: torch.Tensor, labels: np.ndarray) -> float:
    return float((predict_labels(model, maps) == np.asarray(labels)).mean())


def _fidelity(prefix: str, f_real: np.ndarray, f_other: np.ndarray, seed: int) -> dict[str, float]:
    """FD (with a bootstrap interval), precision and recall (Wilson intervals given the k-NN manifolds)."""
    precision, recall = precision_recall(f_real, f_other)
    return {f"{prefix}/fd": frechet_distance(f_other, f_real),
            f"{prefix}/fd_ci95": frechet_ci95(f_other, f_real, seed=seed),
            **with_ci(f"{prefix}/precision", precision, len(f_other)),
            **with_ci(f"{prefix}/recall", recall, len(f_real))}


def _power_metrics(power: dict[str, C2STResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, res in power.items():
        out.update(res.metrics(POWER_METRICS[name]))
    return out


def calibrate(real: Slices, held_out: Slices, train: Slices, protocol: EvalProtocol = EvalProtocol()) -> Calibration:
    """Power checks, feature network and real floors for ``real`` (:func:`select_real` of ``held_out``, the whole
    held-out split) against the training split ``train``."""
    c2st = protocol.c2st
    power = power_checks(real.images, c2st)
    metrics = _power_metrics(power)
    metrics["real/msssim_diversity"] = msssim_diversity(as_tensor(real.images), protocol.max_pairs, protocol.seed,
                                                        groups=real.subjects)
    features = None
    if train.labelled and held_out.labelled:
        cell = c2st.fit.critic.cell
        features = fit_critic(front_maps(as_tensor(train.images), cell), train.labels, c2st.fit, seed=c2st.seed)
        held_maps = front_maps(as_tensor(held_out.images), cell)
        n_held = len(held_out.labels)
        metrics.update(with_ci("real/label_classifier_accuracy", _accuracy(features, held_maps, held_out.labels),
                                n_held))
        # TRTR: the same recipe on as many real training slices as slices are generated.
        sub = trtr_subset(train, protocol)
        trtr = fit_critic(front_maps(as_tensor(sub.images), cell), sub.labels, c2st.fit, seed=c2st.seed + 1)
        metrics.update(with_ci("real/trtr_accuracy", _accuracy(trtr, held_maps, held_out.labels), n_held))
        # The floor of FD / precision / recall: real training slices vs the held-out ones, at the same size.
        floor = train.take(np.random.default_rng([protocol.seed, 17]).permutation(len(train.images))[:len(real.images)])
        f_real = embed(features, front_maps(as_tensor(real.images), cell))
        f_floor = embed(features, front_maps(as_tensor(floor.images), cell))
        metrics.update(_fidelity("real", f_real, f_floor, protocol.seed))
    else:
        log.info("the real slices do not all carry one of two or more classes (a flat layout, or one class): no "
                 "feature network, so no FD, precision / recall, TRTR, TSTR or label agreement")
    return Calibration(metrics, power, features)


def evaluate_generated(fake: Slices, real: Slices, held_out: Slices, calibration: Calibration,
                       protocol: EvalProtocol = EvalProtocol(),
                       reconstruct: Callable[[np.ndarray], np.ndarray] | None = None,
                       train: Slices | None = None) -> dict[str, float]:
    """Generated slices ``fake`` (class indices of the real data's class map when class-conditional, else -1)
    against ``real``
    (:func:`select_real` of ``held_out``). ``reconstruct`` (uint8 slices -> their VQ-VAE reconstructions as uint8)
    adds the ceilings: ``gen/c2st_recon_ceiling``, ``gen/label_agreement_recon`` and, given the training split
    ``train``, ``gen/tstr_recon_ceiling`` (module docstring)."""
    c2st = protocol.c2st
    cell = c2st.fit.critic.cell
    real_maps = front_maps(as_tensor(real.images), cell)
    fake_maps = front_maps(as_tensor(fake.images), cell)
    main = two_sample_test(real_maps, fake_maps, c2st)
    out = main.metrics("gen/c2st_accuracy")
    out["gen/c2st_pvalue"] = main.pvalue
    out["gen/c2st_n"] = float(main.n_per_side)
    recon_maps = None
    if reconstruct is not None:
        a, b = halves(len(real.images), c2st.seed)
        recon_maps = front_maps(as_tensor(reconstruct(real.images[b])), cell)
        ceiling = two_sample_test(front_maps(as_tensor(real.images[a]), cell), recon_maps, c2st, salt=9)
        out.update(ceiling.metrics("gen/c2st_recon_ceiling"))
    out.update(_c2st_by_level(real, real_maps, fake, fake_maps, c2st))
    out["gen/msssim_diversity"] = msssim_diversity(as_tensor(fake.images), protocol.max_pairs, protocol.seed)
    features = calibration.features
    if features is not None:
        # FD and the k-NN radii depend on the sample size: compare equal-sized sets, as the floor does
        n = min(len(real_maps), len(fake_maps))
        rng = np.random.default_rng([protocol.seed, 19])  # folders list AD before NC: draw, don't cut
        ri, fi = (torch.from_numpy(rng.permutation(len(m))[:n]) for m in (real_maps, fake_maps))
        f_real, f_fake = embed(features, real_maps[ri]), embed(features, fake_maps[fi])
        out.update(_fidelity("gen", f_real, f_fake, protocol.seed))
        # a feature network exists only when the held-out and training slices all carry a class (calibrate)
        held_maps = front_maps(as_tensor(held_out.images), cell)  # what every classifier here is scored on
        n_held = len(held_out.labels)
        if fake.labelled:
            out.update(with_ci("gen/label_agreement", _accuracy(features, fake_maps, fake.labels), len(fake.labels)))
            tstr = fit_critic(fake_maps, fake.labels, c2st.fit, seed=c2st.seed + 1)
            out.update(with_ci("gen/tstr_accuracy", _accuracy(tstr, held_maps, held_out.labels), n_held))
        if recon_maps is not None:
            # the class as the decoder gives it back: the real-trained network on reconstructions of held-out slices
            out.update(with_ci("gen/label_agreement_recon",
                               _accuracy(features, recon_maps, np.asarray(real.labels)[b]), len(b)))
            if train is not None:
                # TRTR's slices and recipe (seed included), decoded from their codes: what a perfect prior's TSTR
                # would read
                sub = trtr_subset(train, protocol)
                model = fit_critic(front_maps(as_tensor(reconstruct(sub.images)), cell), sub.labels, c2st.fit,
                                   seed=c2st.seed + 1)
                out.update(with_ci("gen/tstr_recon_ceiling", _accuracy(model, held_maps, held_out.labels), n_held))
    return out


LEVEL_THIRDS = ("bottom", "middle", "top")


def _third(levels: np.ndarray) -> np.ndarray:
    """Third of the axial levels (0 bottom, 1 middle, 2 top) of each level in [0, 1]; -1 where it is unknown."""
    lv = np.asarray(levels, dtype=np.float64)
    out = np.full(lv.shape, -1, dtype=np.int64)
    known = np.isfinite(lv)
    out[known] = np.minimum(np.clip(lv[known], 0.0, 1.0) * 3, 2).astype(np.int64)  # level 1.0 is in the top third
    return out


def _c2st_by_level(real: Slices, real_maps: torch.Tensor, fake: Slices, fake_maps: torch.Tensor,
                   c2st) -> dict[str, float]:
    """``gen/c2st_level_{bottom,middle,top}``: the realism test within each third of the axial levels, generated
    slices (at the levels they were asked for) against real slices of the same third. Only when every generated
    slice has a level (a prior with level bins) and the third holds enough slices on both sides; a third of 256
    slices a side gives an interval about 1.7x as wide as the whole test's."""
    if not fake.leveled or real.levels is None:
        return {}
    out: dict[str, float] = {}
    real_third, fake_third = _third(real.levels), _third(fake.levels)
    for i, name in enumerate(LEVEL_THIRDS):
        r, f = np.flatnonzero(real_third == i), np.flatnonzero(fake_third == i)  # unknown levels (-1) drop out
        if min(len(r), len(f)) < 2 * c2st.folds:
            continue
        res = two_sample_test(real_maps[torch.from_numpy(r)], fake_maps[torch.from_numpy(f)], c2st, salt=20 + i)
        out.update(res.metrics(f"gen/c2st_level_{name}"))
    return out


def power_warnings(calibration: Calibration) -> list[str]:
    """Power checks below their targets (see :data:`brainvq.quality.c2st.POWER_TARGETS`)."""
    return underpowered(calibration.power)

"""Classifier two-sample test (Lopez-Paz & Oquab 2017, https://arxiv.org/abs/1610.06545) with measured power.

A :class:`~brainvq.models.critic.Critic` learns to tell real from generated slices. K-fold cross-fitting: both sets
are shuffled (sorted file lists come in blocks of class and subject, and a split along them would measure AD
against NC), cut into K folds, and each fold is scored by a critic trained on the other K-1, so every image is scored
exactly once by a classifier that never saw it. 0.5 = indistinguishable, 1.0 = trivially recognisable.

The accuracy comes with a 95% Wilson interval over the 2n scored images and the one-sided binomial p-value against
0.5 (the folds' classifiers share training data, so read both as approximate). A test is only as good as its power,
so :func:`power_checks` runs the same protocol on real slices against known small degradations of other real slices
(Gaussian blur of sigma 1.0 and 0.5 px, added noise of sigma 0.02) and against other real slices (the null,
expected 0.5).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from brainvq.quality.classify import FitConfig, fit_critic, front_maps, predict_labels

# Targets of the power checks on the demo set (README, "How realism is measured"); below them a run is tagged
# brainvq.eval_underpowered=true and a warning is printed.
POWER_TARGETS = {"blur10": 0.95, "noise": 0.90}
POWER_STRETCH = {"blur05": 0.90}
DEGRADATIONS = {"blur10": ("blur", 1.0), "blur05": ("blur", 0.5), "noise": ("noise", 0.02)}


@dataclass(frozen=True)
class C2STProtocol:
    """Everything that determines a two-sample test's outcome besides the images: recorded with every figure."""

    folds: int = 4
    seed: int = 0
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        if isinstance(self.fit, dict):
            object.__setattr__(self, "fit", FitConfig(**self.fit))
        if not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"C2STProtocol: folds must be an int >= 2, got {self.folds!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"C2STProtocol: seed must be an int >= 0, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def digest(settings: dict) -> str:
    """Short stable ID of a protocol's settings (recorded with every figure it produced)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class C2STResult(NamedTuple):
    accuracy: float
    ci_low: float  # 95% Wilson interval
    ci_high: float
    pvalue: float  # one-sided binomial, accuracy > 0.5
    n_per_side: int

    @property
    def ci95(self) -> float:
        """Half-width of the 95% interval (the interval itself is :attr:`ci_low` .. :attr:`ci_high`)."""
        return (self.ci_high - self.ci_low) / 2

    def overlaps(self, other: "C2STResult") -> bool:
        return self.ci_low <= other.ci_high and other.ci_low <= self.ci_high

    def metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: self.accuracy, f"{prefix}_ci95": self.ci95, f"{prefix}_ci_low": self.ci_low,
                f"{prefix}_ci_high": self.ci_high}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (stays inside [0, 1], sound near 0 and 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the interval touches 0 or 1 exactly (rounding would leave 1 - 1e-16 below the estimate).
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def with_ci(name: str, share: float, n: int) -> dict[str, float]:
    """A proportion and the half-width of its 95% Wilson interval over ``n`` scored items (``name_ci95``)."""
    low, high = wilson_interval(round(share * n), n)
    return {name: share, f"{name}_ci95": (high - low) / 2}


def cross_fitted(maps: torch.Tensor, y: np.ndarray, fold: np.ndarray, protocol: C2STProtocol, salt: int) -> np.ndarray:
    """``(N,)`` bool: whether each item of ``maps (N,...)`` (labels ``y (N,)``) was classified right by the critic
    fit on the other folds (``fold (N,)`` in ``0..protocol.folds-1``): every item scored once, never by a critic
    that saw it."""
    correct = np.zeros(len(y), dtype=bool)
    for k in range(protocol.folds):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model = fit_critic(maps[torch.from_numpy(tr)], y[tr], protocol.fit, seed=protocol.seed * 1000 + salt * 10 + k)
        correct[te] = predict_labels(model, maps[torch.from_numpy(te)]) == y[te]
    return correct


def two_sample_test(real_maps: torch.Tensor, fake_maps: torch.Tensor, protocol: C2STProtocol = C2STProtocol(),
                    salt: int = 0) -> C2STResult:
    """K-fold cross-fitted C2ST on front-end maps (:func:`~brainvq.quality.classify.front_maps`) of two sets.

    The larger set is subsampled (seeded) so both sides have ``n = min(len(real), len(fake))`` images and chance is
    exactly 0.5. ``salt`` varies the shuffles between tests run under one protocol.
    """
    from scipy.stats import binomtest

    n = min(len(real_maps), len(fake_maps))
    if n < 2 * protocol.folds:
        raise ValueError(f"C2ST with {protocol.folds} folds needs at least {2 * protocol.folds} images a side, "
                         f"got {len(real_maps)} real and {len(fake_maps)} generated")
    rng = np.random.default_rng([protocol.seed, salt, 2017])
    r_idx = rng.permutation(len(real_maps))[:n]  # shuffled before any split
    f_idx = rng.permutation(len(fake_maps))[:n]
    maps = torch.cat([real_maps[torch.from_numpy(r_idx)], fake_maps[torch.from_numpy(f_idx)]])  # (2n,8,h,w)
    y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
    fold = np.concatenate([np.arange(n) % protocol.folds, np.arange(n) % protocol.folds])  # same size per side
    correct = int(cross_fitted(maps, y, fold, protocol, salt).sum())
    total = 2 * n
    low, high = wilson_interval(correct, total)
    pvalue = float(binomtest(correct, total, 0.5, alternative="greater").pvalue)
    return C2STResult(correct / total, low, high, pvalue, n)


# --------------------------------------------------------------------------------------------------- degradations


def degrade(images: np.ndarray, kind: str, amount: float, seed: int = 0) -> np.ndarray:
    """A known small degradation of uint8 slices ``(N,H,W)``, returned as uint8 like the real ones (so 8-bit
    rounding cannot give the degraded set away): ``blur`` (Gaussian, sigma ``amount`` px) or ``noise`` (additive
    Gaussian, sigma ``amount`` in [0,1] units, clipped)."""
    from scipy import ndimage

    x = np.asarray(images, dtype=np.float32) / 255.0
    if kind == "blur":
        x = ndimage.gaussian_filter(x, sigma=(0, amount, amount), mode="nearest")
    elif kind == "noise":
        x = x + np.random.default_rng([seed, 31]).normal(0, amount, x.shape).astype(np.float32)
    else:
        raise ValueError(f"unknown degradation {kind!r}; expected blur or noise")
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N,H,W)`` -> float ``(N,1,H,W)`` in [0,1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``range(n)`` into two disjoint halves."""
    order = np.random.default_rng([seed, 5]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 : 2 * (n // 2)])


def power_checks(real: np.ndarray, protocol: C2STProtocol = C2STProtocol()) -> dict[str, C2STResult]:
    """The protocol run on real uint8 slices ``(N,H,W)``: half of them against the other half degraded.

    Returns ``null`` (no degradation: expected 0.5), ``blur10``, ``blur05`` and ``noise``. The halves are disjoint,
    as real and generated slices are, so each check has half the sample size of the main test: a conservative power.
    """
    real = np.asarray(real)
    a, b = halves(len(real), protocol.seed)
    cell = protocol.fit.critic.cell
    maps_a = front_maps(as_tensor(real[a]), cell)
    out = {"null": two_sample_test(maps_a, front_maps(as_tensor(real[b]), cell), protocol, salt=1)}
    for i, (name, (kind, amount)) in enumerate(DEGRADATIONS.items()):
        degraded = degrade(real[b], kind, amount, seed=protocol.seed)
        out[name] = two_sample_test(maps_a, front_maps(as_tensor(degraded), cell), protocol, salt=2 + i)
    return out


def miscalibrated(null: C2STResult | None, name: str = "null") -> list[str]:
    """``[reason]`` when the null check (real against real) has a 95% interval that excludes chance: the test then
    errs one way on this data (below 0.5: cross-fitting on too few items or subjects is anti-correlated), and its
    main figure cannot be read against 0.5. Empty otherwise."""
    if null is None or null.ci_low <= 0.5 <= null.ci_high:
        return []
    return [f"{name} {null.accuracy:.3f} [{null.ci_low:.3f}, {null.ci_high:.3f}] excludes chance"]


def underpowered(power: dict[str, C2STResult]) -> list[str]:
    """The power checks below their targets (README), and a null check that excludes chance
    (:func:`miscalibrated`): empty when the test is fit to report."""
    return miscalibrated(power.get("null")) + [
        f"{name} {power[name].accuracy:.3f} < {target}" for name, target in POWER_TARGETS.items()
        if name in power and power[name].accuracy < target]

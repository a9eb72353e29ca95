"""Figures of generated *subjects* (stacks of consecutive axial slices), computed from arrays: MLflow-free.

A subject is the slices of one ``Slices.subjects`` name in order of ``Slices.levels`` (bottom to top). Four families
of figures, each with a 95% interval (``<name>_ci95``, the half-width):

* **Between-slice consistency**: the SSIM (:func:`brainvq.quality.metrics.ssim`, scikit-image's definition) of every
  pair of adjacent slices. ``vol/adjacent_ssim`` (generated) and ``real/adjacent_ssim`` (real held-out subjects) are
  means over subjects of each subject's mean over its pairs, with a t-interval over subjects (the subjects, not the
  pairs, are the independent units); ``vol/adjacent_ssim_gap`` is generated minus real, with a Welch interval.
* **Pair realism test**: the classifier two-sample test of :mod:`brainvq.quality.c2st` (same
  :class:`~brainvq.quality.c2st.C2STProtocol`, same :class:`~brainvq.models.critic.Critic`, same training recipe) on
  pairs ``(slice k, slice k+1)`` of real held-out vs generated subjects, ``vol/pair_c2st``. Two differences, both
  forced by pairs coming in subjects: the cross-fitting folds are drawn by *subject* (a subject's pairs all fall in
  one fold; folds cut through subjects let the critic recognise subjects it trained on, and real pairs against
  other real subjects' pairs then read far above 0.5), and the interval is cluster-robust over subjects (a
  subject's 19 pairs are not 19 independent trials; a Wilson interval over pairs would be several times too narrow).
  With ``pair_repeats`` > 1 the test and its null average that many cross-fits (other deals of subjects to folds,
  other critic seeds): one cross-fit adds noise of its own that an interval over subjects, holding the critics
  fixed, does not see, so the figure is their mean and its variance adds the spread between them
  (``benchmarks/pair_null.py`` measures how well either is calibrated).
  Its power is measured as :func:`brainvq.quality.c2st.power_checks` measures the slice test's: real adjacent pairs
  against real pairs with a known loss of consistency (``skip``: slices k and k+2, a skipped level; ``swap``: slice
  k+1 taken from another subject of the same class) and against other real adjacent pairs (``null``, expected 0.5),
  on two disjoint class-balanced groups of real *training* subjects as large as the main test's real side.
* **Subject-level utility**: an N-way class classifier (:func:`brainvq.quality.classify.fit_critic`) trained on the
  generated subjects' slices (TSTR) or on as many real training subjects (TRTR), tested on the real held-out
  subjects, each subject labelled by the majority vote of its slices: ``vol/tstr_subject_accuracy``,
  ``real/trtr_subject_accuracy`` with Wilson intervals over subjects.
* **Augmentation gain**: a classifier trained on ``augment_fraction`` of the real training subjects (class-balanced,
  seeded) against one trained on the same subjects plus every generated subject, both scored per subject on the real
  held-out subjects. The subset is drawn ``augment_rounds`` times; ``vol/augmentation_gain`` is the mean over held-out
  subjects of each subject's difference in correctness (augmented minus real-only, averaged over the rounds), in
  accuracy units (0.05 = 5 points), with a paired t-interval over the held-out subjects: the two classifiers are
  scored on the same subjects, so the subject-to-subject spread cancels, and averaging over rounds damps the luck of
  one subset.

**The ceilings**, given the VQ-VAE (``reconstruct``): the figures a perfect generator of subjects over its codes
would give, one that draws the codes of real subjects and leaves the rest to the decoder.
``vol/adjacent_ssim_recon``: the adjacent SSIM of the reconstructed real held-out subjects (beside
``real/adjacent_ssim``: what the decoder and its pixel draw alone do to between-slice consistency).
``vol/tstr_subject_recon_ceiling``: subject TSTR trained on the reconstructions of the very training subjects TRTR
trains on. ``vol/augmentation_gain_recon_ceiling``: the augmentation gain when the added subjects are the
reconstructions of as many *other* real training subjects (outside each round's subset): the gain this protocol can
show at all with a generator whose subjects are as good as real ones.

The pair maps: the critic reads 8-channel front-end maps (:func:`brainvq.quality.classify.front_maps`, computed once
per slice). A pair's two maps are interleaved row by row, ``(8, 2h, w)``, so that the head's first 3x3 convolution
sees the same place of both slices and can compare them, with the critic itself unchanged (its config is part of
every evaluation protocol's digest). On the demo set, 14 subjects a side, this finds a swapped subject at 0.95-0.98
and a shuffled slice order at about 0.7; a skipped level (k, k+2) stays at chance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from brainvq.quality.c2st import C2STProtocol, C2STResult, as_tensor, cross_fitted, digest, miscalibrated, with_ci
from brainvq.quality.classify import fit_critic, predict_scores
from brainvq.quality.evaluate import Slices

log = logging.getLogger(__name__)
Z95 = 1.959963984540054
# Names of the pair test's power checks, as c2st.POWER_METRICS names the slice test's.
PAIR_POWER_METRICS = {"null": "vol/pair_c2st_null", "skip": "vol/pair_c2st_power_skip",
                      "swap": "vol/pair_c2st_power_swap"}
# Below this the pair test is tagged underpowered: a subject's slices paired with another subject's is the coarsest
# inconsistency there is (0.98 on the demo set at 14 subjects a side). A skipped level is reported, not targeted:
# 2 mm more between slices is beyond this critic at these sizes (0.5 on the demo set).
PAIR_POWER_TARGETS = {"swap": 0.9}


@dataclass(frozen=True)
class SubjectProtocol:
    """The fixed, recorded protocol of a subject evaluation (its :meth:`digest` is logged with the figures).
    ``c2st.seed`` seeds every classifier and every draw."""

    c2st: C2STProtocol = field(default_factory=C2STProtocol)
    augment_fraction: float = 0.25  # share of the real training subjects the augmentation classifiers train on
    augment_rounds: int = 3  # subsets drawn for the augmentation gain (2 classifiers each)
    # Cross-fits averaged in the pair test and its null (other deals of subjects to folds, other critic seeds): one
    # cross-fit adds noise of its own (sd ~0.06 on the demo set). 3 narrowed the null's spread between subject draws
    # from 0.100 to 0.088 at 14 subjects a side, its interval's calibration unchanged (benchmarks/pair_null.py,
    # README "Measuring subjects"): not worth three times the pair test's time by default.
    pair_repeats: int = 1
    figures_version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.c2st, dict):
            object.__setattr__(self, "c2st", C2STProtocol(**self.c2st))
        f = self.augment_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f <= 1:
            raise ValueError(f"augment_fraction must be a number in (0, 1], got {f!r}")
        for name in ("augment_rounds", "pair_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def seed(self) -> int:
        return self.c2st.seed

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return digest(self.to_dict())


# ------------------------------------------------------------------------------------------------- subjects


def subject_stacks(slices: Slices) -> dict[str, np.ndarray]:
    """Subject name -> indices of its slices bottom to top (by ``levels``, ties by position), in order of first
    appearance. Every level must be known (a file name with its slice number)."""
    levels = np.asarray(slices.levels, dtype=np.float64)
    if len(levels) != len(slices.subjects) or not np.isfinite(levels).all():
        raise ValueError("every slice needs its level within its subject to be stacked")
    by: dict[str, list[int]] = {}
    for i, s in enumerate(slices.subjects):
        by.setdefault(s, []).append(i)
    return {s: np.asarray(sorted(idx, key=lambda i: (levels[i], i)), dtype=np.int64) for s, idx in by.items()}


def subject_labels(slices: Slices, stacks: dict[str, np.ndarray]) -> np.ndarray:
    """``(G,)`` class of each subject (its first slice's)."""
    return np.array([int(np.asarray(slices.labels)[idx[0]]) for idx in stacks.values()], dtype=np.int64)


def adjacent_pairs(stacks: dict[str, np.ndarray], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(P,2)`` slice indices of every pair ``(k, k+step)`` within a subject and ``(P,)`` its subject's number."""
    pairs, groups = [], []
    for g, idx in enumerate(stacks.values()):
        for k in range(len(idx) - step):
            pairs.append((idx[k], idx[k + step]))
            groups.append(g)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(groups, dtype=np.int64)


def pair_maps(maps: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    """Front-end maps ``(N,8,h,w)`` of slices -> maps ``(P,8,2h,w)`` of pairs, the two slices' rows interleaved (row
    ``2r`` is slice a's row ``r``, ``2r+1`` slice b's): the critic's first convolution sees both at each place."""
    a, b = maps[torch.from_numpy(pairs[:, 0])], maps[torch.from_numpy(pairs[:, 1])]  # (P,8,h,w) each
    n, c, h, w = a.shape
    return torch.stack([a, b], 3).reshape(n, c, 2 * h, w)


# ------------------------------------------------------------------------------------------------ intervals


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (NaN with fewer than two values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), math.nan
    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def difference_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``mean(a) - mean(b)`` of two independent samples and the half-width of its 95% Welch interval."""
    from scipy.stats import t

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float(a.mean() - b.mean()), math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return float(a.mean() - b.mean()), 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return float(a.mean() - b.mean()), float(t.ppf(0.975, df) * se)


def cluster_se(correct: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Accuracy of ``correct (N,)`` scored items that come in clusters ``groups (N,)`` (subjects) and its
    cluster-robust (sandwich) standard error, as a ratio estimator: items of one subject fail or succeed together,
    so the subjects are the independent units. ``-> (accuracy, se)``; ``se`` is infinite with one cluster."""
    correct = np.asarray(correct, dtype=np.float64)
    keys, inv = np.unique(np.asarray(groups), return_inverse=True)
    c = np.bincount(inv, weights=correct)  # (G,) correct per subject
    m = np.bincount(inv).astype(np.float64)  # (G,) items per subject
    acc = float(c.sum() / m.sum())
    g = len(keys)
    se = math.sqrt(g / (g - 1) * ((c - acc * m) ** 2).sum()) / m.sum() if g > 1 else math.inf
    return acc, se


def normal_interval(acc: float, se: float) -> tuple[float, float, float, float]:
    """``(accuracy, low, high, one-sided p-value of accuracy > 0.5)`` from an accuracy and its standard error: a 95%
    normal interval clipped to [0, 1]."""
    from scipy.stats import norm

    low, high = max(0.0, acc - Z95 * se), min(1.0, acc + Z95 * se)
    pvalue = float(norm.sf((acc - 0.5) / se)) if se > 0 else float(acc <= 0.5)
    return acc, low, high, pvalue


def cluster_interval(correct: np.ndarray, groups: np.ndarray) -> tuple[float, float, float, float]:
    """Accuracy of ``correct (N,)`` scored items in clusters ``groups (N,)``: ``(accuracy, low, high, one-sided
    p-value of accuracy > 0.5)`` from :func:`cluster_se`."""
    return normal_interval(*cluster_se(correct, groups))


# ---------------------------------------------------------------------------------------------- consistency


def adjacent_ssim(images: np.ndarray, stacks: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """``(G,)`` each subject's mean SSIM between adjacent slices (uint8 ``images (N,H,W)``)."""
    from brainvq.quality.metrics import ssim

    pairs, groups = adjacent_pairs(stacks)
    values = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), batch_size):
        p = pairs[s : s + batch_size]
        values[s : s + len(p)] = ssim(as_tensor(images[p[:, 0]]), as_tensor(images[p[:, 1]])).double().numpy()
    return np.bincount(groups, weights=values, minlength=len(stacks)) / np.bincount(groups, minlength=len(stacks))


def consistency_metrics(fake: Slices, fake_stacks: dict, real: Slices, real_stacks: dict,
                        real_recon: np.ndarray | None = None) -> dict[str, float]:
    """``vol/adjacent_ssim``, ``real/adjacent_ssim`` and ``vol/adjacent_ssim_gap`` with their intervals; given the
    reconstructions ``real_recon`` of ``real``'s images, ``vol/adjacent_ssim_recon`` too."""
    gen, ref = adjacent_ssim(fake.images, fake_stacks), adjacent_ssim(real.images, real_stacks)
    figures = [("vol/adjacent_ssim", mean_ci(gen)), ("real/adjacent_ssim", mean_ci(ref)),
               ("vol/adjacent_ssim_gap", difference_ci(gen, ref))]
    if real_recon is not None:
        figures.append(("vol/adjacent_ssim_recon", mean_ci(adjacent_ssim(real_recon, real_stacks))))
    out: dict[str, float] = {}
    for name, (value, half) in figures:
        out[name], out[f"{name}_ci95"] = value, half
    return out


# ------------------------------------------------------------------------------------------------ pair test


def grouped_two_sample_test(real_maps: torch.Tensor, real_groups: np.ndarray, fake_maps: torch.Tensor,
                            fake_groups: np.ndarray, protocol: C2STProtocol = C2STProtocol(),
                            salt: int = 0, repeats: int = 1) -> C2STResult:
    """:func:`brainvq.quality.c2st.two_sample_test` for items that come in subjects (``*_groups (N,)``): both sides
    subsampled (seeded) to ``n = min(len(real), len(fake))`` items, each subject's items in one fold (subjects dealt
    to the folds in a seeded order, side by side), every item scored once by the critic that did not train on its
    fold; the interval and p-value are cluster-robust over subjects (:func:`cluster_se`).

    ``repeats > 1`` averages that many cross-fits, repeat ``r`` being exactly the test under ``salt + 100 * r``
    (another subsample, deal and set of critic seeds): the accuracy is their mean, and the variance is the cluster
    variance of the pooled scores (each subject's items over all repeats) plus the variance between the repeats'
    accuracies over ``repeats`` (what a finite number of cross-fits leaves of the cross-fit's own noise, which a
    cluster interval, holding the critics fixed, does not see; README, "Measuring subjects")."""
    return combine_cross_fits([cross_fit_by_subject(real_maps, real_groups, fake_maps, fake_groups, protocol,
                                                    salt + 100 * r) for r in range(repeats)])


def combine_cross_fits(fits: Sequence[tuple[np.ndarray, np.ndarray]]) -> C2STResult:
    """The pair test's figure from one or more cross-fits ``(correct (2n,), cluster (2n,))`` of the same size
    (:func:`cross_fit_by_subject`): their mean accuracy, with the cluster variance of the pooled scores plus, for more
    than one, the variance between their accuracies over their number."""
    acc, se = cluster_se(np.concatenate([c for c, _ in fits]), np.concatenate([g for _, g in fits]))
    if len(fits) > 1:
        se = math.sqrt(se**2 + float(np.var([c.mean() for c, _ in fits], ddof=1)) / len(fits))
    _, low, high, pvalue = normal_interval(acc, se)
    return C2STResult(acc, low, high, pvalue, len(fits[0][0]) // 2)


def cross_fit_by_subject(real_maps: torch.Tensor, real_groups: np.ndarray, fake_maps: torch.Tensor,
                          fake_groups: np.ndarray, protocol: C2STProtocol, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """One cross-fit of :func:`grouped_two_sample_test`: ``(correct (2n,), cluster (2n,))``, real items first."""
    n = min(len(real_maps), len(fake_maps))
    folds = protocol.folds
    rng = np.random.default_rng([protocol.seed, salt, 2017])
    r_idx, f_idx = np.sort(rng.permutation(len(real_maps))[:n]), np.sort(rng.permutation(len(fake_maps))[:n])
    sides = [np.asarray(real_groups)[r_idx], np.asarray(fake_groups)[f_idx]]
    for side, groups in zip(("real", "generated"), sides):
        if len(np.unique(groups)) < folds:
            raise ValueError(f"the pair test with {folds} folds needs at least {folds} {side} subjects, got "
                             f"{len(np.unique(groups))}")
    fold_parts, cluster_parts = [], []
    for s, groups in enumerate(sides):
        keys = np.unique(groups)
        deal = {int(k): i % folds for i, k in enumerate(rng.permutation(keys))}
        fold_parts.append(np.array([deal[int(g)] for g in groups]))
        cluster_parts.append(groups * 2 + s)  # a subject of each side is its own cluster, even with equal numbers
    maps = torch.cat([real_maps[torch.from_numpy(r_idx)], fake_maps[torch.from_numpy(f_idx)]])  # (2n,8,H,W)
    y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
    fold, clusters = np.concatenate(fold_parts), np.concatenate(cluster_parts)
    return cross_fitted(maps, y, fold, protocol, salt), clusters


def balanced_groups(labels: np.ndarray, n: int, parts: int, seed: int) -> list[np.ndarray]:
    """``parts`` disjoint sets of subject numbers (of ``labels (G,)``), each ``n`` subjects with the classes as
    equal as the data allows (seeded): round robin over the classes' shuffled pools."""
    rng = np.random.default_rng([seed, 43])
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    out = []
    for _ in range(parts):
        chosen: list[int] = []
        while len(chosen) < n and any(pools):
            for pool in pools:
                if pool and len(chosen) < n:
                    chosen.append(int(pool.pop()))
        out.append(np.sort(np.asarray(chosen, dtype=np.int64)))
    return out


def _swapped_pairs(stacks: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(slice k of subject s, slice k+1 of the next subject of the same class)``: each slice consistent
    with its level and class, the pair not with itself (the other subject's anatomy)."""
    pairs, groups = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        for j, g in enumerate(members):
            own, other = stacks[g], stacks[members[(j + 1) % len(members)]]
            for k in range(min(len(own), len(other)) - 1):
                pairs.append((own[k], other[k + 1]))
                groups.append(g)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(groups, dtype=np.int64)


def pair_power_checks(maps: torch.Tensor, stacks: dict[str, np.ndarray], labels: np.ndarray, n_subjects: int,
                      protocol: C2STProtocol = C2STProtocol(), null_repeats: int = 1) -> dict[str, C2STResult]:
    """The pair test on real subjects (front-end ``maps`` of their slices, ``labels (G,)`` their classes): adjacent
    pairs of one group of ``n_subjects`` (at most half of them, class-balanced) against another group's adjacent
    pairs (``null``, averaged over ``null_repeats`` cross-fits as the main test is, so that it checks the interval the
    main test prints), pairs a level apart (``skip``) and pairs across subjects of a class (``swap``; detection
    checks, one cross-fit each)."""
    order = list(stacks.values())
    n = min(n_subjects, len(order) // 2)
    a, b = balanced_groups(np.asarray(labels), n, 2, protocol.seed)
    pick = lambda groups: {str(g): order[g] for g in groups}  # noqa: E731
    pa, ga = adjacent_pairs(pick(a))
    maps_a = pair_maps(maps, pa)
    b_stacks = pick(b)
    checks = {"null": adjacent_pairs(b_stacks), "skip": adjacent_pairs(b_stacks, step=2),
              "swap": _swapped_pairs([order[g] for g in b], np.asarray(labels)[b])}
    out = {}
    for i, (name, (pairs, groups)) in enumerate(checks.items()):
        out[name] = grouped_two_sample_test(maps_a, ga, pair_maps(maps, pairs), groups, protocol, salt=1 + i,
                                            repeats=null_repeats if name == "null" else 1)
    return out


def pair_underpowered(power: dict[str, C2STResult]) -> list[str]:
    """The pair test's power checks below :data:`PAIR_POWER_TARGETS`, and a null check that excludes chance (as
    :func:`brainvq.quality.c2st.underpowered` reads the slice test's)."""
    return miscalibrated(power.get("null"), "pair null") + [
        f"pair {name} {power[name].accuracy:.3f} < {target}" for name, target in PAIR_POWER_TARGETS.items()
        if name in power and power[name].accuracy < target]


# ------------------------------------------------------------------------------------------- subject utility


def majority_vote(labels: np.ndarray, scores: torch.Tensor | np.ndarray, groups: np.ndarray,
                  n_groups: int) -> np.ndarray:
    """``(n_groups,)`` each subject's class: the class most of its slices were given (``labels (N,)``); a tie goes
    to the tied class with the highest summed probability (``scores``: logits ``(N,)`` of a binary classifier or
    ``(N,C)``), so it never depends on the order of the classes. -1 for a subject without slices."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    probs = (torch.stack([1 - torch.sigmoid(s), torch.sigmoid(s)], 1) if s.ndim == 1 else torch.softmax(s, 1))
    probs = probs.numpy()  # (N,C)
    classes = probs.shape[1]
    votes = np.zeros((n_groups, classes))
    mass = np.zeros((n_groups, classes))
    np.add.at(votes, (np.asarray(groups), np.asarray(labels)), 1)
    np.add.at(mass, np.asarray(groups), probs)
    # votes are integers and the summed probabilities of one subject's slices are < number of slices + 1
    key = votes * (len(labels) + 1) + mass
    out = key.argmax(1)
    out[votes.sum(1) == 0] = -1
    return out


def subject_predictions(model, maps: torch.Tensor, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Majority-vote class ``(n_groups,)`` of each subject from a classifier's calls on its slices' maps."""
    scores = predict_scores(model, maps)
    labels = (scores > 0).long().numpy() if scores.ndim == 1 else scores.argmax(1).numpy()
    return majority_vote(labels, scores, groups, n_groups)


def slice_groups(slices: Slices, stacks: dict[str, np.ndarray]) -> np.ndarray:
    """``(N,)`` each slice's subject number (the order of ``stacks``)."""
    out = np.full(len(slices.subjects), -1, dtype=np.int64)
    for g, idx in enumerate(stacks.values()):
        out[idx] = g
    return out


def subject_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Subject numbers of a class-balanced ``fraction`` of subjects ``labels (G,)`` (seeded); at least one of each
    class, so a classifier can be trained."""
    classes = np.unique(labels)
    n = max(len(classes), int(round(fraction * len(labels))))
    return balanced_groups(labels, n, 1, seed)[0]


def utility_metrics(fake: Slices, fake_maps: torch.Tensor, train: Slices, train_maps: torch.Tensor,
                    train_stacks: dict, held_out: Slices, held_maps: torch.Tensor, held_stacks: dict,
                    n_fake_subjects: int, protocol: SubjectProtocol,
                    recon_maps: torch.Tensor | None = None) -> dict[str, float]:
    """TSTR and TRTR per subject and the augmentation gain (module docstring); given ``recon_maps`` (the front-end
    maps of the reconstructions of ``train``'s slices, row for row), their ceilings. Empty when the generated or the
    real subjects do not all carry one of two or more classes."""
    fit = protocol.c2st.fit
    seed = protocol.seed
    if not (fake.labelled and train.labelled and held_out.labelled):
        log.info("the generated or real subjects do not all carry one of two or more classes: no subject TSTR, "
                 "TRTR or augmentation gain")
        return {}
    held_groups = slice_groups(held_out, held_stacks)
    truth = subject_labels(held_out, held_stacks)
    n_held = len(truth)

    def correct(images_maps: torch.Tensor, labels: np.ndarray, salt: int) -> np.ndarray:
        model = fit_critic(images_maps, labels, fit, seed=seed * 1000 + salt)
        return subject_predictions(model, held_maps, held_groups, n_held) == truth  # (G_held,)

    out = {}
    tstr = correct(fake_maps, np.asarray(fake.labels), 1)
    out.update(with_ci("vol/tstr_subject_accuracy", float(tstr.mean()), n_held))
    # TRTR on as many real training subjects as there are generated ones: the same amount of subjects
    train_groups = slice_groups(train, train_stacks)
    train_labels = subject_labels(train, train_stacks)
    same = balanced_groups(train_labels, min(n_fake_subjects, len(train_labels)), 1, seed)[0]
    rows = np.flatnonzero(np.isin(train_groups, same))
    trtr = correct(train_maps[torch.from_numpy(rows)], np.asarray(train.labels)[rows], 2)
    out.update(with_ci("real/trtr_subject_accuracy", float(trtr.mean()), n_held))
    if recon_maps is not None:  # the same subjects and seed, decoded from their codes
        ceiling = correct(recon_maps[torch.from_numpy(rows)], np.asarray(train.labels)[rows], 2)
        out.update(with_ci("vol/tstr_subject_recon_ceiling", float(ceiling.mean()), n_held))
    # augmentation: the same real subset with and without every generated subject, several subsets
    gains, real_only, augmented, ceiling_gains = [], [], [], []
    for r in range(protocol.augment_rounds):
        subset = subject_subset(train_labels, protocol.augment_fraction, seed * 100 + r)
        rows = np.flatnonzero(np.isin(train_groups, subset))
        real_maps, real_labels = train_maps[torch.from_numpy(rows)], np.asarray(train.labels)[rows]
        base = correct(real_maps, real_labels, 10 + 2 * r)
        more = correct(torch.cat([real_maps, fake_maps]), np.concatenate([real_labels, np.asarray(fake.labels)]),
                       11 + 2 * r)
        real_only.append(base.mean())
        augmented.append(more.mean())
        gains.append(more.astype(np.float64) - base.astype(np.float64))  # (G_held,) paired by subject
        others = np.setdiff1d(np.arange(len(train_labels)), subset)
        if recon_maps is not None and len(others):
            # as many other real subjects as were generated (all there are when fewer), reconstructed
            extra = others[balanced_groups(train_labels[others], min(n_fake_subjects, len(others)), 1,
                                           seed * 100 + r)[0]]
            ex = torch.from_numpy(np.flatnonzero(np.isin(train_groups, extra)))
            best = correct(torch.cat([real_maps, recon_maps[ex]]),
                           np.concatenate([real_labels, np.asarray(train.labels)[ex.numpy()]]), 11 + 2 * r)
            ceiling_gains.append(best.astype(np.float64) - base.astype(np.float64))
    gain, half = mean_ci(np.mean(gains, axis=0))  # per held-out subject, averaged over the rounds
    out.update({"vol/augmentation_gain": gain, "vol/augmentation_gain_ci95": half})
    if ceiling_gains:
        gain, half = mean_ci(np.mean(ceiling_gains, axis=0))
        out.update({"vol/augmentation_gain_recon_ceiling": gain, "vol/augmentation_gain_recon_ceiling_ci95": half})
    out.update(with_ci("vol/augmented_subject_accuracy", float(np.mean(augmented)), n_held))
    out.update(with_ci("real/subset_subject_accuracy", float(np.mean(real_only)), n_held))
    return out


# ------------------------------------------------------------------------------------------------ all of it


class SubjectOutcome(NamedTuple):
    metrics: dict[str, float]
    underpowered: list[str]  # pair power checks below their targets


def evaluate_subjects(fake: Slices, held_out: Slices, train: Slices,
                      protocol: SubjectProtocol = SubjectProtocol(),
                      reconstruct: Callable[[np.ndarray], np.ndarray] | None = None) -> SubjectOutcome:
    """Every figure of the generated subjects ``fake`` against the real held-out subjects ``held_out``, with the
    real training subjects ``train`` for the power checks, TRTR and the augmentation gain. Each is a
    :class:`~brainvq.quality.evaluate.Slices` with levels (every subject at least two slices); labels in the real
    data's class map (-1 unknown). ``reconstruct`` (uint8 slices -> their VQ-VAE reconstructions as uint8, decoded as
    the generated subjects were) adds the ceilings (module docstring)."""
    import time

    from brainvq.quality.classify import front_maps

    c2st = protocol.c2st
    cell = c2st.fit.critic.cell
    fake_stacks, held_stacks, train_stacks = (subject_stacks(s) for s in (fake, held_out, train))
    t0 = time.monotonic()
    held_recon = None if reconstruct is None else reconstruct(held_out.images)
    metrics = consistency_metrics(fake, fake_stacks, held_out, held_stacks, held_recon)
    fake_maps, held_maps, train_maps = (front_maps(as_tensor(s.images), cell) for s in (fake, held_out, train))
    recon_maps = None if reconstruct is None else front_maps(as_tensor(reconstruct(train.images)), cell)
    log.info("adjacent SSIM and front-end maps in %.0f s", time.monotonic() - t0)

    t0 = time.monotonic()
    rp, rg = adjacent_pairs(held_stacks)
    fp, fg = adjacent_pairs(fake_stacks)
    main = grouped_two_sample_test(pair_maps(held_maps, rp), rg, pair_maps(fake_maps, fp), fg, c2st,
                                   repeats=protocol.pair_repeats)
    metrics.update({**main.metrics("vol/pair_c2st"), "vol/pair_c2st_pvalue": main.pvalue,
                    "vol/pair_c2st_n": float(main.n_per_side), "vol/subjects": float(len(fake_stacks)),
                    "real/subjects": float(len(held_stacks))})
    power = pair_power_checks(train_maps, train_stacks, subject_labels(train, train_stacks),
                              min(len(held_stacks), len(fake_stacks)), c2st, protocol.pair_repeats)
    for name, res in power.items():
        metrics.update(res.metrics(PAIR_POWER_METRICS[name]))
    log.info("pair test and its power checks in %.0f s", time.monotonic() - t0)

    t0 = time.monotonic()
    metrics.update(utility_metrics(fake, fake_maps, train, train_maps, train_stacks, held_out, held_maps,
                                   held_stacks, len(fake_stacks), protocol, recon_maps))
    log.info("subject classifiers in %.0f s", time.monotonic() - t0)
    return SubjectOutcome(metrics, pair_underpowered(power))


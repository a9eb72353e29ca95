"""Sample-quality evaluation for generated brain slices, with no pretrained network.

FID/IS need an ImageNet Inception network, which cannot be downloaded here and was never trained on MRI anyway, so
generated slices are measured with small models trained on the spot:

* ``gen/c2st_accuracy``: a classifier two-sample test (Lopez-Paz & Oquab 2017, https://arxiv.org/abs/1610.06545).
  A :class:`SmallCNN` learns to tell real from generated slices on one half of each set and is scored on the other
  half, then the halves swap (two-fold cross-fitting); 0.5 means it cannot tell them apart, 1.0 means the samples
  are trivially recognisable.
  ``gen/c2st_pvalue`` is the one-sided binomial p-value of that accuracy against chance.
* ``gen/msssim_diversity`` / ``real/msssim_diversity``: mean MS-SSIM over random pairs within a set. Mode collapse
  shows as a generated figure well above the real one (near-identical samples score ~1).
* ``gen/label_agreement``: an AD/NC classifier trained on real training slices labels the class-conditional samples;
  the share matching the requested class. ``real/label_classifier_accuracy`` is that classifier's held-out accuracy on
  real slices, the ceiling the agreement figure should be read against.

Everything runs on CPU in seconds. Nothing here touches MLflow; the caller logs the returned dict.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainvq.engine.common import configure_threads, epoch_order
from brainvq.metrics import ms_ssim, ssim

# torchmetrics' MS-SSIM (5 scales, 11-px window) checks ``side // (5 - 1)**2 > 11 - 1``, i.e. each side >= 176 px
# (stricter than the 161 px of the coarsest-scale argument); 240x256 slices pass.
MSSSIM_MIN_SIDE = 176


@dataclass(frozen=True)
class EvalConfig:
    """Settings for the evaluation classifiers and the diversity estimate.

    ``image_size`` is the classifiers' input size. The default (120, 128) is a 2x average-pool of the 240x256 slices:
    it cuts the convolution cost 4x so both classifiers train in seconds on two cores, while the differences a
    classifier keys on first (brain outline, ventricles, contrast, blur) survive a 2x pool. The price is that
    pixel-period artefacts (e.g. a 2-px checkerboard from transposed convolutions) average away; set it to the full
    slice size to test for those. Images of other sizes are resized to it (area interpolation when shrinking).
    """

    epochs: int = 8
    # Small evaluation sets give few batches per epoch: train for at least this many steps whatever the epochs.
    min_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    image_size: tuple[int, int] = (120, 128)
    max_pairs: int = 256  # pairs for the MS-SSIM diversity estimate
    width: int = 8  # channels of SmallCNN's first block, doubled per block (8 -> 64); 16 costs ~2.5x the time
    label_holdout: float = 0.25  # share of real labelled slices held out to score the AD/NC classifier
    num_threads: int = 0  # torch CPU threads; 0 = every core (brainvq.engine.common.configure_threads)
    progress: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"EvalConfig: {msg}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an int >= 1, got {self.epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 2,
             f"batch_size must be an int >= 2 (batch norm needs 2 samples), got {self.batch_size!r}")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
             f"lr must be a finite number > 0, got {self.lr!r}")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        need(isinstance(self.image_size, (tuple, list)) and len(self.image_size) == 2
             and all(isinstance(s, int) and s >= 16 for s in self.image_size),
             f"image_size must be two ints >= 16 (height, width), got {self.image_size!r}")
        need(isinstance(self.max_pairs, int) and self.max_pairs >= 1,
             f"max_pairs must be an int >= 1, got {self.max_pairs!r}")
        need(isinstance(self.width, int) and self.width >= 1, f"width must be an int >= 1, got {self.width!r}")
        need(isinstance(self.label_holdout, (int, float)) and 0 < self.label_holdout < 1,
             f"label_holdout must be in (0, 1), got {self.label_holdout!r}")
        need(isinstance(self.num_threads, int) and self.num_threads >= 0,
             f"num_threads must be an int >= 0 (0 = all cores), got {self.num_threads!r}")
        object.__setattr__(self, "image_size", tuple(self.image_size))


class SmallCNN(nn.Module):
    """Binary classifier: four conv-BN-ReLU-maxpool blocks, a 4x4 average pool and a linear layer to one logit.

    The 4x4 pool (rather than a global one) keeps coarse layout, so "dark centre" vs "bright centre" stays separable.
    ``image_size`` records the input size it was trained on; ``heldout_accuracy`` is filled in by
    :func:`train_label_classifier`.
    """

    def __init__(self, image_size: tuple[int, int] = (120, 128), width: int = 8, blocks: int = 4):
        super().__init__()
        self.image_size = tuple(image_size)
        self.heldout_accuracy = float("nan")
        layers: list[nn.Module] = []
        c_in = 1
        for b in range(blocks):
            c_out = width * min(2**b, 8)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(c_in * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,1,H,W)`` in [0,1] -> logits ``(B,)``; positive means class 1."""
        h = self.pool(self.features(x))  # (B,C,4,4)
        return self.head(h.flatten(1)).squeeze(1)  # (B,)


# --------------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _threads(num_threads: int) -> Iterator[None]:
    """Use ``configure_threads`` for the duration, then give the caller back its own thread count."""
    before = torch.get_num_threads()
    configure_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator without disturbing the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def as_images(x: np.ndarray | torch.Tensor, name: str = "images") -> torch.Tensor:
    """uint8 or float ``(N,H,W)`` / ``(N,1,H,W)`` -> float32 tensor ``(N,1,H,W)`` in [0,1]."""
    # Always a copy: the clamp below must not write into the caller's array (or a read-only memmap).
    t = x.detach().cpu().clone() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, copy=True))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N,H,W) or (N,1,H,W), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float (0..1), got {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t.clamp_(0.0, 1.0)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N,1,H,W)`` -> ``(N,1,*size)``; area interpolation when shrinking (an average pool for 2x)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _train_classifier(x: torch.Tensor, y: torch.Tensor, config: EvalConfig, desc: str) -> SmallCNN:
    """Train a :class:`SmallCNN` on ``x (N,1,h,w)``, ``y (N,)`` in {0,1}; deterministic for ``config.seed`` on CPU."""
    with _seeded(config.seed):
        model = SmallCNN(config.image_size, config.width)
    # channels_last makes CPU (oneDNN) convolutions ~1.7x faster here; results stay deterministic.
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)  # (N,1,h,w)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Weight classes inversely to their counts so an unbalanced AD/NC set does not buy accuracy with the majority.
    n_pos = float(y.sum())
    pos_weight = torch.tensor((len(y) - n_pos) / n_pos if 0 < n_pos < len(y) else 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    bs = min(config.batch_size, len(x))

    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(range(config.epochs), desc=desc, unit="epoch", disable=not config.progress, leave=False)
    for epoch in bar:
        order = epoch_order(len(x), config.seed, epoch)
        total = 0.0
        for s in range(0, len(order), bs):
            idx = torch.from_numpy(order[s : s + bs])
            if len(idx) < 2:  # batch norm cannot normalise a lone sample
                continue
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(x):.4f}")
    bar.close()
    _recalibrate_bn(model, x, bs)
    model.eval()
    return model


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Recompute batch-norm statistics with the final weights (exact averages, not a momentum trail).

    A few dozen optimiser steps leave the running statistics dominated by their initial values (momentum 0.1), which
    would make eval-mode predictions worse than training ones; this is what ``torch.optim.swa_utils.update_bn`` does.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for s in range(0, len(x), batch_size):
        model(x[s : s + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom


@torch.no_grad()
def _predict(model: SmallCNN, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Hard labels ``(N,)`` in {0,1} for already-resized ``x (N,1,h,w)``."""
    model.eval()
    x = x.contiguous(memory_format=torch.channels_last)
    logits = torch.cat([model(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])  # (N,)
    return (logits > 0).long()


# --------------------------------------------------------------------------------------------------- C2ST


def c2st_accuracy(real: np.ndarray, fake: np.ndarray, config: EvalConfig = EvalConfig()) -> dict:
    """Classifier two-sample test (https://arxiv.org/abs/1610.06545): held-out real-vs-fake accuracy; 0.5 = alike.

    Both sets are cut to the same size (seeded subsample of the larger) so chance is exactly 0.5, and each is split in
    halves. Two-fold cross-fitting: a classifier trained on the first halves is scored on the second and one trained
    on the second halves is scored on the first, so every image is scored once, by a classifier that never saw it.
    That halves the variance of a one-split estimate at the same number of samples (one split of 64+64 swung by
    ~0.1 between seeds). Returns ``accuracy``, ``n_train`` (per fold), ``n_test`` (both folds) and ``pvalue``, the
    one-sided binomial p-value of the test accuracy against 0.5 (small = the sets are distinguishable; the two folds
    share data, so read it as approximate).
    """
    from scipy.stats import binomtest

    r, f = as_images(real, "real"), as_images(fake, "fake")
    if r.shape[-2:] != f.shape[-2:]:
        raise ValueError(f"real and fake slices differ in size: {tuple(r.shape[-2:])} vs {tuple(f.shape[-2:])}")
    n = min(len(r), len(f))
    if n < 4:
        raise ValueError(f"C2ST needs at least 4 real and 4 fake images, got {len(r)} real and {len(f)} fake")
    rng = np.random.default_rng([config.seed, 2017])
    r_idx, f_idx = rng.permutation(len(r))[:n], rng.permutation(len(f))[:n]
    half = n // 2
    correct, n_test = 0, 0
    with _threads(config.num_threads):
        r, f = _resize(r[r_idx], config.image_size), _resize(f[f_idx], config.image_size)  # (n,1,h,w) each
        folds = [(slice(0, half), slice(half, n)), (slice(half, n), slice(0, half))]
        for k, (tr, te) in enumerate(folds):
            x_tr = torch.cat([r[tr], f[tr]])
            y_tr = torch.cat([torch.ones(len(r[tr])), torch.zeros(len(f[tr]))])
            x_te = torch.cat([r[te], f[te]])
            y_te = torch.cat([torch.ones(len(r[te])), torch.zeros(len(f[te]))]).long()
            model = _train_classifier(x_tr, y_tr, config, desc=f"C2ST classifier {k + 1}/2")
            correct += int((_predict(model, x_te) == y_te).sum())
            n_test += len(y_te)
    return {
        "accuracy": correct / n_test,
        "n_train": 2 * half,
        "n_test": n_test,
        "pvalue": float(binomtest(correct, n_test, 0.5, alternative="greater").pvalue),
    }


# --------------------------------------------------------------------------------------------------- diversity


def _random_pairs(n: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_pairs`` distinct unordered pairs ``i < j`` of ``range(n)`` (all of them if there are fewer)."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return np.triu_indices(n, 1)
    if total <= 2_000_000:
        i, j = np.triu_indices(n, 1)
        pick = np.sort(rng.choice(total, size=max_pairs, replace=False))
        return i[pick], j[pick]
    # Too many pairs to list: draw and reject duplicates (cheap, since max_pairs << total here).
    seen: set[tuple[int, int]] = set()
    while len(seen) < max_pairs:
        a, b = rng.choice(n, size=2, replace=False)
        seen.add((min(a, b), max(a, b)))
    pairs = np.array(sorted(seen))
    return pairs[:, 0], pairs[:, 1]


def msssim_diversity(images: np.ndarray, max_pairs: int = 256, seed: int = 0, batch_size: int = 32) -> float:
    """Mean pairwise MS-SSIM over up to ``max_pairs`` random distinct pairs; lower = more diverse, ~1 = collapse.

    Computed at full resolution with :func:`brainvq.metrics.ms_ssim`. MS-SSIM needs at least 176 px a side; smaller
    images fall back to single-scale :func:`brainvq.metrics.ssim` (with a ``UserWarning``), which is on a different
    scale, so compare only figures computed at the same size. Shared black background counts as similar in both real
    and generated sets alike, so compare the two sets, not the value with 0.
    """
    x = as_images(images, "images")  # (N,1,H,W)
    if len(x) < 2:
        raise ValueError(f"diversity needs at least 2 images, got {len(x)}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    metric = ms_ssim
    if min(x.shape[-2:]) < MSSSIM_MIN_SIDE:
        warnings.warn(
            f"images are {tuple(x.shape[-2:])}, MS-SSIM needs >= {MSSSIM_MIN_SIDE} px a side; "
            "diversity falls back to single-scale SSIM", UserWarning, stacklevel=2,
        )
        metric = ssim
    i, j = _random_pairs(len(x), max_pairs, np.random.default_rng([seed, 161]))
    scores = []
    with torch.no_grad():
        for s in range(0, len(i), batch_size):
            a = torch.from_numpy(np.asarray(i[s : s + batch_size]))
            b = torch.from_numpy(np.asarray(j[s : s + batch_size]))
            scores.append(metric(x[a], x[b]))  # (b,)
    return float(torch.cat(scores).double().mean())


# --------------------------------------------------------------------------------------------------- labels


def _as_labels(labels: np.ndarray, n: int, name: str) -> torch.Tensor:
    y = np.asarray(labels).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{name} has {len(y)} entries for {n} images")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must be 0 (NC) or 1 (AD), got values {sorted(set(np.unique(y).tolist()))}")
    return torch.from_numpy(y.astype(np.int64))


def train_label_classifier(images: np.ndarray, labels: np.ndarray, config: EvalConfig = EvalConfig()) -> SmallCNN:
    """Train an AD (1) vs NC (0) :class:`SmallCNN` on real slices; ``.heldout_accuracy`` holds its accuracy on a
    stratified, seeded ``config.label_holdout`` share kept out of training.

    Slices of one subject can land on both sides of the split, so the held-out figure is optimistic as a measure of
    subject-level generalisation; it is meant as a ceiling for :func:`label_agreement`, not as a diagnostic result.
    """
    x = as_images(images, "images")
    y = _as_labels(labels, len(x), "labels")
    rng = np.random.default_rng([config.seed, 1])
    test_idx = []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        if len(idx) < 2:
            raise ValueError(f"need at least 2 real slices of each class (AD=1, NC=0), got {len(idx)} of class {c}")
        test_idx.append(idx[: max(1, round(config.label_holdout * len(idx)))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(x)), test)
    with _threads(config.num_threads):
        x = _resize(x, config.image_size)  # (N,1,h,w)
        model = _train_classifier(x[train], y[train].float(), config, desc="AD/NC classifier")
        model.heldout_accuracy = float((_predict(model, x[test]) == y[test]).float().mean())
    return model


def label_agreement(classifier: SmallCNN, images: np.ndarray, requested_labels: np.ndarray) -> float:
    """Share of generated slices that ``classifier`` assigns to the class they were requested as (AD=1, NC=0)."""
    x = as_images(images, "images")
    y = _as_labels(requested_labels, len(x), "requested_labels")
    pred = _predict(classifier, _resize(x, classifier.image_size))
    return float((pred == y).float().mean())


# --------------------------------------------------------------------------------------------------- all together


def evaluate_samples(
    real_test: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray | None = None,
    real_train: np.ndarray | None = None,
    real_train_labels: np.ndarray | None = None,
    config: EvalConfig = EvalConfig(),
) -> dict[str, float]:
    """All sample-quality metrics, namespaced for logging: ``gen/c2st_accuracy``, ``gen/c2st_pvalue``,
    ``gen/msssim_diversity``, ``real/msssim_diversity`` and, when all three label inputs are given,
    ``gen/label_agreement`` and ``real/label_classifier_accuracy``. Deterministic on CPU for a given ``config.seed``
    and thread count (float sums are ordered by the thread split, so 1 and 2 threads can differ slightly).
    """
    label_inputs = (fake_labels, real_train, real_train_labels)
    if any(v is not None for v in label_inputs) and any(v is None for v in label_inputs):
        raise ValueError("label metrics need fake_labels, real_train and real_train_labels together (or none of them)")
    with _threads(config.num_threads):
        c2st = c2st_accuracy(real_test, fake, config)
        out = {
            "gen/c2st_accuracy": c2st["accuracy"],
            "gen/c2st_pvalue": c2st["pvalue"],
            "gen/msssim_diversity": msssim_diversity(fake, config.max_pairs, config.seed),
            "real/msssim_diversity": msssim_diversity(real_test, config.max_pairs, config.seed),
        }
        if fake_labels is not None:
            clf = train_label_classifier(real_train, real_train_labels, config)
            out["gen/label_agreement"] = label_agreement(clf, fake, fake_labels)
            out["real/label_classifier_accuracy"] = clf.heldout_accuracy
    return out

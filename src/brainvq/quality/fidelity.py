"""Distribution distances in a learned feature space: Frechet distance and precision / recall.

* Frechet distance between Gaussians fitted to two feature sets (the FID formula of Heusel et al. 2017,
  https://arxiv.org/abs/1706.08500), in the embedding of a network trained in-project on the training split (no
  ImageNet Inception: it cannot be downloaded here and never saw MRI). Biased upwards at small sample sizes, so it is
  only read against the same figure for real training vs real held-out slices of the same size (the floor).
* Improved precision and recall (Kynkaanniemi et al. 2019, https://arxiv.org/abs/1904.06991): each set's manifold is
  the union of balls around its points reaching their k-th nearest neighbour (k = 3); precision is the share of
  generated points inside the real manifold (fidelity), recall the share of real points inside the generated one
  (coverage).
"""

from __future__ import annotations

import numpy as np

PR_NEIGHBOURS = 3
BOOTSTRAP_ROUNDS = 200


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a (N,D)`` and ``b (M,D)``."""

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N,D) and (M,D), got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Frechet distance needs at least 2 samples a side, got {len(a)} and {len(b)}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr sqrt(s1 s2) = sum of sqrt(eig(r s2 r)) with r = s1^(1/2): symmetric, so eigh stays real and stable where
    # features that never fire (ReLU units at 0) make the covariances singular and sqrtm(s1 @ s2) inaccurate.
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def frechet_ci95(a: np.ndarray, b: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> float:
    """Half-width of a 95% interval of :func:`frechet_distance`: 1.96 bootstrap standard errors (both sets resampled
    with replacement). The spread, not the bias: resampling adds duplicates, which raise every resampled figure."""
    rng = np.random.default_rng([seed, 23])
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    values = [frechet_distance(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
              for _ in range(rounds)]
    return float(1.959963984540054 * np.std(values, ddof=1))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(N,M)`` (matmul form, clipped at 0 against rounding)."""
    d2 = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every point of ``x`` to its k-th nearest neighbour within ``x`` (itself excluded)."""
    d = _pairwise(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` feature sets (k-NN manifolds)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision / recall with k={k} needs more than {k} samples a side, "
                         f"got {len(real)} and {len(fake)}")
    d = _pairwise(fake, real)  # (M,N)
    precision = float((d <= _radii(real, k)[None, :]).any(1).mean())
    recall = float((d.T <= _radii(fake, k)[None, :]).any(1).mean())
    return precision, recall

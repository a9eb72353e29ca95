"""Backend-free sampling core (numpy only): the draw and the raster-order loops shared by the PyTorch sampler
(:mod:`brainvq.sampling`) and the onnxruntime sampler (:mod:`brainvq.export.sample_onnx`).

Both backends consume the same uniforms (``np.random.default_rng(seed).random((n, h, w))``) through the same
inverse-CDF draw, so the same seed gives the same codes in PyTorch and in onnxruntime, fast or naive (up to a
uniform landing within float rounding of a CDF boundary). Must never import torch.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from brainvq.data.images import to_uint8
from brainvq.data.labels import condition_ids
from brainvq.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

# (codes_row (B,w) int64, vcache, labels (B,) int64, row (1,) int64) -> (vrow (w,B,L,2C), vcache)
RowFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]
# (prev_code (B,) int64, hcache (B,L,ctx,C), vrow_j (B,L,2C)) -> (logits (B,K), hcache)
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]
# (codes (B,h,w) int64, labels (B,) int64) -> logits (B,K,h,w)
FullFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (below (B,h,w) int64, rows (B,R) int64 or None) -> every layer's horizontal gate bias from the slice below at those
# rows (B,R,w,L*2C), every row (B,h,w,L*2C) when None: slice-context priors
ContextFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
# (codes (B,h,w) int64, labels (B,) int64, below (B,h,w) int64) -> logits (B,K,h,w): a slice-context prior's full pass
StackFullFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def check_sampling_args(n: int, temperature: float, top_k: int, num_embeddings: int | None = None,
                        batch_size: int = 1, method: str = "fast", seed: int = 0,
                        pixel_temperature: float | None = None, guidance: float = 0.0) -> None:
    """The one check of sampling arguments, for the torch sampler, the onnxruntime sampler and both CLIs: a bad value
    is a one-line :class:`ConfigError` naming the parameter, raised before any model runs."""
    if n < 1 or batch_size < 1:
        raise ConfigError(f"bad parameter: n and batch_size must be >= 1, got {n} and {batch_size}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"bad parameter: temperature must be a finite number > 0, got {temperature}")
    if top_k < 0 or (num_embeddings is not None and top_k > num_embeddings):
        upper = num_embeddings if num_embeddings is not None else "K"
        raise ConfigError(f"bad parameter: top_k must be in 0..{upper} (0 = no restriction), got {top_k}")
    if method not in ("fast", "naive"):
        raise ConfigError(f"bad parameter: method must be 'fast' or 'naive', got {method!r}")
    if seed < 0:  # numpy's generators refuse negative seeds, deep inside the first draw
        raise ConfigError(f"bad parameter: seed must be >= 0, got {seed}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ConfigError(f"bad parameter: guidance must be a finite number >= 0 (0 = none), got {guidance}")
    if pixel_temperature is not None and not (math.isfinite(pixel_temperature) and pixel_temperature >= 0):
        raise ConfigError(f"bad parameter: pixel_temperature must be a finite number >= 0 (0 = the decoder's mean), "
                          f"got {pixel_temperature}")


def uniforms(n: int, code_shape: tuple[int, int], seed: int) -> np.ndarray:
    """The randomness of a whole sampling call: ``(n, h, w)`` float64 in [0, 1)."""
    return np.random.default_rng(seed).random((n, *code_shape))


def draw(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
    """Inverse-CDF draw from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest (0 = all).

    ``logits (B,K)``, ``u (B,)`` in [0, 1) ``-> (B,)`` int64. Deterministic given ``u``.
    """
    check_sampling_args(1, temperature, top_k)
    logits = np.asarray(logits, dtype=np.float64)  # (B,K)
    with np.errstate(over="ignore"):
        z = logits / float(temperature)  # (B,K)
    if not np.isfinite(z).all():  # never emit codes from NaN probabilities; one check per code, the cause only then
        if not np.isfinite(logits).all():
            raise ModelFileError("the prior produced non-finite logits: its weights are damaged or it diverged")
        # e.g. temperature 1e-310: softmax would be NaN and every code 0
        raise ConfigError(f"bad parameter: temperature {temperature} is too small (logits / temperature overflow); "
                          "use 0.01 or more for near-greedy sampling")
    k = z.shape[1]
    if 0 < top_k < k:
        kth = np.partition(z, k - top_k, axis=1)[:, k - top_k, None]  # (B,1): k-th largest
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=1, keepdims=True))  # (B,K)
    cdf = np.cumsum(p, axis=1)
    # First index whose CDF reaches u·total; u = 0 would pick a zero-probability leading code, so nudge it.
    target = np.maximum(np.asarray(u, dtype=np.float64), 1e-12)[:, None] * cdf[:, -1:]
    return np.minimum((cdf < target).sum(axis=1), k - 1).astype(np.int64)


def guided(logits: np.ndarray, guidance: float) -> np.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598; for autoregressive token
    models as in Parti, https://arxiv.org/abs/2206.10789): ``logits (2B,K)``, the conditional half first, the same
    positions with the null label second ``-> (B,K)`` = ``cond + guidance * (cond - uncond)``. 0 gives ``cond``."""
    b = len(logits) // 2
    cond, uncond = logits[:b], logits[b:]
    return cond + guidance * (cond - uncond)


def class_guidance(guidance: float, conditional: bool) -> float:
    """``guidance``, or 0 with one warning line for a prior without classes (its null label is its only label, so
    guidance would change nothing at twice the cost)."""
    if guidance > 0 and not conditional:
        log.warning("guidance %g ignored: this prior is unconditional (no classes to guide)", guidance)
        return 0.0
    return guidance


def _twice(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, x])


def fast_sample_batch(row_fn: RowFn, step_fn: StepFn, labels: np.ndarray, u: np.ndarray, num_embeddings: int,
                      hcache_shape: tuple[int, ...], vcache_shape: tuple[int, ...], temperature: float = 1.0,
                      top_k: int = 0, on_row: Callable[[], None] | None = None,
                      context: np.ndarray | None = None, guidance: float = 0.0,
                      null_labels: np.ndarray | None = None) -> np.ndarray:
    """Exact raster-order sampling with cached activations (Ramachandran et al. 2017, arXiv 1704.06001).

    One ``row_fn`` call per row and one ``step_fn`` call per code. ``labels (B,)``, ``u (B,h,w)`` ``-> (B,h,w)``.
    ``context`` ``(B,h,w,L*2C)``: a slice-context prior's gate biases from the slice below (a :data:`ContextFn`'s
    output). They enter the horizontal gates only, as one more additive term, so they join each row's terms here,
    outside the graphs, and the row and step graphs stay those of a prior without slice context.

    ``guidance > 0`` (:func:`guided`, with ``null_labels (B,)``: each grid's condition without its class) runs
    every grid twice in one batch, with its condition and with ``null_labels``, both fed the codes drawn from the
    guided logits.
    """
    b, h, w = u.shape
    g = guidance > 0
    two = _twice if g else (lambda x: x)  # the batch the graphs see: (2B,...) under guidance
    codes = np.zeros((b, h, w), dtype=np.int64)
    labels = np.ascontiguousarray(np.concatenate([labels, null_labels]) if g else labels, dtype=np.int64)
    pad = np.full(len(labels), num_embeddings, dtype=np.int64)  # index K embeds to zeros: "nothing to the left/above"
    if context is not None:
        context = two(context)
    vcache = np.zeros((len(labels), *vcache_shape[1:]), dtype=np.float32)
    hzero = np.zeros((len(labels), *hcache_shape[1:]), dtype=np.float32)
    for i in range(h):
        above = two(np.ascontiguousarray(codes[:, i - 1])) if i else np.full((len(labels), w), num_embeddings,
                                                                             dtype=np.int64)
        vrow, new_vcache = row_fn(above, vcache, labels, np.array([i], dtype=np.int64))  # (w,B,L,2C)
        if i:
            vcache = new_vcache  # the first call only produced row 0's label terms; its cache is padding
        if context is not None:
            vrow = vrow + context[:, i].reshape(len(labels), w, *vrow.shape[2:]).transpose(1, 0, 2, 3)  # (w,B,L,2C)
        hcache, prev = hzero, pad
        for j in range(w):
            logits, hcache = step_fn(prev, hcache, vrow[j])
            drawn = draw(guided(logits, guidance) if g else logits, u[:, i, j], temperature, top_k)
            codes[:, i, j] = drawn
            prev = two(drawn)
        if on_row is not None:
            on_row()
    return codes


def naive_sample_batch(full_fn: FullFn, labels: np.ndarray, u: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                       on_row: Callable[[], None] | None = None, max_steps: int | None = None,
                       guidance: float = 0.0, null_labels: np.ndarray | None = None) -> np.ndarray:
    """Reference sampler: one full forward pass per code (h·w passes). ``max_steps`` stops early (benchmarks);
    ``guidance`` as :func:`fast_sample_batch`."""
    b, h, w = u.shape
    codes = np.zeros((b, h, w), dtype=np.int64)
    g = guidance > 0
    labels = np.ascontiguousarray(np.concatenate([labels, null_labels]) if g else labels, dtype=np.int64)
    steps = 0
    for i in range(h):
        for j in range(w):
            if max_steps is not None and steps >= max_steps:
                return codes
            logits = full_fn(_twice(codes) if g else codes, labels)  # (B,K,h,w); codes from (i, j) on are unseen
            here = guided(logits[:, :, i, j], guidance) if g else logits[:, :, i, j]
            codes[:, i, j] = draw(here, u[:, i, j], temperature, top_k)
            steps += 1
        if on_row is not None:
            on_row()
    return codes


def not_given_context(context_fn: ContextFn, b: int, code_shape: tuple[int, int], token: int) -> np.ndarray:
    """The slice-context bias ``(b,h,w,L*2C)`` of ``b`` single slices, whose slice below is "not given" (``token``
    everywhere): the net reads each grid on its own, so every grid's bias is the same; it is computed for one grid and
    broadcast as a read-only view, not run on ``b`` identical grids (a ``(16,60,64,768)`` float32 map is 189 MB)."""
    one = context_fn(np.full((1, *code_shape), token, dtype=np.int64))  # (1,h,w,L*2C)
    return np.broadcast_to(one, (b, *one.shape[1:]))


def stack_levels(slices: int) -> np.ndarray:
    """The level of each slice of a sampled stack, ``(slices,)`` float32: bottom 0 to top 1, as the data's levels
    are the rank of a slice among its subject's, scaled to [0, 1] (:func:`brainvq.data.adni.slice_levels`)."""
    return np.linspace(0.0, 1.0, slices, dtype=np.float32) if slices > 1 else np.zeros(1, np.float32)


def stack_conditions(labels: np.ndarray, slices: int, level_bins: int) -> np.ndarray:
    """Condition ids ``(n, slices)`` of stacks: each subject's label ``(n,)`` at every slice, with the slice's level
    (:func:`stack_levels`) when the prior has level bins."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    levels = np.broadcast_to(stack_levels(slices), (n, slices)).ravel() if level_bins else None
    return condition_ids(np.repeat(labels, slices), levels, level_bins).reshape(n, slices)


def sample_stacks(sample_slice: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], conditions: np.ndarray,
                  u: np.ndarray, bottom_token: int) -> np.ndarray:
    """Stacks of slices, bottom to top, each slice's codes conditioned on the slice below (Markov in the slice
    index). ``sample_slice(conditions (B,), u (B,h,w), below (B,h,w)) -> (B,h,w)`` samples one slice of every stack
    (fast or naive, PyTorch or onnxruntime); ``conditions (B,S)`` condition ids per slice; ``u (B,S,h,w)``;
    the first slice sees ``bottom_token`` everywhere. ``-> (B,S,h,w)`` int64.
    """
    b, s, h, w = u.shape
    codes = np.zeros((b, s, h, w), dtype=np.int64)
    below = np.full((b, h, w), bottom_token, dtype=np.int64)
    for k in range(s):
        codes[:, k] = sample_slice(np.ascontiguousarray(conditions[:, k]), u[:, k], below)
        below = codes[:, k]
    return codes


def context_rows(context_fn: ContextFn, grids: np.ndarray, rows: np.ndarray, radius: int) -> np.ndarray:
    """Row ``rows[b]`` of the slice-context bias of ``grids[b]`` ``(B,h,w)``, from a strip of ``2 * radius + 1``
    rows around it (clamped to the grid, so the strip's edges are the grid's where the row is near one): the bias
    at a row reads ``radius`` rows on each side (``SliceContextNet.radius``), so the strip gives it exactly while
    the rows further away need not be sampled yet; the net is asked for that one row of each strip.
    ``-> (B,w,L*2C)``."""
    b, h, _ = grids.shape
    height = min(h, 2 * radius + 1)
    top = np.clip(np.asarray(rows) - radius, 0, h - height)  # (B,)
    strips = grids[np.arange(b)[:, None], top[:, None] + np.arange(height)]  # (B,height,w)
    return context_fn(np.ascontiguousarray(strips), (np.asarray(rows) - top)[:, None])[:, 0]  # (B,w,L*2C)


def wavefront_stacks(row_fn: RowFn, step_fn: StepFn, context_fn: ContextFn, conditions: np.ndarray, u: np.ndarray,
                     num_embeddings: int, bottom_token: int, hcache_tail: tuple[int, ...],
                     vcache_tail: tuple[int, ...], radius: int, temperature: float = 1.0, top_k: int = 0,
                     on_slice: Callable[[int], None] | None = None, guidance: float = 0.0,
                     null_conditions: np.ndarray | None = None) -> np.ndarray:
    """Stacks of slices sampled as :func:`sample_stacks` with :func:`fast_sample_batch` does, in a wavefront.

    A slice's row ``i`` reads the slice below only through the context bias, which sees ``radius`` rows of it on
    each side: once the slice below has finished row ``i + radius``, row ``i`` can be sampled. So every slice runs at
    once, slice ``k`` ``radius + 1`` rows behind slice ``k - 1``, and each step of the code loop advances one row of
    every running slice in one batched call: ``h + (S - 1)(radius + 1)`` rows of steps instead of ``S * h``, the
    same draws from the same uniforms. ``conditions (B,S)``, ``u (B,S,h,w)`` ``-> (B,S,h,w)`` int64;
    ``on_slice(k)`` after slice ``k`` is done. The row graph takes one row index per call, so it runs once per
    running slice; the context net runs once per row of steps, on strips of the slices below (:func:`context_rows`).
    ``guidance`` as :func:`fast_sample_batch`, with ``null_conditions (B,S)``: each slice's block of the batch holds
    its B grids with their conditions, then the same grids with the null ones.
    """
    b, s, h, w = u.shape
    g = guidance > 0
    two = _twice if g else (lambda x: x)  # one slice's block of the batch: (2B,...) under guidance
    lag = radius + 1
    codes = np.zeros((b, s, h, w), dtype=np.int64)
    conditions = np.ascontiguousarray(np.concatenate([conditions, null_conditions]) if g else conditions,
                                      dtype=np.int64)  # (B or 2B,S)
    bb = len(conditions)
    vcache = np.zeros((s, bb, *vcache_tail), dtype=np.float32)  # each slice's vertical stack
    pad_row = np.full((bb, w), num_embeddings, dtype=np.int64)  # index K embeds to zeros: "nothing above"
    bottom = np.full((b, h, w), bottom_token, dtype=np.int64)  # what the first slice sees below it
    for t in range(h + (s - 1) * lag):
        running = [k for k in range(s) if 0 <= t - k * lag < h]  # the slices with a row to sample now
        rows = np.array([t - k * lag for k in running], dtype=np.int64)  # (m,)
        m = len(running)
        vrows = []
        for k, i in zip(running, rows.tolist()):
            above = two(np.ascontiguousarray(codes[:, k, i - 1])) if i else pad_row
            vrow, new_vcache = row_fn(above, vcache[k], conditions[:, k], np.array([i], dtype=np.int64))
            if i:
                vcache[k] = new_vcache  # the first call only produced row 0's label terms; its cache is padding
            vrows.append(vrow)  # (w,bb,L,2C)
        below = np.concatenate([codes[:, k - 1] if k else bottom for k in running])  # (m*B,h,w)
        bias = context_rows(context_fn, below, np.repeat(rows, b), radius).reshape(m, b, w, -1)  # (m,B,w,L*2C)
        bias = np.concatenate([two(x) for x in bias])  # (m*bb,w,L*2C)
        vrow = np.concatenate(vrows, axis=1)  # (w,m*bb,L,2C)
        vrow = np.ascontiguousarray(vrow + bias.reshape(len(bias), w, *vrow.shape[2:]).transpose(1, 0, 2, 3))
        uu = np.concatenate([u[:, k, i] for k, i in zip(running, rows.tolist())])  # (m*B,w)
        hcache = np.zeros((m * bb, *hcache_tail), dtype=np.float32)
        prev = np.full(m * bb, num_embeddings, dtype=np.int64)
        drawn = np.empty((len(uu), w), dtype=np.int64)
        for j in range(w):
            logits, hcache = step_fn(prev, hcache, vrow[j])
            if g:  # each slice's block: its B conditional rows, then its B unconditional ones
                logits = np.concatenate([guided(x, guidance) for x in logits.reshape(m, bb, -1)])  # (m*B,K)
            drawn[:, j] = draw(logits, uu[:, j], temperature, top_k)
            prev = np.concatenate([two(x) for x in drawn[:, j].reshape(m, b)]) if g else drawn[:, j]  # (m*bb,)
        for n, (k, i) in enumerate(zip(running, rows.tolist())):
            codes[:, k, i] = drawn[n * b : (n + 1) * b]
            if i == h - 1 and on_slice is not None:
                on_slice(k)
    return codes


def stack_uniforms(n: int, slices: int, code_shape: tuple[int, int], seed: int) -> np.ndarray:
    """The randomness of a whole subject-sampling call: ``(n, slices, h, w)`` float64 in [0, 1). Slice ``k`` draws
    from its own stream, ``default_rng([seed, STACK_STREAM, k])``, so subject ``i``'s first slices do not depend on
    ``n`` or on how many slices follow."""
    u = np.empty((n, slices, *code_shape))
    for k in range(slices):
        u[:, k] = np.random.default_rng([seed, STACK_STREAM, k]).random((n, *code_shape))
    return u


# Stream of a subject-sampling call's seed for its code uniforms (slice sampling uses default_rng(seed) itself).
STACK_STREAM = 2
# Second stream of a sampling call's seed: the code uniforms come from default_rng(seed), the pixel noise from
# default_rng([seed, PIXEL_STREAM, slice index]).
PIXEL_STREAM = 1
# The default scale of the pixel draw, as the softmax temperature is the prior's: chosen on the validation split
# among 0, 0.3, 0.5 and 0.75 by the realism test, then precision and recall (README, "The decoder's ceiling"). The
# full scale (1) is the likelihood's, whose white noise also stands in for the fine detail the mean lost, and a
# texture test sees too much of it.
PIXEL_TEMPERATURE = 0.3


# The upper edge of the zero grey level's bin: a location below it is background (see pixel_draw).
ZERO_BIN = 0.5 / 255


def pixel_draw(loc: np.ndarray, scale: np.ndarray | None, seed: int, first: int = 0,
               temperature: float = PIXEL_TEMPERATURE) -> np.ndarray:
    """Slices drawn from the decoder's p(x | codes), a Gaussian ``N(loc, (temperature x scale)²)`` discretised to
    8-bit grey levels with open end bins (``brainvq.quality.losses.discretised_gaussian_nll``): ``loc``, ``scale``
    ``(n,1,H,W)`` -> ``(n,1,H,W)`` float32 on the grid ``k / 255``. ``scale`` None gives ``loc`` as it is.

    Pixels whose location lies in the zero bin (``loc <`` :data:`ZERO_BIN`) are background and stay exactly 0: the
    slices are skull-stripped, their background is masked to 0, and a Gaussian there would sprinkle rare grey specks
    that the likelihood barely pays for (a 1-in-1000 speck costs it 0.001 nats) but that a texture test sees at once.

    Slice ``i`` draws from ``default_rng([seed, PIXEL_STREAM, first + i])``: its noise depends on the seed and its
    index in the call alone, not on the batches it was decoded in, so torch and onnxruntime agree.
    """
    loc = np.asarray(loc, dtype=np.float32)
    if scale is None:
        return loc
    x = np.empty_like(loc)
    for i in range(len(loc)):
        eps = np.random.default_rng([seed, PIXEL_STREAM, first + i]).standard_normal(loc.shape[1:], dtype=np.float32)
        x[i] = loc[i] + np.float32(temperature) * np.asarray(scale[i], dtype=np.float32) * eps
    x = np.where(loc < ZERO_BIN, 0.0, x)
    return to_uint8(x)[:, None] / np.float32(255)  # the 8-bit levels the PNG writer will store, as floats

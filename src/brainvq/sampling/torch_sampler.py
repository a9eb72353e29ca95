"""PyTorch sampling from a gated PixelCNN prior: exact raster order, fast (cached) or naive (full pass per code).

The draw and the loops live in :mod:`brainvq.sampling.draw` (numpy only) so the onnxruntime sampler shares them: the
same seed gives the same codes here and in ``brainvq sample-onnx``.
"""

from __future__ import annotations

import numpy as np
import torch

from brainvq.data.labels import condition_ids, unconditioned
from brainvq.errors import ConfigError
from brainvq.sampling.draw import (
    check_sampling_args,
    class_guidance,
    draw,
    fast_sample_batch,
    naive_sample_batch,
    not_given_context,
    sample_stacks,
    stack_conditions,
    stack_uniforms,
    uniforms,
    wavefront_stacks,
)

__all__ = ["draw", "sample_codes", "sample_subject_codes", "torch_step_fns"]


def torch_step_fns(prior):
    """``(row_fn, step_fn)`` over numpy arrays for :func:`brainvq.sampling.draw.fast_sample_batch`."""
    row, step = prior.row_module().eval(), prior.step_module().eval()
    device = next(prior.parameters()).device

    @torch.no_grad()  # numpy in, numpy out: nothing to differentiate
    def row_fn(codes_row, vcache, labels, row_index):
        t = [torch.from_numpy(a).to(device) for a in (codes_row, vcache, labels, row_index)]
        vrow, vc = row(*t)
        return vrow.cpu().numpy(), vc.cpu().numpy()

    @torch.no_grad()
    def step_fn(prev, hcache, vrow_j):
        logits, hc = step(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (prev, hcache, vrow_j)))
        return logits.cpu().numpy(), hc.cpu().numpy()

    return row_fn, step_fn


def torch_context_fn(prior):
    """The slice-context net over numpy arrays (a :data:`brainvq.sampling.draw.ContextFn`), or None when the prior
    has no slice context."""
    if prior.context is None:
        return None
    net, device = prior.context_module().eval(), next(prior.parameters()).device

    @torch.no_grad()
    def context_fn(below, rows=None):
        t = [None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (below, rows)]
        return net(*t).bias.cpu().numpy()

    return context_fn


def _check(prior, n: int, labels: np.ndarray, temperature: float, top_k: int, method: str, seed: int,
           guidance: float = 0.0) -> np.ndarray:
    cfg = prior.config
    check_sampling_args(n, temperature, top_k, cfg.num_embeddings, method=method, seed=seed, guidance=guidance)
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,)).copy()
    if not cfg.conditional:
        labels[:] = cfg.null_label  # unconditional priors ignore labels
    if labels.min() < 0 or labels.max() > cfg.null_label:
        names = ", ".join(f"{i} {c}" for i, c in enumerate(cfg.classes))
        raise ConfigError(f"labels must be in 0..{cfg.null_label} ({names + ', ' if names else ''}"
                          f"{cfg.null_label} none)")
    return labels


@torch.no_grad()
def sample_codes(prior, n: int, labels, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                 batch_size: int = 16, method: str = "fast", progress: bool = True, levels=None,
                 guidance: float = 0.0) -> np.ndarray:
    """Sample ``n`` code grids ``(n,h,w)`` int64; ``labels`` is one label id or ``(n,)`` ids (the index of a class
    in ``prior.config.classes``, or ``num_classes`` for none: :func:`brainvq.data.labels.labels_for` makes them);
    ``levels`` ``(n,)`` slice levels in [0, 1] (NaN or None: no level), used by priors with level bins only.

    ``method="fast"`` uses the cached row/step modules (~1/(h·w) of a full pass per code); ``"naive"`` runs the whole
    prior once per code. Both give the same codes for the same ``seed``. ``guidance``: classifier-free guidance
    weight (:func:`brainvq.sampling.draw.guided`; 0 = none).
    """
    from tqdm.auto import tqdm

    cfg = prior.config
    labels = _check(prior, n, labels, temperature, top_k, method, seed, guidance)
    guidance = class_guidance(guidance, cfg.conditional)
    if levels is not None:
        levels = np.broadcast_to(np.asarray(levels, dtype=np.float32), (n,))
    labels = condition_ids(labels, levels, cfg.level_bins)  # what the step modules and the full model take
    nulls = unconditioned(labels, cfg.null_label, cfg.level_bins)  # the same levels, no class
    prior.eval()
    h, _ = cfg.code_shape
    u = uniforms(n, cfg.code_shape, seed)  # (n,h,w)
    device = next(prior.parameters()).device
    context_fn = torch_context_fn(prior)  # single slices: the slice below is "not given"
    if method == "fast":
        row_fn, step_fn = torch_step_fns(prior)
    else:
        def full_fn(codes, lab):
            return prior(torch.from_numpy(codes).to(device), torch.from_numpy(lab).to(device)).logits.cpu().numpy()

    out = []
    with tqdm(total=n * h, desc=f"sampling ({method})", unit="row", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            lab, ub, null = labels[s : s + batch_size], u[s : s + batch_size], nulls[s : s + batch_size]
            tick = lambda: bar.update(len(lab))  # noqa: E731
            if method == "fast":
                ctx = None if context_fn is None else not_given_context(context_fn, len(lab), cfg.code_shape,
                                                                        cfg.unknown_token)
                out.append(fast_sample_batch(row_fn, step_fn, lab, ub, cfg.num_embeddings, cfg.hcache_shape(len(lab)),
                                             cfg.vcache_shape(len(lab)), temperature, top_k, on_row=tick,
                                             context=ctx, guidance=guidance, null_labels=null))
            else:
                out.append(naive_sample_batch(full_fn, lab, ub, temperature, top_k, on_row=tick, guidance=guidance,
                                              null_labels=null))
    return np.concatenate(out)


@torch.no_grad()
def sample_subject_codes(prior, n: int, labels, slices: int = 20, temperature: float = 1.0, top_k: int = 0,
                         seed: int = 0, batch_size: int = 16, method: str = "fast",
                         progress: bool = True, guidance: float = 0.0) -> np.ndarray:
    """Sample ``n`` subjects as stacks of ``slices`` code grids, bottom to top, ``(n,slices,h,w)`` int64: each slice
    conditioned on the one below by a prior trained with ``slice_context``: fast in a wavefront
    (:func:`brainvq.sampling.draw.wavefront_stacks`), naive slice after slice (:func:`~.draw.sample_stacks`).
    ``labels``: one label id or ``(n,)``; fast and naive give the same codes for the same seed."""
    from tqdm.auto import tqdm

    cfg = prior.config
    if not cfg.slice_context:
        raise ConfigError("this prior has no slice context: it samples single slices, not subjects (train it with "
                          "slice_context=true)")
    if slices < 1:
        raise ConfigError(f"bad parameter: slices must be >= 1, got {slices}")
    labels = _check(prior, n, labels, temperature, top_k, method, seed, guidance)
    guidance = class_guidance(guidance, cfg.conditional)
    conditions = stack_conditions(labels, slices, cfg.level_bins)  # (n,S)
    nulls = unconditioned(conditions, cfg.null_label, cfg.level_bins)  # (n,S)
    prior.eval()
    u = stack_uniforms(n, slices, cfg.code_shape, seed)  # (n,S,h,w)
    device = next(prior.parameters()).device
    context_fn = torch_context_fn(prior)
    if method == "fast":
        row_fn, step_fn = torch_step_fns(prior)

    out = []
    with tqdm(total=n * slices, desc=f"sampling subjects ({method})", unit="slice", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            cond, ub, null = conditions[s : s + batch_size], u[s : s + batch_size], nulls[s : s + batch_size]
            if method == "fast":  # every slice at once, each a few rows behind the one below
                out.append(wavefront_stacks(row_fn, step_fn, context_fn, cond, ub, cfg.num_embeddings,
                                            cfg.bottom_token, cfg.hcache_shape(1)[1:], cfg.vcache_shape(1)[1:],
                                            prior.context_module().radius, temperature, top_k,
                                            on_slice=lambda k, b=len(cond): bar.update(b), guidance=guidance,
                                            null_conditions=null))
                continue

            def one_slice(cond_k, ub, below):  # the reference: one full pass per code, slice after slice
                g = guidance > 0
                below_t = torch.from_numpy(np.concatenate([below, below]) if g else below).to(device)

                def full_fn(codes, lab):
                    return prior(torch.from_numpy(codes).to(device), torch.from_numpy(lab).to(device),
                                 below_t).logits.cpu().numpy()

                codes = naive_sample_batch(full_fn, cond_k, ub, temperature, top_k, guidance=guidance,
                                           null_labels=unconditioned(cond_k, cfg.null_label, cfg.level_bins))
                bar.update(len(cond_k))
                return codes

            out.append(sample_stacks(one_slice, cond, ub, cfg.bottom_token))
    return np.concatenate(out)

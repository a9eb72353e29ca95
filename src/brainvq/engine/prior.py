"""Gated PixelCNN prior training over VQ-VAE code grids: tracker-agnostic, resumable, time-budgeted."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from brainvq.data.codes import BOTTOM, UNKNOWN, CodeSet, below_index, stack_height
from brainvq.data.images import image_grid, to_uint8
from brainvq.data.labels import condition_ids
from brainvq.engine import distributed, loop
from brainvq.engine.loop import LoopResult, StepOutput
from brainvq.engine.tracker import NullTracker, Tracker
from brainvq.models.checkpoint import PRIOR_KIND
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from brainvq.values import PRECISIONS

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


@dataclass(frozen=True)
class PriorTrainConfig:
    epochs: int = 40
    # Small batches win at a fixed CPU budget (the per-grid cost hardly changes, the optimiser steps multiply): in
    # 6.5 minutes on the demo codes, batch 4 reached 1.93 validation bits/code and batch 8 2.13 (README, "How the
    # defaults were chosen", measured on the validation split).
    batch_size: int = 4
    # With so few steps (~1,000) a high, cosine-annealed peak rate pays: lr 1e-2 reached 1.93 validation bits/code
    # where 3e-3 reached 2.15 in the same 6.5 minutes.
    lr: float = 1e-2
    seed: int = 0
    max_minutes: float = 0.0  # 0 = no time budget
    # Share of training examples whose label is replaced by the null label, so one model also samples
    # unconditionally (classifier-free-guidance style label dropout).
    label_dropout: float = 0.1
    # Share of training examples whose slice level is replaced by "no level" (priors with level_bins only), so
    # the prior also samples without a level.
    level_dropout: float = 0.1
    # Share of training grids whose slice below is hidden ("not given"; slice_context priors only), so one model
    # samples single slices (evaluate_samples, `brainvq sample`) as well as stacks of slices (sample_subjects).
    slice_dropout: float = 0.25
    # "bf16": the forward pass under torch.autocast in bfloat16 (mixed precision: weights, loss, gradients and the
    # optimiser stay float32; evaluation runs in float32). "fp32" (the field's default, so resumed checkpoints
    # train on as they started): float32 throughout.
    precision: str = "fp32"
    device: str = "auto"
    num_threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        loop.check_settings(self)
        for name in ("label_dropout", "level_dropout", "slice_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PriorFitResult = LoopResult  # model, history, test_metrics, checkpoint, stopped_early


def model_labels(labels: np.ndarray | torch.Tensor, config: PixelCNNConfig) -> torch.Tensor:
    """Map dataset labels to the prior's label ids: unknown (-1) and unconditional models get the null label."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.int64).clone()
    null = config.num_classes
    if not config.conditional:
        return torch.full_like(lab, null)
    lab[(lab < 0) | (lab >= null)] = null
    return lab


def code_levels(data: CodeSet) -> np.ndarray:
    """``(N,)`` slice levels of a code set; NaN (no level) for codes encoded before levels were recorded."""
    return np.full(len(data), np.nan, np.float32) if data.levels is None else np.asarray(data.levels, np.float32)


def model_conditions(labels: torch.Tensor, levels: np.ndarray | None, config: PixelCNNConfig) -> torch.Tensor:
    """The prior's label ids (:func:`model_labels`) and slice levels as the condition ids ``forward`` takes."""
    return torch.from_numpy(condition_ids(labels.numpy(), levels, config.level_bins))


def below_codes(data: CodeSet, idx: np.ndarray, below: np.ndarray, config: PixelCNNConfig,
                hide: np.ndarray | None = None) -> torch.Tensor:
    """The slice-context input of grids ``idx`` ``(B,h,w)``: the codes of the slice below (``below`` from
    :func:`brainvq.data.codes.below_index`), the bottom token for a subject's lowest slice, the unknown token where
    it is not known or ``hide`` (B,) bool is set."""
    b = below[idx]  # (B,)
    out = np.where((b >= 0)[:, None, None], data.codes[np.maximum(b, 0)], config.unknown_token)
    out[b == BOTTOM] = config.bottom_token
    out[b == UNKNOWN] = config.unknown_token
    if hide is not None:
        out[hide] = config.unknown_token
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.int64))


# Grids per evaluation batch. On a CPU a small batch is twice as fast: a default prior's activations for 8 grids of
# 60x64 codes stay in cache, for 64 they do not (200 validation grids in 10.7 vs 21.8 s on 2 cores, the same figure
# to 1e-8: benchmarks/prior_eval.py). A GPU wants the large one.
EVAL_BATCH = {"cpu": 8}
EVAL_BATCH_DEFAULT = 64


@torch.no_grad()
def nll_bits(model: GatedPixelCNN, data: CodeSet, batch_size: int | None = None, device="cpu", shard: bool = False,
             unconditional: bool = False, stack: bool = False) -> float:
    """Mean negative log-likelihood in bits per code. ``unconditional=True`` gives every grid the null label (and
    no level). A slice-context prior scores single slices (the slice below not given) unless ``stack=True``: each
    grid given the slice below it, as subjects are sampled.
    ``shard=True`` (every rank must call it) splits the data over DDP ranks and sums over them. ``batch_size``: grids
    per forward pass (None: :data:`EVAL_BATCH` for the device); it changes the time, not the figure."""
    model.eval()
    batch_size = batch_size or EVAL_BATCH.get(torch.device(device).type, EVAL_BATCH_DEFAULT)
    if len(data) == 0:
        return float("nan")
    part = distributed.shard_slice(len(data)) if shard else slice(0, len(data))
    below = below_index(data) if stack and model.config.slice_context else None
    total, count = 0.0, 0
    for s in range(part.start, part.stop, batch_size):
        e = min(s + batch_size, part.stop)
        codes = torch.as_tensor(data.codes[s:e], device=device)
        labels = model_labels(data.labels[s:e], model.config)
        levels = code_levels(data)[s:e]
        if unconditional:  # neither the label nor the level
            labels, levels = torch.full_like(labels, model.config.num_classes), None
        context = None if below is None else below_codes(data, np.arange(s, e), below, model.config).to(device)
        logits = model(codes, model_conditions(labels, levels, model.config).to(device), context).logits
        total += F.cross_entropy(logits, codes, reduction="sum").item()
        count += codes.numel()
    if shard:
        total, count = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / count / LN2


@torch.no_grad()
def class_figures(model: GatedPixelCNN, data: CodeSet, batch_size: int | None = None, device="cpu",
                  shard: bool = False) -> dict[str, float]:
    """How much of the class the prior has learnt, read off held-out codes with no sampling noise: the prior as a
    generative classifier, each grid scored under every class (its own level kept, single slices: the slice below
    not given) and given the class of highest likelihood (Bayes with equal class priors).

    * ``class_accuracy``: share of grids whose own class wins;
    * ``class_accuracy_subject``: the same per subject, its grids' log-likelihoods summed (a subject is one class);
    * ``class_margin_bits``: mean bits per grid by which its own class beats the best other one (negative when it
      loses): how many bits the class term carries, where 0 means the prior ignores the class.

    Empty for an unconditional prior, one class, or grids without a known label. ``shard=True`` (every rank must
    call it) splits the grids over DDP ranks and sums over them."""
    cfg = model.config
    known = (data.labels >= 0) & (data.labels < cfg.num_classes)
    if not cfg.conditional or cfg.num_classes < 2 or not known.any():
        return {}
    model.eval()
    batch_size = batch_size or EVAL_BATCH.get(torch.device(device).type, EVAL_BATCH_DEFAULT)
    part = distributed.shard_slice(len(data)) if shard else slice(0, len(data))
    subjects = np.asarray(data.subjects if data.subjects is not None else [str(i) for i in range(len(data))])
    names, subject_of = np.unique(subjects, return_inverse=True)
    per_subject = np.zeros((len(names), cfg.num_classes))  # summed bits of each subject's grids under each class
    correct, margin, count = 0.0, 0.0, 0.0
    levels = code_levels(data)
    for s in range(part.start, part.stop, batch_size):
        e = min(s + batch_size, part.stop)
        codes = torch.as_tensor(data.codes[s:e], device=device)
        bits = np.stack([  # (B, classes): bits of each grid under each class
            F.cross_entropy(model(codes, model_conditions(torch.full((e - s,), c), levels[s:e], cfg).to(device)).logits,
                            codes, reduction="none").sum((1, 2)).cpu().numpy() / LN2
            for c in range(cfg.num_classes)], 1)
        ok = known[s:e]
        own = np.take_along_axis(bits, np.maximum(data.labels[s:e], 0)[:, None], 1)[:, 0]
        others = np.where(np.arange(cfg.num_classes)[None] == data.labels[s:e, None], np.inf, bits).min(1)
        correct += float((ok & (bits.argmin(1) == data.labels[s:e])).sum())
        margin += float((others - own)[ok].sum())
        count += float(ok.sum())
        np.add.at(per_subject, subject_of[s:e][ok], bits[ok])
    totals = torch.tensor([correct, margin, count], dtype=torch.float64)
    subject_bits = torch.from_numpy(per_subject)
    if shard:
        totals, subject_bits = distributed.all_reduce_sum(totals), distributed.all_reduce_sum(subject_bits)
    correct, margin, count = totals.tolist()
    label_of = np.full(len(names), -1)
    label_of[subject_of[known]] = data.labels[known]
    seen = label_of >= 0
    subject_ok = subject_bits.numpy()[seen].argmin(1) == label_of[seen]
    return {"class_accuracy": correct / count, "class_accuracy_subject": float(subject_ok.mean()),
            "class_margin_bits": margin / count}


# Pseudo-counts of the position baseline's Dirichlet prior (centred on the label's code histogram); the one that
# fits the validation codes best is used, so the baseline is as strong as a histogram can be.
POSITION_PSEUDOCOUNTS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def position_probs(codes: np.ndarray, num_embeddings: int, alpha: float) -> np.ndarray:
    """``(h*w, K)`` code probabilities per grid position of the grids ``codes (N,h,w)``: their per-position histogram
    smoothed towards their overall histogram (add-one, so unseen codes stay finite) with ``alpha`` pseudo-counts."""
    k = num_embeddings
    flat = codes.reshape(len(codes), -1)  # (N, h*w)
    counts = np.zeros((flat.shape[1], k), np.float64)
    np.add.at(counts, (np.broadcast_to(np.arange(flat.shape[1]), flat.shape), flat), 1.0)
    unigram = (counts.sum(0) + 1.0) / (counts.sum() + k)
    return (counts + alpha * unigram) / (len(codes) + alpha)


def _position_bits(train: CodeSet, held_out: CodeSet, num_embeddings: int, alpha: float) -> float:
    """Cross-entropy (bits/code) on ``held_out`` of per-label, per-position code histograms of ``train``, each
    smoothed towards that label's overall histogram with ``alpha`` pseudo-counts (:func:`position_probs`)."""
    labels_tr = np.where(train.labels < 0, -1, train.labels)
    total, count = 0.0, 0
    for lab in np.unique(held_out.labels):
        tr = train.codes[labels_tr == lab] if (labels_tr == lab).any() else train.codes
        p = position_probs(tr, num_embeddings, alpha)  # (h*w, K)
        te_flat = held_out.codes[held_out.labels == lab].reshape(-1, p.shape[0])
        total += -np.log2(p[np.arange(p.shape[0])[None, :], te_flat]).sum()
        count += te_flat.size
    return float(total / max(1, count))


def baseline_bits(train: CodeSet, test: CodeSet, num_embeddings: int, val: CodeSet | None = None) -> dict[str, float]:
    """Baselines the prior's ``prior/test_nll_bits`` is read against, all cross-entropies on the test codes:

    * ``prior/uniform_bits``: log2 K;
    * ``prior/unigram_bits``: the training code histogram (add-one smoothed so unseen codes stay finite);
    * ``prior/position_unigram_bits``: a histogram per label and per grid position (where a code sits carries most
      of a slice's layout), smoothed towards the label's histogram with the pseudo-count that fits ``val`` best.
    """
    counts = np.bincount(train.codes.ravel(), minlength=num_embeddings).astype(np.float64) + 1.0
    p = counts / counts.sum()
    test_counts = np.bincount(test.codes.ravel(), minlength=num_embeddings).astype(np.float64)
    unigram = float(-(test_counts * np.log2(p)).sum() / max(1.0, test_counts.sum()))
    alpha = 1.0
    if val is not None and len(val):
        alpha = min(POSITION_PSEUDOCOUNTS, key=lambda a: _position_bits(train, val, num_embeddings, a))
    return {"prior/uniform_bits": math.log2(num_embeddings), "prior/unigram_bits": unigram,
            "prior/position_unigram_bits": _position_bits(train, test, num_embeddings, alpha),
            "prior/position_pseudocount": alpha}


PREVIEW_PER_ROW = 2  # the per-epoch sample picture: 2 slices per class (4 unconditional ones)


def sample_rows(prior: GatedPixelCNN, vqvae, n_per_row: int, seed: int = 0) -> list[np.ndarray]:
    """Rows of decoded samples, each ``(n_per_row,H,W)`` uint8: one per class, in alphabetical order, when the prior
    is conditional (AD above NC), else two rows of unconditional ones. One call of the fast cached sampler
    (:func:`brainvq.sampling.generate.generate`) draws them all: its time goes with the codes per grid, not the
    grids."""
    from brainvq.sampling.generate import generate

    per_class = prior.config.conditional and prior.config.num_classes > 0
    n = n_per_row * (prior.config.num_classes if per_class else 2)
    # "both": every class in turn, alphabetically
    out = generate(prior, vqvae, n, "both" if per_class else "none", seed=seed, progress=False)
    row = out.labels if per_class else np.arange(n) // n_per_row
    return [to_uint8(out.images[row == r]) for r in dict.fromkeys(row.tolist())]  # rows in order of appearance


def fit_prior(
    model_config: PixelCNNConfig,
    train_config: PriorTrainConfig,
    train: CodeSet,
    val: CodeSet | None = None,
    test: CodeSet | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    extra_checkpoint: dict | None = None,
    tracker: Tracker = NullTracker(),
    callbacks: Iterable[Callable[[int, dict], None]] = (),
    vqvae=None,
) -> PriorFitResult:
    """Train the prior by maximum likelihood with :func:`brainvq.engine.loop.fit`; logs ``prior/train_nll_bits`` and
    ``prior/val_nll_bits`` per epoch and ``prior/test_nll_bits`` with its baselines at the end. Given the ``vqvae``
    that decodes its codes, also the picture ``prior/samples`` every few epochs (:func:`sample_rows`, drawn with the
    training seed each time: the step slider shows one draw as the prior learns). The model is built
    for the class map of ``train`` (``CodeSet.classes``: N classes and the null label), whatever ``model_config``
    says of classes."""
    tc = train_config
    if train.classes is not None and tuple(train.classes) != model_config.classes:
        # the prior's labels are its training codes' labels: it takes their class map (names, and so the size of
        # its label tables); codes encoded before class maps were recorded keep the config's (NC 0, AD 1)
        model_config = replace(model_config, classes=tuple(train.classes), num_classes=len(train.classes))
    cfg = model_config
    train_levels = code_levels(train)
    if cfg.slice_context and (below_index(train) == UNKNOWN).all():
        log.warning("slice_context=true but no training grid has a known slice below it (a flat layout, names "
                    "without _<slice number>, or codes encoded before brainvq 0.3): training a single-slice prior")
        model_config = cfg = replace(cfg, slice_context=False)
    if cfg.slice_context and stack_height(train) >= 2:
        model_config = cfg = replace(cfg, stack_slices=stack_height(train))
    train_below = below_index(train) if cfg.slice_context else None
    if cfg.level_bins and np.isnan(train_levels).all():
        log.warning("level_bins=%d but the training codes carry no slice levels (encoded before brainvq 0.3, or "
                    "names without _<slice number>): every slice trains as 'no level'", cfg.level_bins)

    def build(config: PixelCNNConfig, device: torch.device) -> GatedPixelCNN:
        return GatedPixelCNN(config).to(device)

    def step(net, model, idx, device, gen) -> StepOutput:
        # Label dropout is drawn for the whole global batch on every rank, then each rank keeps its chunk: the
        # same draws as one process with the global batch.
        labels = model_labels(train.labels[idx], cfg)
        if cfg.conditional and tc.label_dropout > 0:
            drop = torch.rand(len(labels), generator=gen) < tc.label_dropout
            labels[drop] = cfg.num_classes
        levels = None
        if cfg.level_bins:
            levels = train_levels[idx].copy()
            if tc.level_dropout > 0:
                levels[(torch.rand(len(levels), generator=gen) < tc.level_dropout).numpy()] = np.nan
        conditions = model_conditions(labels, levels, cfg)
        part = distributed.shard_slice(len(idx))
        below = None
        if cfg.slice_context:
            hide = (torch.rand(len(idx), generator=gen) < tc.slice_dropout).numpy()
            below = below_codes(train, idx, train_below, cfg, hide)[part].to(device)
        codes = torch.as_tensor(train.codes[idx[part]], device=device)
        # bf16 autocast: the gated convolutions run in bfloat16 (1.84x faster per step on an AVX512-BF16 CPU,
        # benchmarks/prior_precision.py); the logits return to float32 for the loss
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
            logits = net(codes, conditions[part].to(device), below).logits
        loss = F.cross_entropy(logits.float(), codes)
        return StepOutput(loss, loss.detach()[None], {"bits": f"{loss.item() / LN2:.3f}"})

    def epoch_metrics(means: dict[str, float], n_batches: int, seconds: float, lr: float) -> dict[str, float]:
        batch = distributed.global_batch_size(tc.batch_size, len(train))
        return {"prior/train_nll_bits": means["loss"] / LN2, "prior/lr": lr,
                "prior/codes_per_second": n_batches * batch * train.codes[0].size / max(1e-9, seconds)}

    def evaluate(model: GatedPixelCNN, split: str) -> dict[str, float]:
        device = next(model.parameters()).device
        stack = model.config.slice_context
        if split == "val":
            out = {"prior/val_nll_bits": nll_bits(model, val, device=device, shard=True)}
            if stack:  # what subject sampling uses: each slice given the one below
                out["prior/val_nll_bits_stack"] = nll_bits(model, val, device=device, shard=True, stack=True)
            return out
        extra = {}
        if stack:
            extra["prior/test_nll_bits_stack"] = nll_bits(model, test, device=device, shard=True, stack=True)
        extra.update({f"prior/test_{k}": v for k, v in class_figures(model, test, device=device, shard=True).items()})
        return {**extra, "prior/test_nll_bits": nll_bits(model, test, device=device, shard=True),
                "prior/test_nll_bits_uncond": nll_bits(model, test, device=device, shard=True, unconditional=True),
                **baseline_bits(train, test, model.config.num_embeddings, val)}

    def preview(model: GatedPixelCNN) -> dict[str, np.ndarray]:
        return {"prior/samples": image_grid(sample_rows(model, vqvae, PREVIEW_PER_ROW, tc.seed))}

    spec = loop.TrainSpec(PRIOR_KIND, "prior", build, step, ("loss",), epoch_metrics, evaluate, clip_grad_norm=1.0,
                          preview=preview if vqvae is not None else None)
    return loop.fit(spec, model_config, tc, len(train), has_val=val is not None and len(val) > 0,
                    has_test=test is not None and len(test) > 0, checkpoint_dir=checkpoint_dir, resume=resume,
                    extra_checkpoint=extra_checkpoint, tracker=tracker, callbacks=callbacks)

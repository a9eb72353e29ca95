"""The one training loop both models share: resume, time budget and LR schedule, progress, checkpoints, NaN stop,
DDP, validation per epoch and the final test. A model supplies only what differs: how to build it, one optimiser
step's loss, its epoch metrics and its evaluation. A plain loop in the nanoGPT spirit, not a framework of hooks.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from brainvq.engine import distributed
from brainvq.engine.common import (
    batches,
    check_finite,
    configure_threads,
    cosine_lr,
    epoch_order,
    load_training_checkpoint,
    resolve_device,
    run_callbacks,
    save_training_checkpoint,
    seed_everything,
)
from brainvq.engine.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)


def check_settings(config) -> None:
    """The loop's own settings, shared by every training config (``epochs``, ``batch_size``, ``lr``,
    ``max_minutes``, ``seed``): called from their ``__post_init__``, so a bad value fails when the config is built."""
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if not 0 <= config.max_minutes < math.inf:
        raise ValueError(f"max_minutes must be a finite number >= 0 (0 = no limit), got {config.max_minutes}")
    if config.seed < 0:  # numpy's generators refuse negative seeds, deep inside the first epoch
        raise ValueError(f"seed must be >= 0, got {config.seed}")


class StepOutput(NamedTuple):
    loss: torch.Tensor  # this rank's loss, the one to backpropagate
    stats: torch.Tensor  # (S,) detached batch statistics named by ``stat_names``; stats[0] is the loss
    postfix: dict[str, str]  # shown on the progress bar


class LoopResult(NamedTuple):
    model: torch.nn.Module  # unwrapped from DDP, in eval mode
    history: list[dict[str, float]]  # one dict per finished epoch
    test_metrics: dict[str, float]
    checkpoint: Path | None
    stopped_early: bool  # time budget hit


class TrainSpec(NamedTuple):
    """What one model brings to :func:`fit`; the loop knows nothing else about it."""

    kind: str  # checkpoint kind
    name: str  # progress-bar and log prefix
    build: Callable[[object, torch.device], torch.nn.Module]  # (config, device) -> model on that device
    # (net, model, global batch indices, device, generator) -> StepOutput. ``net`` is DDP-wrapped under torchrun.
    step: Callable[..., StepOutput]
    stat_names: tuple[str, ...]  # names of StepOutput.stats, summed over an epoch's batches
    # (mean stats by name, batches, seconds of training, lr) -> this epoch's training metrics
    epoch_metrics: Callable[[dict[str, float], int, float, float], dict[str, float]]
    # (model, split name "val" or "test") -> metrics; every rank calls it (it may shard over them)
    evaluate: Callable[[torch.nn.Module, str], dict[str, float]]
    clip_grad_norm: float = 0.0  # 0 = no clipping
    # (model in eval mode) -> {key: (H, W) uint8 picture}: reconstructions or samples for the tracker's image log
    # (see fit); None = no pictures
    preview: Callable[[torch.nn.Module], dict[str, np.ndarray]] | None = None


PREVIEWS_PER_RUN = 10  # pictures per key and run at most: enough for the UI's step slider
# Pictures may take at most this share of the training time, the last epoch's aside: a VQ-VAE's reconstructions
# (milliseconds) come at every cadence point, a prior's samples (seconds each on a CPU: one decoding step per code)
# only a few times per run.
PREVIEW_SHARE = 0.05


def preview_every(epochs: int) -> int:
    """Epochs between two previews: about :data:`PREVIEWS_PER_RUN` per run, whatever its length."""
    return max(1, math.ceil(epochs / PREVIEWS_PER_RUN))


def log_preview(spec: TrainSpec, model: torch.nn.Module, tracker: Tracker, step: int) -> float:
    """Hand ``spec.preview``'s pictures to ``tracker`` at ``step``; returns the seconds it took. The model is put in
    eval mode (and back), and the preview draws on a fork of the RNG: a run trains to the same weights with or
    without previews."""
    t0 = time.monotonic()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        images = spec.preview(model)
    model.train(was_training)
    for key, image in images.items():
        tracker.log_image(key, image, step)
    return time.monotonic() - t0


def fit(
    spec: TrainSpec,
    model_config,
    train_config,
    n_train: int,
    *,
    has_val: bool,
    has_test: bool,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    extra_checkpoint: dict | None = None,
    tracker: Tracker = NullTracker(),
    callbacks: Iterable[Callable[[int, dict], None]] = (),
) -> LoopResult:
    """Train ``spec``'s model for ``train_config.epochs`` over ``n_train`` examples, checkpointing every epoch to
    ``checkpoint_dir/last.pt`` (plus ``extra_checkpoint`` entries) before its metrics go to ``tracker`` (step =
    epoch); the test metrics are logged once at the end. ``spec.preview``'s pictures go to ``tracker.log_image``
    (rank 0 only): before the first epoch (step 0: the MLflow UI opens its image charts there), every
    :func:`preview_every` epochs while they have taken at most :data:`PREVIEW_SHARE` of the time, and after the last
    epoch.

    ``resume=True`` continues from that checkpoint (finished epochs are not repeated; a checkpoint whose model config
    differs rebuilds the model from its own config). Inside a torchrun process group every rank trains its share of
    each global batch of ``batch_size x world_size`` under DistributedDataParallel; statistics are averaged over
    ranks, and only rank 0 writes the checkpoint and logs.
    """
    tc = train_config
    seed_everything(tc.seed)  # the same seed on every rank: identical init, restarts and dropout draws
    configure_threads(tc.num_threads)
    device = distributed.training_device(resolve_device(tc.device))
    extra = dict(extra_checkpoint or {})
    if not distributed.is_main():
        tracker = NullTracker()
    model = spec.build(model_config, device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    gen = torch.Generator().manual_seed(tc.seed)  # the model's own draws (e.g. label dropout), resumable

    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    history: list[dict[str, float]] = []
    start_epoch, spent = 0, 0.0
    if resume and ckpt_path is not None:
        # Rank 0 reads the checkpoint and hands it (or its error) to the others: other nodes need not share its disk.
        ckpt = distributed.on_main(lambda: load_training_checkpoint(ckpt_path, spec.kind))
        if ckpt is not None:
            if ckpt["config"] != model_config.to_dict():
                log.warning("resuming with the checkpoint's model config %s", ckpt["config"])
                model_config = type(model_config)(**ckpt["config"])
                model = spec.build(model_config, device)
                opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            rng = ckpt.get("rng", {})
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if "gen" in rng:
                gen.set_state(rng["gen"])
            start_epoch = int(ckpt["epoch"])
            history = json.loads(ckpt.get("history", "[]"))
            spent = float(ckpt.get("elapsed_seconds", 0.0))
            log.info("resumed %s from %s at epoch %d", spec.name, ckpt_path, start_epoch)
            if int(ckpt.get("world_size", 1)) != distributed.world_size():
                log.warning("checkpoint was written by %s process(es), resuming with %d: the global batch changes",
                            ckpt.get("world_size", 1), distributed.world_size())

    net = distributed.wrap(model, device)  # DDP under torchrun, else the model itself
    budget = distributed.make_budget(tc.max_minutes, spent_before=spent)
    global_bs = distributed.global_batch_size(tc.batch_size, n_train)  # min(batch_size, n_train) for one process
    steps_per_epoch = max(1, n_train // global_bs)
    total_steps = tc.epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    stopped_early = False
    previews = spec.preview is not None and distributed.is_main()
    every, previewed, preview_s, t_start = preview_every(tc.epochs), start_epoch, 0.0, time.monotonic()
    if previews and start_epoch == 0:
        preview_s += log_preview(spec, model, tracker, 0)  # the untrained model
    for epoch in range(start_epoch, tc.epochs):
        # A fresh attempt always takes at least one step: a budget spent on set-up alone (a slow machine, a tiny
        # budget) would otherwise return an untrained model with no history. A resumed attempt whose budget is
        # already spent stops here, before any step.
        if (epoch > start_epoch or spent > 0) and budget.exhausted():
            stopped_early = True
            break
        model.train()
        t0 = time.monotonic()
        sums = np.zeros(len(spec.stat_names))
        n_batches = 0
        bar = tqdm(list(batches(epoch_order(n_train, tc.seed, epoch), global_bs)),
                   desc=f"{spec.name} epoch {epoch + 1}/{tc.epochs}",
                   disable=not tc.progress or not distributed.is_main(), leave=False, unit="batch")
        for idx in bar:
            # The schedule follows whichever is further along, steps or wall clock, so a budget-limited run still
            # anneals its learning rate before time runs out.
            for group in opt.param_groups:
                group["lr"] = cosine_lr(tc.lr, max(step / total_steps, budget.fraction()))
            out = spec.step(net, model, idx, device, gen)
            # Global-batch means (this rank's own values when not distributed); a NaN on any rank stops every rank.
            stats = distributed.all_reduce_mean(out.stats)
            check_finite(stats[0], epoch + 1, step, ckpt_path)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if spec.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad_norm)
            opt.step()
            step += 1
            n_batches += 1
            sums += np.asarray(stats.tolist())
            bar.set_postfix(out.postfix)
            if budget.exhausted():
                stopped_early = True
                break
        bar.close()
        seconds = time.monotonic() - t0
        means = {name: float(s) / max(1, n_batches) for name, s in zip(spec.stat_names, sums)}
        metrics = spec.epoch_metrics(means, n_batches, seconds, opt.param_groups[0]["lr"])
        if has_val:
            metrics.update(spec.evaluate(model, "val"))
        history.append({"epoch": epoch + 1, **metrics})
        # Checkpoint before logging: a kill in between then loses nothing (a resumed run replays the checkpoint's
        # history), whereas the other order would log an epoch the checkpoint does not hold, and it would run twice.
        if ckpt_path is not None and distributed.is_main():
            save_training_checkpoint(
                ckpt_path, kind=spec.kind, config=model_config.to_dict(), model=model.state_dict(),
                optimizer=opt.state_dict(), epoch=epoch + 1,
                rng={"torch": torch.get_rng_state(), "gen": gen.get_state()}, history=json.dumps(history),
                elapsed_seconds=budget.elapsed, train_config=json.dumps(asdict(tc)),
                world_size=distributed.world_size(), **extra,
            )
        tracker.log_metrics(metrics, step=epoch + 1)
        if (previews and (epoch + 1) % every == 0
                and preview_s <= PREVIEW_SHARE * (time.monotonic() - t_start - preview_s)):
            preview_s += log_preview(spec, model, tracker, epoch + 1)
            previewed = epoch + 1
        log.info("%s epoch %d/%d %s", spec.name, epoch + 1, tc.epochs,
                 " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if not k.endswith(("/lr", "_per_second"))))
        run_callbacks(callbacks, epoch + 1, metrics)
        if stopped_early:
            break

    if previews and history and previewed != len(history):  # the last epoch's pictures, whatever the cadence
        log_preview(spec, model, tracker, len(history))
    test_metrics: dict[str, float] = {}
    if has_test:
        test_metrics = spec.evaluate(model, "test")
        tracker.log_metrics(test_metrics, step=len(history))
    return LoopResult(distributed.unwrap(net).eval(), history, test_metrics, ckpt_path, stopped_early)

"""Training speed of the default PixelCNN prior over a 60×64 code grid on this machine's CPU cores.

Prints optimiser steps/s and code grids/s of the shipped forward (channels-last, every convolution one matmul over
shifted copies, position tables broadcast per layer) beside the textbook one over the *same parameters* (``Conv2d``
on NCHW tensors, position tables materialised as one ``(B,h,w,L,2C)`` tensor), their ratio, and the largest logit
difference between the two, in one run.

    python benchmarks/prior_training.py [--steps 8] [--batch_size 4]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from brainvq.engine.common import configure_threads
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig, gate


def conv2d_forward(model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference: NCHW ``Conv2d`` modules of ``model`` applied as convolutions -> logits ``(B,K,h,w)``."""
    b, h, w = codes.shape
    c, ctx, n = model.config.hidden_channels, model.config.context, model.config.num_layers
    cond = model.label_biases(labels, b)  # (B,L,4C) | None
    x = model.embedding(codes).permute(0, 3, 1, 2)  # (B,C,h,w)
    rows, cols = model.position_tables(labels, b)
    pos = (rows[:, :h, None] + cols[:, None, :w]).view(b, h, w, n, 2 * c)  # (B,h,w,L,2C)
    v, hs, skip = x, x, None
    for i in range(n):
        v_pre = model.v_convs[i](F.pad(v, (ctx, ctx, ctx, 0)))
        h_pre = model.h_convs[i](F.pad(hs, (ctx, 0)))[..., :w]
        h_pre = h_pre + F.pad(model.v_to_h[i](v_pre), (0, 0, 1, 0))[:, :, :h] + pos[:, :, :, i].permute(0, 3, 1, 2)
        if cond is not None:
            v_pre = v_pre + cond[:, i, : 2 * c, None, None]
            h_pre = h_pre + cond[:, i, 2 * c :, None, None]
        g = gate(h_pre)
        skip = model.h_skip[i](g) if skip is None else skip + model.h_skip[i](g)
        if i < n - 1:
            v = gate(v_pre)
            res = model.h_res[i](g)
            hs = res if i == 0 else hs + res
    return model.head(skip)


def steps_per_second(model: GatedPixelCNN, forward, codes: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        loss = F.cross_entropy(forward(model, codes, labels), codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=4)
    args = p.parse_args(argv)
    threads = configure_threads(0)
    torch.manual_seed(0)
    cfg = PixelCNNConfig()
    model = GatedPixelCNN(cfg)
    with torch.no_grad():  # trained-looking position tables, so both paths do real work on them
        model.row_bias.normal_(0, 0.1)
        model.col_bias.normal_(0, 0.1)
    codes = torch.randint(0, cfg.num_embeddings, (args.batch_size, *cfg.code_shape))
    labels = torch.randint(0, cfg.num_classes + 1, (args.batch_size,))
    with torch.no_grad():
        diff = (model(codes, labels).logits - conv2d_forward(model, codes, labels)).abs().max().item()
    print(f"torch {torch.__version__}, {threads} threads, default PixelCNNConfig "
          f"({cfg.num_layers} layers x {cfg.hidden_channels} channels, grid {cfg.code_shape}), batch {args.batch_size}")
    print(f"max |logit difference| between the two forwards: {diff:.1e}")
    shipped = steps_per_second(model, lambda m, c, lab: m(c, lab).logits, codes, labels, args.steps)
    print(f"shipped (channels-last matmuls):  {shipped:6.2f} steps/s  {shipped * args.batch_size:6.1f} grids/s")
    plain = steps_per_second(model, conv2d_forward, codes, labels, args.steps)
    print(f"plain (NCHW Conv2d):              {plain:6.2f} steps/s  {plain * args.batch_size:6.1f} grids/s")
    print(f"ratio shipped / plain: {shipped / plain:.2f}x")


if __name__ == "__main__":
    from brainvq.cli.args import run_main

    sys.exit(run_main(main, prog="benchmarks/prior_training.py"))

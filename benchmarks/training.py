"""Training throughput of the default VQ-VAE at 240×256 on this machine's CPU cores.

Prints images/s for the shipped default (channels_last, batch 8, SSIM term as banded matmuls) beside the plain
NCHW variant with torchmetrics' 11×11 SSIM convolution as the loss term, and their ratio, in one run.

    python benchmarks/training.py [--steps 12] [--batch_size 8]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from brainvq.engine.common import configure_threads
from brainvq.models.vqvae import VQVAE, VQVAEConfig
from brainvq.quality.losses import ssim_loss
from brainvq.quality.metrics import ssim_map


def images_per_second(channels_last: bool, fast_ssim: bool, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig())
    x = torch.rand(batch_size, 1, *model.config.image_size)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        out = model(x)
        ssim_term = ssim_loss(out.recon, x) if fast_ssim else 1 - ssim_map(out.recon, x).mean()
        loss = 0.5 * F.mse_loss(out.recon, x) + 0.05 * ssim_term + out.vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=8)
    args = p.parse_args(argv)
    threads = configure_threads(0)
    print(f"torch {torch.__version__}, {threads} threads, default VQVAEConfig at 240x256, batch {args.batch_size}")
    shipped = images_per_second(True, True, args.batch_size, args.steps)
    print(f"shipped (channels_last + matmul SSIM loss):   {shipped:7.1f} images/s")
    plain = images_per_second(False, False, args.batch_size, args.steps)
    print(f"plain (NCHW + torchmetrics SSIM conv loss):   {plain:7.1f} images/s")
    print(f"ratio shipped / plain: {shipped / plain:.2f}x")


if __name__ == "__main__":
    from brainvq.cli.args import run_main

    sys.exit(run_main(main, prog="benchmarks/training.py"))

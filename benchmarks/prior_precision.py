"""Prior training step time, float32 against bfloat16 mixed precision (``train-prior --precision bf16``), in one run.

    python benchmarks/prior_precision.py                  # the default prior (12 x 32, slice context), batch 4
    python benchmarks/prior_precision.py --batch_size 16 --steps 20

Random codes and weights (a step's time does not depend on them), the default train_prior architecture, one Adam step
per iteration (forward, loss, backward, update), the two precisions alternated so that drift in the machine's speed
falls on both. Whether bf16 pays depends on the CPU: it needs native bfloat16 instructions (AVX512-BF16 or AMX); the
first line says what torch sees. What it costs in likelihood and sample quality is measured in the README
("Mixed precision for the prior").
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from brainvq.cli.args import add_param


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "batch_size", type=int, default=4, help="grids per step (train_prior's default)")
    add_param(p, "steps", type=int, default=10, help="timed steps per precision and round")
    add_param(p, "rounds", type=int, default=3, help="alternating rounds of fp32 and bf16")
    args = p.parse_args(argv)

    from brainvq.cli.configs import prior_configs_from_args
    from brainvq.cli.params import build_parser
    from brainvq.models.pixelcnn import GatedPixelCNN
    from brainvq.models.vqvae import VQVAEConfig

    # the prior train_prior builds with every parameter at its default, over the default VQ-VAE's 60x64 codes
    cfg = prior_configs_from_args(build_parser("train-prior", "").parse_args([]), VQVAEConfig())[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; prior {cfg.num_layers} x {cfg.hidden_channels}, codes 60x64, "
          f"slice context, batch {args.batch_size}")
    torch.manual_seed(0)
    model = GatedPixelCNN(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    codes = torch.randint(0, cfg.num_embeddings, (args.batch_size, 60, 64))
    labels = torch.randint(0, cfg.num_classes, (args.batch_size,))
    below = torch.randint(0, cfg.num_embeddings, (args.batch_size, 60, 64))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as engine.prior.fit_prior does
            logits = model(codes, labels, below).logits
        loss = F.cross_entropy(logits.float(), codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {"fp32": [], "bf16": []}
    for name in times:
        step(name == "bf16")  # warm-up
    for _ in range(args.rounds):
        for name in times:
            t = time.perf_counter()
            for _ in range(args.steps):
                step(name == "bf16")
            times[name].append((time.perf_counter() - t) / args.steps)
    fp32, bf16 = np.median(times["fp32"]), np.median(times["bf16"])
    for name, value in (("fp32", fp32), ("bf16", bf16)):
        print(f"{name}: {value * 1e3:.0f} ms per step (median of {args.rounds} rounds of {args.steps}; rounds "
              f"{', '.join(f'{t * 1e3:.0f}' for t in times[name])})")
    print(f"bf16 speed-up per step: {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    from brainvq.cli.args import run_main

    sys.exit(run_main(main, prog="benchmarks/prior_precision.py"))

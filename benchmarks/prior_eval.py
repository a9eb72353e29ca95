"""Prior evaluation time against its batch size, in one run: ``brainvq.engine.prior.nll_bits`` over the same grids
at several batch sizes, alternated so that drift in the machine's speed falls on every side.

    python benchmarks/prior_eval.py                      # the default prior (12 x 32, slice context), 200 grids
    python benchmarks/prior_eval.py --batch_sizes 4 8 16 64 --grids 280

Random codes and weights (a forward pass's time does not depend on them), the default train_prior architecture, and
the figure itself printed beside each time: the batch changes how fast the bits are computed, not the bits. This is
what chose ``brainvq.engine.prior.EVAL_BATCH`` (the prior is evaluated on the validation split every epoch and on
the test split once, so its evaluation is a visible share of train_prior).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from brainvq.cli.args import add_param


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "grids", type=int, default=200, help="code grids to score (the demo set's validation split: 200)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 64], help="grids per forward pass to compare")
    add_param(p, "rounds", type=int, default=3, help="alternating rounds over the batch sizes")
    args = p.parse_args(argv)

    from brainvq.cli.configs import prior_configs_from_args
    from brainvq.cli.params import build_parser
    from brainvq.data.codes import CodeSet
    from brainvq.engine.prior import nll_bits
    from brainvq.models.pixelcnn import GatedPixelCNN
    from brainvq.models.vqvae import VQVAEConfig

    # the prior train_prior builds with every parameter at its default, over the default VQ-VAE's 60x64 codes
    cfg = prior_configs_from_args(build_parser("train-prior", "").parse_args([]), VQVAEConfig())[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; prior {cfg.num_layers} x "
          f"{cfg.hidden_channels}, codes 60x64, slice_context {cfg.slice_context}; {args.grids} grids")
    torch.manual_seed(0)
    model = GatedPixelCNN(cfg).eval()
    rng = np.random.default_rng(0)
    data = CodeSet(rng.integers(0, cfg.num_embeddings, (args.grids, 60, 64)),
                   rng.integers(0, cfg.num_classes, args.grids), np.full(args.grids, np.nan, np.float32), cfg.classes)
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    bits: dict[int, float] = {}
    for _ in range(args.rounds):
        for b in args.batch_sizes:
            t = time.perf_counter()
            bits[b] = nll_bits(model, data, batch_size=b)
            times[b].append(time.perf_counter() - t)
    for b in args.batch_sizes:
        print(f"batch {b}: {np.median(times[b]):.2f} s (median of {args.rounds}; rounds "
              f"{', '.join(f'{t:.2f}' for t in times[b])}), {bits[b]:.8f} bits/code")
    first, last = args.batch_sizes[0], args.batch_sizes[-1]
    print(f"batch {first} vs {last}: {np.median(times[last]) / np.median(times[first]):.2f}x faster; "
          f"largest difference in the figure {max(bits.values()) - min(bits.values()):.1e} bits/code")


if __name__ == "__main__":
    from brainvq.cli.args import run_main

    sys.exit(run_main(main, prog="benchmarks/prior_eval.py"))

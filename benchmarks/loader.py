"""Loader throughput: cold PNG decoding vs batches served from the warm memory-mapped cache, in one run.

    python benchmarks/loader.py [--data_dir DIR] [--batch_size 16] [--epochs 3]

An empty --data_dir uses the default demo set (generated into the cache on first use, and timed). The decoded-image
cache goes to a temporary folder, so "cold" really decodes every PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brainvq.data import SliceDataset, ensure_demo_data, load_adni


def resolve_root(data_dir: str) -> Path:
    """``data_dir``, or the default demo set (its generation time printed when it had to be generated)."""
    if data_dir:
        return Path(data_dir)
    t0 = time.perf_counter()
    root = ensure_demo_data()
    took = time.perf_counter() - t0
    print(f"demo set: {root} ({'generated in' if took > 2 else 'reused,'} {took:.1f} s)")
    return root


def serve(train: SliceDataset, batch_size: int, epochs: int) -> tuple[int, float]:
    """Serve shuffled batches as float tensors for ``epochs`` passes; returns (images, seconds)."""
    served, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(train))
        for s in range(0, len(order), batch_size):
            x, _ = train.batch(order[s : s + batch_size])  # (B,1,H,W) float32
            served += len(x)
    return served, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="passes over train when timing the warm cache")
    args = p.parse_args(argv)
    root = resolve_root(args.data_dir)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        splits = load_adni(root, cache_dir=cache)
        cold = time.perf_counter() - t0
        n_cold = len(splits.train) + len(splits.val) + len(splits.test)
        t0 = time.perf_counter()
        splits = load_adni(root, cache_dir=cache)  # opens the cache: no decoding
        reopen = time.perf_counter() - t0
        served, warm = serve(splits.train, args.batch_size, args.epochs)
    h, w = splits.train.images.shape[1:]
    print(f"data: {root} ({n_cold} slices at {h}x{w})")
    print(f"cold decode (PNG -> cache):        {n_cold / cold:9.0f} images/s  ({cold:.2f} s)")
    print(f"warm cache reopen:                 {reopen * 1000:9.1f} ms")
    print(f"warm batches (float, B={args.batch_size:<3}):       {served / warm:9.0f} images/s")
    print(f"ratio warm / cold:                 {(served / warm) / (n_cold / cold):9.1f}x")


if __name__ == "__main__":
    from brainvq.cli.args import run_main

    sys.exit(run_main(main, prog="benchmarks/loader.py"))

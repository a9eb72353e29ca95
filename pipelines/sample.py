"""Sample brain slices in PyTorch from a finished prior run (exact raster-order sampling, reproducible per seed).

Examples:
    brainvq sample --prior_run_id latest --n 16 --label AD --out samples/
    brainvq sample --prior_run_id 9ab1... --label none --temperature 0.9 --top_k 20 --seed 3
(For deployment without PyTorch use `brainvq sample-onnx` / `mlflow run . -e sample`.)
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("sample", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.data.images import writable_folder, write_slices
    from brainvq.data.labels import levels_for
    from brainvq.engine.common import resolve_device
    from brainvq.sampling.draw import check_sampling_args
    from brainvq.sampling.generate import generate
    from brainvq.tracking.runs import PRIOR_STAGE, load_stage_model

    # before any download
    check_sampling_args(args.n, args.temperature, args.top_k, batch_size=args.batch_size, seed=args.seed,
                        pixel_temperature=args.pixel_temperature, guidance=args.guidance)
    levels_for(args.level, 1)
    device = resolve_device(args.device)
    out = writable_folder(args.out, overwrite=args.overwrite)
    prior, ckpt, _ = load_stage_model(args.prior_run_id, PRIOR_STAGE)
    vqvae, _, _ = load_stage_model(ckpt["vqvae_run_id"], "train_vqvae")
    prior.to(device), vqvae.to(device)
    images = generate(prior, vqvae, args.n, args.label, args.temperature, args.top_k, args.seed, args.batch_size,
                      level=args.level, pixel_temperature=args.pixel_temperature, guidance=args.guidance).images
    pngs = write_slices(images, out, overwrite=args.overwrite)[:-1]  # the slices, then grid.png
    print(f"wrote {len(pngs)} slices and grid.png to {out}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="sample"))

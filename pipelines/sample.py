"""Sample brain slices in PyTorch from a finished prior run (exact raster-order sampling, reproducible per seed).

Examples:
    brainvq sample --prior_run_id latest --n 16 --label AD --out samples/
    brainvq sample --prior_run_id 9ab1... --label none --temperature 0.9 --top_k 20 --seed 3
(For deployment without PyTorch use `brainvq sample-onnx` / `mlflow run . -e sample`.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainvq.cliutil import add_param, intlike, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "prior_run_id", default="latest", help="train_pixelcnn run ID, or latest")
    add_param(p, "n", type=intlike, default=16, help="number of slices")
    add_param(p, "label", default="both", choices=["AD", "NC", "none", "both"], help="class to generate (both = alternate)")
    add_param(p, "temperature", type=float, default=1.0, help="softmax temperature (>0)")
    add_param(p, "top_k", type=intlike, default=0, help="sample among the k most likely codes; 0 = all")
    add_param(p, "seed", type=intlike, default=0, help="random seed (same seed, same slices)")
    add_param(p, "batch_size", type=intlike, default=16, help="slices sampled together")
    add_param(p, "out", default="samples", help="output folder for PNGs and grid.png")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.errors import ConfigError
    from brainvq.plots import save_grid, to_uint8
    from brainvq.prior_stage import generate
    from brainvq.runs import load_stage_model

    if args.n < 1 or args.temperature <= 0 or args.top_k < 0 or args.batch_size < 1:
        raise ConfigError("n and batch_size must be >= 1, temperature > 0 and top_k >= 0")
    prior, ckpt, _ = load_stage_model(args.prior_run_id, "train_pixelcnn")
    vqvae, _, _ = load_stage_model(ckpt["vqvae_run_id"], "train_vqvae")
    images, _, _ = generate(prior, vqvae, args.n, args.label, args.temperature, args.top_k, args.seed, args.batch_size)
    from PIL import Image

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        pngs = to_uint8(images)
        for i, img in enumerate(pngs):
            Image.fromarray(img).save(out / f"sample_{i:03d}.png")
        cols = min(8, len(pngs))
        save_grid([pngs[i : i + cols] for i in range(0, len(pngs), cols)], out / "grid.png")
    except OSError as exc:
        raise ConfigError(f"cannot write samples to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(pngs)} slices and grid.png to {out}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="sample"))

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

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("sample", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.data.images import save_grid, to_uint8
    from brainvq.errors import ConfigError
    from brainvq.sampling.generate import generate
    from brainvq.tracking.runs import load_stage_model

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

"""Sample brain slices with onnxruntime from an exported decoder + prior (no PyTorch needed).

Examples:
    brainvq sample-onnx --model_dir onnx/ --n 16 --label AD --out samples/
    python export/sample_onnx.py --model_dir runs:/<export run id>/onnx --provider cpu --seed 1
    brainvq sample-onnx --model_dir models:/brainvq-sampler@champion --n 16      # the registry's champion
    brainvq sample-onnx --model_dir onnx/ --label AD --level 0.5                # mid-brain slices (level priors)

--provider auto uses CUDA when it really runs and says so in one line, else CPU (with the reason);
--provider cuda fails with a one-line error (exit 2) when CUDA cannot run, instead of silently using the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

from brainvq.cli.args import run_main
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("sample-onnx", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from brainvq.export.ort_sampler import sample_to_pngs

    r = sample_to_pngs(args.model_dir, args.out, n=args.n, batch_size=args.batch_size, label=args.label,
                       temperature=args.temperature, top_k=args.top_k, seed=args.seed, provider=args.provider,
                       method=args.method, overwrite=args.overwrite, level=args.level,
                       pixel_temperature=args.pixel_temperature, guidance=args.guidance)
    print(f"wrote {len(r['paths']) - 1} samples and grid.png to {args.out} in {r['total_s']:.2f} s "
          f"(load {r['load_s']:.2f} s, sample {r['sample_s']:.2f} s, decode {r['decode_s']:.2f} s)")
    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run -e sample`: record the stage (mlflow is torch-free)
        import mlflow

        with mlflow.start_run():
            mlflow.set_tags({"brainvq.stage": "sample", "brainvq.model_dir": args.model_dir})
            mlflow.log_metrics({"sample/seconds_total": r["total_s"], "sample/seconds_sampling": r["sample_s"],
                                "sample/seconds_per_image": r["total_s"] / max(1, args.n)})
            mlflow.log_artifacts(args.out, "samples")


def sample(argv=None) -> int:
    """Entry point (``run_main``-wrapped): returns the exit code."""
    return run_main(main, argv, prog="brainvq sample-onnx")


if __name__ == "__main__":
    sys.exit(sample())

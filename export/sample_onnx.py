"""Sample brain slices with onnxruntime from an exported decoder + prior (no PyTorch needed).

Examples:
    brainvq sample-onnx --model_dir onnx/ --n 16 --label AD --out samples/
    python export/sample_onnx.py --model_dir runs:/<export run id>/onnx --provider cpu --seed 1
    brainvq sample-onnx --model_dir models:/brainvq-sampler@champion --n 16      # the registry's champion

--provider auto uses CUDA when it really runs and says so in one line, else CPU (with the reason);
--provider cuda fails with a one-line error (exit 2) when CUDA cannot run, instead of silently using the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

from brainvq.cliutil import add_param, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq sample-onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "model_dir", default="latest",
              help="folder with the .onnx files, runs:/<id>/onnx, models:/brainvq-sampler@champion (or /<version>), "
                   "or latest (newest export_onnx run)")
    add_param(p, "n", type=int, default=16, help="number of samples")
    add_param(p, "batch_size", type=int, default=16, help="samples generated together")
    add_param(p, "label", default="none", choices=["AD", "NC", "none"], help="class to sample")
    add_param(p, "temperature", type=float, default=1.0, help="softmax temperature")
    add_param(p, "top_k", type=int, default=0, help="keep only the k most likely codes; 0 = all")
    add_param(p, "seed", type=int, default=0, help="random seed (same seed, same codes as `brainvq sample`)")
    add_param(p, "out", default="samples_onnx", help="output folder for sample_000.png... and grid.png")
    add_param(p, "provider", default="auto", choices=["auto", "cuda", "cpu"], help="onnxruntime execution provider")
    add_param(p, "method", default="fast", choices=["fast", "naive"],
              help="fast: cached row/step graphs; naive: full prior.onnx once per code (reference, slow)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from brainvq.export.ort_sampler import sample_to_pngs

    r = sample_to_pngs(args.model_dir, args.out, n=args.n, batch_size=args.batch_size, label=args.label,
                       temperature=args.temperature, top_k=args.top_k, seed=args.seed, provider=args.provider,
                       method=args.method)
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

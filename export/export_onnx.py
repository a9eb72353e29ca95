"""Export the decoder and prior of finished runs to ONNX and log them to an ``export_onnx`` MLflow run.

Writes decoder.onnx (codes -> image), prior.onnx (codes, label -> logits) and the cached prior_row.onnx /
prior_step.onnx graphs the fast sampler (`brainvq sample-onnx`) runs; logs them under ``onnx/`` and logs decoder and
prior as MLflow ONNX models (``decoder_model``, ``prior_model``).

Examples:
    mlflow run . -e export_onnx --env-manager local -P pixelcnn_run_id=latest
    brainvq export-onnx --pixelcnn_run_id 3f2c... --opset 17
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cliutil import add_param, run_main, setup_logging


def _int(value: str) -> int:
    """MLproject ``float`` parameters arrive as ``17.0``."""
    try:
        return int(float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq export-onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "vqvae_run_id", default="latest",
              help="train_vqvae run ID or latest (latest/empty: the VQ-VAE the prior was trained on)")
    add_param(p, "pixelcnn_run_id", default="latest", help="train_pixelcnn run ID, or latest")
    add_param(p, "opset", type=_int, default=17, help="ONNX opset")
    add_param(p, "out_dir", default="", help="where to write the .onnx files (default: a temporary folder)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.export.mlflow_export import export_runs

    files, run_id = export_runs(args.vqvae_run_id, args.pixelcnn_run_id, args.opset, args.out_dir or None)
    print(f"run {run_id}: exported {', '.join(p.name for p in files.values())} (artifacts under onnx/)")


def export_onnx(argv=None) -> int:
    """Entry point (``run_main``-wrapped): returns the exit code."""
    return run_main(main, argv, prog="brainvq export-onnx")


if __name__ == "__main__":
    sys.exit(export_onnx())

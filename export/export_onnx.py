"""Export the decoder and prior of finished runs to ONNX and log them to an ``export_onnx`` MLflow run.

Writes decoder.onnx (codes -> image), prior.onnx (codes, label -> logits) and the cached prior_row.onnx /
prior_step.onnx graphs the fast sampler (`brainvq sample-onnx`) runs; logs them under ``onnx/`` and logs decoder and
prior as MLflow ONNX models (``decoder_model``, ``prior_model``).

Examples:
    mlflow run . -e export_onnx --env-manager local -P prior_run_id=latest
    brainvq export-onnx --prior_run_id 3f2c... --opset 17
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("export-onnx", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.export.mlflow_export import export_runs

    files, run_id = export_runs(args.vqvae_run_id, args.prior_run_id, args.opset, args.out_dir or None)
    print(f"run {run_id}: exported {', '.join(p.name for p in files.values())} (artifacts under onnx/)")


def export_onnx(argv=None) -> int:
    """Entry point (``run_main``-wrapped): returns the exit code."""
    return run_main(main, argv, prog="brainvq export-onnx")


if __name__ == "__main__":
    sys.exit(export_onnx())

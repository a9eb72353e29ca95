"""``brainvq`` command line: one subcommand per stage, each the same code as its MLflow entry point.

Run ``brainvq <command> --help`` for a command's parameters.
"""

from __future__ import annotations

import importlib
import sys

from brainvq.cli.args import run_main

# subcommand -> (module with main(argv), one-line help)
COMMANDS = {
    "make-demo-data": ("brainvq.pipelines.make_demo_data", "write the ADNI-layout demo set generated from MNI152"),
    "make-slices": ("brainvq.pipelines.make_slices", "turn a folder of NIfTI volumes into ADNI-layout slices"),
    "train-vqvae": ("brainvq.pipelines.train_vqvae", "train the VQ-VAE (MLflow run)"),
    "encode-codes": ("brainvq.pipelines.encode_codes", "encode train/val/test into code grids of a VQ-VAE run"),
    "train-prior": ("brainvq.pipelines.train_prior", "train the prior (a gated PixelCNN) over a VQ-VAE's codes"),
    "sample": ("brainvq.pipelines.sample", "sample brain slices in PyTorch from a prior run"),
    "evaluate-samples": (
        "brainvq.pipelines.evaluate_samples",
        "measure generated slices: realism test with power, FD, precision/recall, TSTR (a prior run or any PNG folder)",
    ),
    "sample-subjects": ("brainvq.export.sample_subjects",
                        "sample whole subjects (stacks of slices) with onnxruntime: PNG tree and NIfTI volumes"),
    "evaluate-subjects": ("brainvq.pipelines.evaluate_subjects",
                          "measure generated subjects: adjacent-slice SSIM, pair C2ST, subject TSTR, augmentation"),
    "export-onnx": ("brainvq.export.export_onnx", "export decoder and prior of finished runs to ONNX"),
    "sample-onnx": ("brainvq.export.sample_onnx", "sample with onnxruntime (no PyTorch needed)"),
    "tune": ("brainvq.tuning.tune", "Optuna sweep over the VQ-VAE or the prior, tracked in MLflow"),
    "pipeline": ("brainvq.pipelines.main", "run the whole chain (what `mlflow run .` runs)"),
    "register": ("brainvq.pipelines.register", "register finished runs as model versions; move `champion` when better"),
    "cleanup": ("brainvq.pipelines.cleanup", "close runs that killed processes left RUNNING as KILLED"),
}


# Older command names, run for one more release with a one-line deprecation note; not listed in the usage.
LEGACY_COMMANDS = {"train-pixelcnn": ("brainvq.pipelines.train_pixelcnn", "deprecated name of train-prior")}


def _usage() -> str:
    import brainvq

    lines = [
        f"brainvq {brainvq.__version__}: VQ-VAE + PixelCNN brain-slice generator",
        "",
        "usage: brainvq <command> [options]",
        "",
        "commands:",
    ]
    lines += [f"  {name:<18}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `brainvq <command> --help` for the parameters of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        import brainvq

        print(brainvq.__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name in LEGACY_COMMANDS:
        return run_main(importlib.import_module(LEGACY_COMMANDS[name][0]).main, rest, prog=f"brainvq {name}")
    if name not in COMMANDS:
        print(f"brainvq: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_main(module.main, rest, prog=f"brainvq {name}")

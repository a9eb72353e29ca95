"""Measure generated-slice quality for a prior run: C2ST accuracy, MS-SSIM diversity, AD/NC label agreement.

Examples:
    mlflow run . -e evaluate_samples --env-manager local -P prior_run_id=latest
    brainvq evaluate-samples --prior_run_id 9ab1... --n_samples 64
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cliutil import add_param, intlike, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq evaluate-samples", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "prior_run_id", default="latest", help="train_pixelcnn run ID, or latest")
    add_param(p, "n_samples", type=intlike, default=64, help="slices to generate (half AD, half NC when conditional)")
    add_param(p, "temperature", type=float, default=1.0, help="sampling temperature")
    add_param(p, "top_k", type=intlike, default=0, help="top-k sampling; 0 = all codes")
    add_param(p, "seed", type=intlike, default=0, help="random seed")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import tempfile
    from pathlib import Path

    import mlflow

    from brainvq.errors import ConfigError
    from brainvq.mlflow_stage import stage_run
    from brainvq.prior_stage import evaluate_generation
    from brainvq.runs import load_stage_model, resolve_run

    if args.n_samples < 4:
        raise ConfigError(f"n_samples must be >= 4, got {args.n_samples}")
    prior, ckpt, prior_run = load_stage_model(args.prior_run_id, "train_pixelcnn")
    vqvae, _, _ = load_stage_model(ckpt["vqvae_run_id"], "train_vqvae")
    vq_params = resolve_run(ckpt["vqvae_run_id"], "train_vqvae").data.params
    params = {**vars(args), "prior_run_id": prior_run.info.run_id}
    with stage_run("evaluate_samples", params, tags={"brainvq.prior_run_id": prior_run.info.run_id}):
        with tempfile.TemporaryDirectory() as tmp:
            metrics = evaluate_generation(prior, vqvae, vq_params, args.n_samples, args.temperature, args.top_k,
                                          args.seed, Path(tmp))
            mlflow.log_artifacts(tmp)
        mlflow.log_metrics(metrics)
        print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    sys.exit(run_main(main, prog="evaluate_samples"))

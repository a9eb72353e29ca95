"""Encode train/val/test slices into code grids with a finished VQ-VAE run; logs ``codes/{split}.npz``.

Examples:
    mlflow run . -e encode_codes --env-manager local -P vqvae_run_id=latest
    brainvq encode-codes --vqvae_run_id 3f2c...
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from brainvq.cliutil import add_param, intlike, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq encode-codes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "vqvae_run_id", default="latest", help="train_vqvae run ID, or latest (newest FINISHED one)")
    add_param(p, "batch_size", type=intlike, default=32, help="slices per encoder batch")
    return p


def encode_codes(vqvae_run_id: str, batch_size: int = 32) -> str:
    """Run the stage (nested under the active run if there is one) and return its MLflow run ID."""
    import mlflow

    from brainvq.mlflow_stage import stage_run
    from brainvq.prior_stage import encode_all_splits
    from brainvq.runs import load_stage_model

    vqvae, _, vq_run = load_stage_model(vqvae_run_id, "train_vqvae")
    params = {"vqvae_run_id": vq_run.info.run_id, "batch_size": batch_size, "num_embeddings": vqvae.config.num_embeddings}
    with stage_run("encode_codes", params, tags={"brainvq.vqvae_run_id": vq_run.info.run_id}) as run:
        with tempfile.TemporaryDirectory() as tmp:
            files = encode_all_splits(vqvae, vq_run.data.params, tmp, batch_size)
            for path in files.values():
                mlflow.log_artifact(str(path), "codes")
        return run.info.run_id


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    print(f"encode_codes run {encode_codes(args.vqvae_run_id, args.batch_size)}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="encode_codes"))

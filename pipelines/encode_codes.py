"""Encode train/val/test slices into code grids with a finished VQ-VAE run; logs ``codes/{split}.npz``.

Examples:
    mlflow run . -e encode_codes --env-manager local -P vqvae_run_id=latest
    brainvq encode-codes --vqvae_run_id 3f2c...
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("encode-codes", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.tracking.codes import encode_codes

    print(f"encode_codes run {encode_codes(args.vqvae_run_id, args.batch_size, args.device)}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="encode_codes"))

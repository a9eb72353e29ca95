"""Register finished runs as versions of brainvq-vqvae, brainvq-prior and brainvq-sampler, and move ``champion`` to a
version only when it beats the current one on validation figures (see brainvq.tracking.registry).

Examples:
    brainvq register --vqvae_run_id latest --prior_run_id latest --export_run_id latest
    brainvq register --export_run_id 9ab1...          # the sampler only
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("register", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.errors import ConfigError
    from brainvq.tracking.registry import register_pipeline

    if not (args.vqvae_run_id or args.prior_run_id or args.export_run_id):
        raise ConfigError("nothing to register: pass --vqvae_run_id, --prior_run_id and/or --export_run_id")
    for reg in register_pipeline(args.vqvae_run_id, args.prior_run_id, args.export_run_id):
        print(reg.line())


if __name__ == "__main__":
    sys.exit(run_main(main, prog="register"))

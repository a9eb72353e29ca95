"""Write the ADNI-layout demo set generated from the MNI152 template that nilearn ships (no download).

Examples:
    brainvq make-demo-data ./demo --train-subjects 50 --test-subjects 14 --seed 0
    mlflow run . -e make_demo_data --env-manager local      # into the default cache folder, logged to MLflow
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("make-demo-data", __doc__)  # the parameters: brainvq.cli.params
    p.add_argument("out_pos", nargs="?", default="", metavar="out_dir", help="output folder (same as --out_dir)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Generate the demo set; under MLflow (``mlflow run`` or an active run) log params, tags and a preview grid."""
    args = build_parser().parse_args(argv)
    setup_logging()
    import mlflow

    from brainvq.data.demo import ensure_demo_data, make_demo_data, preview_grid

    out = args.out_pos or args.out_dir
    params = dict(train_subjects=args.train_subjects, test_subjects=args.test_subjects, seed=args.seed,
                  image_size=tuple(args.image_size))
    if not (os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run()):  # plain CLI use: no MLflow run
        root = make_demo_data(out, **params) if out else ensure_demo_data(**params)
        print(f"demo set at {root}")
        return
    from brainvq.tracking.stage import stage_run

    with stage_run("make_demo_data", {**params, "out_dir": out}):
        root = make_demo_data(out, **params) if out else ensure_demo_data(**params)
        mlflow.set_tag("brainvq.data_dir", str(root.resolve()))
        mlflow.log_image(preview_grid(root), "demo_grid.png")  # NC subjects on top, AD below
        print(f"demo set at {root}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="make_demo_data"))

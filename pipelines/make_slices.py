"""Turn a folder of NIfTI volumes into the ADNI layout brainvq reads: OUT/{train,test}/<class>/<subject>_<slice>.png.

Classes come from class folders (IN/<class>/<subject>.nii.gz) or from a CSV of subject,label; the split is by
subject, stratified by class. Conventions (orientation, intensities, slab level, scale): brainvq.data.volumes.

Examples:
    brainvq make-slices ./nifti ./slices --test-fraction 0.2 --seed 0
    brainvq make-slices ./nifti ./slices --labels-csv labels.csv --slab-level 0.55
    mlflow run . -e make_slices -P in_dir=./nifti -P out_dir=./slices --env-manager local
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser

CONFIG = ("slices", "slice_mm", "slab_level", "pixel_mm", "image_size", "low_percentile", "high_percentile",
          "test_fraction", "seed")


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("make-slices", __doc__)  # the parameters: brainvq.cli.params
    p.add_argument("in_pos", nargs="?", default="", metavar="in_dir", help="folder of volumes (same as --in_dir)")
    p.add_argument("out_pos", nargs="?", default="", metavar="out_dir", help="output folder (same as --out_dir)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Convert; under MLflow (``mlflow run`` or an active run) log params, the data_dir tag, the manifest and a
    preview grid."""
    args = build_parser().parse_args(argv)
    setup_logging()
    import mlflow

    from brainvq.data.volumes import MANIFEST, make_slices

    params = {name: getattr(args, name) for name in CONFIG}
    params["image_size"] = tuple(params["image_size"])
    in_dir, out_dir = args.in_pos or args.in_dir, args.out_pos or args.out_dir
    if not (os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run()):  # plain CLI use: no MLflow run
        print(f"slices at {make_slices(in_dir, out_dir, args.labels_csv, **params)}")
        return
    from brainvq.data.demo import preview_grid
    from brainvq.errors import DataError
    from brainvq.tracking.stage import stage_run

    with stage_run("make_slices", {**params, "in_dir": in_dir, "out_dir": out_dir, "labels_csv": args.labels_csv}):
        root = make_slices(in_dir, out_dir, args.labels_csv, **params)
        mlflow.set_tag("brainvq.data_dir", str(root.resolve()))
        mlflow.log_artifact(str(root / MANIFEST))
        try:
            mlflow.log_image(preview_grid(root), "slices_grid.png")  # middle slices of a few train subjects
        except DataError:
            pass  # the preview shows AD and NC folders only; other class names get no grid
        print(f"slices at {root}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="make_slices"))

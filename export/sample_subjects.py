"""Sample whole subjects, stacks of consecutive axial slices from the bottom up, with onnxruntime (no PyTorch).

Each slice is conditioned on the slice below it (a prior trained with ``slice_context``, the default). Writes an
ADNI-layout class tree, ``OUT/<class>/<subject>_<slice>.png``, usable as a ``data_dir`` by itself or merged into a
real ``ROOT/train`` for augmentation, and one NIfTI volume per subject, ``OUT/nifti/<subject>.nii.gz``. Subject ids
(``synth-s<seed>-0000``) cannot collide with real ones.

Examples:
    brainvq sample-subjects --n_subjects 4 --label AD --out synthetic/
    mlflow run . -e sample_subjects --env-manager local -P n_subjects=4
    brainvq sample-subjects --model_dir models:/brainvq-sampler@champion --n_subjects 40 --out aug/ --seed 7
"""

from __future__ import annotations

import argparse
import os
import sys

from brainvq.cli.args import run_main
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("sample-subjects", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from brainvq.export.ort_sampler import sample_subjects_to_folder

    r = sample_subjects_to_folder(args.model_dir, args.out, n_subjects=args.n_subjects, label=args.label,
                                  slices=args.slices, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                                  pixel_temperature=args.pixel_temperature, provider=args.provider,
                                  overwrite=args.overwrite, guidance=args.guidance, pixel_mm=args.pixel_mm,
                                  slice_mm=args.slice_mm)
    per_subject = r["sample_s"] / args.n_subjects
    print(f"wrote {args.n_subjects} subjects ({len(r['pngs'])} PNGs, {len(r['volumes'])} NIfTI volumes) to "
          f"{args.out} in {r['total_s']:.2f} s (sampling {per_subject:.2f} s per subject, decode "
          f"{r['decode_s']:.2f} s)")
    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run -e sample_subjects`: record the stage (torch-free)
        import mlflow

        meta = r["meta"]
        with mlflow.start_run():
            mlflow.set_tags({"brainvq.stage": "sample_subjects", "brainvq.model_dir": args.model_dir,
                             "brainvq.vqvae_run_id": meta.get("brainvq.vqvae_run_id", ""),
                             "brainvq.prior_run_id": meta.get("brainvq.prior_run_id", ""),
                             "brainvq.classes": ",".join(sorted(set(r["classes"])))})
            if args.model_dir.startswith("runs:/"):
                mlflow.set_tag("brainvq.export_run_id", args.model_dir.split("/")[1])
            mlflow.log_metrics({"sample/seconds_total": r["total_s"],
                                "sample/seconds_per_subject": per_subject,
                                "sample/seconds_per_slice": r["sample_s"] / max(1, len(r["pngs"]))})
            mlflow.log_artifacts(args.out, "subjects")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="brainvq sample-subjects"))

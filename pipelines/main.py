"""The whole chain on one command: make_demo_data → train_vqvae → train_prior → export_onnx → sample →
evaluate_samples → sample_subjects → evaluate_subjects, as one parent MLflow run with a child run per step. Steps
whose identical parameters already have a FINISHED run are reused unless --force true.

Examples:
    mlflow run . --env-manager local                        # demo set, about 30 minutes on 2 CPU cores
    mlflow run . --env-manager local -P data_dir=/data/ADNI -P vqvae_epochs=40 -P prior_epochs=10
    mlflow run . --env-manager local -P data_dir=/data/ADNI -P classes=CN,AD       # only these classes: CN 0, AD 1
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser

# The figures the parent run carries: validation ones chose (registry, defaults), test ones report.
SUMMARY = (
    "val/ssim", "test/ssim", "test/ssim_brain", "test/psnr", "test/psnr_brain", "val/pixel_bits", "test/pixel_bits",
    "prior/val_nll_bits", "prior/test_nll_bits", "prior/test_nll_bits_uncond", "prior/position_unigram_bits",
    "prior/unigram_bits", "prior/test_class_accuracy", "prior/test_class_accuracy_subject",
    "prior/test_class_margin_bits",
    "val/c2st_accuracy", "val/c2st_accuracy_ci95", "gen/c2st_accuracy", "gen/c2st_accuracy_ci95",
    "gen/c2st_recon_ceiling", "gen/c2st_level_bottom", "gen/c2st_level_middle", "gen/c2st_level_top",
    "gen/c2st_null", "gen/c2st_power_blur10", "gen/c2st_power_blur05",
    "gen/c2st_power_noise", "gen/fd", "real/fd", "gen/precision", "real/precision", "gen/recall", "real/recall",
    "gen/tstr_accuracy", "real/trtr_accuracy", "gen/tstr_recon_ceiling", "gen/label_agreement",
    "real/label_classifier_accuracy", "gen/label_agreement_recon", "gen/msssim_diversity", "real/msssim_diversity",
    "prior/val_nll_bits_stack", "prior/test_nll_bits_stack",
    "vol/adjacent_ssim", "real/adjacent_ssim", "vol/adjacent_ssim_recon", "vol/pair_c2st", "vol/pair_c2st_ci95",
    "vol/tstr_subject_accuracy", "real/trtr_subject_accuracy", "vol/tstr_subject_recon_ceiling",
    "vol/augmentation_gain", "vol/augmentation_gain_ci95", "vol/augmentation_gain_recon_ceiling",
    "vol/augmentation_gain_recon_ceiling_ci95",
)


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("pipeline", __doc__)  # the parameters: brainvq.cli.params
    return p


def _class_map(data_dir: str, classes: str) -> dict[str, str]:
    """The train_vqvae step's ``classes``: as given, else the class folders the data has now (names in label order),
    so that a FINISHED run of another class map is never reused for this one. Nothing for a flat layout, or for a
    folder that cannot be read (the step itself then fails with the reason)."""
    from brainvq.data.adni import find_classes
    from brainvq.errors import DataError

    try:
        names = find_classes(data_dir, classes)
    except DataError:
        return {"classes": classes} if classes else {}
    return {"classes": ",".join(names)} if names else {}


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import os

    from brainvq.tracking.stage import stage_run
    from brainvq.tracking.workflow import run_step
    from brainvq.values import param_str

    with stage_run("main", vars(args)) as parent:
        pid, force = parent.info.run_id, args.force
        data_dir = args.data_dir
        if not data_dir:
            demo = run_step("make_demo_data", {"seed": args.seed}, pid, force)
            data_dir = demo.data.tags["brainvq.data_dir"]
        picked = _class_map(data_dir, args.classes)
        vq = run_step("train_vqvae", {"data_dir": data_dir, **picked, "image_size": param_str(args.image_size),
                                      "epochs": args.vqvae_epochs, "max_minutes": args.vqvae_max_minutes,
                                      "seed": args.seed}, pid, force)
        prior = run_step("train_prior", {"vqvae_run_id": vq.info.run_id, "epochs": args.prior_epochs,
                                         "max_minutes": args.prior_max_minutes, "seed": args.seed,
                                         "precision": args.prior_precision}, pid, force)
        exp = run_step("export_onnx", {"vqvae_run_id": vq.info.run_id, "prior_run_id": prior.info.run_id}, pid, force)
        # outputs/samples is this chain's own folder: each run's samples replace the last run's, whole
        run_step("sample", {"model_dir": f"runs:/{exp.info.run_id}/onnx", "n": 16, "seed": args.seed,
                            "out": os.path.abspath("outputs/samples"), "overwrite": True}, pid, True)
        ev = run_step("evaluate_samples", {"prior_run_id": prior.info.run_id, "n_samples": args.n_samples,
                                           "seed": args.seed, "split": "test"}, pid, force)
        # whole subjects: sampled torch-free from the export, each slice conditioned on the one below, then scored
        subjects = {}
        if "prior/val_nll_bits_stack" in prior.data.metrics:  # a slice-context prior (not a flat layout's fallback)
            subj = run_step("sample_subjects", {"model_dir": f"runs:/{exp.info.run_id}/onnx",
                                                "n_subjects": args.n_subjects, "seed": args.seed,
                                                "out": os.path.abspath("outputs/subjects"), "overwrite": True},
                            pid, True)
            subjects = run_step("evaluate_subjects", {"subjects_run_id": subj.info.run_id, "seed": args.seed,
                                                      "split": "test"}, pid, force).data.metrics
        import mlflow

        summary = {**vq.data.metrics, **prior.data.metrics, **ev.data.metrics, **subjects}
        mlflow.log_metrics({k: summary[k] for k in SUMMARY if k in summary})
        print(" ".join(f"{k}={summary[k]:.4f}" for k in SUMMARY if k in summary))
        if args.register:  # last, once every step is FINISHED (see brainvq.tracking.registry)
            from brainvq.tracking.registry import register_pipeline

            for reg in register_pipeline(vq.info.run_id, prior.info.run_id, exp.info.run_id):
                mlflow.set_tag(f"brainvq.registered.{reg.name}", reg.version)
                print(reg.line())


if __name__ == "__main__":
    sys.exit(run_main(main, prog="main"))

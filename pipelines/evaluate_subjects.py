"""Measure generated subjects (stacks of consecutive slices) against real held-out subjects: between-slice
consistency (adjacent-slice SSIM against the real subjects'), the pair realism test (real vs generated pairs of
adjacent slices, with its measured power), subject-level TSTR vs TRTR (majority vote of a subject's slices) and the
gain of adding the generated subjects to a quarter of the real training subjects (brainvq.quality.subjects).

Generated subjects come from a ``sample_subjects`` run (``--subjects_run_id``: its ``subjects`` artifact, compared
with the data of the VQ-VAE run it records), or from any ADNI-layout folder ``FOLDER/<class>/<subject>_<slice>.png``
(``--subjects_dir``) compared with an ADNI-layout ``--data_dir``: another generator's subjects are scored the same
way.

Examples:
    mlflow run . -e evaluate_subjects --env-manager local -P subjects_run_id=latest
    brainvq evaluate-subjects --subjects_run_id 9ab1...
    brainvq evaluate-subjects --subjects_dir synthetic/ --data_dir /data/ADNI_AD_NC_2D --split test
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser

SHOWN = ("vol/adjacent_ssim", "real/adjacent_ssim", "vol/adjacent_ssim_recon", "vol/adjacent_ssim_gap",
         "vol/pair_c2st", "vol/pair_c2st_ci95", "vol/pair_c2st_power_swap", "vol/tstr_subject_accuracy",
         "vol/tstr_subject_recon_ceiling", "real/trtr_subject_accuracy", "vol/augmentation_gain",
         "vol/augmentation_gain_recon_ceiling")
SUBJECTS_STAGE = "sample_subjects"
SUBJECTS_ARTIFACT = "subjects"


def build_parser() -> argparse.ArgumentParser:
    return build_entry_parser("evaluate-subjects", __doc__)  # the parameters: brainvq.cli.params


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import json
    import logging
    import tempfile
    import time
    from pathlib import Path

    import mlflow

    from brainvq.errors import ConfigError, RunError
    from brainvq.quality.c2st import C2STProtocol
    from brainvq.quality.subjects import SubjectProtocol
    from brainvq.stages.subjects import (
        check_sizes,
        read_subject_folder,
        save_subjects_grid,
        score_subjects,
        subject_folder,
        subject_sets,
    )
    from brainvq.tracking.datasets import log_data
    from brainvq.tracking.stage import stage_run

    log = logging.getLogger("brainvq.evaluate_subjects")
    try:
        protocol = SubjectProtocol(c2st=C2STProtocol(seed=args.seed), augment_fraction=args.augment_fraction,
                                   pair_repeats=args.pair_repeats)
    except ValueError as exc:
        raise ConfigError(f"bad parameter: {exc}") from None
    tags = {"brainvq.eval_split": args.split, "brainvq.eval_protocol": protocol.digest()}
    with tempfile.TemporaryDirectory(prefix="brainvq-subjects-") as download:
        if args.subjects_dir:
            from brainvq.data.splits import load_splits

            if not 0 < args.val_fraction < 1:
                raise ConfigError(f"bad parameter: val_fraction must be in (0, 1), got {args.val_fraction}")
            folder = subject_folder(args.subjects_dir)  # a mistyped folder is one line before the real data is read
            splits = load_splits(args.data_dir, args.image_size, args.val_fraction, args.seed, 0,
                                 classes=args.classes)
            params = {k: v for k, v in vars(args).items() if k != "subjects_run_id"}
            reconstruct = None  # no VQ-VAE behind a folder: no ceilings
        else:
            from brainvq.cli.params import PIXEL_TEMPERATURE
            from brainvq.stages.evaluate import vqvae_reconstructor
            from brainvq.stages.vqvae import vqvae_run_splits
            from brainvq.tracking.runs import download_artifact, load_stage_model, resolve_run

            run = resolve_run(args.subjects_run_id, SUBJECTS_STAGE)
            rid = run.info.run_id
            vq_id = run.data.tags.get("brainvq.vqvae_run_id", "")
            if not vq_id:
                raise RunError(f"{SUBJECTS_STAGE} run {rid} records no brainvq.vqvae_run_id tag: its real data is "
                               "unknown; pass --subjects_dir and --data_dir instead")
            vqvae, _, vq_run = load_stage_model(vq_id, "train_vqvae")  # its class map: the labels of the real data
            splits = vqvae_run_splits(vq_run.data.params, vqvae.config.classes)
            # the ceilings decode real subjects' codes as the run decoded its samples: same pixel temperature
            reconstruct = vqvae_reconstructor(vqvae, seed=protocol.seed, pixel_temperature=float(
                run.data.params.get("pixel_temperature", PIXEL_TEMPERATURE.default)))
            folder = download_artifact(rid, SUBJECTS_ARTIFACT, download)
            params = {k: v for k, v in vars(args).items()
                      if k not in ("subjects_dir", "data_dir", "classes", "val_fraction", "image_size")}
            params["subjects_run_id"] = rid
            tags.update({"brainvq.subjects_run_id": rid, "brainvq.vqvae_run_id": vq_run.info.run_id})
            if run.data.tags.get("brainvq.export_run_id"):
                tags["brainvq.export_run_id"] = run.data.tags["brainvq.export_run_id"]
        image_size = tuple(splits.train.images.shape[1:])  # (H, W): what the real slices were fitted to
        fake = read_subject_folder(folder, image_size, splits.classes)  # labelled as the real data
        sets = subject_sets(splits, args.split)
        check_sizes(fake, sets, protocol)  # too few subjects is refused before any run starts

        with stage_run("evaluate_subjects", params, tags=tags):
            log_data(splits.root, "evaluation")  # the real subjects compared with
            log_data(folder, "generated")
            t0 = time.monotonic()
            outcome = score_subjects(fake, sets, protocol, reconstruct)
            log.info("subjects scored in %.0f s", time.monotonic() - t0)
            mlflow.set_tag("brainvq.eval_underpowered", str(bool(outcome.underpowered)).lower())
            if outcome.underpowered:
                log.warning("the pair test is underpowered on these subjects (%s): read vol/pair_c2st with care",
                            "; ".join(outcome.underpowered))
            mlflow.log_metrics({k: float(v) for k, v in outcome.metrics.items()})
            with tempfile.TemporaryDirectory() as tmp:
                save_subjects_grid(fake, sets.held_out, Path(tmp) / "subjects.png")
                (Path(tmp) / "protocol.json").write_text(json.dumps(protocol.to_dict(), indent=2))
                mlflow.log_artifacts(tmp)
            print(" ".join(f"{k}={outcome.metrics[k]:.4f}" for k in SHOWN if k in outcome.metrics))


if __name__ == "__main__":
    sys.exit(run_main(main, prog="evaluate_subjects"))

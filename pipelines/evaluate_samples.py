"""Measure generated slices against real held-out ones: the realism test (C2ST) with its interval and measured
power, the reconstruction ceiling, Frechet distance and precision / recall with their real floors, TSTR vs TRTR,
label agreement and diversity (README, "How quality is measured").

Generated slices come from a prior run (``--prior_run_id``), or from any folder of PNGs (``--samples_dir``,
``FOLDER/<class>/*.png`` or ``FOLDER/*.png``) compared with an ADNI-layout ``--data_dir``: another generator is
scored the same way. ``--split test`` (the report) also logs ``val/c2st_*``, the realism score on the validation
split that the registry ranks samplers by. What depends only on the real data and the protocol (power checks, the
feature network, the real floors) is computed once per data set and reused from an ``eval_calibration`` run.

Examples:
    mlflow run . -e evaluate_samples --env-manager local -P prior_run_id=latest
    brainvq evaluate-samples --prior_run_id 9ab1... --n_samples 256
    brainvq evaluate-samples --samples_dir other_gan/ --data_dir /data/ADNI_AD_NC_2D --split test
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser

SHOWN = ("gen/c2st_accuracy", "gen/c2st_accuracy_ci95", "gen/c2st_recon_ceiling", "gen/c2st_power_blur05", "gen/fd",
         "real/fd", "gen/precision", "gen/recall", "gen/tstr_accuracy", "gen/tstr_recon_ceiling", "real/trtr_accuracy",
         "gen/label_agreement", "gen/label_agreement_recon", "val/c2st_accuracy")


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("evaluate-samples", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import json
    import logging
    import tempfile
    import time
    from functools import partial
    from pathlib import Path

    import mlflow

    from brainvq.engine.common import resolve_device
    from brainvq.errors import ConfigError
    from brainvq.quality.evaluate import EvalProtocol
    from brainvq.stages.evaluate import (
        evaluation_sets,
        generate_slices,
        read_sample_folder,
        sample_folder,
        save_generated_grid,
        score_samples,
        vqvae_reconstructor,
    )
    from brainvq.tracking.calibration import calibration_for
    from brainvq.tracking.datasets import log_data
    from brainvq.tracking.stage import stage_run

    log = logging.getLogger("brainvq.evaluate_samples")
    try:
        protocol = EvalProtocol(n_samples=args.n_samples, seed=args.seed, temperature=args.temperature,
                                top_k=args.top_k, pixel_temperature=args.pixel_temperature,
                                guidance=args.guidance)
    except ValueError as exc:
        raise ConfigError(f"bad parameter: {exc}") from None
    device = resolve_device(args.device)

    prior = vqvae = None
    tags = {"brainvq.eval_split": args.split, "brainvq.eval_protocol": protocol.digest()}
    if args.samples_dir:
        from brainvq.data.splits import load_splits

        if not 0 < args.val_fraction < 1:
            raise ConfigError(f"bad parameter: val_fraction must be in (0, 1), got {args.val_fraction}")
        sample_folder(args.samples_dir)  # a mistyped folder is one line before the real data is read
        splits = load_splits(args.data_dir, args.image_size, args.val_fraction, args.seed, 0, classes=args.classes)
        fake = read_sample_folder(args.samples_dir, args.image_size, splits.classes)  # labelled as the real data
        params = {k: v for k, v in vars(args).items() if k != "prior_run_id"}
    else:
        from brainvq.stages.vqvae import vqvae_run_splits
        from brainvq.tracking.runs import PRIOR_STAGE, load_stage_model

        prior, ckpt, prior_run = load_stage_model(args.prior_run_id, PRIOR_STAGE)
        vqvae, _, vq_run = load_stage_model(ckpt["vqvae_run_id"], "train_vqvae")
        prior.to(device), vqvae.to(device)  # generation and reconstruction; the classifiers run on the CPU
        splits = vqvae_run_splits(vq_run.data.params, vqvae.config.classes)
        if prior.config.conditional and splits.classes != prior.config.classes:
            from brainvq.errors import RunError

            raise RunError(f"prior run {prior_run.info.run_id} was trained on classes "
                           f"{','.join(prior.config.classes) or 'none'}, but its VQ-VAE run's data now reads as "
                           f"{','.join(splits.classes) or 'none (flat)'}: the generated and real labels would differ")
        params = {k: v for k, v in vars(args).items()
                  if k not in ("samples_dir", "data_dir", "classes", "val_fraction", "image_size")}
        params["prior_run_id"] = prior_run.info.run_id
        tags.update({"brainvq.prior_run_id": prior_run.info.run_id, "brainvq.vqvae_run_id": vq_run.info.run_id})
    sets = evaluation_sets(splits, args.split)  # a split too small is refused before any run starts

    with stage_run("evaluate_samples", params, tags=tags):
        log_data(splits.root, "evaluation")  # the real slices compared with
        if args.samples_dir:
            log_data(args.samples_dir, "generated")
        if prior is not None:
            t0 = time.monotonic()
            fake = generate_slices(prior, vqvae, protocol)
            log.info("generated %d slices in %.0f s", len(fake.images), time.monotonic() - t0)
        calibration = partial(calibration_for, protocol=protocol, split=args.split)
        # the ceiling decodes real slices' codes as the samples were decoded: same draw, same pixel temperature
        reconstruct = None if vqvae is None else vqvae_reconstructor(vqvae, seed=protocol.seed,
                                                                     pixel_temperature=protocol.pixel_temperature)
        outcome = score_samples(fake, sets, protocol, calibration, reconstruct)
        mlflow.set_tag("brainvq.eval_underpowered", str(bool(outcome.underpowered)).lower())
        if outcome.underpowered:
            log.warning("the realism test is underpowered on these slices (%s): read gen/c2st_accuracy with care",
                        "; ".join(outcome.underpowered))
        mlflow.log_metrics({k: float(v) for k, v in outcome.metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            save_generated_grid(fake, Path(tmp) / "generated.png")
            (Path(tmp) / "protocol.json").write_text(json.dumps(protocol.to_dict(), indent=2))
            mlflow.log_artifacts(tmp)
        print(" ".join(f"{k}={outcome.metrics[k]:.4f}" for k in SHOWN if k in outcome.metrics))


if __name__ == "__main__":
    sys.exit(run_main(main, prog="evaluate_samples"))

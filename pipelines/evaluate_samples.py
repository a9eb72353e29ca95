"""Measure generated slices against real held-out ones: the realism test (C2ST) with its interval and measured
power, the reconstruction ceiling, Frechet distance and precision / recall with their real floors, TSTR vs TRTR,
label agreement and diversity (README, "How quality is measured").

Generated slices come from a prior run (``--prior_run_id``), or from any folder of PNGs (``--samples_dir``,
``FOLDER/{AD,NC}/*.png`` or ``FOLDER/*.png``) compared with an ADNI-layout ``--data_dir``: another generator is
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

from brainvq.cliutil import add_param, image_size, intlike, run_main, setup_logging


SHOWN = ("gen/c2st_accuracy", "gen/c2st_accuracy_ci95", "gen/c2st_recon_ceiling", "gen/c2st_power_blur05", "gen/fd",
         "real/fd", "gen/precision", "gen/recall", "gen/tstr_accuracy", "real/trtr_accuracy", "val/c2st_accuracy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq evaluate-samples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "prior_run_id", default="latest", help="train_pixelcnn run ID, or latest (ignored with samples_dir)")
    add_param(p, "samples_dir", default="", help="folder of generated PNGs to score instead of a prior run")
    add_param(p, "data_dir", default="",
              help="ADNI-layout root the samples_dir slices are compared with; empty = the demo set")
    add_param(p, "val_fraction", type=float, default=0.2, help="with samples_dir: share of training subjects in val")
    add_param(p, "image_size", type=image_size, default=(240, 256), help="with samples_dir: HxW slices are fitted to")
    add_param(p, "split", default="test", choices=["test", "val"],
              help="held-out split compared with: test reports, val chooses")
    add_param(p, "n_samples", type=intlike, default=256,
              help="slices generated (half AD, half NC when conditional) and real held-out slices compared")
    add_param(p, "temperature", type=float, default=1.0, help="sampling temperature")
    add_param(p, "top_k", type=intlike, default=0, help="top-k sampling; 0 = all codes")
    add_param(p, "seed", type=intlike, default=0, help="seed of sampling and of every classifier")
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

    from brainvq.errors import ConfigError
    from brainvq.eval_stage import (
        evaluation_sets,
        generate_slices,
        read_sample_folder,
        save_generated_grid,
        score_samples,
        vqvae_reconstructor,
    )
    from brainvq.mlflow_stage import calibration_for, stage_run
    from brainvq.quality.evaluate import EvalProtocol

    log = logging.getLogger("brainvq.evaluate_samples")
    try:
        protocol = EvalProtocol(n_samples=args.n_samples, seed=args.seed, temperature=args.temperature,
                                top_k=args.top_k)
    except ValueError as exc:
        raise ConfigError(f"bad parameter: {exc}") from None

    prior = vqvae = None
    tags = {"brainvq.eval_split": args.split, "brainvq.eval_protocol": protocol.digest()}
    if args.samples_dir:
        from brainvq.vqvae_stage import load_splits

        if not 0 < args.val_fraction < 1:
            raise ConfigError(f"bad parameter: val_fraction must be in (0, 1), got {args.val_fraction}")
        fake = read_sample_folder(args.samples_dir, args.image_size)
        splits = load_splits(args.data_dir, args.image_size, args.val_fraction, args.seed, 0)
        params = {k: v for k, v in vars(args).items() if k != "prior_run_id"}
    else:
        from brainvq.prior_stage import vqvae_run_splits
        from brainvq.runs import load_stage_model

        prior, ckpt, prior_run = load_stage_model(args.prior_run_id, "train_pixelcnn")
        vqvae, _, vq_run = load_stage_model(ckpt["vqvae_run_id"], "train_vqvae")
        splits = vqvae_run_splits(vq_run.data.params)
        params = {k: v for k, v in vars(args).items()
                  if k not in ("samples_dir", "data_dir", "val_fraction", "image_size")}
        params["prior_run_id"] = prior_run.info.run_id
        tags.update({"brainvq.prior_run_id": prior_run.info.run_id, "brainvq.vqvae_run_id": vq_run.info.run_id})
    sets = evaluation_sets(splits, args.split)  # a split too small is refused before any run starts

    with stage_run("evaluate_samples", params, tags=tags):
        if prior is not None:
            t0 = time.monotonic()
            fake = generate_slices(prior, vqvae, protocol)
            log.info("generated %d slices in %.0f s", len(fake.images), time.monotonic() - t0)
        calibration = partial(calibration_for, protocol=protocol, split=args.split)
        outcome = score_samples(fake, sets, protocol, calibration,
                                vqvae_reconstructor(vqvae) if vqvae is not None else None)
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

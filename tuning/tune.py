"""Optuna sweep over the VQ-VAE (or the prior for a fixed VQ-VAE run), one nested MLflow run per trial.

Examples:
    mlflow run . -e tune --env-manager local -P n_trials=30 -P epochs_per_trial=8
    brainvq tune --stage vqvae --objective pareto --n_trials 40 --space my_space.yaml
    brainvq tune --storage postgresql://user@db/optuna --study_name sweep1   # start N times: N workers
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cliutil import add_param, image_size, intlike, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "stage", default="vqvae", choices=["vqvae", "prior"], help="what to tune")
    add_param(p, "objective", default="ssim", choices=["ssim", "pareto"], help="vqvae: max val/ssim, or pareto = also min code bits/image")
    add_param(p, "n_trials", type=intlike, default=20, help="finished trials wanted in the study, all workers and runs together")
    add_param(p, "timeout_minutes", type=float, default=0.0, help="this worker starts no trial after this; 0 = none")
    add_param(p, "epochs_per_trial", type=intlike, default=8, help="training epochs per trial")
    add_param(p, "max_minutes_per_trial", type=float, default=0.0, help="wall-clock budget per trial; 0 = none")
    add_param(p, "study_name", default="brainvq-vqvae", help="Optuna study; an existing one is resumed")
    add_param(p, "storage", default="sqlite:///optuna.db", help="Optuna storage; PostgreSQL for parallel workers")
    add_param(p, "data_dir", default="", help="ADNI-layout root; empty = the demo set")
    add_param(p, "vqvae_run_id", default="latest", help="stage=prior: the train_vqvae run whose codes are modelled")
    add_param(p, "seed", type=intlike, default=0, help="seed for training and the sampler")
    add_param(p, "pruner", default="median", choices=["median", "hyperband", "none"], help="early stopping of weak trials")
    add_param(p, "space", default="", help="YAML/JSON file overriding the search space")
    add_param(p, "max_train_images", type=intlike, default=0, help="cap on training slices; 0 = all")
    add_param(p, "image_size", type=image_size, default=(240, 256), help="HxW slices are padded/cropped to")
    add_param(p, "val_fraction", type=float, default=0.2, help="share of training subjects held out for validation")
    add_param(p, "heartbeat_interval", type=intlike, default=30, help="seconds between trial heartbeats; 0 = off")
    add_param(p, "grace_period", type=intlike, default=0, help="seconds without heartbeat before a trial is failed; 0 = 2x interval")
    add_param(p, "max_retry", type=intlike, default=2, help="retries of a trial whose worker died")
    add_param(p, "device", default="auto", help="auto, cpu, cuda or mps")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import tempfile

    import mlflow

    from brainvq.errors import ConfigError
    from brainvq.mlflow_stage import stage_run
    from brainvq.tuning import plots, search

    if args.n_trials < 1 or args.epochs_per_trial < 1:
        raise ConfigError("bad parameter: n_trials and epochs_per_trial must be >= 1")
    if args.stage == "prior" and args.objective == "pareto":
        raise ConfigError("bad parameter: objective=pareto applies to stage=vqvae only")
    space = search.load_space(args.stage, args.space)  # ConfigError before any run or study exists
    storage = search.make_storage(args.storage, args.heartbeat_interval, args.grace_period, args.max_retry)
    params = {**vars(args), "storage": search.safe_url(args.storage)}
    tags = {"optuna.study_name": args.study_name, "optuna.storage": params["storage"]}
    if args.objective == "pareto":
        tags["brainvq.pruning_note"] = "objective=pareto: Optuna cannot prune multi-objective studies; pruner ignored"
    with stage_run("tune", params, tags=tags, run_name=f"tune-{args.study_name}") as run:
        data, vq_cfg = search.load_data(args, space)  # once per worker, shared by all its trials
        objective = search.Objective(args.stage, args.objective, space, args.study_name, epochs=args.epochs_per_trial,
                                     max_minutes=args.max_minutes_per_trial, seed=args.seed, data=data,
                                     vqvae_config=vq_cfg, device=args.device, image_size=args.image_size,
                                     prune=args.pruner != "none")
        study = search.open_study(storage, args, objective.directions)
        ran = search.optimize(study, objective, args.n_trials, args.timeout_minutes * 60,
                              search.TrialSlot(storage, args.study_name))
        metric = search.OBJECTIVE_METRIC[args.stage]
        with tempfile.TemporaryDirectory() as tmp:
            out = plots.log_summary(study, args.objective, metric, tmp)
        note = plots.pruning_note(study, args.objective, args.pruner)
        if note and args.objective != "pareto":  # pareto's note was set up front
            mlflow.set_tag("brainvq.pruning_note", note)
        print(f"run {run.info.run_id}: study {args.study_name}: this worker ran {ran} trial(s); "
              f"best trial {out.get('best_trial_number', 'none')} (run {out.get('best_trial_run_id', '-')})")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="tune"))

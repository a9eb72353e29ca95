"""Optuna sweep over the VQ-VAE (or the prior for a fixed VQ-VAE run), one nested MLflow run per trial.

Examples:
    mlflow run . -e tune --env-manager local -P n_trials=30 -P epochs_per_trial=8
    brainvq tune --stage vqvae --objective pareto --n_trials 40 --space my_space.yaml
    brainvq tune --storage postgresql://user@db/optuna --study_name sweep1   # start N times: N workers
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("tune", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import tempfile

    import mlflow

    from brainvq.errors import ConfigError
    from brainvq.tracking.stage import stage_run
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

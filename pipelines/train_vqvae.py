"""Train the brainvq VQ-VAE as a tracked MLflow run.

Examples:
    mlflow run . -e train_vqvae --env-manager local                      # demo set
    mlflow run . -e train_vqvae --env-manager local -P data_dir=/data/ADNI -P max_minutes=8
    brainvq train-vqvae --data_dir /data/ADNI --classes CN,AD      # only these class folders: CN 0, AD 1
    brainvq train-vqvae --data_dir /data/ADNI --epochs 40 --resume true
    torchrun --standalone --nproc_per_node 2 -m brainvq.pipelines.train_vqvae --data_dir /data/ADNI   # DDP
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("train-vqvae", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.cli.configs import apply_study_best, vqvae_configs_from_args
    from brainvq.data.splits import resolve_data_dir
    from brainvq.engine import distributed
    from brainvq.engine.common import checkpoint_dir_for
    from brainvq.engine.tracker import NullTracker
    from brainvq.stages.vqvae import run_train_vqvae
    from brainvq.tracking.datasets import log_data
    from brainvq.tracking.models import log_vqvae_model
    from brainvq.tracking.stage import claim_checkpoint, link_resumed_run, stage_run
    from brainvq.tracking.tracker import MlflowTracker

    if args.from_study:
        apply_study_best(args, args.from_study, args.storage)
    model_cfg, train_cfg = vqvae_configs_from_args(args)  # ConfigError on bad values, before any run starts
    params = {k: v for k, v in vars(args).items() if k not in {"storage"} or args.from_study}
    params["image_size"] = "x".join(map(str, model_cfg.image_size))
    ckpt_dir = checkpoint_dir_for("vqvae", params)

    def train(tracker, extra=None):
        return run_train_vqvae(
            model_cfg, train_cfg, data_dir=args.data_dir, val_fraction=args.val_fraction,
            max_train_images=args.max_train_images, skip_bad=args.skip_bad, resume=args.resume,
            checkpoint_dir=ckpt_dir, extra_checkpoint=extra, tracker=tracker, classes=args.classes,
        )

    distributed.init_from_env(args.device)  # no-op unless launched by torchrun with several processes
    try:
        # Before the run starts: never overwrite a killed training's checkpoint, never "resume" a finished one.
        distributed.on_main(lambda: claim_checkpoint(ckpt_dir / "last.pt", "vqvae", args.resume), share=False)
        if not distributed.is_main():
            # Other torchrun ranks train in lock-step with rank 0 but never touch MLflow: one run per job.
            train(NullTracker())
            return
        with stage_run("train_vqvae", params, tags=distributed.run_tags()) as run:
            log_data(resolve_data_dir(args.data_dir), "training")  # the folder's file-list digest, as an input
            if args.resume:
                link_resumed_run(ckpt_dir / "last.pt", "vqvae")
            # The run ID goes into every checkpoint, so a resumed run can name the run it continues.
            result, files = train(MlflowTracker(run.info.run_id), {"mlflow_run_id": run.info.run_id})
            log_vqvae_model(result, files, stopped_early=result.stopped_early)
            print(f"run {run.info.run_id}: test/ssim={result.test_metrics.get('test/ssim', float('nan')):.4f}")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(run_main(main, prog="train_vqvae"))

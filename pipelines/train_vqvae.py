"""Train the brainvq VQ-VAE as a tracked MLflow run.

Examples:
    mlflow run . -e train_vqvae --env-manager local                      # demo set
    mlflow run . -e train_vqvae --env-manager local -P data_dir=/data/ADNI -P max_minutes=8
    brainvq train-vqvae --data_dir /data/ADNI --epochs 40 --resume true
    torchrun --standalone --nproc_per_node 2 -m brainvq.pipelines.train_vqvae --data_dir /data/ADNI   # DDP
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cliutil import add_param, intlike, image_size, run_main, setup_logging, str2bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq train-vqvae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "data_dir", default="", help="ADNI-layout root with train/ and test/; empty = the bundled demo set")
    add_param(p, "epochs", type=intlike, default=30, help="training epochs")
    add_param(p, "batch_size", type=intlike, default=8, help="images per optimiser step")
    add_param(p, "lr", type=float, default=3e-3, help="peak Adam learning rate (cosine schedule)")
    add_param(p, "latent_dim", type=intlike, default=32, help="size of each code vector")
    add_param(p, "num_embeddings", type=intlike, default=64, help="codebook size K")
    add_param(p, "downsample", type=intlike, default=4, choices=[2, 4, 8], help="image-to-code-grid factor")
    add_param(p, "hidden_channels", type=intlike, default=48, help="encoder/decoder width")
    add_param(p, "num_res_layers", type=intlike, default=2, help="residual layers in each of encoder and decoder")
    add_param(p, "beta", type=float, default=0.25, help="commitment loss weight")
    add_param(p, "ema", type=str2bool, default=True, help="EMA codebook updates with dead-code restart")
    add_param(p, "ssim_weight", type=float, default=0.5, help="weight of the (1-SSIM) loss term beside MSE")
    add_param(p, "val_fraction", type=float, default=0.2, help="share of training subjects held out for validation")
    add_param(p, "seed", type=intlike, default=0, help="random seed (runs are deterministic on CPU)")
    add_param(p, "max_minutes", type=float, default=8.0, help="wall-clock training budget in minutes; 0 = none. Stops cleanly, then tests")
    add_param(p, "max_train_images", type=intlike, default=0, help="cap on training slices; 0 = all")
    add_param(p, "image_size", type=image_size, default=(240, 256), help="HxW every slice is padded/cropped to")
    add_param(p, "skip_bad", type=str2bool, default=False, help="skip unreadable PNGs instead of failing")
    add_param(p, "resume", type=str2bool, default=False, help="continue from this configuration's last checkpoint")
    add_param(p, "device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")
    add_param(p, "from_study", default="", help="Optuna study name: retrain its best trial's configuration")
    add_param(p, "storage", default="sqlite:///optuna.db", help="Optuna storage holding --from_study")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.config_args import apply_study_best, vqvae_configs_from_args
    from brainvq.engine import distributed
    from brainvq.engine.mlflow_tracker import MlflowTracker
    from brainvq.engine.tracking import NullTracker
    from brainvq.mlflow_stage import link_resumed_run, log_vqvae_model, stage_run
    from brainvq.vqvae_stage import checkpoint_dir_for, run_train_vqvae

    if args.from_study:
        apply_study_best(args, args.from_study, args.storage)
    model_cfg, train_cfg = vqvae_configs_from_args(args)  # ConfigError on bad values, before any run starts
    params = {k: v for k, v in vars(args).items() if k not in {"storage"} or args.from_study}
    params["image_size"] = "x".join(map(str, model_cfg.image_size))
    ckpt_dir = checkpoint_dir_for(params)

    def train(tracker, extra=None):
        return run_train_vqvae(
            model_cfg, train_cfg, data_dir=args.data_dir, val_fraction=args.val_fraction,
            max_train_images=args.max_train_images, skip_bad=args.skip_bad, resume=args.resume,
            checkpoint_dir=ckpt_dir, extra_checkpoint=extra, tracker=tracker,
        )

    distributed.init_from_env(args.device)  # no-op unless launched by torchrun with several processes
    try:
        if not distributed.is_main():
            # Other torchrun ranks train in lock-step with rank 0 but never touch MLflow: one run per job.
            train(NullTracker())
            return
        with stage_run("train_vqvae", params, tags=distributed.run_tags()) as run:
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

"""Train the gated PixelCNN prior over the codes of a finished VQ-VAE run (encodes them first if needed).

Examples:
    mlflow run . -e train_pixelcnn --env-manager local -P vqvae_run_id=latest
    brainvq train-pixelcnn --vqvae_run_id 3f2c... --epochs 30 --conditional true
    torchrun --standalone --nproc_per_node 2 -m brainvq.pipelines.train_pixelcnn --vqvae_run_id 3f2c...   # DDP
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cliutil import add_param, intlike, run_main, setup_logging, str2bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq train-pixelcnn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "vqvae_run_id", default="latest", help="train_vqvae run ID, or latest")
    add_param(p, "epochs", type=intlike, default=40, help="training epochs")
    add_param(p, "batch_size", type=intlike, default=4, help="code grids per step")
    add_param(p, "lr", type=float, default=1e-2, help="peak Adam learning rate (cosine schedule)")
    add_param(p, "num_layers", type=intlike, default=12, help="gated layers")
    add_param(p, "hidden_channels", type=intlike, default=32, help="channels of each stack")
    add_param(p, "dilation_cycle", default="1,2,4,8,16",
              help="dilation of layers 1, 2, 3, ... repeating (layer 0 is never dilated); 1 = plain gated PixelCNN")
    add_param(p, "conditional", type=str2bool, default=True, help="condition on AD/NC (with a null label)")
    add_param(p, "seed", type=intlike, default=0, help="random seed")
    add_param(p, "max_minutes", type=float, default=7.0, help="wall-clock budget; 0 = none")
    add_param(p, "resume", type=str2bool, default=False, help="continue from this configuration's last checkpoint")
    add_param(p, "device", default="auto", help="auto, cpu, cuda or mps")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.config_args import prior_configs_from_args
    from brainvq.engine import distributed
    from brainvq.engine.pixelcnn_trainer import fit_pixelcnn
    from brainvq.errors import RunError
    from brainvq.mlflow_stage import link_resumed_run, log_prior_run, logged_codes, prior_codes, stage_run
    from brainvq.runs import load_stage_model
    from brainvq.vqvae_stage import checkpoint_dir_for

    distributed.init_from_env(args.device)  # no-op unless launched by torchrun with several processes
    try:
        loaded = {}

        def resolve_vqvae() -> str:
            loaded["vqvae"], _, vq_run = load_stage_model(args.vqvae_run_id, "train_vqvae")
            return vq_run.info.run_id

        # Rank 0 resolves the run (e.g. "latest") once for every rank; its errors stop every rank with the same line.
        vq_id = distributed.on_main(resolve_vqvae)
        vqvae = loaded["vqvae"] if distributed.is_main() else load_stage_model(vq_id, "train_vqvae")[0]
        model_cfg, train_cfg = prior_configs_from_args(args, vqvae.config)
        params = {**vars(args), "vqvae_run_id": vq_id}
        ckpt_dir = checkpoint_dir_for(params, ".brainvq/checkpoints/prior")
        if not distributed.is_main():
            # Other torchrun ranks train in lock-step with rank 0 on the codes it logged, but never touch MLflow.
            distributed.on_main(lambda: None, share=False)  # waits for rank 0's codes (or fails with its error)
            splits = logged_codes(vq_id, vqvae.config.num_embeddings)
            if splits is None:
                raise RunError(f"rank {distributed.rank()}: no encode_codes run found for VQ-VAE run {vq_id}")
            fit_pixelcnn(model_cfg, train_cfg, splits["train"], splits["val"], splits["test"],
                         checkpoint_dir=ckpt_dir, resume=args.resume)
            return
        with stage_run("train_pixelcnn", params, tags={"brainvq.vqvae_run_id": vq_id, **distributed.run_tags()}) as run:
            # Encodes the codes (a nested run) if the VQ-VAE run has none yet; the other ranks download them after.
            splits = distributed.on_main(lambda: prior_codes(vq_id, vqvae.config.num_embeddings), share=False)
            from brainvq.engine.mlflow_tracker import MlflowTracker

            if args.resume:
                link_resumed_run(ckpt_dir / "last.pt", "pixelcnn")
            # The run ID goes into every checkpoint, so a resumed run can name the run it continues.
            result = fit_pixelcnn(model_cfg, train_cfg, splits["train"], splits["val"], splits["test"],
                                  checkpoint_dir=ckpt_dir, resume=args.resume,
                                  extra_checkpoint={"vqvae_run_id": vq_id, "mlflow_run_id": run.info.run_id},
                                  tracker=MlflowTracker(run.info.run_id))
            log_prior_run(result, vqvae, train_cfg, vq_id, seed=args.seed)
            m = result.test_metrics
            print(f"run {run.info.run_id}: prior/test_nll_bits={m.get('prior/test_nll_bits', float('nan')):.4f} "
                  f"(unigram {m.get('prior/unigram_bits', float('nan')):.4f}, uniform {m.get('prior/uniform_bits', float('nan')):.4f})")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(run_main(main, prog="train_pixelcnn"))

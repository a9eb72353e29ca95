"""Train the prior (a gated PixelCNN) over the codes of a finished VQ-VAE run (encodes them first if needed).

Examples:
    mlflow run . -e train_prior --env-manager local -P vqvae_run_id=latest
    brainvq train-prior --vqvae_run_id 3f2c... --epochs 30 --conditional true
    torchrun --standalone --nproc_per_node 2 -m brainvq.pipelines.train_prior --vqvae_run_id 3f2c...   # DDP
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cli.args import run_main, setup_logging
from brainvq.cli.params import build_parser as build_entry_parser


def build_parser() -> argparse.ArgumentParser:
    p = build_entry_parser("train-prior", __doc__)  # the parameters: brainvq.cli.params
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    from brainvq.cli.configs import prior_configs_from_args, prior_train_config_from_args
    from brainvq.engine import distributed
    from brainvq.engine.common import checkpoint_dir_for
    from brainvq.engine.prior import fit_prior
    from brainvq.errors import RunError
    from brainvq.models.checkpoint import PRIOR_KIND
    from brainvq.tracking.codes import logged_codes, prior_codes
    from brainvq.tracking.models import log_prior_run
    from brainvq.tracking.runs import PRIOR_STAGE, load_stage_model
    from brainvq.tracking.stage import claim_checkpoint, link_resumed_run, stage_run

    prior_train_config_from_args(args)  # a bad lr or seed is one line before any run is looked up
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
        ckpt_dir = checkpoint_dir_for(PRIOR_KIND, params)
        # Before the run starts: never overwrite a killed training's checkpoint, never "resume" a finished one.
        distributed.on_main(lambda: claim_checkpoint(ckpt_dir / "last.pt", PRIOR_KIND, args.resume), share=False)
        if not distributed.is_main():
            # Other torchrun ranks train in lock-step with rank 0 on the codes it logged, but never touch MLflow.
            distributed.on_main(lambda: None, share=False)  # waits for rank 0's codes (or fails with its error)
            splits = logged_codes(vq_id, vqvae.config.num_embeddings)
            if splits is None:
                raise RunError(f"rank {distributed.rank()}: no encode_codes run found for VQ-VAE run {vq_id}")
            fit_prior(model_cfg, train_cfg, splits["train"], splits["val"], splits["test"],
                      checkpoint_dir=ckpt_dir, resume=args.resume)
            return
        with stage_run(PRIOR_STAGE, params, tags={"brainvq.vqvae_run_id": vq_id, **distributed.run_tags()}) as run:
            # Encodes the codes (a nested run) if the VQ-VAE run has none yet; the other ranks download them after.
            splits = distributed.on_main(lambda: prior_codes(vq_id, vqvae.config.num_embeddings), share=False)
            from brainvq.tracking.tracker import MlflowTracker

            if args.resume:
                link_resumed_run(ckpt_dir / "last.pt", PRIOR_KIND)
            # The run ID goes into every checkpoint, so a resumed run can name the run it continues.
            result = fit_prior(model_cfg, train_cfg, splits["train"], splits["val"], splits["test"],
                               checkpoint_dir=ckpt_dir, resume=args.resume,
                               extra_checkpoint={"vqvae_run_id": vq_id, "mlflow_run_id": run.info.run_id},
                               tracker=MlflowTracker(run.info.run_id), vqvae=vqvae)
            log_prior_run(result, vqvae, train_cfg, vq_id, seed=args.seed)
            m = {k: result.test_metrics.get(f"prior/{k}", float("nan"))
                 for k in ("test_nll_bits", "unigram_bits", "uniform_bits")}
            print(f"run {run.info.run_id}: prior/test_nll_bits={m['test_nll_bits']:.4f} "
                  f"(unigram {m['unigram_bits']:.4f}, uniform {m['uniform_bits']:.4f})")
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(run_main(main, prog="train_prior"))

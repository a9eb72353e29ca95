"""The whole chain on one command: make_demo_data → train_vqvae → train_pixelcnn → export_onnx → sample →
evaluate_samples, as one parent MLflow run with a child run per step. Steps whose identical parameters already have
a FINISHED run are reused unless --force true.

Examples:
    mlflow run . --env-manager local                        # demo set, about 20 minutes on 2 CPU cores
    mlflow run . --env-manager local -P data_dir=/data/ADNI -P vqvae_max_minutes=30
"""

from __future__ import annotations

import argparse
import sys

from brainvq.cliutil import add_param, intlike, run_main, setup_logging, str2bool


# The figures the parent run carries: validation ones chose (registry, defaults), test ones report.
SUMMARY = (
    "val/ssim", "test/ssim", "test/ssim_brain", "test/psnr", "test/psnr_brain",
    "prior/val_nll_bits", "prior/test_nll_bits", "prior/test_nll_bits_uncond", "prior/position_unigram_bits",
    "prior/unigram_bits",
    "val/c2st_accuracy", "val/c2st_accuracy_ci95", "gen/c2st_accuracy", "gen/c2st_accuracy_ci95",
    "gen/c2st_recon_ceiling", "gen/c2st_null", "gen/c2st_power_blur10", "gen/c2st_power_blur05",
    "gen/c2st_power_noise", "gen/fd", "real/fd", "gen/precision", "real/precision", "gen/recall", "real/recall",
    "gen/tstr_accuracy", "real/trtr_accuracy", "gen/label_agreement", "real/label_classifier_accuracy",
    "gen/msssim_diversity", "real/msssim_diversity",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainvq pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "data_dir", default="", help="ADNI-layout root; empty = generate and use the demo set")
    add_param(p, "force", type=str2bool, default=False, help="rerun steps even when a matching FINISHED run exists")
    add_param(p, "image_size", default="240x256", help="HxW slices are padded/cropped to")
    add_param(p, "vqvae_epochs", type=intlike, default=30, help="epochs of train_vqvae (the time budget usually ends first)")
    add_param(p, "prior_epochs", type=intlike, default=40, help="epochs of train_pixelcnn")
    add_param(p, "vqvae_max_minutes", type=float, default=7.0, help="time budget of train_vqvae")
    add_param(p, "prior_max_minutes", type=float, default=6.5, help="time budget of train_pixelcnn")
    add_param(p, "n_samples", type=intlike, default=256,
              help="slices generated for evaluation, compared with as many real held-out slices")
    add_param(p, "seed", type=intlike, default=0, help="seed for every step")
    add_param(p, "register", type=str2bool, default=True,
              help="register the runs as brainvq-vqvae/-prior/-sampler versions; move `champion` only when better")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    import os

    from brainvq.mlflow_stage import stage_run
    from brainvq.workflow import PROJECT_DIR, run_step

    steps = [s for s in ("export_onnx", "sample") if (PROJECT_DIR / "export" / f"{s if s != 'sample' else 'sample_onnx'}.py").exists()]
    with stage_run("main", vars(args)) as parent:
        pid, force = parent.info.run_id, args.force
        data_dir = args.data_dir
        if not data_dir:
            demo = run_step("make_demo_data", {"seed": args.seed}, pid, force)
            data_dir = demo.data.tags["brainvq.data_dir"]
        vq = run_step("train_vqvae", {"data_dir": data_dir, "image_size": args.image_size, "epochs": args.vqvae_epochs,
                                      "max_minutes": args.vqvae_max_minutes, "seed": args.seed}, pid, force)
        prior = run_step("train_pixelcnn", {"vqvae_run_id": vq.info.run_id, "epochs": args.prior_epochs,
                                            "max_minutes": args.prior_max_minutes, "seed": args.seed}, pid, force)
        if "export_onnx" in steps:
            exp = run_step("export_onnx", {"vqvae_run_id": vq.info.run_id, "pixelcnn_run_id": prior.info.run_id}, pid, force)
            if "sample" in steps:
                run_step("sample", {"model_dir": f"runs:/{exp.info.run_id}/onnx", "n": 16, "seed": args.seed,
                                    "out": os.path.abspath("outputs/samples")}, pid, True)
        ev = run_step("evaluate_samples", {"prior_run_id": prior.info.run_id, "n_samples": args.n_samples,
                                           "seed": args.seed, "split": "test"}, pid, force)
        import mlflow

        summary = {**vq.data.metrics, **prior.data.metrics, **ev.data.metrics}
        mlflow.log_metrics({k: summary[k] for k in SUMMARY if k in summary})
        print(" ".join(f"{k}={summary[k]:.4f}" for k in SUMMARY if k in summary))
        if args.register:  # last, once every step is FINISHED (see brainvq.registry)
            from brainvq.registry import register_pipeline

            export_run_id = exp.info.run_id if "export_onnx" in steps else None
            for reg in register_pipeline(vq.info.run_id, prior.info.run_id, export_run_id):
                mlflow.set_tag(f"brainvq.registered.{reg.name}", reg.version)
                print(reg.line())


if __name__ == "__main__":
    sys.exit(run_main(main, prog="main"))

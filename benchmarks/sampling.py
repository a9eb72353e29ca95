"""Sampling benchmark on one exported default-size prior (60x64 codes, K=64): naive vs fast, decoder ORT vs torch,
and whole subjects (20 slices, each conditioned on the one below) with onnxruntime, in a wavefront and slice
after slice.

    python benchmarks/sampling.py                       # random weights, default PixelCNNConfig / VQVAEConfig
    python benchmarks/sampling.py --prior_run_id latest   # a trained prior and the VQ-VAE it was trained on
    python benchmarks/sampling.py --num_layers 8 --hidden_channels 48   # what a smaller prior would cost
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainvq.cli.args import add_param


def models(args):
    if args.prior_run_id:
        from brainvq.tracking.runs import load_stage_model

        prior, ckpt, _ = load_stage_model(args.prior_run_id, "train_prior")
        vqvae, _, _ = load_stage_model(ckpt.get("vqvae_run_id") or "latest", "train_vqvae")
        return vqvae, prior
    from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
    from brainvq.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig())
    from brainvq.cli.configs import int_tuple

    return vq, GatedPixelCNN(PixelCNNConfig(num_layers=args.num_layers, hidden_channels=args.hidden_channels,
                                            code_shape=vq.config.code_shape, slice_context=args.slice_context,
                                            dilation_cycle=int_tuple("dilation_cycle", args.dilation_cycle)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_param(p, "prior_run_id", default="", help="train_prior run (empty: random default-size models)")
    from brainvq.models.pixelcnn import PixelCNNConfig

    default = PixelCNNConfig()  # the shipped default prior unless told otherwise
    add_param(p, "num_layers", type=int, default=default.num_layers, help="prior layers when random")
    add_param(p, "hidden_channels", type=int, default=default.hidden_channels, help="prior channels when random")
    from brainvq.cli.params import entry_point

    add_param(p, "dilation_cycle", default=entry_point("train-prior").param("dilation_cycle").default,
              help="prior dilation cycle when random (train_prior's default)")
    from brainvq.values import str2bool

    add_param(p, "slice_context", type=str2bool,
              default=entry_point("train-prior").param("slice_context").default,
              help="random prior conditioned on the slice below (train_prior's default); subjects need it")
    add_param(p, "slices", type=int, default=20, help="slices per subject for the subject rows")
    add_param(p, "n", type=int, default=16, help="slices to sample")
    add_param(p, "naive_steps", type=int, default=12, help="full prior passes timed for the naive estimate")
    add_param(p, "provider", default="cpu", help="auto, cuda or cpu")
    args = p.parse_args(argv)

    from brainvq.export.onnx_graphs import export_models
    from brainvq.export.ort_sampler import OnnxSampler

    vqvae, prior = models(args)
    vqvae, prior = vqvae.eval(), prior.eval()
    cfg = prior.config
    h, w = cfg.code_shape
    out = Path(tempfile.mkdtemp(prefix="brainvq_bench_"))
    export_models(vqvae, prior, out)
    s = OnnxSampler(out, args.provider)
    print(s.provider_line)
    print(f"prior: {cfg.num_layers} layers x {cfg.hidden_channels} channels, dilation cycle {cfg.dilation_cycle}, "
          f"K={cfg.num_embeddings}, codes {h}x{w}, "
          f"batch {args.n}; torch {torch.__version__} with {torch.get_num_threads()} threads")
    labels = np.full(args.n, cfg.null_label, dtype=np.int64)

    s.sample_codes(args.n, labels, method="naive", max_steps=2)  # warm-up
    t = time.perf_counter()
    s.sample_codes(args.n, labels, method="naive", max_steps=args.naive_steps)
    per_pass = (time.perf_counter() - t) / args.naive_steps
    naive = per_pass * h * w / args.n
    print(f"naive (prior.onnx once per code): {per_pass * 1e3:.1f} ms per full pass of {args.n} grids, timed over "
          f"{args.naive_steps} passes; x {h * w} codes / {args.n} images = {naive:.2f} s per image (extrapolated)")

    t = time.perf_counter()
    s.sample_codes(args.n, labels, method="fast")
    fast_total = time.perf_counter() - t
    fast = fast_total / args.n
    print(f"fast (prior_row.onnx once per row, prior_step.onnx once per code): {fast_total:.2f} s for {args.n} "
          f"images = {fast:.3f} s per image (measured, full grid)")
    print(f"speed-up fast vs naive: {naive / fast:.0f}x")

    codes = np.random.default_rng(0).integers(0, cfg.num_embeddings, (16, h, w))
    s.decode(codes)
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        s.decode(codes)
    ort_ips = reps * len(codes) / (time.perf_counter() - t)
    if s.has_scale:  # the pixel draw from p(x | codes) (numpy), as sample-onnx decodes
        t = time.perf_counter()
        for _ in range(reps):
            s.decode(codes, seed=0)
        print(f"decoder with the pixel draw: onnxruntime {reps * len(codes) / (time.perf_counter() - t):.1f} images/s")
    with torch.no_grad():
        tc = torch.from_numpy(codes)
        vqvae.decode_indices(tc)
        t = time.perf_counter()
        for _ in range(reps):
            vqvae.decode_indices(tc)
        torch_ips = reps * len(codes) / (time.perf_counter() - t)
    print(f"decoder ({vqvae.config.image_size[0]}x{vqvae.config.image_size[1]}, batch 16): onnxruntime "
          f"{ort_ips:.1f} images/s, torch eager {torch_ips:.1f} images/s")

    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "brainvq.export.sample_onnx", "--model_dir", str(out), "--n",
                        str(args.n), "--out", str(out / "samples"), "--provider", args.provider],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        print(f"sample_onnx failed: {r.stderr.strip()}")
    else:
        print(f"sample_onnx end to end ({args.n} slices sampled + decoded + PNGs, new process): {wall:.2f} s wall")

    if s.slice_context:  # whole subjects: every slice at once in a wavefront, against slice after slice
        radius = s.context_radius
        for n_subj in (1, 8):
            subj_labels = np.full(n_subj, cfg.null_label, dtype=np.int64)
            timed = {}
            for schedule, r in (("slice after slice", 0), ("wavefront", radius)):
                s.context_radius = r  # 0: what an export written before the wavefront does
                t = time.perf_counter()
                timed[schedule] = s.sample_subject_codes(n_subj, subj_labels, args.slices, seed=0)
                sample_s = time.perf_counter() - t
                t = time.perf_counter()
                s.decode(timed[schedule].reshape(-1, h, w), seed=0)
                decode_s = time.perf_counter() - t
                print(f"subjects ({args.slices} slices each, batch {n_subj}, {schedule}): sampling "
                      f"{sample_s / n_subj:.2f} s + decoding {decode_s / n_subj:.2f} s = "
                      f"{(sample_s + decode_s) / n_subj:.2f} s per subject")
            same = np.array_equal(timed["slice after slice"], timed["wavefront"])
            print(f"  the two schedules drew the same codes: {same}")
        s.context_radius = radius


if __name__ == "__main__":
    from brainvq.cli.args import run_main

    sys.exit(run_main(main, prog="benchmarks/sampling.py"))

"""The prior over stacks, against the alternatives, on the validation split: one VQ-VAE's codes, the prior trained
at the same budget with and without the slice below (and at other slice-dropout shares), each a real `brainvq
train-prior` run in one MLflow store.

Prints one Markdown row per variant: its train-prior arguments, CPU-minutes, `prior/val_nll_bits` (single slices:
the slice below not given) and `prior/val_nll_bits_stack` (each slice given the one below, as subjects are sampled;
the same figure as the single-slice one for a prior without slice context). Lower is better; both on validation.

    python benchmarks/stack_prior.py --vqvae_run_id <id>                      # 1 epoch per variant
    python benchmarks/stack_prior.py --vqvae_run_id <id> --epochs 4 --variants "false:0;true:0.25;true:0.5"
"""

from __future__ import annotations

import argparse
import os
import sys

from compute_curve import _cli, _latest  # the script's folder is on sys.path: one way to run and time a CLI step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vqvae_run_id", default="latest", help="a FINISHED train_vqvae run")
    p.add_argument("--epochs", type=int, default=1, help="prior epochs per variant (the default pipeline trains 4)")
    p.add_argument("--variants", default="false:0.25;true:0.25",
                   help="semicolon-separated slice_context:slice_dropout pairs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from mlflow.tracking import MlflowClient

    from brainvq.tracking.runs import resolve_run

    vq = resolve_run(args.vqvae_run_id, "train_vqvae").info.run_id
    _cli("encode-codes", "--vqvae_run_id", vq)  # once, so no variant's CPU-minutes include encoding the slices
    client = MlflowClient()
    rows = []
    for variant in args.variants.split(";"):
        context, dropout = variant.split(":")
        cpu = _cli("train-prior", "--vqvae_run_id", vq, "--epochs", str(args.epochs), "--max_minutes", "0",
                   "--seed", str(args.seed), "--slice_context", context, "--slice_dropout", dropout)
        m = client.get_run(_latest("train_prior")).data.metrics
        single = m["prior/val_nll_bits"]
        rows.append((context, dropout, cpu, single, m.get("prior/val_nll_bits_stack", single)))
        print(f"slice_context={context} slice_dropout={dropout}: {cpu / 60:.1f} CPU-min", flush=True)
    print(f"\nVQ-VAE run {vq}; {args.epochs} prior epoch(s) per variant; validation split\n")
    print("| `slice_context` | `slice_dropout` | CPU-min | `prior/val_nll_bits` (single) "
          "| `prior/val_nll_bits_stack` |")
    print("|---|---|---|---|---|")
    for context, dropout, cpu, single, stack in rows:
        print(f"| {context} | {dropout if context == 'true' else '—'} | {cpu / 60:.1f} | {single:.3f} | {stack:.3f} |")


if __name__ == "__main__":
    sys.exit(main())

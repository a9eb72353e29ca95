"""What more compute buys: the prior trained at several budgets on one VQ-VAE's codes, each scored on validation.

Users with a GPU train far longer than the default pipeline; this curve tells them what they get. Every point is a
real `brainvq train-prior` run, then a real `brainvq evaluate-samples --split val` run (256 generated slices against
the validation split, the default protocol), all in one MLflow store. Budgets are counted in epochs (optimiser
steps), so a point does not depend on what else the machine is doing; the CPU-minutes each training took are
measured (user + system time of the command) and printed beside it. On a 2-core machine the default 4 epochs took
about 13 CPU-minutes.

Prints one Markdown row per budget: epochs, CPU-minutes, wall minutes, `prior/val_nll_bits`, and
`val/c2st_accuracy`, `gen/c2st_recon_ceiling`, `gen/fd`, precision, recall and `gen/tstr_accuracy` with their 95%
intervals, then the real floors they are read against.

    python benchmarks/compute_curve.py                                  # demo set, a new default VQ-VAE
    python benchmarks/compute_curve.py --vqvae_run_id <id> --prior_epochs 2,6,18
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def _cli(*args: str) -> float:
    """Run ``brainvq ARGS`` in a child process; returns the CPU-seconds (user + system) it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "brainvq.cli", *args], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _latest(stage: str) -> str:
    from brainvq.tracking.runs import resolve_run

    return resolve_run("latest", stage).info.run_id


def _ci(m: dict, key: str, digits: int = 3) -> str:
    if key not in m:
        return "—"
    half = m.get(f"{key}_ci95")
    return f"{m[key]:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vqvae_run_id", default="", help="a FINISHED train_vqvae run; empty = train one on the demo set")
    p.add_argument("--vqvae_epochs", type=int, default=20, help="its epochs (20: the default pipeline's)")
    p.add_argument("--prior_epochs", default="2,6,18", help="comma-separated prior budgets in epochs (about 7, 20 "
                   "and 60 CPU-minutes on a 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from mlflow.tracking import MlflowClient

    vq = args.vqvae_run_id
    if not vq:
        _cli("train-vqvae", "--epochs", str(args.vqvae_epochs), "--max_minutes", "0", "--seed", str(args.seed))
        vq = _latest("train_vqvae")
    _cli("encode-codes", "--vqvae_run_id", vq)  # once, so no point's CPU-minutes include encoding the slices
    client = MlflowClient()
    rows = []
    for epochs in (int(e) for e in args.prior_epochs.split(",")):
        t0 = time.monotonic()
        cpu = _cli("train-prior", "--vqvae_run_id", vq, "--epochs", str(epochs), "--max_minutes", "0",
                   "--seed", str(args.seed))
        wall = time.monotonic() - t0
        prior = _latest("train_prior")
        _cli("evaluate-samples", "--prior_run_id", prior, "--split", "val", "--seed", str(args.seed))
        ev = client.get_run(_latest("evaluate_samples")).data.metrics
        pm = client.get_run(prior).data.metrics
        rows.append((epochs, pm, ev, cpu, wall))
        print(f"prior {epochs} epochs: {cpu / 60:.1f} CPU-min, {wall / 60:.1f} min", flush=True)

    print(f"\nVQ-VAE run {vq}; every figure on the validation split (prior runs and evaluate_samples runs in "
          f"{client.tracking_uri})\n")
    print("| prior epochs | CPU-min | wall min | `prior/val_nll_bits` | `val/c2st_accuracy` | recon ceiling | `gen/fd` "
          "| precision | recall | `gen/tstr_accuracy` |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for epochs, pm, ev, cpu, wall in rows:
        print(f"| {epochs} | {cpu / 60:.1f} | {wall / 60:.1f} | {pm.get('prior/val_nll_bits', float('nan')):.3f} "
              f"| {_ci(ev, 'val/c2st_accuracy')} | {_ci(ev, 'gen/c2st_recon_ceiling')} | {_ci(ev, 'gen/fd', 1)} "
              f"| {_ci(ev, 'gen/precision', 2)} | {_ci(ev, 'gen/recall', 2)} | {_ci(ev, 'gen/tstr_accuracy', 2)} |")
    ev = rows[-1][2]
    print(f"\nreal floors: `real/fd` {_ci(ev, 'real/fd', 2)}, precision {_ci(ev, 'real/precision', 2)}, recall "
          f"{_ci(ev, 'real/recall', 2)}, `real/trtr_accuracy` {_ci(ev, 'real/trtr_accuracy', 2)}; power: blur σ 0.5 "
          f"{_ci(ev, 'gen/c2st_power_blur05')}, null {_ci(ev, 'gen/c2st_null')}")


if __name__ == "__main__":
    main()

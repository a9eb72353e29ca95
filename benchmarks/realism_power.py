"""Power of the realism test (C2ST) against training length, on real held-out slices of the demo set (or any set).

For each number of optimiser steps, the production protocol (:class:`brainvq.quality.c2st.C2STProtocol`, only the
steps changed) is run on half of the held-out slices against the other half degraded: Gaussian blur (sigma in px) or
added noise, at the sizes the evaluation checks and at smaller, harder ones. Accuracy rises with the steps until
the classifier has converged; the default is chosen where it stops rising. Prints one row per (degradation, steps)
with the 95% interval and the seconds one test took.

    python benchmarks/realism_power.py                         # demo set, validation split
    python benchmarks/realism_power.py --data_dir /data/ADNI --steps 100,200,400 --split val
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="", help="ADNI-layout root; empty = the demo set")
    p.add_argument("--split", default="val", choices=["val", "test"],
                   help="held-out split the checks run on (val: this benchmark chooses a default)")
    p.add_argument("--steps", default="50,100,200,400", help="comma-separated optimiser steps per classifier")
    p.add_argument("--degradations", default="blur:1.0,blur:0.5,blur:0.3,noise:0.02,noise:0.005",
                   help="kind:amount pairs (blur sigma in px, noise sigma in [0,1] units)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from brainvq.data.splits import load_splits
    from brainvq.engine.common import configure_threads
    from brainvq.quality.c2st import C2STProtocol, as_tensor, degrade, halves, two_sample_test
    from brainvq.quality.classify import front_maps
    from brainvq.quality.evaluate import EvalProtocol, select_real
    from brainvq.stages.evaluate import evaluation_sets

    configure_threads(0)
    splits = load_splits(args.data_dir, (240, 256), 0.2, 0, 0)
    held_out, _ = evaluation_sets(splits, args.split)
    real = select_real(held_out, EvalProtocol(seed=args.seed)).images
    a, b = halves(len(real), args.seed)
    base = C2STProtocol(seed=args.seed)
    cell = base.fit.critic.cell
    maps_a = front_maps(as_tensor(real[a]), cell)
    print(f"{len(a)} real vs {len(b)} degraded slices per test, {base.folds}-fold cross-fitted "
          f"({args.split} split, torch threads {torch.get_num_threads()})")
    print(f"{'degradation':<14} {'steps':>6} {'accuracy':>9}  {'95% interval':<15} {'seconds':>8}")
    for spec in args.degradations.split(","):
        kind, amount = spec.split(":")
        maps_b = front_maps(as_tensor(degrade(real[b], kind, float(amount), seed=args.seed)), cell)
        for steps in (int(s) for s in args.steps.split(",")):
            protocol = dataclasses.replace(base, fit=dataclasses.replace(base.fit, steps=steps))
            t0 = time.monotonic()
            res = two_sample_test(maps_a, maps_b, protocol, salt=3)
            print(f"{kind + ' ' + amount:<14} {steps:>6} {res.accuracy:>9.3f}  "
                  f"[{res.ci_low:.3f}, {res.ci_high:.3f}]  {time.monotonic() - t0:>8.1f}", flush=True)


if __name__ == "__main__":
    main()

"""How noisy is the pair test? Its null (real adjacent pairs against other real subjects' pairs) under many draws.

The pair test (:func:`brainvq.quality.subjects.grouped_two_sample_test`) prints a cluster-robust interval over
subjects. This benchmark checks that interval against the spread it should describe: for each protocol seed, two
disjoint class-balanced groups of real training subjects are drawn (as :func:`pair_power_checks` draws them for
``vol/pair_c2st_null``) and tested against each other. Over the draws, a calibrated interval has

* a mean near 0.5,
* a standard deviation of the accuracies close to the mean standard error the intervals print (half-width / 1.96),
* about 95% of the intervals holding 0.5.

``--repeats R`` runs each draw's test R times under other deals of subjects to folds and other critic seeds
(``salt``): if the repeats of one draw agree while the draws disagree, the spread comes from which subjects were
drawn, and averaging repeated cross-fits would not narrow it. Prints one row per draw and a summary per size.

    python benchmarks/pair_null.py                                     # demo set, 10 and 14 subjects a side
    python benchmarks/pair_null.py --sizes 14 --seeds 0-15 --repeats 3
    python benchmarks/pair_null.py --data_dir /data/ADNI --sizes 20
"""

from __future__ import annotations

import argparse
import math
import time


def _seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="", help="ADNI-layout root; empty = the demo set")
    p.add_argument("--sizes", default="10,14",
                   help="subjects a side (the demo's validation split has 10 subjects, its test split 14)")
    p.add_argument("--seeds", default="0-7", help="protocol seeds, one group draw each: 0-7 or 0,3,5")
    p.add_argument("--repeats", type=int, default=1, help="cross-fits per draw under other deals and critic seeds")
    args = p.parse_args(argv)

    import numpy as np

    from brainvq.data.splits import load_splits
    from brainvq.engine.common import configure_threads
    from brainvq.quality.c2st import C2STProtocol, as_tensor
    from brainvq.quality.classify import front_maps
    from brainvq.quality.subjects import (
        adjacent_pairs,
        balanced_groups,
        grouped_two_sample_test,
        pair_maps,
        subject_labels,
        subject_stacks,
    )
    from brainvq.stages.evaluate import slices_of
    from brainvq.stages.subjects import stacked

    configure_threads(0)
    splits = load_splits(args.data_dir, (240, 256), 0.2, 0, 0)
    train = stacked(slices_of(splits.train), "the train split")
    stacks = subject_stacks(train)
    labels = subject_labels(train, stacks)
    order = list(stacks.values())
    maps = front_maps(as_tensor(train.images), C2STProtocol().fit.critic.cell)
    print(f"pair test null on {len(order)} real training subjects; production protocol; "
          f"{args.repeats} cross-fit(s) per draw")
    print(f"{'a side':>6} {'seed':>5} {'accuracy':>9}  {'95% interval':<16} {'repeats':<28} {'seconds':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        if 2 * n > len(order):
            print(f"{n:>6}  skipped: needs {2 * n} training subjects, the data has {len(order)}")
            continue
        rows = []
        for seed in _seeds(args.seeds):
            protocol = C2STProtocol(seed=seed)
            a, b = balanced_groups(labels, n, 2, seed)
            pa, ga = adjacent_pairs({str(g): order[g] for g in a})
            pb, gb = adjacent_pairs({str(g): order[g] for g in b})
            ma, mb = pair_maps(maps, pa), pair_maps(maps, pb)
            t0 = time.monotonic()
            # salt 1 is pair_power_checks' null; other salts deal the subjects to the folds anew and seed new critics
            res = [grouped_two_sample_test(ma, ga, mb, gb, protocol, salt=1 + 100 * r) for r in range(args.repeats)]
            rows.append(res[0])
            reps = " ".join(f"{r.accuracy:.3f}" for r in res[1:]) or "-"
            print(f"{n:>6} {seed:>5} {res[0].accuracy:>9.3f}  [{res[0].ci_low:.3f}, {res[0].ci_high:.3f}]  "
                  f"{reps:<28} {time.monotonic() - t0:>7.0f}", flush=True)
        acc = np.array([r.accuracy for r in rows])
        se = np.array([(r.ci_high - r.ci_low) / (2 * 1.959963984540054) for r in rows])
        held = sum(r.ci_low <= 0.5 <= r.ci_high for r in rows)
        sd = float(acc.std(ddof=1)) if len(acc) > 1 else math.nan
        print(f"{n:>6} draws {len(rows)}: mean {acc.mean():.3f}, sd {sd:.3f} against a printed se of {se.mean():.3f} "
              f"(ratio {sd / se.mean():.2f}); {held}/{len(rows)} intervals hold 0.5; range {acc.min():.3f}-"
              f"{acc.max():.3f}", flush=True)


if __name__ == "__main__":
    main()

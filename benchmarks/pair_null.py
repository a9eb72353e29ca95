"""How noisy is the pair test? Its null (real adjacent pairs against other real subjects' pairs) under many draws.

The pair test (:func:`brainvq.quality.subjects.grouped_two_sample_test`) prints an interval: cluster-robust over
subjects, plus, when it averages several cross-fits (``pair_repeats``), their spread. This benchmark checks that
interval against the spread it should describe: for each protocol seed, two disjoint class-balanced groups of real
training subjects are drawn (as :func:`pair_power_checks` draws them for ``vol/pair_c2st_null``) and tested against
each other ``--repeats`` times, under other deals of subjects to folds and other critic seeds. Over the draws, a
calibrated interval has

* a mean near 0.5,
* a standard deviation of the figures close to the mean standard error the intervals print (half-width / 1.96),
* about 95% of the intervals holding 0.5.

Two estimators are summarised from the same cross-fits: the first cross-fit alone (``pair_repeats=1``, the default)
and the mean of all of them as the pair test combines them (``pair_repeats=R``). If the cross-fits of one draw
agree while the draws disagree, the spread comes from which subjects were drawn, and no number of repeats narrows
it. Prints one row per draw and a summary per size and estimator.

    python benchmarks/pair_null.py                                     # demo set, 10 and 14 subjects a side
    python benchmarks/pair_null.py --sizes 14 --seeds 0-15 --repeats 5
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
    p.add_argument("--repeats", type=int, default=3,
                   help="cross-fits per draw under other deals and critic seeds (evaluate_subjects' pair_repeats)")
    args = p.parse_args(argv)

    import numpy as np

    from brainvq.data.splits import load_splits
    from brainvq.engine.common import configure_threads
    from brainvq.quality.c2st import C2STProtocol, as_tensor
    from brainvq.quality.classify import front_maps
    from brainvq.quality.subjects import (
        Z95,
        adjacent_pairs,
        balanced_groups,
        combine_cross_fits,
        cross_fit_by_subject,
        pair_maps,
        subject_labels,
        subject_stacks,
    )
    from brainvq.stages.evaluate import slices_of
    from brainvq.stages.subjects import stacked

    repeats = max(1, args.repeats)
    configure_threads(0)
    splits = load_splits(args.data_dir, (240, 256), 0.2, 0, 0)
    train = stacked(slices_of(splits.train), "the train split")
    stacks = subject_stacks(train)
    labels = subject_labels(train, stacks)
    order = list(stacks.values())
    maps = front_maps(as_tensor(train.images), C2STProtocol().fit.critic.cell)
    print(f"pair test null on {len(order)} real training subjects; production protocol; {repeats} cross-fit(s) "
          f"per draw")
    print(f"{'a side':>6} {'seed':>5} {'mean of all':>11}  {'95% interval':<16} {'each cross-fit':<30} {'seconds':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        if 2 * n > len(order):
            print(f"{n:>6}  skipped: needs {2 * n} training subjects, the data has {len(order)}")
            continue
        rows: dict[str, list] = {"one cross-fit": [], f"mean of {repeats}": []}
        within = []  # each draw's variance between its cross-fits: one cross-fit's own noise
        for seed in _seeds(args.seeds):
            protocol = C2STProtocol(seed=seed)
            a, b = balanced_groups(labels, n, 2, seed)
            pa, ga = adjacent_pairs({str(g): order[g] for g in a})
            pb, gb = adjacent_pairs({str(g): order[g] for g in b})
            ma, mb = pair_maps(maps, pa), pair_maps(maps, pb)
            t0 = time.monotonic()
            # salt 1 is pair_power_checks' null; repeat r is the test under salt 1 + 100 r, as the pair test's own
            fits = [cross_fit_by_subject(ma, ga, mb, gb, protocol, 1 + 100 * r) for r in range(repeats)]
            one, mean = combine_cross_fits(fits[:1]), combine_cross_fits(fits)
            rows["one cross-fit"].append(one)
            rows[f"mean of {repeats}"].append(mean)
            if repeats > 1:
                within.append(np.var([c.mean() for c, _ in fits], ddof=1))
            each = " ".join(f"{c.mean():.3f}" for c, _ in fits)
            print(f"{n:>6} {seed:>5} {mean.accuracy:>11.3f}  [{mean.ci_low:.3f}, {mean.ci_high:.3f}]  {each:<30} "
                  f"{time.monotonic() - t0:>7.0f}", flush=True)
        for name, res in rows.items():
            acc = np.array([r.accuracy for r in res])
            se = np.array([(r.ci_high - r.ci_low) / (2 * Z95) for r in res])
            held = sum(r.ci_low <= 0.5 <= r.ci_high for r in res)
            sd = float(acc.std(ddof=1)) if len(acc) > 1 else math.nan
            print(f"{n:>6} {name}, {len(res)} draws: mean {acc.mean():.3f}, sd {sd:.3f} against a printed se of "
                  f"{se.mean():.3f} (ratio {sd / se.mean():.2f}); {held}/{len(res)} intervals hold 0.5; range "
                  f"{acc.min():.3f}-{acc.max():.3f}", flush=True)
        if within:
            print(f"{n:>6} one cross-fit's own sd (within draws): {math.sqrt(np.mean(within)):.3f}", flush=True)


if __name__ == "__main__":
    main()

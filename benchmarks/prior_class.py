"""Does the prior know the class? The prior as a generative classifier of held-out codes, beside a histogram's.

``train_prior`` logs ``prior/test_class_accuracy``, ``prior/test_class_accuracy_subject`` and
``prior/test_class_margin_bits`` once, on the test split, for the report. Choosing between priors needs the same
figures on the **validation** split, and a reference: this prints, for each prior given and for each split asked,
:func:`brainvq.engine.prior.class_figures` (each held-out grid scored under every class, single slices, its level
kept; the class of highest likelihood wins) and the same reading of the position baseline (a code histogram per
class and grid position, from the training codes, add-one smoothed towards the class's histogram): how much of the
class the layout alone carries.

With ``--own_samples N`` it also draws N single slices from each prior (classes alternating, the cached sampler,
the seed given) and reads them the same way: how typical of their class the prior's own samples are by its own
likelihood, against the real held-out codes' margin. A prior whose samples read as their class (high accuracy, a
margin at or above the real codes') but which an image classifier trained on real slices does not agree with
(``gen/label_agreement``) loses the class in what its samples look like, not in what it has learnt.

    python benchmarks/prior_class.py --prior_run_ids <id> [<id> ...] --splits val
    python benchmarks/prior_class.py --prior_run_ids <id> --splits val test --own_samples 64 --temperatures 1.0 0.8
"""

from __future__ import annotations

import argparse


def histogram_figures(train, held_out, num_embeddings: int, num_classes: int) -> dict[str, float]:
    """The per-class, per-position code histogram of ``train`` (:func:`brainvq.engine.prior.position_probs`, one
    pseudo-count) as a classifier of ``held_out``: accuracy per grid and per subject (a subject's grids summed)."""
    import numpy as np

    from brainvq.engine.prior import position_probs

    flat = held_out.codes.reshape(len(held_out), -1)
    cells = np.arange(flat.shape[1])[None]
    ll = np.stack([np.log2(position_probs(train.codes[train.labels == c], num_embeddings, 1.0))[cells, flat].sum(1)
                   for c in range(num_classes)])  # (classes, N)
    subjects = np.asarray(held_out.subjects)
    names = np.unique(subjects)
    by_subject = [ll[:, subjects == s].sum(1).argmax() == held_out.labels[subjects == s][0] for s in names]
    return {"class_accuracy": float((ll.argmax(0) == held_out.labels).mean()),
            "class_accuracy_subject": float(np.mean(by_subject))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior_run_ids", nargs="+", default=["latest"], help="FINISHED train_prior runs, or latest")
    p.add_argument("--splits", nargs="+", choices=("val", "test"), default=["val"])
    p.add_argument("--own_samples", type=int, default=0, help="also read N of each prior's own samples; 0 = none")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0], help="code temperatures of those samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np

    from brainvq.data.codes import CodeSet, load_codes
    from brainvq.engine.common import configure_threads
    from brainvq.engine.prior import class_figures
    from brainvq.sampling.torch_sampler import sample_codes
    from brainvq.tracking.runs import download_codes, load_stage_model

    configure_threads(0)
    print("| prior run | split | grids / subjects | accuracy per slice | per subject | margin, bits per slice |")
    print("|---|---|---|---|---|---|")
    for run_id in args.prior_run_ids:
        prior, _, run = load_stage_model(run_id, "train_prior")
        folder = download_codes(run.data.params["vqvae_run_id"])
        cfg = prior.config
        train, _ = load_codes(folder / "train.npz", cfg.num_embeddings)
        for split in args.splits:
            data, _ = load_codes(folder / f"{split}.npz", cfg.num_embeddings)
            size = f"{len(data)} / {len(set(data.subjects))}"
            got = class_figures(prior, data)
            hist = histogram_figures(train, data, cfg.num_embeddings, cfg.num_classes)
            print(f"| {run.info.run_id[:8]} (`position_rank` {cfg.position_rank}) | {split} | {size} | "
                  f"{got['class_accuracy']:.3f} | {got['class_accuracy_subject']:.3f} | "
                  f"{got['class_margin_bits']:.1f} |", flush=True)
            print(f"| position histogram | {split} | {size} | {hist['class_accuracy']:.3f} | "
                  f"{hist['class_accuracy_subject']:.3f} | |", flush=True)
        for t in args.temperatures if args.own_samples > 0 else ():
            labels = np.arange(args.own_samples) % cfg.num_classes
            codes = sample_codes(prior, args.own_samples, labels, temperature=t, seed=args.seed, progress=False)
            own = class_figures(prior, CodeSet(codes, labels))  # no subjects: each grid its own
            print(f"| {run.info.run_id[:8]} (`position_rank` {cfg.position_rank}) | its own samples, T = {t} | "
                  f"{len(labels)} / {len(labels)} | {own['class_accuracy']:.3f} | | {own['class_margin_bits']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()

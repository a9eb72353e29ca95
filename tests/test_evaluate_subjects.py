"""`brainvq evaluate-subjects` and brainvq.quality.subjects on real tiny demo trees and a real MLflow store: real
subjects scored as if generated read as real, incoherent stacks do not, bad input is one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from brainvq.cli import main as cli

SIZE = (64, 64)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A tiny demo tree (16 training and 8 test subjects of 8 slices) and, as "generated" subjects, the 8 test
    subjects of another seed's tree: real subjects the evaluated data has never seen."""
    from brainvq.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("subjects")
    kw = {"slices_per_subject": 8, "image_size": SIZE, "progress": False}
    data = make_demo_data(root / "data", train_subjects=16, test_subjects=8, seed=0, **kw)
    other = make_demo_data(root / "other", train_subjects=2, test_subjects=8, seed=1, **kw)
    generated = root / "generated"
    shutil.copytree(other / "test", generated)
    (generated / "nifti").mkdir()  # what sample-subjects writes beside the PNGs: left alone
    (generated / "nifti" / "x.nii.gz").write_bytes(b"\x1f\x8b")
    return data, generated


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of a subjects folder with ``change(slice number, image, rng) -> (slice number, image)`` applied."""
    rng = np.random.default_rng(0)
    for d in sorted(p for p in src.iterdir() if p.is_dir() and any(p.glob("*.png"))):
        (dst / d.name).mkdir(parents=True)
        files = sorted(d.glob("*.png"))
        for subject in sorted({f.stem.rsplit("_", 1)[0] for f in files}):
            stack = [f for f in files if f.stem.rsplit("_", 1)[0] == subject]
            order = rng.permutation(len(stack))
            for f, new in zip(stack, order):
                k, img = change(int(f.stem.rsplit("_", 1)[1]), np.asarray(Image.open(f)), int(new))
                Image.fromarray(np.ascontiguousarray(img)).save(dst / d.name / f"{subject}_{k:03d}.png")
    return dst


def _sets(data):
    from brainvq.data.splits import load_splits
    from brainvq.stages.subjects import subject_sets

    splits = load_splits(str(data), SIZE, 0.2, 0, 0)
    return splits, subject_sets(splits, "test")


def _runs(stage="evaluate_subjects"):
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`brainvq.stage` = '{stage}'")


# ------------------------------------------------------------------------------------------------- unit tests


def test_majority_vote_breaks_ties_by_probability_and_intervals_cover():
    from brainvq.quality.subjects import cluster_interval, difference_ci, majority_vote, mean_ci

    labels = np.array([1, 1, 0, 0, 1, 0, 2, 2])  # subject 0: 2-1 for class 1; subject 1: a 1-1 tie
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    scores = np.zeros((8, 3))
    scores[np.arange(8), labels] = 1.0
    scores[4, 1] = 3.0  # subject 1's vote for class 1 is the surer one
    assert majority_vote(labels, scores, groups, 5).tolist() == [1, 1, 0, 2, -1]
    binary = np.array([2.0, -0.5])  # one vote each: the summed probabilities decide
    assert majority_vote((binary > 0).astype(int), binary, np.array([0, 0]), 1).tolist() == [1]
    assert majority_vote((-binary > 0).astype(int), -binary, np.array([0, 0]), 1).tolist() == [0]

    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1 / np.sqrt(3), rel=1e-3)  # t(0.975, 2) = 4.303
    gap, half = difference_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert gap == 0.0 and half > 0
    # all-correct clusters: no spread; half the clusters right: the interval covers 0.5
    assert cluster_interval(np.ones(6), np.array([0, 0, 1, 1, 2, 2]))[:3] == (1.0, 1.0, 1.0)
    acc, low, high, p = cluster_interval(np.array([1, 1, 0, 0, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 2, 2, 3, 3]))
    assert acc == 0.5 and low < 0.5 < high and p == pytest.approx(0.5)


def test_protocol_rejects_bad_values():
    from brainvq.quality.subjects import SubjectProtocol

    for bad in ({"augment_fraction": 0}, {"augment_fraction": 1.5}, {"augment_rounds": 0}, {"pair_repeats": 0},
                {"pair_repeats": 2.0}):
        with pytest.raises(ValueError):
            SubjectProtocol(**bad)
    assert SubjectProtocol().digest() == SubjectProtocol(**SubjectProtocol().to_dict()).digest()
    assert SubjectProtocol(pair_repeats=3).digest() != SubjectProtocol().digest()


def test_repeated_cross_fits_average_and_widen_the_interval_by_their_spread():
    """Repeat r of the pair test is the single test under salt + 100 r; the mean of R is their mean accuracy, and
    its variance is the pooled cluster variance plus the repeats' variance over R."""
    import torch

    from brainvq.quality.c2st import C2STProtocol
    from brainvq.quality.classify import FitConfig
    from brainvq.quality.subjects import Z95, cluster_se, cross_fit_by_subject, grouped_two_sample_test

    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(36, 8, 8, 8, generator=gen), torch.rand(40, 8, 8, 8, generator=gen) * 1.1  # a difference
    rg, fg = np.repeat(np.arange(6), 6), np.repeat(np.arange(8), 5)  # subjects of 6 and 5 items
    protocol = C2STProtocol(fit=FitConfig(steps=20))
    singles = [grouped_two_sample_test(real, rg, fake, fg, protocol, salt=2 + 100 * r) for r in range(3)]
    mean3 = grouped_two_sample_test(real, rg, fake, fg, protocol, salt=2, repeats=3)
    accs = [r.accuracy for r in singles]
    assert len(set(accs)) > 1, "the repeats should differ: other subsamples, deals and critic seeds"
    assert mean3.accuracy == pytest.approx(np.mean(accs)) and mean3.n_per_side == singles[0].n_per_side == 36
    pooled = [cross_fit_by_subject(real, rg, fake, fg, protocol, 2 + 100 * r) for r in range(3)]
    _, se = cluster_se(np.concatenate([c for c, _ in pooled]), np.concatenate([g for _, g in pooled]))
    expected = np.sqrt(se**2 + np.var(accs, ddof=1) / 3)
    assert mean3.ci_low == pytest.approx(max(0.0, mean3.accuracy - Z95 * expected), rel=1e-9)
    assert mean3.ci_high == pytest.approx(min(1.0, mean3.accuracy + Z95 * expected), rel=1e-9)
    assert expected > se
    # one repeat is the single test itself
    assert grouped_two_sample_test(real, rg, fake, fg, protocol, salt=2, repeats=1) == singles[0]


def test_reader_orders_slices_by_number_and_names_bad_input(trees, tmp_path):
    from brainvq.errors import DataError
    from brainvq.stages.subjects import read_subject_folder

    _, generated = trees
    fake = read_subject_folder(generated, SIZE, ("NC", "AD"))
    assert len(set(fake.subjects)) == 8 and len(fake.images) == 64 and set(fake.labels.tolist()) == {0, 1}
    assert all(s.split("/")[0] in ("AD", "NC") for s in fake.subjects)  # the class folder keys the subject

    one = tmp_path / "one" / "AD"
    one.mkdir(parents=True)
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(one / "s1_000.png")
    with pytest.raises(DataError, match=r"subject AD/s1 in subjects_dir has 1 slice .*s1_000\.png"):
        read_subject_folder(one.parent, SIZE, ("NC", "AD"))
    with pytest.raises(DataError, match="class folder AD, which the real data does not have"):
        read_subject_folder(one.parent, SIZE, ("CN", "MCI"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no subjects in subjects_dir"):
        read_subject_folder(tmp_path / "empty", SIZE, ("NC", "AD"))


# ------------------------------------------------------------------------------------- figures on real data


def test_shuffled_slices_lower_the_adjacent_ssim(trees, tmp_path):
    from brainvq.quality.subjects import consistency_metrics, subject_stacks
    from brainvq.stages.subjects import read_subject_folder

    data, generated = trees
    splits, sets = _sets(data)
    shuffled = _rewrite(generated, tmp_path / "shuffled", lambda k, img, new: (new, img))
    stand_in = read_subject_folder(generated, SIZE, splits.classes)
    bad = read_subject_folder(shuffled, SIZE, splits.classes)
    real = sets.held_out
    good_m = consistency_metrics(stand_in, subject_stacks(stand_in), real, subject_stacks(real))
    bad_m = consistency_metrics(bad, subject_stacks(bad), real, subject_stacks(real))
    # the decoder's share: read on the reconstructions of the real subjects, not on the real ones or the generated
    flat = consistency_metrics(bad, subject_stacks(bad), real, subject_stacks(real), np.zeros_like(real.images))
    assert flat["vol/adjacent_ssim_recon"] == pytest.approx(1.0) and "vol/adjacent_ssim_recon" not in bad_m
    assert abs(good_m["vol/adjacent_ssim_gap"]) <= good_m["vol/adjacent_ssim_gap_ci95"] + 0.01
    assert bad_m["vol/adjacent_ssim"] < good_m["vol/adjacent_ssim"] - 0.05
    assert bad_m["vol/adjacent_ssim_gap"] + bad_m["vol/adjacent_ssim_gap_ci95"] < 0  # the interval excludes 0
    assert bad_m["real/adjacent_ssim"] == good_m["real/adjacent_ssim"]


def test_incoherent_subjects_are_found_by_the_pair_test(trees, tmp_path):
    """Every other slice upside down: each slice is a plausible slice, but no pair is a pair of neighbours."""
    from brainvq.quality.c2st import C2STProtocol
    from brainvq.quality.classify import FitConfig
    from brainvq.quality.subjects import PAIR_POWER_METRICS, SubjectProtocol
    from brainvq.stages.subjects import read_subject_folder, score_subjects

    data, generated = trees
    splits, sets = _sets(data)
    flipped = _rewrite(generated, tmp_path / "flipped", lambda k, img, new: (k, img[::-1] if k % 2 else img))
    protocol = SubjectProtocol(c2st=C2STProtocol(fit=FitConfig(steps=50)), augment_rounds=1)  # small: a test
    # a perfect decoder (the identity): its ceilings are the real figures, read from the same subjects and seeds
    outcome = score_subjects(read_subject_folder(flipped, SIZE, splits.classes), sets, protocol, lambda x: x)
    m = outcome.metrics
    assert m["vol/adjacent_ssim_recon"] == m["real/adjacent_ssim"]
    assert m["vol/tstr_subject_recon_ceiling"] == m["real/trtr_subject_accuracy"]
    assert np.isfinite(m["vol/augmentation_gain_recon_ceiling"]) and m["vol/augmentation_gain_recon_ceiling_ci95"] >= 0
    assert m["vol/pair_c2st_ci_low"] > 0.5 and m["vol/pair_c2st_pvalue"] < 0.05
    assert m["vol/adjacent_ssim_gap"] + m["vol/adjacent_ssim_gap_ci95"] < 0
    for key in (*PAIR_POWER_METRICS.values(), "vol/tstr_subject_accuracy", "real/trtr_subject_accuracy",
                "vol/augmentation_gain", "vol/augmented_subject_accuracy", "real/subset_subject_accuracy"):
        assert np.isfinite(m[key]) and np.isfinite(m[f"{key}_ci95"]), key
    assert m["vol/augmentation_gain"] == pytest.approx(m["vol/augmented_subject_accuracy"]
                                                       - m["real/subset_subject_accuracy"])


# ----------------------------------------------------------------------------------------------- entry point


def test_entry_point_scores_a_folder_of_real_subjects_as_real(trees):
    data, generated = trees
    assert cli(["evaluate-subjects", "--subjects_dir", str(generated), "--data_dir", str(data),
                "--image_size", "64x64"]) == 0
    (run,) = _runs()
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for key in ("vol/adjacent_ssim", "real/adjacent_ssim", "vol/adjacent_ssim_gap", "vol/pair_c2st",
                "vol/pair_c2st_null", "vol/pair_c2st_power_skip", "vol/pair_c2st_power_swap",
                "vol/tstr_subject_accuracy", "real/trtr_subject_accuracy", "vol/augmentation_gain",
                "vol/augmented_subject_accuracy", "real/subset_subject_accuracy"):
        assert key in m and f"{key}_ci95" in m, key
    # real subjects of the same source: as consistent as the real ones, and no better than chance at telling
    assert abs(m["vol/adjacent_ssim_gap"]) <= m["vol/adjacent_ssim_gap_ci95"] + 0.01
    assert m["vol/pair_c2st_ci_low"] <= 0.5 <= m["vol/pair_c2st_ci_high"]
    assert m["vol/tstr_subject_accuracy"] >= 0.75  # real subjects keep their class
    assert m["vol/subjects"] == 8 and m["real/subjects"] == 8
    tags = run.data.tags
    assert tags["brainvq.eval_underpowered"] in ("true", "false") and tags["brainvq.eval_split"] == "test"
    assert run.data.params["subjects_dir"] == str(generated) and "subjects_run_id" not in run.data.params
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"subjects.png", "protocol.json"} <= artifacts
    picture = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="subjects.png"))
    assert Image.open(picture).size[1] > 6 * SIZE[0]  # 3 generated and 3 real rows


def test_bad_inputs_are_one_line_errors_before_any_run(trees, tmp_path, capsys):
    data, generated = trees
    with mlflow.start_run() as other:  # a run of another stage
        mlflow.set_tag("brainvq.stage", "train_prior")
    with mlflow.start_run() as unlinked:  # a sample_subjects run that does not say which VQ-VAE it came from
        mlflow.set_tag("brainvq.stage", "sample_subjects")
    few = tmp_path / "few"
    (few / "AD").mkdir(parents=True)
    first = sorted((generated / "AD").glob("*.png"))[0].stem.rsplit("_", 1)[0]
    for f in (generated / "AD").glob(f"{first}_*.png"):  # one subject: too few for a test by subject folds
        shutil.copy(f, few / "AD" / f.name)
    cases = [
        (["--subjects_dir", str(tmp_path / "missing"), "--data_dir", str(data)], "subjects_dir does not exist"),
        (["--subjects_dir", str(few), "--data_dir", str(data), "--image_size", "64x64"],
         "subjects_dir holds 1 subjects"),
        (["--subjects_run_id", other.info.run_id], "expected a sample_subjects run"),
        (["--subjects_run_id", unlinked.info.run_id], "records no brainvq.vqvae_run_id"),
        (["--subjects_dir", str(generated), "--augment_fraction", "0"], "bad parameter: augment_fraction"),
        (["--subjects_dir", str(generated), "--pair_repeats", "0"], "bad parameter: pair_repeats"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert cli(["evaluate-subjects", *args]) == 2, args
        # the data loader's progress bars (a fresh cache) are not the error
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "img/s" not in line]
        assert len(err) == 1 and message in err[0], (args, err)
    assert _runs() == []  # refused before an evaluate_subjects run started

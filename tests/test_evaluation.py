"""The evaluation instruments: each must separate what differs, stay at chance for what does not, and agree with a
reference implementation where one exists."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import linalg, ndimage
from scipy.stats import binomtest

from brainvq.models.critic import Critic, CriticConfig, blur_matrix
from brainvq.quality.c2st import (
    C2STProtocol,
    as_tensor,
    degrade,
    halves,
    power_checks,
    two_sample_test,
    underpowered,
    wilson_interval,
)
from brainvq.quality.classify import FitConfig, fit_critic, front_maps, predict_labels
from brainvq.quality.diversity import msssim_diversity, random_pairs
from brainvq.quality.evaluate import Calibration, EvalProtocol, Slices, calibrate, evaluate_generated, select_real
from brainvq.quality.fidelity import frechet_ci95, frechet_distance, precision_recall

# A quick recipe for the synthetic checks below; the production protocol is exercised on demo slices further down.
QUICK = C2STProtocol(fit=FitConfig(steps=60))


def discs(n: int, rng: np.random.Generator, size: int = 48, dark_centre: bool = False, noise: float = 0.04):
    """Bright noisy discs of random radius, uint8 ``(n,size,size)``; ``dark_centre`` punches a hole ("atrophy")."""
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.float32)
    for k in range(n):
        r = rng.uniform(0.25, 0.35) * size
        cy, cx = size / 2 + rng.normal(0, 1.0, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img = (d2 < r * r) * rng.uniform(0.6, 0.8)
        if dark_centre:
            img = img * (d2 > (0.45 * r) ** 2)
        out[k] = np.clip(img + rng.normal(0, noise, img.shape) * (d2 < r * r), 0, 1)
    return (out * 255 + 0.5).astype(np.uint8)


def test_wilson_interval_matches_scipy():
    for k, n in ((0, 20), (7, 20), (81, 100), (512, 512)):
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_blur_matrix_is_scipys_gaussian_filter():
    x = np.random.default_rng(0).random((2, 1, 30, 41)).astype(np.float32)
    ours = (blur_matrix(30, 2.0) @ torch.from_numpy(x) @ blur_matrix(41, 2.0).T).numpy()
    ref = ndimage.gaussian_filter(x, sigma=(0, 0, 2, 2), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_front_end_sees_full_resolution_blur_and_noise():
    rng = np.random.default_rng(1)
    real = discs(4, rng, size=64, noise=0.01)  # the demo set's noise level
    maps = front_maps(as_tensor(real))  # (4,8,8,8)
    blurred = front_maps(as_tensor(degrade(real, "blur", 0.5)))
    noisy = front_maps(as_tensor(degrade(real, "noise", 0.02)))
    # cells wholly inside a disc (mean intensity high): texture only, no disc edge
    inside = (maps[:, :1] > 0.55).expand(-1, 2, -1, -1)
    assert inside.float().mean() > 0.2
    # the log energy of the second differences: a half-pixel blur removes much of it, noise of sigma 0.02 adds more
    assert (blurred[:, 1:3] - maps[:, 1:3])[inside].median() < -0.5
    assert (noisy[:, 1:3] - maps[:, 1:3])[inside].median() > 0.5


def test_c2st_separates_different_sets_and_scores_every_image_once():
    rng = np.random.default_rng(2)
    holed = discs(48, rng, dark_centre=True)
    res = two_sample_test(front_maps(as_tensor(discs(40, rng))), front_maps(as_tensor(holed)), QUICK)
    assert res.n_per_side == 40  # the larger side is subsampled: chance is exactly 0.5
    assert res.accuracy > 0.9 and res.ci_low > 0.5 and res.pvalue < 1e-6
    assert res.ci_low <= res.accuracy <= res.ci_high and res.ci95 == pytest.approx((res.ci_high - res.ci_low) / 2)


def test_c2st_null_stays_at_chance():
    rng = np.random.default_rng(3)
    res = two_sample_test(front_maps(as_tensor(discs(48, rng))), front_maps(as_tensor(discs(48, rng))), QUICK)
    assert res.ci_low < 0.5 < res.ci_high and abs(res.accuracy - 0.5) < 0.15


def test_c2st_shuffles_before_folds():
    """Sorted inputs in blocks (here: two kinds of real image, one after the other) must not become the folds."""
    rng = np.random.default_rng(4)
    real = np.concatenate([discs(24, rng), discs(24, rng, dark_centre=True)])  # block-sorted like file lists
    fake = np.concatenate([discs(24, rng), discs(24, rng, dark_centre=True)])
    res = two_sample_test(front_maps(as_tensor(real)), front_maps(as_tensor(fake)), QUICK)
    assert res.ci_low < 0.5 < res.ci_high


def test_degradations_keep_uint8_and_reject_unknown_kinds():
    real = discs(3, np.random.default_rng(5))
    for kind, amount in (("blur", 1.0), ("noise", 0.02)):
        out = degrade(real, kind, amount)
        assert out.dtype == np.uint8 and out.shape == real.shape and not np.array_equal(out, real)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(real, "jpeg", 1.0)
    a, b = halves(11, 0)
    assert len(a) == len(b) == 5 and not set(a) & set(b)


def test_critic_config_and_fit_config_reject_bad_values():
    with pytest.raises(ValueError, match="cell"):
        CriticConfig(cell=0)
    with pytest.raises(ValueError, match="steps"):
        FitConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        FitConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="folds"):
        C2STProtocol(folds=1)
    with pytest.raises(ValueError, match="temperature"):
        EvalProtocol(temperature=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        EvalProtocol(n_samples=4)
    with pytest.raises(ValueError, match="two classes"):
        fit_critic(torch.zeros(4, 8, 4, 4), np.zeros(4, np.int64), FitConfig(steps=1))


def test_protocol_digest_records_every_setting():
    base = EvalProtocol()
    assert base.digest() == EvalProtocol().digest()
    assert EvalProtocol(seed=1).digest() != base.digest()
    assert EvalProtocol(temperature=0.9).digest() != base.digest()
    steps = dataclasses.replace(base, c2st=C2STProtocol(fit=FitConfig(steps=100)))
    assert steps.digest() != base.digest() and steps.calibration_digest() != base.calibration_digest()
    # the calibration depends on the real data and the classifiers, not on how slices are sampled
    assert EvalProtocol(temperature=0.9).calibration_digest() == base.calibration_digest()
    assert EvalProtocol(**{**base.to_dict(), "c2st": base.c2st.to_dict()}) == base  # JSON round trip


def test_frechet_distance_matches_scipy_and_is_zero_for_one_set():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 6)), rng.normal(0.5, 1.5, size=(200, 6))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    dead = np.concatenate([a, np.zeros((300, 3))], 1)  # units that never fire: singular covariance, still finite
    assert np.isfinite(frechet_distance(dead, dead[::-1]))


def test_frechet_interval_narrows_with_the_sample_size():
    rng = np.random.default_rng(12)
    small = frechet_ci95(rng.normal(size=(50, 4)), rng.normal(0.3, 1, size=(50, 4)))
    large = frechet_ci95(rng.normal(size=(800, 4)), rng.normal(0.3, 1, size=(800, 4)))
    assert 0 < large < small / 2  # 1/sqrt(n): 4x the samples, half the width


def test_precision_recall_tell_fidelity_from_coverage():
    rng = np.random.default_rng(7)
    real = np.concatenate([rng.normal(-4, 0.5, (100, 2)), rng.normal(4, 0.5, (100, 2))])
    one_mode = rng.normal(-4, 0.5, (200, 2))  # faithful but covers half of the real modes
    off = rng.normal(30, 0.5, (200, 2))
    p, r = precision_recall(real, one_mode)
    assert p > 0.9 and 0.3 < r < 0.6
    assert precision_recall(real, off) == (0.0, 0.0)
    p, r = precision_recall(real, real[::-1] + rng.normal(0, 0.05, real.shape))
    assert p > 0.9 and r > 0.9


def test_diversity_pairs_only_cross_subjects_and_falls_back_below_176px():
    groups = ["a"] * 5 + ["b"] * 5
    i, j = random_pairs(10, 1000, np.random.default_rng(0), groups)
    assert len(i) == 25 and all(groups[x] != groups[y] for x, y in zip(i, j))
    imgs = as_tensor(discs(6, np.random.default_rng(8)))
    with pytest.warns(UserWarning, match="falls back to single-scale SSIM"):
        d = msssim_diversity(imgs, max_pairs=10)
    assert 0 < d < 1
    with pytest.raises(ValueError, match="different subjects"), pytest.warns(UserWarning):
        msssim_diversity(imgs[:2], groups=["a", "a"])


def _slices(images, labels, prefix):
    return Slices(images, np.asarray(labels, np.int64), [f"{prefix}{k // 4}" for k in range(len(images))])


@pytest.mark.filterwarnings("ignore:images are")
def test_calibrate_and_evaluate_generated_report_every_figure():
    rng = np.random.default_rng(9)

    def labelled(n, prefix):
        nc, ad = discs(n // 2, rng), discs(n // 2, rng, dark_centre=True)
        return _slices(np.concatenate([nc, ad]), [0] * (n // 2) + [1] * (n // 2), prefix)

    train, held_out = labelled(64, "tr"), labelled(48, "te")
    protocol = EvalProtocol(n_samples=32, c2st=QUICK, max_pairs=20)
    real = select_real(held_out, protocol)
    assert len(real.images) == 32 and len(set(real.subjects)) > 4  # drawn across subjects, not the first 32
    cal = calibrate(real, held_out, train, protocol)
    assert set(cal.power) == {"null", "blur10", "blur05", "noise"}
    for key in ("gen/c2st_null", "gen/c2st_power_blur10", "gen/c2st_power_noise", "real/fd", "real/precision",
                "real/recall", "real/trtr_accuracy", "real/label_classifier_accuracy", "real/msssim_diversity"):
        assert np.isfinite(cal.metrics[key]), key
    assert cal.metrics["real/label_classifier_accuracy"] > 0.9  # the dark centre is easy to see
    for key in ("real/fd", "real/precision", "real/recall", "real/trtr_accuracy", "real/label_classifier_accuracy"):
        assert 0 < cal.metrics[f"{key}_ci95"] < np.inf, key  # every figure states its noise
    good = labelled(32, "g")
    swapped = _slices(good.images, 1 - good.labels, "s")  # right images, wrong labels
    m_good = evaluate_generated(good, real, held_out, cal, protocol, reconstruct=lambda x: x, train=train)
    m_bad = evaluate_generated(swapped, real, held_out, cal, protocol)
    assert m_good["gen/label_agreement"] > 0.9 and m_bad["gen/label_agreement"] < 0.1
    assert all(f"{k}_ci95" in m_good for k in ("gen/fd", "gen/precision", "gen/recall", "gen/tstr_accuracy",
                                               "gen/label_agreement", "gen/c2st_accuracy"))
    assert m_good["gen/tstr_accuracy"] > 0.9 and m_bad["gen/tstr_accuracy"] < 0.1
    assert abs(m_good["gen/c2st_recon_ceiling"] - 0.5) < 0.2  # a perfect decoder is indistinguishable
    assert "gen/c2st_recon_ceiling" not in m_bad and "gen/tstr_recon_ceiling" not in m_bad
    # the utility ceilings: a perfect decoder gives back TRTR's own figure (same slices, same recipe and seed) and the
    # feature network's accuracy; a decoder that keeps the outline but erases the dark centre (the class) gives chance
    assert m_good["gen/tstr_recon_ceiling"] == cal.metrics["real/trtr_accuracy"]
    assert m_good["gen/label_agreement_recon"] > 0.9 and m_good["gen/tstr_recon_ceiling_ci95"] > 0
    erase = lambda x: np.stack([ndimage.binary_fill_holes(i > 0) for i in x]).astype(np.uint8) * 180  # noqa: E731
    m_erased = evaluate_generated(good, real, held_out, cal, protocol, reconstruct=erase, train=train)
    assert abs(m_erased["gen/tstr_recon_ceiling"] - 0.5) < 0.2
    assert abs(m_erased["gen/label_agreement_recon"] - 0.5) < 0.2
    assert m_erased["gen/tstr_accuracy"] == m_good["gen/tstr_accuracy"]  # the samples' own figures do not move
    # unlabelled data: no feature network, so no FD / precision / recall / TSTR, but the realism test runs
    unl = lambda s: Slices(s.images, np.full(len(s.images), -1), s.subjects)  # noqa: E731
    cal_u = calibrate(unl(real), unl(held_out), unl(train), protocol)
    assert cal_u.features is None and "real/fd" not in cal_u.metrics
    m_u = evaluate_generated(unl(good), unl(real), unl(held_out), cal_u, protocol)
    assert "gen/c2st_accuracy" in m_u and "gen/fd" not in m_u


@pytest.mark.slow
def test_production_protocol_detects_blur_and_keeps_the_null_on_demo_slices(tmp_path):
    """The realism test at its production settings on real-like slices: sigma-1 blur found, real vs real at 0.5."""
    from brainvq.data import load_adni, make_demo_data

    root = make_demo_data(tmp_path / "demo", train_subjects=2, test_subjects=6, seed=5, progress=False)
    real = np.asarray(load_adni(root, val_fraction=0.0).test.images)  # 120 slices of 6 subjects, 240x256
    real = real[np.random.default_rng(0).permutation(len(real))]
    protocol = C2STProtocol()  # production settings
    a, b = halves(len(real), 0)
    maps_a = front_maps(as_tensor(real[a]))
    null = two_sample_test(maps_a, front_maps(as_tensor(real[b])), protocol, salt=1)
    blur = two_sample_test(maps_a, front_maps(as_tensor(degrade(real[b], "blur", 1.0))), protocol, salt=2)
    assert blur.accuracy >= 0.95 and blur.ci_low > 0.5, blur
    assert null.ci_low < 0.5 < null.ci_high, null
    assert underpowered({"blur10": blur, "noise": blur}) == []
    assert underpowered({"blur10": null}) == [f"blur10 {null.accuracy:.3f} < 0.95"]
    # a null inside its interval passes; real-vs-real read as blur (an interval above 0.5) is a miscalibrated test
    assert underpowered({"null": null, "blur10": blur, "noise": blur}) == []
    assert underpowered({"null": blur, "blur10": blur, "noise": blur}) == [
        f"null {blur.accuracy:.3f} [{blur.ci_low:.3f}, {blur.ci_high:.3f}] excludes chance"]
    from brainvq.quality.c2st import C2STResult
    from brainvq.quality.subjects import pair_underpowered

    below = C2STResult(0.147, 0.025, 0.269, 1.0, 133)  # the pair null of 10 validation subjects (README)
    swap = C2STResult(0.951, 0.9, 1.0, 0.0, 133)
    assert pair_underpowered({"null": below, "swap": swap}) == ["pair null 0.147 [0.025, 0.269] excludes chance"]
    assert pair_underpowered({"null": null, "swap": swap}) == []


@pytest.mark.slow
def test_power_checks_report_all_four(tmp_path):
    rng = np.random.default_rng(10)
    res = power_checks(discs(40, rng, size=48), C2STProtocol(fit=FitConfig(steps=80)))
    assert set(res) == {"null", "blur10", "blur05", "noise"}
    assert res["blur10"].accuracy > 0.8 and res["noise"].accuracy > 0.8
    assert all(r.n_per_side == 20 for r in res.values())


def test_predict_labels_and_front_maps_shapes():
    rng = np.random.default_rng(11)
    x = as_tensor(np.concatenate([discs(8, rng), discs(8, rng, dark_centre=True)]))
    maps = front_maps(x)
    assert maps.shape == (16, 8, 6, 6)
    model = fit_critic(maps, np.array([0] * 8 + [1] * 8), FitConfig(steps=40))
    out = model(x)
    assert out.logits.shape == (16,) and out.embedding.shape == (16, CriticConfig().embedding_dim + 16)
    assert predict_labels(model, maps).shape == (16,)
    assert isinstance(Critic(CriticConfig(outputs=3))(x).logits, torch.Tensor)


@pytest.mark.filterwarnings("ignore:images are")
def test_the_realism_test_per_third_of_levels_finds_the_third_that_is_wrong():
    """Real slices whose look depends on their level (a hole in the middle third only); generated slices right in
    the bottom and top thirds and wrong in the middle one: only gen/c2st_level_middle sees it."""
    rng = np.random.default_rng(12)

    def leveled(n, prefix, middle_hole):
        levels = rng.uniform(0, 1, n).astype(np.float32)
        hole = (levels >= 1 / 3) & (levels < 2 / 3) & middle_hole
        images = np.stack([discs(1, rng, dark_centre=bool(h))[0] for h in hole])
        return Slices(images, np.full(n, -1), [f"{prefix}{k // 4}" for k in range(n)], levels)

    real, held_out = leveled(96, "r", True), leveled(96, "h", True)
    protocol = EvalProtocol(n_samples=96, c2st=dataclasses.replace(QUICK, folds=2), max_pairs=4)
    cal = Calibration({}, {}, None)  # unlabelled: no feature network; the power checks are tested above
    wrong = evaluate_generated(leveled(96, "g", False), real, held_out, cal, protocol)
    assert wrong["gen/c2st_level_middle"] > 0.85 and wrong["gen/c2st_level_middle_ci_low"] > 0.5, wrong
    for third in ("bottom", "top"):  # right there: near chance (a seeded draw, not asserted to cover 0.5 exactly)
        assert wrong[f"gen/c2st_level_{third}"] < 0.7, wrong
    right = evaluate_generated(leveled(96, "g", True), real, held_out, cal, protocol)
    assert right["gen/c2st_level_middle"] < 0.7, right
    no_levels = Slices(real.images, real.labels, real.subjects)  # a prior without level bins: no per-third figures
    assert not any(k.startswith("gen/c2st_level_") for k in evaluate_generated(no_levels, real, held_out, cal,
                                                                                 protocol))

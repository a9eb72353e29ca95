"""Sample-quality metrics on tiny synthetic images: they must separate what differs and not what does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainvq.evaluation import (
    EvalConfig,
    SmallCNN,
    c2st_accuracy,
    evaluate_samples,
    label_agreement,
    msssim_diversity,
    train_label_classifier,
)

# 32x32 inputs, so the classifiers see the images at native size. One thread: on a shared 2-core machine a second
# thread mostly waits on the other's spin locks (measured ~3x slower under load).
CFG = EvalConfig(epochs=10, batch_size=16, image_size=(32, 32), max_pairs=40, num_threads=1, progress=False)


def discs(n: int, rng: np.random.Generator, size: int = 32, dark_centre: bool = False) -> np.ndarray:
    """Bright noisy discs of random radius and slightly jittered centre, (n,size,size) float32 in [0,1]."""
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.float32)
    for k in range(n):
        r = rng.uniform(0.2, 0.3) * size
        cy, cx = size / 2 + rng.normal(0, 1.0, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img = (d2 < r * r) * rng.uniform(0.7, 0.9)
        if dark_centre:  # "atrophy": a hole in the middle
            img = img * (d2 > (0.5 * r) ** 2)
        out[k] = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    return out


def dark_squares(n: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    out = np.zeros((n, size, size), np.float32)
    out[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0.3
    return np.clip(out + rng.normal(0, 0.05, out.shape), 0, 1).astype(np.float32)


def test_c2st_separates_different_sets():
    rng = np.random.default_rng(0)
    res = c2st_accuracy(discs(64, rng), dark_squares(80, rng), CFG)
    assert res["accuracy"] >= 0.95
    # balanced to 64 a side, halved: each fold trains on 32+32; both folds together score all 128
    assert res["n_train"] == 64 and res["n_test"] == 128
    assert res["pvalue"] < 1e-6


def test_c2st_is_near_chance_for_two_draws_of_one_distribution():
    rng = np.random.default_rng(1)
    res = c2st_accuracy(discs(100, rng), discs(100, rng), CFG)
    assert res["accuracy"] <= 0.7
    assert res["pvalue"] > 0.001


def test_c2st_accepts_uint8_and_channel_axis_alike():
    rng = np.random.default_rng(2)
    real, fake = discs(16, rng), dark_squares(16, rng)
    cfg = EvalConfig(epochs=2, batch_size=8, image_size=(32, 32), num_threads=1, progress=False)
    as_float = c2st_accuracy(real[:, None], fake[:, None], cfg)  # (N,1,H,W) float
    as_uint8 = c2st_accuracy((real * 255).round().astype(np.uint8), (fake * 255).round().astype(np.uint8), cfg)
    assert as_float["accuracy"] == pytest.approx(as_uint8["accuracy"], abs=1 / 16)
    with pytest.raises(ValueError, match="differ in size"):
        c2st_accuracy(real, discs(16, rng, size=48), cfg)
    with pytest.raises(ValueError, match="uint8"):
        c2st_accuracy(real.astype(np.int32), fake, cfg)


def test_diversity_is_one_for_copies_and_lower_for_varied_images():
    rng = np.random.default_rng(3)
    # Full MS-SSIM path (>= 176 px a side).
    big_copies = np.repeat(discs(1, rng, size=176), 4, axis=0)
    assert msssim_diversity(big_copies, max_pairs=3) == pytest.approx(1.0, abs=1e-4)
    big_noise = rng.random((4, 176, 176)).astype(np.float32)
    assert msssim_diversity(big_noise, max_pairs=3) < 0.2
    # Small images fall back to SSIM, and say so.
    with pytest.warns(UserWarning, match="falls back to single-scale SSIM"):
        copies = msssim_diversity(np.repeat(discs(1, rng), 8, axis=0), max_pairs=20)
    with pytest.warns(UserWarning):
        varied = msssim_diversity(rng.random((8, 32, 32)).astype(np.float32), max_pairs=20)
    assert copies == pytest.approx(1.0, abs=1e-4)
    assert varied < 0.2 < copies


def test_label_agreement_follows_requested_labels():
    rng = np.random.default_rng(4)
    x = np.concatenate([discs(40, rng), discs(40, rng, dark_centre=True)])  # NC then AD
    y = np.array([0] * 40 + [1] * 40)
    clf = train_label_classifier(x, y, CFG)
    assert isinstance(clf, SmallCNN) and clf.image_size == (32, 32)
    assert clf.heldout_accuracy >= 0.9
    gen = np.concatenate([discs(16, rng), discs(16, rng, dark_centre=True)])
    asked = np.array([0] * 16 + [1] * 16)
    assert label_agreement(clf, gen, asked) >= 0.9
    assert label_agreement(clf, gen, 1 - asked) <= 0.1
    with pytest.raises(ValueError, match="0 \\(NC\\) or 1 \\(AD\\)"):
        label_agreement(clf, gen, asked + 1)


def test_evaluate_samples_is_namespaced_and_deterministic():
    rng = np.random.default_rng(5)
    real_train = np.concatenate([discs(16, rng), discs(16, rng, dark_centre=True)])
    train_labels = np.array([0] * 16 + [1] * 16)
    real_test = (discs(24, rng) * 255).astype(np.uint8)
    fake, fake_labels = discs(12, rng), np.array([0, 1] * 6)
    cfg = EvalConfig(epochs=3, batch_size=16, image_size=(32, 32), max_pairs=20, num_threads=1, progress=False)
    torch.manual_seed(123)
    outside = torch.rand(1)
    with pytest.warns(UserWarning):  # 32 px: SSIM fallback
        a = evaluate_samples(real_test, fake, fake_labels, real_train, train_labels, cfg)
        b = evaluate_samples(real_test, fake, fake_labels, real_train, train_labels, cfg)
    assert a == b
    assert set(a) == {"gen/c2st_accuracy", "gen/c2st_pvalue", "gen/msssim_diversity", "real/msssim_diversity",
                      "gen/label_agreement", "real/label_classifier_accuracy"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in a.values())
    # Seeding happens on a forked generator: the caller's random stream is untouched.
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), outside)
    with pytest.warns(UserWarning):
        unlabelled = evaluate_samples(real_test, fake, config=cfg)
    assert set(unlabelled) == {"gen/c2st_accuracy", "gen/c2st_pvalue", "gen/msssim_diversity", "real/msssim_diversity"}
    with pytest.raises(ValueError, match="together"):
        evaluate_samples(real_test, fake, fake_labels, config=cfg)


@pytest.mark.parametrize("bad", [
    dict(epochs=0), dict(batch_size=1), dict(lr=0.0), dict(lr=float("nan")), dict(seed=-1), dict(image_size=(8, 8)),
    dict(image_size=(120,)), dict(max_pairs=0), dict(label_holdout=1.0), dict(num_threads=-1),
])
def test_config_validation(bad):
    with pytest.raises(ValueError, match="EvalConfig"):
        EvalConfig(**bad)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(6)
    x = (rng.random((4, 32, 32)) * 1.4 - 0.2).astype(np.float32)  # out of [0,1] on purpose: gets clamped internally
    before = x.copy()
    with pytest.warns(UserWarning):
        msssim_diversity(x, max_pairs=3)
    np.testing.assert_array_equal(x, before)

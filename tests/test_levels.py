"""Slice levels: the prior conditioned on where a slice sits in its subject (issue 14's first step).

Levels are ranks of a subject's slice numbers scaled to [0, 1] (tests/test_data.py), cut into ``level_bins`` bins
plus a "no level" bin; each (label, level bin) pair is one condition id, which the model, the step modules, the ONNX
graphs and both samplers share. Real models, real onnxruntime sessions, no mocks.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from brainvq.data.codes import CodeSet
from brainvq.data.labels import condition_ids, level_ids, levels_for
from brainvq.errors import ConfigError
from brainvq.export.onnx_graphs import export_models
from brainvq.export.ort_sampler import OnnxSampler
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from brainvq.models.vqvae import VQVAE, VQVAEConfig
from brainvq.sampling.torch_sampler import sample_codes

BINS = 4


def level_prior(seed: int = 0) -> GatedPixelCNN:
    torch.manual_seed(seed)
    prior = GatedPixelCNN(PixelCNNConfig(num_embeddings=5, num_layers=3, hidden_channels=8, code_shape=(6, 7),
                                         dilation_cycle=(1, 2), level_bins=BINS)).eval()
    with torch.no_grad():  # tables start at zero: randomise them so every condition differs
        prior.row_bias.normal_(0, 1.0)
        prior.col_bias.normal_(0, 1.0)
    return prior


def test_condition_ids_pair_each_label_with_a_level_bin():
    assert level_ids(np.array([0.0, 0.2, 0.5, 1.0, np.nan]), BINS).tolist() == [0, 1, 2, 3, BINS]
    # label * (bins + 1) + level bin; "no level" (NaN) is its own bin; no bins: the label id itself
    assert condition_ids(np.array([0, 1, 2]), np.array([0.0, 1.0, np.nan]), BINS).tolist() == [0, 8, 14]
    assert condition_ids(np.array([0, 1, 2]), np.array([0.0, 1.0, np.nan]), 0).tolist() == [0, 1, 2]
    cfg = PixelCNNConfig(num_embeddings=5, level_bins=BINS)
    assert cfg.num_conditions == 3 * (BINS + 1) and PixelCNNConfig(num_embeddings=5).num_conditions == 3
    for bad, why in (({"level_bins": 1}, "level_bins must be 0"), ({"level_bins": 3, "conditional": False},
                                                                    "level_bins needs conditional=true")):
        with pytest.raises(ValueError, match=why):
            PixelCNNConfig(num_embeddings=5, **bad)
    assert PixelCNNConfig(**cfg.to_dict()) == cfg  # checkpoints carry it


def test_levels_for_sampling():
    np.testing.assert_array_equal(levels_for("0.5", 3), [0.5] * 3)
    assert np.isnan(levels_for("none", 2)).all()
    drawn = levels_for("random", 2000, seed=7)
    np.testing.assert_array_equal(drawn, levels_for("random", 2000, seed=7))  # the seed decides
    assert drawn.min() >= 0 and drawn.max() <= 1 and abs(drawn.mean() - 0.5) < 0.03
    with pytest.raises(ConfigError, match="seed must be >= 0"):  # the seed is checked before it seeds the draw
        from brainvq.export.ort_sampler import sample_to_pngs

        sample_to_pngs("no-model-needed", "out", seed=-1)
    for bad in ("1.5", "-0.1", "top", "nan"):
        with pytest.raises(ConfigError, match="level must be a number in \\[0, 1\\], random or none"):
            levels_for(bad, 1)


def test_fast_equals_naive_with_levels_and_the_level_changes_the_codes():
    prior = level_prior()
    labels, levels = np.array([0, 1, 2, 1]), np.array([0.0, 0.4, np.nan, 1.0], np.float32)
    kw = dict(seed=3, batch_size=3, progress=False, temperature=1.1)
    fast = sample_codes(prior, 4, labels, levels=levels, method="fast", **kw)
    np.testing.assert_array_equal(fast, sample_codes(prior, 4, labels, levels=levels, method="naive", **kw))
    other = sample_codes(prior, 4, labels, levels=1.0 - np.nan_to_num(levels), method="fast", **kw)
    assert not np.array_equal(fast, other)  # same seed, other levels: other slices


def test_onnx_sampler_takes_levels_from_its_metadata_and_matches_torch(tmp_path):
    prior = level_prior(1)
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(latent_dim=4, num_embeddings=5, hidden_channels=8, res_channels=4, num_res_layers=1,
                           image_size=(24, 28))).eval()
    export_models(vq, prior, tmp_path)
    s = OnnxSampler(tmp_path, "cpu")
    assert s.level_bins == BINS
    labels, levels = np.array([1, 0, 2]), np.array([0.5, 0.0, 1.0], np.float32)
    kw = dict(seed=2, batch_size=2, temperature=1.0)
    onnx_codes = s.sample_codes(3, labels, levels=levels, **kw)
    np.testing.assert_array_equal(onnx_codes, sample_codes(prior, 3, labels, levels=levels, progress=False, **kw))
    np.testing.assert_array_equal(onnx_codes, s.sample_codes(3, labels, levels=levels, method="naive", **kw))
    # `sample-onnx --label AD --level 0.5` runs with torch made unimportable
    blocker = tmp_path / "no_torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "brainvq.export.sample_onnx", "--model_dir", str(tmp_path), "--n", "2",
                        "--label", "AD", "--level", "0.5", "--provider", "cpu", "--out", str(tmp_path / "s")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["grid.png", "sample_000.png", "sample_001.png"]
    r = subprocess.run([sys.executable, "-m", "brainvq.export.sample_onnx", "--model_dir", str(tmp_path),
                        "--level", "2", "--out", str(tmp_path / "t")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "brainvq sample-onnx: error: bad parameter: level must be a number in [0, 1], random or none; got '2'"]


def test_training_learns_the_conditions_it_sees_and_only_those():
    from brainvq.engine.prior import PriorTrainConfig, fit_prior

    rng = np.random.default_rng(0)
    n = 24
    levels = np.tile([0.0, 1.0], n // 2).astype(np.float32)  # bins 0 and 3 only
    codes = np.where(levels[:, None, None] > 0.5, 3, 0) + rng.integers(0, 2, (n, 4, 4))  # the level sets the codes
    train = CodeSet(codes.astype(np.int64), np.tile([0, 0, 1, 1], n // 4).astype(np.int64), levels)
    cfg = PixelCNNConfig(num_embeddings=5, num_layers=2, hidden_channels=8, code_shape=(4, 4), level_bins=BINS)
    tc = PriorTrainConfig(epochs=2, batch_size=4, lr=1e-2, label_dropout=0.0, level_dropout=0.0, progress=False)
    model = fit_prior(cfg, tc, train, train).model
    seen = set(condition_ids(train.labels, levels, BINS).tolist())
    moved = {i for i in range(cfg.num_conditions) if model.row_bias[i].abs().sum() > 0}
    assert moved == seen  # every (label, level) pair of the data, and nothing else (no dropout here)

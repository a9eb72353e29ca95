"""Shared numpy draw and the PyTorch samplers: fast (cached) and naive agree exactly for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainvq.errors import ConfigError, ModelFileError
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from brainvq.sampling.torch_sampler import draw, sample_codes


def test_draw_inverse_cdf_and_top_k():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 5))
    u = np.array([0.0, 0.05, 0.15, 0.55, 0.999])
    assert draw(logits, u).tolist() == [0, 0, 1, 2, 3]
    # top_k=2 keeps codes 2 and 3 (renormalised 3/7, 4/7)
    assert draw(logits, u, top_k=2).tolist() == [2, 2, 2, 3, 3]
    # low temperature -> argmax; top_k=1 -> argmax
    assert draw(logits, u, temperature=1e-3).tolist() == [3] * 5
    assert draw(logits, u, top_k=1).tolist() == [3] * 5
    assert draw(logits, u).dtype == np.int64
    # never codes from NaN probabilities: a temperature that overflows the logits, or NaN, or a broken prior
    for bad in (0, float("nan"), float("inf"), 1e-310):
        with pytest.raises(ConfigError, match="temperature"):
            draw(logits, u, temperature=bad)
    with pytest.raises(ModelFileError, match="non-finite logits"):
        draw(np.full((5, 4), np.nan), u)


def test_draw_matches_softmax_frequencies():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 6))
    u = rng.random(20000)
    got = np.bincount(draw(np.repeat(logits, len(u), 0), u, temperature=0.7), minlength=6) / len(u)
    p = np.exp(logits[0] / 0.7)
    np.testing.assert_allclose(got, p / p.sum(), atol=0.015)


def tiny_prior(conditional=True, dilation_cycle=(1,), num_layers=3, code_shape=(6, 7),
               position_rank=0) -> GatedPixelCNN:
    torch.manual_seed(0)
    cfg = PixelCNNConfig(num_embeddings=5, num_layers=num_layers, hidden_channels=8, conditional=conditional,
                         code_shape=code_shape, dilation_cycle=dilation_cycle, position_rank=position_rank)
    m = GatedPixelCNN(cfg).eval()
    with torch.no_grad():  # position biases start at zero: randomise them so exactness covers them
        m.row_bias.normal_(0, 0.5)
        m.col_bias.normal_(0, 0.5)
        if m.position_map is not None:
            m.position_map.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("conditional, dilation_cycle, position_rank",
                         [(True, (1,), 0), (False, (1,), 0), (True, (1, 2), 0), (True, (1, 2), 3), (False, (1,), 2)])
def test_fast_equals_naive(conditional, dilation_cycle, position_rank):
    prior = tiny_prior(conditional, dilation_cycle, position_rank=position_rank)
    labels = np.array([0, 1, 2, 1, 0])
    kw = dict(seed=3, batch_size=2, progress=False, temperature=1.3, top_k=4)
    fast = sample_codes(prior, 5, labels, method="fast", **kw)
    naive = sample_codes(prior, 5, labels, method="naive", **kw)
    assert fast.shape == (5, 6, 7) and fast.dtype == np.int64
    np.testing.assert_array_equal(fast, naive)
    assert len(np.unique(fast)) > 1
    # batch size does not change what a given sample draws; a different seed does
    np.testing.assert_array_equal(fast, sample_codes(prior, 5, labels, method="fast", **{**kw, "batch_size": 5}))
    assert not np.array_equal(fast, sample_codes(prior, 5, labels, method="fast", **{**kw, "seed": 4}))


def test_fast_equals_naive_for_the_shipped_dilated_prior():
    """12 layers of the default cycle 1,2,4,8,16 on a 20x24 grid (larger than the largest dilation), so every cached
    tap of the row and step modules is read and checked."""
    from brainvq.pipelines.train_prior import build_parser

    cycle = tuple(int(d) for d in build_parser().get_default("dilation_cycle").split(","))
    assert max(cycle) == 16
    prior = tiny_prior(True, cycle, num_layers=12, code_shape=(20, 24), position_rank=4)
    labels = np.array([0, 1])
    kw = dict(seed=5, batch_size=2, progress=False, temperature=1.5)
    fast = sample_codes(prior, 2, labels, method="fast", **kw)
    np.testing.assert_array_equal(fast, sample_codes(prior, 2, labels, method="naive", **kw))
    assert len(np.unique(fast)) > 1


def test_classifier_free_guidance_is_exact_and_draws_from_the_guided_logits(caplog):
    """guidance w: each code drawn from cond + w (cond - uncond) logits, uncond the same grid with the null label.
    Fast (both halves in one cached batch) equals naive (a full pass of each half per code); w = 0 is plain
    sampling; an unconditional prior ignores it, saying so."""
    prior = tiny_prior(True, (1, 2))
    labels = np.array([0, 1, 0, 1])
    kw = dict(seed=3, batch_size=2, progress=False, guidance=2.0)
    fast = sample_codes(prior, 4, labels, method="fast", **kw)
    np.testing.assert_array_equal(fast, sample_codes(prior, 4, labels, method="naive", **kw))
    plain = sample_codes(prior, 4, labels, seed=3, progress=False)
    np.testing.assert_array_equal(plain, sample_codes(prior, 4, labels, seed=3, progress=False, guidance=0.0))
    assert not np.array_equal(fast, plain)
    # the first code sees only its condition: it is the draw from the guided logits with the call's uniforms
    zeros = torch.zeros(4, *prior.config.code_shape, dtype=torch.long)
    with torch.no_grad():
        cond = prior(zeros, torch.from_numpy(labels)).logits[:, :, 0, 0].double().numpy()
        uncond = prior(zeros, torch.full((4,), prior.config.null_label)).logits[:, :, 0, 0].double().numpy()
    u = np.random.default_rng(3).random((4, *prior.config.code_shape))  # draw.uniforms
    np.testing.assert_array_equal(fast[:, 0, 0], draw(cond + 2.0 * (cond - uncond), u[:, 0, 0]))
    unconditional = tiny_prior(False)
    with caplog.at_level("WARNING"):
        guided = sample_codes(unconditional, 4, 2, seed=3, progress=False, guidance=2.0)
    np.testing.assert_array_equal(guided, sample_codes(unconditional, 4, 2, seed=3, progress=False))
    assert "guidance 2 ignored: this prior is unconditional" in caplog.text
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="guidance must be a finite number >= 0"):
            sample_codes(prior, 2, 0, progress=False, guidance=bad)


def test_sample_codes_rejects_bad_arguments():
    prior = tiny_prior()
    for kw in ({"temperature": 0}, {"top_k": 9}, {"method": "slow"}, {"labels": 7}):
        args = {"labels": 0, **kw}
        with pytest.raises(ConfigError):
            sample_codes(prior, 2, progress=False, **args)

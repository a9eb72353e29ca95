"""The decoder's noise model: a per-pixel scale beside the mean makes it a likelihood p(x | codes), a Gaussian
discretised to the 8-bit grey levels, that generation draws slices from. Real models, real onnxruntime sessions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainvq.engine.vqvae import _loss, evaluate_vqvae
from brainvq.export.onnx_graphs import export_models
from brainvq.export.ort_sampler import OnnxSampler
from brainvq.models.checkpoint import atomic_save, load_model
from brainvq.models.vqvae import SCALE_FLOOR, VQVAE, VQVAEConfig
from brainvq.quality.evaluate import EvalProtocol
from brainvq.quality.losses import discretised_gaussian_nll
from brainvq.sampling.draw import PIXEL_TEMPERATURE, pixel_draw
from brainvq.sampling.generate import decode_codes

LEVELS = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)  # every 8-bit grey level


@pytest.mark.parametrize("mean, scale", [(0.3, 0.02), (0.0004, SCALE_FLOOR), (0.9995, 1e-3), (-0.2, 0.05),
                                         (1.3, 0.1), (0.5, 2.0), (0.12, 0.002)])
def test_the_discretised_likelihood_is_a_distribution_over_the_grey_levels(mean, scale):
    nll = discretised_gaussian_nll(LEVELS, torch.full_like(LEVELS, mean), torch.full_like(LEVELS, scale))
    assert torch.isfinite(nll).all() and (nll >= -1e-6).all()
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-4)


def test_the_discretised_likelihood_matches_the_normal_cdf_in_float64():
    mean, scale = 0.41, 0.013
    nll = discretised_gaussian_nll(LEVELS, torch.full_like(LEVELS, mean), torch.full_like(LEVELS, scale)).flatten()
    cdf = lambda v: 0.5 * math.erfc(-(v - mean) / (scale * math.sqrt(2)))  # noqa: E731  exact in the lower tail
    sf = lambda v: 0.5 * math.erfc((v - mean) / (scale * math.sqrt(2)))  # noqa: E731  and in the upper one
    for k in (0, 80, 90, 104, 105, 106, 120, 130, 200):
        lo = -math.inf if k == 0 else (k - 0.5) / 255
        hi = math.inf if k == 255 else (k + 0.5) / 255
        p = cdf(hi) - cdf(lo) if k / 255 < mean else sf(lo) - sf(hi)
        assert nll[k].item() == pytest.approx(-math.log(p), rel=2e-3, abs=1e-4), k
    far = discretised_gaussian_nll(torch.tensor(0.9), torch.tensor(0.41), torch.tensor(0.013)).item()
    assert 700 < far < math.inf  # 37.5 scales out: finite, and as unlikely as it is (0.5 x 37.5² = 703 nats)


def tiny(**kw) -> VQVAEConfig:
    return VQVAEConfig(**{**dict(latent_dim=8, num_embeddings=16, hidden_channels=16, res_channels=8,
                                 image_size=(32, 32)), **kw})


def test_the_noise_model_learns_the_residuals_spread_and_never_moves_the_mean():
    torch.manual_seed(0)
    m = VQVAE(tiny())
    x = torch.rand(8, 1, 32, 32)
    # the likelihood term alone reaches the noise head and nothing else
    _, _, out, bits = _loss(m, x, 0.5)
    bits.backward()
    moved = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {"noise_head.weight", "noise_head.bias"}
    assert out.loc is not None and torch.equal(out.loc, out.recon)  # the head starts at the mean

    # Data whose residual from the decoder's mean has a known spread that follows the anatomy, which the decoder's
    # features carry: 0.005 to 0.2, log-linear in the mean's logit (so the head can represent it exactly). Only the
    # head trains, as in training proper.
    m.eval()
    images = torch.rand(64, 1, 32, 32)

    def batch(rows, seed):
        with torch.no_grad():
            mean = m(images[rows]).recon
        logit = torch.logit(mean)
        sigma = (0.04 * torch.exp(4 * (logit - logit.median()) / logit.std())).clamp(0.005, 0.2)
        noise = torch.from_numpy(np.random.default_rng(seed).normal(0, 1, mean.shape)).float()
        return images[rows], torch.floor((mean + sigma * noise).clamp(0, 1) * 255 + 0.5) / 255, sigma

    opt = torch.optim.Adam(m.noise_head.parameters(), 3e-2)
    for step in range(400):
        x, target, _ = batch(torch.arange(8 * (step % 8), 8 * (step % 8 + 1)), step)
        loss = discretised_gaussian_nll(target, *m(x)[-2:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, target, sigma = batch(torch.arange(16), 999)
    with torch.no_grad():
        out = m(x)
    ratio = out.scale / sigma
    assert ratio.median().item() == pytest.approx(1, abs=0.2), ratio.median()
    assert np.corrcoef(out.scale.log().flatten(), sigma.log().flatten())[0, 1] > 0.7  # it follows the anatomy
    loud = (sigma > 0.03) & (sigma < 0.15)  # away from the clamps, which the head does not model
    # draws are as far from the mean as the data is
    drawn = torch.from_numpy(pixel_draw(out.loc.numpy(), out.scale.numpy(), seed=0, temperature=1.0))
    assert (drawn - out.recon)[loud].std().item() == pytest.approx((target - out.recon)[loud].std().item(), rel=0.25)


def test_evaluation_reports_bits_per_pixel_only_with_a_noise_scale():
    class Data:  # the two things evaluate_vqvae reads of a SliceDataset
        def __len__(self):
            return 4

        def batch(self, rows):
            return torch.floor(torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 255) / 255, None

    with_scale = evaluate_vqvae(VQVAE(tiny()), Data())
    assert with_scale["pixel_bits"] > 0 and math.isfinite(with_scale["pixel_bits"])
    assert "pixel_bits" not in evaluate_vqvae(VQVAE(tiny(pixel_noise=False)), Data())


def test_pixel_draw_is_seeded_per_slice_on_the_8_bit_grid():
    g = np.random.default_rng(0)
    mean = g.uniform(0.2, 0.8, (5, 1, 24, 28)).astype(np.float32)
    mean[:, :, :, :10] = 0.0015  # background: the location lies in the zero bin
    scale = np.full_like(mean, 0.05)  # wide enough to leave it often, were it drawn
    a = pixel_draw(mean, scale, seed=3, temperature=1.0)
    np.testing.assert_array_equal(a, pixel_draw(mean, scale, seed=3, temperature=1.0))
    # a slice's pixels depend on the seed and its index in the call, not on the batches it was decoded in
    np.testing.assert_array_equal(a[2:], pixel_draw(mean[2:], scale[2:], seed=3, first=2, temperature=1.0))
    assert not np.array_equal(a, pixel_draw(mean, scale, seed=4, temperature=1.0))
    np.testing.assert_array_equal(a * 255, np.round(a * 255))  # 8-bit grey levels
    assert (a[..., :10] == 0).all()  # background stays exactly 0, as in the data
    spread = (a - mean)[..., 10:].std()
    assert spread == pytest.approx(0.05, rel=0.05)
    # the pixel temperature scales the draw as the softmax temperature scales the prior's
    assert (pixel_draw(mean, scale, seed=3, temperature=0.4) - mean)[..., 10:].std() == pytest.approx(0.02, rel=0.1)
    assert pixel_draw(mean, scale, seed=3).std() == pixel_draw(mean, scale, seed=3, temperature=PIXEL_TEMPERATURE).std()
    assert pixel_draw(mean, None, seed=3) is not None
    np.testing.assert_array_equal(pixel_draw(mean, None, seed=3), mean)  # no noise scale: the mean


def test_checkpoints_from_before_the_noise_scale_load_as_they_were_trained(tmp_path):
    old = VQVAE(tiny(pixel_noise=False)).eval()
    config = old.config.to_dict()
    del config["pixel_noise"]  # what a checkpoint written before the field holds
    atomic_save({"kind": "vqvae", "config": config, "model": old.state_dict()}, tmp_path / "old.pt")
    model, ckpt = load_model(tmp_path / "old.pt", "vqvae")
    assert model.config.pixel_noise is False and model.noise_head is None
    codes = np.random.default_rng(0).integers(0, 16, (2, 8, 8))
    with torch.no_grad():
        mean = old.decode_indices(torch.from_numpy(codes)).numpy()
    np.testing.assert_array_equal(decode_codes(model, codes, seed=1), mean)


def _vq(pixel_noise: bool) -> VQVAE:
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(latent_dim=4, num_embeddings=5, hidden_channels=8, res_channels=4, num_res_layers=1,
                           image_size=(24, 28), pixel_noise=pixel_noise)).eval()
    if pixel_noise:
        with torch.no_grad():
            vq.noise_head.weight.normal_(0, 0.3)  # not the flat start: the parity must cover the head
    return vq


def test_onnxruntime_draws_the_same_slices_as_torch(tmp_path):
    from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig

    prior = GatedPixelCNN(PixelCNNConfig(num_embeddings=5, num_layers=2, hidden_channels=8, code_shape=(6, 7)))
    codes = np.random.default_rng(2).integers(0, 5, (5, 6, 7))
    for pixel_noise in (True, False):
        vq = _vq(pixel_noise)
        out = tmp_path / str(pixel_noise)
        export_models(vq, prior.eval(), out)
        s = OnnxSampler(out, "cpu")
        assert s.has_scale is pixel_noise
        with torch.no_grad():
            mean, loc, scale = vq.decode_indices_distribution(torch.from_numpy(codes))
        assert (scale is not None) is pixel_noise
        np.testing.assert_allclose(s.decode(codes, batch_size=2), mean.numpy(), atol=1e-5)  # no seed: the mean
        if pixel_noise:
            got = s.sessions["decoder"].run(["loc", "scale"], {"codes": codes})
            np.testing.assert_allclose(got[0], loc.numpy(), atol=1e-5)
            np.testing.assert_allclose(got[1], scale.numpy(), rtol=1e-4, atol=1e-6)
        drawn = s.decode(codes, batch_size=2, seed=7)
        ref = decode_codes(vq, codes, seed=7, batch_size=3)  # other batches, same slices
        # equal up to a value landing within float rounding of an 8-bit level's boundary
        levels, ref_levels = np.round(drawn * 255), np.round(ref * 255)
        assert np.abs(levels - ref_levels).max() <= 1 and (levels == ref_levels).mean() > 0.999
        if pixel_noise:
            assert np.abs(drawn - mean.numpy()).max() > 2 / 255  # it drew: not the mean rounded
            np.testing.assert_allclose(decode_codes(vq, codes, seed=7, pixel_temperature=0), mean.numpy(), atol=0)
            np.testing.assert_allclose(s.decode(codes, seed=7, pixel_temperature=0), mean.numpy(), atol=1e-5)
        else:
            np.testing.assert_allclose(drawn, mean.numpy(), atol=1e-5)


def test_the_evaluation_draws_at_the_samplers_default_pixel_temperature():
    assert EvalProtocol().pixel_temperature == PIXEL_TEMPERATURE
    with pytest.raises(ValueError, match="pixel_temperature"):
        EvalProtocol(pixel_temperature=-1.0)


def test_the_noise_model_changes_nothing_else_about_a_model():
    # same seed, same weights everywhere but the head: the codes and reconstructions of a VQ-VAE trained with the
    # noise model are those of one trained without it
    torch.manual_seed(0)
    without = VQVAE(tiny(pixel_noise=False))
    after_without = torch.rand(3)
    torch.manual_seed(0)
    with_head = VQVAE(tiny())
    assert torch.equal(torch.rand(3), after_without)  # the RNG is where it would be without the head
    shared = with_head.state_dict()
    for name, tensor in without.state_dict().items():
        assert torch.equal(shared[name], tensor), name

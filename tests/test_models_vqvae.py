import pytest
import torch

from brainvq.models.quantizer import QuantizerConfig, VectorQuantizer
from brainvq.models.vqvae import VQVAE, VQVAEConfig, VQVAEOutput


def tiny(**kw) -> VQVAEConfig:
    base = dict(latent_dim=8, num_embeddings=16, downsample=4, hidden_channels=16, res_channels=8, image_size=(32, 32))
    base.update(kw)
    return VQVAEConfig(**base)


@pytest.mark.parametrize("downsample", [4, 8])
def test_shapes_and_output_type(downsample):
    m = VQVAE(tiny(downsample=downsample))
    x = torch.rand(2, 1, 32, 32)
    out = m(x)
    assert isinstance(out, VQVAEOutput)
    assert out.recon.shape == x.shape and out.recon.min() >= 0 and out.recon.max() <= 1
    assert out.indices.shape == (2, 32 // downsample, 32 // downsample) and out.indices.dtype == torch.int64
    assert m.config.code_shape == (32 // downsample, 32 // downsample)


def test_encode_decode_indices_match_forward():
    m = VQVAE(tiny()).eval()
    x = torch.rand(3, 1, 32, 32)
    idx = m.encode_indices(x)
    with torch.no_grad():
        out = m(x)
        assert torch.equal(idx, out.indices)
        assert torch.allclose(m.decode_indices(idx), out.recon, atol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(downsample=3), "downsample"),
        (dict(num_embeddings=1), "num_embeddings"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(image_size=(30, 32)), "image_size"),
        (dict(beta=-1.0), "beta"),
        (dict(num_res_layers=-1), "num_res_layers"),
        (dict(upsample="bilinear"), "upsample must be one of transpose, resize, got 'bilinear'"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_config_round_trips_through_dict():
    cfg = tiny()
    assert VQVAEConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize("upsample, checkered", [("transpose", True), ("resize", False)])
def test_a_flat_code_grid_decodes_flat_only_without_transposed_convolutions(upsample, checkered):
    """One code everywhere: resize-convolutions make every pixel with the same weights, so the interior is flat;
    stride-2 transposed convolutions make each 2x2 block's pixels with four different sub-kernels, a period-2
    checkerboard (what a full-resolution texture test reads)."""
    torch.manual_seed(0)
    m = VQVAE(tiny(upsample=upsample, pixel_noise=False, image_size=(64, 64))).eval()
    with torch.no_grad():
        img = m.decode_indices(torch.full((1, 16, 16), 3))[0, 0, 20:-20, 20:-20]  # beyond the zero padding's reach
        parity = img[0::2, 0::2].mean() - img[1::2, 1::2].mean()
    assert (abs(parity.item()) > 1e-4) == checkered, parity
    assert ((img.max() - img.min()).item() < 1e-6) == (not checkered)


def test_checkpoints_from_before_the_upsample_field_load_with_transposed_convolutions(tmp_path):
    from brainvq.models.checkpoint import atomic_save, load_model

    old = VQVAE(tiny(upsample="transpose")).eval()
    config = old.config.to_dict()
    del config["upsample"]  # what a checkpoint written before the field holds
    atomic_save({"kind": "vqvae", "config": config, "model": old.state_dict()}, tmp_path / "old.pt")
    model, _ = load_model(tmp_path / "old.pt", "vqvae")
    assert model.config.upsample == "transpose"
    codes = torch.randint(0, 16, (2, 8, 8))
    with torch.no_grad():
        assert torch.equal(model.decode_indices(codes), old.decode_indices(codes))


def test_straight_through_gradient_reaches_the_encoder():
    q = VectorQuantizer(QuantizerConfig(num_embeddings=8, embedding_dim=4, ema=False))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    out.quantized.sum().backward()
    # straight-through: d(quantized)/dz is the identity
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_codebook_gets_gradient_without_ema_and_none_with_ema():
    q = VectorQuantizer(QuantizerConfig(num_embeddings=8, embedding_dim=4, ema=False))
    out = q(torch.randn(2, 4, 3, 3))
    out.loss.backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    qe = VectorQuantizer(QuantizerConfig(num_embeddings=8, embedding_dim=4, ema=True))
    assert not any(p.requires_grad for p in qe.parameters())  # EMA codebook is a buffer


def test_ema_moves_codes_toward_assigned_vectors():
    torch.manual_seed(0)
    q = VectorQuantizer(QuantizerConfig(num_embeddings=4, embedding_dim=2, ema=True, decay=0.5, dead_code_threshold=0))
    q.train()
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    for _ in range(30):
        pts = centres[torch.randint(0, 4, (256,))] + 0.1 * torch.randn(256, 2)
        q(pts.view(16, 16, 2).permute(2, 0, 1).unsqueeze(0))
    # every centre has a code near it
    d = torch.cdist(centres, q.codebook).min(1).values
    assert torch.all(d < 0.5), d


def test_dead_codes_are_restarted_from_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(
        QuantizerConfig(num_embeddings=8, embedding_dim=2, ema=True, decay=0.9, dead_code_threshold=1.0)
    )
    q.train()
    z = torch.randn(1, 2, 8, 8)
    q(z)  # initialises from data
    q.codebook[3] = torch.tensor([1e3, 1e3])  # a code nobody will ever pick
    q.ema_sum[3] = q.codebook[3]
    q.ema_cluster_size[3] = 0.0
    q(z)
    assert q.codebook[3].abs().max() < 100  # re-seeded from a batch vector
    out = q.eval()(z)
    assert 0 < out.usage <= 1 and out.perplexity >= 1

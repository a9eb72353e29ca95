"""Gated PixelCNN: config validation, shapes, causality (no blind spot), cached row/step modules vs full pass."""

from __future__ import annotations

import pytest
import torch

from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig


def tiny(conditional: bool = True, shape=(8, 8), layers: int = 3, k: int = 3, kernel_size: int = 3,
         dilation_cycle=(1,)) -> GatedPixelCNN:
    torch.manual_seed(0)
    cfg = PixelCNNConfig(num_embeddings=k, num_layers=layers, hidden_channels=8, conditional=conditional,
                         kernel_size=kernel_size, code_shape=shape, dilation_cycle=dilation_cycle)
    m = GatedPixelCNN(cfg).eval()
    with torch.no_grad():  # the position biases start at zero; randomise them so every test exercises them
        m.row_bias.normal_(0, 0.5)
        m.col_bias.normal_(0, 0.5)
    return m



def test_position_tables_are_per_label_when_conditional():
    m = tiny(True, shape=(6, 7), k=5)
    assert m.row_bias.shape[0] == m.config.num_classes + 1 and tiny(False).row_bias.shape[0] == 1
    codes = torch.randint(0, 5, (3, 6, 7))
    labels = torch.tensor([0, 1, 2])
    before = m(codes, labels).logits
    with torch.no_grad():
        m.row_bias[1, 3] += 1.0  # AD's table, row 3 only
    after = m(codes, labels).logits
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])  # NC and null untouched
    assert not torch.allclose(after[1, :, 3], before[1, :, 3])
    torch.testing.assert_close(after[1, :, :3], before[1, :, :3])  # rows above don't see row 3's bias

def test_config_validation_and_json_roundtrip():
    cfg = PixelCNNConfig(code_shape=[6, 7], dilation_cycle=[1, 2])
    assert cfg.code_shape == (6, 7) and cfg.dilation_cycle == (1, 2)
    assert PixelCNNConfig(**cfg.to_dict()) == cfg
    assert cfg.dilations[:4] == (1, 2, 1, 2) and PixelCNNConfig(dilation_cycle=(2, 3)).dilations[:3] == (1, 3, 2) and cfg.cache_len == 2
    for bad in ({"num_embeddings": 1}, {"num_layers": 0}, {"kernel_size": 4}, {"code_shape": (0, 3)},
                {"dilation_cycle": ()}, {"dilation_cycle": (1, 0)}, {"dilation_cycle": (1.5,)}):
        with pytest.raises(ValueError):
            PixelCNNConfig(**bad)


@pytest.mark.parametrize("conditional", [True, False])
def test_forward_shape_and_labels(conditional):
    m = tiny(conditional, shape=(6, 7), k=5)
    codes = torch.randint(0, 5, (2, 6, 7))
    out = m(codes, torch.tensor([0, 2])).logits
    assert out.shape == (2, 5, 6, 7)
    if not conditional:  # unconditional models ignore labels
        torch.testing.assert_close(out, m(codes, torch.tensor([1, 1])).logits)


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("kernel_size, dilation_cycle", [(3, (1,)), (5, (1,)), (3, (2, 1, 3))])
def test_causality_no_blind_spot(conditional, kernel_size, dilation_cycle):
    """d logits(p) / d embedding(q) is exactly 0 for q >= p in raster order, non-zero for earlier q (incl. up-right)."""
    h, w = 8, 8
    m = tiny(conditional, shape=(h, w), layers=4, kernel_size=kernel_size, dilation_cycle=dilation_cycle)
    # Batch element p asks about output position p: one backward pass covers every position (samples don't mix).
    codes = torch.randint(0, 3, (1, h, w)).expand(h * w, h, w)
    labels = torch.ones(h * w, dtype=torch.int64)
    store = {}

    def hook(_, __, out):
        out.retain_grad()
        store["emb"] = out

    handle = m.embedding.register_forward_hook(hook)
    logits = m(codes, labels).logits  # (P,K,h,w)
    handle.remove()
    idx = torch.arange(h * w)
    logits[idx, :, idx // w, idx % w].sum().backward()
    grads = store["emb"].grad.abs().sum(-1).flatten(1)  # (P, h*w): |d logits(p) / d emb(q)|
    for p in range(h * w):
        pi, pj = divmod(p, w)
        g = grads[p]
        assert torch.all(g[p:] == 0), f"position {(pi, pj)} sees the present or the future"
        if pj:
            assert g[p - 1] > 0  # left neighbour
        if pi and pj + 1 < w:
            assert g[(pi - 1) * w + pj + 1] > 0  # up-right: the blind spot of the original PixelCNN


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("dilation_cycle", [(1,), (2, 1, 3)])
def test_row_and_step_modules_match_full_forward(conditional, dilation_cycle):
    m = tiny(conditional, shape=(6, 7), k=5, layers=4, dilation_cycle=dilation_cycle)
    cfg = m.config
    b, (h, w) = 3, cfg.code_shape
    codes = torch.randint(0, 5, (b, h, w))
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        full = m(codes, labels).logits  # (B,K,h,w)
        row, step = m.row_module(), m.step_module()
        vcache = torch.zeros(cfg.vcache_shape(b))
        pad = torch.full((b,), cfg.num_embeddings)
        for i in range(h):
            above = codes[:, i - 1] if i else pad[:, None].expand(b, w)
            vrow, vc = row(above, vcache, labels, torch.tensor([i]))
            if i:
                vcache = vc
            hcache, prev = torch.zeros(cfg.hcache_shape(b)), pad
            for j in range(w):
                logits, hcache = step(prev, hcache, vrow[j])
                torch.testing.assert_close(logits, full[:, :, i, j], atol=1e-4, rtol=0)
                prev = codes[:, i, j]

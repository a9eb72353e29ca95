"""Gated PixelCNN: config validation, shapes, causality (no blind spot), cached row/step modules vs full pass."""

from __future__ import annotations

import pytest
import torch

from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig


def tiny(conditional: bool = True, shape=(8, 8), layers: int = 3, k: int = 3, kernel_size: int = 3,
         dilation_cycle=(1,), position_rank: int = 0) -> GatedPixelCNN:
    torch.manual_seed(0)
    cfg = PixelCNNConfig(num_embeddings=k, num_layers=layers, hidden_channels=8, conditional=conditional,
                         kernel_size=kernel_size, code_shape=shape, dilation_cycle=dilation_cycle,
                         position_rank=position_rank)
    m = GatedPixelCNN(cfg).eval()
    with torch.no_grad():  # the position biases start at zero; randomise them so every test exercises them
        m.row_bias.normal_(0, 0.5)
        m.col_bias.normal_(0, 0.5)
        if m.position_map is not None:
            m.position_map.normal_(0, 0.5)
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

def test_position_map_is_per_condition_two_dimensional_and_causal():
    """One cell of AD's 2-D map moves AD's logits at that cell and after it, nothing before it, nothing of the other
    labels; a prior without the field (older checkpoints) builds and draws its other weights as before."""
    m = tiny(True, shape=(6, 7), k=5, position_rank=2)
    assert m.position_map.shape == (m.config.num_conditions, 6, 7, 2)
    codes = torch.randint(0, 5, (3, 6, 7))
    labels = torch.tensor([0, 1, 2])
    before = m(codes, labels).logits
    with torch.no_grad():
        m.position_map[1, 3, 4] += 2.0  # AD's map, one cell
    after = m(codes, labels).logits
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])  # NC and null untouched
    assert not torch.allclose(after[1, :, 3, 4], before[1, :, 3, 4])
    torch.testing.assert_close(after[1, :, :3], before[1, :, :3])  # rows above
    # the codes to its left in the same row stay put: a row table's change would move the whole row
    torch.testing.assert_close(after[1, :, 3, :4], before[1, :, 3, :4])
    def built(rank):
        torch.manual_seed(0)
        return GatedPixelCNN(PixelCNNConfig(num_embeddings=5, code_shape=(6, 7), position_rank=rank)).state_dict()

    mapped = built(2)
    for name, p in built(0).items():
        torch.testing.assert_close(mapped[name], p)
    with pytest.raises(ValueError, match="position_rank"):
        PixelCNNConfig(position_rank=-1)


def test_config_validation_and_json_roundtrip():
    cfg = PixelCNNConfig(code_shape=[6, 7], dilation_cycle=[1, 2])
    assert cfg.code_shape == (6, 7) and cfg.dilation_cycle == (1, 2)
    assert PixelCNNConfig(**cfg.to_dict()) == cfg
    assert (
        cfg.dilations[:4] == (1, 2, 1, 2)
        and PixelCNNConfig(dilation_cycle=(2, 3)).dilations[:3] == (1, 3, 2)
        and cfg.cache_len == 2
    )
    for bad in (
        {"num_embeddings": 1},
        {"num_layers": 0},
        {"kernel_size": 4},
        {"code_shape": (0, 3)},
        {"dilation_cycle": ()},
        {"dilation_cycle": (1, 0)},
        {"dilation_cycle": (1.5,)},
    ):
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
@pytest.mark.parametrize(
    "kernel_size, dilation_cycle, layers, shape",
    [
        (3, (1,), 4, (8, 8)),
        (5, (1,), 4, (8, 8)),
        (3, (2, 1, 3), 4, (8, 8)),
        # the shipped prior: 12 layers of the default cycle on a grid larger than its largest dilation
        (3, (1, 2, 4, 8, 16), 12, (20, 24)),
    ],
)
def test_causality_no_blind_spot(conditional, kernel_size, dilation_cycle, layers, shape):
    """d logits(p) / d embedding(q) is exactly 0 for q >= p in raster order, non-zero for earlier q (incl. up-right)."""
    h, w = shape
    m = tiny(conditional, shape=(h, w), layers=layers, kernel_size=kernel_size, dilation_cycle=dilation_cycle,
             position_rank=2)
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
    dead = 0
    for p in range(h * w):
        pi, pj = divmod(p, w)
        g = grads[p]
        assert torch.all(g[p:] == 0), f"position {(pi, pj)} sees the present or the future"
        if p and g[:p].sum() == 0:  # every unit of the output ReLU is off here (random weights): no gradient at all
            dead += 1
            continue
        if pj:
            assert g[p - 1] > 0  # left neighbour
        if pi and pj + 1 < w:
            assert g[(pi - 1) * w + pj + 1] > 0  # up-right: the blind spot of the original PixelCNN
    assert dead <= 0.01 * h * w


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize(
    "dilation_cycle, layers, shape, position_rank",
    [((1,), 4, (6, 7), 0), ((2, 1, 3), 4, (6, 7), 0), ((2, 1, 3), 4, (6, 7), 3), ((1, 2, 4, 8, 16), 12, (20, 24), 4)]
)
def test_row_and_step_modules_match_full_forward(conditional, dilation_cycle, layers, shape, position_rank):
    m = tiny(conditional, shape=shape, k=5, layers=layers, dilation_cycle=dilation_cycle, position_rank=position_rank)
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


def test_position_baseline_sees_what_position_carries_and_is_chosen_on_validation():
    import numpy as np

    from brainvq.engine.prior import CodeSet, baseline_bits

    rng = np.random.default_rng(0)

    def grids(n, label):  # the code depends on the column (and the label): a histogram per position nails it
        base = (np.arange(8)[None, None, :] + 3 * label) % 6
        noise = rng.random((n, 4, 8)) < 0.1
        return np.where(noise, rng.integers(0, 6, (n, 4, 8)), base).astype(np.int64)

    def split(n):
        return CodeSet(np.concatenate([grids(n, 0), grids(n, 1)]), np.array([0] * n + [1] * n))

    out = baseline_bits(split(40), split(20), num_embeddings=6, val=split(10))
    assert out["prior/uniform_bits"] == pytest.approx(np.log2(6))
    assert out["prior/position_unigram_bits"] < 0.5 * out["prior/unigram_bits"]
    assert out["prior/position_pseudocount"] in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def test_class_figures_read_the_class_a_prior_knows_and_zero_when_it_ignores_it():
    """Grids drawn from a prior under their class are classified by that prior (it is their true distribution, so
    Bayes wins); with every class given the same tables the class carries 0 bits exactly; an unconditional prior
    reports nothing."""
    import numpy as np

    from brainvq.data.codes import CodeSet
    from brainvq.engine.prior import class_figures
    from brainvq.sampling.torch_sampler import sample_codes

    m = tiny(True, shape=(6, 7), k=5, position_rank=2)
    with torch.no_grad():  # classes far apart: each label's tables and map drawn large, and logits sharp
        m.row_bias.normal_(0, 1.5)
        m.position_map.normal_(0, 1.5)
        m.head[3].weight.mul_(30)
    labels = np.array([0, 1] * 12)
    codes = sample_codes(m, len(labels), labels, seed=1, progress=False)
    subjects = tuple(f"s{i % 6}" for i in range(len(labels)))  # 6 subjects of 4 grids, each one class
    data = CodeSet(codes, labels, subjects=subjects)
    got = class_figures(m, data)
    assert got["class_accuracy"] >= 0.9 and got["class_accuracy_subject"] == 1.0 and got["class_margin_bits"] > 2
    with torch.no_grad():  # the class term removed: NC's tables and map for every condition
        for t in (m.row_bias, m.col_bias, m.position_map):
            t.copy_(t[:1].expand_as(t))
        m.label_embedding.weight.copy_(m.label_embedding.weight[:1].expand_as(m.label_embedding.weight))
    blind = class_figures(m, data)
    assert blind["class_margin_bits"] == 0.0 and blind["class_accuracy"] == 0.5  # ties go to the first class
    assert class_figures(tiny(False, shape=(6, 7), k=5), data) == {}

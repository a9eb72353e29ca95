"""The one training loop both models share (``brainvq.engine.loop``): what it owns, checked once for both."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from brainvq.data.codes import CodeSet
from brainvq.engine import loop
from brainvq.engine.prior import PriorTrainConfig, fit_prior
from brainvq.engine.vqvae import TrainConfig
from brainvq.errors import TrainingDiverged
from brainvq.models.checkpoint import load_checkpoint
from brainvq.models.pixelcnn import PixelCNNConfig

MODEL = PixelCNNConfig(num_embeddings=8, num_layers=2, hidden_channels=8, conditional=True, code_shape=(4, 4))
TRAIN = PriorTrainConfig(epochs=2, batch_size=4, lr=3e-3, device="cpu", num_threads=1, progress=False)


def _codes(n: int = 16) -> CodeSet:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 8, size=(n, 1, 1))
    return CodeSet(((base + rng.integers(0, 2, size=(n, 4, 4))) % 8).astype(np.int64), (base[:, 0, 0] % 2))


@pytest.mark.parametrize("config", [TrainConfig, PriorTrainConfig])
@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", float("nan")),
                                         ("max_minutes", -1.0), ("max_minutes", float("nan")),
                                         ("max_minutes", float("inf")), ("seed", -1)])
def test_both_training_configs_reject_the_loops_bad_settings(config, field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


def test_resume_rebuilds_the_model_from_the_checkpoints_config(tmp_path):
    # Before the loops were one, only the VQ-VAE did this; a prior resumed with other flags loaded its weights into
    # a model of the wrong shape.
    codes = _codes()
    killed = fit_prior(MODEL, replace(TRAIN, epochs=1), codes, codes, checkpoint_dir=tmp_path)
    assert load_checkpoint(tmp_path / "last.pt", "prior")["epoch"] == 1
    wider = replace(MODEL, hidden_channels=16)
    resumed = fit_prior(wider, TRAIN, codes, codes, checkpoint_dir=tmp_path, resume=True)
    assert resumed.model.config == MODEL and [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == killed.history[0]  # the checkpoint's epoch, not a repeat
    assert load_checkpoint(tmp_path / "last.pt", "prior")["config"] == MODEL.to_dict()


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    codes = _codes()
    fit_prior(MODEL, replace(TRAIN, epochs=1), codes, checkpoint_dir=tmp_path)
    good = (tmp_path / "last.pt").read_bytes()

    def build(config, device):
        return torch.nn.Linear(1, 1)

    def step(net, model, idx, device, gen):
        loss = net(torch.ones(1, 1)).sum() * float("nan")
        return loop.StepOutput(loss, loss.detach()[None], {})

    spec = loop.TrainSpec("prior", "nan", build, step, ("loss",), lambda *a: {}, lambda m, s: {})
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1 step 0; last good checkpoint kept at"):
        loop.fit(spec, MODEL, TRAIN, len(codes), has_val=False, has_test=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == good


def test_bf16_mixed_precision_trains_the_prior_and_evaluates_in_float32():
    """precision=bf16 runs the forward pass under bfloat16 autocast (other losses than fp32: it is on), learns as
    fp32 does (validation NLL within a few hundredths of a bit on the same data), keeps float32 weights, and the
    config refuses other values in one line."""
    codes = _codes(32)
    fp32 = fit_prior(MODEL, replace(TRAIN, epochs=3), codes, codes)
    bf16 = fit_prior(MODEL, replace(TRAIN, epochs=3, precision="bf16"), codes, codes)
    first = [r.history[0]["prior/train_nll_bits"] for r in (fp32, bf16)]
    assert first[0] != first[1]
    last = [r.history[-1]["prior/val_nll_bits"] for r in (fp32, bf16)]
    assert abs(last[0] - last[1]) < 0.1 and last[1] < bf16.history[0]["prior/val_nll_bits"], last
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        replace(TRAIN, precision="fp16")

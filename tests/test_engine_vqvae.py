"""VQ-VAE training loop on tiny 32×32 data: learning, checkpoint round-trip, resume, time budget, NaN guard."""

import argparse

import numpy as np
import pytest
import torch

from brainvq.data import load_adni
from brainvq.engine.tracker import MemoryTracker
from brainvq.engine.vqvae import TrainConfig, fit_vqvae
from brainvq.errors import ModelFileError, TrainingDiverged
from brainvq.models.checkpoint import atomic_save, load_checkpoint, load_model
from brainvq.models.vqvae import VQVAE, VQVAEConfig

MODEL = VQVAEConfig(
    latent_dim=8, num_embeddings=16, hidden_channels=16, res_channels=8, num_res_layers=1, image_size=(32, 32)
)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, lr=3e-3, seed=0, progress=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def splits(tiny_adni):
    return load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.34, seed=0)


def test_fit_learns_and_logs_namespaced_metrics(splits, tmp_path):
    tracker = MemoryTracker()
    result = fit_vqvae(
        MODEL, cfg(epochs=4), splits.train, splits.val, splits.test, checkpoint_dir=tmp_path, tracker=tracker
    )
    assert len(result.history) == 4
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0]
    for key in (
        "train/loss",
        "train/recon_loss",
        "train/vq_loss",
        "val/ssim",
        "val/psnr",
        "val/perplexity",
        "val/codebook_usage",
    ):
        assert [s for s, _ in tracker.metrics[key]] == [1, 2, 3, 4], key
    assert 0 < result.test_metrics["test/ssim"] <= 1 and result.test_metrics["test/psnr"] > 0
    assert (tmp_path / "last.pt").exists()


def test_checkpoint_round_trip_rebuilds_model_from_its_config(splits, tmp_path):
    result = fit_vqvae(MODEL, cfg(epochs=1), splits.train, checkpoint_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt", "vqvae")
    model = VQVAE(VQVAEConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    x, _ = splits.train.batch(np.arange(2))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x).recon, result.model(x).recon, atol=1e-6)
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"optimizer", "rng", "config", "model"}


def test_resume_continues_without_repeating_epochs_and_matches_uninterrupted(splits, tmp_path):
    full = fit_vqvae(MODEL, cfg(epochs=3), splits.train, splits.val, checkpoint_dir=tmp_path / "full")

    # "killed" after epoch 2: a 2-epoch run leaves the same checkpoint an interrupted 3-epoch run would, except the
    # schedule length, so interrupt a 3-epoch run by a callback that raises after epoch 2 instead.
    class Kill(Exception):
        pass

    def kill_after_two(epoch, metrics):
        if epoch == 2:
            raise Kill

    with pytest.raises(Kill):
        fit_vqvae(
            MODEL, cfg(epochs=3), splits.train, splits.val, checkpoint_dir=tmp_path / "part", callbacks=[kill_after_two]
        )
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 2
    tracker = MemoryTracker()
    resumed = fit_vqvae(
        MODEL, cfg(epochs=3), splits.train, splits.val, checkpoint_dir=tmp_path / "part", resume=True, tracker=tracker
    )
    assert [s for s, _ in tracker.metrics["train/loss"]] == [3]  # only the missing epoch ran
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_training_is_deterministic_on_cpu(splits):
    a = fit_vqvae(MODEL, cfg(epochs=1), splits.train)
    b = fit_vqvae(MODEL, cfg(epochs=1), splits.train)
    assert a.history[0]["train/loss"] == b.history[0]["train/loss"]


def test_time_budget_stops_after_current_step_and_still_evaluates(splits):
    result = fit_vqvae(MODEL, cfg(epochs=50, max_minutes=1e-4), splits.train, splits.val, splits.test)
    assert result.stopped_early and len(result.history) == 1
    assert "test/ssim" in result.test_metrics


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(splits, tmp_path):
    fit_vqvae(MODEL, cfg(epochs=1), splits.train, checkpoint_dir=tmp_path)
    good = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        fit_vqvae(MODEL, cfg(epochs=2, lr=1e30), splits.train, checkpoint_dir=tmp_path, resume=True)
    assert (tmp_path / "last.pt").read_bytes() == good


def test_tampered_and_truncated_checkpoints_give_one_line_errors(splits, tmp_path):
    fit_vqvae(MODEL, cfg(epochs=1), splits.train, checkpoint_dir=tmp_path)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="trunc.pt") as err:
        load_checkpoint(tmp_path / "trunc.pt")
    assert "\n" not in str(err.value)
    ckpt = load_checkpoint(path)
    ckpt["config"] = {**ckpt["config"], "latent_dim": 4}  # weights no longer fit the config
    atomic_save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(ModelFileError, match="does not match"):
        load_model(tmp_path / "tampered.pt")
    # a pickle of an arbitrary object is refused by weights_only loading
    torch.save({"config": {}, "model": {}, "evil": argparse.Namespace(x=1)}, tmp_path / "pickle.pt")
    with pytest.raises(ModelFileError):
        load_checkpoint(tmp_path / "pickle.pt")


def test_train_config_rejects_bad_values():
    for kw in (dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(max_minutes=-1), dict(ssim_weight=2)):
        with pytest.raises(ValueError):
            TrainConfig(**kw)

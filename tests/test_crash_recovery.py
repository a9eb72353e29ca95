"""Crash recovery: SIGKILL mid-epoch then ``--resume true``, partial/corrupt checkpoints, NaN divergence.

Real processes and a real SQLite MLflow store; nothing shipped is mocked. The killed training is a subprocess
(``python -m brainvq.pipelines.train_*``); it is killed once its epoch-1 checkpoint exists, ~25% into epoch 2 (the
sleep is a fraction of epoch 1's own duration, read from that checkpoint), and the test then checks that the
checkpoint still says epoch 1, i.e. the kill did land mid-epoch 2. The resumed and the uninterrupted runs happen in
this process, all single-threaded (``OMP_NUM_THREADS=1``) and with ``max_minutes=0`` (a time budget would make the
learning-rate schedule depend on the clock). CPU training is deterministic, so the resumed run must reproduce the
uninterrupted one bit for bit; the tests allow absolute 1e-6 on weights and relative 1e-6 on metrics.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from brainvq.cli.args import run_main
from brainvq.models.checkpoint import load_checkpoint
from conftest import write_tiny_adni

TOL = 1e-6
VQVAE = ["--image_size", "32x32", "--batch_size", "2", "--hidden_channels", "16", "--latent_dim", "8",
         "--num_embeddings", "16", "--num_res_layers", "1", "--val_fraction", "0.25", "--max_minutes", "0",
         "--device", "cpu"]
PRIOR = ["--epochs", "3", "--batch_size", "2", "--num_layers", "4", "--hidden_channels", "16", "--max_minutes", "0",
         "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Same thread count in the subprocess and here (float reductions depend on it); 1 is also fastest on a busy box.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def adni(tmp_path) -> Path:
    # 240 train slices at batch 2: an epoch (120 steps, ~0.5 s here) is long enough to be killed in the middle.
    return write_tiny_adni(tmp_path / "adni", subjects_per_class=16, slices=10)


def runs(stage: str):
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`brainvq.stage` = '{stage}'", order_by=["attributes.start_time ASC"])


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def kill_mid_epoch_two(cmd: list[str], ckpt_glob: str, root: Path, timeout: float = 240) -> Path:
    """Start ``cmd``, SIGKILL it ~25% into epoch 2, return its checkpoint (which must still hold epoch 1)."""
    log_path = root / "killed.log"  # a file, not a pipe: a full pipe would stall the training it is meant to watch
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not (found := list(root.glob(ckpt_glob))):
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before its first checkpoint:\n"
                            f"{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no epoch-1 checkpoint before the timeout")
            time.sleep(0.01)
        # last.pt appears (atomically, by rename) when epoch 1 is saved; epoch 2 then takes about as long as epoch 1.
        epoch_seconds = float(load_checkpoint(found[0])["elapsed_seconds"])
        time.sleep(0.25 * epoch_seconds)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ckpt = found[0]
    assert load_checkpoint(ckpt)["epoch"] == 1, "the kill landed after epoch 2 was saved, not in the middle of it"
    return ckpt


def error_lines(capsys) -> list[str]:
    """The user-facing error lines (stderr also carries log records)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_vqvae: error:")]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=0, atol=TOL, msg=name)


def check_resumed_run(stage: str, keys: list[str], epochs: int, uninterrupted: list[dict], speed_key: str) -> None:
    killed, resumed = runs(stage)
    client = MlflowClient()
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["brainvq.resumed_from"] == killed.info.run_id
    assert resumed.data.tags["brainvq.resumed_at_epoch"] == "1"
    killed = client.get_run(killed.info.run_id)  # closed by the resumed run: a SIGKILLed process cannot end its run
    assert killed.info.status == "KILLED" and killed.data.tags["brainvq.resumed_by"] == resumed.info.run_id
    assert [s for s, _ in history(killed.info.run_id, keys[0])] == [1]  # epoch 2 died before it was logged
    for key in keys:
        steps, values = zip(*history(resumed.info.run_id, key))
        assert list(steps) == list(range(1, epochs + 1)), key  # every epoch exactly once, at its own step
        np.testing.assert_allclose(values, [h[key] for h in uninterrupted], rtol=TOL, err_msg=key)
    # Epoch 1 was replayed from the checkpoint, not trained again: even its (clock-dependent) speed is the killed run's.
    assert history(resumed.info.run_id, speed_key)[0] == history(killed.info.run_id, speed_key)[0]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_vqvae(adni, tmp_path, capsys):
    from brainvq.cli.configs import vqvae_configs_from_args
    from brainvq.data.splits import load_splits
    from brainvq.engine.vqvae import fit_vqvae
    from brainvq.pipelines.train_vqvae import build_parser, main

    argv = ["--data_dir", str(adni), "--epochs", "3", *VQVAE]
    ckpt = kill_mid_epoch_two([sys.executable, "-m", "brainvq.pipelines.train_vqvae", *argv],
                              ".brainvq/checkpoints/vqvae-*/last.pt", tmp_path)
    # A kill inside atomic_save leaves a partial temp file beside last.pt, never a partial last.pt: plant one.
    partial = ckpt.parent / ".last.pt.k1ll3d.tmp"
    partial.write_bytes(ckpt.read_bytes()[:1000])
    # The same configuration without resume must not overwrite the killed run's checkpoint, nor start a run.
    saved = ckpt.read_bytes()
    assert run_main(main, argv, prog="train_vqvae") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "holds epoch 1 of run" in err[0] and "(RUNNING), which did not finish: continue it " \
        "with resume=true, or delete" in err[0], err
    assert ckpt.read_bytes() == saved and len(runs("train_vqvae")) == 1

    assert run_main(main, argv + ["--resume", "true"]) == 0, capsys.readouterr().err
    assert not partial.exists()  # cleaned up by the next successful save, and never loaded
    final = load_checkpoint(ckpt, "vqvae")
    assert final["epoch"] == 3 and [h["epoch"] for h in json.loads(final["history"])] == [1, 2, 3]

    args = build_parser().parse_args(argv)
    model_cfg, train_cfg = vqvae_configs_from_args(args)
    splits = load_splits(args.data_dir, model_cfg.image_size, args.val_fraction, args.seed, args.max_train_images)
    full = fit_vqvae(model_cfg, replace(train_cfg, num_threads=1, progress=False), splits.train, splits.val)
    assert_same_weights(final["model"], full.model.state_dict())
    check_resumed_run("train_vqvae", ["train/loss", "train/recon_loss", "val/ssim", "val/perplexity"], 3,
                      full.history, "train/images_per_second")
    # resume continues only a run that did not finish: the resumed run FINISHED, so there is nothing to continue.
    assert run_main(main, argv + ["--resume", "true"], prog="train_vqvae") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "which FINISHED after epoch 3; there is nothing to continue" in err[0], err
    assert len(runs("train_vqvae")) == 2


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_prior(adni, tmp_path, capsys):
    from brainvq.cli.configs import prior_configs_from_args
    from brainvq.engine.prior import fit_prior
    from brainvq.pipelines import cleanup, train_prior, train_vqvae
    from brainvq.tracking.codes import prior_codes
    from brainvq.tracking.runs import load_stage_model

    assert run_main(train_vqvae.main, ["--data_dir", str(adni), "--epochs", "1", *VQVAE]) == 0, capsys.readouterr().err
    (vq_run,) = runs("train_vqvae")
    argv = ["--vqvae_run_id", vq_run.info.run_id, *PRIOR]
    ckpt = kill_mid_epoch_two([sys.executable, "-m", "brainvq.pipelines.train_prior", *argv],
                              ".brainvq/checkpoints/prior-*/last.pt", tmp_path)
    # The killed process left its run RUNNING: `brainvq cleanup` sees that the process is gone and closes it.
    (killed,) = runs("train_prior")
    assert killed.info.status == "RUNNING"
    assert run_main(cleanup.main, ["--dry_run", "true"]) == 0
    assert f"run {killed.info.run_id} (train_prior): would close KILLED (its process" in capsys.readouterr().out
    assert MlflowClient().get_run(killed.info.run_id).info.status == "RUNNING"
    assert run_main(cleanup.main, []) == 0
    assert f"run {killed.info.run_id} (train_prior): closed KILLED" in capsys.readouterr().out
    killed = MlflowClient().get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and "brainvq cleanup" in killed.data.tags["brainvq.error"]

    assert run_main(train_prior.main, argv + ["--resume", "true"]) == 0, capsys.readouterr().err
    final = load_checkpoint(ckpt, "prior")
    assert final["epoch"] == 3 and final["vqvae_run_id"] == vq_run.info.run_id

    args = train_prior.build_parser().parse_args(argv)
    vqvae, _, _ = load_stage_model(vq_run.info.run_id, "train_vqvae")
    model_cfg, train_cfg = prior_configs_from_args(args, vqvae.config)
    codes = prior_codes(vq_run.info.run_id, model_cfg.num_embeddings)  # the codes the killed run encoded
    full = fit_prior(model_cfg, replace(train_cfg, num_threads=1, progress=False), codes["train"], codes["val"])
    assert_same_weights(final["model"], full.model.state_dict())
    check_resumed_run("train_prior", ["prior/train_nll_bits", "prior/val_nll_bits"], 3, full.history,
                      "prior/codes_per_second")
    assert len(runs("encode_codes")) == 1  # the resumed run reused the killed run's codes


def test_nan_loss_fails_the_run_keeps_the_checkpoint_and_a_truncated_checkpoint_is_refused(tiny_adni, tmp_path, capsys):
    from brainvq.pipelines.train_vqvae import main

    # lr=1e30 and one step per epoch (4 images, batch 4): epoch 1's only loss is computed before the update, so it
    # is finite and saved; the first step of epoch 2 runs the blown-up weights and the loss is NaN.
    argv = ["--data_dir", str(tiny_adni), "--epochs", "3", *VQVAE, "--lr", "1e30", "--max_train_images", "4",
            "--batch_size", "4"]
    assert run_main(main, argv, prog="train_vqvae") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and re.match(r"train_vqvae: error: loss became (nan|-?inf) at epoch 2 step 1;", err[0]), err
    (ckpt,) = tmp_path.glob(".brainvq/checkpoints/vqvae-*/last.pt")
    assert f"last good checkpoint kept at {ckpt.relative_to(tmp_path)}" in err[0]
    assert load_checkpoint(ckpt)["epoch"] == 1
    (run,) = runs("train_vqvae")
    assert run.info.status == "FAILED" and "loss became" in run.data.tags["brainvq.error"]
    assert [s for s, _ in history(run.info.run_id, "train/loss")] == [1]

    # A truncated last.pt (what a non-atomic writer killed mid-save would leave) is refused, not silently replaced.
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert run_main(main, argv + ["--resume", "true"], prog="train_vqvae") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "cannot resume" in err[0] and str(ckpt.relative_to(tmp_path)) in err[0], err
    assert ckpt.read_bytes() == data[: len(data) // 2]  # left alone for the user to inspect
    assert [r.info.run_id for r in runs("train_vqvae")] == [run.info.run_id]  # refused before a run starts

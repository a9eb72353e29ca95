"""End-to-end: real `mlflow run ... --env-manager local` against a real SQLite store, on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, logged_models

pytestmark = pytest.mark.slow

TINY_VQVAE = ["-P", "image_size=32x32", "-P", "epochs=2", "-P", "batch_size=4", "-P", "hidden_channels=16",
              "-P", "latent_dim=8", "-P", "num_embeddings=16", "-P", "val_fraction=0.34"]


def mlflow_run(entry: str, *params: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local",
           "--experiment-name", "e2e", *params]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def runs(stage: str | None = None):
    client = MlflowClient()
    exp = client.get_experiment_by_name("e2e")
    found = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    return [r for r in found if stage is None or r.data.tags.get("brainvq.stage") == stage]


def test_train_vqvae_entry_point_logs_metrics_artifacts_and_model(tiny_adni):
    proc = mlflow_run("train_vqvae", "-P", f"data_dir={tiny_adni}", *TINY_VQVAE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = runs("train_vqvae")
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for key in ("train/loss", "train/recon_loss", "train/vq_loss", "val/ssim", "val/psnr", "val/perplexity",
                "val/codebook_usage", "test/ssim", "test/psnr"):
        assert key in m, key
    history = MlflowClient().get_metric_history(run.info.run_id, "val/ssim")
    assert sorted(h.step for h in history) == [1, 2]
    p = run.data.params
    assert p["epochs"] == "2" and p["image_size"] == "32x32" and p["num_embeddings"] == "16"
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"reconstructions.png", "config.json", "checkpoint"} <= names
    (model,) = logged_models(run)
    assert model.name == "model" and model.status.name == "READY"
    ckpts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/vqvae.pt" in ckpts


def test_bad_data_dir_fails_the_pipeline_and_its_step_with_one_line_each(tmp_path):
    """`mlflow run .` (entry point main) on a missing data_dir: the train_vqvae step fails in its one line, the pipeline
    ends on one line naming the step and that error (no MLflow traceback), both runs FAILED, nothing registered."""
    missing = tmp_path / "nope"
    proc = mlflow_run("main", "-P", f"data_dir={missing}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    step = [line for line in proc.stderr.splitlines() if line.startswith("train_vqvae: error:")]
    assert len(step) == 1 and str(missing) in step[0], proc.stderr[-2000:]
    main = [line for line in proc.stderr.splitlines() if line.startswith("main: error:")]
    (run,) = runs("train_vqvae")
    assert main == [f"main: error: step train_vqvae failed (run {run.info.run_id}): data_dir does not exist or is not "
                    f"a folder: {missing}"], proc.stderr[-2000:]
    assert run.info.status == "FAILED"
    assert str(missing) in run.data.tags["brainvq.error"]
    assert not logged_models(run)  # nothing half-registered
    (parent,) = runs("main")
    assert parent.info.status == "FAILED" and parent.data.tags["brainvq.error"] == main[0].removeprefix("main: error: ")
    assert MlflowClient().search_registered_models() == []


def test_bad_parameter_value_names_the_parameter(tiny_adni):
    proc = mlflow_run("train_vqvae", "-P", f"data_dir={tiny_adni}", *TINY_VQVAE[:-2], "-P", "val_fraction=1.5")
    assert proc.returncode != 0
    # (mlflow itself echoes the command, which names val_fraction too: look for our one error line)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train_vqvae: error:")]
    assert lines == ["train_vqvae: error: bad parameter: val_fraction must be in [0, 1), got 1.5"], proc.stderr[-2000:]

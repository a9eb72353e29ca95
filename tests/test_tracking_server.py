"""A real `mlflow server` on PostgreSQL with proxied artifact storage: train_vqvae logs to it over HTTP, and its
metrics, artifacts, logged model and a registry version are read back through the REST client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from conftest import POSTGRES_URL, free_port, postgres_admin, requires_postgres, wait_for_url, write_tiny_adni
from tiny_chain import TINY_VQVAE, subprocess_env

pytestmark = [requires_postgres, pytest.mark.postgres, pytest.mark.slow]

STARTUP_TIMEOUT_S = 180  # a fresh database runs MLflow's schema migrations first (~15 s here, more under load)


def _wait_healthy(url: str, proc: subprocess.Popen, log_path) -> None:
    wait_for_url(f"{url}/health", proc, log_path, STARTUP_TIMEOUT_S)


@pytest.fixture
def tracking_server(tmp_path):
    """`mlflow server` on a fresh PostgreSQL database; yields (url, artifact folder); stopped and dropped after."""
    db = f"brainvq_test_srv_{uuid.uuid4().hex[:12]}"
    postgres_admin(f"CREATE DATABASE {db}")
    port, artifacts, log_path = free_port(), tmp_path / "artifacts", tmp_path / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{POSTGRES_URL}/{db}",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # the default 4 workers is 4 copies of MLflow on a 2-core machine
    with open(log_path, "w") as log:
        # its own session: the server starts uvicorn as a child, and stopping the group stops both
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, log_path)
        yield url, artifacts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                # uvicorn's graceful shutdown waits for idle keep-alive connections (this process's REST client holds
                # some); the test server's state does not matter, so don't wait long for it
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        postgres_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_train_vqvae_logs_to_a_postgres_backed_tracking_server(tracking_server, tmp_path, monkeypatch):
    url, artifacts = tracking_server
    data = write_tiny_adni(tmp_path / "adni")
    proc = subprocess.run([sys.executable, "-m", "brainvq.pipelines.train_vqvae", "--data_dir", str(data),
                           *TINY_VQVAE, "--epochs", "2"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=subprocess_env(url, tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    client = MlflowClient()  # REST from here on
    (run,) = client.search_runs(["0"], "tags.`brainvq.stage` = 'train_vqvae'")
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    for key in ("train/loss", "val/ssim", "test/ssim", "test/psnr", "data/train_images"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/ssim")] == [1, 2]
    assert run.data.params["epochs"] == "2" and run.data.params["num_embeddings"] == "8"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"reconstructions.png", "config.json", "checkpoint"} <= names
    config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read())
    assert config["model"]["num_embeddings"] == 8
    # the server proxied the uploads into --artifacts-destination
    assert list(artifacts.rglob("vqvae.pt")), "checkpoint not stored under --artifacts-destination"

    # the model registry lives on the same server: register the run's model and read the alias back
    from brainvq.tracking.registry import register_run

    reg = register_run("vqvae", run.info.run_id)
    assert reg.promoted and reg.version == "1"
    champion = client.get_model_version_by_alias("brainvq-vqvae", "champion")
    assert champion.run_id == run.info.run_id and float(champion.tags["test/ssim"]) == pytest.approx(
        run.data.metrics["test/ssim"])

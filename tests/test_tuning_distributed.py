"""Several `tune` worker processes sharing one study on PostgreSQL (Optuna and MLflow both on PostgreSQL, since
SQLite locks under concurrent writers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import POSTGRES_URL, postgres_admin, requires_postgres

pytestmark = [requires_postgres, pytest.mark.postgres, pytest.mark.slow]

TINY = ["--image_size", "32x32", "--max_train_images", "16", "--val_fraction", "0.34", "--device", "cpu"]


@pytest.fixture
def pg(monkeypatch):
    """Fresh databases for Optuna and MLflow, dropped afterwards; yields (optuna_url, mlflow_url)."""
    import mlflow
    import optuna

    suffix = uuid.uuid4().hex[:12]
    dbs = [f"brainvq_test_opt_{suffix}", f"brainvq_test_mlf_{suffix}"]
    for db in dbs:
        postgres_admin(f"CREATE DATABASE {db}")
    urls = [f"{POSTGRES_URL}/{db}" for db in dbs]
    try:
        # Create both schemas once here: N workers creating them at the same moment would race.
        optuna.storages.RDBStorage(urls[0]).engine.dispose()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", urls[1])
        mlflow.tracking.MlflowClient(urls[1]).search_experiments()
        yield urls[0], urls[1]
    finally:
        for db in dbs:
            postgres_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _worker(tiny_adni, storage: str, study: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "brainvq.tuning.tune", "--storage", storage, "--study_name", study,
           "--data_dir", str(tiny_adni), *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: don't let 3 workers oversubscribe them
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout: float = 150) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-3000:]


def _children(mlflow_url: str, study: str):
    import mlflow

    client = mlflow.tracking.MlflowClient(mlflow_url)
    return client.search_runs(["0"], filter_string=f"tags.`optuna.study_name` = '{study}' and "
                                                   "tags.`brainvq.stage` = 'tune_trial'", max_results=1000)


def test_three_workers_share_one_study(pg, tiny_adni):
    import optuna
    from optuna.trial import TrialState

    storage, mlflow_url = pg
    study_name = f"dist-{uuid.uuid4().hex[:8]}"
    small = ["--space", _space(tiny_adni.parent)]
    procs = [_worker(tiny_adni, storage, study_name, "--n_trials", "6", "--epochs_per_trial", "2", "--seed", str(i),
                     *small) for i in range(3)]
    _finish(procs)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none twice, none extra
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    children = _children(mlflow_url, study_name)
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == list(range(6))
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    assert len({c.data.tags["mlflow.parentRunId"] for c in children}) <= 3  # one parent run per worker


def _space(folder) -> str:
    path = folder / "space.yaml"
    path.write_text("latent_dim: [8, 16]\nnum_embeddings: [32, 64]\nhidden_channels: [16]\n")
    return str(path)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number: stable since 2.8
def test_killed_worker_trial_is_failed_and_retried(pg, tiny_adni):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    storage, mlflow_url = pg
    study_name = f"kill-{uuid.uuid4().hex[:8]}"
    hb = ["--heartbeat_interval", "1", "--grace_period", "3", "--space", _space(tiny_adni.parent)]
    victim = _worker(tiny_adni, storage, study_name, "--n_trials", "1", "--epochs_per_trial", "500", *hb)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name=study_name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # study not created yet
            running = []
        if running:
            break
        time.sleep(0.5)
    assert running, "the worker never started a trial"
    time.sleep(1.5)  # mid-trial, with at least one heartbeat written
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    time.sleep(3.5)  # past the grace period
    _finish([_worker(tiny_adni, storage, study_name, "--n_trials", "1", "--epochs_per_trial", "1", *hb)])

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[0].state == TrialState.FAIL
    retry = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry[0].params == trials[0].params
    # The dead worker's child run is closed too, not left RUNNING.
    runs = {int(c.data.tags["optuna.trial_number"]): c for c in _children(mlflow_url, study_name)}
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["optuna.state"] == "FAIL"
    assert runs[retry[0].number].data.tags["optuna.retry_of"] == "0"

"""Shared fixtures: tiny ADNI-layout folders written with PIL, isolated caches and MLflow stores."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# scripts/test.sh runs the suite in pytest-xdist workers side by side: each worker's torch (and the commands it starts)
# gets its share of the cores, not all of them, so two workers never fight over one core's threads. Cores are counted
# by brainvq.cpus, as configure_threads counts them (the CPUs this process may run on); that module is standard library
# only, because torch must first be imported after OMP_NUM_THREADS is set.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    from brainvq.cpus import usable_cpus  # standard library only: torch is not imported yet

    _CORES = usable_cpus()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // _WORKERS)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end files (marked ``slow``) first: under xdist's ``--dist loadfile`` each worker takes whole files in
    this order, so the short files fill in around the long ones instead of one long file running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order kept within each group


# How dark a blob's centre is made (a share of its radius), per class folder name: atrophy, milder in MCI.
HOLES = {"AD": 0.35, "MCI": 0.2}


def write_tiny_adni(root: Path, size=(32, 32), subjects_per_class: int = 3, slices: int = 4, test_subjects: int = 1,
                    seed: int = 0, classes=("AD", "NC")) -> Path:
    """Blob images in ``root/{train,test}/<class>/<subject>_<slice>.png`` for each of ``classes`` (default AD and
    NC); AD blobs have a dark centre (atrophy), MCI blobs a smaller one (:data:`HOLES`), other classes none."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for split, n_subj in (("train", subjects_per_class), ("test", test_subjects)):
        for label in classes:
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for s in range(n_subj):
                subject = f"{split}{label}{s:03d}"
                r = rng.uniform(0.3, 0.4) * min(h, w)
                for k in range(slices):
                    rr = r * (1 - 0.04 * k)
                    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < rr**2
                    img = disc * (0.7 + 0.2 * np.sin(xx / 3.0 + s))
                    if label in HOLES:
                        img = img * ~(((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (HOLES[label] * rr) ** 2)
                    img = np.clip(img + rng.normal(0, 0.02, img.shape) * disc, 0, 1)
                    Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{subject}_{k:03d}.png")
    return root


@pytest.fixture
def tiny_adni(tmp_path: Path) -> Path:
    return write_tiny_adni(tmp_path / "adni")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once per session: creating one runs MLflow's schema migrations (about 2 s
    on 2 cores), which each test that touches MLflow would otherwise pay again."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the schema and the Default experiment
    return path


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path):
    """Each test gets its own brainvq cache, MLflow store (a copy of the empty one) and working folder."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db, db:
        # MLflow fixed the Default experiment's artifact folder when it made the store: point it at this test's,
        # where a store made here would have put it (./mlruns)
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(tmp_path / "mlruns" / "0"),))
    monkeypatch.setenv("BRAINVQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(tmp_path)
    yield


def logged_models(run):
    """MLflow 3 logs models as LoggedModel entities linked to their source run, not as run artifacts."""
    import mlflow

    return mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )


def free_port() -> int:
    """A loopback TCP port that nothing listens on now (for a test's own server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_url(url: str, proc, log_path: Path, timeout_s: float, interval_s: float = 0.5) -> None:
    """Wait until ``url`` answers (HTTP 200) while the server process ``proc`` runs; fail with the tail of its log
    when it exits or ``timeout_s`` passes first."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            pytest.fail(f"{url} did not answer within {timeout_s} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(interval_s)


def postgres_available(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


requires_postgres = pytest.mark.skipif(
    not postgres_available(), reason="PostgreSQL is not reachable on 127.0.0.1:5432 (distributed tests need it)"
)


POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3


def postgres_admin(sql: str) -> None:
    """Run one statement as the postgres superuser on the ``test`` database (CREATE/DROP DATABASE for a test)."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()

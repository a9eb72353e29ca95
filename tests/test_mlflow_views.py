"""What a person sees in the MLflow UI: per-epoch pictures (image slider), system metrics of training runs, and
Optuna's plots drawn in the artifact pane of a real `mlflow server`, opened in a headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import free_port, wait_for_url, write_tiny_adni
from tiny_chain import tiny_store, train_prior, train_vqvae, use_store

pytestmark = pytest.mark.slow


def _browser() -> tuple[str, str] | str:
    """Paths of Chromium and its driver, or why the browser test cannot run (.ci/run installs them)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        return "headless Chromium is not installed (apt-get install chromium chromium-driver)"
    return browser, driver


class UIServer:
    """A real `mlflow server` (its own SQLite store, proxied artifacts) on a free loopback port. It starts with the
    module, so its start-up (seconds of imports and migrations) overlaps the training runs; ``url()`` waits for it."""

    def __init__(self, root: Path) -> None:
        self.log_path, port = root / "server.log", free_port()
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'ui.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
        # No GenAI job runner: it starts seven worker processes, which the UI does not need.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "w") as log:  # its own session: stopping the group stops uvicorn too
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._url = f"http://127.0.0.1:{port}"

    def url(self, timeout_s: float = 120) -> str:
        wait_for_url(f"{self._url}/health", self.proc, self.log_path, timeout_s, interval_s=0.3)
        return self._url

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """The module's UIServer, or why there is none (no browser to look at it)."""
    if isinstance(_browser(), str):
        yield None
        return
    server = UIServer(tmp_path_factory.mktemp("ui"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ui_server):
    """A VQ-VAE trained 3 epochs and a prior trained 2 epochs on its codes, as real CLI runs in one SQLite store
    (while the UI server starts)."""
    root = tmp_path_factory.mktemp("views")
    data = write_tiny_adni(root / "adni")
    with tiny_store(root) as uri, pytest.MonkeyPatch.context() as mp:
        # MLflow publishes a sample only after a full interval: these runs last seconds, not the minutes the default
        # (stage.SYSTEM_METRICS_INTERVAL_S, checked in test_system_metrics_are_on_for_training_stages_only) is for
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
        vq = train_vqvae(data, epochs=3)
        prior = train_prior(vq, epochs=2)
    return uri, root, vq, prior


@pytest.fixture
def client(chain, isolated_env, monkeypatch):
    uri, root, _, _ = chain
    use_store(monkeypatch, uri, root)
    return MlflowClient()


def _stepped_images(client, run_id: str, key: str) -> dict[int, np.ndarray]:
    """The full-resolution pictures ``mlflow.log_image(key=..., step=...)`` stored for ``key``, by step."""
    stem = key.replace("/", "~")  # MLflow's file-name form of a key
    out = {}
    for art in client.list_artifacts(run_id, "images"):
        name = Path(art.path).name
        if name.startswith(f"{stem}+step+") and name.endswith(".png") and "+compressed" not in name:
            step = int(name.split("+step+")[1].split("+")[0])
            assert step not in out, f"two {key} pictures at step {step}"
            out[step] = np.asarray(Image.open(client.download_artifacts(run_id, art.path)))
    return out


def test_training_runs_log_pictures_per_epoch_and_no_loss_curves(client, chain):
    from brainvq.data.images import image_grid
    from brainvq.engine.prior import PREVIEW_PER_ROW, sample_rows
    from brainvq.engine.vqvae import PREVIEW_IMAGES, reconstruction_rows
    from brainvq.stages.vqvae import vqvae_run_splits
    from brainvq.tracking.runs import load_stage_model

    _, _, vq_id, prior_id = chain
    vq_run = client.get_run(vq_id)
    assert vq_run.data.tags.get("mlflow.loggedImages") == "True"  # the run page shows its image grid
    recon = _stepped_images(client, vq_id, "val/reconstructions")
    # the slider's steps: the untrained model, the last epoch, and epochs between as far as the pictures' share of
    # the time allows (the tiny epochs here last about as long as logging a picture: see loop.PREVIEW_SHARE)
    assert {0, 3} <= set(recon) <= {0, 1, 2, 3}
    # The last picture is the finished model's reconstructions of 4 validation slices, pixel for pixel (±1 level:
    # training ran channels-last, the reloaded model does not).
    vqvae, _, _ = load_stage_model(vq_id, "train_vqvae")
    val = vqvae_run_splits(vq_run.data.params).val
    want = image_grid(reconstruction_rows(vqvae, val, PREVIEW_IMAGES))
    assert recon[3].shape == want.shape and np.abs(recon[3].astype(int) - want).max() <= 1
    assert not np.array_equal(recon[0], recon[3])  # training changed the model, and so the picture

    samples = _stepped_images(client, prior_id, "prior/samples")
    assert {0, 2} <= set(samples) <= {0, 1, 2}
    prior, _, prior_run = load_stage_model(prior_id, "train_prior")
    assert prior.config.conditional
    want = image_grid(sample_rows(prior, vqvae, PREVIEW_PER_ROW, int(prior_run.data.params["seed"])))
    assert want.shape == (2 * (32 + 2) + 2, PREVIEW_PER_ROW * (32 + 2) + 2)  # one row per class, 2 slices each
    np.testing.assert_array_equal(samples[2], want)

    # The per-epoch curves are MLflow's metric charts: no hand-drawn copies among the artifacts.
    for run_id, picture in ((vq_id, "reconstructions.png"), (prior_id, "samples.png")):
        names = {a.path for a in client.list_artifacts(run_id)}
        assert picture in names and "loss_curve.png" not in names


def test_training_runs_record_system_metrics(client, chain):
    _, _, vq_id, prior_id = chain
    for run_id in (vq_id, prior_id):
        metrics = client.get_run(run_id).data.metrics
        assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
        assert "system/system_memory_usage_megabytes" in metrics
        history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        assert history and all(0 <= m.value <= 100 * os.cpu_count() for m in history)
    # Other stages keep MLflow's default (off): encode_codes ran nested inside train_prior.
    (encode,) = client.search_runs([client.get_run(vq_id).info.experiment_id],
                                   "tags.`brainvq.stage` = 'encode_codes'")
    assert not [k for k in encode.data.metrics if k.startswith("system/")]


def test_system_metrics_are_on_for_training_stages_only(monkeypatch):
    from brainvq.tracking.stage import SYSTEM_METRICS_INTERVAL_S, system_metrics

    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    assert system_metrics("train_vqvae") is True and system_metrics("train_prior") is True
    assert float(os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"]) == SYSTEM_METRICS_INTERVAL_S
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "7")
    assert system_metrics("train_vqvae") is True and os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] == "7"
    assert system_metrics("encode_codes") is None  # MLflow's default: off
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    assert system_metrics("train_vqvae") is None  # the user's switch wins


def test_previews_leave_training_unchanged(client, chain):
    """A prior trained with previews (given its VQ-VAE) ends with the same weights as one trained without."""
    import torch

    from brainvq.engine.prior import PriorTrainConfig, fit_prior
    from brainvq.engine.tracker import MemoryTracker
    from brainvq.models.pixelcnn import PixelCNNConfig
    from brainvq.tracking.codes import logged_codes
    from brainvq.tracking.runs import load_stage_model

    _, _, vq_id, _ = chain
    vqvae, _, _ = load_stage_model(vq_id, "train_vqvae")
    codes = logged_codes(vq_id, vqvae.config.num_embeddings)
    cfg = PixelCNNConfig(num_embeddings=vqvae.config.num_embeddings, code_shape=vqvae.config.code_shape,
                         num_layers=2, hidden_channels=8)
    tc = PriorTrainConfig(epochs=3, batch_size=4, progress=False, device="cpu")
    runs = []
    for decoder in (vqvae, None):
        tracker = MemoryTracker()
        result = fit_prior(cfg, tc, codes["train"], codes["val"], None, tracker=tracker, vqvae=decoder)
        runs.append((result.model.state_dict(), tracker))
    (with_pics, t1), (without, t2) = runs
    steps = [s for s, _ in t1.images["prior/samples"]]
    assert steps[0] == 0 and steps[-1] == 3 and steps == sorted(set(steps)) and not t2.images
    assert all(torch.equal(with_pics[k], without[k]) for k in with_pics)
    assert t1.metrics["prior/val_nll_bits"] == t2.metrics["prior/val_nll_bits"]


def test_slow_pictures_are_thinned_to_a_share_of_the_training_time():
    """Pictures at every cadence point when they are cheap; only the first and last when each costs more than
    loop.PREVIEW_SHARE of the training time (a prior's samples on a CPU)."""
    import torch

    from brainvq.engine import loop
    from brainvq.engine.prior import PriorTrainConfig
    from brainvq.engine.tracker import MemoryTracker

    def step(net, model, idx, device, gen):
        time.sleep(0.03)  # 0.12 s of "training" per epoch
        loss = (net(torch.ones(1, 1)) ** 2).sum()
        return loop.StepOutput(loss, loss.detach()[None], {})

    def spec(seconds: float) -> loop.TrainSpec:
        def preview(model):
            time.sleep(seconds)
            return {"p": np.zeros((2, 2), np.uint8)}

        return loop.TrainSpec("prior", "p", lambda config, device: torch.nn.Linear(1, 1), step, ("loss",),
                              lambda *a: {}, lambda m, split: {}, preview=preview)

    train = PriorTrainConfig(epochs=4, batch_size=1, device="cpu", num_threads=1, progress=False)
    logged = {}
    for seconds in (0.0, 0.3):
        tracker = MemoryTracker()
        loop.fit(spec(seconds), None, train, 4, has_val=False, has_test=False, tracker=tracker)
        logged[seconds] = [s for s, _ in tracker.images["p"]]
    assert logged == {0.0: [0, 1, 2, 3, 4], 0.3: [0, 4]}


def _tiny_study() -> optuna.Study:
    """A real study over the sweep's parameter names, with intermediate values (no training: the plots are what is
    tested)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        d = trial.suggest_categorical("latent_dim", [8, 16])
        k = trial.suggest_categorical("num_embeddings", [32, 64])
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        for epoch in (1, 2):
            trial.report(0.3 * epoch + d / 100 + k / 1000, epoch)
        return 0.6 + d / 100 + k / 1000 + lr

    study.optimize(objective, n_trials=4)
    return study


def test_sweep_plots_are_self_contained_html(tmp_path):
    from brainvq.tuning import plots

    out = tmp_path / "plots"
    out.mkdir()
    files, _ = plots.save_plots(_tiny_study(), out, "ssim", "val/ssim")
    assert {f.name for f in files} >= {"optimization_history.html", "contour_latent_dim_num_embeddings.html"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)  # no plotly.min.js beside
    for f in files:
        html = f.read_text()
        assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I), f"{f.name} loads a script from elsewhere"
        assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js itself is inline


def test_sweep_plot_draws_in_the_mlflow_ui_artifact_pane(ui_server, tmp_path, monkeypatch):
    """The UI loads an HTML artifact into a sandboxed iframe from a blob: URL, where a relative script path cannot
    load: the plot must carry plotly.js itself. Plotly draws ``svg.main-svg`` once it has run."""
    import mlflow
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from brainvq.tracking.stage import stage_run
    from brainvq.tuning import plots

    browser = _browser()
    if isinstance(browser, str):
        pytest.skip(browser)
    url = ui_server.url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with stage_run("tune", {"study_name": "ui"}, run_name="tune-ui") as run:  # the sweep's parent run, as tune opens it
        plots.log_summary(_tiny_study(), "ssim", "val/ssim", tmp_path / "summary")
    exp, run_id = run.info.experiment_id, run.info.run_id
    assert mlflow.get_run(run_id).info.status == "FINISHED"

    options = webdriver.ChromeOptions()
    options.binary_location = browser[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root
    driver = webdriver.Chrome(options=options, service=Service(browser[1]))  # the Debian driver: nothing downloaded
    try:
        driver.get(f"{url}/#/experiments/{exp}/runs/{run_id}/artifacts/optimization_history.html")
        wait = WebDriverWait(driver, 60, poll_frequency=0.25)
        frame = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"))[0]
        assert frame.get_attribute("src").startswith("blob:")  # how the UI shows HTML (see tuning/plots.py)
        driver.switch_to.frame(frame)
        svg = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.main-svg"))
        assert svg[0].size["width"] > 100 and svg[0].size["height"] > 100  # drawn, not a zero-size leftover
        assert "Optimization History" in driver.find_element(By.CSS_SELECTOR, ".gtitle").text
    finally:
        driver.quit()

"""The sampler as an MLflow model (issue 16): the export_onnx run logs a pyfunc ``sampler`` (models from code, no
pickle), ``brainvq-sampler`` versions are that model, and it loads with ``mlflow.pyfunc.load_model``, serves with
``mlflow models serve`` (a real server on a loopback port, with torch made unimportable), loads with
``brainvq.load_sampler`` (also in a fresh venv without torch), and gives the images ``brainvq sample-onnx`` writes.
``models:/`` URIs also reach the torch path (``load_stage_model``). Real tiny models, real SQLite store."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from test_onnx import IMAGE, _finished_run, tiny_models

from brainvq.data.images import to_uint8
from brainvq.errors import RunError
from brainvq.export.api import decode_png_base64, png_base64
from brainvq.tracking.registry import CHAMPION, register_run
from conftest import REPO, free_port, wait_for_url
from tiny_chain import tiny_store

CHAMPION_URI = f"models:/brainvq-sampler@{CHAMPION}"
ASK = {"n": 3, "label": "AD", "seed": 5}  # the request every test makes: same seed, same slices


@dataclass
class Store:
    uri: str
    root: Path
    prior: str  # train_prior run
    export: str  # export_onnx run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A tiny VQ-VAE and prior as FINISHED runs, exported by the real export_onnx stage (which logs the pyfunc
    model) and registered as brainvq-sampler version 1, the champion."""
    from brainvq.export.export_onnx import export_onnx
    from brainvq.tracking.runs import resolve_run

    root = tmp_path_factory.mktemp("serving")
    with tiny_store(root) as uri:
        vq, prior = tiny_models()
        vq_id = _finished_run("train_vqvae", {"kind": "vqvae", "config": vq.config.to_dict(),
                                              "model": vq.state_dict()}, root / "a" / "vqvae.pt")
        px_id = _finished_run("train_prior", {"kind": "prior", "config": prior.config.to_dict(),
                                              "model": prior.state_dict(), "vqvae_run_id": vq_id},
                              root / "b" / "prior.pt")
        MlflowClient().log_metric(px_id, "prior/val_nll_bits", 2.5)  # what the registry ranks a sampler by
        assert export_onnx(["--prior_run_id", px_id]) == 0
        export = resolve_run("latest", "export_onnx").info.run_id
        assert register_run("sampler", export).version == "1"
    return Store(uri, root, px_id, export)


@pytest.fixture
def at_store(store, isolated_env, monkeypatch) -> Store:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("BRAINVQ_CACHE", str(store.root / "cache"))
    return store


def test_the_champion_is_a_pyfunc_model_from_code_with_torch_free_requirements(at_store):
    import mlflow

    client = MlflowClient()
    version = client.get_model_version_by_alias("brainvq-sampler", CHAMPION)
    logged = mlflow.get_logged_model(version.source.removeprefix("models:/"))  # the version's source: the model
    assert version.run_id == logged.source_run_id == at_store.export and logged.name == "sampler"
    folder = Path(mlflow.artifacts.download_artifacts(CHAMPION_URI))
    meta = mlflow.models.Model.load(folder)
    flavor = meta.flavors["python_function"]
    assert Path(flavor["model_code_path"]).name == "pyfunc_sampler.py" and "python_model" not in flavor  # no pickle
    assert not list(folder.rglob("*.pkl"))
    assert sorted(p.name for p in (folder / "artifacts").iterdir()) == [
        "decoder.onnx", "prior.onnx", "prior_row.onnx", "prior_step.onnx"]
    assert [p.name for p in meta.signature.params.params] == [
        "n", "label", "seed", "temperature", "top_k", "level", "pixel_temperature", "guidance"]
    assert (folder / "serving_input_example.json").is_file()
    reqs = (folder / "requirements.txt").read_text()
    assert not re.search(r"^(torch|torchvision|torchmetrics)\b", reqs, re.M), reqs
    assert "onnxruntime-gpu==" in reqs and "\nonnxruntime==" in reqs and "platform_system" in reqs, reqs
    # the brainvq code the model carries is the torch-free sampler's, nothing more
    code = sorted(str(p.relative_to(folder / "code")) for p in (folder / "code").rglob("*.py"))
    assert "brainvq/export/ort_sampler.py" in code and "brainvq/export/api.py" in code, code
    assert not [c for c in code if c.startswith(("brainvq/models", "brainvq/engine", "brainvq/tracking"))], code
    for path in (folder / "code").rglob("*.py"):
        assert not re.search(r"^\s*(import|from) torch\b", path.read_text(), re.M), path


def test_the_markers_are_pyprojects():
    """The pyfunc requirements choose onnxruntime-gpu or onnxruntime by pyproject.toml's own markers."""
    import tomllib

    from brainvq.export.mlflow_export import GPU_WHEELS, NO_GPU_WHEELS

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    markers = {d.split(";")[0].split(">")[0].strip(): d.split(";", 1)[1].strip() for d in deps if ";" in d}
    norm = lambda m: m.replace('"', "'")  # noqa: E731
    assert norm(markers["onnxruntime-gpu"]) == GPU_WHEELS and norm(markers["onnxruntime"]) == NO_GPU_WHEELS


def test_the_front_door_stays_light():
    """``import brainvq`` and the notebook API import neither torch nor mlflow (mlflow only to resolve a URI)."""
    code = ("import sys, brainvq, brainvq.export.api; assert callable(brainvq.load_sampler); "
            "bad = [m for m in ('torch', 'mlflow') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_pyfunc_and_load_sampler_give_the_slices_of_sample_onnx(at_store, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    from brainvq import load_sampler
    from brainvq.export.sample_onnx import sample

    out = tmp_path / "cli"
    assert sample(["--model_dir", CHAMPION_URI, "--n", "3", "--label", "AD", "--seed", "5", "--provider", "cpu",
                   "--out", str(out)]) == 0
    written = [(out / f"sample_{i:03d}.png").read_bytes() for i in range(3)]

    model = mlflow.pyfunc.load_model(CHAMPION_URI, model_config={"provider": "cpu"})
    pngs = model.predict(None, params=ASK)
    assert [base64.b64decode(p) for p in pngs] == written  # byte for byte the files sample-onnx writes
    slices = decode_png_base64(pngs)
    assert slices.shape == (3, *IMAGE) and slices.dtype == np.uint8 and slices.std() > 0
    assert not np.array_equal(decode_png_base64(model.predict(None, params={**ASK, "seed": 6})), slices)
    assert len(model.predict(None)) == 16  # the signature's defaults (sample-onnx's)
    with pytest.raises(MlflowException, match=r"^bad parameter: temperature must be a finite number > 0"):
        model.predict(None, params={**ASK, "temperature": -1.0})

    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{at_store.export}/onnx"))
    for spec in (CHAMPION_URI, "models:/brainvq-sampler/1", f"runs:/{at_store.export}/onnx",
                 f"runs:/{at_store.export}/sampler", str(folder)):
        images = load_sampler(spec, provider="cpu").sample(3, label="AD", seed=5)
        assert images.shape == (3, 1, *IMAGE) and images.dtype == np.float32, spec
        np.testing.assert_array_equal(to_uint8(images), slices, err_msg=spec)
    assert png_base64(images) == pngs


def _post(url: str, params: dict) -> tuple[int, dict]:
    body = json.dumps({"inputs": [], "params": params}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_mlflow_models_serve_answers_with_png_slices_without_torch(at_store, tmp_path):
    # a torch that cannot be imported, first on the server's path: the served sampler must never need it
    (tmp_path / "notorch" / "torch").mkdir(parents=True)
    (tmp_path / "notorch" / "torch" / "__init__.py").write_text("raise ImportError('the sampler imported torch')")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": at_store.uri, "PYTHONPATH": str(tmp_path / "notorch")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{base}/ping", server, tmp_path / "server.log", 90)
        status, answer = _post(f"{base}/invocations", ASK)
        assert status == 200, answer
        first = decode_png_base64(answer["predictions"])
        assert first.shape == (3, *IMAGE) and first.dtype == np.uint8 and first.std() > 0
        again = decode_png_base64(_post(f"{base}/invocations", ASK)[1]["predictions"])
        other = decode_png_base64(_post(f"{base}/invocations", {**ASK, "seed": 6})[1]["predictions"])
        np.testing.assert_array_equal(again, first)  # same seed, same slices
        assert not np.array_equal(other, first)
        status, answer = _post(f"{base}/invocations", {**ASK, "label": "XYZ"})
        # MLflow's answer ends with brainvq's one line
        assert status == 400 and re.search(r"\nError: label must be .*; got 'XYZ'$", answer["message"]), answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group (uvicorn under the mlflow CLI)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert "the sampler imported torch" not in (tmp_path / "server.log").read_text()


def test_models_uris_reach_the_torch_path(at_store):
    """``load_stage_model`` (and every stage's run lookup) takes a registered version for its source run."""
    import torch

    from brainvq.tracking.runs import load_stage_model, resolve_run

    client = MlflowClient()
    client.create_registered_model("serving-test-prior")
    client.create_model_version("serving-test-prior", f"runs:/{at_store.prior}/checkpoint", run_id=at_store.prior)
    client.set_registered_model_alias("serving-test-prior", "best", "1")
    for spec in ("models:/serving-test-prior@best", "models:/serving-test-prior/1"):
        prior, _, run = load_stage_model(spec, "train_prior")
        assert run.info.run_id == at_store.prior
        _, want = tiny_models()
        for key, value in want.state_dict().items():
            torch.testing.assert_close(prior.state_dict()[key], value)
    assert resolve_run(CHAMPION_URI, "export_onnx").info.run_id == at_store.export
    with pytest.raises(RunError, match="is a export_onnx run, expected a train_prior run"):
        load_stage_model(CHAMPION_URI, "train_prior")
    with pytest.raises(RunError, match="^no registered model version models:/serving-test-prior@nope"):
        resolve_run("models:/serving-test-prior@nope", "train_prior")
    with pytest.raises(RunError, match="^bad model URI"):
        resolve_run("models:/serving-test-prior", "train_prior")


def _pip_index_args() -> list[str]:
    """The machine's local package indexes (``file://`` URLs in pip's configuration) as the only indexes, so that
    the venv installs offline from them; none configured: pip's own default."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    local = re.findall(r"file://[^\s'\"]+", r.stdout)
    if not local:
        return []
    return ["--index-url", local[0], *[a for url in local[1:] for a in ("--extra-index-url", url)]]


@pytest.mark.slow
def test_a_torch_free_install_samples_with_load_sampler(at_store, tmp_path):
    """README's torch-free install (brainvq without its dependencies, then numpy, pillow and onnxruntime) in a fresh
    venv: three lines sample the export, torch is not there, and the slices are the ones sampled here."""
    import mlflow

    from brainvq import load_sampler

    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{at_store.export}/onnx", dst_path=str(tmp_path / "m")))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--only-binary", ":all:",
           *_pip_index_args()]
    for args in (["--no-deps", "-e", str(REPO)], ["numpy", "pillow", "onnxruntime"]):
        r = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    script = (
        "from brainvq import load_sampler\n"
        f"images = load_sampler({str(folder)!r}, provider='cpu').sample(3, label='AD', seed=5)\n"
        f"import numpy, importlib.util, sys; numpy.save({str(tmp_path / 'images.npy')!r}, images)\n"
        "assert importlib.util.find_spec('torch') is None and 'mlflow' not in sys.modules\n"
    )
    r = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-3000:]
    here = load_sampler(str(folder), provider="cpu").sample(3, label="AD", seed=5)
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), here)

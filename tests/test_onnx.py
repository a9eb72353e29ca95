"""ONNX export and the onnxruntime sampler: parity with PyTorch, exact fast/naive sampling, torch-free sampler,
provider reporting, mismatched/corrupt files, and the MLflow export stage. Real onnxruntime sessions, tiny models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from brainvq.errors import ModelFileError
from brainvq.export.onnx_graphs import export_models
from brainvq.export.ort_sampler import OnnxSampler, resolve_model_dir
from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from brainvq.models.vqvae import VQVAE, VQVAEConfig
from brainvq.sampling.torch_sampler import sample_codes

K, IMAGE, CODES = 5, (24, 28), (6, 7)  # downsample 4: 24x28 images <-> 6x7 code grids


def tiny_models(seed: int = 0, k: int = K, conditional: bool = True, pixel_noise: bool = True):
    torch.manual_seed(seed)
    vq = VQVAE(VQVAEConfig(latent_dim=4, num_embeddings=k, hidden_channels=8, res_channels=4, num_res_layers=1,
                           image_size=IMAGE, pixel_noise=pixel_noise)).eval()
    if pixel_noise:  # the scale head starts flat (zero weights): randomise it so parity covers it
        with torch.no_grad():
            vq.noise_head.weight.normal_(0, 0.3)
    # seed the codebook from the encoder's own latents (as the EMA init does) so an image uses several codes
    with torch.no_grad():
        flat = vq.encode(brain_like()).permute(0, 2, 3, 1).reshape(-1, 4)
        vq.quantizer.codebook.copy_(flat[torch.linspace(0, len(flat) - 1, k).long()])
    # dilated layers (1, 2, 1): the exported step graphs read every other cached row/column there
    prior = GatedPixelCNN(
        PixelCNNConfig(
            num_embeddings=k,
            num_layers=3,
            hidden_channels=8,
            conditional=conditional,
            code_shape=CODES,
            dilation_cycle=(1, 2),
        )
    ).eval()
    with torch.no_grad():  # position biases start at zero: randomise them so parity covers them
        prior.row_bias.normal_(0, 0.5)
        prior.col_bias.normal_(0, 0.5)
    return vq, prior


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    vq, prior = tiny_models()
    out = tmp_path_factory.mktemp("onnx")
    files = export_models(vq, prior, out, meta={"vqvae_run_id": "vq1", "prior_run_id": "px1"})
    return vq, prior, out, files


def brain_like(n: int = 2) -> torch.Tensor:
    h, w = IMAGE
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (0.4 * min(h, w)) ** 2
    img = disc * (0.6 + 0.3 * np.sin(xx / 2.0))
    return torch.tensor(np.stack([img, img[:, ::-1]])[:n, None], dtype=torch.float32)


def test_files_check_and_carry_metadata(exported):
    _, _, out, files = exported
    assert set(files) == {"decoder", "prior", "prior_row", "prior_step"}
    pair = set()
    for name, path in files.items():
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["brainvq.num_embeddings"] == str(K) and meta["brainvq.code_shape"] == "6x7"
        assert meta["brainvq.image_size"] == "24x28" and meta["brainvq.conditional"] == "true"
        assert meta["brainvq.dilation_cycle"] == "1,2"
        assert json.loads(meta["brainvq.labels"]) == {"NC": 0, "AD": 1, "none": 2}
        assert meta["brainvq.vqvae_run_id"] == "vq1" and meta["brainvq.prior_run_id"] == "px1"
        assert meta["brainvq.version"]
        pair.add(meta["brainvq.pair_id"])
        assert not {"ArgMin", "ArgMax"} & {n.op_type for n in model.graph.node}, name
    assert len(pair) == 1


def test_decoder_and_prior_parity(exported):
    vq, prior, out, _ = exported
    s = OnnxSampler(out, "cpu")
    rng = np.random.default_rng(0)
    with torch.no_grad():
        encoded = vq.encode_indices(brain_like()).numpy()
    assert len(np.unique(encoded)) > 1
    for codes in (rng.integers(0, K, (3, *CODES)), encoded):
        with torch.no_grad():
            ref = vq.decode_indices(torch.from_numpy(codes)).numpy()
        np.testing.assert_allclose(s.decode(codes), ref, atol=1e-4, rtol=0)
        labels = np.arange(len(codes)) % 3
        with torch.no_grad():
            logits = prior(torch.from_numpy(codes), torch.from_numpy(labels)).logits.numpy()
        np.testing.assert_allclose(s.full_fn(codes, labels), logits, atol=1e-3, rtol=0)


def test_a_resize_decoder_exports_with_the_same_outputs(tmp_path):
    """upsample=resize (nearest 2x + conv) exports as ONNX Resize nodes; onnxruntime matches torch on the mean and on
    p(x | codes)."""
    _, prior = tiny_models()
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(latent_dim=4, num_embeddings=K, hidden_channels=8, res_channels=4, num_res_layers=1,
                           image_size=IMAGE, upsample="resize")).eval()
    with torch.no_grad():
        vq.noise_head.weight.normal_(0, 0.3)
    files = export_models(vq, prior, tmp_path)
    assert "Resize" in {n.op_type for n in onnx.load(str(files["decoder"])).graph.node}
    codes = np.random.default_rng(0).integers(0, K, (3, *CODES))
    session = ort.InferenceSession(str(files["decoder"]), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"codes": codes})))
    with torch.no_grad():
        ref = vq.decode_indices_distribution(torch.from_numpy(codes))
    for name, field in (("image", "mean"), ("loc", "loc"), ("scale", "scale")):
        np.testing.assert_allclose(got[name], getattr(ref, field).numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_step_graphs_match_full_prior(exported):
    _, prior, out, _ = exported
    s = OnnxSampler(out, "cpu")
    row_fn, step_fn = s._fns()
    b, (h, w) = 3, CODES
    codes = np.random.default_rng(1).integers(0, K, (b, h, w))
    labels = np.array([0, 1, 2])
    with torch.no_grad():
        full = prior(torch.from_numpy(codes), torch.from_numpy(labels)).logits.numpy()
    vcache = np.zeros((b, *s.vcache_tail), np.float32)
    pad = np.full(b, K, np.int64)
    for i in range(h):
        above = codes[:, i - 1].copy() if i else np.full((b, w), K, np.int64)
        vrow, vc = row_fn(above, vcache, labels, np.array([i], np.int64))
        vcache = vc if i else vcache
        hcache, prev = np.zeros((b, *s.hcache_tail), np.float32), pad
        for j in range(w):
            logits, hcache = step_fn(prev, hcache, vrow[j])
            np.testing.assert_allclose(logits, full[:, :, i, j], atol=1e-3, rtol=0)
            prev = codes[:, i, j].copy()


def test_onnx_fast_equals_naive_and_torch(exported):
    _, prior, out, _ = exported
    s = OnnxSampler(out, "cpu")
    labels = np.array([1, 0, 2, 1])
    kw = dict(temperature=1.2, top_k=4, seed=5, batch_size=3)
    fast = s.sample_codes(4, labels, method="fast", **kw)
    np.testing.assert_array_equal(fast, s.sample_codes(4, labels, method="naive", **kw))
    np.testing.assert_array_equal(fast, sample_codes(prior, 4, labels, progress=False, **kw))  # same seed, same codes
    assert len(np.unique(fast)) > 1


def test_unconditional_prior_keeps_the_interface(tmp_path):
    vq, prior = tiny_models(seed=2, conditional=False)
    export_models(vq, prior, tmp_path)
    s = OnnxSampler(tmp_path, "cpu")
    assert [i.name for i in s._session("prior").get_inputs()] == ["codes", "label"]
    assert s.labels_for("AD", 2).tolist() == [2, 2]  # unconditional: always the null label
    kw = dict(seed=1, batch_size=2)
    fast = s.sample_codes(3, np.array([0, 1, 2]), **kw)
    np.testing.assert_array_equal(fast, s.sample_codes(3, np.array([2, 2, 2]), method="naive", **kw))
    np.testing.assert_array_equal(fast, sample_codes(prior, 3, 2, progress=False, **kw))


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "brainvq.export.sample_onnx", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_sampler_is_torch_free():
    code = "import sys, brainvq.export.sample_onnx, brainvq.export.ort_sampler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    r = _cli("--help")
    assert r.returncode == 0 and "--provider" in r.stdout


def test_cli_writes_pngs_and_names_the_provider(exported, tmp_path):
    _, _, out, _ = exported
    r = _cli(
        "--model_dir",
        str(out),
        "--n",
        "3",
        "--batch_size",
        "2",
        "--label",
        "AD",
        "--out",
        str(tmp_path / "s"),
        "--provider",
        "auto",
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("onnxruntime")]
    assert len(lines) == 1 and "ExecutionProvider (" in lines[0], r.stdout
    if "CPUExecutionProvider" in lines[0]:
        assert "CUDA" in lines[0] or "GPU" in lines[0]  # the reason CUDA did not run
    assert "Failed to" not in r.stdout + r.stderr  # onnxruntime's CUDA error wall stays off the console
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "grid.png",
        "sample_000.png",
        "sample_001.png",
        "sample_002.png",
    ]
    r = _cli("--model_dir", str(out), "--n", "1", "--out", str(tmp_path / "c"), "--provider", "cuda")
    if r.returncode == 0:  # a machine with a working GPU
        assert "running on CUDAExecutionProvider" in r.stdout
    else:  # documented choice: --provider cuda never falls back silently
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--provider cuda" in r.stderr


def test_mismatched_missing_and_corrupt_files(exported, tmp_path):
    _, _, out, files = exported
    vq, prior = tiny_models(seed=1)
    other = export_models(vq, prior, tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.copy(other["decoder"], mixed / "decoder.onnx")
    with pytest.raises(ModelFileError, match="different exports"):
        OnnxSampler(mixed, "cpu")
    vq8, prior8 = tiny_models(k=8)
    k8 = export_models(vq8, prior8, tmp_path / "k8")
    shutil.copy(k8["decoder"], mixed / "decoder.onnx")
    with pytest.raises(ModelFileError, match="codebook size"):
        OnnxSampler(mixed, "cpu")
    (mixed / "decoder.onnx").unlink()
    with pytest.raises(ModelFileError, match="not found"):
        OnnxSampler(mixed, "cpu")
    data = files["decoder"].read_bytes()
    (mixed / "decoder.onnx").write_bytes(data[: len(data) // 2])
    r = _cli("--model_dir", str(mixed), "--out", str(tmp_path / "x"), "--provider", "cpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "corrupt" in r.stderr, r.stderr


def _finished_run(stage: str, ckpt: dict, path) -> str:
    import mlflow

    from brainvq.models.checkpoint import atomic_save

    with mlflow.start_run() as run:
        mlflow.set_tag("brainvq.stage", stage)
        atomic_save(ckpt, path)
        mlflow.log_artifact(str(path), "checkpoint")
    return run.info.run_id


def test_export_stage_logs_a_matching_pair_to_mlflow(tmp_path, caplog):
    import mlflow

    from brainvq.export.export_onnx import export_onnx

    vq, prior = tiny_models()
    vq_id = _finished_run(
        "train_vqvae",
        {"kind": "vqvae", "config": vq.config.to_dict(), "model": vq.state_dict()},
        tmp_path / "a" / "vqvae.pt",
    )
    # A prior run as brainvq 0.1 wrote it (stage train_pixelcnn, checkpoint/pixelcnn.pt of kind pixelcnn), exported
    # with the old flag: the old names still work for this release, each with its one-line deprecation note.
    px_id = _finished_run(
        "train_pixelcnn",
        {"kind": "pixelcnn", "config": prior.config.to_dict(), "model": prior.state_dict(), "vqvae_run_id": vq_id},
        tmp_path / "b" / "pixelcnn.pt",
    )
    vq2, _ = tiny_models(seed=3)  # a newer VQ-VAE run: `latest` must still pick the prior's own VQ-VAE
    other = _finished_run(
        "train_vqvae",
        {"kind": "vqvae", "config": vq2.config.to_dict(), "model": vq2.state_dict()},
        tmp_path / "c" / "vqvae.pt",
    )
    assert export_onnx(["--pixelcnn_run_id", px_id, "--out_dir", str(tmp_path / "out")]) == 0
    assert "deprecated: the parameter --pixelcnn_run_id is now --prior_run_id" in caplog.text
    assert "deprecated: checkpoint kind 'pixelcnn'" in caplog.text
    client = mlflow.tracking.MlflowClient()
    runs = client.search_runs(
        [r.info.experiment_id for r in [client.get_run(px_id)]], "tags.`brainvq.stage` = 'export_onnx'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["vqvae_run_id"] == vq_id and run.data.params["prior_run_id"] == px_id
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "onnx"))
    assert names == ["onnx/decoder.onnx", "onnx/prior.onnx", "onnx/prior_row.onnx", "onnx/prior_step.onnx"]
    decoder = mlflow.onnx.load_model(f"runs:/{run.info.run_id}/decoder_model")
    assert {p.key: p.value for p in decoder.metadata_props}["brainvq.vqvae_run_id"] == vq_id
    # the sampler reads the run's onnx/ folder directly
    s = OnnxSampler(resolve_model_dir(f"runs:/{run.info.run_id}/onnx"), "cpu")
    assert s.meta["brainvq.prior_run_id"] == px_id
    # a VQ-VAE the prior was not trained on is refused; a bad opset ends the run FAILED with its reason
    assert export_onnx(["--prior_run_id", px_id, "--vqvae_run_id", other]) == 2
    assert export_onnx(["--prior_run_id", px_id, "--opset", "5"]) == 2
    failed = client.search_runs([run.info.experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 1 and "opset" in failed[0].data.tags["brainvq.error"]

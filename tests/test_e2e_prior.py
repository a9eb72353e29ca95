"""Prior stage end to end: codes, `mlflow run . -e train_prior` on tiny data, sampling, and its bad inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from brainvq.cli import main as cli
from brainvq.data.codes import load_codes, save_codes
from brainvq.errors import ModelFileError
from brainvq.stages.encode import encode_dataset
from conftest import REPO, logged_models

pytestmark = pytest.mark.slow

TINY = ["--image_size", "32x32", "--epochs", "12", "--batch_size", "4", "--hidden_channels", "16", "--latent_dim", "8",
        "--num_embeddings", "16", "--val_fraction", "0.34", "--max_minutes", "0"]


@pytest.fixture
def vqvae_run(tiny_adni, capsys):
    assert cli(["train-vqvae", "--data_dir", str(tiny_adni), *TINY]) == 0
    out = capsys.readouterr().out
    return out.split("run ")[1].split(":")[0]


def _prior_runs(client, stage="train_prior"):
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`brainvq.stage` = '{stage}'")


def test_train_prior_entry_point_then_sampling(vqvae_run, tmp_path, capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train_prior", "--env-manager", "local",
         "-P", f"vqvae_run_id={vqvae_run}", "-P", "epochs=12", "-P", "num_layers=3", "-P", "hidden_channels=16",
         "-P", "batch_size=4", "-P", "max_minutes=0"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    found = _prior_runs(client)
    assert len(found) == 1
    (run,) = found
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for key in ("prior/train_nll_bits", "prior/val_nll_bits", "prior/test_nll_bits", "prior/uniform_bits",
                "prior/unigram_bits", "prior/position_unigram_bits", "prior/test_nll_bits_uncond",
                "prior/test_class_accuracy", "prior/test_class_accuracy_subject", "prior/test_class_margin_bits"):
        assert key in m, key
    assert 0 <= m["prior/test_class_accuracy"] <= 1 and 0 <= m["prior/test_class_accuracy_subject"] <= 1
    assert m["prior/uniform_bits"] == pytest.approx(4.0)  # log2(16)
    # the prior learned something: well below the code histogram it would match by chance (measured 1.29 vs 2.18)
    assert m["prior/test_nll_bits"] < 0.8 * m["prior/unigram_bits"] < m["prior/uniform_bits"]
    assert m["prior/position_unigram_bits"] < m["prior/unigram_bits"]  # position carries the layout
    assert m["prior/test_nll_bits_uncond"] >= m["prior/test_nll_bits"] - 0.05  # the label helps, or costs nothing
    assert run.data.params["vqvae_run_id"] == vqvae_run
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.png", "checkpoint"} <= names
    assert len(logged_models(run)) == 1
    # the codes were encoded once, by an encode_codes run, and logged as artifacts
    (codes_run,) = _prior_runs(client, "encode_codes")
    assert {a.path for a in client.list_artifacts(codes_run.info.run_id, "codes")} == {
        "codes/train.npz", "codes/val.npz", "codes/test.npz"}

    # torch sampling is reproducible for a seed and differs across seeds
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert (
            cli(
                [
                    "sample",
                    "--prior_run_id",
                    run.info.run_id,
                    "--n",
                    "3",
                    "--seed",
                    str(seed),
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    a, b, c = (sorted((tmp_path / n).glob("sample_*.png")) for n in "abc")
    assert len(a) == 3 and (tmp_path / "a" / "grid.png").exists()
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]

    # a prior run is not a VQ-VAE run: one-line error, exit 2
    capsys.readouterr()
    assert cli(["train-prior", "--vqvae_run_id", run.info.run_id, "--epochs", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainvq")]
    assert len(err) == 1 and "train_prior run, expected a train_vqvae run" in err[0]
    # the entry point's old name still runs the same script for one release, with a one-line deprecation note
    old = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-e",
            "train_pixelcnn",
            "--env-manager",
            "local",
            "-P",
            f"vqvae_run_id={run.info.run_id}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert old.returncode != 0
    assert "deprecated: the entry point train_pixelcnn is now train_prior" in old.stderr
    assert "train_prior: error: run " in old.stderr and "expected a train_vqvae run" in old.stderr


def test_unknown_run_id_is_a_one_line_error(capsys, caplog):
    for command in ("train-prior", "train-pixelcnn"):  # the second: the old name, for one more release
        assert cli([command, "--vqvae_run_id", "0123456789abcdef0123456789abcdef"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainvq")]
        assert len(err) == 1 and "unknown MLflow run id" in err[0]
    assert caplog.text.count("deprecated: the entry point train_pixelcnn is now train_prior") == 1
    assert cli(["sample", "--prior_run_id", "nope"]) == 2


def test_codes_round_trip_and_codebook_mismatch(tmp_path, tiny_adni):
    from brainvq.data import load_adni
    from brainvq.models.vqvae import VQVAE, VQVAEConfig

    splits = load_adni(tiny_adni, image_size=(32, 32), val_fraction=0.34, seed=0)
    model = VQVAE(
        VQVAEConfig(latent_dim=8, num_embeddings=16, hidden_channels=16, res_channels=8, image_size=(32, 32))
    ).eval()
    codes = encode_dataset(model, splits.test, batch_size=3, progress=False)
    assert codes.shape == (len(splits.test), 8, 8) and codes.dtype == np.int64
    path = save_codes(tmp_path / "test.npz", codes, splits.test.labels, list(splits.test.subjects), 16)
    loaded, subjects = load_codes(path, 16)
    assert np.array_equal(loaded.codes, codes) and np.array_equal(loaded.labels, splits.test.labels)
    assert subjects == list(splits.test.subjects)
    x, _ = splits.test.batch(np.arange(2))
    with torch.no_grad():
        assert torch.allclose(model.decode_indices(torch.from_numpy(codes[:2])), model(x).recon, atol=1e-6)
    with pytest.raises(ModelFileError, match="codebook of 16 entries, expected 32"):
        load_codes(path, 32)


def test_run_params_logged_by_mlflow_run_read_back_as_empty():
    from brainvq.values import run_param

    # `mlflow run` logs `-P data_dir=` (the default) as the two characters '' after shell quoting.
    assert run_param({"data_dir": "''"}, "data_dir", str, "") == ""
    assert run_param({}, "seed", int, 0) == 0
    assert run_param({"seed": "7", "val_fraction": "0.2"}, "seed", int, 0) == 7
    assert run_param({"val_fraction": "0.2"}, "val_fraction", float, 0.1) == 0.2
    assert run_param({"data_dir": "/data/ADNI"}, "data_dir", str, "") == "/data/ADNI"

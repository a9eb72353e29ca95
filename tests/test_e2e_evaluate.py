"""`brainvq evaluate-samples` on real tiny runs: every figure logged with its protocol, the calibration computed once
and reused, the validation score the registry ranks by, and any folder of PNGs scored the same way."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from brainvq.cli import main as cli
from conftest import write_tiny_adni
from tiny_chain import tiny_store, train_lineage, use_store

pytestmark = pytest.mark.slow
FIGURES = ("gen/c2st_accuracy", "gen/c2st_accuracy_ci95", "gen/c2st_pvalue", "gen/c2st_null", "gen/c2st_power_blur10",
           "gen/c2st_power_blur05", "gen/c2st_power_noise", "gen/fd", "real/fd", "gen/precision", "real/precision",
           "gen/recall", "real/recall", "gen/tstr_accuracy", "real/trtr_accuracy", "gen/label_agreement",
           "real/label_classifier_accuracy", "gen/msssim_diversity", "real/msssim_diversity", "val/c2st_accuracy")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A VQ-VAE → prior → export lineage on data large enough for an evaluation (24 val and 36 test slices)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_tiny_adni(root / "adni", subjects_per_class=6, slices=6, test_subjects=3)
    with tiny_store(root) as uri:
        lineage = train_lineage(data, epochs=2)
    return uri, root, data, lineage


@pytest.fixture
def store(chain, isolated_env, monkeypatch):
    uri, root, _, _ = chain
    use_store(monkeypatch, uri, root)
    return MlflowClient()


def _evaluations(client):
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, "tags.`brainvq.stage` = 'evaluate_samples'", order_by=["attributes.start_time ASC"])


def test_evaluation_is_deterministic_reuses_its_calibration_and_ranks_the_sampler(chain, store):
    from brainvq.quality.evaluate import EvalProtocol
    from brainvq.tracking.registry import register_run

    _, _, _, lin = chain
    assert cli(["evaluate-samples", "--prior_run_id", lin.prior]) == 0  # the default protocol: 256 slices
    assert cli(["evaluate-samples", "--prior_run_id", lin.prior]) == 0  # the same again
    first, again = _evaluations(store)
    for key in FIGURES:
        assert key in first.data.metrics, key
    m = first.data.metrics
    assert m["gen/c2st_n"] == 36  # every test slice (fewer than 256) against as many generated ones
    assert m["gen/c2st_accuracy_ci_low"] <= m["gen/c2st_accuracy"] <= m["gen/c2st_accuracy_ci_high"]
    default = EvalProtocol().digest()
    assert first.data.tags["brainvq.eval_protocol"] == default == again.data.tags["brainvq.eval_protocol"]
    # the power checks and floors were computed once, by an eval_calibration run, and reused
    assert first.data.tags["brainvq.calibration_reused"] == "false"
    assert again.data.tags["brainvq.calibration_reused"] == "true"
    assert again.data.tags["brainvq.calibration_run_id"] == first.data.tags["brainvq.calibration_run_id"]
    cal = store.get_run(first.data.tags["brainvq.calibration_run_id"])
    assert cal.data.tags["brainvq.stage"] == "eval_calibration"
    assert cal.data.params["split"] == "test"
    # deterministic: a rerun cannot be luckier
    assert {k: v for k, v in again.data.metrics.items()} == pytest.approx(dict(m))
    assert first.data.tags["brainvq.eval_underpowered"] in ("true", "false")

    # the registry ranks the sampler by the validation score of the first run under the default protocol
    reg = register_run("sampler", lin.export)
    version = store.get_model_version("brainvq-sampler", reg.version)
    assert version.tags["brainvq.eval_run_id"] == first.info.run_id
    assert float(version.tags["val/c2st_accuracy"]) == pytest.approx(m["val/c2st_accuracy"])
    assert version.tags["brainvq.eval_protocol"] == EvalProtocol().digest()


def test_any_folder_of_pngs_is_scored_against_a_split(chain, store, tmp_path, caplog):
    _, _, data, _ = chain
    # a "generator" that returns real training slices, in AD/NC folders, plus sample-onnx's contact sheet
    out = tmp_path / "samples"
    for label in ("AD", "NC"):
        (out / label).mkdir(parents=True)
        for p in sorted((data / "train" / label).glob("*.png"))[:20]:
            shutil.copy(p, out / label / p.name)
    Image.fromarray(np.zeros((70, 70), np.uint8)).save(out / "AD" / "grid.png")
    assert cli(["evaluate-samples", "--samples_dir", str(out), "--data_dir", str(data), "--image_size", "32x32",
                "--val_fraction", "0.34", "--split", "val"]) == 0
    assert any("left out grid.png" in r.getMessage() for r in caplog.records)
    (run,) = [r for r in _evaluations(store) if r.data.params.get("samples_dir") == str(out)]
    m = run.data.metrics
    assert run.data.tags["brainvq.eval_split"] == "val" and "gen/c2st_recon_ceiling" not in m
    assert m["val/c2st_accuracy"] == m["gen/c2st_accuracy"]  # the split compared with is val itself
    assert m["gen/label_agreement"] > 0.8 and m["gen/tstr_accuracy"] > 0.8  # real slices keep their labels
    assert m["gen/c2st_accuracy_ci_low"] < 0.5 + 0.25  # real slices are near-indistinguishable from real ones


def test_bad_evaluation_inputs_are_one_line_errors(chain, store, tmp_path, capsys):
    _, _, data, lin = chain
    cases = [
        (["--prior_run_id", lin.prior, "--n_samples", "4"], "bad parameter: n_samples must be an integer >= 8, got 4"),
        (["--prior_run_id", lin.prior, "--temperature", "0"], "bad parameter: temperature must be a finite number > 0"),
        (["--samples_dir", str(tmp_path / "none"), "--data_dir", str(data)], "samples_dir does not exist"),
        (["--prior_run_id", lin.export], "expected a train_prior run"),
    ]
    before = len(_evaluations(store))
    for args, message in cases:
        capsys.readouterr()
        assert cli(["evaluate-samples", *args]) == 2, args
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0], (args, err)
    assert len(_evaluations(store)) == before  # checked before any run started

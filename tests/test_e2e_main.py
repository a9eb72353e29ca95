"""`mlflow run . --env-manager local` (entry point `main`) on tiny data: one parent run, a child per step, whole
subjects sampled and scored. Reuse of FINISHED steps is tested on a repository of its own (test_workflow_reuse.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, write_tiny_adni

pytestmark = pytest.mark.slow
STEPS = ["train_vqvae", "encode_codes", "train_prior", "export_onnx", "sample", "evaluate_samples", "sample_subjects",
         "evaluate_subjects"]


def run_main(data_dir, *extra):
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "main-e2e",
           "-P", f"data_dir={data_dir}", "-P", "image_size=48x64", "-P", "vqvae_epochs=1", "-P", "prior_epochs=1",
           "-P", "n_samples=16", "-P", "n_subjects=4", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_main_pipeline_runs_every_step_as_child_runs_and_reuses_them(tmp_path):
    # evaluate_subjects' power checks need two groups of real training subjects as large as the held-out side
    data = write_tiny_adni(tmp_path / "adni", size=(48, 64), subjects_per_class=6, slices=4, test_subjects=2)
    proc = run_main(data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("main-e2e")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("brainvq.stage") == "main"]
    assert parent.info.status == "FINISHED"
    stages = {r.data.tags.get("brainvq.stage"): r for r in runs}
    for step in STEPS:
        assert step in stages and stages[step].info.status == "FINISHED", step
    for step in ("train_vqvae", "train_prior", "export_onnx", "sample", "evaluate_samples", "sample_subjects",
                 "evaluate_subjects"):
        assert stages[step].data.tags.get("mlflow.parentRunId") == parent.info.run_id, step
    m = parent.data.metrics
    for key in ("val/ssim", "test/ssim", "test/ssim_brain", "test/psnr_brain", "prior/val_nll_bits",
                "prior/test_nll_bits", "prior/position_unigram_bits", "gen/c2st_accuracy", "gen/c2st_accuracy_ci95",
                "gen/c2st_null", "gen/c2st_power_blur10", "gen/c2st_power_blur05", "gen/c2st_power_noise",
                "gen/c2st_recon_ceiling", "gen/fd", "real/fd", "gen/precision", "real/recall", "gen/tstr_accuracy",
                "real/trtr_accuracy", "gen/msssim_diversity", "prior/val_nll_bits_stack", "vol/adjacent_ssim",
                "real/adjacent_ssim", "vol/pair_c2st", "vol/tstr_subject_accuracy", "vol/augmentation_gain",
                # the ceilings, read through the run's own VQ-VAE
                "gen/tstr_recon_ceiling", "gen/label_agreement_recon", "vol/adjacent_ssim_recon",
                "vol/tstr_subject_recon_ceiling", "vol/augmentation_gain_recon_ceiling"):
        assert key in m, key
    assert 0 < m["gen/c2st_accuracy_ci95"] < 0.5 and 0 <= m["gen/c2st_accuracy"] <= 1
    # the evaluation names its protocol and the calibration (power checks, feature network) it used
    ev = stages["evaluate_samples"]
    assert ev.data.tags["brainvq.eval_protocol"] and ev.data.tags["brainvq.eval_split"] == "test"
    cal = client.get_run(ev.data.tags["brainvq.calibration_run_id"])
    assert cal.data.tags["brainvq.stage"] == "eval_calibration" and cal.info.status == "FINISHED"
    assert "calibration/features.pt" in {a.path for a in client.list_artifacts(cal.info.run_id, "calibration")}
    onnx = {a.path for a in client.list_artifacts(stages["export_onnx"].info.run_id, "onnx")}
    assert {"onnx/decoder.onnx", "onnx/prior.onnx"} <= onnx
    # register=true (the default): each model's first version is its champion
    for name, step in (("brainvq-vqvae", "train_vqvae"), ("brainvq-prior", "train_prior"),
                       ("brainvq-sampler", "export_onnx")):
        assert client.get_model_version_by_alias(name, "champion").run_id == stages[step].info.run_id, name
        assert parent.data.tags[f"brainvq.registered.{name}"] == "1"

    # the subjects: 4 of the training subjects' height (4 slices) in the sample_subjects run's artifact
    subj = client.list_artifacts(stages["sample_subjects"].info.run_id, "subjects")
    assert {a.path for a in subj} == {"subjects/AD", "subjects/NC", "subjects/nifti"}
    assert len(client.list_artifacts(stages["sample_subjects"].info.run_id, "subjects/nifti")) == 4
    assert len(client.list_artifacts(stages["sample_subjects"].info.run_id, "subjects/AD")) == 2 * 4
    # the registered sampler holds what subject sampling needs (prior_context.onnx beside the other graphs)
    from brainvq import load_sampler

    images, classes = load_sampler("models:/brainvq-sampler@champion", "cpu").sample_subjects(1, "AD", seed=0)
    assert images.shape[:2] == (1, 4) and classes == ["AD"]

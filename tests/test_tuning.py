"""Optuna sweeps (brainvq tune): space files, pruning, FAIL handling, resume, --from_study, the prior stage."""

from __future__ import annotations

import json

import mlflow
import optuna
import pytest

from brainvq.cli.args import run_main
from brainvq.errors import ConfigError
from brainvq.tuning import search, tune

TINY = ["--image_size", "32x32", "--max_train_images", "16", "--val_fraction", "0.34", "--device", "cpu"]


def _runs(stage: str):
    client = mlflow.tracking.MlflowClient()
    return client.search_runs(["0"], filter_string=f"tags.`brainvq.stage` = '{stage}'", max_results=1000)


def _tune(tmp_path, tiny_adni, *extra: str) -> None:
    tune.main(["--data_dir", str(tiny_adni), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", *TINY, *extra])


def _space(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("foo: [1, 2]", "unknown vqvae parameter 'foo'"),
    ("latent_dim: []", "latent_dim: empty choice list"),
    ("lr: {low: 0.01, high: 0.001}", "lr: low must be < high"),
    ("latent_dim: [8, big]", "latent_dim: expected int, got 'big'"),
    ("lr: {low: 1e-4}", "lr: a range needs both low and high"),
    ("lr: {low: 0, high: 1, log: true}", "log range needs low > 0"),
    ("- latent_dim", "expected a mapping"),
    ("latent_dim: [8\n", "not valid YAML/JSON"),
])
def test_space_file_errors_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        search.load_space("vqvae", _space(tmp_path, text))
    assert "\n" not in str(err.value)


def test_space_file_overrides_and_json(tmp_path):
    space = search.load_space("vqvae", _space(tmp_path, "downsample: [2, 4]\nhidden_channels: 16\nlatent_dim: null\n"
                                                        "lr: {low: 5e-4, high: 5e-3, log: true}\n"))
    assert set(space) == {"num_embeddings", "lr", "downsample", "hidden_channels"}
    assert space["downsample"].choices == (2, 4) and space["hidden_channels"].choices == (16,)
    assert space["lr"].low == 5e-4 and space["lr"].log  # YAML reads 5e-4 as a string: coerced
    space = search.load_space("prior", _space(tmp_path, json.dumps({"conditional": [True, False]}), "s.json"))
    assert space["conditional"].choices == (True, False)
    with pytest.raises(ConfigError, match="cannot read"):
        search.load_space("vqvae", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown prior parameter 'latent_dim'"):
        search.load_space("prior", _space(tmp_path, "latent_dim: [8]"))


def test_suggest_uses_training_argument_names():
    space = search.load_space("vqvae")
    trial = optuna.create_study(direction="maximize").ask()
    cfg = search.suggest_vqvae(trial, space, image_size=(32, 32))
    assert set(trial.params) == {"latent_dim", "num_embeddings", "lr"}
    assert (cfg.latent_dim, cfg.num_embeddings) == (trial.params["latent_dim"], trial.params["num_embeddings"])
    assert cfg.latent_dim in (8, 16, 32, 64) and cfg.num_embeddings in (32, 64, 128, 256, 512)
    assert 5e-4 <= trial.params["lr"] <= 5e-3


def test_pruning_callback_prunes_a_trial_behind_the_median():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    first = study.ask()
    search.pruning_callback(first, "val/ssim")(1, {"val/ssim": 0.9})
    study.tell(first, 0.9)
    behind, ahead = study.ask(), study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 1: val/ssim=0.1000"):
        search.pruning_callback(behind, "val/ssim")(1, {"val/ssim": 0.1})
    search.pruning_callback(ahead, "val/ssim")(1, {"val/ssim": 0.95})  # ahead of the median: goes on
    search.pruning_callback(behind, "val/ssim", enabled=False)(2, {"val/ssim": 0.0})  # pruner off: never raises


def test_bad_space_fails_before_any_run(tmp_path, capsys):
    code = run_main(tune.main, ["--space", _space(tmp_path, "lr: {low: 1, high: 1}")], prog="tune")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune: error: space file") and "low must be < high" in err and "\n" not in err
    assert not _runs("tune")


@pytest.mark.slow
def test_sweep_prunes_logs_best_and_feeds_from_study(tmp_path, tiny_adni):
    _tune(tmp_path, tiny_adni, "--study_name", "s6", "--n_trials", "6", "--epochs_per_trial", "2", "--seed", "1")
    (parent,) = _runs("tune")
    children = _runs(search.TRIAL_STAGE)
    assert len(children) == 6 and parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == list(range(6))
    states = [c.data.tags["optuna.state"] for c in children]
    assert set(states) <= {"COMPLETE", "PRUNED"}
    # the note explains exactly the sweeps in which nothing was pruned (whether pruning happens is the pruner's call,
    # tested deterministically in test_pruning_callback_prunes_a_trial_behind_the_median)
    note = parent.data.tags.get("brainvq.pruning_note")
    assert ("PRUNED" in states) == (note is None), (states, note)
    assert note is None or note.startswith("no trial pruned")
    study = optuna.load_study(study_name="s6", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    best = study.best_trial
    assert parent.data.tags["best_trial_run_id"] == best.user_attrs["mlflow_run_id"]
    assert {k: parent.data.params[f"best.{k}"] for k in best.params} == {k: str(v) for k, v in best.params.items()}
    assert parent.data.metrics["best/val/ssim"] == pytest.approx(best.value)
    arts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"best_params.json", "optimization_history.html", "contour_latent_dim_num_embeddings.html",
            "trials.json"} <= arts
    assert "param_importances.html" in arts or "plot_notes.txt" in arts
    # Per-epoch metrics reach each child run.
    hist = mlflow.tracking.MlflowClient().get_metric_history(children[0].info.run_id, "val/ssim")
    assert [m.step for m in hist][:1] == [1]

    # The best trial's params are train_vqvae's arguments: --from_study replays them.
    from brainvq.pipelines import train_vqvae

    train_vqvae.main(["--from_study", "s6", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--data_dir",
                      str(tiny_adni), *TINY, "--epochs", "1", "--max_minutes", "0"])
    (run,) = _runs("train_vqvae")
    for k, v in best.params.items():
        assert float(run.data.params[k]) == pytest.approx(float(v)), k


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, tiny_adni):
    # hidden_channels=0 is an invalid VQ-VAE; an absurd lr makes the loss NaN (TrainingDiverged).
    bad = _space(tmp_path, "latent_dim: [8]\nnum_embeddings: [32]\nhidden_channels: [0, 16]\n"
                           "lr: {low: 1.0e+30, high: 1.0e+31, log: true}\n")
    _tune(tmp_path, tiny_adni, "--study_name", "bad", "--n_trials", "3", "--epochs_per_trial", "1", "--space", bad)
    study = optuna.load_study(study_name="bad", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    reasons = {t.user_attrs["fail_reason"].split(":")[0] for t in study.trials}
    assert reasons <= {"ConfigError", "TrainingDiverged"} and reasons
    children = _runs(search.TRIAL_STAGE)
    assert len(children) == 3
    for c in children:
        assert c.info.status == "FAILED" and c.data.tags["optuna.state"] == "FAIL"
        assert c.data.tags["optuna.fail_reason"].split(":")[0] in reasons
    (parent,) = _runs("tune")
    assert parent.info.status == "FINISHED" and "no trial completed" in parent.data.tags["brainvq.best_note"]


@pytest.mark.slow
def test_same_study_name_resumes(tmp_path, tiny_adni):
    small = _space(tmp_path, "latent_dim: [8]\nnum_embeddings: [32, 64]\n")
    args = ("--study_name", "again", "--epochs_per_trial", "1", "--space", small, "--pruner", "none")
    _tune(tmp_path, tiny_adni, *args, "--n_trials", "2")
    _tune(tmp_path, tiny_adni, *args, "--n_trials", "3")  # n_trials counts the whole study: one more trial
    _tune(tmp_path, tiny_adni, *args, "--n_trials", "3")  # already there: runs none
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    parents = _runs("tune")
    assert len(parents) == 3 and len(_runs(search.TRIAL_STAGE)) == 3
    assert all(p.data.tags["brainvq.pruning_note"].startswith("pruner=none") for p in parents)


@pytest.mark.slow
def test_pareto_objective_logs_front(tmp_path, tiny_adni):
    small = _space(tmp_path, "latent_dim: [8]\nnum_embeddings: [32, 512]\ndownsample: [4, 8]\n")
    _tune(tmp_path, tiny_adni, "--study_name", "pf", "--objective", "pareto", "--n_trials", "3",
          "--epochs_per_trial", "1", "--space", small)
    (parent,) = _runs("tune")
    assert "cannot prune multi-objective" in parent.data.tags["brainvq.pruning_note"]
    client = mlflow.tracking.MlflowClient()
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.json", "pareto_front.html", "best_params.json"} <= arts
    front = json.loads(open(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read())
    assert front and all({"val/ssim", "code_bits_per_image", "params"} <= set(p) for p in front)
    for p in front:  # bits = h * w * log2 K of the trial's own config
        k, d = p["params"]["num_embeddings"], p["params"]["downsample"]
        assert p["code_bits_per_image"] == pytest.approx((32 // d) ** 2 * {32: 5, 512: 9}[k])


@pytest.mark.slow
def test_prior_stage_tunes_a_fixed_vqvae_run(tmp_path, tiny_adni):
    pytest.importorskip("brainvq.models.pixelcnn")
    from brainvq.pipelines import train_vqvae

    train_vqvae.main(["--data_dir", str(tiny_adni), *TINY, "--epochs", "1", "--latent_dim", "8",
                      "--num_embeddings", "32", "--hidden_channels", "16", "--max_minutes", "0"])
    (vq,) = _runs("train_vqvae")
    space = _space(tmp_path, "num_layers: [2, 3]\nhidden_channels: [8]\n")
    tune.main(["--stage", "prior", "--vqvae_run_id", vq.info.run_id, "--study_name", "prior", "--n_trials", "2",
               "--epochs_per_trial", "1", "--space", space, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
               "--device", "cpu"])
    study = optuna.load_study(study_name="prior", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 2 and study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.best_value > 0  # bits per code
    (parent,) = _runs("tune")
    assert parent.data.tags["brainvq.vqvae_run_id"] == vq.info.run_id
    assert len(_runs(search.TRIAL_STAGE)) == 2
    assert "best/prior/val_nll_bits" in parent.data.metrics

"""Model registry on a real SQLite store: versions of brainvq-vqvae / -prior / -sampler from real tiny runs, the
`champion` alias moving only for a better version, and the onnxruntime sampler reading `models:/` URIs torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from brainvq.errors import RunError
from brainvq.tracking.registry import CHAMPION, SPECS, compare, register_pipeline, register_run
from conftest import write_tiny_adni
from tiny_chain import subprocess_env, tiny_store, train_lineage, use_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lineages(tmp_path_factory):
    """Three real lineages (VQ-VAE → prior → export) that differ in seed and epochs, hence in their metrics."""
    root = tmp_path_factory.mktemp("registry")
    data = write_tiny_adni(root / "adni")
    with tiny_store(root) as uri:
        trained = [train_lineage(data, seed=s, epochs=e) for s, e in ((0, 1), (1, 2), (2, 1))]
    return uri, root, trained


@pytest.fixture
def client(lineages, isolated_env, monkeypatch):
    """Point this test at the module's store and start from an empty registry."""
    uri, root, _ = lineages
    use_store(monkeypatch, uri, root)
    c = MlflowClient()
    for model in c.search_registered_models():
        c.delete_registered_model(model.name)
    return c


def _metric(client, run_id: str, key: str) -> float:
    return client.get_run(run_id).data.metrics[key]


def _champion(client, name: str):
    return client.get_model_version_by_alias(name, CHAMPION)


def _median_worst_best(items, score):
    """Order for the test: the median first, then the worst (alias must stay), then the best (alias must move)."""
    ranked = sorted(items, key=score)
    assert len({score(i) for i in ranked}) == 3, "tiny runs tied; the ranking test needs distinct metrics"
    return [ranked[1], ranked[0], ranked[2]]


def test_pipeline_registrations_move_champion_only_when_better(client, lineages):
    _, _, trained = lineages
    # Validation figures choose; test figures are only copied into the tags for the report.
    order = _median_worst_best(trained, lambda lin: _metric(client, lin.vqvae, "val/ssim"))  # higher is better
    seen = []
    for step, lin in enumerate(order):
        regs = {r.name: r for r in register_pipeline(lin.vqvae, lin.prior, lin.export)}
        seen.append(lin)
        assert set(regs) == {"brainvq-vqvae", "brainvq-prior", "brainvq-sampler"}
        vq = regs["brainvq-vqvae"]
        assert vq.promoted is [True, False, True][step], vq.line()
        # every model's champion is the best version registered so far, by its own metric
        best_vq = max(seen, key=lambda x: _metric(client, x.vqvae, "val/ssim"))
        best_px = min(seen, key=lambda x: _metric(client, x.prior, "prior/val_nll_bits"))
        assert _champion(client, "brainvq-vqvae").run_id == best_vq.vqvae
        assert _champion(client, "brainvq-prior").run_id == best_px.prior
        assert _champion(client, "brainvq-sampler").run_id == best_px.export  # no val C2ST here: the prior's val NLL

    # versions carry their ranking metrics and source runs as tags
    v = client.get_model_version("brainvq-vqvae", "1")
    assert float(v.tags["val/ssim"]) == pytest.approx(_metric(client, order[0].vqvae, "val/ssim"))
    assert float(v.tags["test/ssim_brain"]) == pytest.approx(_metric(client, order[0].vqvae, "test/ssim_brain"))
    assert v.tags["brainvq.source_run_id"] == order[0].vqvae and v.run_id == order[0].vqvae
    s = client.get_model_version("brainvq-sampler", "2")
    assert s.tags["brainvq.prior_run_id"] == order[1].prior and s.tags["brainvq.pair_id"]
    assert float(s.tags["prior/val_nll_bits"]) == pytest.approx(_metric(client, order[1].prior, "prior/val_nll_bits"))

    # registering the same runs again (a rerun of a cached pipeline) reuses their versions
    again = {r.name: r for r in register_pipeline(order[1].vqvae, order[1].prior, order[1].export)}
    assert again["brainvq-vqvae"].version == "2" and not again["brainvq-vqvae"].promoted
    assert len(client.search_model_versions("name = 'brainvq-vqvae'")) == 3


def test_prior_and_sampler_champion_follow_lowest_validation_nll(client, lineages):
    _, _, trained = lineages
    order = _median_worst_best(trained, lambda lin: -_metric(client, lin.prior, "prior/val_nll_bits"))
    expected_promoted = [True, False, True]
    for step, lin in enumerate(order):
        prior = register_run("prior", lin.prior)
        sampler = register_run("sampler", lin.export)
        assert prior.promoted is expected_promoted[step] and sampler.promoted is expected_promoted[step], prior.line()
    assert _champion(client, "brainvq-prior").run_id == order[2].prior
    assert _champion(client, "brainvq-sampler").run_id == order[2].export
    again = register_run("prior", order[1].prior)  # the worst one again: its own version, and no move
    assert again.version == "2" and "stays version 3" in again.reason


def test_sampler_samples_from_the_champion_without_torch(client, lineages, tmp_path):
    uri, root, trained = lineages
    for lin in trained[:2]:
        register_run("sampler", lin.export)
    champion = _champion(client, "brainvq-sampler")
    from brainvq.export.ort_sampler import OnnxSampler, resolve_model_dir

    meta = OnnxSampler(resolve_model_dir(f"models:/brainvq-sampler@{CHAMPION}"), "cpu").meta
    assert meta["brainvq.prior_run_id"] == champion.tags["brainvq.prior_run_id"]
    # the real CLI, through MLflow's registry, in a process that must never import torch
    code = ("import sys; from brainvq.export.sample_onnx import sample; "
            "rc = sample(sys.argv[1:]); assert 'torch' not in sys.modules, 'sampler imported torch'; sys.exit(rc)")
    for i, spec in enumerate([f"models:/brainvq-sampler@{CHAMPION}", "models:/brainvq-sampler/1"]):
        out = tmp_path / f"s{i}"
        r = subprocess.run([sys.executable, "-c", code, "--model_dir", spec, "--n", "2", "--provider", "cpu",
                            "--out", str(out)], capture_output=True, text=True, timeout=120,
                           env=subprocess_env(uri, root / "cache"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert sorted(p.name for p in out.iterdir()) == ["grid.png", "sample_000.png", "sample_001.png"]


def test_unfinished_or_mismatched_runs_are_refused_before_anything_is_registered(client, lineages):
    from brainvq.cli import main as cli

    _, root, trained = lineages
    assert cli(["train-vqvae", "--data_dir", str(root / "missing")]) == 2  # a FAILED train_vqvae run
    failed = client.search_runs([r.info.experiment_id for r in [client.get_run(trained[0].vqvae)]],
                                "attributes.status = 'FAILED'")[0]
    with pytest.raises(RunError, match="status FAILED, expected FINISHED"):
        register_run("vqvae", failed.info.run_id)
    with pytest.raises(RunError, match="expected a export_onnx run"):  # the bad run comes last in the pipeline
        register_pipeline(trained[0].vqvae, trained[0].prior, failed.info.run_id)
    with pytest.raises(RunError, match="expected a train_prior run"):
        register_run("prior", trained[0].vqvae)
    with pytest.raises(RunError, match="was trained on VQ-VAE run"):  # a prior from another lineage
        register_pipeline(trained[0].vqvae, trained[1].prior)
    assert client.search_registered_models() == []  # checked first, so not even the VQ-VAE was registered


def test_sampler_ranking_uses_validation_realism_only_when_intervals_separate():
    criteria = SPECS["sampler"].criteria
    proto = {"brainvq.eval_protocol": "p1"}

    def version(acc, low, high, nll, **extra):
        return {**proto, "val/c2st_accuracy": str(acc), "val/c2st_accuracy_ci_low": str(low),
                "val/c2st_accuracy_ci_high": str(high), "prior/val_nll_bits": str(nll), **extra}

    champion = version(0.90, 0.87, 0.93, 2.0)
    # clearly more realistic: the realism test decides even though its NLL is worse
    better, why = compare(version(0.70, 0.66, 0.74, 3.0), champion, criteria)
    assert better is True and "val/c2st_accuracy" in why
    # a lower accuracy whose interval overlaps the champion's is a tie: the validation NLL decides
    better, why = compare(version(0.88, 0.85, 0.91, 3.0), champion, criteria)
    assert better is False and "intervals overlap" in why and "prior/val_nll_bits" in why
    better, _ = compare(version(0.88, 0.85, 0.91, 1.5), champion, criteria)
    assert better is True
    # realism figures from another protocol are never compared; the test split never ranks
    other = version(0.50, 0.45, 0.55, 3.0, **{"brainvq.eval_protocol": "p2"})
    better, why = compare(other, champion, criteria)
    assert better is False and "different protocols" in why
    assert compare({"gen/c2st_accuracy": "0.5", "prior/test_nll_bits": "1.0"}, champion, criteria)[0] is None
    assert compare({}, {"prior/val_nll_bits": "2.0"}, criteria)[0] is None


def test_a_champion_registered_by_an_older_brainvq_is_ranked_on_validation_figures(client, lineages):
    """Older versions carry test/ssim tags only: the champion's figures are re-read from its run by today's rules."""
    _, _, trained = lineages
    old = trained[0]
    client.create_registered_model("brainvq-vqvae")
    mv = client.create_model_version("brainvq-vqvae", f"runs:/{old.vqvae}/model", run_id=old.vqvae,
                                     tags={"test/ssim": repr(_metric(client, old.vqvae, "test/ssim"))})
    client.set_registered_model_alias("brainvq-vqvae", CHAMPION, mv.version)
    reg = register_run("vqvae", trained[1].vqvae)
    assert "val/ssim" in reg.reason and "no ranking metric" not in reg.reason, reg.reason
    better = _metric(client, trained[1].vqvae, "val/ssim") > _metric(client, old.vqvae, "val/ssim")
    assert reg.promoted is better

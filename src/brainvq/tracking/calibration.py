"""The evaluation's calibration in MLflow: computed once per data set and protocol, reused after, with provenance."""

from __future__ import annotations

import logging

import mlflow

from brainvq.tracking.stage import stage_run

log = logging.getLogger(__name__)

CALIBRATION_STAGE = "eval_calibration"
CRITIC_ARTIFACT = "calibration/features.pt"


def _power_from_metrics(metrics: dict[str, float], n_per_side: int):
    from brainvq.quality.c2st import C2STResult
    from brainvq.quality.evaluate import POWER_METRICS

    power = {}
    for name, key in POWER_METRICS.items():
        if key in metrics:
            power[name] = C2STResult(metrics[key], metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"],
                                     float("nan"), n_per_side)
    return power


def calibration_for(real, held_out, train, *, protocol, split: str):
    """The :class:`~brainvq.quality.evaluate.Calibration` of these real slices under ``protocol``: reused from the
    FINISHED ``eval_calibration`` run with the same data digest and calibration protocol, else computed in a new
    nested run of that stage (power checks, real floors, the feature network as ``calibration/features.pt``). The
    active run is tagged ``brainvq.calibration_run_id`` and ``brainvq.calibration_reused``.
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from brainvq.models.checkpoint import atomic_save, load_model
    from brainvq.quality.evaluate import Calibration, calibrate, data_digest
    from brainvq.tracking.runs import download_artifact, find_stage_runs

    # the labels too: one tree read with another class map (classes=AD,NC vs NC,AD) trains another feature network
    digest = data_digest(held_out.images, train.images, np.asarray(held_out.labels), np.asarray(train.labels))
    params = {"data_digest": digest, "split": split,
              "calibration_protocol": protocol.calibration_digest()}
    found = find_stage_runs(CALIBRATION_STAGE, params=params)
    if found:
        run = found[-1]  # the first one computed: every later one is a copy under the same key
        features = None
        if run.data.tags.get("brainvq.has_features") == "true":
            features, _ = load_model(download_artifact(run.info.run_id, CRITIC_ARTIFACT), kind="critic")
        n_per_side = int(run.data.metrics.get("calibration/n_per_side", 0))
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("calibration/")}
        log.info("calibration: reusing run %s (data %s, protocol %s)", run.info.run_id, params["data_digest"],
                 params["calibration_protocol"])
        mlflow.set_tags({"brainvq.calibration_run_id": run.info.run_id, "brainvq.calibration_reused": "true"})
        return Calibration(metrics, _power_from_metrics(metrics, n_per_side), features)
    with stage_run(CALIBRATION_STAGE, params, nested=True) as run:
        cal = calibrate(real, held_out, train, protocol)
        mlflow.log_metrics({**cal.metrics, "calibration/n_per_side": float(next(iter(cal.power.values())).n_per_side)})
        mlflow.log_dict(protocol.calibration_dict(), "calibration/protocol.json")
        mlflow.set_tag("brainvq.has_features", str(cal.features is not None).lower())
        if cal.features is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = atomic_save({"kind": "critic", "config": cal.features.config.to_dict(),
                                    "model": cal.features.state_dict()}, Path(tmp) / "features.pt")
                mlflow.log_artifact(str(path), "calibration")
    mlflow.set_tags({"brainvq.calibration_run_id": run.info.run_id, "brainvq.calibration_reused": "false"})
    return cal

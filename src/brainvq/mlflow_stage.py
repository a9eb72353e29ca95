"""One MLflow run per pipeline stage: tags, params, FAILED status on error, model logging.

Used by ``pipelines/``, ``tuning/`` and ``export/`` only; the library's training loops never import MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from typing import Iterator, Mapping

import mlflow

from brainvq.runs import STAGE_TAG

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, object], tags: Mapping[str, str] | None = None,
              nested: bool = False, run_name: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, attach to) the stage's run; an exception ends it FAILED with the error logged."""
    from brainvq.tracking_store import check_tracking_store

    check_tracking_store()  # an unreachable store is a one-line error before any work, not minutes of retries
    attach = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    if attach and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=attach)
        # start_run() with no run_id would attach to MLFLOW_RUN_ID again: nested stages (encode_codes inside
        # train_pixelcnn) must get runs of their own.
        os.environ.pop("MLFLOW_RUN_ID", None)
    else:
        run = mlflow.start_run(nested=nested or mlflow.active_run() is not None, run_name=run_name or stage)
    try:
        mlflow.set_tags({STAGE_TAG: stage, **(tags or {})})
        # `mlflow run` has already logged the entry point's parameters as given; MLflow forbids changing a logged
        # param, so only add the ones it did not log.
        logged = mlflow.get_run(run.info.run_id).data.params
        mlflow.log_params({k: param_str(v) for k, v in params.items() if k not in logged})
        yield run
    except BaseException as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        try:
            mlflow.set_tag("brainvq.error", msg[:4000])
            mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
        except Exception:  # the tracking server itself may be what failed
            log.debug("could not log the error to MLflow", exc_info=True)
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def link_resumed_run(checkpoint: str | os.PathLike, kind: str) -> str | None:
    """Prepare the active run to continue the training that wrote ``checkpoint`` (``resume=true``).

    Tags the run ``brainvq.resumed_at_epoch`` and ``brainvq.resumed_from`` (the run ID the pipeline stored in the
    checkpoint), replays the checkpoint's per-epoch metrics at their steps so this run's history holds every epoch
    exactly once, and closes the earlier run KILLED when a killed process left it RUNNING (tag
    ``brainvq.resumed_by``). Returns the earlier run's ID; None when there is no checkpoint yet. A corrupt checkpoint
    raises a one-line ``ModelFileError`` naming it.
    """
    import json
    import math
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    from brainvq.engine.common import load_training_checkpoint

    ckpt = load_training_checkpoint(Path(checkpoint), kind)
    if ckpt is None:
        log.info("resume=true but no checkpoint at %s yet: training from the start", checkpoint)
        return None
    run_id = mlflow.active_run().info.run_id
    tags = {"brainvq.resumed_at_epoch": str(int(ckpt["epoch"]))}
    previous = str(ckpt.get("mlflow_run_id") or "") or None
    if previous and previous != run_id:
        tags["brainvq.resumed_from"] = previous
        client = mlflow.tracking.MlflowClient()
        try:
            client.set_tag(previous, "brainvq.resumed_by", run_id)
            if client.get_run(previous).info.status == "RUNNING":  # SIGKILL, OOM killer, lost node: no end_run()
                client.set_terminated(previous, "KILLED")
        except MlflowException as exc:  # e.g. written under another tracking store
            log.warning("could not update the run %s that wrote %s: %s", previous, checkpoint, str(exc).splitlines()[0])
    mlflow.set_tags(tags)
    for entry in json.loads(ckpt.get("history", "[]")):
        metrics = {k: float(v) for k, v in entry.items()
                   if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(float(v))}
        if metrics:
            mlflow.log_metrics(metrics, step=int(entry["epoch"]))
    return previous


def param_str(value: object) -> str:
    """Params as MLproject spells them: booleans lower-case, tuples as ``HxW``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "x".join(map(str, value))
    return "" if value is None else str(value)


def torch_requirements() -> list[str]:
    """Pinned requirements for logged PyTorch models (skips MLflow's slow requirement inference)."""
    import torch

    import brainvq

    return [f"torch=={torch.__version__.split('+')[0]}", f"brainvq=={brainvq.__version__}"]


def log_vqvae_model(result, files: Mapping[str, "os.PathLike"], stopped_early: bool = False) -> None:
    """Log the report files, the checkpoint and the model (PyTorch flavour, with a signature) to the active run."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from brainvq.serving import Reconstructor

    for name, path in files.items():
        mlflow.log_artifact(str(path), "checkpoint" if name == "checkpoint" else None)
    if result.test_metrics:
        mlflow.log_metrics(result.test_metrics)
    mlflow.set_tag("brainvq.stopped_by_time_budget", str(stopped_early).lower())
    model = Reconstructor(result.model.cpu().eval())
    h, w = result.model.config.image_size
    example = np.zeros((1, 1, h, w), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    # MLflow 3's default 'pt2' format stores a torch.export graph (no pickled classes), traced from the example.
    mlflow.pytorch.log_model(
        model, name="model", signature=infer_signature(example, out), input_example=example,
        pip_requirements=torch_requirements(),
    )


def logged_codes(vqvae_run_id: str, num_embeddings: int) -> dict | None:
    """The code grids of a VQ-VAE run's splits as its encode_codes run logged them; None when none is logged yet."""
    from brainvq.prior_stage import SPLITS, load_codes
    from brainvq.runs import download_codes

    folder = download_codes(vqvae_run_id)
    if folder is None:
        return None
    return {name: load_codes(folder / f"{name}.npz", num_embeddings)[0] for name in SPLITS}


def prior_codes(vqvae_run_id: str, num_embeddings: int) -> dict:
    """Code grids of a VQ-VAE run's splits, encoding them (a nested encode_codes run) when none are logged yet."""
    codes = logged_codes(vqvae_run_id, num_embeddings)
    if codes is None:
        from brainvq.pipelines.encode_codes import encode_codes

        log.info("no codes logged for VQ-VAE run %s yet: encoding them now", vqvae_run_id)
        encode_codes(vqvae_run_id)
        codes = logged_codes(vqvae_run_id, num_embeddings)
    return codes


def log_prior_run(result, vqvae, train_config, vqvae_run_id: str, seed: int = 0) -> None:
    """Log the prior's report files, checkpoint, metrics and model (PyTorch flavour) to the active run."""
    import tempfile

    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from brainvq.prior_report import save_prior_report
    from brainvq.serving import PriorLogits

    with tempfile.TemporaryDirectory() as tmp:
        files = save_prior_report(result, vqvae, train_config, vqvae_run_id, tmp, seed=seed)
        for name, path in files.items():
            mlflow.log_artifact(str(path), "checkpoint" if name == "checkpoint" else None)
    if result.test_metrics:
        mlflow.log_metrics(result.test_metrics)
    prior = result.model.cpu().eval()
    h, w = prior.config.code_shape
    codes = np.zeros((1, h, w), dtype=np.int64)
    labels = np.full((1,), prior.config.num_classes, dtype=np.int64)
    with torch.no_grad():
        logits = prior(torch.from_numpy(codes), torch.from_numpy(labels)).logits.numpy()
    mlflow.pytorch.log_model(PriorLogits(prior), name="model", input_example=(codes, labels),
                             signature=infer_signature({"codes": codes, "labels": labels}, logits),
                             pip_requirements=torch_requirements())


# --------------------------------------------------------------------------------------------------- calibration
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

    from brainvq.checkpoint import atomic_save, load_model
    from brainvq.quality.evaluate import Calibration, calibrate, data_digest
    from brainvq.runs import download_artifact, find_stage_runs

    params = {"data_digest": data_digest(held_out.images, train.images), "split": split,
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

"""One MLflow run per pipeline stage: tags, params, FAILED status on error, and resumed runs linked to the ones they
continue. Used by ``pipelines/``, ``tuning/`` and ``export/``; the library's loops never import MLflow."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from typing import Iterator, Mapping

import mlflow

from brainvq.errors import one_line
from brainvq.tracking.runs import STAGE_TAG
from brainvq.values import param_str

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, object], tags: Mapping[str, str] | None = None,
              nested: bool = False, run_name: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, attach to) the stage's run; an exception ends it FAILED with the error
    logged."""
    from brainvq.tracking.store import check_tracking_store

    check_tracking_store()  # an unreachable store is a one-line error before any work, not minutes of retries
    attach = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    if attach and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=attach)
        # start_run() with no run_id would attach to MLFLOW_RUN_ID again: nested stages (encode_codes inside
        # train_prior) must get runs of their own.
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
        try:
            mlflow.set_tag("brainvq.error", one_line(exc, limit=4000))
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
            log.warning("could not update the run %s that wrote %s: %s", previous, checkpoint, one_line(exc))
    mlflow.set_tags(tags)
    for entry in json.loads(ckpt.get("history", "[]")):
        metrics = {
            k: float(v)
            for k, v in entry.items()
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if metrics:
            mlflow.log_metrics(metrics, step=int(entry["epoch"]))
    return previous

"""One MLflow run per pipeline stage: tags, params, FAILED status on error, and resumed runs linked to the ones they
continue. Used by ``pipelines/``, ``tuning/`` and ``export/``; the library's loops never import MLflow.

A process killed with SIGKILL (or by the OOM killer, or with its node) cannot end its run, which stays RUNNING. So
every run records the process that works on it (tags ``brainvq.host``, ``brainvq.pid`` and ``brainvq.pid_start``),
and a RUNNING run whose process is gone is known to be dead: :func:`claim_checkpoint` refuses to overwrite its
resumable checkpoint and ``resume`` closes it KILLED; ``brainvq cleanup`` closes the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Iterator, Mapping

import mlflow

from brainvq.errors import RunError, one_line
from brainvq.tracking.runs import PRIOR_STAGE, STAGE_TAG
from brainvq.values import param_str

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, object], tags: Mapping[str, str] | None = None,
              nested: bool = False, run_name: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, attach to) the stage's run; an exception ends it FAILED with the error
    logged."""
    from brainvq.tracking.store import check_tracking_store

    check_tracking_store()  # an unreachable store is a one-line error before any work, not minutes of retries
    system = system_metrics(stage)
    attach = os.environ.get("MLFLOW_RUN_ID") if not nested else None
    if attach and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=attach, log_system_metrics=system)
        # start_run() with no run_id would attach to MLFLOW_RUN_ID again: nested stages (encode_codes inside
        # train_prior) must get runs of their own.
        os.environ.pop("MLFLOW_RUN_ID", None)
    else:
        run = mlflow.start_run(nested=nested or mlflow.active_run() is not None, run_name=run_name or stage,
                               log_system_metrics=system)
    try:
        mlflow.set_tags({STAGE_TAG: stage, **process_tags(), **(tags or {})})
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


# Training runs record MLflow's system metrics (system/cpu_utilization_percentage, memory, disk, network; GPU
# utilisation and memory too where nvidia-ml-py is installed), charted on the run page's "System metrics" tab.
SYSTEM_METRICS_STAGES = ("train_vqvae", PRIOR_STAGE)
# MLflow samples every 10 s by default: a few points for a minutes-long training. Every 2 s costs one psutil read and
# one run lookup; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SYSTEM_METRICS_INTERVAL_S = 2


def system_metrics(stage: str) -> bool | None:
    """``log_system_metrics`` for a stage's run: True for training stages, None (MLflow's own default, from
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING) for the rest and wherever that variable is set: the user's word wins."""
    import importlib.util

    if stage not in SYSTEM_METRICS_STAGES or os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"):
        return None
    if importlib.util.find_spec("psutil") is None:  # MLflow would refuse to start the run
        log.warning("psutil is not installed: the %s run records no system metrics", stage)
        return False
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    return True


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


def _start_ticks(pid: int | str) -> str:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22); "" where there is no
    /proc. With the PID it names one process, even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # the name in parentheses may hold spaces; fields 3.. follow it


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a run left RUNNING by a killed process can be told from a live one."""
    return {"brainvq.host": socket.gethostname(), "brainvq.pid": str(os.getpid()),
            "brainvq.pid_start": _start_ticks(os.getpid())}


def process_state(tags: Mapping[str, str]) -> str:
    """``alive``, ``gone`` or ``unknown`` (another host, or a run that does not name its process) for the process
    a run's tags name."""
    host, pid = tags.get("brainvq.host"), tags.get("brainvq.pid", "")
    if host != socket.gethostname() or not pid.isdigit():
        return "unknown"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # another user's process: it exists
        pass
    started = tags.get("brainvq.pid_start", "")
    if started and _start_ticks(pid) not in ("", started):
        return "gone"  # the PID now belongs to another process
    return "alive"


def _run_status(client, run_id: str):
    """The run, or None when this tracking store does not know it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def claim_checkpoint(checkpoint: str | os.PathLike, kind: str, resume: bool) -> None:
    """Before a training run starts: may it write ``checkpoint`` (its configuration's ``last.pt``)?

    - a checkpoint of a run that FINISHED is the new run's to overwrite (the finished run logged its model); with
      ``resume`` there is nothing to continue, which is a one-line error;
    - a checkpoint of a run that did not finish (killed, failed, or from another tracking store) is continued with
      ``resume``; without it, the run is refused in one line that says how to resume or discard it, so a killed
      training is never overwritten by accident;
    - a checkpoint of a run whose process is still alive belongs to that process: refused either way;
    - a corrupt checkpoint cannot be continued: a one-line error with ``resume``, replaced (with a warning) without.
    """
    import mlflow

    from brainvq.engine.common import load_training_checkpoint
    from brainvq.errors import ModelFileError

    path = Path(checkpoint)
    try:
        ckpt = load_training_checkpoint(path, kind)
    except ModelFileError:
        if resume:
            raise  # "cannot resume: <path> is corrupt ...", left alone for the user to inspect
        log.warning("%s is corrupt and cannot be resumed; this run replaces it", path)
        return
    if ckpt is None:
        return
    previous = str(ckpt.get("mlflow_run_id") or "")
    run = _run_status(mlflow.tracking.MlflowClient(), previous) if previous else None
    status = run.info.status if run is not None else "not in this tracking store"
    epoch = int(ckpt["epoch"])
    if run is not None and run.info.status == "RUNNING" and process_state(run.data.tags) == "alive":
        raise RunError(f"{path} is being written by run {previous} (process {run.data.tags['brainvq.pid']}, still "
                       "running); wait for it to end, or stop it, before training this configuration again")
    if run is not None and run.info.status == "FINISHED":
        if resume:
            raise RunError(f"resume: {path} belongs to run {previous}, which FINISHED after epoch {epoch}; there is "
                           "nothing to continue (train without resume for a new run)")
        return
    if not resume:
        raise RunError(f"{path} holds epoch {epoch} of run {previous or '?'} ({status}), which did not finish: "
                       f"continue it with resume=true, or delete {path.parent} to start over")


def close_stale_runs(older_than_hours: float = 0.0, dry_run: bool = False) -> list[str]:
    """Close RUNNING stage runs whose process is gone as KILLED (tag ``brainvq.error`` says why); returns one line
    per RUNNING run. A run on another host (or one that names no process) is closed only when it started more than
    ``older_than_hours`` ago (0: never): this host cannot see whether its process lives."""
    from brainvq.tracking.runs import _client

    client = _client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=50000)
    lines = []
    for run in runs:
        rid, tags = run.info.run_id, run.data.tags
        what = f"run {rid} ({tags.get(STAGE_TAG, 'no stage')})"
        state = process_state(tags)
        hours = (time.time() * 1000 - run.info.start_time) / 3.6e6
        if state == "alive":
            lines.append(f"{what}: running (process {tags['brainvq.pid']}); left alone")
            continue
        if state == "gone":
            reason = f"its process {tags['brainvq.pid']} on {tags['brainvq.host']} is gone"
        elif older_than_hours > 0 and hours > older_than_hours:
            reason = f"started {hours:.1f} h ago on {tags.get('brainvq.host', 'an unknown host')}"
        else:
            lines.append(f"{what}: on {tags.get('brainvq.host', 'an unknown host')}, whose processes this host cannot "
                         "see; left alone (pass --older_than_hours to close old ones)")
            continue
        if not dry_run:
            client.set_tag(rid, "brainvq.error", f"closed KILLED by brainvq cleanup: {reason}")
            client.set_terminated(rid, "KILLED")
        lines.append(f"{what}: {'would close' if dry_run else 'closed'} KILLED ({reason})")
    return lines

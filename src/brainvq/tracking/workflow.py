"""The multi-step workflow behind ``mlflow run .``: one parent run, one child run per step, cached steps reused.

Follows MLflow's multistep_workflow example but with public APIs only (``MlflowClient.search_runs``), and always
``env_manager="local"`` so nested ``mlflow.projects.run`` calls never build environments (mlflow#6611).

A FINISHED step is reused only when three things match: its parameters, the code version (the git commit of the
project, and never when the work tree has uncommitted changes; outside git the package version plus a hash of the
sources) and, for a step that reads a data folder (``data_dir``), the data fingerprint (a digest of the folder's file
list, :func:`brainvq.data.fingerprint.data_fingerprint`). Each child run records the last two as tags
(:data:`CODE_TAG`, :data:`DATA_TAG`), and the log says in one line why a step was reused or run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import mlflow
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient

from brainvq.errors import StepFailed
from brainvq.tracking.runs import STAGE_TAG

log = logging.getLogger(__name__)
PROJECT_DIR = Path(__file__).resolve().parents[3]  # repo root (MLproject) in a source checkout
CODE_TAG = "brainvq.code_version"
DATA_TAG = "brainvq.data_digest"


class CodeVersion(NamedTuple):
    value: str  # the git commit, or "<package version>+src.<hash of the sources>" outside git
    clean: bool  # False: a git work tree with uncommitted changes (such a version is never reused)
    how: str  # "git commit" or "source hash", for the log


SOURCE_FOLDERS = ("src", "pipelines", "tuning", "export")


def code_version(project_dir: str | os.PathLike) -> CodeVersion:
    """The version of the code a pipeline step runs. In a git work tree: the commit, and whether the tree is clean
    (``git status --porcelain``: modified, staged or untracked files that .gitignore does not ignore). Elsewhere
    (an unpacked release): the package version plus a hash of every source file, which is always "clean"."""
    project = Path(project_dir)
    try:
        head = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
        if head.returncode == 0:
            status = subprocess.run(["git", "-C", str(project), "status", "--porcelain"], capture_output=True,
                                    text=True, timeout=60)
            clean = status.returncode == 0 and not status.stdout.strip()
            return CodeVersion(head.stdout.strip(), clean, "git commit")
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine: hash the sources instead
        pass
    from brainvq import __version__

    h = hashlib.sha256()
    files = [project / "MLproject", project / "pyproject.toml"]
    for folder in SOURCE_FOLDERS:
        files += sorted((project / folder).rglob("*.py"))
    for path in files:
        if path.is_file():
            h.update(os.fsencode(path.relative_to(project).as_posix()) + b"\0" + path.read_bytes() + b"\0")
    return CodeVersion(f"{__version__}+src.{h.hexdigest()[:12]}", True, "source hash")


def project_dir() -> Path:
    """The project ``mlflow run`` is running (it starts entry points in the project folder), else the checkout this
    package was installed from."""
    here = Path.cwd()
    return here if (here / "MLproject").is_file() else PROJECT_DIR


def data_digest(parameters: dict[str, str]) -> str | None:
    """The fingerprint of the step's ``data_dir`` (the demo set when empty); None for steps that read no folder
    (their inputs are upstream run IDs, which change whenever the upstream step reruns)."""
    if "data_dir" not in parameters:
        return None
    from brainvq.data.fingerprint import data_fingerprint
    from brainvq.data.splits import resolve_data_dir

    return data_fingerprint(resolve_data_dir(parameters["data_dir"])).digest


def _candidates(client: MlflowClient, experiment_id: str, entry_point: str, parameters: dict[str, str]) -> list:
    clauses = [f"tags.`{STAGE_TAG}` = '{entry_point}'", "attributes.status = 'FINISHED'"]
    clauses += [f"params.`{k}` = '{v}'" for k, v in parameters.items()]
    return client.search_runs([experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"],
                              max_results=50)


def find_reusable(client: MlflowClient, experiment_id: str, entry_point: str, parameters: dict[str, str],
                  code: CodeVersion, data: str | None) -> tuple[object | None, str]:
    """``(run, why)``: the newest FINISHED run of the step that may stand in for running it now, or None, and the
    reason either way (one line for the log)."""
    runs = _candidates(client, experiment_id, entry_point, parameters)
    if not runs:
        return None, "no FINISHED run with these parameters"
    if not code.clean:
        return None, f"the work tree at {project_dir()} has uncommitted changes (a dirty tree is never reused)"
    for run in runs:
        tags = run.data.tags
        if tags.get(CODE_TAG) == code.value and (data is None or tags.get(DATA_TAG) == data):
            made = tags.get("brainvq.data_dir")  # a step that wrote a data folder (make_demo_data)
            if made and not Path(made).is_dir():
                return None, f"run {run.info.run_id} wrote {made}, which is gone"
            what = f"code version {code.value[:12]}" + (f", data fingerprint {data}" if data else "")
            return run, f"same parameters, {what}"
    newest = runs[0].data.tags
    if newest.get(CODE_TAG) != code.value:
        was = newest.get(CODE_TAG, "")[:12] or "none recorded"
        return None, f"the code changed: run {runs[0].info.run_id} ran {was}, now {code.how} {code.value[:12]}"
    return None, (f"the data changed: run {runs[0].info.run_id} read fingerprint {newest.get(DATA_TAG) or 'none'}, "
                  f"now {data}")


def run_step(entry_point: str, parameters: dict[str, object], parent_run_id: str, force: bool = False):
    """Run an MLproject entry point as a child of ``parent_run_id``, or reuse a FINISHED run with the same
    parameters, code version and data fingerprint (see the module docstring)."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in parameters.items()}
    project = project_dir()
    code, data = code_version(project), data_digest(params)
    if force:
        why = "force=true"
    else:
        cached, why = find_reusable(client, experiment_id, entry_point, params, code, data)
        if cached is not None:
            log.info("step %s: reusing FINISHED run %s (%s)", entry_point, cached.info.run_id, why)
            client.set_tag(parent_run_id, f"brainvq.step.{entry_point}", cached.info.run_id)
            return cached
    tags = {"mlflow.parentRunId": parent_run_id, CODE_TAG: code.value if code.clean else f"{code.value}-dirty"}
    if data is not None:
        tags[DATA_TAG] = data
    child = client.create_run(experiment_id, tags=tags, run_name=entry_point)
    log.info("step %s: running %s (%s)", entry_point, child.info.run_id, why)
    try:
        submitted = mlflow.projects.run(
            str(project),
            entry_point=entry_point,
            parameters=params,
            env_manager="local",
            experiment_id=experiment_id,
            run_id=child.info.run_id,
            synchronous=True,
        )
    except ExecutionException:
        # the step has printed its own one-line error and logged it on its run (brainvq.error); the pipeline ends
        # on that line too, naming the step, instead of MLflow's traceback
        why = client.get_run(child.info.run_id).data.tags.get("brainvq.error") or "see its output above"
        raise StepFailed(f"step {entry_point} failed (run {child.info.run_id}): {why}") from None
    client.set_tag(parent_run_id, f"brainvq.step.{entry_point}", submitted.run_id)
    return client.get_run(submitted.run_id)

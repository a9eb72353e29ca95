"""The multi-step workflow behind ``mlflow run .``: one parent run, one child run per step, cached steps reused.

Follows MLflow's multistep_workflow example but with public APIs only (``MlflowClient.search_runs``), and always
``env_manager="local"`` so nested ``mlflow.projects.run`` calls never build environments (mlflow#6611).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from brainvq.tracking.runs import STAGE_TAG

log = logging.getLogger(__name__)
PROJECT_DIR = Path(__file__).resolve().parents[3]  # repo root (MLproject) in a source checkout


def _matching_run(client: MlflowClient, experiment_id: str, entry_point: str, parameters: dict[str, str]):
    clauses = [f"tags.`{STAGE_TAG}` = '{entry_point}'", "attributes.status = 'FINISHED'"]
    clauses += [f"params.`{k}` = '{v}'" for k, v in parameters.items()]
    runs = client.search_runs(
        [experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def run_step(entry_point: str, parameters: dict[str, object], parent_run_id: str, force: bool = False):
    """Run an MLproject entry point as a child of ``parent_run_id``, or reuse a FINISHED run with the same params."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in parameters.items()}
    if not force:
        cached = _matching_run(client, experiment_id, entry_point, params)
        if cached is not None:
            log.info("step %s: reusing FINISHED run %s with the same parameters", entry_point, cached.info.run_id)
            client.set_tag(parent_run_id, f"brainvq.step.{entry_point}", cached.info.run_id)
            return cached
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent_run_id}, run_name=entry_point)
    log.info("step %s: starting run %s", entry_point, child.info.run_id)
    submitted = mlflow.projects.run(
        str(PROJECT_DIR),
        entry_point=entry_point,
        parameters=params,
        env_manager="local",
        experiment_id=experiment_id,
        run_id=child.info.run_id,
        synchronous=True,
    )
    client.set_tag(parent_run_id, f"brainvq.step.{entry_point}", submitted.run_id)
    return client.get_run(submitted.run_id)

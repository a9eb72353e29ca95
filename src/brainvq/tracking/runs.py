"""Stage hand-over through MLflow: find a stage's run (or the latest one) and fetch its checkpoint.

Every stage tags its run ``brainvq.stage=<stage>``; later stages find earlier ones by run ID, ``latest`` (the newest
FINISHED run of that stage, found with MLflow's public ``MlflowClient.search_runs``) or a registered model version,
``models:/<name>@<alias>`` or ``models:/<name>/<version>``, which stands for the run it was registered from.
"""

from __future__ import annotations

import os
from pathlib import Path

from brainvq.errors import RunError, one_line

STAGE_TAG = "brainvq.stage"
MODELS_URI = "models:/"  # a registered model version, by alias or number: models:/brainvq-prior@champion
PRIOR_STAGE = "train_prior"
# Stage names of older brainvq releases, found under today's name (their runs keep their tags and artifacts).
LEGACY_STAGES = {PRIOR_STAGE: ("train_pixelcnn",)}
CHECKPOINT_ARTIFACT = {"train_vqvae": "checkpoint/vqvae.pt", PRIOR_STAGE: "checkpoint/prior.pt",
                       "train_pixelcnn": "checkpoint/pixelcnn.pt"}
CHECKPOINT_KIND = {"train_vqvae": "vqvae", PRIOR_STAGE: "prior"}


def stage_names(stage: str) -> tuple[str, ...]:
    """``stage`` and the names its runs carried in older releases."""
    return (stage, *LEGACY_STAGES.get(stage, ()))


def prior_run_id_tag(tags: dict[str, str]) -> str:
    """The prior run a run or ONNX file records (``brainvq.prior_run_id``; ``brainvq.pixelcnn_run_id`` before)."""
    return tags.get("brainvq.prior_run_id") or tags.get("brainvq.pixelcnn_run_id") or ""


def _client():
    from mlflow.tracking import MlflowClient

    from brainvq.tracking.store import check_tracking_store

    check_tracking_store()  # one-line error in seconds instead of MLflow's minutes of retries
    return MlflowClient()


def _experiment_ids(client, experiment_name: str | None) -> list[str]:
    import mlflow

    name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        exp = client.get_experiment_by_name(name)
        return [exp.experiment_id] if exp else []
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if exp_id:
        return [exp_id]
    active = mlflow.active_run()
    if active is not None:
        return [active.info.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def version_run_id(spec: str, client=None) -> str:
    """The source run of a registered model version, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    from mlflow.exceptions import MlflowException

    client = client or _client()
    ref = spec[len(MODELS_URI) :].strip("/")
    name, alias = ref.split("@", 1) if "@" in ref else (ref, "")
    name, _, version = name.partition("/")
    if not name or not (alias or version.isdigit()):
        raise RunError(f"bad model URI {spec!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise RunError(f"no registered model version {spec} ({one_line(exc)})") from None
    if not mv.run_id:
        raise RunError(f"{spec} records no source run; pass the run ID instead")
    return mv.run_id


def resolve_run(run_id: str, stage: str, experiment_name: str | None = None):
    """Return the MLflow ``Run`` for ``run_id`` (a run ID, ``latest`` or a ``models:/`` URI of a registered model
    version: its source run), checking it is a FINISHED run of ``stage``."""
    from mlflow.exceptions import MlflowException

    client = _client()
    run_id = (run_id or "").strip()
    if run_id.startswith(MODELS_URI):
        run_id = version_run_id(run_id, client)
    if run_id in ("", "latest"):
        runs = [r for name in stage_names(stage) for r in client.search_runs(
            _experiment_ids(client, experiment_name),
            filter_string=f"tags.`{STAGE_TAG}` = '{name}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )]
        runs.sort(key=lambda r: r.info.start_time, reverse=True)
        if not runs:
            raise RunError(f"no FINISHED {stage} run found for run id 'latest'; run `mlflow run . -e {stage}` first")
        return runs[0]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RunError(f"unknown MLflow run id {run_id!r} (tracking URI {_tracking_uri()})") from None
    got = run.data.tags.get(STAGE_TAG)
    if got not in stage_names(stage):
        raise RunError(f"run {run_id} is a {got or 'non-brainvq'} run, expected a {stage} run")
    if run.info.status != "FINISHED":
        raise RunError(f"run {run_id} ({stage}) has status {run.info.status}, expected FINISHED")
    return run


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def download_artifact(run_id: str, artifact_path: str, dst_dir: str | os.PathLike | None = None) -> Path:
    """Download one artifact of a run and return its local path."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=dst_dir and str(dst_dir)
        )
    except (MlflowException, OSError) as exc:
        raise RunError(f"run {run_id} has no artifact {artifact_path!r} ({one_line(exc)})") from None
    return Path(local)


def fetch_checkpoint(run_id: str, stage: str, dst_dir: str | os.PathLike | None = None) -> tuple[Path, object]:
    """Resolve ``run_id`` for ``stage`` and download its checkpoint: returns ``(path, run)``."""
    run = resolve_run(run_id, stage)
    artifact = CHECKPOINT_ARTIFACT[run.data.tags.get(STAGE_TAG, stage)]
    return download_artifact(run.info.run_id, artifact, dst_dir), run


def load_stage_model(run_id: str, stage: str):
    """Model of a finished stage run (run ID, ``latest`` or ``models:/<name>@<alias>``): ``(model, ckpt, run)``."""
    from brainvq.errors import ModelFileError
    from brainvq.models.checkpoint import load_model

    path, run = fetch_checkpoint(run_id, stage)
    try:
        model, ckpt = load_model(path, kind=CHECKPOINT_KIND[stage])
    except ModelFileError as exc:  # name the run's artifact, not the temporary download folder
        where = f"runs:/{run.info.run_id}/{CHECKPOINT_ARTIFACT[run.data.tags.get(STAGE_TAG, stage)]}"
        raise ModelFileError(str(exc).replace(str(path), where)) from None
    return model, ckpt, run


def find_stage_runs(
    stage: str,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    status: str = "FINISHED",
    experiment_name: str | None = None,
) -> list:
    """FINISHED runs of a stage whose tags/params match exactly, newest first (public search API only)."""
    client = _client()
    clauses = [f"tags.`{STAGE_TAG}` = '{stage}'", f"attributes.status = '{status}'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    clauses += [f"params.`{k}` = '{v}'" for k, v in (params or {}).items()]
    return client.search_runs(
        _experiment_ids(client, experiment_name),
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
    )


def download_codes(vqvae_run_id: str) -> Path | None:
    """Local folder with ``{train,val,test}.npz`` of the newest encode_codes run for a VQ-VAE run, or None."""
    runs = find_stage_runs("encode_codes", tags={"brainvq.vqvae_run_id": vqvae_run_id})
    if not runs:
        return None
    return download_artifact(runs[0].info.run_id, "codes")

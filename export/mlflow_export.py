"""The ``export_onnx`` stage: resolve the runs, export, log the files and the decoder/prior as ONNX models."""

from __future__ import annotations

import tempfile
from pathlib import Path

from brainvq.errors import ConfigError, ModelFileError, RunError, one_line

OPSETS = range(13, 21)  # the legacy exporter's range that onnxruntime 1.31 runs (Gather on int64, opset-13 Split)


def onnx_requirements() -> list[str]:
    """Pinned requirements for logged ONNX models (skips MLflow's slow requirement inference)."""
    from importlib.metadata import version

    return [f"onnx=={version('onnx')}", f"onnxruntime-gpu=={version('onnxruntime-gpu')}"]


def export_runs(vqvae_run_id: str, prior_run_id: str, opset: int = 17, out_dir=None) -> tuple[dict[str, Path], str]:
    """Export the models of two finished runs inside an ``export_onnx`` MLflow run; returns ``(files, run_id)``."""
    import mlflow
    import onnx

    from brainvq.export.onnx_graphs import export_models
    from brainvq.tracking.runs import PRIOR_STAGE, load_stage_model
    from brainvq.tracking.stage import stage_run

    prior, prior_ckpt, prior_run = load_stage_model(prior_run_id, PRIOR_STAGE)
    px_id = prior_run.info.run_id
    recorded = str(prior_ckpt.get("vqvae_run_id") or prior_run.data.tags.get("brainvq.vqvae_run_id") or "")
    vq_ref = (vqvae_run_id or "").strip()
    if vq_ref in ("", "latest") and recorded:
        vq_ref = recorded  # the VQ-VAE whose codes the prior was trained on, not whichever ran last
    vqvae, _, vq_run = load_stage_model(vq_ref or "latest", "train_vqvae")
    vq_id = vq_run.info.run_id
    if recorded and recorded != vq_id:
        raise RunError(f"prior run {px_id} was trained on VQ-VAE run {recorded}, not {vq_id}; "
                       "pass --vqvae_run_id latest (or the recorded id) to export a matching pair")
    params = {"vqvae_run_id": vq_id, "prior_run_id": px_id, "opset": opset}
    tags = {"brainvq.vqvae_run_id": vq_id, "brainvq.prior_run_id": px_id}
    with stage_run("export_onnx", params, tags=tags) as run:
        if opset not in OPSETS:  # inside the run: a bad request is recorded as a FAILED export with its reason
            raise ConfigError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
        out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="brainvq_onnx_"))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only mount: say which parameter, not a traceback
            raise ConfigError(f"out_dir: cannot create {out} ({exc.strerror or exc})") from None
        try:
            files = export_models(vqvae, prior, out, opset=opset,
                                  meta={"vqvae_run_id": vq_id, "prior_run_id": px_id})
        except (RuntimeError, ValueError, TypeError, onnx.checker.ValidationError) as exc:
            raise ModelFileError(f"ONNX export of runs {vq_id}/{px_id} failed ({one_line(exc)})") from None
        for path in files.values():
            mlflow.log_artifact(str(path), "onnx")
        reqs = onnx_requirements()
        for name in ("decoder", "prior"):
            try:
                model = onnx.load(str(files[name]))
            except Exception as exc:  # noqa: BLE001
                raise ModelFileError(f"could not re-read {files[name]} ({exc})") from None
            mlflow.onnx.log_model(model, name=f"{name}_model", pip_requirements=reqs, save_as_external_data=False)
        props = {p.key: p.value for p in onnx.load(str(files["decoder"])).metadata_props}
        mlflow.set_tag("brainvq.pair_id", props["brainvq.pair_id"])
    return files, run.info.run_id

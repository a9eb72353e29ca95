"""The ``export_onnx`` stage: resolve the runs, export, log the files, the decoder/prior as ONNX models and the whole
set as the pyfunc model ``sampler`` (``export/pyfunc_sampler.py``) that ``brainvq-sampler`` versions are made from."""

from __future__ import annotations

import tempfile
from pathlib import Path

from brainvq.errors import ConfigError, ModelFileError, RunError, one_line

OPSETS = range(13, 21)  # the legacy exporter's range that onnxruntime 1.31 runs (Gather on int64, opset-13 Split)
SAMPLER_PARAMS = ("n", "label", "seed", "temperature", "top_k", "level", "pixel_temperature", "guidance")  # sample-onnx
# pyproject.toml's markers: onnxruntime-gpu where NVIDIA builds wheels, plain onnxruntime elsewhere (macOS, Windows)
GPU_WHEELS = "platform_system == 'Linux' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')"
NO_GPU_WHEELS = "platform_system != 'Linux' or (platform_machine != 'x86_64' and platform_machine != 'aarch64')"


def onnx_requirements() -> list[str]:
    """Pinned requirements for logged ONNX models (skips MLflow's slow requirement inference)."""
    from importlib.metadata import version

    return [f"onnx=={version('onnx')}", onnxruntime_requirement()]


def onnxruntime_requirement() -> str:
    """The onnxruntime distribution installed here, pinned: ``onnxruntime-gpu`` on Linux x86_64/aarch64, plain
    ``onnxruntime`` elsewhere (pyproject.toml chooses by environment markers; both import as ``onnxruntime``)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:
            continue
    raise ModelFileError("onnxruntime is not installed (pip install onnxruntime-gpu, or onnxruntime on macOS)")


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
        log_sampler_model(files)
        props = {p.key: p.value for p in onnx.load(str(files["decoder"])).metadata_props}
        mlflow.set_tag("brainvq.pair_id", props["brainvq.pair_id"])
    return files, run.info.run_id


def sampler_requirements() -> list[str]:
    """The pyfunc sampler's requirements: the torch-free set, pinned to what runs here (onnxruntime-gpu, or plain
    onnxruntime by environment marker, as pyproject.toml chooses)."""
    from importlib.metadata import version

    ort = onnxruntime_requirement().split("==", 1)[1]  # both distributions release the same versions
    return [f"numpy=={version('numpy')}", f"pillow=={version('pillow')}",
            f"onnxruntime-gpu=={ort}; {GPU_WHEELS}", f"onnxruntime=={ort}; {NO_GPU_WHEELS}"]


def sampler_signature():
    """No input (MLflow's protocol wants one: ``[]``), a list of base64 PNG strings out, and the params of
    ``brainvq sample-onnx`` with its defaults (brainvq.cli.params, the one table)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from brainvq.cli.params import entry_point

    types = {"int": "long", "float": "double", "str": "string"}
    sample = entry_point("sample-onnx")
    specs = [ParamSpec(p.name, types[p.kind], p.default) for p in map(sample.param, SAMPLER_PARAMS)]
    return ModelSignature(inputs=None, outputs=Schema([ColSpec("string")]), params=ParamSchema(specs))


def _import_time_imports(path: Path):
    """Module names a source file imports when it is imported (function bodies left out: their imports are lazy)."""
    import ast

    stack = list(ast.parse(path.read_text(), str(path)).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        else:
            stack.extend(ast.iter_child_nodes(node))


# Marks the partial copy of brainvq a logged sampler carries (pyfunc_sampler.py moves it behind an installed brainvq).
CARRIED_MARKER = "CARRIED_BY_MODEL"


def sampler_code_paths(dst: Path) -> list[str]:
    """Copy the modules of brainvq that the pyfunc model file imports, and those they import, with their packages'
    ``__init__.py``, into ``dst/brainvq``; returns it for ``code_paths``. That copy is torch-free (the modules the
    onnxruntime sampler runs on), so the logged model needs brainvq only as far as it carries it."""
    import importlib.util
    import shutil

    todo, done = [Path(__file__).with_name("pyfunc_sampler.py")], {}  # module -> is a package
    while todo:
        for name in _import_time_imports(todo.pop()):
            parts = name.split(".")
            if parts[0] != "brainvq":
                continue
            for k in range(1, len(parts) + 1):  # the packages above the module, then the module
                module = ".".join(parts[:k])
                if module not in done:
                    spec = importlib.util.find_spec(module)  # imports the packages above it (light), not `module`
                    if spec is None or not spec.origin:
                        break
                    done[module] = package = bool(spec.submodule_search_locations)
                    rel = Path(*module.split("."))
                    target = dst / rel / "__init__.py" if package else dst / rel.with_suffix(".py")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(spec.origin, target)
                    todo.append(Path(spec.origin))
                if not done[module]:  # `from brainvq.errors import BrainVQError`: the rest is a name, not a module
                    break
    (dst / "brainvq" / CARRIED_MARKER).write_text("the brainvq modules the brainvq-sampler pyfunc model runs on\n")
    return [str(dst / "brainvq")]


def log_sampler_model(files: dict[str, Path]):
    """Log ``brainvq-sampler``'s pyfunc model into the active export_onnx run: the model file
    ``pyfunc_sampler.py`` ("models from code": nothing pickled), the four ONNX files as its artifacts, the brainvq
    modules it runs on as its code, the torch-free requirements, the signature and an input example."""
    import mlflow

    from brainvq.cli.params import entry_point
    from brainvq.tracking.registry import SAMPLER_MODEL  # the name brainvq-sampler versions are registered from

    example = {"n": 2, "label": entry_point("sample-onnx").param("label").default, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="brainvq_code_") as tmp:
        return mlflow.pyfunc.log_model(
            name=SAMPLER_MODEL,
            python_model=str(Path(__file__).with_name("pyfunc_sampler.py")),
            artifacts={name: str(path) for name, path in files.items()},
            code_paths=sampler_code_paths(Path(tmp)),
            signature=sampler_signature(),
            input_example=([], example),
            pip_requirements=sampler_requirements(),
            model_config={"provider": "auto"},
        )

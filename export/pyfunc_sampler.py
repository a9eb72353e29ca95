"""The ``brainvq-sampler`` MLflow pyfunc model, logged "from code": MLflow runs this file to load the model.

It is not imported by brainvq: ``brainvq.export.mlflow_export.log_sampler_model`` logs it (inside the export_onnx
run) with the four ONNX files as its artifacts, the torch-free modules of brainvq it needs as its code, and a
signature whose params are those of ``brainvq sample-onnx``. No pickle is written or read: loading it runs this
file, which builds the model from the ONNX files.

Python::

    model = mlflow.pyfunc.load_model("models:/brainvq-sampler@champion")
    pngs = model.predict(None, params={"n": 4, "label": "AD", "seed": 0})  # list of 4 base64 PNG strings

REST (``mlflow models serve -m models:/brainvq-sampler@champion --env-manager local -p 5000``)::

    POST /invocations  {"inputs": [], "params": {"n": 4, "label": "AD", "seed": 0}}
    ->  {"predictions": ["iVBORw0KGgo...", ...]}

The answer is a list of ``n`` base64-encoded 8-bit grey PNGs (H x W), byte for byte the ``sample_<i>.png`` files
``brainvq sample-onnx`` writes for the same params (``brainvq.export.api.decode_png_base64`` turns them into a
``(n, H, W)`` uint8 array). The input is ignored (MLflow's protocol needs one: send ``[]``). Params left out take
their defaults from the signature; ``level`` is a string (``"0.5"``, ``random`` or ``none``). A bad value is a
400 answer whose message is brainvq's one-line error. ``model_config={"provider": "cpu"}`` (or ``"cuda"``;
default ``auto``) and ``{"threads": k}`` choose how onnxruntime runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import mlflow
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

# MLflow puts the model's code folder first on sys.path. The brainvq there is a partial copy (the sampler's modules):
# anywhere on the path it would shadow an installed brainvq (an editable install's finder comes after every path
# entry) for later imports in this process and the processes it spawns (`brainvq.data.adni` not found). So it stays
# on the path only where no brainvq is installed, which is what it is carried for. (The marker's name is
# mlflow_export.CARRIED_MARKER, which cannot be imported before this.)
_carried = [p for p in sys.path if (Path(p) / "brainvq" / "CARRIED_BY_MODEL").is_file()]
for _entry in _carried:
    sys.path.remove(_entry)
if importlib.util.find_spec("brainvq") is None:
    sys.path.extend(_carried)

from brainvq.errors import BrainVQError  # noqa: E402
from brainvq.export.api import Sampler, png_base64  # noqa: E402
from brainvq.export.ort_sampler import OnnxSampler  # noqa: E402

# Import brainvq at module level only: the modules logged with the model are these and those they import at module
# level (brainvq.export.mlflow_export.sampler_code_paths); served alone, the model runs on that copy.


class SamplerModel(PythonModel):
    """Sampling params in, base64 PNG slices out (see the module docstring)."""

    # The input is ignored and the params are checked against the signature, so there is nothing for MLflow's
    # type-hint validation to check: this is MLflow's switch for that (its ChatModel sets it), which also keeps its
    # "add type hints to predict" warning off every export and load. Were it to go, only that warning would return.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        folders = {Path(p).parent for p in context.artifacts.values()}  # the four .onnx files, side by side
        if len(folders) != 1:
            raise mlflow.MlflowException(f"brainvq-sampler: its ONNX artifacts are not in one folder ({folders})")
        config = context.model_config or {}
        onnx = OnnxSampler(folders.pop(), config.get("provider", "auto"), config.get("threads"))
        self.sampler = Sampler(onnx, "brainvq-sampler")

    def predict(self, context, model_input, params=None) -> list[str]:
        try:
            images = self.sampler.sample(**(params or {}))  # (n,1,H,W); the signature's params, defaults filled
        except BrainVQError as exc:  # a bad label, seed, temperature...: a 400 answer with the one-line reason
            raise mlflow.MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return png_base64(images)


mlflow.models.set_model(SamplerModel())

"""The layering of README's ARCHITECTURE section, enforced: imports only point down, and only tracking/ (and the entry
scripts above it) imports MLflow. Every import is read from the source, function-local ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src" / "brainvq"
# Lower layers never import higher ones; a layer may import its own package and any lower layer.
LAYERS = {
    "errors": 0, "logs": 0, "cpus": 0, "values": 0.5, "__init__": 0, "__main__": 7,
    "data": 1, "models": 1,
    "quality": 2, "sampling": 2,
    "engine": 3,
    "stages": 4,
    "tracking": 5,
    "cli": 6,
    "pipelines": 7, "tuning": 7, "export": 7,  # the entry scripts (top-level folders, installed as brainvq.*)
}
ENTRY_FOLDERS = ("pipelines", "tuning", "export")
# The package front door: brainvq.load_sampler imports the notebook API when it is called (the one import upwards).
FRONT_DOOR = {("__init__", "brainvq.export.api")}


def _modules():
    """(path, layer name) of every library module and entry script."""
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        yield path, rel.parts[0]
    for folder in ENTRY_FOLDERS:
        for path in sorted((REPO / folder).glob("*.py")):
            yield path, folder


def _imports(path: Path):
    """Every module name a file imports (absolute names; ``from . import x`` resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; brainvq uses absolute imports")
            yield node.lineno, node.module or ""


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "brainvq":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize(
    "path, layer", list(_modules()), ids=lambda v: str(v).split("/brainvq/")[-1] if isinstance(v, Path) else v
)
def test_imports_point_down_and_only_tracking_imports_mlflow(path, layer):
    rank = LAYERS[layer]
    for line, module in _imports(path):
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        if module.split(".")[0] == "mlflow":
            assert layer == "tracking" or layer in ENTRY_FOLDERS, (
                f"{where}: only tracking/ and entry scripts use MLflow"
            )
        target = _layer_of(module)
        if target is None or target == layer or (layer, module) in FRONT_DOOR:
            continue
        assert target in LAYERS, f"{where}: {target} has no place in the layering (README, ARCHITECTURE)"
        assert LAYERS[target] < rank or (layer in ENTRY_FOLDERS and target in ENTRY_FOLDERS), (
            f"{where}: {layer} (layer {rank}) must not import {target} (layer {LAYERS[target]})"
        )


def test_every_library_folder_has_a_layer():
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__")}
    modules = {p.stem for p in SRC.glob("*.py")}
    assert folders | modules <= set(LAYERS), (folders | modules) - set(LAYERS)


def test_the_torch_free_sampler_stays_torch_free():
    """export/ort_sampler.py and what it imports from the library must never pull in torch."""
    import subprocess
    import sys

    code = (
        "import sys, brainvq.export.sample_onnx, brainvq.export.ort_sampler; "
        "bad = [m for m in ('torch', 'mlflow') if m in sys.modules]; assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]

"""One source of truth for parameters: MLproject, every entry script's parser and the config dataclasses agree with
brainvq.cli.params, name by name and default by default."""

from __future__ import annotations

import dataclasses
import importlib
import runpy

import pytest
import yaml

from brainvq.cli.params import ENTRY_POINTS, render_mlproject
from conftest import REPO


def test_mlproject_is_the_rendered_table():
    assert (REPO / "MLproject").read_text() == render_mlproject(), \
        "MLproject differs from brainvq.cli.params: run `python -m brainvq.cli.params > MLproject`"


@pytest.mark.parametrize("entry", list(ENTRY_POINTS.values()), ids=lambda e: e.prog)
def test_each_script_parser_is_built_from_the_table(entry):
    parser = runpy.run_path(str(REPO / entry.script), run_name="not_main")["build_parser"]()
    options = {a.dest: a for a in parser._actions if a.option_strings}
    options.pop("help")
    assert set(options) == {p.name for p in entry.params}, entry.script
    for p in entry.params:
        assert options[p.name].default == p.default, p.name
        assert f"--{p.name}" in options[p.name].option_strings


def test_mlproject_entries_pass_every_parameter_under_its_own_name():
    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for entry in ENTRY_POINTS.values():
        if not entry.name:
            continue
        e = spec[entry.name]
        names = [p.name for p in entry.params if p.mlproject]
        assert list(e["parameters"]) == names, entry.name
        assert e["command"] == " ".join([f"python {entry.script}"] + [f"--{n} {{{n}}}" for n in names])
        for p in entry.params:
            assert str(e["parameters"][p.name]["default"]) == (p.spelled() if p.kind not in ("int", "float")
                                                               else str(e["parameters"][p.name]["default"]))
            if p.kind in ("int", "float"):
                assert float(e["parameters"][p.name]["default"]) == float(p.default), p.name


def test_defaults_equal_the_config_fields_they_fill():
    checked = 0
    for entry in ENTRY_POINTS.values():
        for p in entry.params:
            if not p.field:
                continue
            module, rest = p.field.split(":")
            cls_name, field_name = rest.split(".")
            cls = getattr(importlib.import_module(module), cls_name)
            default = {f.name: f for f in dataclasses.fields(cls)}[field_name].default
            if default is dataclasses.MISSING:
                default = {f.name: f for f in dataclasses.fields(cls)}[field_name].default_factory()
            assert default == p.default, f"{entry.prog} --{p.name}: table {p.default!r}, {p.field} {default!r}"
            checked += 1
    assert checked >= 25


def test_the_table_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, brainvq.cli.params; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0

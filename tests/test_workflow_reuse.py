"""`mlflow run .` reuses a FINISHED step only when its parameters, code version and data fingerprint all match: a
committed code edit, uncommitted changes and changed data each make the step run again, and the log says why."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, write_tiny_adni
from tiny_chain import TINY_VQVAE

pytestmark = pytest.mark.slow


def git(cwd, *args) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env).stdout


def project_copy(dest, with_git: bool = True):
    """This project's files as they are now (tracked and new ones .gitignore keeps), committed in a fresh repo."""
    files = git(REPO, "ls-files", "-co", "--exclude-standard").splitlines()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    if with_git:
        git(dest, "init", "-q")
        git(dest, "add", "-A")
        git(dest, "commit", "-q", "-m", "copy")
    return dest


def vqvae_params(data) -> dict:
    flags = dict(zip(TINY_VQVAE[::2], TINY_VQVAE[1::2]))
    # values spelled as the entry point logs them (max_minutes is a float: "0.0"), as `main` passes them
    return {"data_dir": str(data), "epochs": 1, **{k.lstrip("-"): v for k, v in flags.items()}, "max_minutes": 0.0}


def test_a_step_is_reused_only_with_the_same_code_and_data_and_the_log_says_why(tmp_path, monkeypatch, caplog):
    from brainvq.tracking.workflow import CODE_TAG, DATA_TAG, code_version, data_digest, find_reusable, run_step

    project = project_copy(tmp_path / "project")
    data = write_tiny_adni(tmp_path / "adni")
    monkeypatch.chdir(project)  # `mlflow run` starts the pipeline in the project folder
    client = MlflowClient()
    exp = client.get_experiment_by_name("Default").experiment_id
    parent = client.create_run(exp).info.run_id
    params = vqvae_params(data)
    caplog.set_level(logging.INFO, logger="brainvq.tracking.workflow")

    first = run_step("train_vqvae", params, parent)
    assert first.info.status == "FINISHED"
    version = code_version(project)
    assert version.clean and first.data.tags[CODE_TAG] == version.value == git(project, "rev-parse", "HEAD").strip()
    assert len(first.data.tags[DATA_TAG]) == 16
    assert "no FINISHED run with these parameters" in caplog.text

    again = run_step("train_vqvae", params, parent)
    assert again.info.run_id == first.info.run_id
    reused = f"reusing FINISHED run {first.info.run_id} (same parameters, code version {version.value[:12]}"
    assert reused in caplog.text

    # what would rerun, asked without training: uncommitted changes, then changed data
    script = project / "pipelines" / "train_vqvae.py"
    script.write_text(script.read_text() + "\n# an edit\n")
    dirty = code_version(project)
    assert not dirty.clean and dirty.value == version.value
    params_s = {k: str(v) for k, v in params.items()}
    run, why = find_reusable(client, exp, "train_vqvae", params_s, dirty, first.data.tags[DATA_TAG])
    assert run is None and "uncommitted changes" in why
    png = next((data / "train" / "AD").iterdir())
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))  # the same name, rewritten
    changed = data_digest(params_s)
    assert changed != first.data.tags[DATA_TAG]
    run, why = find_reusable(client, exp, "train_vqvae", params_s, version, changed)
    assert run is None and "the data changed" in why

    # the edit, committed: a new code version, so the step would run again (the run that would replace it records
    # the new version and fingerprint exactly as the first run recorded its own, above)
    git(project, "commit", "-q", "-am", "edit")
    edited = code_version(project)
    assert edited.clean and edited.value != version.value
    run, why = find_reusable(client, exp, "train_vqvae", params_s, edited, first.data.tags[DATA_TAG])
    assert run is None and why.startswith(f"the code changed: run {first.info.run_id} ran {version.value[:12]}")


def test_outside_git_the_code_version_is_the_package_version_and_a_hash_of_the_sources(tmp_path):
    from brainvq import __version__
    from brainvq.tracking.workflow import code_version

    project = project_copy(tmp_path / "release", with_git=False)
    before = code_version(project)
    assert before.how == "source hash" and before.clean and before.value.startswith(f"{__version__}+src.")
    assert code_version(project) == before  # deterministic
    (project / "src" / "brainvq" / "quality" / "metrics.py").write_text("# edited\n", encoding="utf-8")
    after = code_version(project)
    assert after.value != before.value and after.value.startswith(f"{__version__}+src.")


def test_the_data_fingerprint_sees_added_renamed_and_rewritten_files_but_not_a_moved_folder(tmp_path):
    from brainvq.data.fingerprint import data_fingerprint

    data = write_tiny_adni(tmp_path / "a")
    fp = data_fingerprint(data)
    assert fp.files == 32 and fp.bytes > 0
    moved = tmp_path / "b"
    shutil.copytree(data, moved, copy_function=shutil.copy2)  # copy2 keeps modification times
    assert data_fingerprint(moved).digest == fp.digest
    png = sorted((moved / "test" / "NC").iterdir())[0]
    png.rename(png.with_name("renamed_000.png"))
    renamed = data_fingerprint(moved)
    assert renamed.digest != fp.digest and renamed.files == fp.files
    (moved / "train" / "NC" / "extra_000.png").write_bytes(b"x")
    assert data_fingerprint(moved).files == fp.files + 1

"""Bad inputs across the stages, each through the real CLI in a subprocess (the README's "What happens when…" table).

Every failing case must give: a non-zero exit, one line `brainvq <command>: error: …` as the last line of stderr and no
traceback, a FAILED MLflow run when the command had started one (no run otherwise), and no registered model.
Accepted inputs (RGB, 16-bit, mixed sizes) must train, with one warning for the colour conversion.

One tiny lineage is trained in-process once; every case then runs against its own copy of that SQLite store, so the
cases can run side by side (they are mostly interpreter and torch start-up) without sharing a database file.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import postgres_available, write_tiny_adni
from tiny_chain import subprocess_env, tiny_store, train_lineage, train_prior

pytestmark = pytest.mark.slow

PG_SECRET = "Sup3r-s3cret-" + uuid.uuid4().hex[:8]  # must never reach stderr or the MLflow store
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


@dataclass
class Case:
    """One bad input: the CLI arguments (given the fixture's context), what the error line must say, and whether the
    command gets far enough to start an MLflow run (which must then end FAILED)."""

    id: str
    argv: Callable[[dict], list[str]]
    expect: str
    starts_run: bool = False
    env: Callable[[dict], dict] = field(default=lambda ctx: {})
    needs_postgres: bool = False
    max_seconds: float | None = None  # for the tracking cases: fail fast, not after minutes of retries


def _train(data_key: str, *extra: str) -> Callable[[dict], list[str]]:
    return lambda ctx: ["train-vqvae", "--data_dir", str(ctx[data_key]), "--image_size", "32x32", "--epochs", "1",
                        "--batch_size", "4", "--hidden_channels", "8", "--latent_dim", "4", "--num_embeddings", "8",
                        "--num_res_layers", "1", "--val_fraction", "0.34", "--max_minutes", "0", *extra]


def _sample(model_key: str, *extra: str) -> Callable[[dict], list[str]]:
    return lambda ctx: ["sample-onnx", "--model_dir", str(ctx[model_key]), "--n", "2", "--provider", "cpu",
                        "--out", str(ctx["case_dir"] / "samples"), *extra]


CASES = [
    # data layout and files (train_vqvae reads them inside its run)
    Case("data_dir_missing", _train("missing"), "data_dir does not exist", starts_run=True),
    Case("layout_no_train_test", _train("no_splits"), "missing split folder", starts_run=True),
    Case("layout_mixed", _train("mixed_layout"), "mixes AD/NC subfolders with loose PNG files", starts_run=True),
    Case("png_zero_byte", _train("zero_byte"), "empty (zero-byte) image file", starts_run=True),
    Case("png_truncated", _train("truncated"), "corrupt or unreadable image file", starts_run=True),
    Case("png_not_an_image", _train("not_image"), "not an image file", starts_run=True),
    # a few hundred bytes that declare 40,000 x 40,000 pixels: PIL's DecompressionBombError is not an OSError
    Case("png_decompression_bomb", _train("bomb"), "corrupt or unreadable image file", starts_run=True),
    Case("png_dangling_symlink", _train("dangling"), "unreadable image file", starts_run=True),
    # parameters
    Case("epochs_negative", _train("data", "--epochs", "-1"), "epochs must be >= 1"),
    Case("n_zero", _sample("onnx", "--n", "0"), "n and batch_size must be >= 1"),
    Case("temperature_nan", _sample("onnx", "--temperature", "nan"), "temperature must be a finite number > 0"),
    # passes the range check, then overflows the logits: must not write images of code 0 from NaN probabilities
    Case("temperature_overflows", _sample("onnx", "--temperature", "1e-310"), "temperature 1e-310 is too small"),
    Case("seed_negative_sampling", _sample("onnx", "--seed", "-1"), "seed must be >= 0, got -1"),
    Case("max_minutes_nan", _train("data", "--max_minutes", "nan"), "max_minutes must be a finite number >= 0"),
    Case("dilation_cycle_not_integers", lambda ctx: ["train-prior", "--vqvae_run_id", ctx["vqvae"],
                                                     "--dilation_cycle", "1,two"],
         "dilation_cycle must be comma-separated integers such as 1,2,4, got '1,two'"),
    Case("opset_out_of_range", lambda ctx: ["export-onnx", "--prior_run_id", ctx["prior"], "--opset", "5"],
         "opset must be in", starts_run=True),
    Case("out_unwritable", lambda ctx: ["sample-onnx", "--model_dir", str(ctx["onnx"]), "--provider", "cpu",
                                        "--out", str(ctx["blocker"] / "samples")], "out: cannot write samples"),
    Case("out_dir_unwritable", lambda ctx: ["export-onnx", "--prior_run_id", ctx["prior"],
                                            "--out_dir", str(ctx["blocker"] / "onnx")],
         "out_dir: cannot create", starts_run=True),
    # runs
    Case("unknown_run_id", lambda ctx: ["export-onnx", "--prior_run_id", UNKNOWN_RUN], "unknown MLflow run id"),
    # `register` is torch-free, so these run in a second where a training command spends five importing torch
    Case("run_of_wrong_kind", lambda ctx: ["register", "--prior_run_id", ctx["vqvae"]],
         "is a train_vqvae run, expected a train_prior run"),
    Case("register_failed_run", lambda ctx: ["register", "--vqvae_run_id", ctx["failed_vqvae"]],
         "has status FAILED, expected FINISHED"),
    # model files
    Case("codebook_mismatch", _sample("mixed_onnx"), "disagree on the codebook size"),
    Case("onnx_truncated", _sample("truncated_onnx"), "is corrupt or not an ONNX model"),
    Case("checkpoint_tampered", lambda ctx: ["export-onnx", "--prior_run_id", ctx["tampered_prior"]],
         "checkpoint/prior.pt is corrupt or not a brainvq checkpoint (weights_only=True refused it: "
         "Unsupported global: GLOBAL argparse.Namespace)"),
    # tracking store
    Case("tracking_server_unreachable", _train("data"), "MLflow tracking server http://127.0.0.1:1 is unreachable",
         env=lambda ctx: {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, max_seconds=60),
    Case("postgres_wrong_password", lambda ctx: ["register", "--vqvae_run_id", "latest"], "refused the connection",
         env=lambda ctx: {"MLFLOW_TRACKING_URI": f"postgresql://brainvq_no_such_role:{PG_SECRET}@127.0.0.1:5432/test"},
         needs_postgres=True, max_seconds=60),
]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _bad_data(root: Path) -> dict[str, Path]:
    """One folder per bad layout or file, next to good tiny data."""
    paths = {"missing": root / "no_such_folder"}
    paths["no_splits"] = root / "no_splits"
    _png(paths["no_splits"] / "s1_000.png", np.zeros((32, 32), np.uint8))
    paths["mixed_layout"] = write_tiny_adni(root / "mixed_layout", subjects_per_class=1, slices=2)
    _png(paths["mixed_layout"] / "train" / "loose_000.png", np.zeros((32, 32), np.uint8))
    for name, content in (("zero_byte", b""), ("truncated", None), ("not_image", b"subject,slice\n1,2\n")):
        paths[name] = write_tiny_adni(root / name, subjects_per_class=1, slices=2)
        bad = paths[name] / "train" / "AD" / "trainAD000_009.png"
        if content is None:  # a real PNG cut in half, as an interrupted copy leaves it
            good = next((paths[name] / "train" / "AD").glob("*.png")).read_bytes()
            content = good[: len(good) // 2]
        bad.write_bytes(content)
    paths["bomb"] = write_tiny_adni(root / "bomb", subjects_per_class=1, slices=2)
    _bomb_png(paths["bomb"] / "train" / "AD" / "trainAD000_009.png", 40_000, 40_000)
    paths["dangling"] = write_tiny_adni(root / "dangling", subjects_per_class=1, slices=2)
    (paths["dangling"] / "train" / "AD" / "trainAD000_009.png").symlink_to(root / "moved_away.png")
    return paths


def _bomb_png(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose header is rewritten to declare ``width`` x ``height`` (CRC fixed up)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))


def _accepted_data(root: Path) -> Path:
    """Tiny data with the inputs the data spec accepts with conversion: RGB, 16-bit and other sizes."""
    data = write_tiny_adni(root, subjects_per_class=2, slices=2)
    rgb = np.stack([np.full((32, 32), v, np.uint8) for v in (200, 150, 100)], axis=-1)
    _png(data / "train" / "AD" / "rgbAD_000.png", rgb)
    _png(data / "train" / "NC" / "rgbNC_000.png", rgb)
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(data / "train" / "NC" / "deepNC_000.png")
    _png(data / "train" / "AD" / "bigAD_000.png", np.full((40, 24), 90, np.uint8))  # padded in W, cropped in H
    return data


def _onnx_folders(root: Path, exported: Path) -> dict[str, Path]:
    """A truncated copy of the export, and a folder whose decoder comes from a model with another codebook size."""
    from brainvq.export.onnx_graphs import export_models
    from brainvq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
    from brainvq.models.vqvae import VQVAE, VQVAEConfig

    truncated = shutil.copytree(exported, root / "truncated_onnx")
    data = (truncated / "prior_step.onnx").read_bytes()
    (truncated / "prior_step.onnx").write_bytes(data[: len(data) // 3])
    torch.manual_seed(0)
    vq4 = VQVAE(VQVAEConfig(latent_dim=4, num_embeddings=4, hidden_channels=8, res_channels=4, num_res_layers=1,
                            image_size=(32, 32))).eval()
    prior4 = GatedPixelCNN(PixelCNNConfig(num_embeddings=4, num_layers=2, hidden_channels=8, code_shape=(8, 8))).eval()
    k4 = export_models(vq4, prior4, root / "k4_onnx")
    mixed = shutil.copytree(exported, root / "mixed_onnx")
    shutil.copy(k4["decoder"], mixed / "decoder.onnx")  # K=4 decoder beside K=8 prior graphs
    return {"truncated_onnx": truncated, "mixed_onnx": mixed}


def _tamper(run_id: str) -> None:
    """Replace a run's logged checkpoint with a pickle that names a class outside torch's weights-only allow-list."""
    from urllib.parse import urlparse

    import mlflow

    uri = mlflow.get_run(run_id).info.artifact_uri
    path = Path(urlparse(uri).path if uri.startswith("file:") else uri) / "checkpoint" / "prior.pt"
    assert path.is_file(), path
    torch.save({"kind": "prior", "config": {}, "model": {}, "payload": argparse.Namespace(cmd="rm -rf ~")}, path)


def _run_case(case: Case, ctx: dict, chain_db: Path) -> dict:
    case_dir = ctx["root"] / "cases" / case.id
    case_dir.mkdir(parents=True)
    db = case_dir / "mlflow.db"
    shutil.copy(chain_db, db)  # its own store: side-by-side cases never share a SQLite file
    cctx = {**ctx, "case_dir": case_dir}
    env = subprocess_env(f"sqlite:///{db}", ctx["root"] / "cache", **case.env(cctx))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "brainvq.cli", *case.argv(cctx)], capture_output=True, text=True,
                          env=env, cwd=case_dir, timeout=300)
    (case_dir / "stderr.txt").write_text(proc.stderr)  # kept with the case's store, for reading a failure later
    return {"proc": proc, "seconds": time.monotonic() - start, "store": f"sqlite:///{db}", "prog": case.argv(cctx)[0]}


def _stage_runs(client: MlflowClient) -> dict[str, object]:
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r for r in client.search_runs(exps)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Train one tiny lineage, build every bad input, then run all cases (three at a time) and keep their results."""
    root = tmp_path_factory.mktemp("bad_inputs")
    ctx = {"root": root, "data": write_tiny_adni(root / "adni"), **_bad_data(root / "bad")}
    ctx["blocker"] = root / "a_file"
    ctx["blocker"].write_text("a file where the output folder should go\n")
    with tiny_store(root):
        lineage = train_lineage(ctx["data"])
        ctx["tampered_prior"] = train_prior(lineage.vqvae, seed=1)
        _tamper(ctx["tampered_prior"])
        from brainvq.cli import main as cli

        assert cli(["train-vqvae", "--data_dir", str(root / "nowhere")]) == 2  # a FAILED train_vqvae run
        client = MlflowClient()
        ctx["failed_vqvae"] = next(r.info.run_id for r in _stage_runs(client).values() if r.info.status == "FAILED")
        from brainvq.tracking.runs import download_artifact

        ctx["onnx"] = download_artifact(lineage.export, "onnx", root / "export")
        before = set(_stage_runs(client))
    ctx.update(vqvae=lineage.vqvae, prior=lineage.prior, accepted=_accepted_data(root / "accepted"),
               **_onnx_folders(root, ctx["onnx"]))
    chain_db = root / "mlflow.db"
    accepted = Case("accepted", _train("accepted"), "")
    runnable = [accepted] + [c for c in CASES if not c.needs_postgres or postgres_available()]  # longest first
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip([c.id for c in runnable], pool.map(lambda c: _run_case(c, ctx, chain_db), runnable)))
    return results, before


def _check_clean_failure(case: Case, result: dict, before: set) -> None:
    proc = result["proc"]
    err = proc.stderr
    assert proc.returncode != 0, f"{case.id}: exit 0\n{err[-2000:]}"
    assert "Traceback" not in err, f"{case.id}: traceback\n{err[-3000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"brainvq {result['prog']}: error: "), f"{case.id}: last stderr line is {last!r}"
    assert case.expect in last, f"{case.id}: {last!r} does not say {case.expect!r}"
    assert len([ln for ln in err.splitlines() if ": error: " in ln]) == 1, err[-2000:]
    if case.max_seconds is not None:
        assert result["seconds"] < case.max_seconds, f"{case.id}: took {result['seconds']:.0f} s"
    client = MlflowClient(result["store"])
    new = [r for rid, r in _stage_runs(client).items() if rid not in before]
    if case.starts_run:
        assert len(new) == 1 and new[0].info.status == "FAILED", f"{case.id}: runs {[r.info.status for r in new]}"
        assert case.expect in new[0].data.tags.get("brainvq.error", ""), new[0].data.tags
    else:
        assert not new, f"{case.id}: started runs {[(r.info.run_id, r.info.status) for r in new]}"
    assert client.search_registered_models() == [], f"{case.id}: registered a model"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.postgres] if c.needs_postgres else []) for c in CASES]
)
def test_bad_input_is_a_one_line_error(case: Case, outcomes):
    results, before = outcomes
    if case.id not in results:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (needed for the wrong-password case)")
    _check_clean_failure(case, results[case.id], before)
    if case.needs_postgres:
        out = results[case.id]["proc"]
        assert PG_SECRET not in out.stderr + out.stdout
        assert "brainvq_no_such_role:***@" in out.stderr  # the URL is named, its password masked


def test_rgb_16bit_and_other_sizes_are_accepted_with_one_warning(outcomes):
    results, before = outcomes
    proc = results["accepted"]["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "UserWarning" in ln and "colour" in ln]
    assert len(warnings) == 1 and "2 colour (RGB/RGBA) images" in warnings[0], proc.stderr[-3000:]
    client = MlflowClient(results["accepted"]["store"])
    (run,) = [r for rid, r in _stage_runs(client).items() if rid not in before]
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    # every file was used: 2 subjects x 2 slices x 2 classes + 4 converted files, none skipped
    assert m["data/train_images"] + m["data/val_images"] == 12 and m["data/skipped_files"] == 0


def test_cases_cover_at_least_fifteen_failures():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)

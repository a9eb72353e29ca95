"""The catalogue of bad inputs and faults, each through the real CLI in a subprocess (the README's "What happens
when…" table, which names a case of this catalogue, or another test, on every row: test_readme_rows_each_name_a_test).

Every failing case must give: a non-zero exit; stderr that is exactly one line, `brainvq <command>: error: …` (no
traceback, no library log before it); a FAILED MLflow run when the command had started one (no run otherwise); no
registered model; and what its own check says exists afterwards (checkpoints, output files). Accepted inputs (RGB,
16-bit, mixed sizes, skipped folders) must train, with one warning line for each thing the reader converted or skipped.

One tiny lineage is trained in-process once; every case then runs against its own copy of that SQLite store, so the
cases can run side by side without sharing a database file. Most cases are mostly interpreter and torch start-up: they
run in children forked after `import torch` and `import mlflow` (tests/cli_fork.py), each a separate process calling
the same CLI; the cases that set their own tracking URI, or start three commands at once, run in fresh interpreters.
"""

from __future__ import annotations

import argparse
import io
import os
import re
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

from cli_fork import Forked
from conftest import REPO, free_port, postgres_available, wait_for_url, write_tiny_adni
from tiny_chain import TINY_VQVAE, subprocess_env, tiny_store, train_lineage, train_prior, train_vqvae

pytestmark = pytest.mark.slow

PG_SECRET = "Sup3r-s3cret-" + uuid.uuid4().hex[:8]  # must never reach stderr or the MLflow store
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"
PROGRESS = re.compile(r"\d\d:\d\d:\d\d INFO brainvq\.")  # setup_logging's format, brainvq's loggers only


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
    setup: Callable[[dict], None] = field(default=lambda ctx: None)  # files or runs this case needs, in its own dir
    after: Callable[[dict], None] = field(default=lambda ctx: None)  # what must (not) exist afterwards
    copies: int = 1  # started at the same moment, each must end as described
    fresh_store: bool = False  # a new, empty mlflow.db instead of a copy of the trained one
    skip: Callable[[], str] = field(default=lambda: "")  # a reason to skip on this machine, or ""


def _train(data_key: str, *extra: str) -> Callable[[dict], list[str]]:
    return lambda ctx: ["train-vqvae", "--data_dir", str(ctx[data_key]), "--image_size", "32x32", "--epochs", "1",
                        "--batch_size", "4", "--hidden_channels", "8", "--latent_dim", "4", "--num_embeddings", "8",
                        "--num_res_layers", "1", "--val_fraction", "0.34", "--max_minutes", "0", *extra]


def _lineage_vqvae(*extra: str) -> Callable[[dict], list[str]]:
    """The lineage's own training command (tiny_chain.train_vqvae): the same configuration, so the same checkpoint."""
    return lambda ctx: ["train-vqvae", "--data_dir", str(ctx["data"]), *TINY_VQVAE, "--epochs", "1", "--seed", "0",
                        *extra]


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
    Case("guidance_negative", _sample("onnx", "--guidance", "-1"), "guidance must be a finite number >= 0"),
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
    # --- more data layouts
    Case("split_without_pngs", _train("empty_split"), "no PNG files in", starts_run=True),
    Case("class_folders_misnamed", _train("cn_only", "--classes", "AD,NC"),
         "classes=AD,NC: no class folder AD with PNG files in", starts_run=True),
    # --- more parameters, each refused before a run starts (and before torch is asked to do anything)
    Case("lr_negative", _train("data", "--lr", "-1"), "bad parameter: lr must be > 0, got -1.0"),
    Case("beta_negative", _train("data", "--beta", "-1"), "bad parameter: beta must be >= 0, got -1.0"),
    Case("num_embeddings_one", _train("data", "--num_embeddings", "1"), "num_embeddings must be >= 2, got 1"),
    Case("image_size_not_divisible", _train("data", "--image_size", "30x31"), "must be two positive sizes divisible"),
    Case("val_fraction_out_of_range", _train("data", "--val_fraction", "1.5"), "val_fraction must be in [0, 1)"),
    Case("prior_lr_nan", lambda ctx: ["train-prior", "--vqvae_run_id", ctx["vqvae"], "--lr", "nan"],
         "bad parameter: lr must be > 0, got nan"),
    Case("prior_seed_negative", lambda ctx: ["train-prior", "--vqvae_run_id", UNKNOWN_RUN, "--seed", "-3"],
         "seed must be >= 0, got -3"),  # the parameter first: the run ID is never looked up
    Case("top_k_negative_onnx", _sample("onnx", "--top_k", "-1"), "top_k must be in 0.."),
    Case("pixel_temperature_negative_onnx", _sample("onnx", "--pixel_temperature", "-0.5"),
         "pixel_temperature must be a finite number >= 0"),
    Case("pixel_temperature_nan_torch", lambda ctx: ["sample", "--prior_run_id", ctx["prior"], "--pixel_temperature",
                                                     "nan", "--out", str(ctx["case_dir"] / "samples")],
         "pixel_temperature must be a finite number >= 0"),
    Case("level_out_of_range", _sample("onnx", "--level", "1.5"),
         "bad parameter: level must be a number in [0, 1], random or none; got '1.5'"),
    Case("top_k_negative_torch", lambda ctx: ["sample", "--prior_run_id", ctx["prior"], "--top_k", "-1",
                                              "--out", str(ctx["case_dir"] / "samples")], "top_k must be in 0.."),
    Case("evaluate_n_samples_too_small", lambda ctx: ["evaluate-samples", "--prior_run_id", ctx["prior"],
                                                      "--n_samples", "4"], "n_samples must be an integer >= 8, got 4"),
    Case("evaluate_temperature_zero", lambda ctx: ["evaluate-samples", "--prior_run_id", ctx["prior"],
                                                   "--temperature", "0"], "temperature must be a finite number > 0"),
    Case("samples_dir_missing", lambda ctx: ["evaluate-samples", "--samples_dir", str(ctx["missing"])],
         "samples_dir does not exist or is not a folder"),
    Case("held_out_split_too_small", lambda ctx: ["evaluate-samples", "--samples_dir", str(ctx["data"] / "test"),
                                                  "--data_dir", str(ctx["data"]), "--image_size", "32x32",
                                                  "--split", "val", "--val_fraction", "0.34"],
         "the val split has 8 slices; an evaluation needs at least"),
    Case("flag_not_a_number", _train("data", "--epochs", "ten"), "argument --epochs: expected an integer, got 'ten'"),
    Case("flag_abbreviated", _train("data", "--epoch", "3"), "unrecognized arguments: --epoch 3"),
    Case("choice_unknown", _sample("onnx", "--provider", "gpu"), "argument --provider: invalid choice: 'gpu'"),
    Case("register_nothing", lambda ctx: ["register"], "nothing to register"),
    Case("cleanup_hours_nan", lambda ctx: ["cleanup", "--older_than_hours", "nan"],
         "older_than_hours must be a finite number >= 0"),
    Case("model_dir_missing", lambda ctx: ["sample-onnx", "--model_dir", str(ctx["missing"])],
         "model folder not found"),
    Case("provider_cuda_unavailable", _sample("onnx", "--provider", "cuda"),
         "--provider cuda: CUDAExecutionProvider cannot run here", skip=lambda: _cuda_runs()),
    Case("device_cuda_unavailable_encode", lambda ctx: ["encode-codes", "--vqvae_run_id", ctx["vqvae"], "--device",
                                                        "cuda"],
         "device=cuda was requested but CUDA is not available", skip=lambda: _torch_cuda()),
    # --- runs and checkpoints
    Case("prior_of_another_vqvae", lambda ctx: ["export-onnx", "--vqvae_run_id", ctx["other_vqvae"],
                                                "--prior_run_id", ctx["prior"]], "was trained on VQ-VAE run"),
    Case("resume_a_finished_run", _lineage_vqvae("--resume", "true"), "which FINISHED after epoch 1; there is nothing "
         "to continue", setup=lambda ctx: _checkpoints(ctx), after=lambda ctx: _checkpoint_kept(ctx)),
    Case("checkpoint_of_a_killed_run", _lineage_vqvae(), "which did not finish: continue it with resume=true, or "
         "delete", setup=lambda ctx: _checkpoints(ctx, status="RUNNING", pid=_dead_pid()),
         after=lambda ctx: _checkpoint_kept(ctx)),
    Case("checkpoint_of_a_live_run", _lineage_vqvae(), "still running); wait for it to end",
         setup=lambda ctx: _checkpoints(ctx, status="RUNNING", pid=os.getpid()),
         after=lambda ctx: _checkpoint_kept(ctx)),
    # --- output folders: one run's samples never mix with another's
    Case("out_holds_earlier_samples", _sample("onnx"), "already holds 2 files of an earlier run; pass --overwrite true",
         setup=lambda ctx: _earlier_samples(ctx), after=lambda ctx: _samples_untouched(ctx)),
    Case("out_holds_other_files", _sample("onnx", "--overwrite", "true"), "holds other files (notes.txt)",
         setup=lambda ctx: _earlier_samples(ctx, "notes.txt"), after=lambda ctx: _samples_untouched(ctx)),
    # --- the tracking store itself
    Case("store_not_a_database", lambda ctx: ["register", "--vqvae_run_id", "latest"],
         "is not a usable SQLite database (file is not a database)",
         env=lambda ctx: {"MLFLOW_TRACKING_URI": f"sqlite:///{ctx['case_dir'] / 'notes.db'}"},
         setup=lambda ctx: (ctx["case_dir"] / "notes.db").write_text("not a database\n")),
    Case("store_truncated", lambda ctx: ["register", "--vqvae_run_id", "latest"], "is not a usable SQLite database",
         env=lambda ctx: {"MLFLOW_TRACKING_URI": f"sqlite:///{ctx['case_dir'] / 'half.db'}"},
         setup=lambda ctx: _truncated_store(ctx)),
    # /sys refuses new files even to root, which a chmod-ed folder does not
    Case("store_read_only", lambda ctx: ["register", "--vqvae_run_id", "latest"], "cannot be written",
         env=lambda ctx: {"MLFLOW_TRACKING_URI": "sqlite:////sys/brainvq-mlflow.db"}),
    # --- concurrency: three commands at the same moment on a new store race to create MLflow's schema
    Case("fresh_store_three_at_once", lambda ctx: ["register", "--vqvae_run_id", "latest"],
         "no FINISHED train_vqvae run found", copies=3, fresh_store=True),
]


def _cuda_runs() -> str:
    return "CUDA runs here, so --provider cuda is not an error" if torch.cuda.is_available() else ""


def _torch_cuda() -> str:
    return "torch has CUDA here, so device=cuda is not an error" if torch.cuda.is_available() else ""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this PID (until the kernel reuses it, and its start time differs)


def _checkpoints(ctx: dict, status: str | None = None, pid: int | None = None) -> None:
    """The lineage's checkpoint folder in this case's working folder; its run made RUNNING (a killed or live
    training) in this case's own store when asked."""
    shutil.copytree(ctx["root"] / ".brainvq", ctx["case_dir"] / ".brainvq")
    if status:
        client = MlflowClient(ctx["store"])
        client.update_run(ctx["vqvae"], status=status)
        client.set_tag(ctx["vqvae"], "brainvq.pid", str(pid))
        client.set_tag(ctx["vqvae"], "brainvq.pid_start", "")


def _checkpoint_kept(ctx: dict) -> None:
    originals = sorted((ctx["root"] / ".brainvq").rglob("last.pt"))
    assert originals
    for original in originals:
        copy = ctx["case_dir"] / original.relative_to(ctx["root"])
        assert copy.read_bytes() == original.read_bytes(), f"{copy} was overwritten"


def _earlier_samples(ctx: dict, *other: str) -> None:
    out = ctx["case_dir"] / "samples"
    out.mkdir()
    for name in ("sample_000.png", "grid.png", *other):
        (out / name).write_bytes(b"an earlier run's file")


def _samples_untouched(ctx: dict) -> None:
    out = ctx["case_dir"] / "samples"
    assert all(p.read_bytes() == b"an earlier run's file" for p in out.iterdir()), "earlier files were changed"
    assert [p.name for p in ctx["case_dir"].iterdir() if p.name.startswith(".samples.")] == [], "temp folder left"


def _truncated_store(ctx: dict) -> None:
    data = Path(ctx["store"].removeprefix("sqlite:///")).read_bytes()
    (ctx["case_dir"] / "half.db").write_bytes(data[: len(data) // 2])


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
    paths["empty_split"] = write_tiny_adni(root / "empty_split", subjects_per_class=1, slices=2)
    for png in (paths["empty_split"] / "test").rglob("*.png"):
        png.unlink()
    # ADNI's own spelling of the control group, and no AD folder at all (asked for AD,NC: the names are wrong)
    paths["cn_only"] = write_tiny_adni(root / "cn_only", subjects_per_class=1, slices=2, classes=("CN",))
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
    _png(data / "train" / "NC" / "upperNC_000.PNG", np.full((32, 32), 60, np.uint8))
    for k in range(2):  # a folder inside a class folder: skipped, and named in a warning
        _png(data / "train" / "NC" / "extra" / f"cn_{k:03d}.png", np.full((32, 32), 70, np.uint8))
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
    if not case.fresh_store:
        shutil.copy(chain_db, db)  # its own store: side-by-side cases never share a SQLite file
    cctx = {**ctx, "case_dir": case_dir, "store": f"sqlite:///{db}"}
    case.setup(cctx)
    env = subprocess_env(f"sqlite:///{db}", ctx["root"] / "cache", **case.env(cctx))
    start = time.monotonic()
    if case.copies == 1 and not case.env(cctx):  # a child forked after `import torch` (cli_fork), running the same CLI
        runs = [ctx["forked"].run(case.argv(cctx), env, str(case_dir))]
    else:  # tracking stores and races: a fresh interpreter each, as a user starts them
        cmd = [sys.executable, "-m", "brainvq.cli", *case.argv(cctx)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                  cwd=case_dir) for _ in range(case.copies)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
        runs = [subprocess.CompletedProcess(cmd, proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs)]
    (case_dir / "stderr.txt").write_text("\n".join(r.stderr for r in runs))  # kept with the store, for a failure
    return {"procs": runs, "seconds": time.monotonic() - start, "store": f"sqlite:///{db}",
            "prog": case.argv(cctx)[0], "ctx": cctx}


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
        ctx["other_vqvae"] = train_vqvae(ctx["data"], seed=1)
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
    runnable = [accepted] + [c for c in CASES if (not c.needs_postgres or postgres_available()) and not c.skip()]
    ctx["forked"] = Forked(subprocess_env(f"sqlite:///{chain_db}", root / "cache"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip([c.id for c in runnable], pool.map(lambda c: _run_case(c, ctx, chain_db), runnable)))
    return results, before


def _check_clean_failure(case: Case, result: dict, before: set) -> None:
    for proc in result["procs"]:
        err = proc.stderr
        assert proc.returncode != 0, f"{case.id}: exit 0\n{err[-2000:]}"
        assert "Traceback" not in err, f"{case.id}: traceback\n{err[-3000:]}"
        # brainvq's own INFO progress lines ("data …: 16 train / 8 val / 8 test slices") may come first; nothing else
        lines = [ln for ln in err.strip().splitlines() if not PROGRESS.match(ln)]
        assert len(lines) == 1, f"{case.id}: stderr is {len(lines)} lines, not one:\n{err[-3000:]}"
        assert lines[0].startswith(f"brainvq {result['prog']}: error: "), f"{case.id}: stderr is {lines[0]!r}"
        assert case.expect in lines[0], f"{case.id}: {lines[0]!r} does not say {case.expect!r}"
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
    case.after(result["ctx"])


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.postgres] if c.needs_postgres else []) for c in CASES]
)
def test_bad_input_is_a_one_line_error(case: Case, outcomes):
    results, before = outcomes
    if case.skip():
        pytest.skip(case.skip())
    if case.id not in results:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (needed for the wrong-password case)")
    _check_clean_failure(case, results[case.id], before)
    if case.needs_postgres:
        (out,) = results[case.id]["procs"]
        assert PG_SECRET not in out.stderr + out.stdout
        assert "brainvq_no_such_role:***@" in out.stderr  # the URL is named, its password masked


def test_rgb_16bit_other_sizes_and_stray_folders_are_accepted_with_one_warning_each(outcomes):
    results, before = outcomes
    (proc,) = results["accepted"]["procs"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "UserWarning" in ln]
    colour = [ln for ln in warnings if "colour" in ln]
    assert len(colour) == 1 and "2 colour (RGB/RGBA) images" in colour[0], proc.stderr[-3000:]
    skipped = [ln for ln in warnings if "skipped" in ln]  # train/NC/extra: named, never dropped silently
    assert len(skipped) == 1 and "NC/extra: 2 PNGs" in skipped[0] and "NOT read" in skipped[0], proc.stderr[-3000:]
    assert all(ln.startswith("UserWarning: ") for ln in warnings), warnings  # one line each, no source line after
    client = MlflowClient(results["accepted"]["store"])
    (run,) = [r for rid, r in _stage_runs(client).items() if rid not in before]
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    # every file was used: 2 subjects x 2 slices x 2 classes + 4 converted files + 1 upper-case .PNG, none skipped
    assert m["data/train_images"] + m["data/val_images"] == 13 and m["data/skipped_files"] == 0


def test_the_catalogue_holds_at_least_forty_distinct_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def _readme_table() -> list[list[str]]:
    """The cells of every row of README's "What happens when…" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("## What happens when…", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| when…")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_readme_rows_each_name_a_test():
    """Every row names at least one test (a catalogue case, or `file.py::test_name`) that exists, and every catalogue
    case has a row: the table and the catalogue cannot drift apart."""
    ids = {c.id for c in CASES} | {"accepted"}
    named: set[str] = set()
    rows = _readme_table()
    assert len(rows) >= 40, len(rows)
    for cells in rows:
        tests = re.findall(r"`([^`]+)`", cells[-1])
        assert tests, f"README row without a test: {cells[0]}"
        for name in tests:
            if "::" in name:
                file, func = name.split("::")
                assert f"def {func}(" in (REPO / "tests" / file).read_text(), f"README names missing test {name}"
            else:
                assert name in ids, f"README names {name!r}, which is not a case of the catalogue"
                named.add(name)
    assert ids - named == set(), f"catalogue cases without a README row: {sorted(ids - named)}"


def test_two_samplers_on_one_folder_never_mix(outcomes, tmp_path):
    """Two `sample-onnx` started together on one new --out: one writes its slices, the other fails in one line, and
    the folder holds exactly one run's files (no mix, no hidden leftovers)."""
    results, _ = outcomes
    ctx = results["accepted"]["ctx"]
    env = subprocess_env(f"sqlite:///{tmp_path / 'mlflow.db'}", ctx["root"] / "cache")
    cmds = [[sys.executable, "-m", "brainvq.cli", "sample-onnx", "--model_dir", str(ctx["onnx"]), "--provider", "cpu",
             "--n", str(n), "--out", str(tmp_path / "samples")] for n in (6, 3)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    loser = outs[codes.index(2)][1].strip().splitlines()
    assert len(loser) == 1 and ("another command wrote to it while this one sampled" in loser[0]
                                or "already holds" in loser[0]), loser
    n = (6, 3)[codes.index(0)]
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == sorted([f"sample_{i:03d}.png" for i in range(n)] + ["grid.png"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".samples.")] == []


def test_a_server_that_rejects_the_host_header_is_one_line(tmp_path):
    """A real `mlflow server` that allows another host name: the CLI's probe names the fix, in one line."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'server.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--allowed-hosts", "example.org"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # /health is exempt from the Host check
        wait_for_url(f"http://127.0.0.1:{port}/health", server, tmp_path / "server.log", 180)
        env = subprocess_env(f"http://127.0.0.1:{port}", tmp_path / "cache")
        proc = subprocess.run([sys.executable, "-m", "brainvq.cli", "register", "--vqvae_run_id", "latest"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    finally:
        import signal

        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == (f"brainvq register: error: MLflow tracking server http://127.0.0.1:{port} rejects the Host "
                        f"header '127.0.0.1:{port}'; start it with --allowed-hosts 127.0.0.1:{port} (MLflow 3 accepts "
                        "localhost and private IPs by default)")


def test_brainvq_debug_restores_the_traceback_and_the_library_logs(outcomes, tmp_path):
    """The one line is the default; `BRAINVQ_DEBUG=1` shows what it hides: our traceback and MLflow's own logs."""
    results, _ = outcomes
    ctx = results["accepted"]["ctx"]
    env = subprocess_env(f"sqlite:///{tmp_path / 'new.db'}", ctx["root"] / "cache", BRAINVQ_DEBUG="1")  # no store yet
    proc = subprocess.run([sys.executable, "-m", "brainvq.cli", "register", "--vqvae_run_id", "latest"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in proc.stderr  # a new store
    assert proc.stderr.strip().splitlines()[-1].startswith("brainvq register: error: no FINISHED train_vqvae run")


def test_an_mlflow_imported_before_brainvq_stays_quiet_too(tmp_path):
    """A host program that imported MLflow first (its level then read from an unset MLFLOW_LOGGING_LEVEL: INFO) and
    then calls brainvq's CLI gets the same one line: MLflow's INFO note on creating a new store is not printed."""
    env = subprocess_env(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "cache")  # no store yet: MLflow creates one
    host = ("import sys, mlflow; from brainvq.cli import main; "
            "sys.exit(main(['register', '--vqvae_run_id', 'latest']))")
    proc = subprocess.run([sys.executable, "-c", host], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("brainvq register: error: no FINISHED train_vqvae run"), lines[0]

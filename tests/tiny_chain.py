"""Tiny real runs of the pipeline stages (train_vqvae → train_prior → export_onnx), trained in-process through the
`brainvq` CLI so a test module pays the import cost once. Shared by test_registry.py and test_bad_inputs.py."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# 32x32 slices, 8x8 code grids, an 8-entry codebook: seconds per stage on 2 CPU cores.
TINY_VQVAE = ["--image_size", "32x32", "--batch_size", "4", "--hidden_channels", "8", "--latent_dim", "4",
              "--num_embeddings", "8", "--num_res_layers", "1", "--val_fraction", "0.34", "--max_minutes", "0"]
TINY_PRIOR = ["--batch_size", "4", "--num_layers", "2", "--hidden_channels", "8", "--max_minutes", "0"]


@dataclass
class Lineage:
    """Run IDs of one VQ-VAE, the prior trained on its codes and their ONNX export."""

    vqvae: str
    prior: str
    export: str


def use_store(monkeypatch: pytest.MonkeyPatch, uri: str, root: Path) -> None:
    """Point this test at a module's store (``tiny_store``'s URI) and its brainvq cache."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BRAINVQ_CACHE", str(root / "cache"))


@contextlib.contextmanager
def tiny_store(root: Path):
    """MLflow store, brainvq cache and working folder under ``root`` while a module-scoped fixture trains."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("BRAINVQ_CACHE", str(root / "cache"))
        mp.setenv("TQDM_DISABLE", "1")
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        mp.chdir(root)
        yield f"sqlite:///{root / 'mlflow.db'}"


def latest(stage: str) -> str:
    from brainvq.tracking.runs import resolve_run

    return resolve_run("latest", stage).info.run_id


def train_vqvae(data_dir: Path, seed: int = 0, epochs: int = 1) -> str:
    from brainvq.cli import main as cli

    assert cli(["train-vqvae", "--data_dir", str(data_dir), *TINY_VQVAE, "--epochs", str(epochs),
                "--seed", str(seed)]) == 0
    return latest("train_vqvae")


def train_prior(vqvae_run_id: str, seed: int = 0, epochs: int = 1) -> str:
    from brainvq.cli import main as cli

    assert cli(["train-prior", "--vqvae_run_id", vqvae_run_id, *TINY_PRIOR, "--epochs", str(epochs),
                "--seed", str(seed)]) == 0
    return latest("train_prior")


def export(prior_run_id: str) -> str:
    from brainvq.cli import main as cli

    assert cli(["export-onnx", "--prior_run_id", prior_run_id]) == 0
    return latest("export_onnx")


def train_lineage(data_dir: Path, seed: int = 0, epochs: int = 1) -> Lineage:
    """One VQ-VAE, its prior and their export, all FINISHED runs in the active store."""
    vq = train_vqvae(data_dir, seed, epochs)
    prior = train_prior(vq, seed, epochs)
    return Lineage(vq, prior, export(prior))


def subprocess_env(tracking_uri: str, cache: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: its own store, quiet progress bars, one thread (processes run side by side)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_TRACKING_URI": tracking_uri, "BRAINVQ_CACHE": str(cache), "TQDM_DISABLE": "1",
                "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env

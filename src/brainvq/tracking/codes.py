"""Code grids handed from a VQ-VAE run to the prior: the ``encode_codes`` stage run and its ``codes/`` artifacts."""

from __future__ import annotations

import logging
import tempfile

import mlflow

from brainvq.tracking.stage import stage_run

log = logging.getLogger(__name__)


def encode_codes(vqvae_run_id: str, batch_size: int = 32, device: str = "auto") -> str:
    """Run the stage (nested under the active run if there is one) and return its MLflow run ID. ``device``: where
    the encoder runs (``auto``, ``cpu``, ``cuda[:N]``, ``mps``)."""
    from brainvq.data.splits import resolve_data_dir
    from brainvq.engine.common import resolve_device
    from brainvq.stages.encode import encode_all_splits
    from brainvq.tracking.datasets import log_data
    from brainvq.tracking.runs import load_stage_model

    where = resolve_device(device)  # a bad or unavailable device is one line before the download
    vqvae, _, vq_run = load_stage_model(vqvae_run_id, "train_vqvae")
    vqvae.to(where)
    params = {
        "vqvae_run_id": vq_run.info.run_id,
        "batch_size": batch_size,
        "device": device,
        "num_embeddings": vqvae.config.num_embeddings,
    }
    with stage_run("encode_codes", params, tags={"brainvq.vqvae_run_id": vq_run.info.run_id}) as run:
        log_data(resolve_data_dir(vq_run.data.params.get("data_dir", "")), "encoding")
        with tempfile.TemporaryDirectory() as tmp:
            files = encode_all_splits(vqvae, vq_run.data.params, tmp, batch_size)
            for path in files.values():
                mlflow.log_artifact(str(path), "codes")
        return run.info.run_id


def logged_codes(vqvae_run_id: str, num_embeddings: int) -> dict | None:
    """The code grids of a VQ-VAE run's splits as its encode_codes run logged them; None when none is logged yet."""
    from brainvq.data.codes import SPLITS, load_codes
    from brainvq.tracking.runs import download_codes

    folder = download_codes(vqvae_run_id)
    if folder is None:
        return None
    return {name: load_codes(folder / f"{name}.npz", num_embeddings)[0] for name in SPLITS}


def prior_codes(vqvae_run_id: str, num_embeddings: int) -> dict:
    """Code grids of a VQ-VAE run's splits, encoding them (a nested encode_codes run) when none are logged yet."""
    codes = logged_codes(vqvae_run_id, num_embeddings)
    if codes is None:
        log.info("no codes logged for VQ-VAE run %s yet: encoding them now", vqvae_run_id)
        encode_codes(vqvae_run_id)
        codes = logged_codes(vqvae_run_id, num_embeddings)
    return codes

"""DistributedDataParallel under torchrun, on CPU with gloo and 2 processes, on tiny 32×32 data.

Tolerance: a 2-rank run with ``batch_size=4`` takes the same optimiser steps as one process with ``batch_size=8``
(the global batch); the two differ only in float32 summation order (each rank sums half the batch, then gradients
and EMA statistics are summed across ranks). Measured here: per-epoch metrics within relative 1e-6, weights within
absolute 1.2e-7. The tests allow relative 1e-5 on metrics and absolute 1e-4 on weights (Adam divides by the root of
tiny second moments, which can amplify last-bit gradient differences on other CPUs). For scale, per-rank (unsynced)
EMA codebooks give weight differences of ~1 and val/ssim differences of ~2e-3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from brainvq.models.checkpoint import load_checkpoint
from conftest import free_port

RTOL, ATOL = 1e-5, 1e-4
VQVAE_ARGS = ["--image_size", "32x32", "--epochs", "2", "--hidden_channels", "16", "--latent_dim", "8",
              "--num_embeddings", "16", "--num_res_layers", "1", "--val_fraction", "0.34", "--max_minutes", "0",
              "--device", "cpu"]


@pytest.fixture(autouse=True)
def restore_threads():
    # The one-process baselines (and in-process pipeline runs) set torch's thread count; later tests expect theirs.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def torchrun(module: str, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    # `python -m torch.distributed.run` is the torchrun command (no PATH lookup). OMP_NUM_THREADS=1: two ranks on a
    # 2-core machine; more threads only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def all_runs():
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps)


def single_process_vqvae(argv: list[str]):
    """The same configuration trained in this process, with the shipped argument parsing and data loading."""
    from brainvq.cli.configs import vqvae_configs_from_args
    from brainvq.data.splits import load_splits
    from brainvq.engine.tracker import MemoryTracker
    from brainvq.engine.vqvae import fit_vqvae
    from brainvq.pipelines.train_vqvae import build_parser

    args = build_parser().parse_args(argv)
    model_cfg, train_cfg = vqvae_configs_from_args(args)
    train_cfg = replace(train_cfg, num_threads=1, progress=False)
    splits = load_splits(args.data_dir, model_cfg.image_size, args.val_fraction, args.seed, args.max_train_images)
    return fit_vqvae(model_cfg, train_cfg, splits.train, splits.val, splits.test, tracker=MemoryTracker())


def test_torchrun_vqvae_logs_one_run_and_matches_one_process_with_the_global_batch(tiny_adni, tmp_path):
    proc = torchrun("brainvq.pipelines.train_vqvae", "--data_dir", str(tiny_adni), "--batch_size", "4", *VQVAE_ARGS)
    assert proc.returncode == 0, proc.stderr[-4000:]

    (run,) = all_runs()  # exactly one MLflow run for the whole job: rank 1 never touched the store
    assert run.info.status == "FINISHED"
    assert run.data.tags["brainvq.world_size"] == "2" and run.data.tags["brainvq.ddp_backend"] == "gloo"
    client = MlflowClient()
    ddp = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
           for key in ("train/loss", "train/recon_loss", "val/ssim", "val/psnr", "val/perplexity")}
    assert [s for s, _ in ddp["train/loss"]] == [1, 2]  # each epoch logged once, by rank 0 only

    one = single_process_vqvae(["--data_dir", str(tiny_adni), "--batch_size", "8", *VQVAE_ARGS])
    for key, series in ddp.items():
        expected = [h[key] for h in one.history]
        np.testing.assert_allclose([v for _, v in series], expected, rtol=RTOL, err_msg=key)
    np.testing.assert_allclose(run.data.metrics["test/ssim"], one.test_metrics["test/ssim"], rtol=RTOL)

    (ckpt_path,) = Path(tmp_path).glob(".brainvq/checkpoints/vqvae-*/last.pt")  # written by rank 0 only
    ckpt = load_checkpoint(ckpt_path, "vqvae")
    assert ckpt["world_size"] == 2 and ckpt["mlflow_run_id"] == run.info.run_id
    for name, value in one.model.state_dict().items():  # weights and EMA codebook buffers
        torch.testing.assert_close(ckpt["model"][name].float(), value.float(), rtol=0, atol=ATOL, msg=name)


def test_torchrun_prior_logs_one_run_encodes_once_and_matches_one_process(tiny_adni, tmp_path, monkeypatch, capsys):
    from brainvq.cli.args import run_main
    from brainvq.cli.configs import prior_configs_from_args
    from brainvq.engine.prior import fit_prior
    from brainvq.pipelines import train_prior, train_vqvae
    from brainvq.tracking.codes import prior_codes
    from brainvq.tracking.runs import load_stage_model

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--data_dir", str(tiny_adni), "--batch_size", "4", *VQVAE_ARGS, "--epochs", "1"]
    assert run_main(train_vqvae.main, argv) == 0, capsys.readouterr().err
    (vq_run,) = all_runs()
    prior_args = ["--vqvae_run_id", vq_run.info.run_id, "--epochs", "2", "--num_layers", "2", "--hidden_channels", "8",
                  "--max_minutes", "0", "--device", "cpu"]
    proc = torchrun("brainvq.pipelines.train_prior", *prior_args, "--batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-4000:]

    by_stage = {}
    for r in all_runs():
        by_stage.setdefault(r.data.tags["brainvq.stage"], []).append(r)
    (prior,), (encode,) = by_stage["train_prior"], by_stage["encode_codes"]  # rank 1 created neither
    assert prior.info.status == "FINISHED" and prior.data.tags["brainvq.world_size"] == "2"
    assert encode.data.tags["mlflow.parentRunId"] == prior.info.run_id
    client = MlflowClient()
    ddp = {key: [m.value for m in sorted(client.get_metric_history(prior.info.run_id, key), key=lambda m: m.step)]
           for key in ("prior/train_nll_bits", "prior/val_nll_bits")}

    vqvae, _, _ = load_stage_model(vq_run.info.run_id, "train_vqvae")
    model_cfg, train_cfg = prior_configs_from_args(train_prior.build_parser().parse_args(
        [*prior_args, "--batch_size", "8"]), vqvae.config)
    codes = prior_codes(vq_run.info.run_id, model_cfg.num_embeddings)
    one = fit_prior(model_cfg, replace(train_cfg, num_threads=1, progress=False), codes["train"], codes["val"],
                       codes["test"])
    for key, values in ddp.items():
        np.testing.assert_allclose(values, [h[key] for h in one.history], rtol=RTOL, err_msg=key)
    np.testing.assert_allclose(prior.data.metrics["prior/test_nll_bits"], one.test_metrics["prior/test_nll_bits"],
                               rtol=RTOL)
    # the prior as a classifier: each rank scores its part of the test grids, the sums (per subject too) all-reduced;
    # the margin is a float32 sum of per-grid bits, so it agrees to float rounding (1e-4 bits a slice)
    for key in ("prior/test_class_accuracy", "prior/test_class_accuracy_subject", "prior/test_class_margin_bits"):
        np.testing.assert_allclose(prior.data.metrics[key], one.test_metrics[key], rtol=RTOL, atol=1e-4, err_msg=key)
    (ckpt_path,) = Path(tmp_path).glob(".brainvq/checkpoints/prior-*/last.pt")
    ckpt = load_checkpoint(ckpt_path, "prior")
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(ckpt["model"][name], value, rtol=0, atol=ATOL, msg=name)


# --- library level: torch.multiprocessing, every rank's state ----------------------------------------------------


def _tiny_codes(n: int = 24, seed: int = 0):
    from brainvq.engine.prior import CodeSet

    rng = np.random.default_rng(seed)
    # Structured enough to learn from: a per-image constant plus noise, labels tied to it.
    base = rng.integers(0, 8, size=(n, 1, 1))
    codes = (base + rng.integers(0, 2, size=(n, 4, 4))) % 8
    return CodeSet(codes.astype(np.int64), (base[:, 0, 0] % 2).astype(np.int64))


def _prior_configs(batch_size: int):
    from brainvq.engine.prior import PriorTrainConfig
    from brainvq.models.pixelcnn import PixelCNNConfig

    model = PixelCNNConfig(num_embeddings=8, num_layers=2, hidden_channels=8, conditional=True, code_shape=(4, 4))
    train = PriorTrainConfig(
        epochs=2,
        batch_size=batch_size,
        lr=3e-3,
        seed=0,
        label_dropout=0.25,
        device="cpu",
        num_threads=1,
        progress=False,
    )
    return model, train


def _vqvae_configs(batch_size: int):
    from brainvq.engine.vqvae import TrainConfig
    from brainvq.models.vqvae import VQVAEConfig

    model = VQVAEConfig(
        latent_dim=8, num_embeddings=16, hidden_channels=16, res_channels=8, num_res_layers=1, image_size=(32, 32)
    )
    return model, TrainConfig(epochs=2, batch_size=batch_size, seed=0, device="cpu", num_threads=1, progress=False)


def _fit_both(data_dir: Path, batch_size: int) -> dict:
    from brainvq.data import load_adni
    from brainvq.engine.prior import fit_prior
    from brainvq.engine.vqvae import fit_vqvae

    splits = load_adni(data_dir, image_size=(32, 32), val_fraction=0.34, seed=0)
    vq = fit_vqvae(*_vqvae_configs(batch_size), splits.train, splits.val)
    codes = _tiny_codes()
    prior = fit_prior(*_prior_configs(batch_size), codes, _tiny_codes(8, seed=1))
    return {
        "vqvae": vq.model.state_dict(),
        "vqvae_history": vq.history,
        "prior": prior.model.state_dict(),
        "prior_history": prior.history,
    }


def _rank_main(rank: int, world: int, port: int, data_dir: str, out_dir: str) -> None:
    # What torchrun would set for this process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    from brainvq.engine import distributed

    assert distributed.init_from_env("cpu")
    try:
        out = _fit_both(Path(data_dir), batch_size=4)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def test_ddp_ranks_stay_in_sync_and_prior_matches_one_process(tiny_adni, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, free_port(), str(tiny_adni), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for part in ("vqvae", "prior"):  # identical weights *and buffers* (EMA codebook, cluster sizes) on every rank
        for name, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][name]), f"{part}.{name} differs between ranks"

    torch.set_num_threads(1)
    one = _fit_both(tiny_adni, batch_size=8)
    for part in ("vqvae", "prior"):
        for name, value in one[part].items():
            torch.testing.assert_close(
                ranks[0][part][name].float(), value.float(), rtol=0, atol=ATOL, msg=f"{part}.{name}"
            )
    for key in ("prior/train_nll_bits", "prior/val_nll_bits"):
        np.testing.assert_allclose(
            [h[key] for h in ranks[0]["prior_history"]], [h[key] for h in one["prior_history"]], rtol=RTOL, err_msg=key
        )
    for key in ("train/loss", "val/ssim", "val/perplexity"):
        np.testing.assert_allclose(
            [h[key] for h in ranks[0]["vqvae_history"]], [h[key] for h in one["vqvae_history"]], rtol=RTOL, err_msg=key
        )


def test_helpers_are_no_ops_in_a_single_process():
    from brainvq.engine import distributed
    from brainvq.engine.common import Budget

    assert not distributed.init_from_env("cpu")  # not launched by torchrun: nothing to join
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.run_tags() == {}
    assert distributed.global_batch_size(4, 3) == 3  # capped at the data size, as before
    assert distributed.shard(np.arange(5)).tolist() == [0, 1, 2, 3, 4] and distributed.shard_slice(5) == slice(0, 5)
    t = torch.tensor([1.0, float("nan")])
    assert distributed.all_reduce_mean(t) is t and distributed.broadcast_object("x") == "x"
    assert distributed.on_main(lambda: 3) == 3 and distributed.on_main(lambda: 3, share=False) == 3
    assert type(distributed.make_budget(1.0)) is Budget

"""Process-group plumbing for DistributedDataParallel training under ``torchrun``.

``torchrun --nproc_per_node N`` starts N copies of a pipeline script with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env` joins that group (NCCL on CUDA,
gloo on CPU). Every other helper here is a no-op in a plain single process, so the training loops call them
unconditionally and a one-process run computes exactly what it computed before.

How a step is split: each epoch's shuffled order (``engine.common.epoch_order``, the same on every rank) is cut into
*global* batches of ``batch_size x world_size``; rank r trains on the r-th contiguous chunk of each global batch
(:func:`shard`), and DDP averages the gradients. With equal chunks that is the gradient of the global batch's mean
loss, i.e. the same step a single process takes with ``batch_size x world_size``.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import sys
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from brainvq.engine.common import Budget, resolve_device
from brainvq.errors import BrainVQError, ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
_owned = False  # whether init_from_env created the process group (teardown only destroys its own)


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def init_from_env(device: str = "auto", timeout_minutes: float = 30.0) -> bool:
    """Join the process group torchrun describes; returns False (and does nothing) outside torchrun or with one
    process. NCCL when ``device`` resolves to CUDA (each process on GPU ``LOCAL_RANK``), gloo on CPU."""
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    dev = resolve_device(device)
    if dev.type == "cuda":
        backend = "nccl"
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank()} has no GPU: this node has {torch.cuda.device_count()}; "
                              "use --nproc_per_node <= the GPU count, or device=cpu")
        torch.cuda.set_device(local_rank())  # collectives and "cuda" tensors go to this process's own GPU
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(
            f"device={device} resolves to {dev.type}: distributed training runs on cuda (NCCL) or cpu (gloo)"
        )
    global _owned
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    _owned = True
    log.info("joined %s process group: rank %d of %d (local rank %d)", backend, rank(), world_size(), local_rank())
    return True


def teardown() -> None:
    """Leave the process group :func:`init_from_env` joined (safe to call when it joined none).

    Meant for a ``finally:`` block. On the way out of a successful run every rank first waits for the others: a rank
    that destroys its gloo group while rank 0 is still logging can abort (``terminate called without an active
    exception``, SIGABRT), which fails the whole torchrun job. While an exception propagates there is no wait: a peer
    may be blocked in another collective, and torchrun stops the job anyway.
    """
    global _owned
    if _owned and dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        # DDP wrappers left in reference cycles keep the gloo group (and its worker threads' pending work) alive until
        # interpreter shutdown, where freeing them aborts the process (pytorch/pytorch#179291): free them now, while
        # the interpreter is whole, so that destroying the group really releases it.
        gc.collect()
        dist.destroy_process_group()
    _owned = False


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the only process that logs to MLflow and writes checkpoints."""
    return rank() == 0


def training_device(device: torch.device) -> torch.device:
    """Under DDP a CUDA device means this process's own GPU (``cuda:LOCAL_RANK``)."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor on ``t``'s device); ``t`` itself when not distributed."""
    if not is_distributed():
        return t
    buf = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks; ``t`` itself when not distributed. A NaN on any rank makes it NaN on all ranks, so
    every rank stops on the same step instead of leaving the others waiting in the next collective."""
    if not is_distributed():
        return t
    return all_reduce_sum(t) / world_size()


def all_reduce_max(value: float) -> float:
    """Largest ``value`` over ranks."""
    if not is_distributed():
        return value
    buf = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return float(buf.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T], share: bool = True) -> T | None:
    """Run ``fn`` on rank 0 only and hand every rank its result (``share=False``: rank 0 keeps it, the others get
    None: a "done" signal for large results). When ``fn`` fails, every rank raises the same error, instead of the
    others waiting in the next collective until they are killed or time out."""
    if not is_distributed():
        return fn()
    result, box = None, [None]
    if is_main():
        try:
            result = fn()
            box = [("ok", result if share else None)]
        except Exception as exc:
            error = exc
            # Our one-line errors travel as they are; anything else may not pickle, so send its text.
            sent = exc if isinstance(exc, BrainVQError) else RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}")
            box = [("error", sent)]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        if is_main():
            raise error
        raise value
    return result if is_main() else value


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """Local rank 0 of each node runs the block first (e.g. builds the decoded-image cache), then the others."""
    first = local_rank() == 0
    if is_distributed() and not first:
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and first:
            dist.barrier()


def global_batch_size(batch_size: int, n: int) -> int:
    """Images per optimiser step over all ranks, ``batch_size x world_size``, capped at the data size ``n``."""
    world = world_size()
    if n == 0:
        raise ConfigError("the training split is empty")
    if n < world:
        raise ConfigError(
            f"the training split has {n} item(s), fewer than the {world} distributed processes: "
            "use more data (max_train_images) or fewer processes"
        )
    return min(batch_size * world, n)


def shard_slice(n: int) -> slice:
    """This rank's contiguous part of ``range(n)``, split as ``np.array_split`` does (sizes differ by at most one);
    the parts in rank order cover ``range(n)``."""
    if not is_distributed():
        return slice(0, n)
    base, extra = divmod(n, world_size())
    r = rank()
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def shard(batch: np.ndarray) -> np.ndarray:
    """This rank's contiguous chunk of a global batch; chunks in rank order concatenate back to ``batch``."""
    return batch[shard_slice(len(batch))]


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when distributed (else ``model``); cross-rank EMA sync is switched on
    for every submodule that supports it (the vector quantiser)."""
    if not is_distributed():
        return model
    for m in model.modules():
        if hasattr(m, "sync_ranks"):
            m.sync_ranks = True
    # The EMA buffers are all-reduced inside the quantiser, so ranks already agree on every buffer; DDP's per-forward
    # buffer broadcast would only overwrite them with rank 0's identical copy (buffers are still synced at init).
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper; switches the quantiser's cross-rank sync back off."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    for m in inner.modules():
        if hasattr(m, "sync_ranks"):
            m.sync_ranks = False
    return inner


class SyncedBudget(Budget):
    """A time budget all ranks agree on: the slowest rank's clock decides, so every rank uses the same learning
    rate and stops after the same step (one rank stopping alone would leave the others hanging in a collective)."""

    def fraction(self) -> float:
        if self.max_minutes <= 0:
            return 0.0
        return all_reduce_max(super().fraction())

    def exhausted(self) -> bool:
        return self.max_minutes > 0 and self.fraction() >= 1.0


def make_budget(max_minutes: float, spent_before: float = 0.0) -> Budget:
    """:class:`Budget`, or :class:`SyncedBudget` under DDP."""
    cls = SyncedBudget if is_distributed() else Budget
    return cls(max_minutes, spent_before=spent_before)


def run_tags() -> dict[str, str]:
    """MLflow tags describing the process group (empty for a single process)."""
    if not is_distributed():
        return {}
    return {"brainvq.world_size": str(world_size()), "brainvq.ddp_backend": dist.get_backend()}

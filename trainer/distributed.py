"""The one thin place that asks where this process stands: rank, world size, device, collective backend.

Model, transforms and evaluators never ask; the training loop receives a ``Worker`` and passes what is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Worker:
    """This training worker: its rank among ``world_size``, its device, whether it writes logs and tracking."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes MLflow and prints progress."""
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        """Whether this worker computes on a GPU (bf16 autocast, channels_last, DALI mixed decode)."""
        return self.device.type == "cuda"


def backend(use_gpu: bool) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if use_gpu else "gloo"


def current() -> Worker:
    """This Ray Train worker (rank, world size, the device Ray Train assigned)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def all_sum(values: list[float], worker: Worker) -> list[float]:
    """Element-wise sum of ``values`` over all workers (a no-op for one worker); float64 so counts stay exact."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if worker.world_size > 1 and dist.is_initialized():
        # NCCL reduces device tensors only; gloo reduces CPU tensors.
        tensor = tensor.to(worker.device) if worker.cuda else tensor
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def spread(value: float, worker: Worker) -> float:
    """max - min of ``value`` over all workers (0 for one worker): e.g. a weight checksum, to prove DDP replicas
    stay identical."""
    tensor = torch.tensor([value, -value], dtype=torch.float64)
    if worker.world_size > 1 and dist.is_initialized():
        tensor = tensor.to(worker.device) if worker.cuda else tensor
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    high, neg_low = tensor.cpu().tolist()
    return high + neg_low

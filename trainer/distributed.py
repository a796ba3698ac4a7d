"""The one thin place that asks where this process stands: rank, world size, device, collective backend.

Model, transforms and evaluators never ask; the training loop receives a ``Worker`` and passes what is needed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psutil
import torch
import torch.distributed as dist

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


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


def interface_of(ip: str) -> str | None:
    """The name of this machine's network interface that holds ``ip`` (None when none does)."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


# Rank 0's store server between its start and the process group's (which then holds it).
_store_server: dict[str, dist.TCPStore] = {}


def _serve_store(timeout_s: int) -> tuple[str, int]:
    """Start the process group's TCPStore server on this node's address only; its (address, port).

    TCPStore binds every interface whatever host it is given (libuv and legacy servers alike), unless it is handed
    a socket already bound: so bind one on the node's address, and make the server multi-tenant so that the store
    the ``env://`` rendezvous opens on this port, in this process, is served by it.
    """
    addr = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    sock.bind((addr, 0))
    sock.listen()
    port = sock.getsockname()[1]
    _store_server["store"] = dist.TCPStore(addr, port, None, True, timedelta(seconds=timeout_s), wait_for_workers=False,
                                           multi_tenant=True, master_listen_fd=sock.detach())
    return addr, port


def _pin_to_node(master_addr: str, master_port: int) -> None:
    """Point ``env://`` at rank 0's store, and gloo's and NCCL's sockets at the interface of this node's Ray address
    (unless the operator chose one: e.g. NCCL on a faster NIC)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master_addr, str(master_port)
    iface = interface_of(ray.util.get_node_ip_address())
    if iface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "=" + iface)  # '=': this interface exactly, not a name prefix


def _join_process_group(backend: str, rank: int, world_size: int, timeout_s: int) -> None:
    """Ray Train's own process-group set-up (``env://``), then let the process group own the store server."""
    _setup_torch_process_group(backend, rank, world_size, "env://", timeout_s)
    _store_server.clear()


class _NodeLocalTorchBackend(_TorchBackend):
    """Ray Train's torch backend, except that its sockets listen on the node's address, never on all interfaces."""

    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        """Rank 0 serves the store on its node's address; every worker pins gloo/NCCL, then joins the group."""
        addr, port = worker_group.execute_single(0, _serve_store, backend_config.timeout_s)
        worker_group.execute(_pin_to_node, addr, port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _join_process_group, backend_config.backend, rank,
                                                   len(worker_group), backend_config.timeout_s)
                 for rank in range(len(worker_group))])


class NodeLocalTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group (store, gloo, NCCL) listens on each node's Ray address only."""

    @property
    def backend_cls(self) -> type:
        return _NodeLocalTorchBackend


def torch_config(use_gpu: bool) -> TorchConfig:
    """The TorchTrainer's process-group config: NCCL or gloo, every socket on the node's own address."""
    return NodeLocalTorchConfig(backend=backend(use_gpu))


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

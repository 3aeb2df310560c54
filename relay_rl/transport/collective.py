"""The collective transport: learner rank 0 broadcasts each bucket over a process group it shares with the receivers
(NCCL on GPUs, gloo on CPU machines, where it exercises the same code). Both sides walk the same bucket plan, so
receivers allocate their buffers up front. The receivers must be idle for the broadcast, so with ``max_staleness`` >
0 a sync waits for the generation in flight (and the driver waits for the broadcast)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .base import Transport
from .plan import Plan

TIMEOUT = datetime.timedelta(minutes=10)


class Collective(Transport):
    name = "collective"
    driver_waits = True

    def connect(self, host: str, port: int, world_size: int, rank: int, backend: str) -> None:
        """Join the sync group: learner rank 0 is its rank 0, the receivers 1..R."""
        self.group = init_group(host, port, world_size, rank, backend)

    def send(self, rank: int, index: int, bucket: dict[str, torch.Tensor]):
        if rank == 0:
            spec = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in bucket.items()]
            broadcast_bucket(self.group, spec, bucket, next(iter(bucket.values())).device)
        return None

    def route(self, sent: list[list], replica: int, plan: Plan) -> Plan:
        return plan  # the receivers know the shapes up front; the bytes come by broadcast

    def receive(self, plan: Plan) -> Iterator[tuple[str, torch.Tensor]]:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        for bucket in plan:
            yield from broadcast_bucket(self.group, bucket, None, device).items()


def init_group(host: str, port: int, world_size: int, rank: int, backend: str) -> dist.ProcessGroup:
    """A process group of its own (learner rank 0 = rank 0, rollout actors 1..R), beside any default group."""
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=TIMEOUT)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, TIMEOUT)


def broadcast_bucket(
    group, bucket: list[tuple[str, tuple, str]], tensors: dict[str, torch.Tensor] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Broadcast one bucket from rank 0 as one flat buffer per dtype; returns {name: tensor} on every rank."""
    out: dict[str, torch.Tensor] = {}
    for dtype_name in sorted({d for _, _, d in bucket}):
        items = [(n, s) for n, s, d in bucket if d == dtype_name]
        dtype = getattr(torch, dtype_name)
        numel = [int(torch.Size(s).numel()) for _, s in items]
        if tensors is not None:  # the sender
            flat = torch.cat([tensors[n].reshape(-1).to(device, dtype) for n, _ in items])
        else:
            flat = torch.empty(sum(numel), dtype=dtype, device=device)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        group.broadcast([flat], opts).wait()
        for (n, s), part in zip(items, torch.split(flat, numel)):
            out[n] = part.view(s)
    return out

"""Weight-sync transports: how a published policy version travels from the learner to the rollout engines.

``object_store`` (default; works everywhere): learner rank 0 ``ray.put``s each bucket of gathered weights once; every
rollout actor fetches the buckets (zero-copy numpy) and loads them in place. It never blocks generation: a load queues
behind the generation in flight.

``collective``: learner rank 0 broadcasts each bucket over a process group it shares with the rollout actors (NCCL on
GPUs, gloo on CPU machines, where it exercises the same code). Both sides walk the same bucket plan, so receivers
allocate their buffers up front. The rollout actors must be idle for the broadcast, so with ``max_staleness`` > 0 a
sync waits for the generation in flight.
"""
from __future__ import annotations

import datetime
from typing import Iterator

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(minutes=10)

# A bucket plan: [[(name, shape, dtype name), ...], ...], identical on the learner and the rollout side.
Plan = list[list[tuple[str, tuple[int, ...], str]]]


def bucket_plan(module: torch.nn.Module, bucket_bytes: int) -> Plan:
    plan, current, size = [], [], 0
    for name, p in module.named_parameters():
        shape = tuple(getattr(p, "ds_shape", p.shape))
        nbytes = int(torch.Size(shape).numel()) * p.element_size()
        if current and size + nbytes > bucket_bytes:
            plan.append(current)
            current, size = [], 0
        current.append((name, shape, str(p.dtype).removeprefix("torch.")))
        size += nbytes
    if current:
        plan.append(current)
    return plan


def tensors_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def init_group(host: str, port: int, world_size: int, rank: int, backend: str) -> dist.ProcessGroup:
    """A process group of its own (learner rank 0 = rank 0, rollout actors 1..R), beside any default group."""
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=TIMEOUT)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, TIMEOUT)


def broadcast_bucket(group, bucket: list[tuple[str, tuple, str]], tensors: dict[str, torch.Tensor] | None,
                     device: torch.device) -> dict[str, torch.Tensor]:
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


def receive_stream(group, plan: Plan, device: torch.device, counter: list) -> Iterator[tuple[str, torch.Tensor]]:
    """The receiving side as one (name, tensor) stream, one bucket in memory at a time."""
    for bucket in plan:
        tensors = broadcast_bucket(group, bucket, None, device)
        counter[0] += tensors_nbytes(tensors)
        yield from tensors.items()

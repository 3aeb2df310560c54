"""Full weights out of a (possibly ZeRO-3-partitioned) model, bucket by bucket: what every weight sync and every
HF checkpoint starts from. How a gathered bucket then travels is ``relay_rl.transport``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from relay_rl.transport import Plan


def gathered_buckets(module: torch.nn.Module, zero_stage: int, plan: Plan) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {name: full tensor} per bucket of ``plan``. Under ZeRO-3 this is a collective (every rank must iterate to
    the end) and the tensors are valid only until the next iteration: copy what you keep."""
    params = dict(module.named_parameters())
    for bucket in plan:
        ps = [params[name] for name, _, _ in bucket]
        full = gather_partitions(ps) if zero_stage == 3 else [p.detach() for p in ps]
        yield {name: t for (name, _, _), t in zip(bucket, full)}


DIRECT_GATHER_NUMEL = 1 << 18
"""Parameters whose slice on each rank has at least this many elements are all-gathered straight into place, the
smaller ones together in one collective (gloo pays ~0.7 ms per collective on 2 cores)."""


def gather_partitions(ps: list[torch.nn.Parameter], direct_numel: int = DIRECT_GATHER_NUMEL) -> list[torch.Tensor]:
    """The full tensors of ZeRO-3 parameters, back to back in one buffer per dtype (a bucket then travels as one
    array). DeepSpeed's ``GatheredParameters`` issues one collective per parameter: 33 ms on gloo for the quickstart
    model's 46 small ones, against about 4 ms here, where small parameters share one collective and large ones land
    in place without a copy."""
    import deepspeed
    import torch.distributed as dist

    if any(getattr(p.ds_tensor, "final_location", None) == "nvme" for p in ps):  # partitions swapped out to disk
        with deepspeed.zero.GatheredParameters(ps, modifier_rank=None):
            return [p.detach().clone() for p in ps]
    group = ps[0].ds_process_group
    world = dist.get_world_size(group)
    if world == 1:  # the partition is the whole tensor
        return [p.ds_tensor.detach()[: p.ds_numel].view(p.ds_shape) for p in ps]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    full: dict[int, torch.Tensor] = {}
    for dtype in {p.ds_tensor.dtype for p in ps}:
        same = [p for p in ps if p.ds_tensor.dtype == dtype]
        local = [p.ds_tensor.detach().reshape(-1).to(device) for p in same]  # this rank's slice of each
        # parameter i gathers into [starts[i], starts[i + 1]): rank r's slice at r * n, then padding (if any, it
        # leaves a gap: adjacent parameters without padding are one run of memory)
        starts = list(itertools.accumulate((world * t.numel() for t in local), initial=0))
        flat = _gather_buffer(starts[-1], dtype, device)
        slots = [flat[a:b] for a, b in zip(starts, starts[1:])]
        small = [i for i, t in enumerate(local) if t.numel() < direct_numel]
        handles = [
            dist.all_gather_into_tensor(slots[i], t, group=group, async_op=True)
            for i, t in enumerate(local)
            if t.numel() >= direct_numel
        ]
        if small:
            together = torch.cat([local[i] for i in small])
            by_rank = torch.empty(world, together.numel(), dtype=dtype, device=device)
            dist.all_gather_into_tensor(by_rank.view(-1), together, group=group)
            offset = 0
            for i in small:
                n = local[i].numel()
                slots[i].view(world, n).copy_(by_rank[:, offset : offset + n])
                offset += n
        for h in handles:
            h.wait()
        for p, a in zip(same, starts):
            full[id(p)] = flat[a : a + p.ds_numel].view(p.ds_shape)
    return [full[id(p)] for p in ps]


_buffers: dict[torch.dtype, torch.Tensor] = {}
REUSE_MAX_BYTES = 1 << 30
"""The largest gather buffer kept for reuse: a sync bucket (``rollout.weight_sync_bucket_mb``, 256 MiB by default)
fits; the whole-weights gather of a larger model (a checkpoint) gets a buffer of its own, freed after it."""


def _gather_buffer(numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The gather's destination. On CPU one buffer per dtype is kept and reused (the result is valid until the next
    gather): a fresh buffer of a few hundred MiB costs as much in page faults as the gather itself. On GPU the caching
    allocator already reuses memory."""
    if device != "cpu" or numel * dtype.itemsize > REUSE_MAX_BYTES:  # a whole-model gather (a checkpoint) is not kept
        return torch.empty(numel, dtype=dtype, device=device)
    if dtype not in _buffers or _buffers[dtype].numel() < numel:
        _buffers[dtype] = torch.empty(numel, dtype=dtype)
    return _buffers[dtype][:numel]

"""The few cross-rank reductions objectives need (no-ops on one rank or without a process group)."""

from __future__ import annotations

import torch


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the learner ranks (in place; returned for chaining)."""
    import torch.distributed as dist

    if _world() > 1:
        dist.all_reduce(t)
    return t


def all_gather_varlen(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank."""
    import torch.distributed as dist

    if _world() == 1:
        return t
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

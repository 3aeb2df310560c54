"""The bucket plan: the learner's parameters in buckets of about ``bucket_bytes``, the same on every side of a sync
(learner ranks, the driver, the receivers), so each side knows what bucket ``i`` holds before it arrives."""

from __future__ import annotations

import torch

# [[(name, shape, dtype name), ...], ...]: one list per bucket, in the model's parameter order
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

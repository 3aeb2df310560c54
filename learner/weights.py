"""Full weights out of a (possibly ZeRO-3-partitioned) model, in buckets of numpy arrays for the object store.

numpy, because the object store hands numpy arrays out zero-copy; bfloat16 (which numpy lacks) travels as its
int16 bit pattern and is viewed back on arrival.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch

DTYPES_KEY = "__dtypes__"


def tensor_to_array(t: torch.Tensor) -> tuple[np.ndarray, str]:
    t = t.detach().to("cpu", copy=True).contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    return t.numpy(), str(t.dtype).removeprefix("torch.")


def arrays_to_tensors(bucket: dict) -> dict[str, torch.Tensor]:
    from cluster.runtime import from_numpy
    dtypes = bucket.get(DTYPES_KEY, {})
    out = {}
    for name, a in bucket.items():
        if name == DTYPES_KEY:
            continue
        t = from_numpy(a)
        out[name] = t.view(torch.bfloat16) if dtypes.get(name) == "bfloat16" else t
    return out


def bucket_nbytes(bucket: dict) -> int:
    return sum(a.nbytes for k, a in bucket.items() if k != DTYPES_KEY)


def gathered_state_buckets(module: torch.nn.Module, zero_stage: int, bucket_bytes: int, want: bool) -> Iterator[dict]:
    """Yield {name: array} buckets of full parameters. Under ZeRO-3 this is a collective: every rank must iterate
    to the end; ranks with ``want=False`` gather but yield nothing."""
    import deepspeed

    params = list(module.named_parameters())
    buckets, current, size = [], [], 0
    for name, p in params:
        nbytes = getattr(p, "ds_numel", p.numel()) * p.element_size()
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append((name, p))
        size += nbytes
    if current:
        buckets.append(current)
    for bucket in buckets:
        gather = (deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None)
                  if zero_stage == 3 else nullcontext())
        with gather:
            out = None
            if want:
                out, dtypes = {}, {}
                for name, p in bucket:
                    out[name], dtypes[name] = tensor_to_array(p)
                out[DTYPES_KEY] = dtypes
        if want:
            yield out

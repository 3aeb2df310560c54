"""Full weights out of a (possibly ZeRO-3-partitioned) model, bucket by bucket.

On the object-store path buckets travel as numpy arrays, because the object store hands numpy out zero-copy;
bfloat16 (which numpy lacks) travels as its int16 bit pattern and is viewed back on arrival.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch

from cluster.weight_sync import Plan

DTYPES_KEY = "__dtypes__"


def gathered_buckets(module: torch.nn.Module, zero_stage: int, plan: Plan) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {name: full tensor} per bucket of ``plan``. Under ZeRO-3 this is a collective (every rank must iterate to
    the end) and the tensors are valid only until the next iteration: copy what you keep."""
    import deepspeed

    params = dict(module.named_parameters())
    for bucket in plan:
        ps = [params[name] for name, _, _ in bucket]
        gather = deepspeed.zero.GatheredParameters(ps, modifier_rank=None) if zero_stage == 3 else nullcontext()
        with gather:
            yield {name: p.detach() for (name, _, _), p in zip(bucket, ps)}


def tensor_to_array(t: torch.Tensor, copy: bool = False) -> tuple[np.ndarray, str]:
    """A numpy view of a CPU tensor (a copy from GPU memory, or when asked): ``ray.put`` copies it into the store
    anyway, so the object-store path makes one copy of the weights, like a raw ``ray.put``."""
    t = t.detach()
    t = t.to("cpu", copy=copy) if not t.is_cuda else t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    return t.numpy(), str(t.dtype).removeprefix("torch.")


def to_arrays(bucket: dict[str, torch.Tensor]) -> dict:
    out, dtypes = {}, {}
    for name, t in bucket.items():
        out[name], dtypes[name] = tensor_to_array(t)
    out[DTYPES_KEY] = dtypes
    return out


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


def fetch_bucket(ref) -> dict:
    """A published bucket's arrays, once published: ``publish_bucket``'s result is the ObjectRef of what rank 0 put (a
    plain ObjectRef of arrays works too)."""
    import ray
    obj = ray.get(ref)
    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def bucket_nbytes(bucket: dict) -> int:
    return sum(a.nbytes for k, a in bucket.items() if k != DTYPES_KEY)

"""Full weights out of a (possibly ZeRO-3-partitioned) model, bucket by bucket.

On the object-store path buckets travel as numpy arrays, because the object store hands numpy out zero-copy;
bfloat16 (which numpy lacks) travels as its int16 bit pattern and is viewed back on arrival. Tensors that lie back to
back in memory (ZeRO-3's flat partitions, a gathered bucket) travel as one array: Ray serialises one array of N bytes
about 1.5x faster than the same bytes as a hundred arrays.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Iterator

import numpy as np
import torch

from cluster.weight_sync import Plan

SEGMENTS_KEY = "__segments__"


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
        return [p.ds_tensor.detach()[:p.ds_numel].view(p.ds_shape) for p in ps]
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
        handles = [dist.all_gather_into_tensor(slots[i], t, group=group, async_op=True)
                   for i, t in enumerate(local) if t.numel() >= direct_numel]
        if small:
            together = torch.cat([local[i] for i in small])
            by_rank = torch.empty(world, together.numel(), dtype=dtype, device=device)
            dist.all_gather_into_tensor(by_rank.view(-1), together, group=group)
            offset = 0
            for i in small:
                n = local[i].numel()
                slots[i].view(world, n).copy_(by_rank[:, offset:offset + n])
                offset += n
        for h in handles:
            h.wait()
        for p, a in zip(same, starts):
            full[id(p)] = flat[a:a + p.ds_numel].view(p.ds_shape)
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
    """A bucket as the object store carries it: ``{SEGMENTS_KEY: [(array, [(name, start, shape, dtype), ...]), ...]}``,
    one segment per run of tensors that lie back to back in one storage (views of it: no copy on CPU)."""
    segments, run = [], []
    for name, t in bucket.items():
        t = t.detach()
        if run and not _follows(run[-1][1], t):
            segments.append(_segment(run))
            run = []
        run.append((name, t))
    if run:
        segments.append(_segment(run))
    return {SEGMENTS_KEY: segments}


def _follows(prev: torch.Tensor, t: torch.Tensor) -> bool:
    return (t.is_contiguous() and prev.is_contiguous() and t.dtype == prev.dtype and t.device == prev.device
            and t.untyped_storage().data_ptr() == prev.untyped_storage().data_ptr()
            and t.data_ptr() == prev.data_ptr() + prev.numel() * prev.element_size())


def _segment(run: list[tuple[str, torch.Tensor]]) -> tuple[np.ndarray, list]:
    first = run[0][1]
    numel = sum(t.numel() for _, t in run)
    span = first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (numel,)) if len(run) > 1 \
        else first.reshape(-1)
    array, dtype = tensor_to_array(span)
    index, start = [], 0
    for name, t in run:
        index.append((name, start, tuple(t.shape), dtype))
        start += t.numel()
    return array, index


def arrays_to_tensors(bucket: dict) -> dict[str, torch.Tensor]:
    """The inverse of ``to_arrays``: zero-copy tensor views of the object store's arrays."""
    from cluster.runtime import from_numpy
    out = {}
    for array, index in bucket[SEGMENTS_KEY]:
        flat = from_numpy(array)
        for name, start, shape, dtype in index:
            t = flat[start:start + math.prod(shape)].view(shape)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out


def fetch_bucket(ref) -> dict:
    """A published bucket's arrays, once published: ``publish_bucket``'s result is the ObjectRef of what rank 0 put (a
    plain ObjectRef of arrays works too)."""
    import ray
    obj = ray.get(ref)
    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def bucket_nbytes(bucket: dict) -> int:
    return sum(array.nbytes for array, _ in bucket[SEGMENTS_KEY])


# -- the ipc transport: a handle to the rank's memory instead of the bytes ---------------------------------------------
def share_bucket(bucket: dict[str, torch.Tensor], buffers: dict, key: int) -> bytes:
    """Copy a gathered bucket into a buffer kept for it and return a handle to that buffer, the way
    ``torch.multiprocessing`` passes tensors between processes: a CUDA IPC handle on a GPU, a shared-memory file on
    CPU. One buffer per bucket (and dtype), reused by every sync: a receiver must have copied bucket ``key`` out
    before the next sync of the same bucket (the pipeline waits for the previous loads first). The handle is a few
    hundred bytes; the weights stay where they are."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's tensor reductions with ForkingPickler)
    segments = []
    for dtype in sorted({t.dtype for t in bucket.values()}, key=str):
        items = [(n, t) for n, t in bucket.items() if t.dtype == dtype]
        numel = sum(t.numel() for _, t in items)
        flat = buffers.get((key, dtype))
        if flat is None or flat.numel() != numel or flat.device != items[0][1].device:
            if items[0][1].device.type == "cpu":
                torch.multiprocessing.set_sharing_strategy("file_system")  # a file name, not a descriptor: any process
            flat = buffers[(key, dtype)] = torch.empty(numel, dtype=dtype, device=items[0][1].device).share_memory_()
        index, start = [], 0
        for name, t in items:
            flat[start:start + t.numel()].copy_(t.reshape(-1))
            index.append((name, start, tuple(t.shape)))
            start += t.numel()
        segments.append((flat, index))
    if segments and segments[0][0].is_cuda:
        torch.cuda.current_stream().synchronize()  # the copies land before the receiver reads
    return bytes(ForkingPickler.dumps(segments))


def release_shared(buffers: dict) -> None:
    """Drop ``share_bucket``'s buffers. On CPU each is a shared-memory file that torch unlinks once every handle given
    out has been opened and closed again; a handle that was never opened (its receiver died first) keeps the file.
    Such files are unlinked here, after this process has let go of them."""
    files = [f"/dev/shm{flat.untyped_storage()._share_filename_cpu_()[1].decode()}" for flat in buffers.values()
             if flat.device.type == "cpu"]
    buffers.clear()  # torch unlinks what nobody else counts on
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def open_shared(handle: bytes) -> dict[str, torch.Tensor]:
    """The inverse of ``share_bucket``, in the receiving process: views of the sender's buffers (map, no copy).
    Copy what you keep: the sender rewrites them at its next sync."""
    import pickle
    out = {}
    for flat, index in pickle.loads(handle):
        for name, start, shape in index:
            out[name] = flat[start:start + math.prod(shape)].view(shape)
    return out

"""The ipc transport (``cluster.colocate``): learner rank i hands rollout replica i, which shares its node (and GPU),
a handle to its own copy of each gathered bucket instead of the bytes: a CUDA IPC handle on a GPU, a shared-memory
file on CPU. The weights never go through the object store, and on a GPU never through host memory.

One buffer per bucket (and dtype) on each rank, reused by every sync: the receiver copies what it opens (the
transport is ``borrowed``), and a sync waits for the previous sync's loads before it rewrites the buffers."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from .base import Transport


class Ipc(Transport):
    name = "ipc"
    borrowed = True
    rewrites_buffers = True

    def __init__(self, receivers: int = 1):
        super().__init__(receivers)  # ranks 0..receivers-1 have a colocated replica
        self.buffers: dict = {}

    def send(self, rank: int, index: int, bucket: dict[str, torch.Tensor]):
        return share_bucket(bucket, self.buffers, index) if rank < self.receivers else None

    def route(self, sent: list[list], replica: int, plan) -> list:
        return [by_rank[replica] for by_rank in sent]

    def receive(self, handle_refs: list) -> Iterator[tuple[str, torch.Tensor]]:
        import ray

        for ref in handle_refs:
            yield from open_shared(ray.get(ref)).items()

    def close(self) -> None:
        release_shared(self.buffers)


def share_bucket(bucket: dict[str, torch.Tensor], buffers: dict, key: int) -> bytes:
    """Copy a gathered bucket into a buffer kept for it and return a handle to that buffer, the way
    ``torch.multiprocessing`` passes tensors between processes: a CUDA IPC handle on a GPU, a shared-memory file on
    CPU. One buffer per bucket (and dtype), reused by every sync: a receiver must have copied bucket ``key`` out
    before the next sync of the same bucket (the driver waits for the previous loads first). The handle is a few
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
            flat[start : start + t.numel()].copy_(t.reshape(-1))
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
    files = [
        f"/dev/shm{flat.untyped_storage()._share_filename_cpu_()[1].decode()}"
        for flat in buffers.values()
        if flat.device.type == "cpu"
    ]
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
            out[name] = flat[start : start + math.prod(shape)].view(shape)
    return out

"""Weight sync transports: how a published policy version travels from the learner ranks to the engines.

One interface (``Transport``: ``send`` on the learner ranks, ``route`` on the driver, ``receive`` on the receiving
actor) and a class per transport, named by ``rollout.weight_transport``:

    object_store   the Ray object store (the default; works everywhere; never blocks generation)
    collective     a broadcast from learner rank 0 over a process group with the receivers (NCCL on GPU, gloo on CPU)
    ipc            colocated replicas read a handle to the rank's own memory (CUDA IPC on GPU, shared memory on CPU)
"""

from __future__ import annotations

from .base import Transport
from .collective import Collective
from .ipc import Ipc
from .object_store import ObjectStore
from .plan import Plan, bucket_plan, tensors_nbytes  # noqa: F401

TRANSPORTS: dict[str, type[Transport]] = {t.name: t for t in (ObjectStore, Collective, Ipc)}


def make_transport(name: str, receivers: int = 1) -> Transport:
    """The transport ``name`` for this process; ``receivers``: how many replicas read it (ipc: ranks 0..R-1 share)."""
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight transport {name!r}: use one of {', '.join(TRANSPORTS)}")
    return TRANSPORTS[name](receivers)

"""What a weight transport is: three halves that run in three places during one sync of policy version v.

    send     on every learner rank, once per bucket of the plan, after the ranks have gathered it (a ZeRO-3
             collective): what that rank contributes (an ObjectRef, a handle, a broadcast, or nothing)
    route    on the driver: which of the ranks' sends replica j reads (rank 0's buckets, the rank beside it, ...)
    receive  on the receiving actor (a rollout engine, a teacher): the weights as one (name, tensor) stream, one
             bucket in memory at a time

Flags tell the driver how to order a sync: ``driver_waits`` (the driver waits for the sends: a broadcast needs its
receivers), ``rewrites_buffers`` (a sync reuses what the previous sync's receivers read: they must be done first),
``borrowed`` (what a receiver gets is the sender's memory, which changes after the sync: the engine copies it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch


class Transport:
    name: ClassVar[str]
    borrowed: ClassVar[bool] = False
    driver_waits: ClassVar[bool] = False
    rewrites_buffers: ClassVar[bool] = False

    def __init__(self, receivers: int = 1):
        self.receivers = receivers  # how many replicas read a sync

    def send(self, rank: int, index: int, bucket: dict[str, torch.Tensor]) -> object:
        """Learner rank ``rank``'s part in sending bucket ``index`` (``bucket``: its full tensors, valid only during
        this call)."""
        raise NotImplementedError

    def route(self, sent: list[list], replica: int, plan) -> object:
        """What replica ``replica`` is given to read a sync: ``sent[i][r]`` is rank r's ``send`` of bucket i (an
        ObjectRef), ``plan`` the bucket plan."""
        raise NotImplementedError

    def receive(self, payload) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights ``route`` pointed this receiver at, as (name, tensor) pairs."""
        raise NotImplementedError

    def connect(self, host: str, port: int, world_size: int, rank: int, backend: str) -> None:
        """Join a process group shared by sender and receivers (transports that need one)."""

    def close(self) -> None:
        """Release what the transport holds in this process (shared buffers)."""

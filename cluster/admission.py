"""Admission: a generation batch's rank shards go to the learner ranks (and, with the critic role, to the critic
ranks), as refs: the driver never holds the tensors."""

from __future__ import annotations

from .pools import Pools


def admit(pools: Pools, shards: list) -> list:
    """Learner rank i takes shard i. With the critic role: critic rank i first computes V_old of shard i, learner rank
    i computes advantages and returns from them, and critic rank i takes the returns of the same rows. The refs of the
    ranks' admission statistics come back: the driver fetches them with the next step's results, so a rank goes from
    admitting to training without waiting for the driver."""
    learner, critic = pools.learner, pools.critic
    if not critic:
        return [r.admit.remote(shard) for r, shard in zip(learner, shards)]
    values = [c.values.remote(shard) for c, shard in zip(critic, shards)]
    admitted = [r.admit.options(num_returns=2).remote(shard, v) for r, shard, v in zip(learner, shards, values)]
    critic_stats = [
        c.admit.remote(shard, v, returns) for c, shard, v, (_, returns) in zip(critic, shards, values, admitted)
    ]
    return [stats for stats, _ in admitted] + critic_stats

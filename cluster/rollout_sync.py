"""The driver's side of weight sync: when and how a policy version reaches the rollout pool (and scoring pools that
follow the policy), through the run's ``relay_rl.transport``.

A sync is one call per bucket of the plan on every learner rank (each gathers the bucket, a ZeRO-3 collective, and
sends its part) and one load per rollout replica, queued at once: a load runs in the replica's order (after the
generations already queued, before the next ones) and takes each bucket as soon as it is sent, so loading overlaps
gathering. The driver waits only where the transport says so (a broadcast needs its receivers; buffers the previous
sync's loads still read), and collects the loads' timings with the next step's record (``finish``).
"""

from __future__ import annotations

import logging
import time

import ray

from relay_rl.transport import TRANSPORTS

from .pools import Pools, await_restarts, get_all

log = logging.getLogger("relay_rl")


class RolloutSync:
    def __init__(self, cfg, pools: Pools):
        self.cfg, self.pools = cfg, pools
        self.transport = TRANSPORTS[cfg.rollout.weight_transport]()  # the driver's half: route and flags
        self.bucket_mb = cfg.rollout.weight_sync_bucket_mb
        self.version = 0  # the version the rollout pool holds (after queued loads)
        self.pending: list = []  # the last sync's loads
        self.last: dict = {}
        self._plan = None
        self.asleep = False  # colocated vLLM engines resting while the learner trains

    # -- colocated engines -------------------------------------------------------------------------------------
    @property
    def sleeps(self) -> bool:
        r = self.cfg.rollout
        return self.cfg.cluster.colocate and r.engine == "vllm" and r.vllm.enable_sleep_mode

    def rest(self, inflight: int) -> None:
        """Colocated vLLM: free the KV cache while the learner trains (only when no generation is in flight)."""
        if self.sleeps and not self.asleep and inflight == 0:
            ray.get([w.sleep.remote() for w in self.pools.rollout])
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            ray.get([w.wake.remote() for w in self.pools.rollout])
            self.asleep = False

    # -- syncs ------------------------------------------------------------------------------------------------
    def plan(self) -> list:
        self._plan = self._plan or ray.get(self.pools.learner[0].weight_plan.remote(self.bucket_mb))
        return self._plan

    def send(self, transport: str) -> list[list]:
        """Every bucket on every learner rank, in the same order on each (a collective under ZeRO-3): ``sent[i][r]``
        is rank r's ObjectRef for bucket i, usable before it is ready. A learner failure surfaces where they are
        fetched."""
        return [
            [r.send_bucket.remote(transport, self.bucket_mb, i) for r in self.pools.learner]
            for i in range(len(self.plan()))
        ]

    def sync(self, version: int, force: bool = False) -> None:
        """Send the learner's weights (version ``version``) to every rollout actor."""
        if self.version == version and not force:
            return
        self.wake()
        t0, t = time.time(), self.transport
        if t.rewrites_buffers:
            self.finish()  # the ranks rewrite the buffers the last loads read from: those loads must be done
        sent = self.send(t.name)
        self.pending = [
            w.receive_weights.remote(version, t.name, t.route(sent, j, self.plan()))
            for j, w in enumerate(self.pools.rollout)
        ]
        if t.driver_waits:
            get_all([ref for by_rank in sent for ref in by_rank])
        if self.cfg.rollout.partial_rollouts:  # threaded actors: make sure the load lands before the next generate
            ray.get(self.pending)
        self.version = version
        self.last = {"issue_s": time.time() - t0, "version": version}

    def sync_teacher(self, pool: str, alpha: float) -> None:
        """A scoring pool that follows the policy: theta_T <- alpha * theta + (1 - alpha) * theta_T on every actor of
        ``pool`` (TR-DPO's reference refresh, SDPO's EMA teacher; alpha = 1 copies the policy), by object store."""
        refs = [by_rank[0] for by_rank in self.send("object_store")]
        ray.get([t.mix_weights.remote(refs, alpha) for t in self.pools.teachers[pool]])

    def finish(self) -> dict:
        """Finish the last sync's bookkeeping (waits for the queued loads): its timings for the step's record."""
        if not self.pending:
            return {}
        try:
            infos = ray.get(self.pending)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            log.warning("a rollout worker died during a weight sync (%s); restarting it", type(e).__name__)
            self.pending = []
            self.heal()
            return {}
        self.pending = []
        load_s, issue_s = max(i["load_s"] for i in infos), self.last["issue_s"]
        # a transport the driver waited for (a broadcast): the loads ran with it; otherwise the loads ran from their
        # start (at once, unless a generation was queued first) while the buckets were sent
        total = max(issue_s, load_s) if self.transport.driver_waits else issue_s + load_s
        return {"timing/sync_s": total, "sync/bytes": infos[0]["bytes"], "sync/load_s": load_s}

    def heal(self) -> None:
        """After an actor died: wait until every rollout/reward actor answers, then bring restarted rollout actors
        (which start from the run's initial weights) to the current version."""
        await_restarts(self.pools)
        versions = ray.get([w.get_version.remote() for w in self.pools.rollout])
        if any(v != self.version for v in versions):
            self.sync(self.version, force=True)
            self.finish()

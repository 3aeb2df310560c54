"""The run file's ``cluster:`` section: the pools (rollout, reward, teacher, reference, learner, critic, ...), each
with its replicas and resources, placement, and the Ray cluster to join."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from relay_rl.schema import Strict


class PoolSpec(Strict):
    replicas: int = Field(1, ge=0)
    """Number of actors in the pool."""
    num_cpus: float = Field(1.0, ge=0)
    """Logical CPUs reserved per actor (fractions allowed)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs reserved per actor (fractions allowed)."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Extra Ray custom resources per actor, e.g. ``{"rollout_node": 1}`` to pin a pool to labelled nodes."""
    max_restarts: int = Field(3, ge=-1)
    """How often Ray restarts a crashed actor of this pool (-1: without limit). Its lost work is redone."""
    num_threads: Optional[int] = Field(None, ge=1)
    """torch (OpenMP) threads of each actor. None: Ray's choice, num_cpus rounded down, at least 1. Where roles take
    turns (max_staleness 0 on a small machine: the learner idles while the rollout samples and the other way round),
    a role may use more threads than the CPUs it reserves; where they overlap, more threads than cores compete."""


class LearnerPoolSpec(PoolSpec):
    replicas: int = Field(1, ge=1)
    """Data-parallel learner ranks (P). Each rank is a Ray actor holding one DeepSpeed engine."""
    max_restarts: int = Field(0, ge=0)
    """Ray does not restart a learner rank on its own (its process group and optimizer partition die with it): the
    controller restarts the whole group from the newest checkpoint instead (``train.max_restarts``)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: ``auto`` picks NCCL when the ranks have GPUs, gloo otherwise."""


class CriticPoolSpec(LearnerPoolSpec):
    replicas: Optional[int] = Field(None, ge=1)
    """Critic ranks; None: as many as learner ranks (the only value allowed: rank i scores and learns rank i's rows)."""
    colocate_with_learner: bool = False
    """Put critic rank i in learner rank i's placement-group bundle (same node; with fractional num_gpus, the same
    GPU). False: the critic ranks get their own placement group."""


class ClusterSpec(Strict):
    colocate: bool = False
    """Place rollout replica i with learner rank i in one placement-group bundle (shared GPUs, fractional
    ``num_gpus`` on both pools; needs rollout.replicas <= learner.replicas). False: separate placement."""
    address: Optional[str] = None
    """Ray address to join. None: $RAY_ADDRESS if set (``ray job submit`` sets it), else a new local cluster."""
    namespace: str = "relay-rl"
    """Ray namespace of the run's named actors (what the dashboard lists)."""
    allow_unauthenticated: bool = False
    """Run on a cluster whose dashboard (and job API) listens beyond loopback without Ray's token authentication
    (RAY_AUTH_MODE=token). False: such a run is refused as it joins, before any actor starts, since anyone who reaches
    that port can run code on every node. Only for a network nobody else can reach."""
    rollout: PoolSpec = Field(default_factory=lambda: PoolSpec(num_cpus=0.5))
    """Rollout engines (generation)."""
    reward: PoolSpec = Field(default_factory=lambda: PoolSpec(num_cpus=0.25))
    """Reward scorers (verifiers, user functions, reward models)."""
    teacher: PoolSpec = Field(default_factory=lambda: PoolSpec(num_cpus=0.25))
    """Teacher scorers (teacher_workers/): the distillation teacher's distributions, and, unless ``reference`` is
    given, the reference pool's log-probs for KL too. Each pool is started only when the method needs it."""
    reference: Optional[PoolSpec] = None
    """The reference pool (frozen initial policy, log-probs for KL). None: the same spec as ``teacher``."""
    frozen_rollout: PoolSpec = Field(default_factory=lambda: PoolSpec(num_cpus=0.5))
    """Rollout engines holding the teacher's frozen weights (teacher-generated samples: GKD's ``seq_kd``); never
    synced. Started only when the method needs it."""
    learner: LearnerPoolSpec = Field(default_factory=lambda: LearnerPoolSpec(num_cpus=0.5))
    """The DeepSpeed learner ranks."""
    judge: PoolSpec = Field(default_factory=lambda: PoolSpec(num_cpus=0.5))
    """Rollout engines serving the LLM judge of the ``llm_judge`` reward (its own model, frozen: never synced).
    Started only when a reward function is ``llm_judge``."""
    environment: PoolSpec = Field(default_factory=lambda: PoolSpec(num_cpus=0.25))
    """Environment actors (``rollout.environment_factory``): each holds the instances of the trajectories assigned to
    it and runs their tool calls concurrently. A killed one is restarted and its trajectories redone. Started only with
    an environment factory."""
    critic: CriticPoolSpec = Field(default_factory=lambda: CriticPoolSpec(num_cpus=0.5))
    """PPO's critic: a value model trained by its own DeepSpeed group, rank i beside learner rank i's rows. Started
    only when the method needs it."""

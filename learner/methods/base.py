"""The family contract: what a method family is made of, in one class (``Family``), and the narrow handles its
pieces are given (``Model`` on a learner rank, ``Driver`` on the driver).

A family is one module under ``learner/methods/`` holding its config models (the run file's ``algorithm:`` union,
selected by ``name``), its learner-side ``Objective``, and a ``Family`` subclass that names them and overrides the
hooks it needs; every hook below has a default, so a small family is its config, its ``needs``, its ``assemble``
and its objective. The registry (``learner.methods``) maps ``algorithm.name`` to the family; the run file, the
pre-flight, the pools, the pipeline, the learner ranks and the controller call these hooks and nothing
family-specific. ``docs/architecture.md`` walks through writing one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Protocol

import torch
from pydantic import Field, model_validator

from relay_rl.schema import Strict

POLICY, DATASET, TEACHER = "policy", "dataset", "teacher"  # where a micro-batch's completions come from


class Batching(Strict):
    """The batch schedule and staleness knobs every family shares (docs/staleness.md)."""

    num_generations: int = Field(8, ge=1)
    """G: completions per prompt (a group)."""
    per_device_train_batch_size: int = Field(8, ge=1)
    """B: completions per learner rank per micro-batch."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """GA: micro-batches per rank per optimizer step."""
    steps_per_generation: Optional[int] = Field(None, ge=1)
    """S: micro-batches (slices) per rank per generation batch. None resolves to GA (or from generation_batch_size)."""
    generation_batch_size: Optional[int] = Field(None, ge=1)
    """Completions per generation batch over all ranks. Set this or steps_per_generation, not both."""
    num_iterations: int = Field(1, ge=1)
    """mu: passes over each generation batch."""
    max_staleness: int = Field(0, ge=0)
    """k (relay-rl): policy versions a rollout may lag the learner when its batch is admitted. 0 is synchronous."""
    staleness_policy: Literal["wait", "drop", "use"] = "wait"
    """What keeps data within max_staleness. ``wait``: generation is held back so no batch is ever too stale.
    ``drop``: generation runs ahead (up to max_inflight_generations batches); a batch too stale at admission is
    dropped, counted, and replaced. ``use``: runs ahead; a too-stale batch is trained on anyway (and counted)."""
    max_inflight_generations: Optional[int] = Field(None, ge=1)
    """Generation batches launched ahead of the learner under ``drop`` / ``use``. None: max_staleness + 1."""

    @model_validator(mode="after")
    def _batching_rules(self):
        if self.steps_per_generation is not None and self.generation_batch_size is not None:
            raise ValueError(
                "set steps_per_generation or generation_batch_size, not both "
                f"(got {self.steps_per_generation} and {self.generation_batch_size})"
            )
        if self.max_inflight_generations is not None and self.staleness_policy == "wait":
            raise ValueError(
                "max_inflight_generations applies to staleness_policy drop/use (wait derives the "
                "look-ahead from max_staleness)"
            )
        return self


# ----------------------------------------------------------------------------------------------------------------
# what a family needs from the cluster, as data
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherSpec:
    """One teacher pool and what it serves for every sample (teacher_workers/)."""

    pool: str  # pool name: "reference" (KL), "teacher" (the ``teacher:`` model), "self_teacher" (SDPO, SDFT)
    output: Literal["sampled", "topk", "full"] = "sampled"  # sampled-token log-probs, top-k, full vocabulary
    top_k: int = 0
    temperature: float = 1.0  # logits / T before the softmax
    retokenize: bool = False  # cross-tokenizer: the teacher re-tokenises prompt and completion text (GOLD ULD)
    merge: str = "observed"  # cross-tokenizer: how a group's split-token probabilities are merged
    skip_student_eos: bool = False  # cross-tokenizer: the student's trailing EOS stays out of the alignment
    skip_teacher_eos: bool = False  # ... and the teacher's (not appended)
    hybrid: bool = False  # cross-tokenizer: also serve the entries of the vocabulary both tokenizers share
    model: Literal["policy", "teacher"] = "teacher"  # whose weights the pool starts from: the policy's initial
    # weights (the reference, a self-teacher) or the ``teacher:`` section's model
    reprompt: bool = False  # the family's ``teacher_prompts`` gives each row the prompt the teacher scores it under


@dataclass(frozen=True)
class CriticSpec:
    """The critic role: a value model trained beside the policy, in its own DeepSpeed group (the ``critic`` pool,
    rank i beside learner rank i, scoring and learning rank i's rows)."""

    objective: type  # the critic ranks' Objective (their ``forward`` gives values, (B, Tc))
    model: str  # the critic's initial weights: a path, a hub id or ``kit:...`` (a scalar head is added if missing)


@dataclass(frozen=True)
class Needs:
    rewards: bool = True  # a ``reward:`` section is required and every sample is scored
    teachers: tuple[TeacherSpec, ...] = ()
    frozen_rollout: bool = False  # a rollout pool with frozen weights, never synced (seq_kd, XPO)
    frozen_rollout_model: Literal["teacher", "policy"] = "teacher"  # its weights: the teacher's, or the policy's
    # initial weights (XPO's reference samples)
    teacher_model: bool = False  # the ``teacher:`` section is required
    same_vocabulary: bool = True  # the teacher's vocabulary must equal the student's
    critic: Optional[CriticSpec] = None  # the critic role (PPO)


# ----------------------------------------------------------------------------------------------------------------
# the narrow handles
# ----------------------------------------------------------------------------------------------------------------
class Model(Protocol):
    """What an objective may ask of its learner rank's model (``learner.actor.RankModel``). Batches are ``Batch``
    micro-batches or shards; outputs are on the rank's device."""

    def logits(self, mb) -> torch.Tensor:
        """(B, Tc, V) float logits of the completion positions (with grad)."""

    def packed_logits(self, mb) -> torch.Tensor:
        """The same without computing a pad position (the rows laid end to end)."""

    def values(self, mb) -> torch.Tensor:
        """(B, Tc) float values of a critic's completion positions (with grad)."""

    def logprobs_no_grad(self, batch, temperature: float) -> torch.Tensor:
        """(N, Tc) log pi(o_t) at the current weights, on CPU, eval mode, no grad (anchors computed at admission)."""


class Driver(Protocol):
    """What a family's driver-side hooks (``prepare``, ``after_step``) may ask of the run (``cluster.pipeline``)."""

    @property
    def train_data(self):
        """The training prompts (a ``datasets.Dataset``)."""

    def sync_teacher(self, pool: str, alpha: float) -> None:
        """theta_T <- alpha * theta + (1 - alpha) * theta_T on every actor of the scoring pool ``pool``."""

    def sample_and_reduce(self, records: list[dict], n: int, seed: int, reduce: Callable, *args) -> Any:
        """Sample ``n`` completions of each record at the training sampling knobs, score them with the reward pool,
        and return ``reduce(records, batch, *args)`` computed where the batch is (the rows of record i have group
        id i): the driver sees only what ``reduce`` returns."""


# ----------------------------------------------------------------------------------------------------------------
# the learner side
# ----------------------------------------------------------------------------------------------------------------
class Objective:
    """The learner side of a family. One instance per rank; ``loss`` is called once per micro-batch."""

    def __init__(self, cfg, sched):
        self.cfg, self.alg, self.sched = cfg, cfg.algorithm, sched

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Change the HF model before DeepSpeed wraps it (e.g. ScaleRL's fp32 LM head)."""

    def admit(self, model: Model, shard) -> tuple[object, dict]:
        """A generation batch's shard arrives (weights of the admission version): precompute what it needs."""
        return shard, {}

    def begin_step(self, micro_batches: list) -> None:
        """The GA micro-batches of the coming optimizer step, before the first forward."""

    def forward(self, model: Model, mb) -> torch.Tensor:
        """The model's outputs for a micro-batch: (B, Tc, V) logits of the completion positions."""
        return model.logits(mb)

    def loss(self, mb, outputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The micro-batch's loss (already carrying its 1/GA or token normaliser) and its (kind, value, count)
        statistics. A pure function of the batch and the outputs: no reductions across ranks, no logging."""
        raise NotImplementedError

    def end_step(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        """What the objective carries from step to step (saved in checkpoints; e.g. GRPO's adaptive entropy)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` on resume."""

    @property
    def temperature(self) -> float:
        return self.cfg.rollout.temperature or 1.0


def step_tokens(micro_batches: list) -> float:
    """N_step: the completion tokens of one optimizer step's micro-batches on every rank (the normaliser of a global
    token mean; collective)."""
    from relay_rl.learner.collectives import all_reduce_sum

    n = torch.tensor([sum(float(mb.loss_mask.sum()) for mb in micro_batches)], dtype=torch.float64)
    return float(all_reduce_sum(n))


# ----------------------------------------------------------------------------------------------------------------
# the family
# ----------------------------------------------------------------------------------------------------------------
class Family:
    """A method family. Subclasses set ``configs`` and ``objective`` and implement ``needs`` and ``assemble``; every
    other hook is optional and documented with its default. Hooks are called with what they read: the run's config
    (``cfg``), the ``algorithm`` section (``alg``), a batch, or a narrow handle (``Driver``)."""

    configs: ClassVar[tuple[type[Batching], ...]] = ()
    """The family's config models in the run file's ``algorithm:`` union, each with its ``name`` literal."""
    objective: ClassVar[type[Objective]]
    """The learner ranks' objective."""
    curve: ClassVar[Optional[tuple[str, str]]] = None
    """A metric drawn beside the reward on the reward-curve plot and shown in the run summary: (key, label)."""
    multi_turn: ClassVar[bool] = False
    """The family trains on multi-turn trajectories (``rollout.tools``, ``rollout.environment_factory``): its losses
    count ``Batch.loss_mask``, which leaves the tool messages' tokens out. False: such a run is refused."""

    @property
    def names(self) -> list[str]:
        return [c.model_fields["name"].default for c in self.configs]

    # -- the run file -----------------------------------------------------------------------------------------
    def cross_section_aliases(self, data: dict) -> dict:
        """The raw run file with the family's knob names that set another section's field applied (PPO's
        ``response_length`` is ``rollout.max_completion_length``). Default: unchanged."""
        return data

    def check(self, cfg) -> None:
        """Rules across run-file sections; raise ``ValueError`` with the rule, the values and the fix. Default: none."""

    def warnings(self, cfg) -> list[str]:
        """Settings that run but deserve a word before the run starts. Default: none."""
        return []

    def data_columns(self, cfg) -> dict[str, str]:
        """Dataset columns the family itself reads, each with the knob that makes it read them (the pre-flight
        checks the training data has them). Default: none."""
        return {}

    def completion_column_fix(self, alg) -> Optional[str]:
        """Whether the family trains on the dataset's completions (``data.completion_column``): None when it never
        does; else what to do when the column is missing. Default: from ``sources``, unless the family makes its
        own data (``prepare``)."""
        if self.makes_data or DATASET not in self.sources(alg, 256, 0):
            return None
        return "set data.completion_column"

    # -- the pools ------------------------------------------------------------------------------------------
    def needs(self, cfg) -> Needs:
        """Which pools and sections the run needs (reward scoring, teacher pools and what they serve, a frozen
        rollout pool, the critic role), so pools are created, pre-flight checked and shown from the config alone."""
        raise NotImplementedError

    def moving_pools(self, cfg) -> list[str]:
        """Scoring pools whose weights change during the run (``after_step`` updates them): saved in checkpoints,
        never resized. Default: none."""
        return []

    # -- generation -----------------------------------------------------------------------------------------
    def sources(self, alg, n_micro_batches: int, seed: int) -> list[str]:
        """Which generator fills each micro-batch of a generation batch (``POLICY``, ``DATASET`` or ``TEACHER``, the
        frozen rollout pool), seeded per batch. Default: the policy."""
        return [POLICY] * n_micro_batches

    @property
    def mixes_sources(self) -> bool:
        """The family chooses its micro-batches' sources: the metrics then show each source's share."""
        return type(self).sources is not Family.sources

    def group_sources(self, alg) -> list[str]:
        """Where each row of a group comes from when a group mixes sources (XPO: [POLICY, TEACHER]); empty: a group
        comes from one source (``sources``). Default: empty."""
        return []

    def group_filter(self, cfg) -> Optional[tuple[Any, Optional[int]]]:
        """Dynamic sampling when it is on: (its ``filter_groups`` settings, the reward column it reads or None for the
        weighted total); None: every sampled group enters the batch. Default: none, and a run that turns
        ``filter_groups`` on is refused (checked with the run file)."""
        fg = getattr(cfg.algorithm, "filter_groups", None)
        if fg is not None and fg.enable:
            raise ValueError(
                f"filter_groups (dynamic sampling) is for the GRPO family; algorithm {cfg.algorithm.name} "
                "learns from groups without reward variance too: set filter_groups.enable: false"
            )
        return None

    def generation_prompts(self, cfg, records: list[dict]) -> Optional[list]:
        """Prompts the policy samples from instead of the records' own (SDFT's ``generate_from_teacher``); it still
        learns on the records' prompts. Default: None (their own)."""
        return None

    def teacher_prompts(self, batch, cfg) -> tuple[list, torch.Tensor]:
        """For a pool whose ``TeacherSpec.reprompt`` is set: each row's prompt for the teacher, and (N,) bool which rows
        got a teacher context. Called on the teacher actor."""
        raise NotImplementedError(f"{type(self).__name__} re-prompts no teacher")

    def reprompt_length(self, cfg) -> Optional[int]:
        """The longest teacher prompt in tokens (cut to its last tokens). Default: ``rollout.max_prompt_length``."""
        return cfg.rollout.max_prompt_length

    def assemble(self, batch, alg, reward_weights: list[float], seed: int) -> tuple[object, dict]:
        """The scored generation batch -> (training batch, statistics): advantages, targets, pairs, row order. A
        pure function of the batch, run as a Ray task beside the data."""
        raise NotImplementedError

    # -- the driver -----------------------------------------------------------------------------------------
    def prepare(self, cfg, driver: Driver, out, log) -> tuple[object, dict]:
        """Work before the first optimizer step, with the pools up: (the training data to use instead of
        ``data.train`` or None, statistics for the metrics). Rejection sampling makes its kept set here. Default:
        nothing."""
        return None, {}

    @property
    def makes_data(self) -> bool:
        """The family makes the data it trains on before the first step (``prepare``), from data.train's prompts."""
        return type(self).prepare is not Family.prepare

    def after_step(self, cfg, step: int, driver: Driver) -> None:
        """Driver-side work after optimizer step ``step`` (GRPO's reference refresh, SDPO's EMA teacher). Default:
        nothing."""

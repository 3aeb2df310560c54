"""What every method family is made of (DESIGN.md §8): a config model, its needs, an assemble step, an objective.

    config     a pydantic model in the run file's ``algorithm:`` union, selected by ``name``
    needs      data: which pools the family uses (reward scoring, teacher / reference distributions, a frozen rollout
               pool), so pools are created, pre-flight checked and shown from the config alone
    sources    which generator fills each micro-batch of a generation batch (the policy by default)
    assemble   a pure function of the scored generation batch (advantages, targets, row order) -> (batch, stats)
    objective  the learner-side loss of one micro-batch, ``(loss, stats)``

    optional   ``check`` (cross-section rules), ``warnings``, ``after_step`` (driver-side work between optimizer
               steps: GRPO's TR-DPO reference refresh, SDPO's EMA teacher), ``moving_pools``, ``teacher_prompts``
               (a teacher pool re-prompts each row: SDPO, SDFT), ``generation_prompts`` (the policy samples from
               other prompts than it learns on: SDFT's ``generate_from_teacher``), ``prepare`` (work before the first
               step: rejection sampling writes its dataset); ``learner.methods`` supplies the defaults

The controller loop, the pipeline and the learner rank call these pieces and nothing family-specific.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from cluster.schema import Strict


class Batching(Strict):
    """The batch schedule and staleness knobs every family shares (ALGORITHMS.md §1.2-§1.3)."""

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
            raise ValueError("set steps_per_generation or generation_batch_size, not both "
                             f"(got {self.steps_per_generation} and {self.generation_batch_size})")
        if self.max_inflight_generations is not None and self.staleness_policy == "wait":
            raise ValueError("max_inflight_generations applies to staleness_policy drop/use (wait derives the "
                             "look-ahead from max_staleness)")
        return self


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher pool and what it serves for every sample (teacher_workers/)."""

    pool: str  # pool name: "reference" (KL), "teacher" (the ``teacher:`` model), "self_teacher" (SDPO, SDFT)
    output: Literal["sampled", "topk", "full"] = "sampled"  # sampled-token log-probs, top-k, full vocabulary
    top_k: int = 0
    temperature: float = 1.0  # logits / T before the softmax
    retokenize: bool = False  # cross-tokenizer: the teacher re-tokenises prompt and completion text (GOLD ULD)
    merge: str = "observed"  # cross-tokenizer: how a group's split-token probabilities are merged
    model: Literal["policy", "teacher"] = "teacher"  # whose weights the pool starts from: the policy's initial
    # weights (the reference, a self-teacher) or the ``teacher:`` section's model
    reprompt: bool = False  # the family's ``teacher_prompts`` gives each row the prompt the teacher scores it under


@dataclass(frozen=True)
class Needs:
    rewards: bool = True  # a ``reward:`` section is required and every sample is scored
    teachers: tuple[TeacherSpec, ...] = ()
    frozen_rollout: bool = False  # a rollout pool with frozen weights, never synced (seq_kd, XPO)
    frozen_rollout_model: Literal["teacher", "policy"] = "teacher"  # its weights: the teacher's, or the policy's
    # initial weights (XPO's reference samples)
    teacher_model: bool = False  # the ``teacher:`` section is required
    same_vocabulary: bool = True  # the teacher's vocabulary must equal the student's
    critic: bool = False  # a critic pool: a value model trained beside the policy (its own DeepSpeed engine)


POLICY, DATASET, TEACHER = "policy", "dataset", "teacher"  # where a micro-batch's completions come from


class Objective:
    """The learner side of a family. One instance per rank; ``loss`` is called once per micro-batch."""

    def __init__(self, cfg, sched):
        self.cfg, self.alg, self.sched = cfg, cfg.algorithm, sched

    def admit(self, rank, shard) -> tuple[object, dict]:
        """A generation batch's shard arrives (weights of the admission version): precompute what it needs."""
        return shard, {}

    def begin_step(self, micro_batches: list) -> None:
        """The GA micro-batches of the coming optimizer step, before the first forward."""

    def forward(self, rank, mb) -> torch.Tensor:
        """The model's outputs for a micro-batch: (B, Tc, V) logits of the completion positions (a critic's values)."""
        return rank.forward(rank.engine, *rank._inputs(mb))

    def loss(self, rank, mb, logits_BTV: torch.Tensor) -> tuple[torch.Tensor, dict]:
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
    from learner.collectives import all_reduce_sum
    n = torch.tensor([sum(float(mb.completion_mask.sum()) for mb in micro_batches)], dtype=torch.float64)
    return float(all_reduce_sum(n))

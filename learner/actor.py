"""One learner rank: a Ray actor holding a DeepSpeed engine (ZeRO stage 0-3; gloo on CPU, NCCL on GPU).

The driver calls every rank with the same method at the same time (they run collectives together):

    admit(shard)     a generation batch's shard arrives: old log-probs and rollout IS weights are computed now, with
                     the weights of the admission version v_a; its S slices join the micro-batch queue mu times
    train_step()     GA micro-batches, one optimizer step: the policy version goes up by one
    publish_weights  gather full weights (ZeRO-3: GatheredParameters), rank 0 puts them in the object store in buckets
    save_hf(path)    the same gather, written as an HF checkpoint by rank 0
"""
from __future__ import annotations

import math
import os
import socket
import time
from collections import deque

import torch

from cluster.batch import Batch
from cluster.config import RunConfig, resolve_schedule
from cluster.metrics import merge_stats
from cluster.weight_sync import Plan, bucket_plan
from .logprobs import completion_logprobs, fp32_lm_head
from .losses import AdaptiveEntropy, LossScale, PolicyBatch, entropy_threshold, policy_loss, rollout_is_weights
from .weights import gathered_buckets, tensor_to_array, to_arrays


class LearnerRank:
    def __init__(self, rank: int, world_size: int, cfg: dict, model_path: str):
        from cluster.runtime import configure_worker
        configure_worker()
        self.rank, self.world_size = rank, world_size
        self.cfg = RunConfig.model_validate(cfg)
        self.alg = self.cfg.algorithm
        self.sched = resolve_schedule(self.cfg)
        self.model_path = model_path
        self.version = 0
        self.queue: deque = deque()  # (shard, slice index) per pending micro-step
        a = self.alg
        self.entropy = AdaptiveEntropy(a.entropy_coef, a.entropy_target, a.entropy_coef_delta, a.entropy_coef_min,
                                       a.entropy_coef_max, adaptive=a.use_adaptive_entropy)

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
        from transformers import AutoModelForCausalLM
        from transformers.integrations import HfDeepSpeedConfig

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        backend = self.cfg.cluster.learner.backend
        backend = ("nccl" if self.device.type == "cuda" else "gloo") if backend == "auto" else backend
        deepspeed.init_distributed(dist_backend=backend)
        torch.manual_seed(self.cfg.train.seed)

        ds_config = deepspeed_config(self.cfg)
        self.zero_stage = ds_config["zero_optimization"]["stage"]
        if self.zero_stage == 3:
            self._hf_ds = HfDeepSpeedConfig(ds_config)  # must stay alive: from_pretrained then partitions at load
        m = self.cfg.model
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, m.dtype),
                                                     trust_remote_code=m.trust_remote_code)
        if self.cfg.train.disable_dropout:
            for mod in model.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = 0.0
        if self.cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.alg.cast_lm_head_to_fp32:
            fp32_lm_head(model)
        self.engine, *_ = deepspeed.initialize(model=model, config=ds_config, lr_scheduler=self._lr_schedule,
                                               model_parameters=[p for p in model.parameters() if p.requires_grad])
        self.engine.train()
        return {"rank": self.rank, "setup_s": time.time() - t0, "backend": backend, "zero_stage": self.zero_stage,
                "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())}

    def _lr_schedule(self, optimizer):
        t = self.cfg.train
        warmup = t.warmup_steps or math.ceil(t.warmup_ratio * t.max_steps)
        total = max(1, t.max_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            if t.lr_scheduler_type == "linear":
                return max(0.0, 1.0 - progress)
            if t.lr_scheduler_type == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ------------------------------------------------------------------------------------------------------------
    # admission
    # ------------------------------------------------------------------------------------------------------------
    @property
    def old_from_step(self) -> bool:
        """log pi_old is log pi_theta at the admission version v_a (§1.4). When each generation batch is consumed
        within the optimizer step it is admitted in (GA % (S*mu) = 0), that step's weights are v_a's, so
        log pi_old = sg[log pi_theta] of the micro-step's own forward pass: no separate pass at admission. With
        max_staleness 0 and the correction off this is §1.4's shortcut; with the correction on, rho = pi_old / pi_beh
        is computed in the micro-step from the same values; with max_staleness > 0 it keeps the old-log-prob pass
        off the learner's critical path."""
        s = self.sched
        return self.alg.old_logprob_source == "recompute" and s.GA % (s.S * s.mu) == 0

    @torch.no_grad()
    def admit(self, shard: Batch) -> dict:
        """Take this rank's shard of a generation batch (B*S rows, ordered as S slices of B)."""
        t0 = time.time()
        shard = shard.replace(**{k: v.clone() for k, v in shard.tensors().items()})  # own, writable copies
        stats = {}
        if self.alg.old_logprob_source == "behaviour":
            shard.old_logprobs = shard.behaviour_logprobs
        elif not self.old_from_step:  # recompute with the weights of the admission version
            shard.old_logprobs = self._logprobs_no_grad(shard)
            if self.alg.vllm_importance_sampling_correction:
                shard.is_weights, stats = self._rollout_correction(shard.old_logprobs, shard)
        slices = shard.split(self.sched.S)
        for j in range(self.sched.S * self.sched.mu):
            self.queue.append(slices[j % self.sched.S])
        stats["timing/admit_s"] = ("mean", time.time() - t0, 1.0)
        return stats

    def _rollout_correction(self, old_logprobs: torch.Tensor, b: Batch) -> tuple[torch.Tensor, dict]:
        """rho = pi_old / pi_beh, truncated or masked (§5.3)."""
        a, d = self.alg, old_logprobs.device
        return rollout_is_weights(old_logprobs, b.behaviour_logprobs.to(d), b.completion_mask.to(d),
                                  a.vllm_importance_sampling_mode, a.vllm_importance_sampling_clip_min,
                                  a.vllm_importance_sampling_clip_max)

    def _logprobs_no_grad(self, b: Batch, chunk: int = 64) -> torch.Tensor:
        self.engine.eval()
        out = []
        for i in range(0, len(b), chunk):
            mb = b.select(range(i, min(len(b), i + chunk)))
            lp, _ = completion_logprobs(self.engine, *self._inputs(mb), temperature=self._temperature)
            out.append(lp.float().cpu())
        self.engine.train()
        return torch.cat(out)

    @property
    def _temperature(self) -> float:
        return self.cfg.rollout.temperature or 1.0

    def _inputs(self, b: Batch):
        d = self.device
        return b.prompt_ids.to(d), b.prompt_mask.to(d), b.completion_ids.to(d), b.completion_mask.to(d)

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
        coef = self.entropy.coef_for_step()
        stats: dict = {}
        ent_sum = torch.zeros(2, dtype=torch.float64)
        for _ in range(GA):
            mb = self.queue.popleft()
            loss, mb_stats, ent = self._micro_step(mb, coef)
            self.engine.backward(loss, scale_wrt_gas=False)  # L_mb already carries the 1/GA of §6.1
            self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            ent_sum += ent
            merge_stats(stats, mb_stats)
        if self.alg.use_adaptive_entropy:  # global token mean of H over M^eff, all micro-batches and ranks
            import torch.distributed as dist
            if dist.is_initialized():
                dist.all_reduce(ent_sum)
            self.entropy.update(float(ent_sum[0] / ent_sum[1].clamp(min=1)))
        self.version += 1
        grad_norm = self.engine.get_global_grad_norm()
        stats.update({
            "grad_norm": ("mean", float(grad_norm) if grad_norm is not None else float("nan"), 1.0),
            "learning_rate": ("mean", self.engine.get_lr()[0], 1.0),
            "entropy_coef": ("mean", coef, 1.0),
            "timing/train_s": ("max", time.time() - t0, 1.0),
        })
        return stats

    def _micro_step(self, mb: Batch, entropy_coef: float):
        alg, s = self.alg, self.sched
        need_entropy = True  # logged every step; also the 80/20 mask and the entropy bonus
        logp, entropy = completion_logprobs(self.engine, *self._inputs(mb), temperature=self._temperature,
                                            with_entropy=need_entropy)
        d = self.device
        mask = mb.completion_mask.to(d)
        ent_mask = None
        if alg.top_entropy_quantile < 1.0:
            tau = entropy_threshold(all_gather_varlen(entropy.detach()[mask > 0]), alg.top_entropy_quantile)
            ent_mask = (entropy.detach() >= tau).float() * mask
        is_weights, is_stats = _opt(mb.is_weights, d), {}
        if self.old_from_step and alg.vllm_importance_sampling_correction:  # pi_old = sg[pi_theta] of this step
            is_weights, is_stats = self._rollout_correction(logp.detach().float(), mb)
        x = PolicyBatch(
            logprobs_BT=logp, mask_BT=mask, advantages=mb.advantages.to(d).float(),
            old_logprobs_BT=_opt(mb.old_logprobs, d), behaviour_logprobs_BT=_opt(mb.behaviour_logprobs, d),
            ref_logprobs_BT=_opt(mb.ref_logprobs, d), entropy_BT=entropy, entropy_mask_BT=ent_mask,
            is_weights=is_weights)
        scale = LossScale(GA=s.GA, S=s.S, P=s.P, max_completion_length=self.cfg.rollout.max_completion_length,
                          num_items_in_batch=float(mb.info["num_items_in_batch"]), entropy_coef=entropy_coef)
        loss, stats = policy_loss(alg, x, scale)
        stats.update(is_stats)
        m_eff = mask if ent_mask is None else ent_mask
        staleness = (self.version - mb.policy_version).float()
        rows = torch.ones_like(staleness)
        stats.update({
            "loss": ("mean", float(loss.detach()), 1.0 / s.GA),  # summed over GA micro-batches, averaged over ranks
            "entropy": ("mean", float((entropy.detach() * mask).sum()), float(mask.sum())),
            "staleness/mean": ("mean", float(staleness.sum()), float(rows.sum())),
            "staleness/min": ("min", float(staleness.min()), 1.0),
            "staleness/max": ("max", float(staleness.max()), 1.0),
            "staleness/hist": ("hist", staleness.long().tolist(), 1.0),
            "completions/tokens": ("sum", float(mask.sum()), 1.0),
            "consumed/gen_id": ("hist", [int(mb.info.get("gen_id", -1))], 1.0),
        })
        ent = torch.tensor([float((entropy.detach() * m_eff).sum()), float(m_eff.sum())], dtype=torch.float64)
        return loss, stats, ent

    # ------------------------------------------------------------------------------------------------------------
    # weights out
    # ------------------------------------------------------------------------------------------------------------
    def weight_plan(self, bucket_mb: float) -> Plan:
        return bucket_plan(self.engine.module, int(bucket_mb * 2**20))

    def publish_weights(self, bucket_mb: float) -> list | None:
        """Collective. Rank 0 puts each bucket in the object store once; returns [ObjectRef per bucket] (others None)."""
        import ray
        refs = []
        for bucket in gathered_buckets(self.engine.module, self.zero_stage, self.weight_plan(bucket_mb)):
            if self.rank == 0:
                refs.append(ray.put(to_arrays(bucket)))
        return refs if self.rank == 0 else None

    def init_sync_group(self, host: str, port: int, world_size: int, backend: str) -> bool:
        """Rank 0 joins the weight-sync group with the rollout actors (collective transport)."""
        from cluster.weight_sync import init_group
        self.sync_group = init_group(host, port, world_size, 0, backend)
        return True

    def broadcast_weights(self, bucket_mb: float) -> dict:
        """Collective over the learner ranks (gather) and, on rank 0, over the sync group (broadcast)."""
        from cluster.weight_sync import broadcast_bucket
        t0, nbytes = time.time(), 0
        plan = self.weight_plan(bucket_mb)
        for spec, bucket in zip(plan, gathered_buckets(self.engine.module, self.zero_stage, plan)):
            if self.rank == 0:
                broadcast_bucket(self.sync_group, spec, bucket, self.device)
                nbytes += sum(t.numel() * t.element_size() for t in bucket.values())
        return {"publish_s": time.time() - t0, "bytes": nbytes}

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

    def get_version(self) -> int:
        return self.version

    def shutdown(self) -> bool:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return True


def _opt(t, device):
    return None if t is None else t.to(device)


def all_gather_varlen(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank."""
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=t.dtype, device=t.device)
    padded[:t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def deepspeed_config(cfg: RunConfig) -> dict:
    t, a = cfg.train, cfg.algorithm
    ds = {
        "train_micro_batch_size_per_gpu": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "optimizer": {"type": "AdamW", "params": {
            "lr": t.learning_rate, "betas": [t.adam_beta1, t.adam_beta2], "eps": t.adam_epsilon,
            "weight_decay": t.weight_decay, "torch_adam": True}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(ds, t.deepspeed)


def _deep_merge(base: dict, extra: dict) -> dict:
    for k, v in (extra or {}).items():
        base[k] = _deep_merge(dict(base.get(k, {})), v) if isinstance(v, dict) else v
    return base

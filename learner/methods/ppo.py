"""PPO with a critic (1707.06347; docs/methods/ppo.md), TRL's PPOConfig knob names. The math is in
``learner/ppo_losses.py``.

    rollout     one completion per prompt (num_generations 1) at rollout.temperature, up to response_length tokens
    score       the reward pool (rule verifiers and/or reward models, weighted); the reference pool: log pi_ref;
                the critic pool: V_old of every completion position, once per generation batch
    admit       (learner rank) log pi_old; r_t = -kl_coef KL_t (+ score at the last token, - missing_eos_penalty
                without EOS); GAE; advantages whitened over the whole generation batch; the returns go to the critic
    learn       policy ranks: the clipped surrogate; critic ranks: vf_coef * the clipped value loss, on the same rows
                (num_ppo_epochs passes, num_mini_batches optimizer steps per pass)

The policy and the critic are two DeepSpeed engines with their own optimizers (TRL steps one optimizer over both):
each clips its own gradient norm.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from relay_rl.learner import ppo_losses as ppo
from relay_rl.learner.advantages import total_reward
from relay_rl.learner.collectives import all_reduce_sum
from relay_rl.learner.logprobs import token_logprobs

from .base import Batching, CriticSpec, Family, Needs, Objective, TeacherSpec


class PPOConfig(Batching):
    name: Literal["ppo"] = "ppo"
    num_generations: int = Field(1, ge=1)
    """Completions per prompt (PPO's baseline is the critic: one is the usual choice)."""
    num_ppo_epochs: Optional[int] = Field(None, ge=1)
    """Passes over each generation batch (TRL's name for num_iterations; default 4). Set one of the two."""
    num_mini_batches: Optional[int] = Field(None, ge=1)
    """Optimizer steps per pass (TRL). steps_per_generation = gradient_accumulation_steps * num_mini_batches."""
    response_length: Optional[int] = Field(None, ge=1)
    """TRL's name for rollout.max_completion_length (set one of the two; 53 in TRL)."""
    cliprange: float = Field(0.2, gt=0)
    """epsilon of the clipped policy surrogate."""
    cliprange_value: float = Field(0.2, gt=0)
    """epsilon_v of the clipped value loss."""
    clip_ratio_c: Optional[float] = Field(None, gt=1)
    """Dual clip (verl's ``clip_ratio_c``; 3 there): for tokens with A < 0 the loss is at most -A c. None: off
    (TRL, OpenRLHF's default)."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    """How the policy and value losses average a micro-batch's tokens: every token alike (TRL, verl's default), or
    every completion alike (each row's token mean, then the mean over rows; verl's ``seq-mean-token-mean``)."""
    vf_coef: float = Field(0.1, gt=0)
    """Weight of the value loss (scales the critic's loss; the critic has its own optimizer)."""
    kl_coef: float = Field(0.05, ge=0)
    """Per-token KL penalty against the reference in the reward. 0 loads no reference pool."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1 = log pi_old - log pi_ref; k3 = (e^x - 1) - x with x = log pi_ref - log pi_old."""
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_rewards: bool = False
    """Whiten the per-token rewards (keeping their mean) before GAE."""
    missing_eos_penalty: Optional[float] = None
    """Subtracted from the score of a completion that ends without EOS (hit response_length)."""
    stop_token: Optional[Literal["eos"]] = None
    """relay-rl's engines always end a completion at EOS, so None and "eos" behave the same."""
    stop_token_id: Optional[int] = None
    """Not supported (the engines stop at EOS; other stops: rollout.stop strings). Must stay None."""
    value_model: Optional[str] = None
    """The critic's initial weights (an HF folder or hub id; a scalar head is added when the checkpoint has none).
    None: the reward model of ``reward.reward_funcs`` when there is exactly one (TRL), else the policy."""

    @model_validator(mode="before")
    @classmethod
    def _ppo_names(cls, data):
        """TRL's names as aliases of the shared batch knobs; two spellings that disagree are an error."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        epochs, its = data.get("num_ppo_epochs"), data.get("num_iterations")
        if epochs is not None and its is not None and epochs != its:
            raise ValueError(f"num_ppo_epochs ({epochs}) and num_iterations ({its}) are one knob: set one")
        data["num_iterations"] = epochs or its or 4
        data["num_ppo_epochs"] = data["num_iterations"]
        mini = data.get("num_mini_batches")
        if mini is not None:
            S, GA = data.get("steps_per_generation"), data.get("gradient_accumulation_steps", 1)
            if S is not None and S != GA * mini:
                raise ValueError(
                    f"steps_per_generation ({S}) must be gradient_accumulation_steps * num_mini_batches "
                    f"({GA} * {mini} = {GA * mini}): set one of steps_per_generation and num_mini_batches"
                )
            if data.get("generation_batch_size") is not None:
                raise ValueError("set num_mini_batches or generation_batch_size, not both")
            data["steps_per_generation"] = GA * mini
        return data

    @model_validator(mode="after")
    def _rules(self):
        if self.stop_token_id is not None:
            raise ValueError(
                "stop_token_id is not supported: relay-rl's engines end a completion at EOS (stop_token "
                "'eos'); for other stops set rollout.stop (strings)"
            )
        return self


def cross_section_aliases(data: dict) -> dict:
    """``algorithm.response_length`` is rollout.max_completion_length (TRL's name); two values that differ are an
    error."""
    alg, rollout = data.get("algorithm") or {}, data.get("rollout") or {}
    n = alg.get("response_length")
    if n is None:
        return data
    if rollout.get("max_completion_length") not in (None, n):
        raise ValueError(
            f"algorithm.response_length ({n}) and rollout.max_completion_length "
            f"({rollout['max_completion_length']}) are one knob: set one"
        )
    return {**data, "rollout": {**rollout, "max_completion_length": n}}


def value_model_path(cfg) -> str:
    """Where the critic starts: ``value_model``, else the only reward model of the reward section, else the policy."""
    if cfg.algorithm.value_model:
        return cfg.algorithm.value_model
    funcs = cfg.reward.reward_funcs if cfg.reward is not None else ()
    models = [f.kwargs.get("model") for f in funcs if not isinstance(f, str) and f.name == "reward_model"]
    return models[0] if len(models) == 1 else cfg.model.name_or_path


def assemble(batch, alg, reward_weights: list[float], seed: int):
    """The score of each completion (sum_k w_k R_k; an unscorable row scores 0, counted), then a row shuffle."""
    scores = total_reward(batch.rewards, reward_weights)
    unscorable = torch.isnan(scores)
    batch = batch.replace(scores=torch.nan_to_num(scores, nan=0.0).float())
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    return batch.select(perm), {"ppo/unscorable_scored_zero": float(unscorable.float().mean())}


class PPOObjective(Objective):
    """The policy ranks: advantages at admission (GAE on V_old from the critic), then the clipped surrogate."""

    @torch.no_grad()
    def admit(self, model, shard):
        a, mask = self.alg, shard.completion_mask
        old = model.logprobs_no_grad(shard, self.temperature) * mask  # log pi_old, the weights of the admission version
        scores = shard.scores.clone()
        if a.missing_eos_penalty is not None:
            scores -= a.missing_eos_penalty * shard.truncated.float()
        ref = shard.ref_logprobs * mask if shard.ref_logprobs is not None else old
        kl = ppo.kl_per_token(old, ref, a.kl_estimator) * mask
        rewards, non_score = ppo.token_rewards(
            scores, kl, mask, a.kl_coef, whiten=a.whiten_rewards, all_reduce=all_reduce_sum
        )
        advantages, returns = ppo.gae(rewards, shard.values, mask, a.gamma, a.lam)
        advantages = ppo.masked_whiten(advantages, mask, all_reduce=all_reduce_sum)  # the whole generation batch
        shard.old_logprobs, shard.advantages, shard.returns = old, advantages, returns
        n = float(len(shard))
        stats = {
            "objective/kl": ("mean", float(kl.sum()), n),
            "objective/entropy": ("mean", float(-old.sum()), n),
            "objective/non_score_reward": ("mean", float(non_score.sum()), n),
            "objective/rlhf_reward": ("mean", float(scores.sum() + non_score.sum()), n),
            "objective/scores": ("mean", float(scores.sum()), n),
            "val/num_eos_tokens": ("sum", float((~shard.truncated).sum()), 1.0),
            "val/returns_mean": ("mean", float(returns.sum()), float(mask.sum())),
            "val/values_old_mean": ("mean", float(shard.values.sum()), float(mask.sum())),  # 0 on padding
        }
        return shard, stats

    def loss(self, mb, logits_BTV):
        d = logits_BTV.device
        logp, entropy = token_logprobs(logits_BTV, mb.completion_ids.to(d), self.temperature, with_entropy=True)
        mask = mb.completion_mask.to(d)
        a = self.alg
        loss, stats = ppo.policy_loss(
            logp, mb.old_logprobs.to(d), mb.advantages.to(d), mask, a.cliprange, a.clip_ratio_c, a.loss_agg_mode
        )
        tokens = float(mask.sum())
        return loss / self.sched.GA, {
            "loss/policy_avg": ("mean", float(loss.detach()), 1.0),
            **{k: ("mean", float(v), 1.0) for k, v in stats.items()},
            "policy/entropy_avg": ("mean", float((entropy.detach() * mask).sum()), tokens),
        }


class ValueObjective(Objective):
    """The critic ranks: V_old was computed once per generation batch (``CriticRank.values``); the returns come
    from the policy rank of the same index."""

    def forward(self, model, mb) -> torch.Tensor:
        return model.values(mb)  # (B, Tc)

    def loss(self, mb, values_BT):
        d = values_BT.device
        mask = mb.completion_mask.to(d)
        a = self.alg
        loss, stats = ppo.value_loss(
            values_BT, mb.values.to(d), mb.returns.to(d), mask, a.cliprange_value, a.loss_agg_mode
        )
        return self.alg.vf_coef * loss / self.sched.GA, {
            "loss/value_avg": ("mean", float(loss.detach()), 1.0),
            "val/clipfrac_avg": ("mean", float(stats["val/clipfrac_avg"]), 1.0),
            "val/vpred": ("mean", float((values_BT.detach() * mask).sum()), float(mask.sum())),
        }


class PPO(Family):
    configs = (PPOConfig,)
    objective = PPOObjective

    def needs(self, cfg) -> Needs:
        """Rewards, the critic role, and the reference's log-probs (at the rollout temperature) unless kl_coef is 0."""
        ref = (
            (TeacherSpec("reference", "sampled", temperature=cfg.rollout.temperature or 1.0, model="policy"),)
            if cfg.algorithm.kl_coef > 0
            else ()
        )
        return Needs(rewards=True, teachers=ref, critic=CriticSpec(ValueObjective, value_model_path(cfg)))

    cross_section_aliases = staticmethod(cross_section_aliases)

    assemble = staticmethod(assemble)

    def check(self, cfg) -> None:
        c = cfg.cluster
        replicas = c.critic.replicas or c.learner.replicas
        if replicas != c.learner.replicas:
            raise ValueError(
                f"cluster.critic.replicas ({replicas}) must equal cluster.learner.replicas "
                f"({c.learner.replicas}): critic rank i trains on learner rank i's rows (or leave it unset)"
            )
        if cfg.algorithm.value_model is None and cfg.reward is not None:
            models = [f for f in cfg.reward.reward_funcs if not isinstance(f, str) and f.name == "reward_model"]
            if len(models) > 1:
                raise ValueError(
                    "the critic starts from the reward model, and reward.reward_funcs has "
                    f"{len(models)}: set algorithm.value_model (a path, or the policy's)"
                )

    def warnings(self, cfg) -> list[str]:
        a = cfg.algorithm
        if a.num_generations > 1:
            return [
                f"ppo with num_generations {a.num_generations}: the critic is the baseline; more completions per "
                "prompt only widen the batch"
            ]
        return []

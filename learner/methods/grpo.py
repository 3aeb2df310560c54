"""The GRPO family (docs/methods/grpo.md): group-relative advantages and one clipped/gated policy loss whose variants
(DAPO, Dr. GRPO, GSPO, CISPO, SAPO, VESPO, GMPO, TIS/MIS, DeepSeek-V3.2's KL and masks, ...) are chosen by
``loss_type`` and the knobs below.

    needs      the reward pool; the reference pool when beta > 0
    assemble   advantages on the whole generation batch, then a sample-level shuffle (docs/staleness.md)
    objective  log-probs at T -> entropy mask -> rollout correction -> ``learner.losses.policy_loss``
    driver     TR-DPO's reference refresh after a step (``sync_ref_model``); dynamic sampling (``filter_groups``)
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from relay_rl.learner.advantages import compute_advantages, group_nanstd
from relay_rl.learner.collectives import all_gather_varlen, all_reduce_sum
from relay_rl.learner.logprobs import fp32_lm_head, token_logprobs
from relay_rl.learner.losses import (
    AdaptiveEntropy,
    LossScale,
    PolicyBatch,
    entropy_threshold,
    policy_loss,
    rollout_is_weights,
)
from relay_rl.schema import Strict

from .base import Batching, Family, Needs, Objective, TeacherSpec

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "gmpo"]
ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


class FilterGroups(Strict):
    """DAPO's dynamic sampling (docs/staleness.md#dynamic-sampling), verl's ``algorithm.filter_groups`` names: a group
    whose rewards are all equal carries no gradient; it is dropped and generation goes on until the generation batch is
    full of groups that carry one."""

    enable: bool = False
    metric: str = "reward"
    """What must vary within a group: ``reward`` (the weighted total) or the name of one reward function."""
    max_num_gen_batches: int = Field(10, ge=0)
    """Rounds of sampling per generation batch, at most (0: no bound). relay-rl's default 10 (verl's is 0), so a run
    whose groups all tie cannot sample forever."""
    when_exhausted: Literal["fill", "error"] = "fill"
    """After max_num_gen_batches rounds with too few varied groups: ``fill`` the batch with the rounds' tied groups
    (their advantages are 0; counted as ``dynamic_sampling/filled_groups``), or stop with an ``error`` (verl)."""


class GRPOConfig(Batching):
    name: Literal["grpo"] = "grpo"
    """The method. The GRPO family is one loss with variants chosen by ``loss_type`` and the knobs below."""

    num_generations: int = Field(8, ge=2)
    """G: completions per prompt (a group; >= 2, so that a group has a baseline)."""
    old_logprob_source: Literal["recompute", "behaviour"] = "recompute"
    """Anchor of the ratio: log-probs recomputed by the learner at admission, or the engine's behaviour log-probs."""

    # -- loss (docs/methods/grpo.md) --
    loss_type: LossType = "dapo"
    """Per-token surrogate and its aggregation."""
    importance_sampling_level: Literal["token", "sequence", "sequence_token"] = "token"
    """token, sequence (GSPO) or sequence_token (GSPO-token)."""
    epsilon: Optional[float] = Field(None, gt=0)
    """Lower clip epsilon. None: 0.2 (0.4, in log space, for gmpo)."""
    epsilon_high: Optional[float] = Field(None, gt=0)
    """Upper clip epsilon; None means epsilon. For cispo an absolute cap on the ratio."""
    delta: Optional[float] = Field(None, gt=1)
    """Two-sided clipping cap of the unclipped branch (INTELLECT-2). Use delta > 1 + epsilon_high."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient against the reference model (k3 estimator). 0 loads no reference model."""
    use_bias_correction_kl: bool = True
    """Multiply the k3 KL by the importance ratio (DeepSeek-V3.2). relay-rl default True (as TRL 1.16)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group std (group), the batch std (batch, Lite PPO) or not at all (none, Dr. GRPO)."""
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    """normalize_then_sum is GDPO (needs >= 2 reward functions)."""
    mask_truncated_completions: bool = False
    """Drop completions that hit max_completion_length from the loss (their rewards still enter group statistics)."""
    off_policy_mask_threshold: Optional[float] = Field(None, ge=0)
    """DeepSeek-V3.2 off-policy sequence mask threshold (nats per token). None: off."""
    top_entropy_quantile: float = Field(1.0, ge=0, le=1)
    """Keep only the top fraction of tokens by entropy in the policy loss (80/20 rule). 1.0: off."""
    entropy_coef: float = Field(0.0, ge=0)
    """Static entropy bonus coefficient (initial value when adaptive)."""
    use_adaptive_entropy: bool = False
    """Skywork-OR1's adaptive entropy coefficient."""
    entropy_target: float = Field(0.2, ge=0)
    entropy_coef_delta: float = Field(0.005, ge=0)
    entropy_coef_min: float = Field(0.0, ge=0)
    entropy_coef_max: float = Field(1.0, ge=0)
    vllm_importance_sampling_correction: bool = True
    """Rollout-engine importance correction rho = pi_old / pi_beh (applied to every engine in relay-rl)."""
    vllm_importance_sampling_mode: ISMode = "sequence_mask"
    """TIS (``*_truncate``) or MIS (``*_mask``), per token or per sequence."""
    vllm_importance_sampling_clip_min: Optional[float] = Field(None, ge=0)
    vllm_importance_sampling_clip_max: Optional[float] = Field(3.0, gt=0)
    sapo_temperature_pos: float = Field(1.0, gt=0)
    sapo_temperature_neg: float = Field(1.05, gt=0)
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = Field(3.0, ge=1e-4)
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = Field(2.0, ge=1e-4)
    sync_ref_model: bool = False
    """TR-DPO reference refresh: theta_ref <- alpha*theta + (1-alpha)*theta_ref every ref_model_sync_steps."""
    ref_model_sync_steps: int = Field(512, ge=1)
    ref_model_mixup_alpha: float = Field(0.6, ge=0, le=1)
    cast_lm_head_to_fp32: bool = False
    """Compute the LM head in fp32 (ScaleRL)."""
    filter_groups: FilterGroups = Field(default_factory=FilterGroups)
    """DAPO's dynamic sampling: drop groups without reward variance and sample on until the batch is full."""

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data):
        if isinstance(data, dict):
            if "vllm_importance_sampling_cap" in data:
                raise ValueError(
                    "vllm_importance_sampling_cap was replaced by vllm_importance_sampling_clip_max "
                    "(and vllm_importance_sampling_clip_min): rename the field"
                )
            if isinstance(data.get("scale_rewards"), bool):  # TRL accepts True/False
                data = {**data, "scale_rewards": "group" if data["scale_rewards"] else "none"}
        return data

    @model_validator(mode="after")
    def _rules(self):
        c_min, c_max = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if c_min is not None and c_max is not None and c_min >= c_max:
            raise ValueError(f"vllm_importance_sampling_clip_min ({c_min}) must be < clip_max ({c_max})")
        if (
            self.vllm_importance_sampling_correction
            and self.vllm_importance_sampling_mode.endswith("truncate")
            and c_min is None
            and c_max is None
        ):
            raise ValueError(
                "a *_truncate importance-sampling mode needs vllm_importance_sampling_clip_min or "
                "vllm_importance_sampling_clip_max"
            )
        if (
            self.loss_type == "vespo"
            and self.vllm_importance_sampling_correction
            and not self.vllm_importance_sampling_mode.startswith("token")
        ):
            raise ValueError(
                "loss_type vespo folds the rollout correction into its weight per token: set "
                "vllm_importance_sampling_mode to token_truncate or token_mask "
                f"(got {self.vllm_importance_sampling_mode}), or turn the correction off"
            )
        if self.vllm_importance_sampling_correction and self.old_logprob_source == "behaviour":
            raise ValueError(
                "vllm_importance_sampling_correction needs old_logprob_source='recompute' (with "
                "'behaviour' the ratio already anchors on the engine's log-probs): set one of the two"
            )
        if self.staleness_policy == "use" and not self.vllm_importance_sampling_correction:
            raise ValueError(
                "staleness_policy 'use' trains on batches staler than max_staleness and needs the rollout "
                "importance correction to cover the lag: set vllm_importance_sampling_correction: true"
            )
        if self.sync_ref_model and self.beta == 0:
            raise ValueError("sync_ref_model needs a reference model: set beta > 0, or sync_ref_model: false")
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError("entropy_coef_min must be <= entropy_coef_max")
        return self

    # resolved values ------------------------------------------------------------------------------------------
    @property
    def epsilon_low(self) -> float:
        return self.epsilon if self.epsilon is not None else (0.4 if self.loss_type == "gmpo" else 0.2)

    @property
    def epsilon_up(self) -> float:
        return self.epsilon_high if self.epsilon_high is not None else self.epsilon_low


# ----------------------------------------------------------------------------------------------------------------
# assemble
# ----------------------------------------------------------------------------------------------------------------
def reference_spec(cfg) -> tuple[TeacherSpec, ...]:
    """The reference pool (the frozen initial policy's log-probs at the rollout temperature) when beta > 0."""
    if getattr(cfg.algorithm, "beta", 0) <= 0:
        return ()
    return (TeacherSpec("reference", "sampled", temperature=cfg.rollout.temperature or 1.0, model="policy"),)


def assemble(batch, alg, reward_weights: list[float], seed: int):
    """Advantages on the whole generation batch (advantages), the truncation mask, N for the dapo normaliser, then
    the sample-level shuffle that spreads groups over slices and ranks (docs/staleness.md)."""
    A, r = compute_advantages(
        batch.rewards, batch.group_id, torch.tensor(reward_weights), alg.scale_rewards, alg.multi_objective_aggregation
    )
    mask = batch.completion_mask.clone()  # stays the attention mask; the loss counts it without tool tokens
    if alg.mask_truncated_completions:  # the row leaves the loss and N; its reward stayed in the group statistics
        mask[batch.truncated] = 0.0
    batch = batch.replace(advantages=A.float(), completion_mask=mask)
    batch = batch.replace(info={**batch.info, "num_items_in_batch": float(batch.loss_mask.sum())})
    gstd = group_nanstd(r, batch.group_id)
    stats = {"frac_reward_zero_std": float((torch.nan_to_num(gstd, nan=0.0) < 1e-6).float().mean())}
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    return batch.select(perm), stats


# ----------------------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------------------
class GRPOObjective(Objective):
    """log pi_theta at T (with entropy) -> M^H -> rho -> ``policy_loss``; adaptive entropy across steps."""

    def __init__(self, cfg, sched):
        super().__init__(cfg, sched)
        a = self.alg
        self.entropy = AdaptiveEntropy(
            a.entropy_coef,
            a.entropy_target,
            a.entropy_coef_delta,
            a.entropy_coef_min,
            a.entropy_coef_max,
            adaptive=a.use_adaptive_entropy,
        )
        self.coef = 0.0
        self.ent_sum = torch.zeros(2, dtype=torch.float64)

    def state_dict(self) -> dict:
        return {"coef": self.entropy.coef, "last_entropy": self.entropy.last_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.entropy.coef, self.entropy.last_entropy = state["coef"], state["last_entropy"]

    # -- admission: the anchor pi_old (docs/staleness.md#anchors) --
    @property
    def old_from_step(self) -> bool:
        """log pi_old is log pi_theta at the admission version v_a. When each generation batch is consumed within the
        optimizer step it is admitted in (GA % (S*mu) = 0), that step's weights are v_a's, so log pi_old = sg[log
        pi_theta] of the micro-step's own forward pass: no separate pass at admission. With max_staleness 0 and the
        correction off this is the anchor's shortcut; with the correction on, rho = pi_old / pi_beh is computed in the
        micro-step from the same values; with max_staleness > 0 it keeps the old-log-prob pass off the learner's
        critical path."""
        s = self.sched
        return self.alg.old_logprob_source == "recompute" and s.GA % (s.S * s.mu) == 0

    @torch.no_grad()
    def admit(self, model, shard):
        stats = {}
        if self.alg.old_logprob_source == "behaviour":
            shard.old_logprobs = shard.behaviour_logprobs
        elif not self.old_from_step:  # recompute with the weights of the admission version
            shard.old_logprobs = model.logprobs_no_grad(shard, self.temperature)
            if self.alg.vllm_importance_sampling_correction:
                shard.is_weights, stats = self.rollout_correction(shard.old_logprobs, shard)
        return shard, stats

    def rollout_correction(self, old_logprobs: torch.Tensor, b) -> tuple[torch.Tensor, dict]:
        """rho = pi_old / pi_beh, truncated or masked (the rollout correction)."""
        a, d = self.alg, old_logprobs.device
        return rollout_is_weights(
            old_logprobs,
            b.behaviour_logprobs.to(d),
            b.loss_mask.to(d),
            a.vllm_importance_sampling_mode,
            a.vllm_importance_sampling_clip_min,
            a.vllm_importance_sampling_clip_max,
        )

    # -- one optimizer step --
    def begin_step(self, micro_batches) -> None:
        self.coef = self.entropy.coef_for_step()
        self.ent_sum = torch.zeros(2, dtype=torch.float64)

    def prepare_model(self, model) -> None:
        if self.alg.cast_lm_head_to_fp32:
            fp32_lm_head(model)

    def advantages(self, mb, logits_BTV, logp_BT) -> torch.Tensor:
        """Per-sequence A (B,) from assembly; MiniLLM adds a per-token part."""
        return mb.advantages.to(logp_BT.device).float()

    def loss(self, mb, logits_BTV):
        alg, s, d = self.alg, self.sched, logits_BTV.device
        logp, entropy = token_logprobs(logits_BTV, mb.completion_ids.to(d), self.temperature, with_entropy=True)
        mask = mb.loss_mask.to(d)  # tool messages' tokens (multi-turn) are context, not the policy's actions
        ent_mask = None
        if alg.top_entropy_quantile < 1.0:  # the entropy mask: quantile over the micro-batch on all ranks
            tau = entropy_threshold(all_gather_varlen(entropy.detach()[mask > 0]), alg.top_entropy_quantile)
            ent_mask = (entropy.detach() >= tau).float() * mask
        is_weights, is_stats = _opt(mb.is_weights, d), {}
        if self.old_from_step and alg.vllm_importance_sampling_correction:  # pi_old = sg[pi_theta] of this step
            is_weights, is_stats = self.rollout_correction(logp.detach().float(), mb)
        x = PolicyBatch(
            logprobs_BT=logp,
            mask_BT=mask,
            advantages=self.advantages(mb, logits_BTV, logp),
            old_logprobs_BT=_opt(mb.old_logprobs, d),
            behaviour_logprobs_BT=_opt(mb.behaviour_logprobs, d),
            ref_logprobs_BT=_opt(mb.ref_logprobs, d),
            entropy_BT=entropy,
            entropy_mask_BT=ent_mask,
            is_weights=is_weights,
        )
        scale = LossScale(
            GA=s.GA,
            S=s.S,
            P=s.P,
            max_completion_length=self.cfg.rollout.max_completion_length,
            num_items_in_batch=float(mb.info["num_items_in_batch"]),
            entropy_coef=self.coef,
        )
        loss, stats = policy_loss(alg, x, scale)
        stats.update(is_stats)
        stats["entropy"] = ("mean", float((entropy.detach() * mask).sum()), float(mask.sum()))
        m_eff = mask if ent_mask is None else ent_mask
        self.ent_sum += torch.tensor([float((entropy.detach() * m_eff).sum()), float(m_eff.sum())], dtype=torch.float64)
        return loss, stats

    def end_step(self) -> dict:
        if self.alg.use_adaptive_entropy:  # global token mean of H over M^eff, all micro-batches and ranks
            all_reduce_sum(self.ent_sum)
            self.entropy.update(float(self.ent_sum[0] / self.ent_sum[1].clamp(min=1)))
        return {"entropy_coef": ("mean", self.coef, 1.0)}


def _opt(t, device):
    return None if t is None else t.to(device)


def metric_column(cfg) -> Optional[int]:
    """The reward column dynamic sampling reads: None for the weighted total (``metric: reward``), else the index of
    the reward function named by ``filter_groups.metric``."""
    metric = cfg.algorithm.filter_groups.metric
    if metric == "reward":
        return None
    names = [_reward_name(f) for f in cfg.reward.reward_funcs]
    if metric not in names:
        raise ValueError(
            f"filter_groups.metric {metric!r} is not a reward function of this run: give 'reward' (the "
            f"weighted total) or one of {names}"
        )
    return names.index(metric)


def _reward_name(spec) -> str:
    name = spec if isinstance(spec, str) else getattr(spec, "name", None) or spec["name"]
    return name.rsplit(":", 1)[-1]  # an import path's function name, as the reward actor names its column


def check_gdpo(cfg) -> None:
    """GDPO (``normalize_then_sum``) normalises each reward function on its own: it needs two or more."""
    if cfg.algorithm.multi_objective_aggregation == "normalize_then_sum" and len(cfg.reward.reward_funcs) < 2:
        raise ValueError(
            "multi_objective_aggregation normalize_then_sum (GDPO) needs >= 2 reward_funcs: add one "
            "to reward.reward_funcs, or set algorithm.multi_objective_aggregation: sum_then_normalize"
        )


def refresh_reference(cfg, step: int, driver) -> None:
    """TR-DPO: every ref_model_sync_steps, theta_ref <- alpha * theta + (1 - alpha) * theta_ref."""
    a = cfg.algorithm
    if a.sync_ref_model and step % a.ref_model_sync_steps == 0:
        driver.sync_teacher("reference", a.ref_model_mixup_alpha)


def refreshed_reference(cfg) -> list[str]:
    """TR-DPO refreshes the reference: its weights belong in checkpoints."""
    return ["reference"] if cfg.algorithm.sync_ref_model else []


def staleness_warnings(cfg) -> list[str]:
    a = cfg.algorithm
    if a.max_staleness > 0 and a.old_logprob_source == "recompute" and not a.vllm_importance_sampling_correction:
        return [
            "max_staleness > 0 with old_logprob_source: recompute and the rollout correction off: the lag between "
            "the sampling weights and pi_old goes uncorrected (docs/staleness.md). Set "
            "algorithm.vllm_importance_sampling_correction: true, or old_logprob_source: behaviour"
        ]
    return []


class GRPO(Family):
    configs = (GRPOConfig,)
    objective = GRPOObjective
    multi_turn = True  # every loss below counts Batch.loss_mask

    def needs(self, cfg) -> Needs:
        """Rewards always; reference log-probs (logits / T, as the policy's) when beta > 0."""
        return Needs(rewards=True, teachers=reference_spec(cfg))

    assemble = staticmethod(assemble)

    def check(self, cfg) -> None:
        metric_column(cfg)
        check_gdpo(cfg)

    def group_filter(self, cfg) -> Optional[tuple[FilterGroups, Optional[int]]]:
        """Dynamic sampling when it is on: its settings and the reward column it reads."""
        fg = cfg.algorithm.filter_groups
        return (fg, metric_column(cfg)) if fg.enable else None

    def after_step(self, cfg, step: int, driver) -> None:
        refresh_reference(cfg, step, driver)

    def warnings(self, cfg) -> list[str]:
        return staleness_warnings(cfg)

    def moving_pools(self, cfg) -> list[str]:
        return refreshed_reference(cfg)

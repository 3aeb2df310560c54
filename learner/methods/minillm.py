"""MiniLLM (2306.08543; docs/methods/minillm.md): reverse-KL distillation as RL. The GRPO loss, with a per-token reward
R_t = log p_T(o_t) - log p_S(o_t) (both at ``kd_temperature``) folded into the advantage:

    A_{i,t} = A_i + sum_{j>=t} gamma^{j-t} R_j M_j / sum_{j>=t} gamma^{j-t} M_j      (no denominator without
                                                                                   length_normalization)
and, with ``single_step_decomposition``, the token mean over M of KL(p_S || p_T) over the full vocabulary (/GA).
R_t is detached (a reward signal; relay-rl default, see the spec). Every GRPO knob applies; G may be 1, which forces
``scale_rewards: none``; with no ``reward:`` section the reward is a constant 1.0, so A_i = 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from relay_rl.learner.divergences import kl
from relay_rl.learner.logprobs import scaled_log_softmax

from .base import Family, Needs, TeacherSpec
from .grpo import GRPOConfig, GRPOObjective, assemble, reference_spec, refresh_reference, refreshed_reference


class MiniLLMConfig(GRPOConfig):
    name: Literal["minillm"] = "minillm"
    num_generations: int = Field(8, ge=1)
    """G: completions per prompt; 1 is allowed (then scale_rewards is none)."""
    rkl_advantage: bool = True
    """Add the per-token reverse-KL reward-to-go to the advantage."""
    single_step_decomposition: bool = True
    """Add the full-vocabulary KL(p_S || p_T) token mean to the loss (needs the teacher's full distribution)."""
    kd_temperature: float = Field(1.0, gt=0)
    """Temperature of student and teacher log-probs in R_t and in the single-step KL."""
    gamma: float = Field(0.0, ge=0, le=1)
    """Discount of the reward-to-go (0: R_t alone)."""
    length_normalization: bool = True
    """Divide the reward-to-go by the discounted count of remaining tokens."""

    @model_validator(mode="before")
    @classmethod
    def _single_generation(cls, data):
        if isinstance(data, dict) and data.get("num_generations") == 1:
            data = {**data, "scale_rewards": "none"}  # a group of one has no std
        return data


def reward_to_go(R_BT: torch.Tensor, mask_BT: torch.Tensor, gamma: float, normalize: bool) -> torch.Tensor:
    """sum_{j>=t} gamma^{j-t} R_j M_j (/ sum_{j>=t} gamma^{j-t} M_j): (B, T)."""
    T = R_BT.shape[-1]
    mask_BT = mask_BT.to(R_BT.dtype)
    t = torch.arange(T, device=R_BT.device)
    lag_TT = (t.unsqueeze(0) - t.unsqueeze(1)).to(R_BT.dtype)  # [t, j] = j - t
    W_TT = torch.where(lag_TT >= 0, torch.pow(torch.as_tensor(gamma, dtype=R_BT.dtype), lag_TT.clamp(min=0)), 0.0)
    num_BT = (R_BT * mask_BT) @ W_TT.T
    if not normalize:
        return num_BT * mask_BT
    return num_BT / (mask_BT @ W_TT.T).clamp(min=1e-8) * mask_BT


class MiniLLMObjective(GRPOObjective):
    def advantages(self, mb, logits_BTV, logp_BT):
        A_B = super().advantages(mb, logits_BTV, logp_BT)
        if not self.alg.rkl_advantage:
            return A_B
        d = logp_BT.device
        student_BTV = scaled_log_softmax(logits_BTV.detach(), self.alg.kd_temperature)
        ids_BT1 = mb.completion_ids.to(d).unsqueeze(-1)
        R_BT = (teacher_token_logprobs(mb, d) - student_BTV.gather(-1, ids_BT1).squeeze(-1)).detach()
        mask_BT = mb.completion_mask.to(d)
        return A_B.unsqueeze(-1) + reward_to_go(R_BT, mask_BT, self.alg.gamma, self.alg.length_normalization)

    def loss(self, mb, logits_BTV):
        loss, stats = super().loss(mb, logits_BTV)
        if self.alg.single_step_decomposition:
            d = logits_BTV.device
            mask_BT = mb.completion_mask.to(d)
            student_BTV = scaled_log_softmax(logits_BTV, self.alg.kd_temperature)
            kl_BT = kl(student_BTV, mb.teacher_dist.to(d).to(student_BTV.dtype))
            single = (kl_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0) / self.sched.GA
            loss = loss + single
            stats["minillm/single_step_kl"] = ("mean", float((kl_BT.detach() * mask_BT).sum()), float(mask_BT.sum()))
        return loss, stats


def teacher_token_logprobs(mb, device) -> torch.Tensor:
    """log p_T(o_t) (B, T): served directly, or gathered from the full distribution."""
    if mb.teacher_logprobs is not None:
        return mb.teacher_logprobs.to(device).float()
    return mb.teacher_dist.to(device).float().gather(-1, mb.completion_ids.to(device).long().unsqueeze(-1)).squeeze(-1)


class MiniLLM(Family):
    """GRPO's assembly and reference refresh, the teacher pool beside; no dynamic sampling."""

    configs = (MiniLLMConfig,)
    objective = MiniLLMObjective

    def needs(self, cfg) -> Needs:
        a = cfg.algorithm
        teacher = TeacherSpec("teacher", "full" if a.single_step_decomposition else "sampled", 0, a.kd_temperature)
        return Needs(rewards=False, teachers=(teacher, *reference_spec(cfg)), teacher_model=True)

    assemble = staticmethod(assemble)

    def after_step(self, cfg, step: int, driver) -> None:
        refresh_reference(cfg, step, driver)

    def moving_pools(self, cfg) -> list[str]:
        return refreshed_reference(cfg)

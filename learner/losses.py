"""The GRPO-family policy loss (docs/methods/grpo.md), as pure functions of tensors.

    ratio r (ratio levels)  ->  per-token surrogate l (surrogates, registered by ``loss_type``)
                  ->  l * M_op * M_H * rho  + beta * D   (multipliers, in that order)
                  ->  aggregation of ``loss_type``  - entropy bonus

Shapes: B rows (completions) of one micro-batch, T completion positions. ``_BT`` tensors are per token, ``_B``
per row. Nothing here reduces across ranks, logs, or changes config: each function returns values and statistics;
statistics are ``(sum, count)`` pairs (or ``min``/``max`` values) that the caller combines over micro-batches and ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

Tensor = torch.Tensor


@dataclass
class PolicyBatch:
    """What the policy loss needs for one micro-batch."""

    logprobs_BT: Tensor  # log pi_theta(o_t), logits / T, with gradient
    mask_BT: Tensor  # M: 1 on completion tokens (0 on padding and masked-truncated rows)
    advantages: Tensor  # A: (B,) per sequence, or (B, T) per token
    # log pi_old; None: the shortcut sg[log pi_theta] (docs/staleness.md#anchors)
    old_logprobs_BT: Optional[Tensor] = None
    behaviour_logprobs_BT: Optional[Tensor] = None  # log pi_beh from the engine (NaN where absent)
    ref_logprobs_BT: Optional[Tensor] = None  # log pi_ref, needed when beta > 0
    entropy_BT: Optional[Tensor] = None  # H of the temperature-scaled policy, with gradient
    entropy_mask_BT: Optional[Tensor] = None  # M^H (the entropy mask), None when off
    is_weights: Optional[Tensor] = None  # rho (the rollout correction), (B, T) or (B, 1), no gradient; None when off


@dataclass
class LossScale:
    """The aggregation's normalisers for one micro-batch."""

    GA: int  # micro-batches per optimizer step
    S: int  # slices per generation batch
    P: int  # learner ranks
    max_completion_length: int  # L_max (dr_grpo)
    num_items_in_batch: float  # N: valid tokens of the whole generation batch, all ranks (dapo, cispo, vespo)
    train: bool = True  # eval drops the 1/GA factors
    entropy_coef: float = 0.0  # the entropy bonus's c for this step (0: no bonus)


def masked_sum(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    return masked_sum(x, mask, dim) / (mask.sum() if dim is None else mask.sum(dim)).clamp(min=1.0)


def mean_stat(x: Tensor, mask: Tensor) -> tuple:
    return ("mean", float(masked_sum(x.detach().float(), mask.float())), float(mask.sum()))


# ----------------------------------------------------------------------------------------------------------------
# importance ratio levels
# ----------------------------------------------------------------------------------------------------------------
def importance_ratio(logp_BT: Tensor, old_BT: Tensor, mask_BT: Tensor, level: str) -> Tensor:
    """r: (B, T) for ``token``, (B, 1) for ``sequence`` and (B, T) with value s_i for ``sequence_token``."""
    log_ratio_BT = logp_BT - old_BT  # lambda
    if level == "token":
        return torch.exp(log_ratio_BT)
    log_s_B1 = masked_mean(log_ratio_BT, mask_BT, dim=-1).unsqueeze(-1)  # log s_i = mean_t lambda (geometric mean)
    if level == "sequence":
        return torch.exp(log_s_B1)
    if level == "sequence_token":  # value s_i, gradient s_i * grad log pi_theta(o_t)
        return torch.exp(logp_BT - logp_BT.detach() + log_s_B1.detach())
    raise ValueError(f"unknown importance_sampling_level {level!r}: use token, sequence or sequence_token")


# ----------------------------------------------------------------------------------------------------------------
# per-token surrogates, registered under their loss_type
# ----------------------------------------------------------------------------------------------------------------
SURROGATES: dict[str, Callable] = {}


def surrogate(*names: str):
    def register(fn):
        for n in names:
            SURROGATES[n] = fn
        return fn

    return register


@surrogate("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
def clipped_surrogate(r, A, x: PolicyBatch, cfg, stats) -> Tensor:
    """l = -min(r~ A, clip(r, 1 - eps_l, 1 + eps_h) A), r~ = min(r, delta) when delta is set."""
    eps_l, eps_h = cfg.epsilon_low, cfg.epsilon_up
    r_clipped = torch.clamp(r, 1 - eps_l, 1 + eps_h)
    r_capped = torch.clamp(r, max=cfg.delta) if cfg.delta is not None else r
    loss = -torch.min(r_capped * A, r_clipped * A)
    _clip_stats(r, A, x.mask_BT, 1 - eps_l, 1 + eps_h, stats)
    return loss


@surrogate("cispo")
def cispo_surrogate(r, A, x: PolicyBatch, cfg, stats) -> Tensor:
    """l = -sg[min(r, eps_h)] A log pi_theta: eps_h is an absolute cap; no token's gradient is zeroed."""
    cap = cfg.epsilon_up
    seq = r.shape[-1] == 1 and A.shape[-1] == 1  # per-token A at the sequence level: per-token statistics
    mask = _stat_mask(x.mask_BT, seq)
    stats["cispo_clip_ratio"] = mean_stat(((r > cap) & (A > 0)).float().expand_as(mask), mask)
    return -torch.clamp(r, max=cap).detach() * A * x.logprobs_BT


@surrogate("sapo")
def sapo_surrogate(r, A, x: PolicyBatch, cfg, stats) -> Tensor:
    """l = -(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos if A > 0 else tau_neg: a smooth gate."""
    tau = torch.where(A > 0, A.new_tensor(cfg.sapo_temperature_pos), A.new_tensor(cfg.sapo_temperature_neg))
    return -(4.0 / tau) * torch.sigmoid(tau * (r - 1)) * A


@surrogate("vespo")
def vespo_surrogate(r, A, x: PolicyBatch, cfg, stats) -> Tensor:
    """l = -phi_i A log pi_theta, phi_i = w^k e^{Lambda (1 - w)} without gradient (w from token-level lambda sums)."""
    old = x.old_logprobs_BT if x.old_logprobs_BT is not None else x.logprobs_BT.detach()
    lam_BT = (x.logprobs_BT - old).detach().clamp(-20, 20)
    log_w_B = (x.mask_BT * lam_BT).sum(-1)
    if x.is_weights is not None:  # token-level rollout correction folded into w
        log_w_B = log_w_B + torch.log(x.is_weights.detach()).clamp(math.log(1e-8), 20).mul(x.mask_BT).sum(-1)
    log_w_B = log_w_B.clamp(math.log(1e-8), 20)
    A_B = A[:, 0] if A.dim() == 2 and A.shape[1] == 1 else (A if A.dim() == 1 else A[:, 0])
    pos = A_B >= 0
    k = torch.where(pos, A_B.new_tensor(cfg.vespo_k_pos), A_B.new_tensor(cfg.vespo_k_neg))
    Lam = torch.where(pos, A_B.new_tensor(cfg.vespo_lambda_pos), A_B.new_tensor(cfg.vespo_lambda_neg))
    phi_B = torch.exp(Lam + k * log_w_B - Lam * torch.exp(log_w_B))
    phi_B = torch.where(torch.isfinite(phi_B), phi_B, torch.zeros_like(phi_B)).detach()
    stats["vespo/phi_seq_mean"] = ("mean", float(phi_B.sum()), float(phi_B.numel()))
    return -phi_B.unsqueeze(-1) * A * x.logprobs_BT


def _stat_mask(mask_BT: Tensor, sequence_level: bool) -> Tensor:
    return (mask_BT.sum(-1, keepdim=True) > 0).float() if sequence_level else mask_BT


def _clip_stats(r, A, mask_BT, lo, hi, stats):
    """Clip ratios: global masked means over tokens (over sequences at the sequence level)."""
    seq = r.shape[-1] == 1 and A.shape[-1] == 1  # per-token A at the sequence level: per-token statistics
    mask = _stat_mask(mask_BT, seq)
    low = ((r < lo) & (A < 0)).float().expand_as(mask)
    high = ((r > hi) & (A > 0)).float().expand_as(mask)
    stats["clip_ratio/low_mean"] = mean_stat(low, mask)
    stats["clip_ratio/high_mean"] = mean_stat(high, mask)
    stats["clip_ratio/region_mean"] = mean_stat(((low + high) > 0).float(), mask)
    rows = mask.sum(-1) > 0
    if rows.any():
        stats["clip_ratio/low_min"] = ("min", float(masked_mean(low, mask, -1)[rows].min()), 1.0)
        stats["clip_ratio/high_max"] = ("max", float(masked_mean(high, mask, -1)[rows].max()), 1.0)


# ----------------------------------------------------------------------------------------------------------------
# multipliers
# ----------------------------------------------------------------------------------------------------------------
def off_policy_mask(logp_BT, sampling_logp_BT, A, mask_BT, threshold: float) -> Tensor:
    """M_op (B, 1): 0 only where A < 0 and the mean per-token KL estimate k = mean_t (log pi_s - sg[log pi_theta])
    exceeds the threshold (DeepSeek-V3.2)."""
    diff = torch.nan_to_num(sampling_logp_BT - logp_BT.detach(), nan=0.0)
    k_B1 = masked_mean(diff, mask_BT, dim=-1).unsqueeze(-1)
    A_B1 = A if A.dim() == 2 and A.shape[1] == 1 else (A.unsqueeze(-1) if A.dim() == 1 else A[:, :1])
    return ((A_B1 >= 0) | (k_B1 <= threshold)).to(logp_BT.dtype)


def entropy_threshold(valid_entropies: Tensor, top_quantile: float) -> Tensor:
    """tau_H: the (1 - rho_H) quantile of the valid-token entropies of the micro-batch on all ranks (linear)."""
    h = valid_entropies.detach()
    h = h.to(torch.promote_types(h.dtype, torch.float32))  # at least fp32; float64 stays exact (H >= tau)
    return torch.quantile(h, 1.0 - top_quantile, interpolation="linear")


def rollout_is_weights(
    old_BT: Tensor,
    behaviour_BT: Tensor,
    mask_BT: Tensor,
    mode: str,
    clip_min: Optional[float],
    clip_max: Optional[float],
) -> tuple[Tensor, dict]:
    """rho = pi_old / pi_beh per token (B, T) or per sequence (B, 1), truncated (TIS) or masked (MIS). No gradient."""
    delta_BT = torch.nan_to_num(mask_BT * (old_BT - behaviour_BT), nan=0.0).detach()
    level, how = mode.split("_")
    rho = torch.exp(delta_BT) if level == "token" else torch.exp(delta_BT.sum(-1, keepdim=True))
    if how == "truncate":
        rho = rho.clamp(min=clip_min, max=clip_max)
    else:
        keep = torch.ones_like(rho, dtype=torch.bool)
        if clip_min is not None:
            keep &= rho >= clip_min
        if clip_max is not None:
            keep &= rho <= clip_max
        rho = rho * keep
    mask = _stat_mask(mask_BT, level == "sequence")
    valid = mask.bool().expand_as(rho)
    diff = delta_BT.abs() * mask_BT
    stats = {
        "sampling/sampling_logp_difference/mean": mean_stat(delta_BT.abs(), mask_BT),
        "sampling/sampling_logp_difference/max": ("max", float(diff.max()) if diff.numel() else 0.0, 1.0),
        "sampling/importance_sampling_ratio/mean": mean_stat(rho.expand_as(mask), mask),
    }
    if valid.any():
        stats["sampling/importance_sampling_ratio/min"] = ("min", float(rho[valid].min()), 1.0)
        stats["sampling/importance_sampling_ratio/max"] = ("max", float(rho[valid].max()), 1.0)
    return rho, stats


def k3_kl(logp_BT: Tensor, ref_BT: Tensor) -> Tensor:
    """D = e^{log pi_ref - log pi_theta} - (log pi_ref - log pi_theta) - 1 >= 0."""
    d = ref_BT - logp_BT
    return torch.exp(d) - d - 1


# ----------------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------------
def aggregate(loss_BT: Tensor, mask_BT: Tensor, loss_type: str, s: LossScale) -> Tensor:
    ga = s.GA if s.train else 1
    B = loss_BT.shape[0]
    lm = loss_BT * mask_BT
    if loss_type in ("grpo", "sapo"):  # mean per sequence, then over the micro-batch
        return (lm.sum(-1) / mask_BT.sum(-1).clamp(min=1.0)).sum() / B / ga
    if loss_type == "bnpo":  # token mean of the micro-batch
        return lm.sum() / mask_BT.sum().clamp(min=1.0) / ga
    if loss_type == "dr_grpo":  # constant normaliser B * L_max
        return lm.sum() / (B * s.max_completion_length) / ga
    if loss_type in ("dapo", "cispo", "vespo"):  # global token mean of the generation batch, pro-rated per step
        norm = max(s.num_items_in_batch, 1.0) / s.P
        if s.train:
            norm = norm * s.GA / s.S
        return lm.sum() / norm
    if loss_type == "luspo":  # per-sequence token sums, mean over the micro-batch
        return lm.sum(-1).sum() / B / ga
    raise ValueError(f"no aggregation for loss_type {loss_type!r}")


# ----------------------------------------------------------------------------------------------------------------
# the policy loss
# ----------------------------------------------------------------------------------------------------------------
def policy_loss(cfg, x: PolicyBatch, s: LossScale) -> tuple[Tensor, dict]:
    """The GRPO-family loss of one micro-batch (to be summed over GA micro-batches and averaged over ranks)."""
    stats: dict = {}
    mask = x.mask_BT
    A = x.advantages.unsqueeze(-1) if x.advantages.dim() == 1 else x.advantages  # (B, 1) or (B, T)
    old = x.old_logprobs_BT if x.old_logprobs_BT is not None else x.logprobs_BT.detach()
    # off the mask (padding, a tool message's tokens: no behaviour log-prob, NaN) the ratio is 1, never NaN * 0
    old = torch.where(mask > 0, old, x.logprobs_BT.detach())
    if cfg.loss_type == "gmpo":
        loss = gmpo_loss(cfg, x, A, old, s, stats)
    else:
        if cfg.loss_type not in SURROGATES:
            raise ValueError(f"unknown loss_type {cfg.loss_type!r}; valid: {', '.join(sorted([*SURROGATES, 'gmpo']))}")
        r = importance_ratio(x.logprobs_BT, old, mask, cfg.importance_sampling_level)
        per_token = SURROGATES[cfg.loss_type](r, A, x, cfg, stats)
        if cfg.off_policy_mask_threshold is not None:  # off-policy mask
            sampling = x.behaviour_logprobs_BT if x.behaviour_logprobs_BT is not None else old
            sampling = torch.where(torch.isnan(sampling), old, sampling)
            m_op = off_policy_mask(x.logprobs_BT, sampling, A, mask, cfg.off_policy_mask_threshold)
            stats["off_policy_mask/kept"] = mean_stat(m_op.expand_as(mask), mask)
            per_token = per_token * m_op
        if x.entropy_mask_BT is not None:  # entropy mask
            per_token = per_token * x.entropy_mask_BT
        # rollout correction (vespo folds rho into its weight)
        if x.is_weights is not None and cfg.loss_type != "vespo":
            per_token = per_token * x.is_weights
        if cfg.beta != 0.0:  # KL penalty
            D = k3_kl(x.logprobs_BT, x.ref_logprobs_BT)
            if cfg.use_bias_correction_kl:
                D = D * r  # r before any delta cap, not detached
            stats["kl"] = mean_stat(D, mask)
            per_token = per_token + cfg.beta * D
        loss = aggregate(per_token, mask, cfg.loss_type, s)
        ratio_mask = _stat_mask(mask, r.shape[-1] == 1)
        stats["importance_ratio/mean"] = mean_stat(r.expand_as(ratio_mask), ratio_mask)
    stats["policy_loss"] = ("mean", float(loss.detach()), 1.0 / (s.GA if s.train else 1))  # step sum, rank mean
    if s.entropy_coef and x.entropy_BT is not None:  # entropy bonus
        m_eff = mask if x.entropy_mask_BT is None else mask * x.entropy_mask_BT
        bonus = masked_sum(x.entropy_BT, m_eff) / m_eff.sum().clamp(min=1.0) / (s.GA if s.train else 1)
        loss = loss - s.entropy_coef * bonus
    return loss, stats


def gmpo_loss(cfg, x: PolicyBatch, A, old, s: LossScale, stats) -> Tensor:
    """GMPO: L_i = -A_i exp(mean_t over M^e of clipped lambda) + beta * mean_t D (k3, no bias correction).

    Per token c = clamp(lambda, -eps_l, eps_h) (log space); lambda_bar = min(lambda, c) if A > 0 else max(lambda, c).
    """
    mask = x.mask_BT
    m_e = mask if x.entropy_mask_BT is None else mask * x.entropy_mask_BT
    lam = x.logprobs_BT - old
    c = torch.clamp(lam, -cfg.epsilon_low, cfg.epsilon_up)
    A_B1 = A[:, :1]
    lam_bar = torch.where(A_B1 > 0, torch.min(lam, c), torch.max(lam, c))
    seq_ratio_B = torch.exp(masked_sum(lam_bar, m_e, -1) / m_e.sum(-1).clamp(min=1.0))
    L_B = -A_B1[:, 0] * seq_ratio_B
    if cfg.beta != 0.0:
        D = k3_kl(x.logprobs_BT, x.ref_logprobs_BT)
        stats["kl"] = mean_stat(D, mask)
        L_B = L_B + cfg.beta * masked_sum(D, mask, -1) / mask.sum(-1).clamp(min=1.0)
    rows = (mask.sum(-1) > 0).float()
    clipped = (lam != lam_bar).float()
    stats["clip_ratio/region_mean"] = mean_stat(clipped, m_e)
    stats["importance_ratio/mean"] = ("mean", float((seq_ratio_B.detach() * rows).sum()), float(rows.sum()))
    return L_B.sum() / L_B.shape[0] / (s.GA if s.train else 1)


# ----------------------------------------------------------------------------------------------------------------
# adaptive entropy coefficient (Skywork-OR1)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class AdaptiveEntropy:
    """c and the last step's entropy H-hat. A step uses the c left by the previous step, and only if the previous
    H-hat <= target (H-hat starts at +inf: no bonus at step 1). After each step: c +/- delta, clamped to [min, max]."""

    coef: float
    target: float
    delta: float
    coef_min: float
    coef_max: float
    adaptive: bool = True
    last_entropy: float = math.inf

    def coef_for_step(self) -> float:
        if not self.adaptive:
            return self.coef
        return self.coef if self.last_entropy <= self.target else 0.0

    def update(self, step_entropy: float) -> None:
        """``step_entropy``: the global token-weighted mean of H over M^eff across the step's micro-batches and
        ranks."""
        if not self.adaptive:
            return
        if step_entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = step_entropy

"""PPO with a critic (docs/methods/ppo.md), as pure functions of tensors: the per-token reward with its KL penalty, GAE,
whitening, and the clipped policy and value losses.

Shapes: B rows (completions), T completion positions, right-padded: ``mask_BT`` is 1 on completion tokens, a prefix of
each row (0 on padding). Nothing here reduces across micro-batches or ranks; the family's objective does.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def masked_mean(x: Tensor, mask: Tensor, all_reduce=None) -> Tensor:
    """sum(x * mask) / sum(mask); with ``all_reduce`` (a cross-rank sum) over the rows of every rank."""
    if all_reduce is None:
        return (x * mask).sum() / mask.sum()
    sums = all_reduce(torch.stack([(x * mask).sum(), mask.sum()]).double())
    return (sums[0] / sums[1]).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, all_reduce=None) -> Tensor:
    """Masked variance with Bessel's factor n / (n - 1) (two passes: the mean, then the squared deviations)."""
    mean = masked_mean(x, mask, all_reduce)
    if all_reduce is None:
        n, ss = mask.sum(), (((x - mean) ** 2) * mask).sum()
    else:
        ss, n = all_reduce(torch.stack([(((x - mean) ** 2) * mask).sum(), mask.sum()]).double())
    return (ss / n * n / (n - 1)).to(x.dtype)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, all_reduce=None) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries; ``shift_mean=False`` adds the mean back. 0 on padding.
    ``all_reduce``: the statistics of every rank's rows (the whole generation batch), not this shard's alone."""
    mean, var = masked_mean(x, mask, all_reduce), masked_var(x, mask, all_reduce)
    white = (x - mean) * torch.rsqrt(var + 1e-8)
    return (white if shift_mean else white + mean) * mask


def kl_per_token(old_logprobs_BT: Tensor, ref_logprobs_BT: Tensor, estimator: str = "k1") -> Tensor:
    """KL_t between the sampling policy and the reference: k1 = log pi_old - log pi_ref; k3 = (e^x - 1) - x with
    x = log pi_ref - log pi_old."""
    if estimator == "k1":
        return old_logprobs_BT - ref_logprobs_BT
    if estimator == "k3":
        x = ref_logprobs_BT - old_logprobs_BT
        return torch.expm1(x) - x
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def token_rewards(
    scores_B: Tensor, kl_BT: Tensor, mask_BT: Tensor, kl_coef: float, whiten: bool = False, all_reduce=None
) -> tuple[Tensor, Tensor]:
    """r_t = -kl_coef * KL_t on completion tokens, plus the score at each row's last completion token; whitened
    keeping its mean if ``whiten``. Returns (r_BT, non_score_BT)."""
    non_score = -kl_coef * kl_BT * mask_BT
    last = (mask_BT.sum(1).long() - 1).clamp(min=0)  # (B,)
    rewards = non_score.clone()
    rewards[torch.arange(len(scores_B)), last] += scores_B * (mask_BT.sum(1) > 0)
    if whiten:
        rewards = masked_whiten(rewards, mask_BT, shift_mean=False, all_reduce=all_reduce)
    return rewards, non_score


def gae(rewards_BT: Tensor, values_BT: Tensor, mask_BT: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation with V = 0 past the last completion token:
    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  R_t = A_t + V_t.
    Returns (advantages_BT, returns_BT), 0 on padding; the caller whitens the advantages."""
    r, v = rewards_BT * mask_BT, values_BT * mask_BT
    T = r.shape[1]
    advantages = torch.zeros_like(r)
    next_adv = torch.zeros_like(r[:, 0])
    next_value = torch.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask_BT[:, t]
        advantages[:, t] = next_adv
        next_value = v[:, t]
    return advantages, (advantages + v) * mask_BT


def aggregate(loss_BT: Tensor, mask_BT: Tensor, mode: str = "token-mean") -> Tensor:
    """A per-token loss to one number: "token-mean" = sum(L mask) / sum(mask) (every token weighs the same);
    "seq-mean-token-mean" = the mean over rows of each row's token mean (every completion weighs the same)."""
    if mode == "token-mean":
        return masked_mean(loss_BT, mask_BT)
    if mode == "seq-mean-token-mean":
        return ((loss_BT * mask_BT).sum(1) / mask_BT.sum(1).clamp(min=1)).mean()
    raise ValueError(f"loss_agg_mode must be 'token-mean' or 'seq-mean-token-mean', got {mode!r}")


def policy_loss(
    logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    advantages_BT: Tensor,
    mask_BT: Tensor,
    cliprange: float,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean",
) -> tuple[Tensor, dict]:
    """L_pg = agg(max(-A rho, -A clip(rho, 1 - eps, 1 + eps))), rho = exp(log pi_theta - log pi_old). With the dual
    clip (``clip_ratio_c`` = c > 1), tokens with A < 0 take min(that, -A c): a very large ratio on a bad token no
    longer grows the loss without bound."""
    ratio = torch.exp(logprobs_BT - old_logprobs_BT)
    unclipped = -advantages_BT * ratio
    clipped = -advantages_BT * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    stats = {}
    if clip_ratio_c is not None:
        lower = -advantages_BT * clip_ratio_c
        with torch.no_grad():
            stats["policy/clipfrac_lower"] = masked_mean(
                ((per_token > lower) & (advantages_BT < 0)).to(ratio.dtype), mask_BT
            )
        per_token = torch.where(advantages_BT < 0, torch.minimum(per_token, lower), per_token)
    loss = aggregate(per_token, mask_BT, loss_agg_mode)
    with torch.no_grad():
        stats["policy/clipfrac_avg"] = masked_mean((clipped > unclipped).to(ratio.dtype), mask_BT)
        stats["policy/approxkl_avg"] = 0.5 * masked_mean((logprobs_BT - old_logprobs_BT) ** 2, mask_BT)
    return loss, stats


def value_loss(
    values_BT: Tensor,
    old_values_BT: Tensor,
    returns_BT: Tensor,
    mask_BT: Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
) -> tuple[Tensor, dict]:
    """L_vf = 1/2 agg(max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2))."""
    clipped_values = old_values_BT + torch.clamp(values_BT - old_values_BT, -cliprange_value, cliprange_value)
    unclipped = (values_BT - returns_BT) ** 2
    clipped = (clipped_values - returns_BT) ** 2
    loss = 0.5 * aggregate(torch.maximum(unclipped, clipped), mask_BT, loss_agg_mode)
    with torch.no_grad():
        stats = {"val/clipfrac_avg": masked_mean((clipped > unclipped).to(values_BT.dtype), mask_BT)}
    return loss, stats

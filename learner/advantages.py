"""Group-relative advantages: one scalar per completion, from the reward matrix R (N, K)
(docs/methods/grpo.md#advantages).

Computed once per generation batch, on the whole batch, before it is shuffled and cut into rank shards.
"""

from __future__ import annotations

import torch

EPS_A = 1e-4


def group_nanmean(x_N: torch.Tensor, gid_N: torch.Tensor) -> torch.Tensor:
    """Per-row mean of the row's group, ignoring NaN (NaN when the group has no value)."""
    _, inv = torch.unique(gid_N, return_inverse=True)
    valid = ~torch.isnan(x_N)
    sums = torch.zeros(int(inv.max()) + 1, dtype=x_N.dtype).index_add_(0, inv, torch.where(valid, x_N, 0))
    cnt = torch.zeros_like(sums).index_add_(0, inv, valid.to(x_N.dtype))
    return (sums / cnt)[inv]  # 0/0 -> NaN


def group_nanstd(x_N: torch.Tensor, gid_N: torch.Tensor) -> torch.Tensor:
    """Per-row Bessel-corrected std of the row's group, ignoring NaN (NaN when the group has <= 1 value)."""
    _, inv = torch.unique(gid_N, return_inverse=True)
    valid = ~torch.isnan(x_N)
    dev2 = torch.where(valid, (x_N - group_nanmean(x_N, gid_N)) ** 2, 0)
    ss = torch.zeros(int(inv.max()) + 1, dtype=x_N.dtype).index_add_(0, inv, dev2)
    cnt = torch.zeros_like(ss).index_add_(0, inv, valid.to(x_N.dtype))
    std = torch.where(cnt > 1, (ss / (cnt - 1).clamp(min=1)).sqrt(), torch.nan)
    return std[inv]


def nanstd(x: torch.Tensor) -> torch.Tensor:
    v = x[~torch.isnan(x)]
    return v.std(unbiased=True) if v.numel() > 1 else torch.tensor(float("nan"), dtype=x.dtype)


def total_reward(R_NK: torch.Tensor, weights) -> torch.Tensor:
    """r_i = sum_k w_k R_ik over the scored entries (float64); NaN where a row is unscorable (docs/rewards.md)."""
    R = R_NK.double()
    return torch.nansum(torch.as_tensor(weights, dtype=R.dtype) * R, dim=1).masked_fill(
        torch.isnan(R).all(1), torch.nan
    )


def compute_advantages(
    rewards_NK: torch.Tensor,
    group_id_N: torch.Tensor,
    reward_weights_K: torch.Tensor,
    scale_rewards: str = "group",
    aggregation: str = "sum_then_normalize",
):
    """Returns (advantages (N,), total reward r (N,), NaN where unscorable)."""
    R = rewards_NK.to(torch.float64)
    w = reward_weights_K.to(torch.float64)
    unscorable = torch.isnan(R).all(dim=1)
    if aggregation == "sum_then_normalize":
        r = torch.nansum(w * R, dim=1).masked_fill(unscorable, torch.nan)  # r_i = sum_k w_k R_ik, NaN terms skipped
        A = r - group_nanmean(r, group_id_N)  # centre on the group mean
        if scale_rewards == "group":
            A = A / (group_nanstd(r, group_id_N) + EPS_A)
        elif scale_rewards == "batch":
            A = A / (nanstd(r) + EPS_A)
        elif scale_rewards != "none":
            raise ValueError(f"unknown scale_rewards {scale_rewards!r}")
    elif aggregation == "normalize_then_sum":  # GDPO: per-function group z-scores, summed, then batch-standardised
        z = torch.stack(
            [
                (R[:, k] - group_nanmean(R[:, k], group_id_N)) / (group_nanstd(R[:, k], group_id_N) + EPS_A)
                for k in range(R.shape[1])
            ],
            dim=1,
        )
        r = torch.nansum(w * z, dim=1).masked_fill(unscorable, torch.nan)
        A = (r - torch.nanmean(r)) / (nanstd(r) + EPS_A)
        r = torch.nansum(w * R, dim=1).masked_fill(unscorable, torch.nan)  # the reported reward stays sum_k w_k R_k
    else:
        raise ValueError(f"unknown multi_objective_aggregation {aggregation!r}")
    return torch.nan_to_num(A, nan=0.0), r

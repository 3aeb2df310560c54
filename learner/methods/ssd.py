"""SSD, simple self-distillation (2604.01193; docs/methods/ssd.md): the model fine-tuned on its own samples.

needs      the policy alone: no rewards (a reward section, if given, scores the samples for the metrics only),
           no teacher
rollout    completions at the training rollout.temperature / top_k / top_p, from the current weights (as TRL's
           trainer; the paper samples once from the initial model)
assemble   ``filter_empty``: a completion that is empty once stripped, or one line under 10 characters, is masked
           out (it trains nothing and counts in no mean); then a row shuffle
objective  the token-mean NLL of the kept samples, -sum_t M_t log p(o_t) / sum_t M_t per micro-batch (no
           temperature in the loss), /GA
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from relay_rl.learner.logprobs import token_logprobs

from .base import Batching, Family, Needs, Objective


class SSDConfig(Batching):
    name: Literal["ssd"] = "ssd"
    num_generations: int = Field(1, ge=1)
    """Completions per prompt (no group statistics are used)."""
    filter_empty: bool = True
    """Drop (mask out) completions that are empty after stripping, or a single line under 10 characters."""


def is_empty(text: str) -> bool:
    """SSD's filter: nothing but whitespace, or one line shorter than 10 characters (after stripping)."""
    s = text.strip()
    return not s or ("\n" not in s and len(s) < 10)


def assemble(batch, alg, reward_weights, seed: int):
    """Mask out empty samples (``filter_empty``), then shuffle the rows."""
    dropped = torch.tensor([alg.filter_empty and is_empty(t) for t in batch.completions], dtype=torch.bool)
    batch = batch.replace(completion_mask=batch.completion_mask * (~dropped).unsqueeze(1).to(batch.completion_mask))
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    return batch.select(perm), {"ssd/filtered_ratio": float(dropped.float().mean())}


def nll(logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """-sum M log p / sum M (0 for a micro-batch with no kept token)."""
    return -(logp_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0)


class SSDObjective(Objective):
    def loss(self, mb, logits_BTV):
        mask_BT = mb.completion_mask.to(logits_BTV.device)
        logp_BT, _ = token_logprobs(logits_BTV, mb.completion_ids.to(logits_BTV.device))  # temperature 1
        loss = nll(logp_BT, mask_BT)
        return loss / self.sched.GA, {
            "ssd/nll": ("mean", float(loss.detach()) * float(mask_BT.sum()), float(mask_BT.sum()))
        }


class SSD(Family):
    configs = (SSDConfig,)
    objective = SSDObjective

    def needs(self, cfg) -> Needs:
        return Needs(rewards=False)

    assemble = staticmethod(assemble)

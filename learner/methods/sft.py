"""SFT: supervised fine-tuning on dataset pairs, on the learner pool (TRL's SFTTrainer, prompt-completion data).

    needs      no rewards (a reward section, if given, scores the rows and ``eval/accuracy`` for the metrics only),
               no teacher
    sources    every micro-batch is the dataset's: the prompt column, and the completion column as the target (a
               string, EOS appended; or an assistant turn in chat messages, through the chat template)
    assemble   a row shuffle (seeded)
    objective  completion-only NLL: -sum_{tokens of the step} M_t log p(o_t) / N_step, with N_step the completion
               tokens of the step's GA micro-batches on all ranks (TRL's loss with ``average_tokens_across_devices``),
               logits at temperature 1; ``padding_free`` lays a micro-batch's rows end to end in one sequence

SFT runs alone or as a stage (``stages:``): the kit's warm start, the R1 pipeline's cold start, rejection-sampling
SFT (``rejection_sampling``, which extends this family).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from relay_rl.learner.logprobs import token_logprobs

from .base import DATASET, Batching, Family, Needs, Objective, step_tokens


class SFTConfig(Batching):
    name: Literal["sft"] = "sft"
    num_generations: int = Field(1, ge=1, le=1)
    """One row per dataset pair (1: nothing is sampled)."""
    padding_free: bool = False
    """Flatten each micro-batch into one sequence: no pad token is computed, positions restart for each row and
    attention stays within it (TRL's ``padding_free``; transformers detects the packed rows from the positions)."""


def assemble(batch, alg, reward_weights, seed: int):
    """A seeded row shuffle (each micro-batch a sample of the generation batch)."""
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    return batch.select(perm), {}


def nll_sum(logits_BTV: torch.Tensor, completion_ids: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """-sum_t M_t log p(o_t) over a micro-batch (temperature 1)."""
    logp_BT, _ = token_logprobs(logits_BTV, completion_ids.to(logits_BTV.device))
    return -(logp_BT * mask_BT).sum()


class SFTObjective(Objective):
    """L_mb = -sum_{t in mb} M_t log p(o_t) * P / N_step: the step objective (mean over ranks of the summed
    micro-batch losses) is the global token mean of the NLL."""

    def begin_step(self, micro_batches) -> None:
        self.step_tokens = step_tokens(micro_batches)

    def forward(self, model, mb) -> torch.Tensor:
        return model.packed_logits(mb) if self.alg.padding_free else model.logits(mb)

    def loss(self, mb, logits_BTV):
        mask_BT = mb.loss_mask.to(logits_BTV.device)  # a dataset conversation's tool messages are not learned
        total = nll_sum(logits_BTV, mb.completion_ids, mask_BT)
        n = float(mask_BT.sum())
        return total * self.sched.P / max(self.step_tokens, 1.0), {"sft/nll": ("mean", float(total.detach()), n)}


class SFT(Family):
    configs = (SFTConfig,)
    objective = SFTObjective
    multi_turn = True  # trains on Batch.loss_mask (a conversation's tool messages left out); evaluates with the tools

    def needs(self, cfg) -> Needs:
        return Needs(rewards=False)

    def sources(self, alg, n_micro_batches: int, seed: int) -> list[str]:
        """The dataset fills every micro-batch."""
        return [DATASET] * n_micro_batches

    assemble = staticmethod(assemble)

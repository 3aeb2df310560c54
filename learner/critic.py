"""The critic role (PPO): a value model trained beside the policy in its own DeepSpeed group.

Critic rank i sits beside learner rank i (same rows, same schedule) and holds an HF sequence classifier: its backbone
and scalar ``score`` head give a value at every completion position. Per generation batch, ``values`` gives V_old of
the shard's rows; policy rank i turns them into advantages and returns; ``admit`` then takes the shard with both,
and ``train_step`` steps the family's critic objective (``Needs.critic``).
"""

from __future__ import annotations

import torch

from relay_rl.batch import Batch

from .actor import LearnerRank
from .methods import Objective


class CriticRank(LearnerRank):
    stats_prefix = "critic/"

    def make_objective(self) -> Objective:
        return self.cfg.needs.critic.objective(self.cfg, self.sched)

    def load_model(self, dtype: torch.dtype, attn: str | None):
        """A scalar head on the backbone (kept from a reward model, else new)."""
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            self.model_path,
            num_labels=1,
            dtype=dtype,
            trust_remote_code=self.cfg.model.trust_remote_code,
            attn_implementation=attn,
        )

    def values(self, shard: Batch, chunk: int = 64) -> torch.Tensor:
        """V_old (N, Tc) of a shard's rows at the current weights, 0 on padding (the same number of forwards on every
        critic rank: their shards have equal sizes, as ZeRO-3's gathers need)."""
        return self.model.no_grad_chunks(shard, self.model.values, chunk) * shard.completion_mask

    @torch.no_grad()
    def admit(self, shard: Batch, values: torch.Tensor, returns: torch.Tensor) -> dict:
        """The shard with its V_old and the returns policy rank i computed from them."""
        return self._admit(shard, values=values, returns=returns)[1]

    def micro_step_stats(self, mb: Batch, loss: torch.Tensor) -> dict:
        return {}  # the loss, staleness and tokens are the policy's to report

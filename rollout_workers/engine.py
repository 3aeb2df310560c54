"""The ``RolloutEngine`` interface: what the rollout actor needs from a generation backend.

An engine samples n completions per prompt and returns, for each, the token ids, the behaviour log-prob of every
sampled token (the log-prob under the distribution it was actually sampled from: after temperature, top-k/top-p,
min-p and repetition penalty) and why it stopped. It loads new weights in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from relay_rl.sampling import SamplingParams


@dataclass
class Completion:
    token_ids: list[int]  # sampled tokens, including the EOS that ended it (if any)
    logprobs: list[float]  # behaviour log-prob of each token (NaN where the engine has none)
    finish_reason: Literal["stop", "length"]
    token_versions: Optional[list[int]] = None  # policy version that sampled each token (partial rollouts)
    tool_mask: Optional[list[int]] = (
        None  # multi-turn: 1 on sampled tokens, 0 on a tool message's (rollout_workers.agent)
    )


class RolloutEngine(ABC):
    """Generation backend behind the rollout actor (``hf`` or ``vllm``)."""

    tokenizer = None

    supports_partial_rollouts = False

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, ``params.n`` completions (consecutive)."""

    def generate_partial(
        self, prompt_ids: list[list[int]], params: SamplingParams, chunk_tokens: int, between_chunks
    ) -> list[list[Completion]]:
        """Generate ``chunk_tokens`` at a time; ``between_chunks()`` may load new weights and returns the current
        policy version, which tags the tokens of the next chunk (partial rollouts). Optional."""
        raise NotImplementedError(f"{type(self).__name__} does not support partial rollouts")

    @abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], borrowed: bool = False) -> None:
        """Load the given (name, tensor) pairs into the model in place. Names are the HF model's parameter names.
        ``borrowed``: the tensors are another process's memory that changes after the call (the ipc transport), so
        the engine copies them; otherwise they stay as they are and it may keep them as its weights."""

    def sleep(self) -> None:  # noqa: B027  (optional: engines without a KV cache to free keep this)
        """Free generation memory (KV cache) while the learner trains on shared devices. Optional."""

    def wake(self) -> None:  # noqa: B027
        """Undo ``sleep``. Optional."""

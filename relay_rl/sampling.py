"""Sampling settings, as the driver asks the rollout engines (and a judge) for completions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0
    max_tokens: int = 512
    stop: Optional[tuple[str, ...]] = None
    seed: Optional[int] = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

"""Rejection-sampling SFT (DeepSeek-R1, 2501.12948 §2.3.3; docs/methods/sft.md#the-deepseek-r1-pipeline, stage 3):
sample, keep what passes, fine-tune on it.

    needs      rewards (what passes is the weighted reward); the rollout pool samples with the weights the run
               starts from (a stage's: the previous stage's final weights)
    prepare    ``num_samples`` completions per prompt of ``data.train`` (its first ``num_prompts``), at the rollout's
               sampling knobs, scored by the reward pool. A sample is kept when its weighted reward reaches
               ``reward_threshold`` and no filter drops it (R1's: ``language_mixing``, ``long_paragraphs``,
               ``code_blocks``; or ``module:function``), at most ``max_kept_per_prompt`` distinct completions per
               prompt, best first. The kept set is written to the run folder, ``rejection_sampling.jsonl`` (the
               prompt's row with the sample in ``data.completion_column`` and its ``reward``), and becomes the
               training data (a resumed run reads it back instead of sampling again)
    then       SFT on it (``learner.methods.sft``): completion-only NLL; ``train.num_train_epochs`` sizes the run to
               the kept set (R1: 2 epochs)
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, model_validator

from relay_rl.batch import group_rows
from relay_rl.errors import RunError
from relay_rl.learner.advantages import total_reward
from relay_rl.schema import Strict

from .base import Needs
from .sft import SFT, SFTConfig

KEPT_FILE = "rejection_sampling.jsonl"
PROMPTS_PER_ROUND = 256


class FilterSpec(Strict):
    name: str
    """A built-in filter (``reward_workers.filters``) or an import path ``package.module:function``."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """The filter's knobs (e.g. ``max_chars`` of ``long_paragraphs``)."""


class RejectionSamplingConfig(SFTConfig):
    name: Literal["rejection_sampling"] = "rejection_sampling"
    num_samples: int = Field(4, ge=1)
    """Completions sampled per prompt."""
    reward_threshold: float = 1.0
    """A sample passes when its weighted reward reaches this."""
    max_kept_per_prompt: Optional[int] = Field(1, ge=1)
    """Distinct passing completions kept per prompt, best reward first. None: all."""
    filters: list[Union[str, FilterSpec]] = Field(default_factory=list)
    """Predicates that drop a passing sample (True = drop): ``language_mixing``, ``long_paragraphs``, ``code_blocks``
    (R1's), or ``module:function(completion, **row) -> bool``."""
    num_prompts: Optional[int] = Field(None, ge=1)
    """Sample from the first this many prompts of data.train. None: all of them."""

    @model_validator(mode="after")
    def _filters_known(self):
        from relay_rl.reward_workers.filters import resolve_filter

        for i, f in enumerate(self.filters):
            if isinstance(f, str) and ":" in f:
                continue  # an import path: imported when the run samples
            try:
                resolve_filter(f if isinstance(f, str) else f.model_dump())
            except (ValueError, TypeError) as e:
                raise ValueError(f"filters[{i}]: {e}") from None
        return self


def select(rows: list[dict], batch, alg, reward_weights, prompt_column: str, completion_column: str):
    """The kept samples of one scored batch (group id i = record i of ``rows``) and what became of the others."""
    from relay_rl.reward_workers.filters import resolve_filter

    filters = [resolve_filter(f if isinstance(f, str) else f.model_dump()) for f in alg.filters]
    r = total_reward(batch.rewards, reward_weights)
    stats = {
        "sampled": len(batch),
        "below_threshold": 0,
        "duplicates": 0,
        "over_limit": 0,
        "kept": 0,
        "prompts_kept": 0,
        **{f"filtered/{name}": 0 for name, _ in filters},
    }
    groups = group_rows(batch.group_id.tolist())
    kept = []
    for g, members in groups.items():
        row, seen, n = rows[g], set(), 0
        for i in sorted(members, key=lambda j: -float(torch.nan_to_num(r[j], nan=-math.inf))):
            text = batch.completions[i]
            if not float(r[i]) >= alg.reward_threshold:  # NaN (unscorable) never passes
                stats["below_threshold"] += 1
                continue
            if text in seen:
                stats["duplicates"] += 1
                continue
            seen.add(text)
            dropped = next((name for name, f in filters if f(text, **{**row, "prompt": row[prompt_column]})), None)
            if dropped:
                stats[f"filtered/{dropped}"] += 1
                continue
            if alg.max_kept_per_prompt is not None and n >= alg.max_kept_per_prompt:
                stats["over_limit"] += 1
                continue
            completion = [{"role": "assistant", "content": text}] if isinstance(row[prompt_column], list) else text
            kept.append({**row, completion_column: completion, "reward": float(r[i])})
            n += 1
        stats["kept"] += n
        stats["prompts_kept"] += n > 0
    return kept, stats


class RejectionSampling(SFT):
    """It trains as SFT, on the kept set ``prepare`` makes."""

    configs = (RejectionSamplingConfig,)

    def needs(self, cfg) -> Needs:
        return Needs(rewards=True)

    def prepare(self, cfg, driver, out, log):
        """Sample, score and filter ``data.train``; write and return the kept set (the run's training data) with the
        counts (``rejection_sampling/*``)."""
        import datasets
        from tqdm import tqdm

        a, path = cfg.algorithm, out / KEPT_FILE
        if path.is_file():  # a resumed run: the set it sampled
            log(f"[relay-rl] rejection sampling: reusing {path}")
            return datasets.Dataset.from_json(str(path)), {}
        data = driver.train_data
        records = data.select(range(min(len(data), a.num_prompts or len(data)))).to_list()
        weights = cfg.reward.reward_weights or [1.0] * len(cfg.reward.reward_funcs)
        kept, totals = [], {}
        for start in tqdm(
            range(0, len(records), PROMPTS_PER_ROUND), desc="rejection sampling", unit="round", leave=False
        ):
            chunk = records[start : start + PROMPTS_PER_ROUND]
            rows, stats = driver.sample_and_reduce(
                chunk,
                a.num_samples,
                cfg.train.seed + start,
                select,
                a,
                weights,
                cfg.data.prompt_column,
                cfg.data.completion_column,
            )
            kept += rows
            totals = {k: totals.get(k, 0) + v for k, v in stats.items()}
        if not kept:
            raise RunError(
                f"rejection sampling kept no sample of {totals['sampled']} ({totals}): lower "
                "algorithm.reward_threshold, sample more (num_samples), or check the reward functions"
            )
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        log(
            f"[relay-rl] rejection sampling: kept {totals['kept']} of {totals['sampled']} samples "
            f"({totals['prompts_kept']} of {len(records)} prompts); "
            + ", ".join(f"{k} {v}" for k, v in totals.items() if k not in ("sampled", "kept", "prompts_kept"))
            + f"; written to {path}"
        )
        stats = {f"rejection_sampling/{k}": v for k, v in totals.items()}
        stats["rejection_sampling/kept_fraction"] = totals["kept"] / max(1, totals["sampled"])
        return datasets.Dataset.from_list(kept), stats

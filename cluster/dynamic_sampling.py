"""DAPO's dynamic sampling (docs/staleness.md#dynamic-sampling; GRPO's ``algorithm.filter_groups``, verl's names).

A group whose rewards are all equal has zero advantage: it teaches nothing. With dynamic sampling a generation batch
is made in rounds: the first samples and scores ``prompts_per_generation`` prompts, each later one as many new
prompts as the missing groups need at the share of varied groups seen so far, plus a quarter (spread over the
rollout replicas like any batch);
a small task reports, per group, whether its rewards vary (the driver sees group ids and counts, never rows); the
driver launches another round while fewer than ``prompts_per_generation`` groups vary, then hands the varied groups
(the first ones, in round order; the surplus cut in whole groups) to the family's assemble step. The learner sees
the batch shape it would see without dynamic sampling. Every round samples with the weights the rollout pool holds
when it starts, never older than the first round's (the staleness bound counts from the first round), and every
sample keeps its own version. Dropped groups' prompts are consumed, not retried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray
import torch

from relay_rl.batch import Batch, group_rows
from relay_rl.errors import RunError
from relay_rl.learner.advantages import total_reward

ROUND_GROUP_OFFSET = 10**9  # group ids of round r: round 0's + r * offset (unique within a generation batch)


def group_verdicts(batch: Batch, weights, column: int | None) -> list[tuple[int, bool, int]]:
    """(group id, whether the group's values vary, its rows) for every group, in order of first appearance. The
    value is the weighted total reward (``column`` None) or one reward function's column; unscorable (NaN) rows are
    left out, so a group needs two scorable rows with different values."""
    values = (total_reward(batch.rewards, weights) if column is None else batch.rewards[:, column].double()).tolist()
    return [
        (g, len({values[i] for i in rows if not math.isnan(values[i])}) > 1, len(rows))
        for g, rows in group_rows(batch.group_id.tolist()).items()
    ]


@ray.remote(num_cpus=0)
def verdicts(scored: list, weights, column: int | None) -> list[tuple[int, bool, int]]:
    """``group_verdicts`` of one round's scored parts (refs in a list: fetched here, not on the driver; each part
    holds whole groups)."""
    return [v for part in ray.get(scored) for v in group_verdicts(part, weights, column)]


@dataclass
class Choice:
    groups: list[int]  # the group ids the batch holds, in order
    stats: dict


def choose_groups(rounds: list[list[tuple[int, bool, int]]], need: int, when_exhausted: str) -> Choice:
    """The first ``need`` varied groups over the rounds (round order); short of them (the rounds are exhausted):
    ``fill`` with the rounds' tied groups, in order, or raise (``error``). Counts what was dropped."""
    flat = [v for r in rounds for v in r]
    varied = [g for g, ok, _ in flat if ok]
    chosen = varied[:need]
    filled = []
    if len(chosen) < need:
        if when_exhausted == "error":
            raise RunError(
                f"dynamic sampling: {len(varied)} of the {need} groups a generation batch needs had "
                f"reward variance after {len(rounds)} rounds (algorithm.filter_groups."
                "max_num_gen_batches). The task is too hard or too easy for the model: raise "
                "max_num_gen_batches (0: no bound), or set when_exhausted: fill"
            )
        filled = [g for g, ok, _ in flat if not ok][: need - len(chosen)]
    keep = set(chosen) | set(filled)
    rows = {g: n for g, _, n in flat}
    stats = {
        "dynamic_sampling/rounds": len(rounds),
        "dynamic_sampling/generated_groups": len(flat),
        "dynamic_sampling/dropped_groups": len(flat) - len(keep),
        "dynamic_sampling/tied_groups": len(flat) - len(varied),
        "dynamic_sampling/surplus_groups": len(varied) - len(chosen),
        "dynamic_sampling/filled_groups": len(filled),
        "dynamic_sampling/kept_group_ratio": len(varied) / max(1, len(flat)),
        "dynamic_sampling/dropped_samples": sum(n for g, n in rows.items() if g not in keep),
    }
    return Choice(groups=[g for g, _, _ in flat if g in keep], stats=stats)


def enough(rounds: list[list[tuple[int, bool, int]]], need: int, max_rounds: int) -> bool:
    """Stop sampling: ``need`` varied groups exist, or ``max_rounds`` rounds ran (0: no bound)."""
    varied = sum(ok for r in rounds for _, ok, _ in r)
    return varied >= need or (max_rounds > 0 and len(rounds) >= max_rounds)


def next_round_size(rounds: list[list[tuple[int, bool, int]]], need: int, full: int) -> int:
    """Prompts for the next round: the groups still missing divided by the share of varied groups so far, a quarter
    more as a margin, at most a full round (``full``; also when no group has varied yet). verl samples full rounds;
    sized rounds waste less when only a few groups are missing."""
    flat = [v for r in rounds for v in r]
    varied = sum(ok for _, ok, _ in flat)
    if not varied:
        return full
    return max(1, min(full, math.ceil((need - varied) * len(flat) / varied * 1.25)))


def select_groups(batch: Batch, groups: list[int]) -> Batch:
    """The rows of ``groups``, group by group in that order."""
    rows = group_rows(batch.group_id.tolist())
    return batch.select(torch.tensor([i for g in groups for i in rows[g]], dtype=torch.long))

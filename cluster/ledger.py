"""The ledger: every generation batch accounted for, generated, admitted (and for how many micro-steps), dropped as
too stale, or used although too stale. Nothing is lost without being counted; ``pipeline.json`` in the run folder is
its record."""

from __future__ import annotations

import json
from pathlib import Path


class Ledger:
    """Accounting of every generation batch: generated, admitted (and how many micro-steps it was consumed), dropped
    as too stale, or used although too stale. Nothing is lost without being counted."""

    def __init__(self):
        self.samples: dict[int, int] = {}  # gen_id -> samples generated
        self.admitted_ids: list[int] = []
        self.dropped_ids: dict[int, int] = {}  # gen_id -> lag
        self.stale_used_ids: dict[int, int] = {}
        self.microsteps: dict[int, int] = {}  # gen_id -> micro-steps consumed (per rank)
        self.expected: dict[int, int] = {}
        self.regenerated = 0  # batches in flight at a checkpoint, sampled again on resume
        self.work: dict[str, int] = {}  # "<pool>/<replica>" -> rows it generated or scored
        self.filtered: dict[int, int] = {}  # gen_id -> samples dynamic sampling left out of it
        self.trajectories = 0  # multi-turn samples generated (each a trajectory of turns and tool calls)
        self.redone = 0  # trajectories sampled again because their environment actor died

    @property
    def admitted_batches(self) -> int:
        return len(self.admitted_ids)

    def state(self) -> dict:
        return {
            "samples": self.samples,
            "admitted_ids": self.admitted_ids,
            "dropped_ids": self.dropped_ids,
            "stale_used_ids": self.stale_used_ids,
            "microsteps": self.microsteps,
            "expected": self.expected,
            "regenerated": self.regenerated,
            "work": self.work,
            "filtered": self.filtered,
            "trajectories": self.trajectories,
            "redone": self.redone,
        }

    def restore(self, state: dict) -> None:
        ints = lambda d: {int(k): v for k, v in d.items()}  # noqa: E731  (JSON keys are strings)
        self.samples, self.dropped_ids = ints(state["samples"]), ints(state["dropped_ids"])
        self.stale_used_ids, self.microsteps = ints(state["stale_used_ids"]), ints(state["microsteps"])
        self.expected, self.admitted_ids = ints(state["expected"]), list(state["admitted_ids"])
        self.regenerated, self.work = state.get("regenerated", 0), dict(state.get("work", {}))
        self.filtered = ints(state.get("filtered", {}))
        self.trajectories, self.redone = state.get("trajectories", 0), state.get("redone", 0)

    @property
    def dropped_samples(self) -> int:
        """Samples of batches dropped as too stale, and those dynamic sampling left out of the other batches."""
        return sum(self.samples[g] if g in self.dropped_ids else self.filtered.get(g, 0) for g in self.samples)

    def generated(self, gen) -> None:
        self.samples[gen.gen_id] = gen.stats["rows"]  # every round's samples
        self.trajectories += int(gen.stats.get("tools/trajectories", 0))
        self.redone += int(gen.stats.get("tools/trajectories_redone", 0))
        if gen.filtered_rows:
            self.filtered[gen.gen_id] = gen.filtered_rows
        for key, rows in gen.stats.get("work", {}).items():  # "rollout/0" -> rows it produced
            self.work[key] = self.work.get(key, 0) + rows

    def dropped(self, gen, lag: int) -> None:
        self.dropped_ids[gen.gen_id] = lag

    def stale_used(self, gen, lag: int) -> None:
        self.stale_used_ids[gen.gen_id] = lag

    def admitted(self, gen, microsteps: int) -> None:
        self.admitted_ids.append(gen.gen_id)
        self.expected[gen.gen_id] = microsteps

    def consumed(self, hist: dict, ranks: int) -> None:
        for gen_id, n in hist.items():
            self.microsteps[int(gen_id)] = self.microsteps.get(int(gen_id), 0) + n // ranks

    def counters(self) -> dict:
        return {
            "pipeline/generated_samples": sum(self.samples.values()),
            "pipeline/admitted_samples": sum(self.samples[g] - self.filtered.get(g, 0) for g in self.admitted_ids),
            "pipeline/dropped_samples": self.dropped_samples,
            "pipeline/filtered_samples": sum(self.filtered.values()),
            "pipeline/stale_used_samples": sum(self.samples[g] - self.filtered.get(g, 0) for g in self.stale_used_ids),
            **({"pipeline/trajectories": self.trajectories} if self.trajectories else {}),
            **({"pipeline/trajectories_redone": self.redone} if self.redone else {}),
        }

    def write(self, path: Path, microsteps_per_batch: int) -> None:
        path.write_text(
            json.dumps(
                {
                    "microsteps_per_batch": microsteps_per_batch,
                    "generated": self.samples,
                    "admitted": self.admitted_ids,
                    "dropped": self.dropped_ids,
                    "stale_used": self.stale_used_ids,
                    "consumed_microsteps": self.microsteps,
                    "regenerated_at_resume": self.regenerated,
                    "work_per_replica": self.work,
                    "filtered_by_dynamic_sampling": self.filtered,
                    **self.counters(),
                },
                indent=1,
            )
        )

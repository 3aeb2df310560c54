"""Method families (DESIGN.md §8). Each module holds a family's config models, needs, assemble and objective;
this registry maps the run file's ``algorithm.name`` to its module."""
from __future__ import annotations

from types import ModuleType

from . import distill, grpo, minillm
from .base import DATASET, POLICY, TEACHER, Batching, Needs, Objective, TeacherSpec  # noqa: F401

FAMILIES: dict[str, ModuleType] = {}
CONFIG_MODELS = []
for _module in (grpo, minillm, distill):
    for _cfg in _module.CONFIGS:
        FAMILIES[_cfg.model_fields["name"].default] = _module
        CONFIG_MODELS.append(_cfg)


def family(alg) -> ModuleType:
    """The module of a config (or a name)."""
    name = alg if isinstance(alg, str) else alg.name
    if name not in FAMILIES:
        raise ValueError(f"unknown algorithm.name {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def sources(alg, n_micro_batches: int, seed: int) -> list[str]:
    """Which generator fills each micro-batch (the policy, unless the family mixes sources)."""
    fn = getattr(family(alg), "sources", None)
    return fn(alg, n_micro_batches, seed) if fn else [POLICY] * n_micro_batches

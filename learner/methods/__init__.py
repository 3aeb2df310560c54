"""Method families (the contract: ``learner.methods.base.Family``). Each module holds a family's config models, its
objective and its ``Family``; this registry maps the run file's ``algorithm.name`` to the family."""

from __future__ import annotations

from .base import DATASET, POLICY, TEACHER, Batching, CriticSpec, Family, Needs, Objective, TeacherSpec  # noqa: F401
from .distill import Distillation
from .dpo import Preference
from .grpo import GRPO
from .minillm import MiniLLM
from .ppo import PPO
from .rejection_sampling import RejectionSampling
from .sdft import SDFT
from .sdpo import SDPO
from .sft import SFT
from .ssd import SSD

DEFAULT = "grpo"
"""The family of a run file whose ``algorithm:`` names none."""

FAMILIES: dict[str, Family] = {}
"""``algorithm.name`` -> its family (one instance per family, shared by its config names)."""
CONFIG_MODELS: list = []
"""Every family's config models: the run file's ``algorithm:`` union."""
for _family in (
    GRPO(),
    MiniLLM(),
    Distillation(),
    PPO(),
    SSD(),
    SFT(),
    RejectionSampling(),
    SDPO(),
    SDFT(),
    Preference(),
):
    for _name, _cfg in zip(_family.names, _family.configs):
        FAMILIES[_name] = _family
        CONFIG_MODELS.append(_cfg)


def family(alg) -> Family:
    """The family of an ``algorithm`` config (or its name)."""
    name = alg if isinstance(alg, str) else alg.name
    if name not in FAMILIES:
        raise ValueError(f"unknown algorithm.name {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def cross_section_aliases(data: dict) -> dict:
    """The raw run file with its family's cross-section knob names applied (an unknown name: left for the union's
    error)."""
    name = (data.get("algorithm") or {}).get("name")
    return FAMILIES[name].cross_section_aliases(data) if name in FAMILIES else data


def check(cfg) -> None:
    """The family's rules across run-file sections, dynamic sampling's settings included (raises ValueError)."""
    fam = family(cfg.algorithm)
    fam.group_filter(cfg)
    fam.check(cfg)

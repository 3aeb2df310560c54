"""Method families (DESIGN.md §8). Each module holds a family's config models, needs, assemble and objective;
this registry maps the run file's ``algorithm.name`` to its module."""
from __future__ import annotations

from types import ModuleType

from . import distill, dpo, grpo, minillm, ppo, rejection_sampling, sdft, sdpo, sft, ssd
from .base import DATASET, POLICY, TEACHER, Batching, Needs, Objective, TeacherSpec  # noqa: F401

FAMILIES: dict[str, ModuleType] = {}
CONFIG_MODELS = []
for _module in (grpo, minillm, distill, ppo, ssd, sft, rejection_sampling, sdpo, sdft, dpo):
    for _cfg in _module.CONFIGS:
        FAMILIES[_cfg.model_fields["name"].default] = _module
        CONFIG_MODELS.append(_cfg)


def family(alg) -> ModuleType:
    """The module of a config (or a name)."""
    name = alg if isinstance(alg, str) else alg.name
    if name not in FAMILIES:
        raise ValueError(f"unknown algorithm.name {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


# The optional pieces of a family, with what a family that does not define them gets.
def mixes_sources(alg) -> bool:
    return hasattr(family(alg), "sources")


def sources(alg, n_micro_batches: int, seed: int) -> list[str]:
    """Which generator fills each micro-batch (the policy, unless the family mixes sources)."""
    fn = getattr(family(alg), "sources", None)
    return fn(alg, n_micro_batches, seed) if fn else [POLICY] * n_micro_batches


def group_sources(alg) -> list[str]:
    """Where each row of a group comes from, when a group mixes sources (XPO: [POLICY, TEACHER], the policy's sample
    and the frozen reference's); empty: a group comes from one source (``sources``)."""
    fn = getattr(family(alg), "group_sources", None)
    return fn(alg) if fn else []


def group_filter(cfg):
    """Dynamic sampling (GRPO's ``filter_groups``) when the family filters groups and it is on: (its settings, the
    reward column it reads, None for the weighted total); None otherwise: every sampled group enters the batch."""
    fn = getattr(family(cfg.algorithm), "group_filter", None)
    return fn(cfg) if fn else None


def cross_section_aliases(data: dict) -> dict:
    """A family's knob names that set another section's field (PPO's response_length), applied to the raw run file."""
    name = (data.get("algorithm") or {}).get("name")
    fn = getattr(FAMILIES.get(name), "cross_section_aliases", None)
    return fn(data) if fn else data


def check(cfg) -> None:
    """Rules across run-file sections (raises ValueError)."""
    fg = getattr(cfg.algorithm, "filter_groups", None)
    if fg is not None and fg.enable and not hasattr(family(cfg.algorithm), "group_filter"):
        raise ValueError(f"filter_groups (dynamic sampling) is for the GRPO family; algorithm {cfg.algorithm.name} "
                         "learns from groups without reward variance too: set filter_groups.enable: false")
    getattr(family(cfg.algorithm), "check", lambda c: None)(cfg)


def warnings(cfg) -> list[str]:
    """Settings that run but deserve a word."""
    return getattr(family(cfg.algorithm), "warnings", lambda c: [])(cfg)


def moving_pools(cfg) -> list[str]:
    """Scoring pools whose weights change during the run (saved in checkpoints), e.g. GRPO's refreshed reference."""
    return getattr(family(cfg.algorithm), "moving_pools", lambda c: [])(cfg)


def after_step(cfg, step: int, pipe) -> None:
    """Driver-side work between optimizer steps (GRPO's reference refresh)."""
    getattr(family(cfg.algorithm), "after_step", lambda c, s, p: None)(cfg, step, pipe)


def data_columns(cfg) -> tuple[str, ...]:
    """Dataset columns the family itself reads (SDFT's teacher prompt, SDPO's feedback): checked before the run."""
    return getattr(family(cfg.algorithm), "data_columns", lambda c: ())(cfg)


def generation_prompts(cfg, records: list[dict]) -> list | None:
    """Prompts the policy samples from instead of the records' own (SDFT's generate_from_teacher); None: their own."""
    fn = getattr(family(cfg.algorithm), "generation_prompts", None)
    return fn(records, cfg) if fn else None


def makes_data(alg) -> bool:
    """The family makes the data it trains on before the first step (rejection sampling), from data.train's prompts."""
    return hasattr(family(alg), "prepare")


def prepare(cfg, pipe, out, log) -> tuple[object, dict]:
    """Work before the first optimizer step, with the pools up: (the training data to use instead of ``data.train``,
    or None; statistics for the metrics). Rejection sampling makes its kept set here."""
    fn = getattr(family(cfg.algorithm), "prepare", None)
    return fn(cfg, pipe, out, log) if fn else (None, {})

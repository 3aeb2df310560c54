"""Where the quickstart kit lives and what ``kit:`` paths name: a run-file concern (the data loader, the pre-flight
and the pools resolve ``kit:`` values here; building is ``cluster.kit.build``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from relay_rl.cluster.config import KitConfig

KIT_FORMAT = 3  # bump when what a kit holds changes, so cached kits are rebuilt
PART_NAMES = ("teacher", "teacher_pairs", "reward_model")
"""The optional kit parts (``cluster.kit.parts.KIT_PARTS``), built only when a ``kit:<part>`` path names them."""


def kit_dir(cfg: KitConfig) -> Path:
    if cfg.dir:
        return Path(cfg.dir).expanduser().resolve()
    key = json.dumps({"format": KIT_FORMAT, **cfg.model_dump(exclude={"dir"})}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(os.environ.get("RELAY_RL_CACHE", "~/.cache/relay-rl")).expanduser()
    variant = "" if cfg.variant == "plain" else f"{cfg.variant}-"
    return (root / "kits" / f"arithmetic-{variant}{digest}").resolve()


def resolve_kit_path(value: str, cfg: KitConfig | None) -> str:
    """``kit:warm_start`` -> <kit>/warm_start, ``kit:train`` -> <kit>/train.jsonl, ``kit:teacher`` -> <kit>/teacher,
    ``kit:reward_model`` -> <kit>/reward_model (any other name -> <kit>/<name>); other values pass through. Parts are
    not built here: see ``kit_parts_needed``."""
    if not value or not value.startswith("kit:"):
        return value
    name = value[len("kit:") :]
    root = kit_dir(cfg)
    files = {"train": "train.jsonl", "test": "test.jsonl", "dev": "dev.jsonl"}
    return str(root / files.get(name, name))


def kit_parts_needed(*paths: str | None) -> tuple[str, ...]:
    """The parts that ``kit:`` paths refer to, in first-seen order, so a caller builds only those:
    ("kit:teacher", "kit:train", "/x") -> ("teacher",)."""
    names = (p[len("kit:") :] for p in paths if isinstance(p, str) and p.startswith("kit:"))
    return tuple(dict.fromkeys(n for n in names if n in PART_NAMES))


def _spec_fields(spec) -> tuple[str, dict]:
    """(name, kwargs) of a reward_funcs entry: a string, a ``RewardFuncSpec`` or its dict."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        return spec["name"], dict(spec.get("kwargs") or {})
    return spec.name, dict(spec.kwargs or {})


def reward_kit_paths(reward) -> tuple[str, ...]:
    """The ``kit:`` values among the reward functions' kwargs (``reward`` is a ``RewardConfig`` or None), e.g.
    ``{name: reward_model, kwargs: {model: kit:reward_model}}`` -> ("kit:reward_model",): what
    ``kit_parts_needed`` must also see, so the part is built before the run."""
    funcs = getattr(reward, "reward_funcs", None) or ()
    return tuple(
        v for spec in funcs for v in _spec_fields(spec)[1].values() if isinstance(v, str) and v.startswith("kit:")
    )


def resolve_reward_funcs(reward_funcs, cfg: KitConfig | None) -> list:
    """The reward_funcs entries as the reward actor and ``registry.resolve`` take them (a name, or a
    ``{name, kwargs}`` dict), with every ``kit:`` kwarg value resolved to its kit path (``resolve_kit_path``)."""
    out = []
    for spec in reward_funcs:
        if isinstance(spec, str):
            out.append(spec)
            continue
        name, kwargs = _spec_fields(spec)
        if any(isinstance(v, str) and v.startswith("kit:") for v in kwargs.values()) and cfg is None:
            raise ValueError(
                f"reward function {name}: kwargs {kwargs} refer to 'kit:...' but there is no kit "
                "section: add `kit: {}`"
            )
        out.append(
            {
                "name": name,
                "kwargs": {k: resolve_kit_path(v, cfg) if isinstance(v, str) else v for k, v in kwargs.items()},
            }
        )
    return out


def parts_for(runs) -> tuple[str, ...]:
    """The kit parts these runs (``RunConfig``s: a run, or a staged run's stages) name: the model, the teacher of a
    family that loads one, reward functions' ``kit:`` kwargs."""
    return tuple(
        dict.fromkeys(
            p
            for c in runs
            for p in kit_parts_needed(
                c.model.name_or_path,
                c.teacher.name_or_path if c.teacher is not None and c.needs.teacher_model else None,
                *reward_kit_paths(c.reward),
            )
        )
    )

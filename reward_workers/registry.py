"""Reward functions by name: relay-rl's built-ins, or any ``package.module:function`` import path.

A reward function has TRL's signature: keyword arguments only, ``prompts``, ``completions``, ``completion_ids``, every
dataset column (as a list aligned with the completions), ``trainer_state``, ``log_extra``, ``log_metric``, and
``**kwargs``. It returns one float (or None: "not applicable") per completion. It may be ``async``.

Built-ins are factories ``make(tokenizer, **kwargs) -> reward function``: a spec ``{name, kwargs}`` passes kwargs.
An import path with kwargs names a factory too (called with the kwargs), e.g. TRL's
``trl.rewards:get_soft_overlong_punishment``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list]
BUILTINS: dict[str, Callable[..., RewardFn]] = {}


def builtin(name: str):
    def register(factory):
        BUILTINS[name] = factory
        return factory

    return register


def resolve(spec: Any, tokenizer) -> tuple[str, RewardFn]:
    """Turn a config entry (a name, an import path, or {name, kwargs}) into (display name, function)."""
    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec["name"], dict(spec.get("kwargs") or {}))
    if name in BUILTINS:
        return name, BUILTINS[name](tokenizer=tokenizer, **kwargs)
    return imported(name, kwargs, BUILTINS, "reward function")


def imported(name: str, kwargs: dict, builtins: dict, what: str) -> tuple[str, Callable]:
    """An import path ``package.module:function`` -> (function name, the function, or what the factory returns for
    ``kwargs``); a name that is neither a built-in nor a path is an error listing the built-ins."""
    if ":" not in name:
        raise ValueError(
            f"unknown {what} {name!r}: use a built-in ({', '.join(sorted(builtins))}) or an import path "
            "'package.module:function'"
        )
    module, attr = name.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {name!r} cannot be imported: {e}") from None
    return attr, fn(**kwargs) if kwargs else fn

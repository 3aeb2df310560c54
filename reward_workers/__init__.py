"""Reward scoring: the reward actor, the built-in reward functions (importing this package registers them all:
verifiers, reward models, LLM judges) and the code sandbox."""

from . import judge, reward_model, verifiers  # noqa: F401  (register the built-ins)

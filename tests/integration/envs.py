"""Environments for the multi-turn tests (``rollout.environment_factory``), on TRL's contract: ``reset(**row)``
starts a trajectory, the public methods are tools (type hints and docstrings: their schemas), ``get_reward`` is the
environment's own reward. Their tool is named ``multiply``: the one the kit's tool-task model calls."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CRASH_MARKER = Path(tempfile.gettempdir()) / "relay-rl-test-env-crashed"
"""CrashOnceEnv's actor dies on its first call while this file is absent (the test removes it first)."""


class MultiplyEnv:
    """A calculator that remembers the trajectory's calls (reward functions read the state)."""

    def __init__(self):
        self.answer, self.calls, self.last, self.resets = None, 0, None, 0

    def reset(self, **row):
        self.answer, self.calls, self.last = row["answer"], 0, None
        self.resets += 1
        return None  # no observation: the prompt is the row's

    def multiply(self, a: int, b: int) -> str:
        """Multiply two whole numbers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        self.calls += 1
        self.last = str(a * b)
        return self.last

    def get_reward(self) -> float:
        """1.0 when the trajectory's last call computed the answer."""
        return 1.0 if self.last == self.answer else 0.0


class CrashOnceEnv(MultiplyEnv):
    """Its actor's process dies during the first call it serves (once per test: ``CRASH_MARKER``)."""

    def multiply(self, a: int, b: int) -> str:
        """Multiply two whole numbers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        if not CRASH_MARKER.exists():
            CRASH_MARKER.write_text("crashed")
            os._exit(1)
        return super().multiply(a, b)


class NoReset:
    def multiply(self, a: int, b: int) -> str:
        """Multiply.

        Args:
            a: The first factor.
            b: The second factor.
        """
        return str(a * b)


class Unbuildable:
    def __init__(self):
        raise RuntimeError("the simulator licence expired")

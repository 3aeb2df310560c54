"""The environment actor: a thin Ray wrapper holding the environment instances of many trajectories.

Each trajectory has a slot (its rollout replica and row); the slot's instance is made once by the factory and reset
for every trajectory that uses it afterwards (TRL's "construct once, reset often"). Calls of different slots run
concurrently (a threaded actor), so one slow tool does not hold the others up.
"""

from __future__ import annotations

import sys
import threading
import time


class EnvironmentWorker:
    def __init__(self, factory_path: str, index: int = 0, search_path: list[str] = ()):
        from relay_rl.process import configure_worker

        from .tools import load_environment

        configure_worker()
        for p in reversed(search_path):  # where ``module:Class`` imports are found (the run file's folder, ...)
            if p not in sys.path:
                sys.path.insert(0, p)
        self.factory = load_environment(factory_path)
        self.index = index
        self.instances: dict = {}
        self.lock = threading.Lock()
        self.resets = 0

    def __repr__(self) -> str:
        return f"EnvironmentWorker(index={self.index}, instances={len(self.instances)}, resets={self.resets})"

    def _instance(self, slot):
        with self.lock:
            if slot not in self.instances:
                self.instances[slot] = self.factory()
            return self.instances[slot]

    def reset(self, slot, row: dict):
        """Start a trajectory in ``slot``: the observation ``reset(**row)`` returns (None: none)."""
        self.resets += 1
        return self._instance(slot).reset(**row)

    def call(self, slot, name: str, arguments: dict) -> tuple[object, float]:
        """Tool ``name`` of the slot's instance: (its result, or the exception it raised; seconds)."""
        t0 = time.time()
        try:
            return getattr(self._instance(slot), name)(**arguments), time.time() - t0
        except Exception as e:  # noqa: BLE001  (contained: the trajectory gets the error as the tool's result)
            return e, time.time() - t0

    def finish(self, slot):
        """The slot's instance as its trajectory ended: a copy goes to the reward functions, which read its state as
        TRL passes ``environments`` (and the built-in ``environment_reward`` calls its ``get_reward()``). None when it
        cannot be pickled."""
        from ray import cloudpickle

        env = self._instance(slot)
        try:
            cloudpickle.dumps(env)
        except Exception:  # noqa: BLE001
            return None
        return env

    def ping(self) -> bool:
        return True

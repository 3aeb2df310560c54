"""relay-rl: distributed reinforcement learning for post-training language models, on Ray.

One distribution, one import name. This package is the vocabulary every role speaks (the batch, the config base,
statistics, errors, process set-up, weight transports); the roles are its sub-packages:

    relay_rl.cluster          the control plane: run file, CLI, pools, the controller loop, the pipeline, metrics
    relay_rl.rollout_workers  generation engines (transformers, vLLM) behind one actor
    relay_rl.reward_workers   reward functions, reward models, judges, the code sandbox
    relay_rl.teacher_workers  frozen scorers: the reference policy and distillation teachers
    relay_rl.learner          losses, method families and the DeepSpeed learner ranks

An installed wheel holds the role folders inside this package. In a source checkout (``ray job submit
--working-dir .``, a clone on ``PYTHONPATH``) they sit beside it, as the repository lays them out, and a small finder
maps ``relay_rl.<role>`` to ``<checkout>/<role>``.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.2.0"

ROLES = ("cluster", "learner", "rollout_workers", "reward_workers", "teacher_workers")


class _CheckoutRoles(importlib.abc.MetaPathFinder):
    """``relay_rl.<role>`` -> ``<checkout>/<role>/`` (its sub-modules are then found on that package's path)."""

    def __init__(self, checkout: Path):
        self.checkout = checkout

    def find_spec(self, name, path=None, target=None):
        role = name.partition("relay_rl.")[2]
        if not name.startswith("relay_rl.") or role not in ROLES:
            return None
        init = self.checkout / role / "__init__.py"
        return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])


_here = Path(__file__).resolve().parent
if not (_here / "cluster").is_dir() and (_here.parent / "cluster" / "__init__.py").is_file():
    if not any(isinstance(f, _CheckoutRoles) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutRoles(_here.parent))

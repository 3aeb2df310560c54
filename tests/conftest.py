"""Shared fixtures: offline environment, the quickstart kit (built once per session), one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RELAY_RL_CACHE", str(Path.home() / ".cache" / "relay-rl"))
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "deploy" / "recipes"


def build_kit(cfg, parts: tuple[str, ...] = (), **kw):
    """``ensure_kit`` with the run entry that trains the warm start (a relay-rl SFT run)."""
    from relay_rl.cluster.kit.build import ensure_kit
    from relay_rl.cluster.runner import train

    return ensure_kit(cfg, train, parts=parts, **kw)


@pytest.fixture(scope="session")
def kit():
    """The quickstart kit (tokenizer, tiny Qwen3, a+b= task, warm start); built once, then reused from the cache."""
    from relay_rl.cluster.config import KitConfig

    cfg = KitConfig()
    root = build_kit(cfg)
    return {"cfg": cfg, "root": root, "warm_start": str(root / "warm_start"), "base": str(root / "base")}


@pytest.fixture(scope="session")
def kit_r1():
    """The kit's r1 variant (hint column, think format; its warm start reads "46|12+34="): built once, then cached."""
    from relay_rl.cluster.config import KitConfig

    cfg = KitConfig(variant="r1")
    root = build_kit(cfg)
    return {"cfg": cfg, "root": root, "warm_start": str(root / "warm_start"), "base": str(root / "base")}


@pytest.fixture(scope="session")
def kit_tools():
    """The kit's tools variant (a*b= with the multiply tool; its warm start calls the tool for about half the
    prompts): built once, then cached."""
    from relay_rl.cluster.config import KitConfig

    cfg = KitConfig(variant="tools")
    root = build_kit(cfg)
    return {"cfg": cfg, "root": root, "warm_start": str(root / "warm_start"), "base": str(root / "base")}


@pytest.fixture(scope="session")
def kit_teachers(kit):
    """The kit's distillation teachers (``kit:teacher``, ``kit:teacher_pairs``): built once, then cached."""
    root = build_kit(kit["cfg"], parts=("teacher", "teacher_pairs"))
    return {"teacher": str(root / "teacher"), "teacher_pairs": str(root / "teacher_pairs")}


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the session (logical CPUs above the 2 physical ones, so pools fit)."""
    import ray

    if not ray.is_initialized():
        from relay_rl.cluster.runtime import LOCAL_SYSTEM_CONFIG
        from relay_rl.process import default_env

        ray.init(
            address="local",
            num_cpus=8,
            include_dashboard=False,
            namespace="relay-rl-tests",
            runtime_env={"env_vars": {**default_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
            _system_config=LOCAL_SYSTEM_CONFIG,
        )
    yield ray
    ray.shutdown()


def quickstart_dict(**sections) -> dict:
    """The quickstart recipe as a dict, with sections replaced/updated (shallow per section)."""
    import yaml

    raw = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return raw

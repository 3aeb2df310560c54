"""Process set-up shared by the driver and every actor: environment defaults, quiet libraries, zero-copy arrays."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch


def default_env() -> dict[str, str]:
    """Environment every relay-rl process runs with (only where the user has not set the variable)."""
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on CPU (gloo)
    return env


def configure_worker() -> None:
    for k, v in default_env().items():
        os.environ.setdefault(k, v)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*non-writable.*")  # read-only arrays from the object store
    try:  # every actor loads a model: one "Loading weights" bar per actor and load is noise on the driver's console
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of an object-store array (read-only; never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def load_frozen_model(path: str, dtype: str, trust_remote_code: bool, attn_implementation: str | None, device=None):
    """An HF causal LM for inference (a transformers rollout engine, a teacher): in ``dtype``, on ``device`` (default
    this process's GPU, else the CPU), in eval mode."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
    )
    return model.to(device).eval()

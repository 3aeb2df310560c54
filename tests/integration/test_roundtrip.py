"""rollout -> reward -> learner -> weight sync on a real local Ray cluster, with the real pools.

Checks: the driver holds only ObjectRefs for a generation batch; samples carry the policy version; a sync changes
what the rollout engine produces, and the rollout then matches the learner's weights exactly.
"""

import pytest
import torch

from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.cluster.pipeline import Pipeline
from relay_rl.cluster.pools import create_pools, shutdown_pools
from relay_rl.sampling import SamplingParams
from tests.conftest import quickstart_dict


@pytest.fixture(
    scope="module",
    params=[
        ("object_store", False, "float32"),
        ("collective", True, "float32"),
        ("object_store", False, "bfloat16"),
        ("ipc", True, "float32"),
    ],
    ids=["object_store-separate", "collective-colocated", "object_store-bfloat16-eager", "ipc-colocated"],
)
def setup(request, ray_cluster, kit):
    """The three weight transports; the collective one (gloo here, NCCL on GPUs) and ipc (shared memory here, CUDA
    IPC on GPUs; each rank serves the replica beside it) with rollout and learner colocated; and the object store in
    bfloat16 with eager attention (cpu_fast.yaml's precision; under ZeRO-3 the gather is bf16)."""
    from relay_rl.cluster.data import load_data

    transport, colocate, dtype = request.param
    raw = quickstart_dict(
        model={"dtype": dtype, "attn_implementation": "eager" if dtype == "bfloat16" else None},
        algorithm={"per_device_train_batch_size": 16, "num_generations": 4},
        rollout={"weight_transport": transport, "weight_sync_bucket_mb": 1.0},
        train={"learning_rate": 1e-2, "lr_scheduler_type": "constant", "zero_stage": 3},
        cluster={
            "colocate": colocate,
            "learner": {"replicas": 2, "num_cpus": 1},
            "rollout": {"replicas": 2, "num_cpus": 0.5},
        },
    )
    cfg = validate_dict(raw)
    sched = resolve_schedule(cfg)
    pools = create_pools(cfg, f"roundtrip-{transport}-{dtype}", kit["warm_start"], log=lambda m: None)
    train_data, eval_data = load_data(cfg.data, cfg.kit)
    pipe = Pipeline(cfg, sched, pools, train_data)
    yield cfg, sched, pools, pipe, eval_data
    shutdown_pools(pools)


def test_round_trip_changes_rollout_after_sync(setup):
    import ray

    cfg, sched, pools, pipe, eval_data = setup
    probe = eval_data.select(range(32)).to_list()
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=5)
    before = ray.get(pools.rollout[0].generate.remote(probe, greedy))
    assert before.policy_version.eq(0).all()

    gen = pipe.launch(0)
    assert all(isinstance(r, ray.ObjectRef) for r in gen.shards) and isinstance(gen.stats_ref, ray.ObjectRef)
    gen = pipe.wait(gen)
    assert gen.stats["rows"] == sched.generation_batch_size
    assert 0.0 <= gen.stats["reward"] <= 1.0 and gen.stats["behaviour_version"] == 0
    shard = ray.get(gen.shards[0])  # what rank 0 receives
    assert len(shard) == sched.B * sched.S and shard.advantages is not None and shard.rewards.shape[1] == 1
    whole = torch.cat([ray.get(s).advantages for s in gen.shards])
    torch.testing.assert_close(whole.sum(), torch.tensor(0.0), atol=1e-4, rtol=0)  # whole groups, then shuffled

    ray.get([r.admit.remote(s) for r, s in zip(pools.learner, gen.shards)])
    stats = ray.get([r.train_step.remote() for r in pools.learner])
    assert stats[0]["staleness/max"][1] == 0
    pipe.weights.sync(1)
    sync = pipe.weights.finish()
    width = {"float32": 4, "bfloat16": 2}[cfg.model.dtype]
    assert sync["sync/bytes"] == 986_240 * width  # every parameter once (tied embeddings once), in the model's dtype

    after = ray.get(pools.rollout[0].generate.remote(probe, greedy))
    assert after.policy_version.eq(1).all()
    lp_change = (before.behaviour_logprobs.sum(-1) - after.behaviour_logprobs.sum(-1)).abs()  # per completion
    assert lp_change.max() > 1e-3, "the rollout engine did not change after the sync"

    # the rollout now holds exactly the learner's weights: greedy outputs equal the saved checkpoint's
    import tempfile

    from transformers import AutoModelForCausalLM

    from relay_rl.rollout_workers.hf_engine import HFEngine

    with tempfile.TemporaryDirectory() as d:
        ray.get([r.save_hf.remote(d) for r in pools.learner])
        saved = HFEngine(d, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
        assert saved.model.config._attn_implementation == (cfg.model.attn_implementation or "sdpa")
        out = saved.generate(
            [saved.tokenizer(p["prompt"], add_special_tokens=False)["input_ids"] for p in probe], greedy
        )
        assert [c[0].token_ids for c in out] == [
            after.completion_ids[i][after.completion_mask[i] > 0].tolist() for i in range(len(probe))
        ]
        assert AutoModelForCausalLM.from_pretrained(d).config.model_type == "qwen3"

    # both rollout replicas got the same weights
    other = ray.get(pools.rollout[1].generate.remote(probe, greedy))
    torch.testing.assert_close(other.behaviour_logprobs, after.behaviour_logprobs)


def test_second_sync_and_the_engine_keeps_its_copy(setup):
    """A second sync moves the rollout again (buffers reused between syncs hold the new weights). Before it, the
    learner side of a sync runs alone (publish / share without loads): the engine must not change, because ipc's
    ranks rewrite their shared buffers at every sync (the engine copies them) and the object store's buffers are
    new objects each time (the engine may keep the old ones). The broadcast has no learner-only side."""
    import ray

    cfg, sched, pools, pipe, eval_data = setup
    transport, mb = cfg.rollout.weight_transport, cfg.rollout.weight_sync_bucket_mb
    probe = eval_data.select(range(32)).to_list()
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=5)
    before = ray.get(pools.learner[0].get_version.remote())
    pipe.weights.sync(before, force=True)  # the engine now holds what the transport delivers
    pipe.weights.finish()
    held = ray.get(pools.rollout[0].generate.remote(probe, greedy))
    gen = pipe.wait(pipe.launch(1))
    ray.get([r.admit.remote(s) for r, s in zip(pools.learner, gen.shards)])
    ray.get([r.train_step.remote() for r in pools.learner])  # lr 1e-2: the weights move
    if transport != "collective":
        plan = ray.get(pools.learner[0].weight_plan.remote(mb))
        for i in range(len(plan)):
            ray.get([r.send_bucket.remote(transport, mb, i) for r in pools.learner])
        again = ray.get(pools.rollout[0].generate.remote(probe, greedy))
        torch.testing.assert_close(again.behaviour_logprobs, held.behaviour_logprobs, rtol=0, atol=0)
    version = ray.get(pools.learner[0].get_version.remote())
    pipe.weights.sync(version)
    assert pipe.weights.finish()["sync/bytes"] == 986_240 * {"float32": 4, "bfloat16": 2}[cfg.model.dtype]
    moved = ray.get(pools.rollout[0].generate.remote(probe, greedy))
    assert moved.policy_version.eq(version).all() and version == before + 1
    assert (moved.behaviour_logprobs.sum(-1) - held.behaviour_logprobs.sum(-1)).abs().max() > 1e-3
    other = ray.get(pools.rollout[1].generate.remote(probe, greedy))  # rank 1's replica too (ipc: its own rank)
    torch.testing.assert_close(other.behaviour_logprobs, moved.behaviour_logprobs)
    if transport == "ipc":  # on CPU the buffers are shared-memory files: the ranks' shutdown must remove them
        import os

        pids = ray.get([r.__ray_call__.remote(lambda self: os.getpid()) for r in pools.learner])
        files = lambda: [f for f in os.listdir("/dev/shm") if any(f.startswith(f"torch_{p}_") for p in pids)]  # noqa: E731
        assert len(files()) == len(plan) * len(pids), files()  # a file per bucket (one dtype) and rank
        ray.get([r.release_transports.remote() for r in pools.learner])
        assert files() == []

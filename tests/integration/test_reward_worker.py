"""The reward actor on a real Ray cluster: TRL's signature, None, async functions awaited concurrently, and failures
(raising, wrong length, hanging) reported and contained, never scored 0; a hung scorer is restarted."""

import time

import pytest
import torch

from relay_rl.batch import Batch

FNS = "tests.integration.reward_fns"


def make_batch(n=4):
    return Batch(
        prompt_ids=torch.ones(n, 3, dtype=torch.long),
        prompt_mask=torch.ones(n, 3, dtype=torch.long),
        completion_ids=torch.full((n, 2), 5),
        completion_mask=torch.ones(n, 2),
        behaviour_logprobs=torch.zeros(n, 2),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.zeros(n, dtype=torch.long),
        truncated=torch.zeros(n, dtype=torch.bool),
        prompts=["1+1="] * n,
        completions=["2", "22", "222", "2222"][:n],
        columns={"answer": ["2"] * n},
    )


@pytest.fixture(scope="module")
def worker_cls(ray_cluster):
    import ray

    from relay_rl.reward_workers.actor import RewardWorker

    return ray.remote(RewardWorker).options(num_cpus=0.25, max_restarts=1)


def test_signature_none_and_logging(worker_cls, kit):
    import ray

    w = worker_cls.remote([f"{FNS}:length_reward", f"{FNS}:half_none", f"{FNS}:uses_columns"], kit["warm_start"])
    out = ray.get(w.score.remote(make_batch(), {"global_step": 7}))
    assert out.rewards.shape == (4, 3)
    assert out.rewards[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert out.rewards[0, 1] == 1.0 and torch.isnan(out.rewards[1, 1])  # None -> NaN (excluded, not 0)
    assert out.rewards[:, 2].tolist() == [7.0] * 4
    assert out.info["reward_metrics"] == {"my_metric": 3.0} and out.info["reward_extra"]["seen_answer"] == ["2"] * 4
    assert out.info["reward_errors"] == {} and out.info["reward_names"] == [
        "length_reward",
        "half_none",
        "uses_columns",
    ]


def test_async_functions_run_concurrently(worker_cls, kit):
    import ray

    w = worker_cls.remote([f"{FNS}:async_one", f"{FNS}:async_two"], kit["warm_start"])
    ray.get(w.ping.remote())
    t0 = time.time()
    out = ray.get(w.score.remote(make_batch()))
    assert time.time() - t0 < 0.95  # two 0.5 s functions, awaited together
    assert out.rewards[:, 0].tolist() == [1.0] * 4 and out.rewards[:, 1].tolist() == [2.0] * 4


def test_functions_of_both_kinds_run_at_the_same_time(worker_cls, kit):
    """Two sync functions (a reward model and a sandbox, say) and an async one: each takes 0.5 s; together 0.5 s."""
    import ray

    w = worker_cls.remote([f"{FNS}:sync_one", f"{FNS}:sync_two", f"{FNS}:async_one"], kit["warm_start"])
    ray.get(w.ping.remote())
    t0 = time.time()
    out = ray.get(w.score.remote(make_batch()))
    assert time.time() - t0 < 0.95
    assert out.rewards.tolist() == [[1.0, 2.0, 1.0]] * 4


def test_failures_are_reported_and_contained(worker_cls, kit):
    import ray

    w = worker_cls.remote([f"{FNS}:length_reward", f"{FNS}:raises", f"{FNS}:wrong_length"], kit["warm_start"])
    out = ray.get(w.score.remote(make_batch()))
    assert out.rewards[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # the healthy function still scores
    assert torch.isnan(out.rewards[:, 1]).all() and torch.isnan(out.rewards[:, 2]).all()
    errs = out.info["reward_errors"]
    assert "ValueError: the grader is down" in errs["raises"] and "reward_fns.py" in errs["raises"]
    assert errs["wrong_length"] == "returned 1 scores for 4 completions"


def test_hanging_function_times_out_and_the_worker_restarts(worker_cls, kit):
    import ray

    w = worker_cls.remote([f"{FNS}:length_reward", f"{FNS}:hangs"], kit["warm_start"], timeout_s=1.0)
    ray.get(w.ping.remote())  # started (the time below is the call's, not the actor's start on a busy machine)
    t0 = time.time()
    out = ray.get(w.score.remote(make_batch()))
    assert time.time() - t0 < 10
    assert "TimeoutError" in out.info["reward_errors"]["hangs"] and out.info["reward_stuck"]
    assert out.rewards[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    ray.kill(w, no_restart=False)  # what the controller does with a stuck scorer
    deadline = time.time() + 60
    while True:
        try:
            assert ray.get(w.ping.remote(), timeout=10)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            assert time.time() < deadline
            time.sleep(0.5)


def test_unknown_function_names_the_choices(kit):
    from relay_rl.cluster.kit.task import build_tokenizer
    from relay_rl.reward_workers.registry import resolve

    with pytest.raises(ValueError, match="arithmetic_exact"):
        resolve("no_such_reward", build_tokenizer())
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve("no_such_module:fn", build_tokenizer())


def test_a_part_of_a_chunk_is_whole_groups_in_order(worker_cls, kit):
    """Two reward replicas share one rollout chunk (``Pipeline._score``): part (j, k) scores the j-th of k runs of
    whole groups; the parts, joined in order, are the chunk."""
    import ray

    from relay_rl.reward_workers.actor import group_part

    gid = torch.tensor([3, 3, 3, 5, 5, 5, 8, 8, 8, 9, 9, 9, 2, 2, 2])  # 5 groups of 3
    parts = [group_part(gid, j, 2).tolist() for j in range(2)]
    assert parts == [[0, 1, 2, 3, 4, 5], list(range(6, 15))]
    assert [group_part(gid, j, 5).tolist() for j in range(5)] == [[3 * g, 3 * g + 1, 3 * g + 2] for g in range(5)]
    w = worker_cls.remote([f"{FNS}:length_reward"], kit["warm_start"])
    batch = make_batch(4).replace(group_id=torch.tensor([0, 0, 1, 1]))
    halves = ray.get([w.score.remote(batch, {}, part=(j, 2)) for j in range(2)])
    assert [h.completions for h in halves] == [["2", "22"], ["222", "2222"]]
    assert torch.cat([h.rewards for h in halves])[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]

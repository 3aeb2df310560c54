"""User reward functions for the reward-worker tests (imported by the actor through their import path)."""

import asyncio
import time

CALLS = {"slow_async": 0}


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def half_none(completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def raises(completions, **kwargs):
    raise ValueError("the grader is down")


def wrong_length(completions, **kwargs):
    return [1.0]


def hangs(completions, **kwargs):
    time.sleep(3600)


async def async_one(completions, **kwargs):
    await asyncio.sleep(0.5)
    return [1.0] * len(completions)


async def async_two(completions, **kwargs):
    await asyncio.sleep(0.5)
    return [2.0] * len(completions)


def sync_one(completions, **kwargs):
    time.sleep(0.5)
    return [1.0] * len(completions)


def sync_two(completions, **kwargs):
    time.sleep(0.5)
    return [2.0] * len(completions)


def uses_columns(completions, answer, trainer_state, log_metric, log_extra, **kwargs):
    log_metric("my_metric", 3.0)
    log_extra("seen_answer", answer)
    return [float(trainer_state["global_step"])] * len(completions)


def kill_rollout_once(marker: str):
    """A factory: a reward that crashes the run's rollout actor once, at generation 3 (the controller must restart it,
    resync it and redo the batch)."""

    def reward(completions, trainer_state, **kwargs):
        import os

        import ray

        if trainer_state.get("global_step") == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            for a in ray.util.list_named_actors(all_namespaces=True):
                if a["name"].endswith("/rollout-0"):
                    ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
        return [0.0] * len(completions)

    return reward


def slow_exact(tokenizer=None, delay_s: float = 0.3):
    """A factory: the kit's exact-answer verifier, deliberately slow (a slow rollout side)."""
    from relay_rl.cluster.kit.task import build_tokenizer
    from relay_rl.reward_workers.verifiers import make_arithmetic_exact

    exact = make_arithmetic_exact(build_tokenizer())

    def reward(completion_ids, answer, **kwargs):
        time.sleep(delay_s)
        return exact(completion_ids=completion_ids, answer=answer)

    return reward


# run-time faults of user reward functions (tests/e2e/test_bad_runs.py) ------------------------------------------
def words(completions, **kwargs):
    return ["good" for _ in completions]


def inf_score(completions, **kwargs):
    return [float("inf")] + [0.0] * (len(completions) - 1)


def nan_score(completions, **kwargs):
    return [0.0] * (len(completions) - 1) + [float("nan")]


def numpy_scores(completions, **kwargs):
    import numpy as np

    return np.linspace(0.0, 1.0, len(completions), dtype=np.float32)


def tensor_scores(completions, **kwargs):
    import torch

    return torch.arange(len(completions), dtype=torch.float64) % 2


def all_none(completions, **kwargs):
    return [None] * len(completions)


def constant_one(completions, **kwargs):
    return [1.0] * len(completions)


def interrupt_driver(pid: int, at_step: int):
    """A factory: a reward that sends SIGINT (Ctrl-C) to the driver when generation ``at_step`` is scored."""

    def reward(completions, trainer_state, **kwargs):
        import os
        import signal

        if trainer_state.get("global_step") == at_step:
            os.kill(pid, signal.SIGINT)
        return [0.0] * len(completions)

    return reward


def drop_when_answer_wrong(completion, answer, **row):
    """A rejection-sampling filter (True = drop): the completion is not the row's answer."""
    return completion.strip() != answer

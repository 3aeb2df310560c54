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
    from cluster.kit import build_tokenizer
    from reward_workers.verifiers import make_arithmetic_exact
    exact = make_arithmetic_exact(build_tokenizer())

    def reward(completion_ids, answer, **kwargs):
        time.sleep(delay_s)
        return exact(completion_ids=completion_ids, answer=answer)
    return reward

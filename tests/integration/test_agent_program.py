"""An agent program written against the OpenAI client trains through relay-rl's endpoint: the kit's tools warm start
behind a rollout actor's ``/v1/chat/completions``, the ``openai`` client in the program, each program run one
trajectory with exact tokens (the sampled ids in the loss, the template's ids of the program's messages out of it), its
return value the trajectory's reward; a program that raises or never calls is contained."""

from __future__ import annotations

import math

import pytest
import torch

from relay_rl.cluster.kit.task import read_splits
from relay_rl.learner.logprobs import completion_logprobs
from relay_rl.sampling import SamplingParams

L = 24


def worker(kit_tools, program: str):
    from relay_rl.rollout_workers.actor import RolloutWorker

    settings = {
        "agent_program": f"tests.integration.agent_programs:{program}",
        "agent_timeout_s": 60.0,
        "agent_host": "127.0.0.1",
        "max_completion_length": L,
    }
    return RolloutWorker(kit_tools["warm_start"], "hf", "float32", {}, multi_turn=settings)


@pytest.fixture(scope="module")
def rows(kit_tools):
    return read_splits(kit_tools["root"])["test"][:24]


def check(w, b, greedy: bool):
    tok, model = w.tokenizer, w.engine.model
    exact = clean = 0
    for i, t in enumerate(b.trajectories):
        n = int(b.completion_mask[i].sum())
        ids, mask = b.completion_ids[i, :n].tolist(), b.tool_mask[i, :n].tolist()
        p = b.prompt_ids[i][b.prompt_mask[i] > 0].tolist()
        assert t["error"] is None and t["turns"] >= 1
        lp = b.behaviour_logprobs[i, :n]
        assert all(math.isnan(x) for x, m in zip(lp.tolist(), mask) if m == 0)
        if t["tool_calls"] and t["turns"] >= 2:
            assert 0 in mask  # the tool result's tokens, out of the loss
        if not b.truncated[i]:
            clean += 1
            rendered = tok.apply_chat_template(b.prompts[i] + t["messages"], tokenize=True, return_dict=False)
            exact += p + ids == list(rendered)
        recomputed, _ = completion_logprobs(
            model,
            torch.tensor([p]),
            torch.ones(1, len(p), dtype=torch.long),
            torch.tensor([ids]),
            torch.ones(1, n),
            1.0,
        )
        m = torch.tensor(mask, dtype=torch.bool)
        assert (recomputed[0][m] - lp[m]).abs().max() < 1e-4
    assert clean >= len(b) // 2
    if greedy:  # sampled turns may be odd text the template renders otherwise (tests/integration/test_agent.py)
        assert exact >= 0.9 * clean, (exact, clean)


def test_an_openai_client_program_is_recorded_token_exact(kit_tools, rows):
    w = worker(kit_tools, "calculator_agent")
    greedy = w.generate(rows, SamplingParams(n=1, temperature=0.0, max_tokens=L))
    assert len(greedy) == 24 and greedy.tool_mask is not None and len(greedy.trajectories) == 24
    rewards = [t["agent_reward"] for t in greedy.trajectories]
    assert all(r in (0.0, 1.0) for r in rewards) and sum(rewards) >= 8  # the warm start: about half right
    assert sum(t["tool_calls"] > 0 for t in greedy.trajectories) >= 8
    check(w, greedy, greedy=True)
    check(w, w.generate(rows, SamplingParams(n=2, temperature=1.0, max_tokens=L, seed=0)), greedy=False)


def test_a_program_that_fails_or_never_calls_is_contained(kit_tools, rows):
    b = worker(kit_tools, "crashing_agent").generate(rows[:4], SamplingParams(n=1, max_tokens=L, seed=0))
    assert all("database is down" in t["error"] and t["agent_reward"] is None for t in b.trajectories)
    assert all(t["turns"] == 1 for t in b.trajectories)  # the call it made is kept
    b = worker(kit_tools, "silent_agent").generate(rows[:2], SamplingParams(n=1, max_tokens=L, seed=0))
    assert all("made no call" in t["error"] for t in b.trajectories) and b.completion_mask.sum() == 0


def test_a_rewritten_history_starts_the_trajectory_again(kit_tools, rows):
    """The second call's messages do not extend the first call's conversation: the trajectory is that call alone (the
    ids it was given and sampled), the restart counted; its max_tokens caps what it samples."""
    b = worker(kit_tools, "rewriting_agent").generate(rows[:4], SamplingParams(n=1, max_tokens=L, seed=0))
    for i, t in enumerate(b.trajectories):
        assert t["restarts"] == 1 and t["turns"] == 1 and t["error"] is None
        assert 0 not in b.tool_mask[i].tolist() and b.completion_mask[i].sum() <= 4

"""Rejection sampling (learner/methods/rejection_sampling.py) and R1's text predicates (reward_workers/filters.py):
what is kept of a scored batch (threshold, unscorable rows, duplicates, the per-prompt limit, best first), each filter
and the language share behind the language-consistency reward, a user filter by import path, and the config."""

from __future__ import annotations

import math

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import validate_dict
from relay_rl.errors import ConfigError
from relay_rl.learner.methods.rejection_sampling import select
from relay_rl.reward_workers.filters import language_share, resolve_filter
from tests.conftest import quickstart_dict


def rs_cfg(**algorithm):
    raw = quickstart_dict(algorithm=None)
    raw["algorithm"] = {"name": "rejection_sampling", "per_device_train_batch_size": 4, **algorithm}
    return validate_dict(raw)


def scored(completions, rewards, groups):
    n = len(completions)
    return Batch(
        prompt_ids=torch.ones(n, 1, dtype=torch.long),
        prompt_mask=torch.ones(n, 1, dtype=torch.long),
        completion_ids=torch.ones(n, 1, dtype=torch.long),
        completion_mask=torch.ones(n, 1),
        behaviour_logprobs=torch.zeros(n, 1),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.tensor(groups),
        truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32).unsqueeze(1),
        completions=completions,
    )


ROWS = [{"prompt": "12+34=", "answer": "46"}, {"prompt": "9+9=", "answer": "18"}]


def test_keeps_the_best_distinct_passing_sample_per_prompt():
    b = scored(["45", "46", "46", "46 ", "17", "19"], [0.0, 1.0, 1.0, 2.0, 0.0, math.nan], [0, 0, 0, 0, 1, 1])
    kept, stats = select(ROWS, b, rs_cfg().algorithm, [1.0], "prompt", "completion")
    assert kept == [{"prompt": "12+34=", "answer": "46", "completion": "46 ", "reward": 2.0}]
    assert stats == {"sampled": 6, "below_threshold": 3, "duplicates": 1, "over_limit": 1, "kept": 1, "prompts_kept": 1}


def test_every_distinct_sample_without_a_limit():
    b = scored(["46", "46", "40+6"], [1.0, 1.0, 1.0], [0, 0, 0])
    kept, stats = select(
        ROWS, b, rs_cfg(max_kept_per_prompt=None, reward_threshold=0.5).algorithm, [1.0], "prompt", "completion"
    )
    assert [k["completion"] for k in kept] == ["46", "40+6"] and stats["duplicates"] == 1


def test_weights_and_threshold():
    b = scored(["46"], [1.0], [0])
    assert select(ROWS, b, rs_cfg(reward_threshold=1.5).algorithm, [2.0], "prompt", "completion")[0]
    assert not select(ROWS, b, rs_cfg(reward_threshold=1.5).algorithm, [1.0], "prompt", "completion")[0]


def test_filters_drop_and_are_counted():
    a = rs_cfg(
        filters=["code_blocks", {"name": "long_paragraphs", "kwargs": {"max_chars": 5}}],
        max_kept_per_prompt=None,
        reward_threshold=0.0,
    ).algorithm
    texts = ["ok", "```py\nx\n```", "fine\n\ntoo long a paragraph", "ok2"]
    kept, stats = select(ROWS, scored(texts, [1.0] * 4, [0] * 4), a, [1.0], "prompt", "completion")
    assert [k["completion"] for k in kept] == ["ok", "ok2"]
    assert stats["filtered/code_blocks"] == 1 and stats["filtered/long_paragraphs"] == 1


def test_chat_prompts_keep_chat_completions():
    rows = [{"prompt": [{"role": "user", "content": "12+34?"}], "answer": "46"}]
    kept, _ = select(rows, scored(["46"], [1.0], [0]), rs_cfg().algorithm, [1.0], "prompt", "completion")
    assert kept[0]["completion"] == [{"role": "assistant", "content": "46"}]


def test_language_share_and_mixing():
    assert language_share("<think>the sum is 46</think> 46") == 1.0
    assert language_share("<think>the суммa is 46</think>") == pytest.approx(2 / 3)  # "is", "the" vs the mixed word
    assert language_share("<think>46</think>46") is None  # no letters: no language
    assert language_share("<think>15</think>46", alphabet="0123456789+=") == 1.0
    assert language_share("<think>1|5 6</think>46", alphabet="0123456789+=") == 0.5
    assert language_share("这是 答案", script="cjk") == 1.0
    mixing = resolve_filter("language_mixing")[1]
    assert mixing("<think>the суммa</think>") and not mixing("<think>all english words</think>")
    assert not resolve_filter({"name": "language_mixing", "kwargs": {"min_share": 0.5}})[1]("<think>a б</think>")
    with pytest.raises(ValueError, match="unknown script"):
        resolve_filter({"name": "language_mixing", "kwargs": {"script": "klingon"}})


def test_paragraphs_and_code_blocks():
    long_ = resolve_filter({"name": "long_paragraphs", "kwargs": {"max_chars": 20}})[1]
    assert long_("short\n\n" + "x" * 21) and not long_("short\n  \nshort too\nand a line")  # 20 characters
    code = resolve_filter("code_blocks")[1]
    assert code("text\n```python\nprint(1)\n```") and code("  ~~~\nx\n~~~") and not code("inline `code` only")


def test_user_filter_by_import_path():
    name, f = resolve_filter("tests.integration.reward_fns:drop_when_answer_wrong")
    assert name == "drop_when_answer_wrong" and f("45", answer="46") and not f("46", answer="46")


@pytest.mark.parametrize(
    "algorithm, message",
    [
        ({"filters": ["no_such_filter"]}, "filters\\[0\\]: unknown filter"),
        ({"filters": [{"name": "long_paragraphs", "kwargs": {"max_chars": 0}}]}, "max_chars must be >= 1"),
        ({"filters": [{"name": "code_blocks", "kwargs": {"x": 1}}]}, "filters\\[0\\]"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_config_errors(algorithm, message):
    with pytest.raises(ConfigError, match=message):
        rs_cfg(**algorithm)


def test_language_consistency_reward_and_answer_after_think():
    from relay_rl.cluster.kit.task import build_tokenizer
    from relay_rl.reward_workers.registry import resolve

    tok = build_tokenizer("r1")
    _, lang = resolve({"name": "language_consistency", "kwargs": {"alphabet": "0123456789+="}}, tok)
    assert lang(completions=["<think>15</think>46", "<think>1|5</think>46", "46"]) == [1.0, 0.0, 1.0]
    _, exact = resolve({"name": "arithmetic_exact", "kwargs": {"after_think": True}}, tok)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # noqa: E731
    got = exact(
        completion_ids=[
            ids("<think>6</think>46"),
            ids("46"),
            ids("<think>6</think>45"),
            ids("<think>6</think>4</think>46")[:-1],
        ],
        answer=["46"] * 4,
    )
    assert got == [1.0, 0.0, 0.0, 0.0]  # the answer after the last </think>, then EOS
    with pytest.raises(ValueError, match="</think>"):
        resolve({"name": "arithmetic_exact", "kwargs": {"after_think": True}}, build_tokenizer())

"""Built-in reward functions (docs/rewards.md): tests/README.md's "Rewards" reference values exactly, math equivalence,
threads, conversational input, and the config path through ``registry.resolve``."""

import threading

import pytest

from relay_rl.reward_workers import verifiers
from relay_rl.reward_workers.registry import BUILTINS, resolve


@pytest.fixture(scope="module")
def tokenizer():
    from relay_rl.cluster.kit.task import build_tokenizer

    return build_tokenizer()


def conv(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


# --- reference checks: "Rewards" --------------------------------------------------------------------------------------


def test_soft_overlong_reference_values():
    fn = verifiers.make_soft_overlong_punishment(None, max_completion_len=100, soft_punish_cache=20)
    assert fn(completion_ids=[[1] * n for n in (80, 90, 100, 101)]) == [0.0, -0.5, -1.0, -1.0]


def test_soft_overlong_counts_the_final_eos(tokenizer):
    """|y| = len(completion_ids), EOS included (as TRL): 80 text tokens + EOS is past L − C."""
    eos = tokenizer.eos_token_id
    fn = verifiers.make_soft_overlong_punishment(tokenizer, max_completion_len=100, soft_punish_cache=20)
    assert fn(completion_ids=[[5] * 79 + [eos], [5] * 80 + [eos]]) == [0.0, -0.05]


def test_soft_overlong_zero_cache_and_bad_kwargs():
    fn = verifiers.make_soft_overlong_punishment(None, max_completion_len=10, soft_punish_cache=0)
    assert fn(completion_ids=[[1] * 10, [1] * 11]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="soft_punish_cache"):
        verifiers.make_soft_overlong_punishment(None, max_completion_len=10, soft_punish_cache=11)


def test_cosine_reference_values():
    fn = verifiers.make_cosine_scaled(None, max_len=100)
    good, bad = r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"
    for n, want_correct, want_wrong in [(50, 0.75, -0.75), (0, 1.0, -1.0), (100, 0.5, -0.5), (250, 0.5, -0.5)]:
        out = fn(completions=[good, bad], solution=[r"\frac{1}{3}"] * 2, completion_ids=[[1] * n] * 2)
        assert out == [want_correct, want_wrong], n


def test_cosine_unparseable_gold_is_none_and_custom_bounds():
    fn = verifiers.make_cosine_scaled(
        None, max_len=10, min_value_wrong=-2.0, max_value_wrong=0.0, min_value_correct=0.0, max_value_correct=2.0
    )
    out = fn(
        completions=[r"\boxed{1}", r"\boxed{2}", r"\boxed{1}"],
        solution=["1", "1", "no answer here"],
        completion_ids=[[1] * 5] * 3,
    )
    assert out == [1.0, -1.0, None]
    with pytest.raises(ValueError, match="max_len"):
        verifiers.make_cosine_scaled(None, max_len=0)


def test_repetition_reference_values():
    fn = verifiers.make_repetition_penalty(None, ngram_size=2, max_penalty=-1.0)
    assert fn(completion_ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5], [7], []]) == [0.0, -0.75, 0.0, 0.0]


def test_repetition_scales_with_max_penalty_and_rejects_positive():
    fn = verifiers.make_repetition_penalty(None, ngram_size=3, max_penalty=-0.5)
    assert fn(completion_ids=[[1, 2, 1, 2, 1, 2]]) == [(1 - 2 / 4) * -0.5]
    with pytest.raises(ValueError, match="max_penalty must be <= 0"):
        verifiers.make_repetition_penalty(None, ngram_size=2, max_penalty=0.5)


def test_think_format_reference_values():
    fn = verifiers.make_think_format(None)
    texts = [
        "<think>\nx\n</think>\ny",
        "<think>\nx\ny",
        "<think>a</think><think>b</think>y",
        "<think>a</think>b<think>",
        " <think>x</think>y",
        "<think></think>",
        "x<think>y</think>",
    ]
    assert fn(completions=texts) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]


# --- accuracy ----------------------------------------------------------------------------------------------------

ACCURACY_CASES = [  # (completion, solution, reward)
    (r"The answer is \boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\frac{2}{4}}", "$1/2$", 1.0),
    (r"so $x = 42$. Final answer: \boxed{42}", "42", 1.0),
    (r"\boxed{\sqrt{2}/2}", r"$\frac{\sqrt{2}}{2}$", 1.0),
    (r"\boxed{\sqrt{2}/2}", r"\boxed{\frac{\sqrt{2}}{2}}", 1.0),
    (r"\boxed{5\text{ cm}}", "5", 1.0),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
    (r"\boxed{43}", "42", 0.0),
    ("42", "42", 0.0),  # no LaTeX answer: no anchor-free extraction
    ("", "42", 0.0),
    (r"\boxed{42}", "the gold is not math", None),
    (r"\boxed{42}", "", None),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", None),  # math-verify: bare nested LaTeX gold needs $...$ or \boxed
]


def test_accuracy_cases():
    fn = verifiers.make_accuracy(None)
    comps, sols, want = zip(*ACCURACY_CASES)
    assert fn(completions=list(comps), solution=list(sols)) == list(want)


def test_accuracy_matches_trl():
    rewards = pytest.importorskip("trl.rewards")
    comps, sols, _ = zip(*ACCURACY_CASES)
    ours = verifiers.make_accuracy(None)(completions=list(comps), solution=list(sols))
    assert ours == rewards.accuracy_reward(conv(comps), list(sols))


def test_accuracy_from_a_worker_thread():
    """The reward actor calls functions from a thread pool, where math-verify's signal.alarm cannot be used."""
    fns = [
        verifiers.make_accuracy(None),
        verifiers.make_reasoning_accuracy(None),
        verifiers.make_cosine_scaled(None, max_len=4),
    ]
    comps, sols, want = zip(*ACCURACY_CASES)
    result, errors = {}, []

    def work():
        try:
            result["acc"] = fns[0](completions=list(comps), solution=list(sols))
            result["reason"] = fns[1](completions=["<think>1</think>" + c for c in comps], solution=list(sols))
            result["cos"] = fns[2](completions=list(comps), solution=list(sols), completion_ids=[[1, 2]] * len(comps))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert not errors and not t.is_alive()
    assert result["acc"] == result["reason"] == list(want)
    assert result["cos"] == [None if w is None else (0.75 if w else -0.75) for w in want]


def test_reasoning_accuracy():
    fn = verifiers.make_reasoning_accuracy(None)
    comps = [
        r"<think>maybe \boxed{2}</think> so \boxed{\frac{1}{3}}",
        r"<think>\boxed{\frac{1}{3}}</think> so \boxed{\frac{1}{2}}",
        r"<think>reasoning with \boxed{\frac{1}{3}} but never closed",
        r"<think>a</think>b</think> last part \boxed{\frac{1}{3}}",
        r"<think>a</think> \boxed{1}",
    ]
    sols = [r"\frac{1}{3}"] * 4 + ["not parseable"]
    assert fn(completions=comps, solution=sols) == [1.0, 0.0, 0.0, 1.0, None]
    assert fn(completions=["no tag"], solution=["not parseable"]) == [0.0]


# --- conversational input and the config path ----------------------------------------------------------------------


def test_conversational_completions():
    texts = [r"<think>x</think>\boxed{\frac{1}{2}}", r"\boxed{3}"]
    sols = ["0.5", "0.5"]
    assert verifiers.make_accuracy(None)(completions=conv(texts), solution=sols) == [1.0, 0.0]
    assert verifiers.make_reasoning_accuracy(None)(completions=conv(texts), solution=sols) == [1.0, 0.0]
    assert verifiers.make_think_format(None)(completions=conv(texts)) == [1.0, 0.0]
    cos = verifiers.make_cosine_scaled(None, max_len=100)
    assert cos(completions=conv(texts), solution=sols, completion_ids=[[1] * 50] * 2) == [0.75, -0.75]
    multi = [
        [
            {"role": "assistant", "content": "<think>a</think>"},
            {"role": "tool", "content": "<think>"},
            {"role": "assistant", "content": r"\boxed{\frac{1}{2}}"},
        ]
    ]
    assert verifiers.make_accuracy(None)(completions=multi, solution=["0.5"]) == [1.0]


def test_resolve_with_kwargs(tokenizer):
    resolve("think_format", tokenizer)  # a bare name, no kwargs
    assert {
        "accuracy",
        "reasoning_accuracy",
        "think_format",
        "soft_overlong_punishment",
        "cosine_scaled",
        "repetition_penalty",
        "arithmetic_exact",
    } <= set(BUILTINS)
    eos = tokenizer.eos_token_id
    batch = dict(
        prompts=["1+2="] * 2,
        completions=[r"\boxed{3}", r"\boxed{4}"],
        completion_ids=[[5] * 9 + [eos]] * 2,
        solution=["3", "3"],
        answer=["3", "3"],
        trainer_state={"global_step": 0},
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    specs = {
        "soft_overlong_punishment": ({"max_completion_len": 12, "soft_punish_cache": 4}, [-0.5, -0.5]),
        "cosine_scaled": ({"max_len": 20, "max_value_correct": 2.0}, [1.25, -0.75]),
        "repetition_penalty": ({"ngram_size": 2, "max_penalty": -1.0}, [(1 - 2 / 9) * -1.0] * 2),
        "accuracy": ({}, [1.0, 0.0]),
        "reasoning_accuracy": ({}, [0.0, 0.0]),
        "think_format": ({}, [0.0, 0.0]),
    }
    for name, (kwargs, want) in specs.items():
        display, fn = resolve({"name": name, "kwargs": kwargs}, tokenizer)
        assert display == name
        assert fn(**batch) == want, name
    with pytest.raises(ValueError, match="max_penalty"):
        resolve({"name": "repetition_penalty", "kwargs": {"ngram_size": 2, "max_penalty": 1.0}}, tokenizer)
    with pytest.raises(TypeError):
        resolve({"name": "cosine_scaled", "kwargs": {}}, tokenizer)  # max_len is required

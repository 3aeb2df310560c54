"""LLM judges (``llm_judge``): the judge pool (real ``RolloutWorker`` actors, frozen weights) answers the filled
template exactly as a direct transformers greedy generation of the same text does, and its verdicts are parsed (None
when unparseable, never 0); a real run with the judge pool is in test_reward_model.py. Bad judge settings are errors
of the pre-flight, before any actor starts.

The judge is the kit's warm start, which only reads digits, ``+`` and ``=``: the template ``{completion}+11=``
asks it to add 11 to the completion, so its answer is a number and the parsing is exercised on real answers."""

import re

import pytest
import torch

from relay_rl.reward_workers.judge import parse_verdict, template_fields

TEMPLATE = "{completion}+11="


def test_verdicts_are_parsed_or_none():
    num = re.compile(r"-?\d+(?:\.\d+)?")
    assert parse_verdict("Score: 7/10", num) == 7.0
    assert parse_verdict("no number here", num) is None
    assert parse_verdict("-2.5 then 3", num) == -2.5
    assert parse_verdict("42", num, score_range=(0, 10)) is None  # outside the range: not applicable, not clipped
    yes_no = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
    labels = {"yes": 1.0, "no": 0.0}
    assert parse_verdict("Yes, it is correct.", yes_no, labels) == 1.0
    assert parse_verdict("I think no", yes_no, labels) == 0.0
    assert parse_verdict("maybe", yes_no, labels) is None
    assert parse_verdict("verdict: B", re.compile(r"verdict: (\w)"), {"a": 1.0}) is None  # not a label
    assert template_fields("Q: {prompt} A: {completion} ref: {answer} {completion}") == [
        "prompt",
        "completion",
        "answer",
    ]


def judge_spec(model, **kw):
    return {"name": "llm_judge", "kwargs": {"model": model, "template": TEMPLATE, "chat": False, "max_tokens": 4, **kw}}


def test_the_judge_pool_answers_as_a_direct_generation(ray_cluster, kit):
    """Two judge replicas (the texts split between them, each distinct text judged once); each verdict is the number
    a direct ``generate`` (greedy) of the filled template gives, or None where that answer holds no number."""
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relay_rl.reward_workers.registry import resolve
    from relay_rl.rollout_workers.actor import RolloutWorker

    names = [f"test-judge/judge-{i}" for i in range(2)]
    actors = [
        ray.remote(RolloutWorker)
        .options(name=n, namespace="test-judge", num_cpus=0.1)
        .remote(kit["warm_start"], "hf", "float32", {}, index=i, pool="judge")
        for i, n in enumerate(names)
    ]
    try:
        ray.get([a.ping.remote() for a in actors])
        _, fn = resolve(
            judge_spec(kit["warm_start"], judge_actors=names, namespace="test-judge", pattern=r"^(\d+)$"), None
        )
        completions = ["46", "23", "46", "70", "", "9999", "5+5", "31"]
        logged, metrics = {}, {}
        got = fn(
            prompts=["12+34="] * len(completions),
            completions=completions,
            log_extra=logged.__setitem__,
            log_metric=metrics.__setitem__,
        )
        tok = AutoTokenizer.from_pretrained(kit["warm_start"])
        model = AutoModelForCausalLM.from_pretrained(kit["warm_start"]).eval()
        want, answers = [], []
        for c in completions:
            ids = tok(TEMPLATE.format(completion=c), return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=4,
                    pad_token_id=tok.pad_token_id,
                )
            answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            answers.append(answer)
            want.append(float(answer) if re.fullmatch(r"\d+", answer) else None)
        assert logged["judge_answer"] == answers
        assert got == want
        assert metrics["llm_judge/unparseable"] == sum(w is None for w in want) / len(want)
        # the judge read the completion: "46+11=" is in the warm start's task and it answers with a number
        assert got[0] is not None and got[0] == got[2]
    finally:
        for a in actors:
            ray.kill(a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "Grade this answer: {prompt}"}, r"reward_funcs\[1\].*no \{completion\} field"),
        ({"template": "{completion} vs {reference}"}, r"reward_funcs\[1\].*reference"),
        ({"chat": True}, r"reward_funcs\[1\].*no chat template.*chat: false"),
        ({"pattern": "(unclosed"}, r"reward_funcs\[1\].*not a valid regular expression"),
    ],
)
def test_bad_judge_settings_are_preflight_errors(kit, kwargs, message):
    from relay_rl.cluster.config import validate_dict
    from relay_rl.cluster.preflight import preflight
    from relay_rl.errors import ConfigError
    from tests.conftest import quickstart_dict

    raw = quickstart_dict(
        reward={
            "reward_funcs": [
                "arithmetic_exact",
                {**judge_spec("kit:warm_start"), "kwargs": {**judge_spec("kit:warm_start")["kwargs"], **kwargs}},
            ]
        }
    )
    with pytest.raises(ConfigError, match=message):
        preflight(validate_dict(raw), kit_built=True)


def test_two_judge_models_are_refused(kit):
    from relay_rl.cluster.config import validate_dict
    from relay_rl.cluster.preflight import preflight
    from relay_rl.errors import ConfigError
    from tests.conftest import quickstart_dict

    raw = quickstart_dict(reward={"reward_funcs": [judge_spec("kit:warm_start"), judge_spec("kit:base")]})
    with pytest.raises(ConfigError, match="one judge pool"):
        preflight(validate_dict(raw), kit_built=True)


# ----------------------------------------------------------------------------------------------------------------
# pairwise_judge (online DPO, XPO): which of a prompt's two completions is better
PAIR_TEMPLATE = "{completion_0}+{completion_1}="
DIGIT_LABELS = {"1": 1, "5": 0, "6": 0, "7": 1, "8": 0, "9": 1}  # the answer's first digit -> the index shown better


def pair_spec(model, **kw):
    return {
        "name": "pairwise_judge",
        "kwargs": {
            "model": model,
            "template": PAIR_TEMPLATE,
            "chat": False,
            "max_tokens": 4,
            "pattern": r"^(\d)",
            "labels": DIGIT_LABELS,
            **kw,
        },
    }


def test_the_pairwise_judge_scores_each_pair_by_the_judge_pools_answer(ray_cluster, kit):
    """The kit's warm start adds the two completions as shown; the first digit of its answer says which one is
    better (``DIGIT_LABELS``). Each pair's scores are 1 / 0 by a direct greedy generation of the same shown text,
    un-swapped where ``shuffle_order`` showed the pair the other way round; equal completions are 0.5 each and not
    asked; an unparseable answer is None for both rows."""
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relay_rl.reward_workers.registry import resolve
    from relay_rl.rollout_workers.actor import RolloutWorker

    names = [f"test-pair/judge-{i}" for i in range(2)]
    actors = [
        ray.remote(RolloutWorker)
        .options(name=n, namespace="test-pair", num_cpus=0.1)
        .remote(kit["warm_start"], "hf", "float32", {}, index=i, pool="judge")
        for i, n in enumerate(names)
    ]
    try:
        ray.get([a.ping.remote() for a in actors])
        _, fn = resolve(pair_spec(kit["warm_start"], judge_actors=names, namespace="test-pair"), None)
        pairs = [
            ("46", "70"),
            ("23", "31"),
            ("55", "55"),
            ("12", "88"),
            ("40", "19"),
            ("64", "27"),
            ("33", "50"),
            ("71", "18"),
        ]
        completions = [c for p in pairs for c in p][::-1]  # groups need not be in order
        group_ids = [g for g in range(len(pairs)) for _ in range(2)][::-1]
        logged, metrics = {}, {}
        got = fn(
            prompts=["1+1="] * len(completions),
            completions=completions,
            group_ids=group_ids,
            log_extra=logged.__setitem__,
            log_metric=metrics.__setitem__,
        )
        tok = AutoTokenizer.from_pretrained(kit["warm_start"])
        model = AutoModelForCausalLM.from_pretrained(kit["warm_start"]).eval()
        want, unparseable = [None] * len(completions), 0
        for i in range(0, len(completions), 2):
            a, b = completions[i], completions[i + 1]
            if a == b:
                want[i] = want[i + 1] = 0.5
                continue
            swapped = logged["judge_swapped"][i]
            shown = (b, a) if swapped else (a, b)
            ids = tok(
                PAIR_TEMPLATE.format(completion_0=shown[0], completion_1=shown[1]),
                return_tensors="pt",
                add_special_tokens=False,
            )["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=4,
                    pad_token_id=tok.pad_token_id,
                )
            answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            assert logged["judge_answer"][i] == logged["judge_answer"][i + 1] == answer
            verdict = DIGIT_LABELS.get(answer[:1])
            if verdict is None:
                unparseable += 1
                continue
            better = i + (verdict if not swapped else 1 - verdict)
            want[better], want[2 * i + 1 - better] = 1.0, 0.0
        assert got == want
        assert metrics["pairwise_judge/unparseable"] == unparseable / (len(pairs) - 1)
        assert any(logged["judge_swapped"]) and not all(logged["judge_swapped"])  # both orders were shown
        assert sum(w in (0.0, 1.0) for w in want) >= 6  # most pairs got a verdict
        with pytest.raises(ValueError, match="groups of \\[3\\].*num_generations: 2"):
            fn(prompts=["1+1="] * 3, completions=["1", "2", "3"], group_ids=[0, 0, 0])
    finally:
        for a in actors:
            ray.kill(a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "{prompt}: {completion_0}"}, r"reward_funcs\[1\].*no \{completion_1\} field"),
        ({"labels": {"a": 2}}, r"reward_funcs\[1\].*labels .* to 0 .* or 1"),
        ({"model": "kit:base"}, r"one judge pool"),
    ],
)
def test_bad_pairwise_judge_settings_are_preflight_errors(kit, kwargs, message):
    from relay_rl.cluster.config import validate_dict
    from relay_rl.cluster.preflight import preflight
    from relay_rl.errors import ConfigError
    from tests.conftest import quickstart_dict

    spec = pair_spec("kit:warm_start")
    raw = quickstart_dict(
        reward={"reward_funcs": [judge_spec("kit:warm_start"), {**spec, "kwargs": {**spec["kwargs"], **kwargs}}]}
    )
    with pytest.raises(ConfigError, match=message):
        preflight(validate_dict(raw), kit_built=True)

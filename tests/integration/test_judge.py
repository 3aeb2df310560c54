"""LLM judges (``llm_judge``): the judge pool (real ``RolloutWorker`` actors, frozen weights) answers the filled
template exactly as a direct transformers greedy generation of the same text does, and its verdicts are parsed (None
when unparseable, never 0); a real run with the judge pool is in test_reward_model.py. Bad judge settings are errors
of the pre-flight, before any actor starts.

The judge is the kit's warm start, which only reads digits, ``+`` and ``=``: the template ``{completion}+11=``
asks it to add 11 to the completion, so its answer is a number and the parsing is exercised on real answers."""
import re

import pytest
import torch

from reward_workers.judge import parse_verdict, template_fields

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
    assert template_fields("Q: {prompt} A: {completion} ref: {answer} {completion}") == ["prompt", "completion",
                                                                                         "answer"]


def judge_spec(model, **kw):
    return {"name": "llm_judge", "kwargs": {"model": model, "template": TEMPLATE, "chat": False, "max_tokens": 4, **kw}}


def test_the_judge_pool_answers_as_a_direct_generation(ray_cluster, kit):
    """Two judge replicas (the texts split between them, each distinct text judged once); each verdict is the number
    a direct ``generate`` (greedy) of the filled template gives, or None where that answer holds no number."""
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from reward_workers.registry import resolve
    from rollout_workers.actor import RolloutWorker
    names = [f"test-judge/judge-{i}" for i in range(2)]
    actors = [ray.remote(RolloutWorker).options(name=n, namespace="test-judge", num_cpus=0.1).remote(
        kit["warm_start"], "hf", "float32", {}, index=i, pool="judge") for i, n in enumerate(names)]
    try:
        ray.get([a.ping.remote() for a in actors])
        _, fn = resolve(judge_spec(kit["warm_start"], judge_actors=names, namespace="test-judge",
                                    pattern=r"^(\d+)$"), None)
        completions = ["46", "23", "46", "70", "", "9999", "5+5", "31"]
        logged, metrics = {}, {}
        got = fn(prompts=["12+34="] * len(completions), completions=completions,
                 log_extra=logged.__setitem__, log_metric=metrics.__setitem__)
        tok = AutoTokenizer.from_pretrained(kit["warm_start"])
        model = AutoModelForCausalLM.from_pretrained(kit["warm_start"]).eval()
        want, answers = [], []
        for c in completions:
            ids = tok(TEMPLATE.format(completion=c), return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=4,
                                     pad_token_id=tok.pad_token_id)
            answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
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


@pytest.mark.parametrize("kwargs, message", [
    ({"template": "Grade this answer: {prompt}"}, r"reward_funcs\[1\].*no \{completion\} field"),
    ({"template": "{completion} vs {reference}"}, r"reward_funcs\[1\].*reference"),
    ({"chat": True}, r"reward_funcs\[1\].*no chat template.*chat: false"),
    ({"pattern": "(unclosed"}, r"reward_funcs\[1\].*not a valid regular expression"),
])
def test_bad_judge_settings_are_preflight_errors(kit, kwargs, message):
    from cluster.config import ConfigError, validate_dict
    from cluster.preflight import preflight
    from tests.conftest import quickstart_dict
    raw = quickstart_dict(reward={"reward_funcs": ["arithmetic_exact",
                                                   {**judge_spec("kit:warm_start"),
                                                    "kwargs": {**judge_spec("kit:warm_start")["kwargs"], **kwargs}}]})
    with pytest.raises(ConfigError, match=message):
        preflight(validate_dict(raw), kit_built=True)


def test_two_judge_models_are_refused(kit):
    from cluster.config import ConfigError, validate_dict
    from cluster.preflight import preflight
    from tests.conftest import quickstart_dict
    raw = quickstart_dict(reward={"reward_funcs": [judge_spec("kit:warm_start"), judge_spec("kit:base")]})
    with pytest.raises(ConfigError, match="one judge pool"):
        preflight(validate_dict(raw), kit_built=True)

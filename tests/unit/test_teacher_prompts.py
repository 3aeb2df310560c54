"""The teacher prompts of SDPO and SDFT, on text, against docs/methods/self-distillation.md knob by knob: which sibling
is the solution, when feedback is used, the templates, thinking removed from the demonstration, chat prompts (system
messages kept, the last user turn rewritten), rows without context, and SDFT's generate_from_teacher prompts."""

from __future__ import annotations

import math

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import validate_dict
from relay_rl.learner.methods.sdft import teacher_prompts as sdft_prompts
from relay_rl.learner.methods.sdpo import teacher_prompts as sdpo_prompts
from tests.conftest import quickstart_dict

TPL = {
    "reprompt_template": "[{prompt}|{solution}|{feedback}]",
    "solution_template": "S({successful_previous_attempt})",
    "feedback_template": "F({feedback_raw})",
}


def cfg(name="sdpo", reward_weights=None, **algorithm):
    raw = quickstart_dict(algorithm=None)
    raw["algorithm"] = {
        "name": name,
        "num_generations": 3,
        "per_device_train_batch_size": 6,
        **(TPL if name == "sdpo" else {}),
        **algorithm,
    }
    raw["reward"] = {"reward_funcs": ["arithmetic_exact", "think_format"], "reward_weights": reward_weights}
    return validate_dict(raw)


def batch(prompts, completions, rewards, groups, feedback=None):
    n = len(prompts)
    cols = {"privileged_context": feedback} if feedback is not None else {}
    return Batch(
        prompt_ids=torch.ones(n, 1, dtype=torch.long),
        prompt_mask=torch.ones(n, 1, dtype=torch.long),
        completion_ids=torch.ones(n, 1, dtype=torch.long),
        completion_mask=torch.ones(n, 1),
        behaviour_logprobs=torch.zeros(n, 1),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.tensor(groups),
        truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        prompts=prompts,
        completions=completions,
        columns=cols,
    )


# two groups of three: group 0 has successes at rows 1 and 2, group 1 none; rewards are (exact, format)
P = ["p0", "p0", "p0", "p1", "p1", "p1"]
C = ["a", "b", "c", "d", "e", "f"]
R = [[0, 0], [1, 0], [1, 0], [0, 0], [0, 0.8], [0, 0]]
G = [0, 0, 0, 1, 1, 1]


def test_first_successful_sibling_not_itself():
    prompts, active = sdpo_prompts(batch(P, C, R, G), cfg())
    assert prompts[:3] == ["[p0|S(b)|]", "[p0|S(c)|]", "[p0|S(b)|]"]  # row 1's own success is not its teacher
    assert prompts[3:] == P[3:] and active.tolist() == [True, True, True, False, False, False]


def test_self_success_allowed():
    prompts, active = sdpo_prompts(batch(P, C, R, G), cfg(dont_reprompt_on_self_success=False))
    assert prompts[:3] == ["[p0|S(b)|]"] * 3


def test_a_group_whose_only_success_is_the_row_itself():
    r = [[0, 0], [1, 0], [0, 0]]
    prompts, active = sdpo_prompts(batch(P[:3], C[:3], r, G[:3]), cfg())
    assert prompts == ["[p0|S(b)|]", "p0", "[p0|S(b)|]"] and active.tolist() == [True, False, True]


def test_threshold_and_weights_decide_success():
    """Success is the weighted total reaching success_reward_threshold: with weights (0.5, 1) row 4's format reward
    of 0.8 counts, row 1's exact answer (0.5) does not reach 0.75."""
    c = cfg(reward_weights=[0.5, 1.0], success_reward_threshold=0.75)
    prompts, active = sdpo_prompts(batch(P, C, R, G), c)
    assert active.tolist() == [False, False, False, True, False, True]
    assert prompts[3] == "[p1|S(e)|]" and prompts[5] == "[p1|S(e)|]"


def test_unscorable_rows_are_never_a_solution():
    r = [[math.nan, math.nan], [0, 0], [1, 0]]
    prompts, _ = sdpo_prompts(batch(P[:3], C[:3], r, G[:3]), cfg(success_reward_threshold=0.0))
    assert prompts[0] == "[p0|S(b)|]" and prompts[1] == "[p0|S(c)|]"  # row 0 (NaN) is skipped as a solution


def test_use_successful_as_teacher_off():
    prompts, active = sdpo_prompts(batch(P, C, R, G), cfg(use_successful_as_teacher=False))
    assert prompts == P and not active.any()


def test_feedback_used_only_when_included_and_not_empty():
    fb = ["x", "", None, "y", "  ", "z"]
    prompts, active = sdpo_prompts(batch(P, C, R, G, fb), cfg())
    assert prompts[3:] == P[3:]  # include_environment_feedback is off by default
    prompts, active = sdpo_prompts(batch(P, C, R, G, fb), cfg(include_environment_feedback=True))
    assert prompts == ["[p0|S(b)|F(x)]", "[p0|S(c)|]", "[p0|S(b)|]", "[p1||F(y)]", "p1", "[p1||F(z)]"]
    assert active.tolist() == [True, True, True, True, False, True]


def test_feedback_only_without_solution():
    fb = ["x", "w", "v", "y", "u", "z"]
    prompts, _ = sdpo_prompts(
        batch(P, C, R, G, fb), cfg(include_environment_feedback=True, environment_feedback_only_without_solution=True)
    )
    assert prompts == ["[p0|S(b)|]", "[p0|S(c)|]", "[p0|S(b)|]", "[p1||F(y)]", "[p1||F(u)]", "[p1||F(z)]"]


def test_remove_thinking_from_demonstration():
    comps = ["a", "<think>long\nwork</think> 46", "c"]
    r = [[0, 0], [1, 0], [0, 0]]
    kept, _ = sdpo_prompts(batch(P[:3], comps, r, G[:3]), cfg())
    stripped, _ = sdpo_prompts(batch(P[:3], comps, r, G[:3]), cfg(remove_thinking_from_demonstration=True))
    assert kept[0] == "[p0|S(<think>long\nwork</think> 46)|]" and stripped[0] == "[p0|S(46)|]"


def test_default_templates():
    c = validate_dict(
        {**quickstart_dict(), "algorithm": {"name": "sdpo", "num_generations": 3, "per_device_train_batch_size": 6}}
    )
    prompts, _ = sdpo_prompts(batch(P[:3], C[:3], R[:3], G[:3]), c)
    assert prompts[0] == ("p0\nCorrect solution:\n\nb\n\n\n\nCorrectly solve the original question.\n")


def test_chat_prompts_keep_the_system_and_rewrite_the_last_user_turn():
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "12+34?"},
    ]
    prompts, _ = sdpo_prompts(batch([chat] * 3, C[:3], R[:3], G[:3]), cfg())
    assert prompts[0] == chat[:3] + [{"role": "user", "content": "[12+34?|S(b)|]"}]
    assert prompts[1][:3] == chat[:3] and chat[3]["content"] == "12+34?"  # the dataset's prompt is not modified
    bad = chat[:2] + [{"role": "assistant", "content": "prefill"}]
    with pytest.raises(ValueError, match="last user turn"):
        sdpo_prompts(batch([bad] * 3, C[:3], R[:3], G[:3]), cfg())


def test_groups_are_found_by_id_not_position():
    """After the reward pool's split, a part holds whole groups in any order: siblings are the rows of a group id."""
    order = [3, 0, 4, 1, 5, 2]
    b = batch([P[i] for i in order], [C[i] for i in order], [R[i] for i in order], [G[i] for i in order])
    prompts, _ = sdpo_prompts(b, cfg())
    assert prompts[1] == "[p0|S(b)|]" and prompts[3] == "[p0|S(c)|]" and prompts[5] == "[p0|S(b)|]"


# ----------------------------------------------------------------------------------------------- SDFT
def test_sdft_template_with_columns():
    c = cfg("sdft", distillation_mode="full_logits")
    b = batch(["12+34="], ["46"], [[1, 0]], [0], feedback=["46"])
    prompts, active = sdft_prompts(b, c)
    assert prompts == ["12+34=\n\n46"] and active.tolist() == [True]
    c = cfg("sdft", distillation_mode="full_logits", teacher_prompt_template="{privileged_context}|{prompt}")
    assert sdft_prompts(b, c)[0] == ["46|12+34="]


def test_sdft_chat_and_list_context():
    c = cfg("sdft", distillation_mode="full_logits")
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    demo = [{"role": "assistant", "content": "step 1"}, {"role": "assistant", "content": "step 2"}]
    prompts, _ = sdft_prompts(batch([chat], ["x"], [[0, 0]], [0], feedback=[demo]), c)
    assert prompts == [[chat[0], {"role": "user", "content": "q\n\nstep 1\nstep 2"}]]


def test_sdft_missing_context_is_an_error():
    c = cfg("sdft", distillation_mode="full_logits")
    with pytest.raises(ValueError, match="privileged_context"):
        sdft_prompts(batch(["q"], ["x"], [[0, 0]], [0], feedback=[None]), c)


def test_generate_from_teacher_prompts():
    records = [{"prompt": "12+34=", "privileged_context": "46", "answer": "46"}]
    off = cfg("sdft", distillation_mode="full_logits", teacher_prompt_template="{privileged_context}|{prompt}")
    on = cfg(
        "sdft",
        distillation_mode="full_logits",
        teacher_prompt_template="{privileged_context}|{prompt}",
        generate_from_teacher=True,
    )
    other = cfg()

    def prompts(c):
        return c.family.generation_prompts(c, records)

    assert prompts(off) is None
    assert prompts(on) == ["46|12+34="]
    assert prompts(other) is None  # other families sample from their own prompts

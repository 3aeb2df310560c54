"""The bad-input corpus: a user's own model, JSONL and reward functions, and the plausible mistakes around them.

Each case runs the real CLI (``relay-rl validate`` / ``train``, in-process, or as a subprocess where the console
itself is the point) and asserts the outcome: the exit code, that the ``relay-rl:`` message names the problem, and
that no traceback reaches the console. Every case here fails before any actor starts. Run-time faults (bad scores,
a run with nothing to learn, Ctrl-C) are in tests/e2e/test_bad_runs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from relay_rl.cluster.cli import main, parse

ROOT = Path(__file__).resolve().parents[2]

REWARDS = """
import math

def exact(completions, answer, **kwargs):
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]

def needs_solution(completions, solution, **kwargs):
    return [0.0] * len(completions)

def no_kwargs(completions):
    return [0.0] * len(completions)

def positional_only(completions, /, **kwargs):
    return [0.0] * len(completions)

def factory(scale):
    def scaled(completions, **kwargs):
        return [scale] * len(completions)
    return scaled

NOT_A_FUNCTION = 3
"""

RUN = """\
name: mine
model: {name_or_path: ./model}
data: {train: ./train.jsonl}
reward: {reward_funcs: [my_rewards:exact]}
algorithm: {num_generations: 4, per_device_train_batch_size: 8}
rollout: {max_prompt_length: 16, max_completion_length: 5}
train: {max_steps: 2, eval_steps: null}
cluster: {learner: {replicas: 1}}
"""


@pytest.fixture(scope="session")
def user(tmp_path_factory):
    """A user's folder: an own tiny model (saved with save_pretrained), train.jsonl and my_rewards.py, beside which
    the run files live (relative paths and the reward import resolve from there)."""
    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.task import build_model, build_tokenizer

    d = tmp_path_factory.mktemp("user")
    tok = build_tokenizer()
    build_model(KitConfig(), tok).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    small = build_model(KitConfig(), tok)  # an embedding smaller than the tokenizer
    small.resize_token_embeddings(len(tok) - 4)
    small.save_pretrained(d / "small_vocab")
    tok.save_pretrained(d / "small_vocab")
    (d / "empty_model").mkdir()
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10, 30) for b in range(10, 14)]
    _jsonl(d / "train.jsonl", rows)
    (d / "my_rewards.py").write_text(REWARDS)
    (d / "broken_rewards.py").write_text("x = 1 / 0\n")
    return d


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


_count = [0]


def run_file(user: Path, text: str = RUN, **replace) -> Path:
    """A run file in the user's folder (unique name), from RUN with string replacements."""
    for old, new in replace.items():
        old = old.replace("__", ".")
        assert old in text, old
        text = text.replace(old, new)
    _count[0] += 1
    p = user / f"run{_count[0]}.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    console = out.out + out.err
    assert "Traceback" not in console, console
    return code, console


def bad(capsys, *argv, expect: list[str], code: int = 2) -> str:
    got, console = cli(capsys, *argv)
    assert got == code, console
    assert "relay-rl: " in console, console
    for text in expect:
        assert text in console, f"{text!r} not in:\n{console}"
    return console


# ----------------------------------------------------------------------------------------------------------------
def test_the_users_own_files_validate(user, capsys, monkeypatch):
    monkeypatch.chdir(ROOT / "deploy")  # relative paths resolve from the run file's folder, not the cwd
    code, console = cli(capsys, "validate", run_file(user))
    assert code == 0 and "# valid." in console
    assert f"name_or_path: {user / 'model'}" in console and f"train: {user / 'train.jsonl'}" in console


def test_tilde_and_variables_in_paths_are_expanded(user, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(user.parent))
    monkeypatch.setenv("MY_DATA", str(user))
    run = run_file(user, **{"./model": f"~/{user.name}/model", "./train.jsonl": "$MY_DATA/train.jsonl"})
    code, console = cli(capsys, "validate", run)
    assert code == 0 and f"train: {user / 'train.jsonl'}" in console and f"name_or_path: {user / 'model'}" in console


def test_options_and_overrides_in_any_order():
    args = parse(["train", "run.yaml", "a.b=1", "--output", "out", "c.d=2", "--debug", "x.yaml", "--overwrite"])
    assert args.overrides == ["a.b=1", "c.d=2", "x.yaml"] and args.output == "out" and args.debug and args.overwrite
    with pytest.raises(SystemExit) as e:
        parse(["train", "run.yaml", "--outptu", "x"])
    assert e.value.code == 2


# the run file and the command line ------------------------------------------------------------------------------
def test_run_file_missing(user, capsys):
    bad(capsys, "validate", user / "nope.yaml", expect=["no such run file"])


def test_binary_run_file(user, capsys):
    p = user / "model" / "model.safetensors"
    bad(capsys, "validate", p, expect=["not a text file"])


def test_yaml_syntax_error(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"train: {max_steps: 2,": "train: {max_steps: [2,"}),
        expect=["not valid YAML"],
    )


def test_yaml_not_a_mapping(user, capsys):
    bad(capsys, "validate", run_file(user, "- a\n- b\n"), expect=["must be a mapping of sections"])


def test_duplicate_section(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, RUN + "reward: {reward_funcs: [arithmetic_exact]}\n"),
        expect=["'reward' is given twice", "first at line 4"],
    )


def test_unknown_field_names_line_and_allowed(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"max_steps": "max_stepz"}),
        expect=["unknown field 'max_stepz'", "allowed here:", ":7"],
    )


def test_wrong_type(user, capsys):
    bad(capsys, "validate", run_file(user), "train.max_steps=lots", expect=["train.max_steps", "command-line override"])


def test_override_without_equals(user, capsys):
    bad(capsys, "validate", run_file(user), "train.max_steps", expect=["expected key.path=value"])


def test_override_into_a_value(user, capsys):
    bad(capsys, "validate", run_file(user), "name.x=1", expect=["name is not a section"])


def test_overlay_missing(user, capsys):
    bad(capsys, "validate", run_file(user), user / "overlay.yaml", expect=["no such overlay file"])


def test_knob_of_another_family(user, capsys):
    bad(capsys, "validate", run_file(user), "algorithm.lmbda=0.5", expect=["'lmbda' is a knob of algorithm.name"])


def test_zero_steps(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "train.max_steps=0",
        expect=["train.max_steps", "greater than or equal to 1"],
    )


def test_greedy_sampling_with_several_generations(user, capsys):
    bad(capsys, "validate", run_file(user), "rollout.temperature=0", expect=["greedy", "set rollout.temperature > 0"])


def test_batch_that_does_not_hold_whole_groups(user, capsys):
    bad(capsys, "validate", run_file(user), "algorithm.num_generations=3", expect=["divisible by num_generations (3)"])


@pytest.mark.parametrize("family", ["online_dpo", "xpo"])
def test_preference_family_without_pairs(user, capsys, family):
    bad(
        capsys,
        "validate",
        run_file(user),
        f"algorithm.name={family}",
        expect=[f"algorithm {family} judges pairs: num_generations must be 2 (got 4)", "set algorithm.num_generations"],
    )


@pytest.mark.parametrize("knob", ["beta", "alpha"])
def test_preference_schedule_that_is_empty(user, capsys, knob):
    bad(
        capsys,
        "validate",
        run_file(user),
        "algorithm.name=xpo",
        "algorithm.num_generations=2",
        f"algorithm.{knob}=[]",
        expect=[f"{knob}: the schedule is empty"],
    )


def test_nan_reward_weight(user, capsys):
    bad(capsys, "validate", run_file(user), "reward.reward_weights=[.nan]", expect=["reward_weights must be finite"])


def test_reward_weights_length(user, capsys):
    bad(capsys, "validate", run_file(user), "reward.reward_weights=[1.0, 2.0]", expect=["one weight per function"])


def test_kit_path_without_kit_section(user, capsys):
    bad(capsys, "validate", run_file(user), "model.name_or_path=kit:warm_start", expect=["add `kit: {}`"])


def test_distillation_without_teacher(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "algorithm.name=on_policy_distillation",
        "algorithm.num_generations=1",
        expect=["learns from a teacher model"],
    )


# models ---------------------------------------------------------------------------------------------------------
def test_model_path_missing(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"./model": "./my_model"}),
        expect=["model.name_or_path: no such folder", str(user / "my_model")],
    )


def test_model_folder_without_config(user, capsys):
    bad(capsys, "validate", run_file(user, **{"./model": "./empty_model"}), expect=["has no config.json"])


def test_model_vocabulary_smaller_than_tokenizer(user, capsys):
    bad(capsys, "validate", run_file(user, **{"./model": "./small_vocab"}), expect=["vocab_size 10", "14 tokens"])


def test_teacher_path_missing(user, capsys):
    run = run_file(user, RUN + "teacher: {name_or_path: ./teacher}\n")
    bad(
        capsys,
        "validate",
        run,
        "algorithm.name=on_policy_distillation",
        "algorithm.num_generations=1",
        expect=["teacher.name_or_path: no such folder"],
    )


def test_prompts_cut_to_the_budget_still_beyond_positions(user, capsys):
    _jsonl(user / "long40.jsonl", [{"prompt": "1" * 40 + "+1=", "answer": "2"}])
    bad(
        capsys,
        "validate",
        run_file(user, **{"./train.jsonl": "./long40.jsonl"}),
        "rollout.max_prompt_length=60",
        "rollout.max_completion_length=30",
        expect=["row 0", "cannot fit the model's 64 positions", "max_prompt_length <= 34"],
    )


def test_completion_alone_beyond_positions(user, capsys):
    bad(capsys, "validate", run_file(user), "rollout.max_completion_length=64", expect=["leave no room for a prompt"])


def test_prompts_that_cannot_fit_without_a_budget(user, capsys):
    rows = [{"prompt": "1" * 70 + "+1=", "answer": "2"}]
    _jsonl(user / "long.jsonl", rows)
    bad(
        capsys,
        "validate",
        run_file(user, **{"./train.jsonl": "./long.jsonl"}),
        "rollout.max_prompt_length=null",
        expect=["row 0", "cannot fit the model's 64 positions"],
    )


def test_overlong_prompts_error_and_drop(user, capsys):
    rows = [{"prompt": "12+3=", "answer": "15"}, {"prompt": "1" * 30 + "+1=", "answer": "2"}]
    _jsonl(user / "some_long.jsonl", rows)
    run = run_file(user, **{"./train.jsonl": "./some_long.jsonl"})
    bad(
        capsys,
        "validate",
        run,
        "rollout.overlong_prompts=error",
        expect=["row 1", "more than rollout.max_prompt_length"],
    )
    code, console = cli(capsys, "validate", run, "rollout.overlong_prompts=drop")
    assert code == 0 and "dropped 1 of 2 prompts" in console
    code, console = cli(capsys, "validate", run)
    assert code == 0 and "truncated to their last tokens" in console


# data -----------------------------------------------------------------------------------------------------------
def test_data_file_missing(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"./train.jsonl": "./trian.jsonl"}),
        expect=["data.train: cannot load", str(user / "trian.jsonl")],
    )


def test_data_file_not_json(user, capsys):
    (user / "garbage.jsonl").write_text("this is not json\n")
    bad(capsys, "validate", run_file(user, **{"./train.jsonl": "./garbage.jsonl"}), expect=["data.train: cannot load"])


def test_prompt_column_missing(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "data.prompt_column=question",
        expect=["has no column 'question'", "columns: prompt, answer"],
    )


@pytest.mark.parametrize(
    "value,what",
    [(None, "null"), (42, "int"), (["12+3="], "a list of chat messages")],
    ids=["null", "number", "list_of_strings"],
)
def test_prompts_that_are_not_text(user, capsys, value, what):
    path = _jsonl(user / f"bad_{what.split()[0]}.jsonl", [{"prompt": value, "answer": "1"}])
    bad(capsys, "validate", run_file(user, **{"./train.jsonl": str(path)}), expect=["data.train: row 0", what])


def test_empty_dataset(user, capsys):
    (user / "empty.jsonl").write_text("")
    bad(capsys, "validate", run_file(user, **{"./train.jsonl": "./empty.jsonl"}), expect=["data.train"])


def test_chat_prompts_without_chat_template(user, capsys):
    path = _jsonl(user / "chat.jsonl", [{"prompt": [{"role": "user", "content": "12+3="}], "answer": "15"}])
    bad(
        capsys,
        "validate",
        run_file(user, **{"./train.jsonl": str(path)}),
        expect=["chat messages", "has no chat template"],
    )


def test_dataset_completions_missing_for_gkd(user, capsys):
    run = run_file(user, RUN + "teacher: {name_or_path: ./model}\n")
    bad(
        capsys,
        "validate",
        run,
        "algorithm.name=gkd",
        "algorithm.num_generations=1",
        "algorithm.lmbda=0.5",
        expect=["data.completion_column", "no column 'completion'"],
    )


def test_rejection_sampling_needs_prompts_only(user, capsys):
    """It writes the completions it trains on: data.train's prompts are enough."""
    code, console = cli(
        capsys, "validate", run_file(user), "algorithm.name=rejection_sampling", "algorithm.num_generations=1"
    )
    assert code == 0 and "algorithm rejection_sampling" in console, console


def test_sft_without_the_completion_column(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "algorithm.name=sft",
        "algorithm.num_generations=1",
        expect=["data.completion_column", "no column 'completion'", "algorithm sft trains on dataset completions"],
    )


# self-distillation and stages ------------------------------------------------------------------------------------
def test_sdft_on_data_without_privileged_context(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "algorithm.name=sdft",
        "algorithm.distillation_mode=full_logits",
        expect=["data.train", "privileged_context", "teacher_prompt_template", "columns: prompt, answer"],
    )


def test_sdpo_feedback_on_data_without_privileged_context(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "algorithm.name=sdpo",
        "algorithm.include_environment_feedback=true",
        expect=["privileged_context", "include_environment_feedback"],
    )


@pytest.mark.parametrize("knob", ["reprompt_template", "teacher_prompt_template"])
def test_teacher_template_without_the_prompt(user, capsys, knob):
    family = "sdpo" if knob == "reprompt_template" else "sdft"
    bad(
        capsys,
        "validate",
        run_file(user),
        f"algorithm.name={family}",
        f"algorithm.{knob}='{{solution}} again'",
        expect=["algorithm", f"{knob} must contain {{prompt}}"],
    )


STAGED = RUN.replace("algorithm: {num_generations: 4, per_device_train_batch_size: 8}\n", "")


def test_stages_whose_model_changes(user, capsys):
    text = STAGED + textwrap.dedent("""\
        stages:
          - name: warm
            algorithm: {name: sft}
            data: {completion_column: answer}
          - name: rl
            model: {name_or_path: ./small_vocab}
            algorithm: {num_generations: 4, per_device_train_batch_size: 8}
        """)
    console = bad(
        capsys,
        "validate",
        run_file(user, text),
        expect=[
            "stages.rl.model.name_or_path",
            "differs from the run's model",
            "the model and its tokenizer are set once",
        ],
    )
    assert ".yaml:13:" in console  # the line of the stage's model


def test_a_staged_file_with_a_top_level_algorithm(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, RUN + "stages:\n  - name: a\n    algorithm: {name: sft}\n"),
        expect=[".yaml:5: algorithm: a staged run file sets algorithm: in each stage"],
    )


def test_a_stage_with_a_bad_field(user, capsys):
    text = STAGED + "stages:\n  - name: rl\n    algorithm: {num_generatons: 4}\n"
    bad(capsys, "validate", run_file(user, text), expect=["stages.rl.algorithm.num_generatons", "unknown field"])


def test_a_later_stage_checked_before_any_actor(user, capsys):
    """Every stage's pre-flight runs first: a bad reward function in the last stage fails before the first starts."""
    text = STAGED + (
        "stages:\n  - name: a\n    algorithm: {name: sft}\n"
        "    data: {completion_column: answer}\n"
        "  - name: b\n    algorithm: {num_generations: 4, per_device_train_batch_size: 8}\n"
        "    reward: {reward_funcs: [my_rewards:nope]}\n"
    )
    bad(capsys, "train", run_file(user, text), "--output", user / "staged_out", expect=["has no 'nope'"])
    assert not (user / "staged_out" / "a").exists()


# reward functions -----------------------------------------------------------------------------------------------
def test_misspelled_reward_function(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "my_rewards:exactt"}),
        expect=["reward.reward_funcs[0]", "has no 'exactt'", "did you mean my_rewards:exact?"],
    )


def test_reward_module_missing(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "my_rewardz:exact"}),
        expect=["module 'my_rewardz' cannot be imported"],
    )


def test_reward_module_that_fails_on_import(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "broken_rewards:f"}),
        expect=["cannot be imported (ZeroDivisionError"],
    )


def test_unknown_builtin_reward(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "arithmetic_exat"}),
        expect=["unknown reward function 'arithmetic_exat'", "did you mean 'arithmetic_exact'?"],
    )


def test_reward_that_is_not_a_function(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "my_rewards:NOT_A_FUNCTION"}),
        expect=["is a int, not a function"],
    )


def test_reward_signature_without_kwargs(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "my_rewards:no_kwargs"}),
        expect=["does not accept the keyword(s) prompts", "add **kwargs"],
    )


def test_reward_with_positional_only_parameters(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "my_rewards:positional_only"}),
        expect=["positional-only"],
    )


def test_reward_that_needs_a_missing_column(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "my_rewards:needs_solution"}),
        expect=["needs the dataset column(s) solution", "data.train lacks"],
    )


def test_builtin_verifier_without_its_column(user, capsys):
    _jsonl(user / "no_answer.jsonl", [{"prompt": "12+3="}])
    bad(
        capsys,
        "validate",
        run_file(user, **{"./train.jsonl": "./no_answer.jsonl", "my_rewards:exact": "arithmetic_exact"}),
        expect=["arithmetic_exact needs the dataset column(s) answer"],
    )


def test_code_reward_on_a_dataset_without_tests(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user, **{"my_rewards:exact": "code_tests"}),
        expect=["code_tests needs the dataset column(s) tests", "data.train lacks"],
    )


def test_judge_template_without_the_completion(user, capsys):
    judge = "[{name: llm_judge, kwargs: {model: some/judge, chat: false, template: 'Grade {prompt}'}}]"
    bad(
        capsys,
        "validate",
        run_file(user, **{"[my_rewards:exact]": judge}),
        expect=["llm_judge", "no {completion} field"],
    )


def test_reward_factory_with_wrong_kwargs(user, capsys):
    run = run_file(user, **{"[my_rewards:exact]": "[{name: my_rewards:factory, kwargs: {scael: 2}}]"})
    bad(capsys, "validate", run, expect=["cannot be built with kwargs {'scael': 2}"])


# the run folder and the cluster (train fails before anything starts) ----------------------------------------------
def test_a_run_folder_that_holds_a_run_is_refused(user, capsys, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    bad(capsys, "train", run_file(user), "--output", tmp_path, expect=["already holds a run", "--overwrite"])
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched


def _console(*argv, env=None, timeout=120) -> tuple[int, str, float]:
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "relay_rl", *map(str, argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return p.returncode, p.stdout + p.stderr, time.time() - t0


def test_console_of_a_real_process(user, tmp_path):
    """What a terminal shows: one relay-rl line, no traceback, within seconds for an address where nothing listens
    (run file and $RAY_ADDRESS)."""
    code, console, _ = _console("validate", user / "model" / "model.safetensors")
    assert code == 2 and "relay-rl: " in console and "not a text file" in console and "Traceback" not in console
    code, console, _ = _console("validate", run_file(user), "cluster.address=127.0.0.1:9")
    assert code == 2 and "nothing answers at 127.0.0.1:9" in console
    code, console, took = _console("train", run_file(user), "cluster.address=127.0.0.1:9", "--output", tmp_path / "a")
    assert code == 2 and "nothing answers at 127.0.0.1:9" in console and "Traceback" not in console, console
    assert took < 60
    code, console, took = _console(
        "train", run_file(user), "--output", tmp_path / "b", env={"RAY_ADDRESS": "127.0.0.1:9"}
    )
    assert code == 2 and "$RAY_ADDRESS" in console and "Traceback" not in console and took < 60, console
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


# multi-turn: tools and environments (rollout.tools, rollout.environment_factory) ----------------------------------
TOOLS = '''
def multiply(a: int, b: int) -> str:
    """Multiply.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return str(a * b)


def no_hints(a, b):
    """Multiply.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return str(a * b)


def no_docstring(a: int, b: int) -> str:
    return str(a * b)
'''

TOOL_RUN = """\
name: mine-tools
model: {name_or_path: ./tool_model}
data: {train: ./chat_train.jsonl}
reward: {reward_funcs: [final_answer_exact]}
algorithm: {num_generations: 4, per_device_train_batch_size: 8}
rollout: {max_prompt_length: 16, max_completion_length: 24, tools: [my_tools:multiply]}
train: {max_steps: 2, eval_steps: null}
cluster: {learner: {replicas: 1}}
"""


@pytest.fixture(scope="session")
def tool_user(user):
    """The user's folder with a tool-calling tokenizer (chat and response templates) and model, chat-message prompts,
    my_tools.py, and copies of the tokenizer without a response template and with a template that is not
    prefix-preserving."""
    import shutil

    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.task import build_model
    from relay_rl.cluster.kit.tool_task import build_tool_tokenizer

    tok = build_tool_tokenizer()
    build_model(KitConfig(), tok).save_pretrained(user / "tool_model")
    tok.save_pretrained(user / "tool_model")
    shutil.copytree(user / "tool_model", user / "no_parser")
    cfg_path = user / "no_parser" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("response_template", None)
    cfg_path.write_text(json.dumps(cfg))
    shutil.copytree(user / "tool_model", user / "reorders")
    tok.chat_template = "{{ messages | length }}" + tok.chat_template  # a header that counts the messages
    tok.save_pretrained(user / "reorders")
    rows = [
        {"prompt": [{"role": "user", "content": f"{a}*{b}="}], "answer": str(a * b)}
        for a in range(10, 20)
        for b in (3, 7)
    ]
    _jsonl(user / "chat_train.jsonl", rows)
    (user / "my_tools.py").write_text(TOOLS)
    return user


def tool_run(user, **replace):
    return run_file(user, TOOL_RUN, **replace)


def test_a_tool_run_validates(tool_user, capsys):
    code, console = cli(capsys, "validate", tool_run(tool_user))
    assert code == 0 and "# valid." in console, console


@pytest.mark.parametrize(
    "tool, expect",
    [
        ("nope_tools:multiply", "module 'nope_tools' cannot be imported"),
        ("my_tools:divide", "has no 'divide'"),
        ("my_tools:no_hints", "no tool schema"),
        ("my_tools:no_docstring", "no tool schema"),
    ],
)
def test_a_tool_that_does_not_import_or_has_no_schema(tool_user, capsys, tool, expect):
    bad(capsys, "validate", tool_run(tool_user), f"rollout.tools=[{tool}]", expect=["rollout.tools[0]", expect])


@pytest.mark.parametrize(
    "factory, expect",
    [
        ("tests.integration.envs:Unbuildable", "cannot be constructed with no arguments"),
        ("tests.integration.envs:NoReset", "needs a reset(**row) method"),
        ("tests.integration.envs:Missing", "has no 'Missing'"),
    ],
)
def test_an_environment_that_does_not_construct(tool_user, capsys, factory, expect):
    bad(
        capsys,
        "validate",
        tool_run(tool_user),
        "rollout.tools=[]",
        f"rollout.environment_factory={factory}",
        expect=["rollout.environment_factory", expect],
    )


def test_an_environment_without_replicas(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user),
        "rollout.environment_factory=tests.integration.envs:MultiplyEnv",
        "cluster.environment.replicas=0",
        expect=["set cluster.environment.replicas >= 1"],
    )


def test_zero_tool_calling_iterations(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user),
        "rollout.max_tool_calling_iterations=0",
        expect=["rollout.max_tool_calling_iterations", "greater than or equal to 1"],
    )


def test_tools_with_string_prompts(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user, **{"./chat_train.jsonl": "./train.jsonl"}),
        expect=["need chat-message prompts", "data.train"],
    )


def test_tools_with_a_family_that_cannot_mask_them(tool_user, capsys):
    bad(capsys, "validate", tool_run(tool_user), "algorithm.name=ppo", expect=["does not train on multi-turn"])


def test_tools_with_partial_rollouts(tool_user, capsys):
    bad(capsys, "validate", tool_run(tool_user), "rollout.partial_rollouts=true", expect=["do not mix"])


def test_a_tokenizer_that_cannot_parse_tool_calls(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user, **{"./tool_model": "./no_parser"}),
        expect=["no response_template", "rollout.response_template"],
    )


def test_a_chat_template_that_is_not_prefix_preserving(tool_user, capsys):
    bad(capsys, "validate", tool_run(tool_user, **{"./tool_model": "./reorders"}), expect=["not prefix-preserving"])


def test_a_response_template_file_that_is_missing(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user),
        f"rollout.response_template={tool_user / 'nope.json'}",
        expect=["rollout.response_template", "nope.json"],
    )


def test_an_agent_program_that_does_not_import(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user),
        "rollout.tools=[]",
        "rollout.agent_program=my_tools:no_such_agent",
        expect=["rollout.agent_program", "has no 'no_such_agent'"],
    )


def test_an_agent_program_beside_tools(tool_user, capsys):
    bad(
        capsys,
        "validate",
        tool_run(tool_user),
        "rollout.agent_program=tests.integration.agent_programs:calculator_agent",
        expect=["rollout.agent_program runs your own agent", "leave rollout.tools"],
    )


# experiment trackers, completion logs, dataset options ---------------------------------------------------------
def test_an_unknown_tracker(user, capsys):
    f = run_file(user)
    bad(capsys, "validate", f, "train.report_to=[tensorbord]", expect=[str(f), "train.report_to", "unknown tracker"])


def test_a_tracker_that_is_not_installed(user, capsys, monkeypatch):
    from relay_rl.cluster import trackers

    monkeypatch.setattr(trackers, "installed", lambda name: name != "trackio")  # a machine without the extra
    bad(
        capsys,
        "validate",
        run_file(user),
        "train.report_to=trackio",
        expect=["train.report_to names trackio", "pip install 'relay-rl[trackio]'"],
    )


def test_a_negative_number_of_completions_to_print(user, capsys):
    bad(capsys, "validate", run_file(user), "train.num_completions_to_print=-1", expect=["num_completions_to_print"])


def test_chat_template_kwargs_that_are_not_a_mapping(user, capsys):
    bad(
        capsys,
        "validate",
        run_file(user),
        "rollout.chat_template_kwargs=[enable_thinking]",
        expect=["chat_template_kwargs"],
    )


def test_a_dataset_configuration_that_does_not_exist(user, capsys):
    folder = user / "repo"
    (folder / "main").mkdir(parents=True)
    _jsonl(folder / "main" / "train.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - {split: train, path: main/train.jsonl}\n---\n"
    )
    bad(
        capsys,
        "validate",
        run_file(user),
        f"data.train={folder}",
        "data.eval=null",
        "data.name=socratic",
        expect=["data.train: cannot load", "socratic"],
    )

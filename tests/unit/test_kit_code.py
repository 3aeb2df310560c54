"""The kit's code task (cluster/kit/code_task.py): rows made from the kit's splits, reachable as ``kit:code_train`` /
``kit:code_test``, whose tests pass for the right value and give partial credit otherwise. Runs on the split files
alone (no model is built), with the real sandbox scoring the programs."""

import json
import os

import pytest

from relay_rl.cluster.config import KitConfig
from relay_rl.cluster.data import load_prompts
from relay_rl.cluster.kit.code_task import DATA_FILES, TEMPLATE, build_code_task, ensure_kit_data
from relay_rl.cluster.kit.task import make_task
from relay_rl.reward_workers.registry import resolve


@pytest.fixture()
def kit_files(tmp_path):
    """A kit folder holding only the split files, as the kit writes them."""
    cfg = KitConfig(dir=str(tmp_path))
    splits = make_task(cfg)
    for name, rows in splits.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg, splits


def test_rows_follow_the_splits_and_files_are_rewritten_only_when_stale(kit_files, tmp_path):
    cfg, splits = kit_files
    files = build_code_task(tmp_path)
    assert {n: p.name for n, p in files.items()} == DATA_FILES
    test = [json.loads(line) for line in files["code_test"].read_text().splitlines()]
    assert [r["prompt"] for r in test] == [r["prompt"] for r in splits["test"]]  # held out as the test split is
    assert len(files["code_train"].read_text().splitlines()) == len(splits["train"])
    a, b = map(int, test[0]["prompt"][:-1].split("+"))
    s = a + b
    assert test[0] == {
        **splits["test"][0],
        "template": TEMPLATE,
        "tests": [
            f"assert f() == {s}",
            f"assert f() % 10 == {s % 10}",
            f"assert f() // 10 % 10 == {s // 10 % 10}",
            f"assert len(str(f())) == {len(str(s))}",
        ],
    }

    os.utime(files["code_test"], (1, 1))
    build_code_task(tmp_path)  # same content: left alone
    assert files["code_test"].stat().st_mtime == 1
    files["code_test"].write_text("stale\n")
    ensure_kit_data("kit:code_test", cfg)  # what a run does first: the file is made current again
    assert files["code_test"].read_text().splitlines()[0] == json.dumps(test[0])

    ds = load_prompts("kit:code_test", "test", cfg, "prompt")  # the data path a run file names
    assert len(ds) == len(splits["test"]) and ds[0]["tests"] == test[0]["tests"]
    assert ensure_kit_data("kit:train", cfg) is None and ensure_kit_data("/x.jsonl", cfg) is None


def test_the_tests_score_the_value_and_give_partial_credit(kit_files, tmp_path):
    cfg, _ = kit_files
    rows = {r["prompt"]: r for r in load_prompts("kit:code_train", "train", cfg, "prompt")}
    row = rows.get("12+34=") or next(iter(rows.values()))
    a, b = map(int, row["prompt"][:-1].split("+"))
    s = a + b
    right, expr = str(s), f"{s - 6}+6"  # a value or an expression: code, run
    near = str(s + 10 if s // 10 % 10 != 9 else s - 10)  # the ones digit and the length right
    completions = [right, expr, near, right + "=", "", str(s) * 2]
    _, reward = resolve({"name": "code_tests", "kwargs": {"template_column": "template"}}, None)
    n = len(completions)
    scores = reward(completions=completions, tests=[row["tests"]] * n, template=[row["template"]] * n)
    assert scores == [1.0, 1.0, 0.5, 0.0, 0.0, scores[5]] and scores[5] < 1.0
    with pytest.raises(FileNotFoundError, match="not built yet"):
        build_code_task(tmp_path / "empty")

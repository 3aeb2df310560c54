"""Bad things in a real run: a reward function that keeps failing stops the run with its error (after being
reported), and a crashed rollout worker is restarted, brought to the current weights, and its batch redone."""

import json

import pytest

from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.runner import train
from tests.conftest import quickstart_dict

SHORT = {"max_steps": 6, "eval_steps": None}


def test_failing_reward_function_stops_the_run_with_its_error(ray_cluster, kit, tmp_path, capsys):
    raw = quickstart_dict(
        reward={
            "reward_funcs": ["arithmetic_exact", "tests.integration.reward_fns:raises"],
            "max_consecutive_failures": 2,
        },
        train=SHORT,
        cluster={"learner": {"replicas": 1, "num_cpus": 1}},
    )
    with pytest.raises(RuntimeError, match=r"reward function raises failed 2 batches in a row.*the grader is down"):
        train(validate_dict(raw), output_dir=str(tmp_path))
    assert "its scores for this batch are None" in capsys.readouterr().err
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1]  # the first failing batch trained on the other reward


def test_crashed_rollout_worker_is_restarted_and_its_work_redone(ray_cluster, kit, tmp_path):
    killer = {"name": "tests.integration.reward_fns:kill_rollout_once", "kwargs": {"marker": str(tmp_path / "killed")}}
    raw = quickstart_dict(
        reward={"reward_funcs": ["arithmetic_exact", killer]},
        train=SHORT,
        cluster={"learner": {"replicas": 1, "num_cpus": 1}},
    )
    train(validate_dict(raw), output_dir=str(tmp_path))
    assert (tmp_path / "killed").exists()
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r["staleness/max"] == 0 for r in steps)  # the restarted worker got the current weights back

"""The bad-input corpus, run-time half: faults that only show once the pools run, through the real CLI on the
shared Ray cluster. Each asserts the exit code, the message, that no traceback reached the console, and that the run
went on (or stopped cleanly) with what it wrote kept."""

from __future__ import annotations

import json
import os
import time

import yaml

from relay_rl.cluster.cli import main
from tests.conftest import quickstart_dict

FNS = "tests.integration.reward_fns"
SMALL = {
    "algorithm": {
        "name": "grpo",
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "beta": 0.0,
        "loss_type": "dapo",
        "vllm_importance_sampling_correction": False,
    },
    "cluster": {"learner": {"replicas": 1, "num_cpus": 1}},
}


def run(tmp_path, capsys, reward: dict, train: dict, *extra) -> tuple[int, str, list[dict]]:
    raw = quickstart_dict(reward=reward, train={"eval_steps": None, "zero_stage": 0, **train}, **SMALL)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    code = main(["train", str(path), "--output", str(out), *extra])
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert "Traceback" not in console, console
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return code, console, [r for r in rows if "loss" in r]


def _run_actors_gone(run_prefix: str = "quickstart-") -> bool:
    import ray

    for _ in range(50):
        alive = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(run_prefix)]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_bad_scores_are_that_functions_error_and_the_run_goes_on(ray_cluster, kit, tmp_path, capsys):
    funcs = [
        "arithmetic_exact",
        *(f"{FNS}:{n}" for n in ("words", "inf_score", "nan_score", "wrong_length", "numpy_scores", "tensor_scores")),
    ]
    code, console, steps = run(
        tmp_path,
        capsys,
        {"reward_funcs": funcs, "max_consecutive_failures": 50},
        {"max_steps": 2},
        "train.seed=1",
        "rollout.max_prompt_length=4",
    )  # after --output
    assert code == 0, console
    assert "are truncated to their last tokens" in console
    assert all(r["prompts/truncated"] == 2 for r in steps)  # both prompts of every batch (8 completions, G = 4)
    assert [r["step"] for r in steps] == [1, 2]
    for text in (
        "words failed",
        "returned str 'good' as a score",
        "inf_score failed",
        "returned inf as a score",
        "nan_score failed",
        "returned nan as a score",
        "wrong_length failed",
        "returned 1 scores for 8 completions",
        "(row 0: completion",
    ):
        assert text in console, text
    assert "numpy_scores failed" not in console and "tensor_scores failed" not in console
    for name in ("words", "inf_score", "nan_score", "wrong_length"):
        assert all(r[f"rewards/{name}/failed"] == 1.0 for r in steps)
        assert all(r[f"rewards/{name}/mean"] is None for r in steps)  # NaN (null in JSON) for the batch, never 0
    assert all(abs(r["rewards/numpy_scores/mean"] - 0.5) < 1e-6 for r in steps)  # accepted as TRL accepts them
    assert all(abs(r["rewards/tensor_scores/mean"] - 0.5) < 1e-6 for r in steps)
    assert "{" not in console.splitlines()[-1]  # the run ends with the summary table, not a raw dict


def test_a_run_with_nothing_to_score_stops_cleanly(ray_cluster, kit, tmp_path, capsys):
    code, console, steps = run(
        tmp_path, capsys, {"reward_funcs": [f"{FNS}:all_none"]}, {"max_steps": 8, "max_idle_steps": 2}
    )
    assert code == 3, console
    assert "no completion could be scored" in console
    assert "relay-rl: nothing was learned for 2 steps in a row" in console
    assert [r["step"] for r in steps] == [1, 2] and all(r["grad_norm"] == 0.0 for r in steps)
    assert (tmp_path / "out" / "error.log").is_file() and "error.log" in console
    assert (tmp_path / "out" / "pipeline.json").is_file()
    assert _run_actors_gone()


def test_groups_without_reward_variance_are_warned_about(ray_cluster, kit, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text('{"step": 99, "loss": 0}\n')  # an earlier run: --overwrite
    code, console, steps = run(
        tmp_path,
        capsys,
        {"reward_funcs": [f"{FNS}:constant_one"]},
        {"max_steps": 5, "max_idle_steps": 0},
        "--overwrite",
    )
    assert code == 0, console
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]  # the earlier run's rows are gone
    assert "warning: for 5 steps, 100% of the groups got identical rewards" in console
    assert "already solved" in console
    assert steps[-1]["warning/zero_variance_groups"] == 1.0 and all(r["frac_reward_zero_std"] == 1.0 for r in steps)


def test_ctrl_c_stops_the_pools_and_keeps_what_was_written(ray_cluster, kit, tmp_path, capsys):
    """Ctrl-C as a terminal sends it: SIGINT to the driver's process, once the run is at step 3. One is enough: the
    CLI's handler also flags the stop for the next step boundary, should the KeyboardInterrupt be lost."""
    import signal
    import threading

    sent, done = [], threading.Event()

    def user():
        metrics = tmp_path / "out" / "metrics.jsonl"
        while not done.is_set():
            rows = metrics.read_text().count('"loss"') if metrics.exists() else 0
            if rows >= 3 and (not sent or time.time() - sent[-1] > 10):
                sent.append(time.time())
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    t = threading.Thread(target=user, daemon=True)
    # as from a terminal: a test run started in the background (`pytest &`) inherits SIGINT ignored
    terminal = signal.signal(signal.SIGINT, signal.default_int_handler)
    t.start()
    try:
        code, console, steps = run(tmp_path, capsys, {"reward_funcs": ["arithmetic_exact"]}, {"max_steps": 300})
    finally:
        done.set()
        signal.signal(signal.SIGINT, terminal)
    assert code == 130, console
    assert len(sent) == 1, len(sent)
    assert "relay-rl: interrupted at step" in console and "what was written is kept" in console
    assert 3 <= len(steps) < 300 and (tmp_path / "out" / "config.yaml").is_file()
    assert (tmp_path / "out" / "pipeline.json").is_file()
    assert _run_actors_gone()

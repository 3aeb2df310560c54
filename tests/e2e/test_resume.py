"""Exact resume: a synchronous run continued from its step-2 checkpoint gives, step for step, the metrics of the run
that did not stop (2 DeepSpeed ZeRO-3 ranks: optimizer partitions, LR schedule, sampler position, ledger, RNG), and
the same checkpoint continues on 1 or 4 ranks through DeepSpeed's universal checkpoint.
A checkpoint whose save did not finish is never taken for a complete one; a checkpoint of another run shape is
refused before any actor starts."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from relay_rl.cluster import checkpoint
from relay_rl.cluster.cli import main
from relay_rl.errors import ConfigError
from tests.conftest import quickstart_dict

COMPARED = (
    "loss",
    "policy_loss",
    "reward",
    "reward_std",
    "grad_norm",
    "learning_rate",
    "entropy",
    "completions/mean_length",
    "rewards/arithmetic_exact/mean",
    "policy_version",
    "staleness/max",
    "pipeline/generated_samples",
    "pipeline/admitted_samples",
)


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, kit, tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    raw = quickstart_dict(
        train={"max_steps": 4, "save_steps": 2, "eval_steps": 2, "seed": 0, "learning_rate": 5e-5},
        rollout={"max_completion_length": 5, "max_prompt_length": 16},
        data={"eval_limit": 32},
    )
    raw["algorithm"] = {**raw["algorithm"], "per_device_train_batch_size": 16}
    run = d / "run.yaml"
    run.write_text(yaml.safe_dump(raw))
    assert main(["train", str(run), "--output", str(d / "a")]) == 0
    return {"run": run, "out": d / "a", "dir": d}


def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(uninterrupted, capsys):
    a = uninterrupted["out"]
    assert [p.name for p in checkpoint.checkpoints(a)] == ["checkpoint-2", "checkpoint-4"]
    b = uninterrupted["dir"] / "b"
    assert main(["train", str(uninterrupted["run"]), "--resume", str(a / "checkpoint-2"), "--output", str(b)]) == 0
    assert "resuming checkpoint-2 (step 2 of 4)" in capsys.readouterr().err
    rows_a, rows_b = _rows(a), _rows(b)
    steps_a = {r["step"]: r for r in rows_a if "loss" in r}
    steps_b = {r["step"]: r for r in rows_b if "loss" in r}
    assert sorted(steps_b) == [1, 2, 3, 4]  # the first two come from the checkpoint
    for step in (3, 4):
        assert all(steps_a[step].get(k) is not None for k in ("loss", "grad_norm", "reward", "learning_rate"))
        for key in COMPARED:
            assert steps_b[step].get(key) == steps_a[step].get(key), (
                step,
                key,
                steps_a[step].get(key),
                steps_b[step].get(key),
            )
    evals_a = [(r["step"], r["eval/accuracy"]) for r in rows_a if "eval/accuracy" in r]
    evals_b = [(r["step"], r["eval/accuracy"]) for r in rows_b if "eval/accuracy" in r]
    assert evals_b == evals_a and [s for s, _ in evals_a] == [0, 2, 4]
    ledger_a, ledger_b = (json.loads((d / "pipeline.json").read_text()) for d in (a, b))
    assert ledger_a["consumed_microsteps"] == ledger_b["consumed_microsteps"]


@pytest.mark.parametrize("ranks", [1, 4])
def test_a_checkpoint_of_two_ranks_resumes_on_another_number(uninterrupted, ranks, capsys):
    """DeepSpeed's universal checkpoint: written by 2 ZeRO-3 ranks, loaded by 1 or 4 (the same 32 rows per
    micro-step, per_device_train_batch_size 32 or 8). The next steps' losses equal the uninterrupted run's up to
    float rounding (the gradient's all-reduce sums in another order), which also shows the optimizer and LR scheduler
    states came back: step 4's loss is taken after step 3's update."""
    a = uninterrupted["out"]
    b = uninterrupted["dir"] / f"ranks{ranks}"
    args = [
        "train",
        str(uninterrupted["run"]),
        "--resume",
        str(a / "checkpoint-2"),
        f"cluster.learner.replicas={ranks}",
        f"algorithm.per_device_train_batch_size={32 // ranks}",
        "--output",
        str(b),
    ]
    assert main(args) == 0
    assert "resuming checkpoint-2 (step 2 of 4)" in capsys.readouterr().err
    assert (a / "checkpoint-2" / "relay" / "deepspeed" / "state_universal" / "relay-converted").is_file()
    steps_a = {r["step"]: r for r in _rows(a) if "loss" in r}
    steps_b = {r["step"]: r for r in _rows(b) if "loss" in r}
    assert sorted(steps_b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "policy_loss", "grad_norm", "entropy"):
            assert steps_b[step][key] == pytest.approx(steps_a[step][key], rel=1e-4, abs=1e-7), (step, key)
        for key in ("learning_rate", "reward", "policy_version", "pipeline/admitted_samples"):
            assert steps_b[step][key] == steps_a[step][key], (step, key)
    assert steps_a[3]["loss"] != steps_a[4]["loss"]  # two different steps: the comparison has something to catch


def test_resume_auto_and_a_save_that_did_not_finish(uninterrupted, tmp_path):
    a = uninterrupted["out"]
    run = tmp_path / "r"
    shutil.copytree(a, run)
    partial = run / "checkpoint-6.tmp"  # a driver killed while writing step 6: everything but the mark
    shutil.copytree(run / "checkpoint-4", partial)
    (partial / checkpoint.MARK).unlink()
    assert checkpoint.find("auto", run).name == "checkpoint-4"
    with pytest.raises(ConfigError, match="is incomplete"):
        checkpoint.find(str(partial), run)
    assert checkpoint.rotate(run, keep=1) == [run / "checkpoint-2"]
    assert not partial.exists() and [p.name for p in checkpoint.checkpoints(run)] == ["checkpoint-4"]


def test_resume_bad_input_is_refused_before_any_actor(uninterrupted, tmp_path, capsys):
    run, a = uninterrupted["run"], uninterrupted["out"]
    (tmp_path / "empty").mkdir()
    cases = [
        (["--resume", "auto", "--output", str(tmp_path / "empty")], "holds no complete checkpoint"),
        (["--resume", str(tmp_path / "nowhere")], "does not exist"),
        (
            [
                "--resume",
                str(a / "checkpoint-2"),
                "algorithm.per_device_train_batch_size=8",
                "--output",
                str(tmp_path / "x"),
            ],
            "the batch shape differs: B = 8 now, 16 in the checkpoint",
        ),
        (
            ["--resume", str(a / "checkpoint-2"), "cluster.learner.replicas=1", "--output", str(tmp_path / "y")],
            "cluster.learner.replicas is 1, the checkpoint has 2 ranks: a resume on another number of ranks keeps "
            "the rows of each micro-step (per_device_train_batch_size x ranks = 16 x 2 = 32), so the steps train on "
            "the same data: set algorithm.per_device_train_batch_size to 32",
        ),
        (["--resume", str(a / "checkpoint-4"), "--output", str(tmp_path / "z")], "nothing is left to train"),
    ]
    for extra, text in cases:
        assert main(["train", str(run), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err, (extra, err)


KILLED_DRIVER = """
import os, sys, time
from relay_rl.cluster import checkpoint
commit = checkpoint.commit

def commit_then_hang(tmp, *args):  # the ranks have written their state; the driver dies before the mark
    if tmp.name == "checkpoint-4.tmp":
        (tmp.parent / "paused").write_text(str(os.getpid()))
        time.sleep(600)
    return commit(tmp, *args)

checkpoint.commit = commit_then_hang
from relay_rl.cluster.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_killed_while_writing_a_checkpoint_leaves_the_previous_one_usable(uninterrupted, tmp_path):
    """SIGKILL of the driver process in the middle of writing checkpoint-4 (rank states on disk, no mark): the run
    folder resumes with ``--resume auto`` from checkpoint-2 and repeats steps 3-4 of the uninterrupted run exactly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    from tests.conftest import ROOT

    out, log = tmp_path / "killed", tmp_path / "driver.log"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_DRIVER,
            "train",
            str(uninterrupted["run"]),
            f"cluster.address={ray.get_runtime_context().gcs_address}",
            "--output",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    deadline = time.time() + 400
    while not (out / "paused").exists():
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the driver never reached the checkpoint-4 write"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    partial = out / "checkpoint-4.tmp"
    assert any(partial.rglob("rank*.pt")) and not (partial / checkpoint.MARK).exists()
    assert [p.name for p in checkpoint.checkpoints(out)] == ["checkpoint-2"]

    assert main(["train", str(uninterrupted["run"]), "--resume", "auto", "--output", str(out)]) == 0
    assert not partial.exists() and [p.name for p in checkpoint.checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    steps_a = {r["step"]: r for r in _rows(uninterrupted["out"]) if "loss" in r}
    steps_b = {r["step"]: r for r in _rows(out) if "loss" in r}
    assert sorted(steps_b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in COMPARED:
            assert steps_b[step].get(key) == steps_a[step].get(key), (step, key)

"""A run that heals itself: in one short run, a learner rank is killed once, a rollout actor twice and a reward
actor twice (SIGKILL, by pid) at steps drawn at random; the run finishes, the learner group is restarted from the
newest checkpoint, every generation batch is trained on exactly S x mu micro-steps or counted as dropped, and the
held-out accuracy is within 0.1 of the same run undisturbed (64 prompts). A multi-turn run whose environment actors
die (one mid-call, one by SIGKILL) and whose environment pool is resized meanwhile finishes, its lost trajectories
redone."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import ray

from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.runner import train
from tests.conftest import quickstart_dict
from tests.integration.envs import CRASH_MARKER


def _pid(suffix: str, run: str = "quickstart") -> int | None:
    """The process id of the run's actor named ``<run>-<time><suffix>``."""
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith(f"{run}-") and a["name"].endswith(suffix):
            handle = ray.get_actor(a["name"], namespace=a["namespace"])
            return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60)
    return None


class Chaos(threading.Thread):
    """Watches metrics.jsonl; at each planned step kills the named actor's process."""

    def __init__(self, metrics_path, plan: list[tuple[int, str]], run: str = "quickstart"):
        super().__init__(daemon=True)
        self.path, self.plan, self.done, self.stop = metrics_path, sorted(plan), [], threading.Event()
        self.run_name = run
        self.errors: list[str] = []

    def run(self):
        while self.plan and not self.stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001  (an actor mid-restart: try again)
                self.errors.append(repr(e))
            time.sleep(0.2)

    def tick(self):
        if self.plan:
            step = 0
            if self.path.exists():
                steps = [json.loads(x).get("step", 0) for x in self.path.read_text().splitlines() if '"loss"' in x]
                step = max(steps, default=0)
            if step >= self.plan[0][0]:
                at, suffix = self.plan[0]
                pid = _pid(suffix, self.run_name)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    self.done.append((at, suffix, step))
                    self.plan.pop(0)


def test_a_run_survives_killed_learner_rollout_and_reward_actors(ray_cluster, kit, tmp_path, capsys):
    rng = random.Random(7)
    plan = [
        (rng.randint(4, 6), "/learner-1"),
        *[(s, "/rollout-0") for s in sorted(rng.sample(range(2, 12), 2))],
        *[(s, "/reward-0") for s in sorted(rng.sample(range(2, 12), 2))],
    ]
    raw = quickstart_dict(
        train={"max_steps": 14, "save_steps": 3, "eval_steps": 14, "seed": 0}, data={"eval_limit": 64}
    )
    calm = train(validate_dict(raw), output_dir=str(tmp_path / "calm"))  # the undisturbed run, side by side
    tmp_path = tmp_path / "chaos"
    capsys.readouterr()
    chaos = Chaos(tmp_path / "metrics.jsonl", plan)
    chaos.start()
    try:
        final = train(validate_dict(raw), output_dir=str(tmp_path))
    finally:
        chaos.stop.set()
    err = capsys.readouterr().err
    assert len(chaos.done) == 5, (chaos.done, plan, chaos.errors)
    assert "restarting the learner group from checkpoint-" in err
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 15))  # redone steps replace the lost ones
    assert steps[-1]["restarts/learner"] == 1 and steps[-1]["restarts/redone_batches"] >= 1
    ledger = json.loads((tmp_path / "pipeline.json").read_text())
    per_batch = ledger["microsteps_per_batch"]
    for gen_id in map(str, ledger["admitted"]):
        assert ledger["consumed_microsteps"].get(gen_id) == per_batch, gen_id
    assert set(ledger["generated"]) == set(map(str, ledger["admitted"])) | set(ledger["dropped"])
    # in the range of the undisturbed run (redone batches are sampled with the same seeds, so it is usually equal)
    assert abs(final["eval/accuracy"] - calm["eval/accuracy"]) <= 0.1, (calm["eval/accuracy"], final["eval/accuracy"])
    assert ray.is_initialized()


ENV_RUN = {
    "name": "env-grpo",
    "kit": {"variant": "tools"},
    "model": {"name_or_path": "kit:warm_start"},
    "data": {"train": "kit:train"},
    "reward": {"reward_funcs": ["final_answer_exact", "environment_reward"], "reward_weights": [1.0, 0.5]},
    "algorithm": {
        "name": "grpo",
        "loss_type": "dapo",
        "num_generations": 4,
        "per_device_train_batch_size": 32,
        "filter_groups": {"enable": True, "max_num_gen_batches": 3, "when_exhausted": "fill"},
    },
    "rollout": {
        "environment_factory": "tests.integration.envs:CrashOnceEnv",
        "max_tool_calling_iterations": 2,
        "max_completion_length": 24,
        "max_prompt_length": 16,
    },
    "train": {"max_steps": 8, "eval_steps": None, "learning_rate": 5.0e-5, "seed": 0},
    "cluster": {
        "learner": {"replicas": 1, "num_cpus": 1},
        "rollout": {"replicas": 1, "num_cpus": 0.5},
        "reward": {"replicas": 1, "num_cpus": 0.25},
        "environment": {"replicas": 2, "num_cpus": 0.25},
    },
}


def test_a_multi_turn_run_survives_killed_environment_actors(ray_cluster, kit_tools, tmp_path):
    CRASH_MARKER.unlink(missing_ok=True)  # the first multiply call kills its environment actor (mid-call)
    chaos = Chaos(tmp_path / "metrics.jsonl", [(3, "/environment-0")], run="env-grpo")  # and a SIGKILL at step 3
    answers = {}

    def operator():
        while not (tmp_path / "metrics.jsonl").exists() or '"loss"' not in (tmp_path / "metrics.jsonl").read_text():
            time.sleep(0.2)
        run = json.loads((tmp_path / "run.json").read_text())["run"]
        control = ray.get_actor(f"{run}/control", namespace="relay-rl")
        request = ray.get(control.request.remote("environment", 1))
        while (answer := ray.get(control.status.remote(request))) is None:
            time.sleep(0.2)
        answers["environment 1"] = answer

    t = threading.Thread(target=operator, daemon=True)
    t.start()
    chaos.start()
    try:
        train(validate_dict(ENV_RUN), output_dir=str(tmp_path))
    finally:
        chaos.stop.set()
    t.join(timeout=60)
    assert CRASH_MARKER.exists() and len(chaos.done) == 1, (chaos.done, chaos.errors)  # both deaths happened
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == list(range(1, 9))
    ledger = json.loads((tmp_path / "pipeline.json").read_text())
    assert ledger["pipeline/trajectories_redone"] >= 1 and ledger["pipeline/trajectories"] > 0
    # the environments' state reached the reward functions: their own reward is the last call's correctness
    assert any(r["rewards/environment_reward/mean"] > 0 for r in steps)
    assert answers["environment 1"] == "environment: 1 replica(s)" and steps[-1]["replicas/environment"] == 1
    assert steps[0]["replicas/environment"] == 2

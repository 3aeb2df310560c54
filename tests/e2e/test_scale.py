"""Pools resized while the run goes on: rollout 1 -> 2 -> 1 and reward 1 -> 2 in one run, through the real
``relay-rl scale`` command (a separate process joining the run's Ray cluster) and the run's control actor; requests
that cannot be met are refused with a message and the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray

from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.runner import train
from tests.conftest import quickstart_dict

ROOT = Path(__file__).resolve().parents[2]


def _step(path: Path) -> int:
    if not path.exists():
        return 0
    return max((json.loads(x).get("step", 0) for x in path.read_text().splitlines() if '"loss"' in x), default=0)


def _scale(out: Path, *args) -> tuple[int, str]:
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    p = subprocess.run(
        [sys.executable, "-m", "relay_rl", "scale", str(out), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return p.returncode, p.stdout + p.stderr


def test_rollout_and_reward_pools_resized_during_a_run(ray_cluster, kit, tmp_path, capsys):
    slow = {"name": "tests.integration.reward_fns:slow_exact", "kwargs": {"delay_s": 0.4}}  # a run that lasts
    raw = quickstart_dict(
        train={"max_steps": 40, "eval_steps": None, "seed": 0},
        reward={"reward_funcs": [slow]},
        cluster={"learner": {"replicas": 1, "num_cpus": 1}},
    )
    answers: dict = {}

    def operator():
        metrics = tmp_path / "metrics.jsonl"
        while _step(metrics) < 2:
            time.sleep(0.2)
        answers["rollout 2"] = _scale(tmp_path, "rollout", 2)  # the command, through the run's control actor
        answers["rollout 64"] = _scale(tmp_path, "rollout", 64)
        run = json.loads((tmp_path / "run.json").read_text())["run"]
        control = ray.get_actor(f"{run}/control", namespace="relay-rl")  # the same mailbox, from this process
        for pool, n in (("reward", 2), (None, None), ("rollout", 1)):
            if pool is None:  # let the two rollout replicas work a few steps
                start = _step(metrics)
                while _step(metrics) < start + 4:
                    time.sleep(0.2)
                continue
            request = ray.get(control.request.remote(pool, n))
            while (answer := ray.get(control.status.remote(request))) is None:
                time.sleep(0.2)
            answers[f"{pool} {n}"] = answer
        answers["rollout 0"] = _scale(tmp_path, "rollout", 0)  # refused by the command itself
        answers["learner 2"] = _scale(tmp_path, "learner", 2)

    t = threading.Thread(target=operator, daemon=True)
    t.start()
    train(validate_dict(raw), output_dir=str(tmp_path))
    t.join(timeout=60)
    assert answers["rollout 2"] == (0, "relay-rl: rollout: 2 replica(s)\n"), answers
    assert answers["rollout 0"][0] == 2 and "at least 1 replica" in answers["rollout 0"][1]
    assert answers["rollout 64"][0] == 2 and "cannot host 62 more replica(s)" in answers["rollout 64"][1]
    assert answers["learner 2"][0] == 2 and "cannot be resized while a run goes on" in answers["learner 2"][1]
    assert answers["reward 2"] == "reward: 2 replica(s)" and answers["rollout 1"] == "rollout: 1 replica(s)", answers
    err = capsys.readouterr().err
    assert "scaled rollout: 2 replica(s)" in err and "scaled reward: 2 replica(s)" in err
    ledger = json.loads((tmp_path / "pipeline.json").read_text())
    work = ledger["work_per_replica"]
    assert work.get("rollout/1", 0) > 0 and work.get("reward/1", 0) > 0, work  # the new replicas did work
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert all(r["staleness/max"] == 0 for r in steps)  # new replicas generated with the current weights
    assert steps[-1]["replicas/rollout"] == 1 and steps[-1]["replicas/reward"] == 2

    # the operator's view: the run's gauges on the node's Prometheus endpoint, labelled by run and pool, and every
    # panel of the Grafana dashboard reads one of them
    run = json.loads((tmp_path / "run.json").read_text())["run"]
    text = _prometheus("ray_relay_rl_replicas")
    for name, pool in (
        ("relay_rl_loss", "learner"),
        ("relay_rl_replicas", "rollout"),
        ("relay_rl_reward_mean", "reward"),
        ("relay_rl_tokens_per_s", "rollout"),
        ("relay_rl_sync_bytes", "rollout"),
    ):
        assert any(
            line.startswith(f"ray_{name}{{") and f'run="{run}"' in line and f'pool="{pool}"' in line
            for line in text.splitlines()
        ), (name, pool)
    from relay_rl.cluster.metrics import MetricsLog

    defined = {f"ray_{name}" for name, _ in MetricsLog.GAUGES.values()}
    exported = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_relay_rl_")}
    assert len(exported) >= 12 and exported <= defined, exported - defined
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "relay_rl.json").read_text())
    assert {p["targets"][0]["expr"].split("{")[0] for p in dashboard["panels"]} == defined  # one panel per gauge


def _prometheus(wanted: str, timeout_s: float = 60) -> str:
    """The metrics text of the nodes' Prometheus endpoints, once ``wanted`` appears (Ray flushes every few s)."""
    import urllib.request

    deadline, text = time.time() + timeout_s, ""
    while time.time() < deadline:
        text = ""
        for node in ray.nodes():
            port = node.get("MetricsExportPort")
            if node.get("Alive") and port:
                try:
                    with urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{port}/metrics", timeout=5) as r:
                        text += r.read().decode()
                except OSError:
                    pass
        if wanted in text:
            return text
        time.sleep(2)
    raise AssertionError(f"{wanted} not on the nodes' metrics endpoints after {timeout_s:.0f}s")
